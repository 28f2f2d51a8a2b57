//! The rules, as `iptables-restore` input: pure functions of the configuration and of the
//! current nat table (`iptables-save -t nat`), so they are golden-tested without a kernel.

use ipnet::IpNet;

use crate::config::{Config, PortList, PortSpan};

pub const INBOUND: &str = "PORTCULLIS_INBOUND";
pub const IN_REDIRECT: &str = "PORTCULLIS_IN_REDIRECT";
pub const OUTPUT: &str = "PORTCULLIS_OUTPUT";
pub const OUT_REDIRECT: &str = "PORTCULLIS_OUT_REDIRECT";
/// Every chain this program owns; nothing else is ever flushed or deleted.
pub const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, OUT_REDIRECT];

/// The jumps from the built-in chains, exactly as `iptables-save` prints them.
pub const PREROUTING_JUMP: &str = "-A PREROUTING -p tcp -j PORTCULLIS_INBOUND";
pub const OUTPUT_JUMP: &str = "-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

/// The rules to install, in the order they must be evaluated (without the jumps).
pub fn chain_rules(cfg: &Config, family: Family) -> Vec<String> {
    let mut rules = Vec::new();
    // Inbound: everything arriving for the pod, except the proxy's own ports and the skips.
    rules.push(format!(
        "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        cfg.inbound_port
    ));
    let own_ports = PortList(
        [cfg.inbound_port, cfg.outbound_port, cfg.admin_port]
            .into_iter()
            .map(|p| PortSpan { first: p, last: p })
            .collect(),
    );
    for ports in [&own_ports, &cfg.skip_inbound_ports] {
        for chunk in multiport_chunks(ports) {
            rules.push(format!(
                "-A {INBOUND} -p tcp -m multiport --dports {chunk} -j RETURN"
            ));
        }
    }
    rules.push(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));

    // Outbound: what the pod's applications open. The proxy's own connections (by UID) go out
    // untouched, or they would loop; so does loopback traffic. A connection to the pod's own IP
    // also leaves through `lo` but is redirected like any other: the pod talking to itself.
    rules.push(format!(
        "-A {OUT_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        cfg.outbound_port
    ));
    rules.push(format!(
        "-A {OUTPUT} -m owner --uid-owner {} -j RETURN",
        cfg.proxy_uid
    ));
    rules.push(format!("-A {OUTPUT} -d {} -j RETURN", family.loopback()));
    for chunk in multiport_chunks(&cfg.skip_outbound_ports) {
        rules.push(format!(
            "-A {OUTPUT} -p tcp -m multiport --dports {chunk} -j RETURN"
        ));
    }
    for net in cfg.skip_outbound_cidrs.0.iter().filter(|n| family.holds(n)) {
        rules.push(format!("-A {OUTPUT} -d {net} -j RETURN"));
    }
    rules.push(format!("-A {OUTPUT} -p tcp -j {OUT_REDIRECT}"));
    rules
}

/// `iptables-restore --noflush` input that installs the rules. Declaring a chain flushes it, so
/// a second run rewrites the chains instead of appending; the jumps are added only when absent.
pub fn install(cfg: &Config, family: Family, current_nat: &str) -> String {
    let mut out = format!(
        "# portcullis-init {}: {} nat rules\n*nat\n",
        env!("CARGO_PKG_VERSION"),
        family.name()
    );
    for chain in CHAINS {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in chain_rules(cfg, family) {
        out.push_str(&rule);
        out.push('\n');
    }
    for jump in [PREROUTING_JUMP, OUTPUT_JUMP] {
        if !has_rule(current_nat, jump) {
            out.push_str(jump);
            out.push('\n');
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// `iptables-restore --noflush` input that removes the jumps and the chains, or `None` when
/// none of them is there.
pub fn cleanup(current_nat: &str) -> Option<String> {
    let mut lines = Vec::new();
    for jump in [PREROUTING_JUMP, OUTPUT_JUMP] {
        let count = current_nat.lines().filter(|l| l.trim() == jump).count();
        for _ in 0..count {
            lines.push(jump.replacen("-A ", "-D ", 1));
        }
    }
    let present: Vec<&str> = CHAINS
        .into_iter()
        .filter(|c| has_chain(current_nat, c))
        .collect();
    // Flush all before deleting any: the chains jump to each other.
    lines.extend(present.iter().map(|c| format!("-F {c}")));
    lines.extend(present.iter().map(|c| format!("-X {c}")));
    if lines.is_empty() {
        return None;
    }
    Some(format!(
        "# portcullis-init {}: cleanup\n*nat\n{}\nCOMMIT\n",
        env!("CARGO_PKG_VERSION"),
        lines.join("\n")
    ))
}

/// What is wrong with the nat table after an install, if anything.
pub fn verify(cfg: &Config, family: Family, nat_after: &str) -> Result<(), String> {
    let mut missing = Vec::new();
    for chain in CHAINS {
        if !has_chain(nat_after, chain) {
            missing.push(format!("chain {chain}"));
        }
    }
    for jump in [PREROUTING_JUMP, OUTPUT_JUMP] {
        if !has_rule(nat_after, jump) {
            missing.push(format!("jump `{jump}`"));
        }
    }
    for (chain, port) in [
        (IN_REDIRECT, cfg.inbound_port),
        (OUT_REDIRECT, cfg.outbound_port),
    ] {
        let found = nat_after.lines().any(|l| {
            l.starts_with(&format!("-A {chain} "))
                && l.contains("-j REDIRECT")
                && l.contains(&format!("--to-ports {port}"))
        });
        if !found {
            missing.push(format!("REDIRECT to port {port} in {chain}"));
        }
    }
    let uid = format!("--uid-owner {}", cfg.proxy_uid);
    if !nat_after
        .lines()
        .any(|l| l.starts_with(&format!("-A {OUTPUT} ")) && l.contains(&uid))
    {
        missing.push(format!("the exemption of UID {}", cfg.proxy_uid));
    }
    let expected = chain_rules(cfg, family).len();
    let installed = nat_after
        .lines()
        .filter(|l| CHAINS.iter().any(|c| l.starts_with(&format!("-A {c} "))))
        .count();
    if installed != expected {
        missing.push(format!(
            "{expected} rules in the PORTCULLIS_* chains (found {installed})"
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} redirect is incomplete after iptables-restore: missing {}",
            family.name(),
            missing.join(", ")
        ))
    }
}

pub(crate) fn has_rule(save: &str, rule: &str) -> bool {
    save.lines().any(|l| l.trim() == rule)
}

pub(crate) fn has_chain(save: &str, chain: &str) -> bool {
    save.lines().any(|l| {
        l.strip_prefix(':')
            .and_then(|r| r.split_whitespace().next())
            == Some(chain)
    })
}

/// `-m multiport` takes at most 15 ports per rule, a range counting as two.
fn multiport_chunks(ports: &PortList) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut weight = 0;
    for span in &ports.0 {
        let w = if span.first == span.last { 1 } else { 2 };
        if weight + w > 15 {
            chunks.push(current.join(","));
            current.clear();
            weight = 0;
        }
        current.push(span.to_string());
        weight += w;
    }
    if !current.is_empty() {
        chunks.push(current.join(","));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["portcullis-init"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("flags parse")
    }

    #[test]
    fn golden_ipv4_install() {
        let cfg = config(&[
            "--skip-inbound-ports=22,8000-8100",
            "--skip-outbound-ports=5432",
            "--skip-outbound-cidrs=10.96.0.0/12,fd00::/8",
        ]);
        let text = install(&cfg, Family::V4, "");
        let body: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "*nat",
                ":PORTCULLIS_INBOUND - [0:0]",
                ":PORTCULLIS_IN_REDIRECT - [0:0]",
                ":PORTCULLIS_OUTPUT - [0:0]",
                ":PORTCULLIS_OUT_REDIRECT - [0:0]",
                "-A PORTCULLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 4143",
                "-A PORTCULLIS_INBOUND -p tcp -m multiport --dports 4143,4140,4191 -j RETURN",
                "-A PORTCULLIS_INBOUND -p tcp -m multiport --dports 22,8000:8100 -j RETURN",
                "-A PORTCULLIS_INBOUND -p tcp -j PORTCULLIS_IN_REDIRECT",
                "-A PORTCULLIS_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 4140",
                "-A PORTCULLIS_OUTPUT -m owner --uid-owner 2171 -j RETURN",
                "-A PORTCULLIS_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A PORTCULLIS_OUTPUT -p tcp -m multiport --dports 5432 -j RETURN",
                "-A PORTCULLIS_OUTPUT -d 10.96.0.0/12 -j RETURN",
                "-A PORTCULLIS_OUTPUT -p tcp -j PORTCULLIS_OUT_REDIRECT",
                "-A PREROUTING -p tcp -j PORTCULLIS_INBOUND",
                "-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT",
                "COMMIT",
            ]
        );
    }

    #[test]
    fn ipv6_gets_ipv6_loopback_and_only_ipv6_cidrs() {
        let cfg = config(&["--skip-outbound-cidrs=10.96.0.0/12,fd00::/8"]);
        let text = install(&cfg, Family::V6, "");
        assert!(text.contains("-A PORTCULLIS_OUTPUT -d ::1/128 -j RETURN"));
        assert!(text.contains("-A PORTCULLIS_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(!text.contains("10.96.0.0/12"));
    }

    #[test]
    fn jumps_are_not_added_twice() {
        let cfg = config(&[]);
        let current = "*nat\n:PREROUTING ACCEPT [0:0]\n:PORTCULLIS_INBOUND - [0:0]\n-A PREROUTING -p tcp -j PORTCULLIS_INBOUND\n-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT\nCOMMIT\n";
        let text = install(&cfg, Family::V4, current);
        assert!(!text.contains("-A PREROUTING"));
        assert!(!text.contains("-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT"));
    }

    #[test]
    fn cleanup_removes_only_what_is_ours() {
        let current =
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SOMETHING - [0:0]\n\
            :PORTCULLIS_INBOUND - [0:0]\n:PORTCULLIS_IN_REDIRECT - [0:0]\n\
            -A PREROUTING -j KUBE-SOMETHING\n-A PREROUTING -p tcp -j PORTCULLIS_INBOUND\nCOMMIT\n";
        let text = cleanup(current).expect("something to remove");
        let body: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "*nat",
                "-D PREROUTING -p tcp -j PORTCULLIS_INBOUND",
                "-F PORTCULLIS_INBOUND",
                "-F PORTCULLIS_IN_REDIRECT",
                "-X PORTCULLIS_INBOUND",
                "-X PORTCULLIS_IN_REDIRECT",
                "COMMIT",
            ]
        );
        assert_eq!(cleanup("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"), None);
    }

    #[test]
    fn long_port_lists_are_split_for_multiport() {
        let list: PortList = (1..=20)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
            .parse()
            .expect("ports");
        let chunks = multiport_chunks(&list);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].split(',').count(), 15);
        let ranges: PortList = "1-2,3-4,5-6,7-8,9-10,11-12,13-14,15-16"
            .parse()
            .expect("ranges");
        assert_eq!(multiport_chunks(&ranges).len(), 2, "a range counts as two");
    }

    #[test]
    fn verify_names_what_is_missing() {
        let cfg = config(&[]);
        let err = verify(&cfg, Family::V4, "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n").unwrap_err();
        assert!(err.contains("chain PORTCULLIS_INBOUND"), "{err}");
        assert!(err.contains("REDIRECT to port 4143"), "{err}");
        // What install writes, as iptables-save would print it, passes.
        let saved: String = install(&cfg, Family::V4, "")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        verify(&cfg, Family::V4, &saved).expect("complete");
    }
}

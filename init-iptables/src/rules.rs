//! The rules, as `iptables-restore` input: pure functions of the configuration and of what the
//! kernel holds now (`iptables-save`), so they are golden-tested without a kernel.
//!
//! The rule set is a list of [`Part`]s: each is one table's share, the `PORTCULLIS_*` chains
//! it owns there, their rules, and the jumps into them from built-in chains. To add rules (for
//! example the UDP/SCTP NFQUEUE rules), add a `Part` in [`ruleset`] and its chains to [`OWNED`]:
//! install, `--cleanup` and the read-back check then cover them with no other change.

use ipnet::IpNet;

use crate::config::{Config, PortList, PortSpan, TcpPath};

/// Inbound TCP, in nat PREROUTING: what is addressed to the pod goes to the inbound proxy.
pub const INBOUND: &str = "PORTCULLIS_INBOUND";
pub const IN_REDIRECT: &str = "PORTCULLIS_IN_REDIRECT";
/// Outbound TCP, in nat OUTPUT: what the pod's applications open goes to the outbound proxy.
pub const OUTPUT: &str = "PORTCULLIS_OUTPUT";
pub const OUT_REDIRECT: &str = "PORTCULLIS_OUT_REDIRECT";
/// raw PREROUTING, before conntrack and any redirect: loopback addresses arriving from outside.
pub const ANTISPOOF: &str = "PORTCULLIS_ANTISPOOF";
/// filter FORWARD: nothing transits the pod.
pub const FORWARD: &str = "PORTCULLIS_FORWARD";

/// Every chain any configuration installs, by table: `--cleanup` removes these (and the jumps
/// into them) and nothing else.
pub const OWNED: [(Table, &str); 8] = [
    (Table::Raw, ANTISPOOF),
    (Table::Filter, FORWARD),
    (Table::Filter, crate::datagram::UDP_IN),
    (Table::Filter, crate::datagram::UDP_OUT),
    (Table::Nat, INBOUND),
    (Table::Nat, IN_REDIRECT),
    (Table::Nat, OUTPUT),
    (Table::Nat, OUT_REDIRECT),
];

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

    pub fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

/// The tables used, in the order they are written (drops before redirects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    Raw,
    Mangle,
    Filter,
    Nat,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Raw, Table::Mangle, Table::Filter, Table::Nat];

    pub fn name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Mangle => "mangle",
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// A rule in a built-in chain that sends packets into one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    /// The built-in chain (`PREROUTING`, `OUTPUT`, `FORWARD`).
    pub from: &'static str,
    /// Matches before `-j`, exactly as `iptables-save` prints them (`-p tcp`), or empty.
    pub matches: &'static str,
    pub to: &'static str,
    /// Inserted as the first rule of `from` (a drop that nothing before it may bypass), rather
    /// than appended.
    pub first: bool,
}

impl Jump {
    /// As `iptables-save` prints it.
    pub fn saved(&self) -> String {
        if self.matches.is_empty() {
            format!("-A {} -j {}", self.from, self.to)
        } else {
            format!("-A {} {} -j {}", self.from, self.matches, self.to)
        }
    }

    fn add(&self) -> String {
        if self.first {
            self.saved().replacen(
                &format!("-A {}", self.from),
                &format!("-I {} 1", self.from),
                1,
            )
        } else {
            self.saved()
        }
    }
}

/// One table's share of the rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub table: Table,
    /// Our chains in this part, each declared (and so flushed) on every install.
    pub chains: Vec<&'static str>,
    /// `-A CHAIN ...` lines, exactly as `iptables-save` prints them, in evaluation order.
    pub rules: Vec<String>,
    pub jumps: Vec<Jump>,
}

/// Everything to install for `family`.
pub fn ruleset(cfg: &Config, family: Family) -> Vec<Part> {
    let mut parts = vec![antispoof(family)];
    if !cfg.allow_forwarding {
        parts.push(Part {
            table: Table::Filter,
            chains: vec![FORWARD],
            rules: vec![format!("-A {FORWARD} -j DROP")],
            jumps: vec![Jump {
                from: "FORWARD",
                matches: "",
                to: FORWARD,
                first: true,
            }],
        });
    }
    if cfg.enforce_udp {
        parts.push(crate::datagram::part(cfg, family));
    }
    parts.push(nat_redirect(cfg, family));
    parts
}

/// raw PREROUTING runs before conntrack and before the nat redirect. A packet that arrives on
/// any interface but `lo` with a loopback source or destination is forged: the kernel would
/// drop it as a martian after routing, but nat PREROUTING comes first and its REDIRECT would
/// rewrite it into a connection to the inbound proxy, whose original destination then names a
/// localhost-only service. Drop it here, in both families. IPv6 also drops IPv4-mapped
/// destinations and sources (`::ffff:127.0.0.1` is IPv4 loopback to a dual-stack socket, and a
/// mapped source would be judged as the IPv4 address), which never appear on a wire.
///
/// Issue 20: other sources no pod's wire legitimately carries go too, before any verdict:
/// IPv4 `0.0.0.0/8`, multicast `224.0.0.0/4` and `255.255.255.255`; IPv6 `::/96` (unspecified,
/// and the deprecated IPv4-compatible addresses) except ICMPv6, because duplicate address
/// detection sends its neighbour solicitations and MLD reports from `::`, and multicast
/// `ff00::/8`.
fn antispoof(family: Family) -> Part {
    let lo = family.loopback();
    let mut rules = vec![
        format!("-A {ANTISPOOF} -d {lo} ! -i lo -j DROP"),
        format!("-A {ANTISPOOF} -s {lo} ! -i lo -j DROP"),
    ];
    let sources: &[&str] = match family {
        Family::V4 => &["0.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32"],
        Family::V6 => {
            rules.push(format!(
                "-A {ANTISPOOF} -d ::ffff:0.0.0.0/96 ! -i lo -j DROP"
            ));
            rules.push(format!(
                "-A {ANTISPOOF} -s ::ffff:0.0.0.0/96 ! -i lo -j DROP"
            ));
            rules.push(format!(
                "-A {ANTISPOOF} -s ::/96 ! -i lo ! -p ipv6-icmp -j DROP"
            ));
            &["ff00::/8"]
        }
    };
    for source in sources {
        rules.push(format!("-A {ANTISPOOF} -s {source} ! -i lo -j DROP"));
    }
    Part {
        table: Table::Raw,
        chains: vec![ANTISPOOF],
        rules,
        jumps: vec![Jump {
            from: "PREROUTING",
            matches: "",
            to: ANTISPOOF,
            first: true,
        }],
    }
}

/// The TCP redirect into the proxy: outbound always, inbound with `--inbound-tcp proxy`.
fn nat_redirect(cfg: &Config, family: Family) -> Part {
    let mut rules = Vec::new();
    let mut chains = Vec::new();
    let mut jumps = Vec::new();
    if cfg.inbound_tcp() == TcpPath::Proxy {
        rules = inbound_redirect(cfg);
        chains = vec![INBOUND, IN_REDIRECT];
        jumps.push(Jump {
            from: "PREROUTING",
            matches: "-p tcp",
            to: INBOUND,
            first: false,
        });
    }

    rules.extend(outbound_redirect(cfg, family));
    chains.extend([OUTPUT, OUT_REDIRECT]);
    jumps.push(Jump {
        from: "OUTPUT",
        matches: "-p tcp",
        to: OUTPUT,
        first: false,
    });
    Part {
        table: Table::Nat,
        chains,
        rules,
        jumps,
    }
}

/// Outbound: what the pod's applications open. The proxy's own connections (by UID, and by
/// mark with `--proxy-mark`) go out untouched, or they would loop; so do loopback traffic and
/// the skips. With `--outbound-tcp proxy` every other connection is redirected to the relay (one
/// to the pod's own IP too: the pod talking to itself); with `queue` only connections to
/// `--service-cidrs` are, and the rest reach filter `PORTCULLIS_UDP_OUT`, which queues their SYN
/// (see [`crate::datagram`]): a SYN that is not redirected here is judged there.
fn outbound_redirect(cfg: &Config, family: Family) -> Vec<String> {
    let mut rules = vec![
        format!(
            "-A {OUT_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            cfg.outbound_port
        ),
        format!("-A {OUTPUT} {} -j RETURN", proxy_match(cfg)),
        format!("-A {OUTPUT} -d {} -j RETURN", family.loopback()),
    ];
    for chunk in multiport_chunks(&cfg.skip_outbound_ports) {
        rules.push(format!(
            "-A {OUTPUT} -p tcp -m multiport --dports {chunk} -j RETURN"
        ));
    }
    for net in cfg.skip_outbound_cidrs.0.iter().filter(|n| family.holds(n)) {
        rules.push(format!("-A {OUTPUT} -d {net} -j RETURN"));
    }
    if cfg.outbound_tcp() == TcpPath::Proxy {
        rules.push(format!("-A {OUTPUT} -p tcp -j {OUT_REDIRECT}"));
    } else {
        for net in cfg.service_cidrs.0.iter().filter(|n| family.holds(n)) {
            rules.push(format!("-A {OUTPUT} -d {net} -p tcp -j {OUT_REDIRECT}"));
        }
    }
    rules
}

/// `--inbound-tcp proxy`: inbound TCP into the proxy's inbound listener. Only what is
/// addressed to the pod itself (any of its own addresses, including the ones on `lo`): a packet
/// a neighbour routes through the pod toward another address is left to routing (the FORWARD
/// drop), never to the proxy, which would relay it.
fn inbound_redirect(cfg: &Config) -> Vec<String> {
    let mut rules = vec![
        format!(
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
            cfg.inbound_port
        ),
        format!("-A {INBOUND} -m addrtype ! --dst-type LOCAL -j RETURN"),
    ];
    for ports in [&own_ports(cfg), &cfg.skip_inbound_ports] {
        for chunk in multiport_chunks(ports) {
            rules.push(format!(
                "-A {INBOUND} -p tcp -m multiport --dports {chunk} -j RETURN"
            ));
        }
    }
    rules.push(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));
    rules
}

/// The proxy's three ports: never redirected nor queued.
pub fn own_ports(cfg: &Config) -> PortList {
    PortList(
        [cfg.inbound_port, cfg.outbound_port, cfg.admin_port]
            .into_iter()
            .map(|p| PortSpan { first: p, last: p })
            .collect(),
    )
}

/// What identifies the proxy's own traffic, as `iptables-save` prints it: its UID and, with
/// `--proxy-mark`, the mark it sets on its sockets (all bits of the mark). By UID alone, any
/// process running as that UID is exempt; setting a mark takes CAP_NET_ADMIN, which only the
/// proxy has.
pub fn proxy_match(cfg: &Config) -> String {
    match cfg.proxy_mark {
        None => format!("-m owner --uid-owner {}", cfg.proxy_uid),
        Some(m) => format!(
            "-m owner --uid-owner {} -m mark --mark {m}/{m}",
            cfg.proxy_uid
        ),
    }
}

/// The lines of one table in `iptables-save` output (all tables), without `*table`/`COMMIT`.
pub fn table_lines(save: &str, table: Table) -> Vec<&str> {
    let header = format!("*{}", table.name());
    let mut inside = false;
    let mut out = Vec::new();
    for line in save.lines().map(str::trim) {
        if line.starts_with('*') {
            inside = line == header;
        } else if line == "COMMIT" {
            inside = false;
        } else if inside {
            out.push(line);
        }
    }
    out
}

fn has_chain(lines: &[&str], chain: &str) -> bool {
    lines.iter().any(|l| {
        l.strip_prefix(':')
            .and_then(|r| r.split_whitespace().next())
            == Some(chain)
    })
}

fn chain_rules<'a>(lines: &[&'a str], chain: &str) -> Vec<&'a str> {
    let prefix = format!("-A {chain} ");
    lines
        .iter()
        .copied()
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

/// `iptables-restore --noflush` input that installs the rule set. Declaring a chain flushes it,
/// so a second run rewrites our chains instead of appending; a jump is added only when absent
/// (a "first" jump that something else has pushed down is moved back to the top).
pub fn install(cfg: &Config, family: Family, current: &str) -> String {
    let parts = ruleset(cfg, family);
    let mut out = format!(
        "# portcullis-init {}: {} rules\n",
        env!("CARGO_PKG_VERSION"),
        family.name()
    );
    for table in Table::ALL {
        let parts: Vec<&Part> = parts.iter().filter(|p| p.table == table).collect();
        if parts.is_empty() {
            continue;
        }
        let now = table_lines(current, table);
        out.push_str(&format!("*{}\n", table.name()));
        for chain in parts.iter().flat_map(|p| &p.chains) {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for rule in parts.iter().flat_map(|p| &p.rules) {
            out.push_str(rule);
            out.push('\n');
        }
        for jump in parts.iter().flat_map(|p| &p.jumps) {
            let saved = jump.saved();
            let present = now.iter().any(|l| *l == saved);
            let on_top = chain_rules(&now, jump.from).first() == Some(&saved.as_str());
            if present && jump.first && !on_top {
                out.push_str(&saved.replacen("-A ", "-D ", 1));
                out.push('\n');
            }
            if !present || (jump.first && !on_top) {
                out.push_str(&jump.add());
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// `iptables-restore --noflush` input that removes every jump into an [`OWNED`] chain and those
/// chains, or `None` when none of them is there. Works on what is installed, whatever version
/// or flags installed it.
pub fn cleanup(current: &str) -> Option<String> {
    cleanup_chains(current, &OWNED)
}

/// [`cleanup`] for some of the [`OWNED`] chains only (`--enforce-udp=false` removes the queue
/// chains an earlier run installed).
pub fn cleanup_chains(current: &str, chains: &[(Table, &str)]) -> Option<String> {
    let mut out = String::new();
    for table in Table::ALL {
        let owned: Vec<&str> = chains
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, c)| *c)
            .collect();
        let lines = table_lines(current, table);
        let present: Vec<&str> = owned
            .iter()
            .copied()
            .filter(|c| has_chain(&lines, c))
            .collect();
        let mut ops: Vec<String> = Vec::new();
        for line in &lines {
            let mut words = line.split_whitespace();
            let (Some("-A"), Some(chain)) = (words.next(), words.next()) else {
                continue;
            };
            let target = line.rsplit_once(" -j ").map(|(_, t)| t.trim());
            if !owned.contains(&chain) && target.is_some_and(|t| owned.contains(&t)) {
                ops.push(line.replacen("-A ", "-D ", 1));
            }
        }
        // Flush all before deleting any: the chains jump to each other.
        ops.extend(present.iter().map(|c| format!("-F {c}")));
        ops.extend(present.iter().map(|c| format!("-X {c}")));
        if !ops.is_empty() {
            out.push_str(&format!("*{}\n{}\nCOMMIT\n", table.name(), ops.join("\n")));
        }
    }
    (!out.is_empty()).then(|| {
        format!(
            "# portcullis-init {}: cleanup\n{out}",
            env!("CARGO_PKG_VERSION")
        )
    })
}

/// Any [`OWNED`] chain still present in `save`.
pub fn owned_chains_left(save: &str) -> Vec<&'static str> {
    OWNED
        .iter()
        .filter(|(t, c)| has_chain(&table_lines(save, *t), c))
        .map(|(_, c)| *c)
        .collect()
}

/// The ruleset after an install is not the one written: each problem names a chain, rule or jump.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{family} rules are not as written after iptables-restore: missing or wrong: {}",
    problems.join(", ")
)]
pub struct VerifyError {
    pub family: &'static str,
    pub problems: Vec<String>,
}

/// What is wrong with the ruleset after an install, if anything: every chain of ours holds
/// exactly the rules meant for it, in order, and every jump is there (a "first" jump on top).
pub fn verify(cfg: &Config, family: Family, after: &str) -> Result<(), VerifyError> {
    let mut problems = Vec::new();
    for part in ruleset(cfg, family) {
        let table = part.table.name();
        let lines = table_lines(after, part.table);
        for chain in &part.chains {
            if !has_chain(&lines, chain) {
                problems.push(format!("chain {chain} ({table})"));
                continue;
            }
            let want: Vec<&str> = part
                .rules
                .iter()
                .map(String::as_str)
                .filter(|r| r.starts_with(&format!("-A {chain} ")))
                .collect();
            let got = chain_rules(&lines, chain);
            if got != want {
                problems.push(format!(
                    "{chain} ({table}) holds [{}], expected [{}]",
                    got.join("; "),
                    want.join("; ")
                ));
            }
        }
        for jump in &part.jumps {
            let saved = jump.saved();
            if jump.first {
                if chain_rules(&lines, jump.from).first() != Some(&saved.as_str()) {
                    problems.push(format!("`{saved}` ({table}) as the first rule"));
                }
            } else if !lines.contains(&saved.as_str()) {
                problems.push(format!("jump `{saved}` ({table})"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(VerifyError {
            family: family.name(),
            problems,
        })
    }
}

/// `-m multiport` takes at most 15 ports per rule, a range counting as two.
pub fn multiport_chunks(ports: &PortList) -> Vec<String> {
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
#[path = "rules_tests.rs"]
mod tests;

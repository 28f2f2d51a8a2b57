//! UDP and SCTP: the first packet of every new flow goes to the proxy's NFQUEUE for a verdict.
//!
//! These rules live in the filter table, in chains of their own, jumped to first from `INPUT`
//! and `OUTPUT`. Filter `INPUT`/`OUTPUT` see a packet after any nat DNAT in the pod, so the
//! verdict is on the address the packet really goes to. Only conntrack state `NEW` is queued:
//! every later packet of an accepted flow (and its replies) stays in the kernel. There is no
//! `--queue-bypass`: with no proxy reading the queue, new flows are dropped (fail closed).
//! Packets conntrack cannot place (`INVALID`, `UNTRACKED`) are dropped rather than let through
//! unjudged. Loopback (`-i lo`, `-o lo`) is not queued; neither is what the proxy itself sends
//! (its UID), as for TCP. Like [`crate::rules`], everything here is a pure function of the
//! configuration and of `iptables-save -t filter`, golden-tested without a kernel.

use crate::config::Config;
use crate::rules::{has_chain, has_rule, Family};

pub const UDP_IN: &str = "PORTCULLIS_UDP_IN";
pub const UDP_OUT: &str = "PORTCULLIS_UDP_OUT";
/// Every filter chain this program owns.
pub const CHAINS: [&str; 2] = [UDP_IN, UDP_OUT];

/// The jumps from the built-in chains, exactly as `iptables-save` prints them. They are
/// inserted at the top of `INPUT`/`OUTPUT`, so an `ACCEPT` already there cannot bypass them.
pub const JUMPS: [&str; 4] = [
    "-A INPUT -p udp -j PORTCULLIS_UDP_IN",
    "-A INPUT -p sctp -j PORTCULLIS_UDP_IN",
    "-A OUTPUT -p udp -j PORTCULLIS_UDP_OUT",
    "-A OUTPUT -p sctp -j PORTCULLIS_UDP_OUT",
];

/// The rules of the two chains, in evaluation order (without the jumps).
pub fn chain_rules(cfg: &Config) -> Vec<String> {
    let queue = format!("-j NFQUEUE --queue-num {}", cfg.nfqueue);
    let unplaced = "-m conntrack --ctstate INVALID,UNTRACKED -j DROP";
    vec![
        format!("-A {UDP_IN} -i lo -j RETURN"),
        format!("-A {UDP_IN} {unplaced}"),
        format!("-A {UDP_IN} -m conntrack --ctstate NEW {queue}"),
        format!("-A {UDP_OUT} -o lo -j RETURN"),
        format!(
            "-A {UDP_OUT} -m owner --uid-owner {} -j RETURN",
            cfg.proxy_uid
        ),
        format!("-A {UDP_OUT} {unplaced}"),
        format!("-A {UDP_OUT} -m conntrack --ctstate NEW {queue}"),
    ]
}

/// `iptables-restore --noflush` input that installs the queue rules. Declaring the chains
/// flushes them; the jumps are inserted only when absent.
pub fn install(cfg: &Config, family: Family, current_filter: &str) -> String {
    let mut out = format!(
        "# portcullis-init {}: {} UDP/SCTP queue rules\n*filter\n",
        env!("CARGO_PKG_VERSION"),
        family.name()
    );
    for chain in CHAINS {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in chain_rules(cfg) {
        out.push_str(&rule);
        out.push('\n');
    }
    // Inserted in reverse, each at position 1, so they end up in JUMPS order.
    for jump in JUMPS.iter().rev() {
        if !has_rule(current_filter, jump) {
            out.push_str(&insert_at_top(jump));
            out.push('\n');
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// `-A INPUT -p udp -j X` as `-I INPUT 1 -p udp -j X`.
fn insert_at_top(jump: &str) -> String {
    let rest = jump.strip_prefix("-A ").unwrap_or(jump);
    let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
    format!("-I {chain} 1 {spec}")
}

/// `iptables-restore --noflush` input that removes the jumps and the chains, or `None` when
/// none of them is there.
pub fn cleanup(current_filter: &str) -> Option<String> {
    let mut lines = Vec::new();
    for jump in JUMPS {
        let count = current_filter.lines().filter(|l| l.trim() == jump).count();
        for _ in 0..count {
            lines.push(jump.replacen("-A ", "-D ", 1));
        }
    }
    let present: Vec<&str> = CHAINS
        .into_iter()
        .filter(|c| has_chain(current_filter, c))
        .collect();
    lines.extend(present.iter().map(|c| format!("-F {c}")));
    lines.extend(present.iter().map(|c| format!("-X {c}")));
    if lines.is_empty() {
        return None;
    }
    Some(format!(
        "# portcullis-init {}: UDP/SCTP cleanup\n*filter\n{}\nCOMMIT\n",
        env!("CARGO_PKG_VERSION"),
        lines.join("\n")
    ))
}

/// What is wrong with the filter table after an install, if anything: every chain, every jump,
/// and exactly our rules, in our order, with the queue number (a queue rule that is missing
/// would let new flows through unjudged).
pub fn verify(cfg: &Config, family: Family, filter_after: &str) -> Result<(), String> {
    let mut missing = Vec::new();
    for chain in CHAINS {
        if !has_chain(filter_after, chain) {
            missing.push(format!("chain {chain}"));
        }
    }
    for jump in JUMPS {
        if !has_rule(filter_after, jump) {
            missing.push(format!("jump `{jump}`"));
        }
    }
    let expected = chain_rules(cfg);
    let installed: Vec<&str> = filter_after
        .lines()
        .map(str::trim)
        .filter(|l| CHAINS.iter().any(|c| l.starts_with(&format!("-A {c} "))))
        .collect();
    if installed != expected {
        missing.push(format!(
            "the {} rules of the PORTCULLIS_UDP_* chains as written (found {})",
            expected.len(),
            installed.len()
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} UDP/SCTP queue rules are incomplete after iptables-restore: missing {}",
            family.name(),
            missing.join(", ")
        ))
    }
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
    fn golden_install() {
        let text = install(&config(&[]), Family::V4, "");
        let body: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "*filter",
                ":PORTCULLIS_UDP_IN - [0:0]",
                ":PORTCULLIS_UDP_OUT - [0:0]",
                "-A PORTCULLIS_UDP_IN -i lo -j RETURN",
                "-A PORTCULLIS_UDP_IN -m conntrack --ctstate INVALID,UNTRACKED -j DROP",
                "-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171",
                "-A PORTCULLIS_UDP_OUT -o lo -j RETURN",
                "-A PORTCULLIS_UDP_OUT -m owner --uid-owner 2171 -j RETURN",
                "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate INVALID,UNTRACKED -j DROP",
                "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171",
                "-I OUTPUT 1 -p sctp -j PORTCULLIS_UDP_OUT",
                "-I OUTPUT 1 -p udp -j PORTCULLIS_UDP_OUT",
                "-I INPUT 1 -p sctp -j PORTCULLIS_UDP_IN",
                "-I INPUT 1 -p udp -j PORTCULLIS_UDP_IN",
                "COMMIT",
            ]
        );
        // The same for IPv6: nothing here is family specific.
        assert_eq!(
            install(&config(&[]), Family::V6, "")
                .lines()
                .skip(1)
                .collect::<Vec<_>>(),
            body
        );
    }

    #[test]
    fn no_queue_bypass_and_the_queue_number_is_configurable() {
        let text = install(
            &config(&["--nfqueue=7", "--proxy-uid=1000"]),
            Family::V4,
            "",
        );
        assert!(!text.contains("bypass"), "fail closed: {text}");
        assert_eq!(text.matches("--queue-num 7\n").count(), 2);
        assert!(text.contains("--uid-owner 1000"));
    }

    #[test]
    fn jumps_are_not_inserted_twice() {
        let current = "*filter\n:INPUT ACCEPT [0:0]\n:PORTCULLIS_UDP_IN - [0:0]\n\
                       -A INPUT -p udp -j PORTCULLIS_UDP_IN\n\
                       -A OUTPUT -p sctp -j PORTCULLIS_UDP_OUT\nCOMMIT\n";
        let text = install(&config(&[]), Family::V4, current);
        assert!(!text.contains("-I INPUT 1 -p udp"));
        assert!(!text.contains("-I OUTPUT 1 -p sctp"));
        assert!(text.contains("-I INPUT 1 -p sctp -j PORTCULLIS_UDP_IN"));
        assert!(text.contains("-I OUTPUT 1 -p udp -j PORTCULLIS_UDP_OUT"));
    }

    #[test]
    fn cleanup_removes_only_what_is_ours() {
        let current = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:OTHER - [0:0]\n\
                       :PORTCULLIS_UDP_IN - [0:0]\n:PORTCULLIS_UDP_OUT - [0:0]\n\
                       -A INPUT -p udp -j PORTCULLIS_UDP_IN\n-A INPUT -p tcp --dport 23 -j DROP\n\
                       -A OUTPUT -p udp -j PORTCULLIS_UDP_OUT\n-A OUTPUT -p sctp -j PORTCULLIS_UDP_OUT\n\
                       -A PORTCULLIS_UDP_IN -i lo -j RETURN\nCOMMIT\n";
        let text = cleanup(current).expect("something to remove");
        let body: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            body,
            [
                "*filter",
                "-D INPUT -p udp -j PORTCULLIS_UDP_IN",
                "-D OUTPUT -p udp -j PORTCULLIS_UDP_OUT",
                "-D OUTPUT -p sctp -j PORTCULLIS_UDP_OUT",
                "-F PORTCULLIS_UDP_IN",
                "-F PORTCULLIS_UDP_OUT",
                "-X PORTCULLIS_UDP_IN",
                "-X PORTCULLIS_UDP_OUT",
                "COMMIT",
            ]
        );
        assert_eq!(cleanup("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"), None);
    }

    fn as_saved(restore_input: &str) -> String {
        // What iptables-save prints after that input: inserted jumps show as appended.
        restore_input
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.strip_prefix("-I ") {
                Some(rest) => format!("-A {}\n", rest.replacen(" 1 ", " ", 1)),
                None => format!("{l}\n"),
            })
            .collect()
    }

    #[test]
    fn verify_names_what_is_missing_and_accepts_what_install_wrote() {
        let cfg = config(&[]);
        let err = verify(&cfg, Family::V4, "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n").unwrap_err();
        assert!(err.contains("chain PORTCULLIS_UDP_IN"), "{err}");
        assert!(
            err.contains("-A OUTPUT -p sctp -j PORTCULLIS_UDP_OUT"),
            "{err}"
        );
        let saved = as_saved(&install(&cfg, Family::V4, ""));
        verify(&cfg, Family::V4, &saved).expect("complete");
        // A queue rule that went missing (or lost its number) is caught.
        let without_queue: String = saved
            .lines()
            .filter(|l| !(l.starts_with("-A PORTCULLIS_UDP_OUT") && l.contains("NFQUEUE")))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(verify(&cfg, Family::V4, &without_queue).is_err());
        let other_queue = saved.replace("--queue-num 4171", "--queue-num 1");
        assert!(verify(&cfg, Family::V4, &other_queue).is_err());
    }
}

//! Every IP protocol but ICMP: the first packet of every new flow goes to the proxy's NFQUEUE for
//! a verdict (UDP and SCTP, and since issue 20 UDP-Lite, GRE, IPIP and any other protocol, which
//! the proxy judges as port-less flows; inbound TCP too with `--inbound-tcp queue`).
//!
//! One [`Part`] of the rule set, in the filter table, in chains of its own, jumped to first from
//! `INPUT` and `OUTPUT` (an `ACCEPT` already there cannot bypass them). Filter `INPUT`/`OUTPUT`
//! see a packet after any nat DNAT in the pod, so the verdict is on the address the packet
//! really goes to. Only conntrack state `NEW` is queued: every later packet of an accepted flow
//! (and its replies) stays in the kernel. There is no `--queue-bypass`: with no proxy reading the
//! queue, new flows are dropped (fail closed). Packets conntrack cannot place (`INVALID`,
//! `UNTRACKED`) are dropped rather than let through unjudged. Loopback (`-i lo`, `-o lo`) is not
//! queued; neither is what the proxy itself sends (its UID, and its mark with `--proxy-mark`).
//! TCP this chain does not judge (outbound, and inbound with `--inbound-tcp proxy`) returns to
//! the nat redirect untouched. ICMP and ICMPv6 return first, whatever their state: NetworkPolicy
//! does not cover them, and path MTU discovery, neighbour discovery and the errors of allowed
//! flows (conntrack `RELATED`) need them (docs/enforcement.md).
//!
//! Floods: a peer sending new flows or SYNs faster than `--new-flows-per-source` (per source
//! address, `hashlimit`) has the excess dropped in the kernel before the queue, so the queue's
//! netlink socket does not overflow and other peers' first packets still get their verdict.

use portcullis_contract::{DNS_NFQUEUE, QUEUED_CONNMARK, REFUSED_MARK};

use crate::config::{Config, TcpPath};
use crate::rules::{Family, Jump, Part, Table};

pub const UDP_IN: &str = "PORTCULLIS_UDP_IN";
pub const UDP_OUT: &str = "PORTCULLIS_UDP_OUT";
/// Our chains (also in [`crate::rules::OWNED`]).
pub const OWNED: [(Table, &str); 2] = [(Table::Filter, UDP_IN), (Table::Filter, UDP_OUT)];

/// ICMP as `iptables-save` / `ip6tables-save` print it.
fn icmp(family: Family) -> &'static str {
    match family {
        Family::V4 => "icmp",
        Family::V6 => "ipv6-icmp",
    }
}

/// The queue rules, when `--enforce-udp` (the default); with `--inbound-tcp queue` (the default
/// then) `PORTCULLIS_UDP_IN` judges inbound TCP too, and with `--outbound-tcp queue`
/// `PORTCULLIS_UDP_OUT` judges outbound TCP that the nat redirect left alone (everything but
/// the Service ranges).
pub fn part(cfg: &Config, family: Family) -> Part {
    let mut rules = chain_rules(cfg, family, UDP_IN);
    rules.extend(chain_rules(cfg, family, UDP_OUT));
    Part {
        table: Table::Filter,
        chains: vec![UDP_IN, UDP_OUT],
        rules,
        jumps: vec![
            Jump {
                from: "INPUT",
                matches: "",
                to: UDP_IN,
                first: true,
            },
            Jump {
                from: "OUTPUT",
                matches: "",
                to: UDP_OUT,
                first: true,
            },
        ],
    }
}

/// One chain's rules: its exemptions, ICMP, then TCP (queued with the connmark, or returned to
/// the nat redirect), the `INVALID` drop, the flood limit (inbound) and the queue.
fn chain_rules(cfg: &Config, family: Family, chain: &str) -> Vec<String> {
    let queue = format!("-j NFQUEUE --queue-num {}", cfg.nfqueue);
    let (judges_tcp, exempt) = if chain == UDP_IN {
        let tcp = cfg.inbound_tcp() == TcpPath::Queue;
        (tcp, inbound_exemptions(cfg, family, tcp))
    } else {
        let tcp = cfg.outbound_tcp() == TcpPath::Queue;
        (tcp, outbound_exemptions(cfg, family, tcp))
    };
    let mut rules: Vec<String> = exempt.iter().map(|r| format!("-A {chain} {r}")).collect();
    if judges_tcp {
        // Every TCP connection that gets here is judged: the connmark marks it as the queue's.
        rules.push(format!(
            "-A {chain} -p tcp -m conntrack --ctstate NEW -j CONNMARK --set-xmark \
             {QUEUED_CONNMARK}/{QUEUED_CONNMARK}"
        ));
    } else {
        rules.push(format!("-A {chain} -p tcp -j RETURN"));
    }
    rules.push(format!(
        "-A {chain} -m conntrack --ctstate INVALID,UNTRACKED -j DROP"
    ));
    if cfg.learn_dns {
        rules.push(format!("-A {chain} {}", dns_rule(chain)));
    }
    if chain == UDP_IN {
        rules.extend(flood_limit(cfg).map(|r| format!("-A {chain} {r}")));
    }
    rules.push(format!("-A {chain} -m conntrack --ctstate NEW {queue}"));
    rules
}

/// With `--learn-dns`: every outbound DNS query over UDP (new flow or not: a resolver sends A
/// and AAAA on one socket) and every reply conntrack ties to a flow the pod opened, whole, to
/// the proxy's DNS queue. The proxy records the query and judges it as the first packet of a
/// flow; it learns from the reply before accepting it. A datagram from port 53 that opens a new
/// flow is not a reply: it goes to the flow queue like any other.
fn dns_rule(chain: &str) -> String {
    if chain == UDP_IN {
        format!(
            "-p udp -m udp --sport 53 -m conntrack --ctstate ESTABLISHED --ctdir REPLY \
             -j NFQUEUE --queue-num {DNS_NFQUEUE}"
        )
    } else {
        format!(
            "-p udp -m udp --dport 53 -m conntrack --ctstate NEW,ESTABLISHED --ctdir ORIGINAL \
             -j NFQUEUE --queue-num {DNS_NFQUEUE}"
        )
    }
}

/// What `PORTCULLIS_UDP_OUT` never queues: loopback (the relay's redirect goes there too), the
/// proxy's own traffic, ICMP and, when it judges outbound TCP, the `--skip-outbound-*` TCP the
/// nat rules exempt. Before all of them, with outbound TCP in the queue, the SYN the proxy
/// refused comes back (verdict `NF_REPEAT` with [`REFUSED_MARK`]) and is answered with a reset,
/// so the application's `connect()` fails at once with `ECONNREFUSED`.
fn outbound_exemptions(cfg: &Config, family: Family, tcp: bool) -> Vec<String> {
    let mut exempt = Vec::new();
    if tcp {
        exempt.push(format!(
            "-p tcp -m mark --mark {REFUSED_MARK}/{REFUSED_MARK} -j REJECT --reject-with tcp-reset"
        ));
    }
    exempt.push("-o lo -j RETURN".to_string());
    if tcp {
        // A connection nat `OUTPUT` redirected to the relay (a Service): filter `OUTPUT` sees
        // it after the redirect, addressed to the relay, but with its original output device,
        // so `-o lo` does not catch it.
        let relay = match family {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        };
        exempt.push(format!(
            "-d {relay} -p tcp -m tcp --dport {} -j RETURN",
            cfg.outbound_port
        ));
    }
    exempt.push(format!("{} -j RETURN", crate::rules::proxy_match(cfg)));
    exempt.push(format!("-p {} -j RETURN", icmp(family)));
    if tcp {
        for chunk in crate::rules::multiport_chunks(&cfg.skip_outbound_ports) {
            exempt.push(format!("-p tcp -m multiport --dports {chunk} -j RETURN"));
        }
        for net in cfg.skip_outbound_cidrs.0.iter().filter(|n| family.holds(n)) {
            exempt.push(format!("-d {net} -p tcp -j RETURN"));
        }
    }
    exempt
}

/// The per-source limit on new inbound flows, before the queue rule (none with 0). The same
/// hashlimit name in both families: the kernel keeps one table per name and family.
fn flood_limit(cfg: &Config) -> Option<String> {
    let rate = cfg.new_flows_per_source;
    (rate > 0).then(|| {
        format!(
            "-m conntrack --ctstate NEW -m hashlimit --hashlimit-above {rate}/sec \
             --hashlimit-burst {} --hashlimit-mode srcip --hashlimit-name portcullis-in \
             --hashlimit-htable-max 65536 --hashlimit-htable-expire 10000 -j DROP",
            rate.saturating_mul(2)
        )
    })
}

/// What `PORTCULLIS_UDP_IN` never queues: loopback, ICMP and, when it judges inbound TCP, the
/// proxy's own ports and `--skip-inbound-ports` (as the nat redirect skips them).
fn inbound_exemptions(cfg: &Config, family: Family, tcp: bool) -> Vec<String> {
    let mut exempt = vec!["-i lo -j RETURN".to_string()];
    if tcp {
        for ports in [&crate::rules::own_ports(cfg), &cfg.skip_inbound_ports] {
            for chunk in crate::rules::multiport_chunks(ports) {
                exempt.push(format!("-p tcp -m multiport --dports {chunk} -j RETURN"));
            }
        }
    }
    exempt.push(format!("-p {} -j RETURN", icmp(family)));
    exempt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{cleanup_chains, install, Family};
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["portcullis-init"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("flags parse")
    }

    fn filter_body(text: &str) -> Vec<&str> {
        let mut inside = false;
        text.lines()
            .filter(|l| {
                if l.starts_with('*') {
                    inside = *l == "*filter";
                }
                let keep = inside;
                if *l == "COMMIT" {
                    inside = false;
                }
                keep
            })
            .collect()
    }

    /// The IPv4 rules as IPv6 writes them: only ICMP's name and the relay's address differ.
    fn as_v6(v4: &[&str]) -> Vec<String> {
        v4.iter()
            .map(|l| {
                l.replace("-p icmp ", "-p ipv6-icmp ")
                    .replace("-d 127.0.0.1/32 ", "-d ::1/128 ")
            })
            .collect()
    }

    /// Issue 20: every protocol but ICMP is queued (UDP-Lite, GRE, IPIP, 253 ...), and ICMP
    /// returns before the `INVALID` drop and the queue, in both chains and both families.
    #[test]
    fn every_protocol_but_icmp_is_queued_and_icmp_returns_first() {
        for family in [Family::V4, Family::V6] {
            let text = install(&config(&[]), family, "");
            for chain in [UDP_IN, UDP_OUT] {
                let rules: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with(&format!("-A {chain} ")))
                    .collect();
                let at = |needle: &str| rules.iter().position(|l| l.contains(needle));
                let icmp = at(&format!("-p {} -j RETURN", icmp(family))).expect("ICMP returns");
                let drop = at("-m conntrack --ctstate INVALID,UNTRACKED -j DROP").expect("drop");
                let queue = at("-m conntrack --ctstate NEW -j NFQUEUE").expect("queue");
                assert!(icmp < drop && drop < queue, "{rules:?}");
                // The drop and the queue name no protocol: they catch every one.
                assert!(!rules[drop].contains(" -p ") && !rules[queue].contains(" -p "));
            }
        }
    }

    #[test]
    fn golden_filter_table_with_inbound_tcp_in_the_queue() {
        let text = install(
            &config(&["--allow-forwarding", "--skip-inbound-ports=22"]),
            Family::V4,
            "",
        );
        assert_eq!(
            filter_body(&text),
            [
                "*filter",
                ":PORTCULLIS_UDP_IN - [0:0]",
                ":PORTCULLIS_UDP_OUT - [0:0]",
                "-A PORTCULLIS_UDP_IN -i lo -j RETURN",
                "-A PORTCULLIS_UDP_IN -p tcp -m multiport --dports 4143,4140,4191 -j RETURN",
                "-A PORTCULLIS_UDP_IN -p tcp -m multiport --dports 22 -j RETURN",
                "-A PORTCULLIS_UDP_IN -p icmp -j RETURN",
                "-A PORTCULLIS_UDP_IN -p tcp -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x1000/0x1000",
                "-A PORTCULLIS_UDP_IN -m conntrack --ctstate INVALID,UNTRACKED -j DROP",
                "-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -m hashlimit --hashlimit-above 5000/sec --hashlimit-burst 10000 --hashlimit-mode srcip --hashlimit-name portcullis-in --hashlimit-htable-max 65536 --hashlimit-htable-expire 10000 -j DROP",
                "-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171",
                // Issue 26: the SYN the proxy refused comes back marked and is reset at once.
                "-A PORTCULLIS_UDP_OUT -p tcp -m mark --mark 0x2000/0x2000 -j REJECT --reject-with tcp-reset",
                "-A PORTCULLIS_UDP_OUT -o lo -j RETURN",
                "-A PORTCULLIS_UDP_OUT -d 127.0.0.1/32 -p tcp -m tcp --dport 4140 -j RETURN",
                "-A PORTCULLIS_UDP_OUT -m owner --uid-owner 2171 -j RETURN",
                "-A PORTCULLIS_UDP_OUT -p icmp -j RETURN",
                // Outbound TCP the nat rules did not redirect (not to a Service) is queued.
                "-A PORTCULLIS_UDP_OUT -p tcp -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x1000/0x1000",
                "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate INVALID,UNTRACKED -j DROP",
                "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171",
                "-I INPUT 1 -j PORTCULLIS_UDP_IN",
                "-I OUTPUT 1 -j PORTCULLIS_UDP_OUT",
                "COMMIT",
            ]
        );
        // No inbound redirect in nat: the queue judges inbound TCP.
        assert!(!text.contains("PORTCULLIS_INBOUND"), "{text}");
        assert!(!text.contains("PORTCULLIS_IN_REDIRECT"), "{text}");
        assert!(
            text.contains("-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT"),
            "{text}"
        );
        let v6 = install(
            &config(&["--allow-forwarding", "--skip-inbound-ports=22"]),
            Family::V6,
            "",
        );
        assert_eq!(filter_body(&v6), as_v6(&filter_body(&text)));
    }

    #[test]
    fn golden_filter_table() {
        let text = install(
            &config(&[
                "--allow-forwarding",
                "--inbound-tcp=proxy",
                "--outbound-tcp=proxy",
            ]),
            Family::V4,
            "",
        );
        assert_eq!(
            filter_body(&text),
            [
                "*filter",
                ":PORTCULLIS_UDP_IN - [0:0]",
                ":PORTCULLIS_UDP_OUT - [0:0]",
                "-A PORTCULLIS_UDP_IN -i lo -j RETURN",
                "-A PORTCULLIS_UDP_IN -p icmp -j RETURN",
                "-A PORTCULLIS_UDP_IN -p tcp -j RETURN",
                "-A PORTCULLIS_UDP_IN -m conntrack --ctstate INVALID,UNTRACKED -j DROP",
                "-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -m hashlimit --hashlimit-above 5000/sec --hashlimit-burst 10000 --hashlimit-mode srcip --hashlimit-name portcullis-in --hashlimit-htable-max 65536 --hashlimit-htable-expire 10000 -j DROP",
                "-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171",
                "-A PORTCULLIS_UDP_OUT -o lo -j RETURN",
                "-A PORTCULLIS_UDP_OUT -m owner --uid-owner 2171 -j RETURN",
                "-A PORTCULLIS_UDP_OUT -p icmp -j RETURN",
                "-A PORTCULLIS_UDP_OUT -p tcp -j RETURN",
                "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate INVALID,UNTRACKED -j DROP",
                "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171",
                "-I INPUT 1 -j PORTCULLIS_UDP_IN",
                "-I OUTPUT 1 -j PORTCULLIS_UDP_OUT",
                "COMMIT",
            ]
        );
        // Only ICMP's name is family specific.
        let v6 = install(
            &config(&[
                "--allow-forwarding",
                "--inbound-tcp=proxy",
                "--outbound-tcp=proxy",
            ]),
            Family::V6,
            "",
        );
        assert_eq!(filter_body(&v6), as_v6(&filter_body(&text)));
    }

    #[test]
    fn golden_dns_queue_rules_with_learn_dns() {
        let text = install(
            &config(&[
                "--allow-forwarding",
                "--inbound-tcp=proxy",
                "--outbound-tcp=proxy",
                "--learn-dns",
            ]),
            Family::V4,
            "",
        );
        let body = filter_body(&text);
        let dns: Vec<&str> = body
            .iter()
            .copied()
            .filter(|r| r.contains("4172"))
            .collect();
        assert_eq!(
            dns,
            [
                "-A PORTCULLIS_UDP_IN -p udp -m udp --sport 53 -m conntrack --ctstate ESTABLISHED --ctdir REPLY -j NFQUEUE --queue-num 4172",
                "-A PORTCULLIS_UDP_OUT -p udp -m udp --dport 53 -m conntrack --ctstate NEW,ESTABLISHED --ctdir ORIGINAL -j NFQUEUE --queue-num 4172",
            ]
        );
        // After the exemptions and the INVALID drop, before the flow queue.
        let at = |r: &str| body.iter().position(|l| *l == r).expect(r);
        assert!(at(dns[1]) > at("-A PORTCULLIS_UDP_OUT -m owner --uid-owner 2171 -j RETURN"));
        assert!(
            at(dns[1])
                < at(
                    "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171"
                )
        );
        assert!(
            at(dns[0])
                < at("-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171")
        );
        // Off by default: the goldens above have no DNS rule.
        let plain = install(&config(&["--allow-forwarding"]), Family::V4, "");
        assert!(!plain.contains("4172"));
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
        assert!(text.contains("-A PORTCULLIS_UDP_OUT -m owner --uid-owner 1000 -j RETURN"));
    }

    #[test]
    fn golden_udp_out_with_a_proxy_mark() {
        let text = install(
            &config(&["--allow-forwarding", "--proxy-mark=0x1000"]),
            Family::V4,
            "",
        );
        let out: Vec<&str> = filter_body(&text)
            .into_iter()
            .filter(|l| l.starts_with("-A PORTCULLIS_UDP_OUT "))
            .collect();
        assert_eq!(
            out,
            [
                "-A PORTCULLIS_UDP_OUT -p tcp -m mark --mark 0x2000/0x2000 -j REJECT --reject-with tcp-reset",
                "-A PORTCULLIS_UDP_OUT -o lo -j RETURN",
                "-A PORTCULLIS_UDP_OUT -d 127.0.0.1/32 -p tcp -m tcp --dport 4140 -j RETURN",
                "-A PORTCULLIS_UDP_OUT -m owner --uid-owner 2171 -m mark --mark 0x1000/0x1000 -j RETURN",
                "-A PORTCULLIS_UDP_OUT -p icmp -j RETURN",
                "-A PORTCULLIS_UDP_OUT -p tcp -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x1000/0x1000",
                "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate INVALID,UNTRACKED -j DROP",
                "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171",
            ]
        );
    }

    #[test]
    fn enforce_udp_false_installs_no_queue_and_its_cleanup_touches_nothing_else() {
        let text = install(&config(&["--enforce-udp=false"]), Family::V4, "");
        assert!(
            !text.contains("NFQUEUE") && !text.contains(UDP_IN),
            "{text}"
        );
        let current = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                       :PORTCULLIS_FORWARD - [0:0]\n:PORTCULLIS_UDP_IN - [0:0]\n\
                       :PORTCULLIS_UDP_OUT - [0:0]\n-A INPUT -j PORTCULLIS_UDP_IN\n\
                       -A OUTPUT -j PORTCULLIS_UDP_OUT\n-A FORWARD -j PORTCULLIS_FORWARD\n\
                       -A PORTCULLIS_UDP_IN -i lo -j RETURN\nCOMMIT\n";
        let removal = cleanup_chains(current, &OWNED).expect("something to remove");
        let lines: Vec<&str> = removal.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "*filter",
                "-D INPUT -j PORTCULLIS_UDP_IN",
                "-D OUTPUT -j PORTCULLIS_UDP_OUT",
                "-F PORTCULLIS_UDP_IN",
                "-F PORTCULLIS_UDP_OUT",
                "-X PORTCULLIS_UDP_IN",
                "-X PORTCULLIS_UDP_OUT",
                "COMMIT",
            ]
        );
    }

    #[test]
    fn the_flood_limit_is_per_source_configurable_and_can_be_off() {
        let text = |args: &[&str]| install(&config(args), Family::V4, "");
        let limited = text(&["--new-flows-per-source=300"]);
        assert!(limited.contains(
            "-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -m hashlimit --hashlimit-above \
             300/sec --hashlimit-burst 600 --hashlimit-mode srcip"
        ));
        // Before the queue rule, after loopback's exemption; never on the way out.
        let at = |needle: &str| limited.find(needle).expect(needle);
        assert!(at("hashlimit") > at("-A PORTCULLIS_UDP_IN -i lo -j RETURN"));
        assert!(at("hashlimit") < at("-A PORTCULLIS_UDP_IN -m conntrack --ctstate NEW -j NFQUEUE"));
        assert!(!limited.contains("-A PORTCULLIS_UDP_OUT -m conntrack --ctstate NEW -m hashlimit"));
        assert!(!text(&["--new-flows-per-source=0"]).contains("hashlimit"));
    }

    /// Issue 26: outbound TCP to the Service ranges is redirected to the relay, every other
    /// outbound SYN is queued (the skips exempt from both), per family; `--outbound-tcp proxy`
    /// keeps today's redirect of everything.
    #[test]
    fn golden_outbound_tcp_in_the_queue_but_services_relayed() {
        let args = [
            "--allow-forwarding",
            "--skip-outbound-ports=25",
            "--skip-outbound-cidrs=192.168.0.0/16,fd01::/16",
            "--service-cidrs=10.96.0.0/12,fd00:96::/108",
        ];
        let text = install(&config(&args), Family::V4, "");
        let chain = |text: &str, prefix: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(String::from)
                .collect()
        };
        assert_eq!(
            chain(&text, "-A PORTCULLIS_OUTPUT "),
            [
                "-A PORTCULLIS_OUTPUT -m owner --uid-owner 2171 -j RETURN",
                "-A PORTCULLIS_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A PORTCULLIS_OUTPUT -p tcp -m multiport --dports 25 -j RETURN",
                "-A PORTCULLIS_OUTPUT -d 192.168.0.0/16 -j RETURN",
                "-A PORTCULLIS_OUTPUT -d 10.96.0.0/12 -p tcp -j PORTCULLIS_OUT_REDIRECT",
            ]
        );
        assert_eq!(
            chain(&text, "-A PORTCULLIS_UDP_OUT "),
            [
                "-A PORTCULLIS_UDP_OUT -p tcp -m mark --mark 0x2000/0x2000 -j REJECT --reject-with tcp-reset",
                "-A PORTCULLIS_UDP_OUT -o lo -j RETURN",
                "-A PORTCULLIS_UDP_OUT -d 127.0.0.1/32 -p tcp -m tcp --dport 4140 -j RETURN",
                "-A PORTCULLIS_UDP_OUT -m owner --uid-owner 2171 -j RETURN",
                "-A PORTCULLIS_UDP_OUT -p icmp -j RETURN",
                "-A PORTCULLIS_UDP_OUT -p tcp -m multiport --dports 25 -j RETURN",
                "-A PORTCULLIS_UDP_OUT -d 192.168.0.0/16 -p tcp -j RETURN",
                "-A PORTCULLIS_UDP_OUT -p tcp -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x1000/0x1000",
                "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate INVALID,UNTRACKED -j DROP",
                "-A PORTCULLIS_UDP_OUT -m conntrack --ctstate NEW -j NFQUEUE --queue-num 4171",
            ]
        );
        let v6 = install(&config(&args), Family::V6, "");
        assert!(v6
            .contains("-A PORTCULLIS_OUTPUT -d fd00:96::/108 -p tcp -j PORTCULLIS_OUT_REDIRECT\n"));
        assert!(v6.contains("-A PORTCULLIS_UDP_OUT -d fd01::/16 -p tcp -j RETURN\n"));
        assert!(!v6.contains("10.96.0.0/12") && !text.contains("fd00:96::"));
        // No catch-all redirect: what is not to a Service reaches the queue.
        assert!(!text.contains("-A PORTCULLIS_OUTPUT -p tcp -j PORTCULLIS_OUT_REDIRECT"));
        // No Service range at all: every outbound SYN is queued.
        let none = install(&config(&["--service-cidrs="]), Family::V4, "");
        assert!(
            !none.contains("-j PORTCULLIS_OUT_REDIRECT\n-A")
                && !none.contains("-p tcp -j PORTCULLIS_OUT_REDIRECT")
        );
        let relayed = install(&config(&["--outbound-tcp=proxy"]), Family::V4, "");
        assert!(relayed.contains("-A PORTCULLIS_OUTPUT -p tcp -j PORTCULLIS_OUT_REDIRECT\n"));
        assert!(relayed.contains("-A PORTCULLIS_UDP_OUT -p tcp -j RETURN\n"));
        assert!(!relayed.contains("REJECT"));
    }
}

use super::*;
use clap::Parser;

fn config(args: &[&str]) -> Config {
    let mut all = vec!["portcullis-init"];
    all.extend_from_slice(args);
    Config::try_parse_from(all).expect("flags parse")
}

/// The restore input without its comment line.
fn body(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

/// What `iptables-save` would print after `install` on empty tables.
fn saved(cfg: &Config, family: Family) -> String {
    install(cfg, family, "")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix("-I ") {
            // `-I CHAIN 1 rest` is saved as `-A CHAIN rest`.
            Some(r) => {
                let mut w = r.splitn(3, ' ');
                let (c, _, rest) = (w.next().unwrap_or(""), w.next(), w.next().unwrap_or(""));
                format!("-A {c} {rest}\n")
            }
            None => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn golden_ipv4_install() {
    // The UDP/SCTP queue part has its own golden test (datagram.rs).
    let cfg = config(&[
        "--skip-inbound-ports=22,8000-8100",
        "--skip-outbound-ports=5432",
        "--skip-outbound-cidrs=10.96.0.0/12,fd00::/8",
        "--enforce-udp=false",
    ]);
    let text = install(&cfg, Family::V4, "");
    assert_eq!(
        body(&text),
        [
            "*raw",
            ":PORTCULLIS_ANTISPOOF - [0:0]",
            "-A PORTCULLIS_ANTISPOOF -d 127.0.0.0/8 ! -i lo -j DROP",
            "-A PORTCULLIS_ANTISPOOF -s 127.0.0.0/8 ! -i lo -j DROP",
            "-A PORTCULLIS_ANTISPOOF -s 0.0.0.0/8 ! -i lo -j DROP",
            "-A PORTCULLIS_ANTISPOOF -s 224.0.0.0/4 ! -i lo -j DROP",
            "-A PORTCULLIS_ANTISPOOF -s 255.255.255.255/32 ! -i lo -j DROP",
            "-I PREROUTING 1 -j PORTCULLIS_ANTISPOOF",
            "COMMIT",
            "*filter",
            ":PORTCULLIS_FORWARD - [0:0]",
            "-A PORTCULLIS_FORWARD -j DROP",
            "-I FORWARD 1 -j PORTCULLIS_FORWARD",
            "COMMIT",
            "*nat",
            ":PORTCULLIS_INBOUND - [0:0]",
            ":PORTCULLIS_IN_REDIRECT - [0:0]",
            ":PORTCULLIS_OUTPUT - [0:0]",
            ":PORTCULLIS_OUT_REDIRECT - [0:0]",
            "-A PORTCULLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 4143",
            "-A PORTCULLIS_INBOUND -m addrtype ! --dst-type LOCAL -j RETURN",
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
fn ipv6_gets_ipv6_loopback_mapped_addresses_and_only_ipv6_cidrs() {
    let cfg = config(&[
        "--skip-outbound-cidrs=10.96.0.0/12,fd00::/8",
        "--inbound-tcp=proxy",
    ]);
    let text = install(&cfg, Family::V6, "");
    // Issue 20: no IPv4-mapped source (judged as IPv4 otherwise), no `::/96` source but the
    // ICMPv6 of duplicate address detection (from `::`), no multicast source.
    let raw: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-A PORTCULLIS_ANTISPOOF"))
        .collect();
    assert_eq!(
        raw,
        [
            "-A PORTCULLIS_ANTISPOOF -d ::1/128 ! -i lo -j DROP",
            "-A PORTCULLIS_ANTISPOOF -s ::1/128 ! -i lo -j DROP",
            "-A PORTCULLIS_ANTISPOOF -d ::ffff:0.0.0.0/96 ! -i lo -j DROP",
            "-A PORTCULLIS_ANTISPOOF -s ::ffff:0.0.0.0/96 ! -i lo -j DROP",
            "-A PORTCULLIS_ANTISPOOF -s ::/96 ! -i lo ! -p ipv6-icmp -j DROP",
            "-A PORTCULLIS_ANTISPOOF -s ff00::/8 ! -i lo -j DROP",
        ]
    );
    for rule in [
        "-A PORTCULLIS_INBOUND -m addrtype ! --dst-type LOCAL -j RETURN",
        "-A PORTCULLIS_OUTPUT -d ::1/128 -j RETURN",
        "-A PORTCULLIS_OUTPUT -d fd00::/8 -j RETURN",
        "-I FORWARD 1 -j PORTCULLIS_FORWARD",
    ] {
        assert!(text.lines().any(|l| l == rule), "{rule} missing:\n{text}");
    }
    assert!(!text.contains("10.96.0.0/12"));
    assert!(!text.contains("127.0.0.0/8"));
}

#[test]
fn the_loopback_drop_comes_before_the_redirect_and_non_local_is_never_redirected() {
    let text = install(&config(&["--inbound-tcp=proxy"]), Family::V4, "");
    let raw = text.find("*raw").expect("raw");
    let nat = text.find("*nat").expect("nat");
    assert!(raw < nat, "raw is written first");
    // In PORTCULLIS_INBOUND, the LOCAL check is the first rule: nothing else can redirect first.
    let inbound: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("-A PORTCULLIS_INBOUND "))
        .collect();
    assert_eq!(
        inbound[0],
        "-A PORTCULLIS_INBOUND -m addrtype ! --dst-type LOCAL -j RETURN"
    );
}

#[test]
fn allow_forwarding_leaves_the_filter_table_alone() {
    let text = install(
        &config(&["--allow-forwarding", "--enforce-udp=false"]),
        Family::V4,
        "",
    );
    assert!(!text.contains("*filter"), "{text}");
    assert!(!text.contains("FORWARD"), "{text}");
    assert!(text.contains("*raw"));
}

#[test]
fn jumps_are_not_added_twice() {
    let cfg = config(&[]);
    let current = saved(&cfg, Family::V4);
    let text = install(&cfg, Family::V4, &current);
    assert!(!text.contains("-A PREROUTING"), "{text}");
    assert!(!text.contains("-A OUTPUT -p tcp"), "{text}");
    assert!(!text.contains("-I "), "{text}");
    assert!(!text.contains("-D "), "{text}");
}

#[test]
fn a_first_jump_pushed_down_is_moved_back_to_the_top() {
    let cfg = config(&[]);
    let current = saved(&cfg, Family::V4).replace(
        "-A PREROUTING -j PORTCULLIS_ANTISPOOF",
        "-A PREROUTING -j ACCEPT\n-A PREROUTING -j PORTCULLIS_ANTISPOOF",
    );
    let text = install(&cfg, Family::V4, &current);
    // `*raw`, the chain, its five rules, then the jump moved back.
    let raw: Vec<&str> = body(&text).into_iter().take(10).collect();
    assert_eq!(
        raw[7..9],
        [
            "-D PREROUTING -j PORTCULLIS_ANTISPOOF",
            "-I PREROUTING 1 -j PORTCULLIS_ANTISPOOF"
        ],
        "{text}"
    );
}

#[test]
fn cleanup_removes_only_what_is_ours() {
    let current = "*raw\n:PREROUTING ACCEPT [0:0]\n:PORTCULLIS_ANTISPOOF - [0:0]\n\
        -A PREROUTING -j PORTCULLIS_ANTISPOOF\n-A PREROUTING -j CT --notrack\n\
        -A PORTCULLIS_ANTISPOOF -d 127.0.0.0/8 ! -i lo -j DROP\nCOMMIT\n\
        *filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j KUBE-FORWARD\nCOMMIT\n\
        *nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SOMETHING - [0:0]\n\
        :PORTCULLIS_INBOUND - [0:0]\n:PORTCULLIS_IN_REDIRECT - [0:0]\n\
        -A PREROUTING -j KUBE-SOMETHING\n-A PREROUTING -p tcp -j PORTCULLIS_INBOUND\n\
        -A KUBE-SOMETHING -j PORTCULLIS_INBOUND_NOT_OURS\n\
        -A PORTCULLIS_INBOUND -p tcp -j PORTCULLIS_IN_REDIRECT\nCOMMIT\n";
    let text = cleanup(current).expect("something to remove");
    assert_eq!(
        body(&text),
        [
            "*raw",
            "-D PREROUTING -j PORTCULLIS_ANTISPOOF",
            "-F PORTCULLIS_ANTISPOOF",
            "-X PORTCULLIS_ANTISPOOF",
            "COMMIT",
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
    assert_eq!(
        owned_chains_left(current),
        [ANTISPOOF, INBOUND, IN_REDIRECT]
    );
}

#[test]
fn cleanup_removes_what_install_wrote_whatever_the_flags() {
    for args in [
        &["--inbound-tcp=proxy"][..],
        &["--allow-forwarding", "--inbound-tcp=proxy"][..],
        &["--skip-inbound-ports=22", "--inbound-tcp=proxy"][..],
    ] {
        let current = saved(&config(args), Family::V6);
        let text = cleanup(&current).expect("something to remove");
        for (_, chain) in OWNED {
            let ours = current.contains(&format!(":{chain} "));
            assert_eq!(text.contains(&format!("-X {chain}\n")), ours, "{chain}");
        }
        for jump in [
            "PREROUTING -j PORTCULLIS_ANTISPOOF",
            "PREROUTING -p tcp -j PORTCULLIS_INBOUND",
            "OUTPUT -p tcp -j PORTCULLIS_OUTPUT",
        ] {
            assert!(text.contains(&format!("-D {jump}\n")), "{jump}: {text}");
        }
    }
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
fn verify_names_what_is_missing_or_wrong() {
    let cfg = config(&["--inbound-tcp=proxy"]);
    let err = verify(&cfg, Family::V4, "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("chain PORTCULLIS_INBOUND (nat)"), "{err}");
    assert!(err.contains("chain PORTCULLIS_ANTISPOOF (raw)"), "{err}");
    // What install writes, as iptables-save prints it, passes.
    let good = saved(&cfg, Family::V4);
    verify(&cfg, Family::V4, &good).expect("complete");
    // A rule missing from a chain (here: the LOCAL check) is named.
    let no_local = good.replace(
        "-A PORTCULLIS_INBOUND -m addrtype ! --dst-type LOCAL -j RETURN\n",
        "",
    );
    let err = verify(&cfg, Family::V4, &no_local).unwrap_err().to_string();
    assert!(err.contains("PORTCULLIS_INBOUND (nat) holds"), "{err}");
    assert!(err.contains("--dst-type LOCAL"), "{err}");
    // The loopback drop must be the first rule of raw PREROUTING.
    let pushed_down = good.replace(
        "-A PREROUTING -j PORTCULLIS_ANTISPOOF",
        "-A PREROUTING -j ACCEPT\n-A PREROUTING -j PORTCULLIS_ANTISPOOF",
    );
    let err = verify(&cfg, Family::V4, &pushed_down)
        .unwrap_err()
        .to_string();
    assert!(err.contains("as the first rule"), "{err}");
    // A rule for another family or set of flags is not accepted either.
    let err = verify(
        &config(&["--skip-inbound-ports=22", "--inbound-tcp=proxy"]),
        Family::V4,
        &good,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--dports 22"), "{err}");
}

#[test]
fn golden_proxy_mark_exempts_only_the_proxy_uid_with_its_mark() {
    let cfg = config(&["--proxy-mark=0x1000", "--enforce-udp=false"]);
    for family in [Family::V4, Family::V6] {
        let text = install(&cfg, family, "");
        let output: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A PORTCULLIS_OUTPUT "))
            .collect();
        let lo = if family == Family::V4 {
            "127.0.0.0/8"
        } else {
            "::1/128"
        };
        assert_eq!(
            output,
            [
                "-A PORTCULLIS_OUTPUT -m owner --uid-owner 2171 -m mark --mark 0x1000/0x1000 -j RETURN"
                    .to_string(),
                format!("-A PORTCULLIS_OUTPUT -d {lo} -j RETURN"),
                "-A PORTCULLIS_OUTPUT -p tcp -j PORTCULLIS_OUT_REDIRECT".to_string(),
            ]
        );
        // No exemption by UID alone is left anywhere.
        assert!(
            !text.contains("--uid-owner 2171 -j RETURN"),
            "{family:?}: {text}"
        );
    }
    // Decimal is the same mark, printed as iptables-save prints it (hex).
    let decimal = install(&config(&["--proxy-mark=4096"]), Family::V4, "");
    assert_eq!(
        decimal,
        install(&config(&["--proxy-mark=0x1000"]), Family::V4, "")
    );
}

#[test]
fn verify_and_reinstall_switch_between_the_uid_only_and_the_marked_exemption() {
    let plain = config(&[]);
    let marked = config(&["--proxy-mark=0x1000"]);
    let was_plain = saved(&plain, Family::V4);
    // A UID-only exemption left from an earlier run is not what a marked run expects.
    let err = verify(&marked, Family::V4, &was_plain)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--mark 0x1000/0x1000"), "{err}");
    // Reinstalling declares (flushes) the chains and writes the marked rule, nothing added twice.
    let text = install(&marked, Family::V4, &was_plain);
    assert!(text.contains(":PORTCULLIS_OUTPUT - [0:0]\n"), "{text}");
    assert!(text.contains(":PORTCULLIS_UDP_OUT - [0:0]\n"), "{text}");
    assert!(!text.contains("-I "), "{text}");
    verify(&marked, Family::V4, &saved(&marked, Family::V4)).expect("marked install verifies");
    verify(&plain, Family::V4, &saved(&marked, Family::V4)).unwrap_err();
}

#[test]
fn cleanup_removes_both_shapes_of_the_exemption() {
    for args in [&[][..], &["--proxy-mark=0x1000"][..]] {
        for family in [Family::V4, Family::V6] {
            let current = saved(&config(args), family);
            let text = cleanup(&current).expect("something to remove");
            for chain in [OUTPUT, crate::datagram::UDP_OUT] {
                assert!(text.contains(&format!("-F {chain}\n")), "{args:?}: {text}");
                assert!(text.contains(&format!("-X {chain}\n")), "{args:?}: {text}");
            }
            assert!(text.contains("-D OUTPUT -j PORTCULLIS_UDP_OUT\n"), "{text}");
            assert!(
                text.contains("-D OUTPUT -p tcp -j PORTCULLIS_OUTPUT\n"),
                "{text}"
            );
        }
    }
}

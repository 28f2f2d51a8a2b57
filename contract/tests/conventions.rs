//! `docs/CONVENTIONS.md` explains the contract; this test keeps its tables and the constants of
//! `contract/src/lib.rs` equal, so that a value changed on one side only fails CI.

use portcullis_contract::{
    env, keys, ports, NFQUEUE, PROXY_MARK, PROXY_UID, QUEUED_CONNMARK, REFUSED_MARK,
};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONVENTIONS.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The cells of every table row, trimmed, without the surrounding backquotes.
fn rows(doc: &str) -> Vec<Vec<String>> {
    doc.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|') && !l.starts_with("| ---"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

/// The value cell of the one row whose first cell starts with `what`.
fn value(rows: &[Vec<String>], what: &str) -> String {
    let found: Vec<&Vec<String>> = rows.iter().filter(|r| r[0].starts_with(what)).collect();
    assert_eq!(found.len(), 1, "one row `{what}` in docs/CONVENTIONS.md");
    found[0].get(1).cloned().unwrap_or_default()
}

/// The first number in a cell (`4143 (0.0.0.0:4143, ...)` → `4143`, `0x1000` (bit 12) → `0x1000`).
fn first_number(cell: &str) -> String {
    let start = cell
        .find(|c: char| c.is_ascii_digit())
        .unwrap_or(cell.len());
    cell[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// The first `code` span of a cell, or the cell.
fn first_word(cell: &str) -> String {
    cell.split(['`', ' ', ';', ',', '('])
        .find(|w| !w.is_empty())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_document_points_at_the_contract() {
    assert!(doc().contains("contract/src/lib.rs"));
}

#[test]
fn identity_ports_and_queue_match_the_contract() {
    let rows = rows(&doc());
    let numbers = [
        ("proxy UID", PROXY_UID.to_string()),
        ("proxy packet mark", PROXY_MARK.to_string()),
        ("proxy inbound listener", ports::INBOUND.to_string()),
        ("proxy outbound listener", ports::OUTBOUND.to_string()),
        ("proxy admin listener", ports::ADMIN.to_string()),
        ("controller table API", ports::CONTROLLER_STREAM.to_string()),
        ("controller admin", ports::CONTROLLER_ADMIN.to_string()),
        ("NFQUEUE number", NFQUEUE.to_string()),
        ("queued-TCP connmark", QUEUED_CONNMARK.to_string()),
        ("refused-SYN mark", REFUSED_MARK.to_string()),
        ("mark", PROXY_MARK.to_string()),
    ];
    for (what, want) in numbers {
        assert_eq!(first_number(&value(&rows, what)), want, "row `{what}`");
    }
    let words = [
        ("label / annotation prefix", keys::PREFIX.to_string()),
        ("env prefix", env::PREFIX.to_string()),
        ("system namespace", keys::SYSTEM_NAMESPACE.to_string()),
        (
            "namespace opt-in label",
            format!("{}={}", keys::INJECT, keys::ENABLED),
        ),
    ];
    for (what, want) in words {
        assert_eq!(first_word(&value(&rows, what)), want, "row `{what}`");
    }
}

#[test]
fn the_init_flags_read_the_contracts_env_names_with_its_defaults() {
    let rows = rows(&doc());
    // flag → (env name, default as the table writes it, when the contract holds it)
    let flags = [
        ("--proxy-uid", env::PROXY_UID, Some(PROXY_UID.to_string())),
        ("--proxy-mark", env::PROXY_MARK, None),
        (
            "--inbound-port",
            env::INBOUND_PORT,
            Some(ports::INBOUND.to_string()),
        ),
        (
            "--outbound-port",
            env::OUTBOUND_PORT,
            Some(ports::OUTBOUND.to_string()),
        ),
        (
            "--admin-port",
            env::ADMIN_PORT,
            Some(ports::ADMIN.to_string()),
        ),
        ("--skip-inbound-ports", env::SKIP_INBOUND_PORTS, None),
        ("--skip-outbound-ports", env::SKIP_OUTBOUND_PORTS, None),
        ("--skip-outbound-cidrs", env::SKIP_OUTBOUND_CIDRS, None),
        ("--backend", env::IPTABLES_BACKEND, None),
    ];
    let init_rows: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[0].starts_with("--") && r.len() == 3 && !r[1].is_empty())
        .collect();
    assert_eq!(
        init_rows.len(),
        flags.len(),
        "every row of the portcullis-init table is checked here"
    );
    for (flag, name, default) in flags {
        let row = init_rows
            .iter()
            .find(|r| r[0] == flag)
            .unwrap_or_else(|| panic!("{flag} in the portcullis-init table"));
        assert_eq!(row[1], name, "{flag}");
        if let Some(default) = default {
            assert_eq!(first_number(&row[2]), default, "{flag}");
        }
    }
}

#[test]
fn every_env_name_of_the_contract_is_documented() {
    let doc = doc();
    for name in [
        env::PROXY_UID,
        env::PROXY_MARK,
        env::INBOUND_PORT,
        env::OUTBOUND_PORT,
        env::ADMIN_PORT,
        env::SKIP_INBOUND_PORTS,
        env::SKIP_OUTBOUND_PORTS,
        env::SKIP_OUTBOUND_CIDRS,
        env::ENFORCE_UDP,
        env::INBOUND_TCP,
        env::OUTBOUND_TCP,
        env::SERVICE_CIDRS,
        env::IPTABLES_BACKEND,
        env::ALLOW_FORWARDING,
        env::NFQUEUE,
        env::MODE,
        env::LOG,
        env::CONTROLLER,
        env::CONTROLLER_CA_PEM,
        env::TOKEN_FILE,
        env::POLICY_DIR,
        env::FLOW_SUMMARY_INTERVAL,
        env::FLOW_RECORDS_MAX,
        env::POD_NAME,
        env::POD_NAMESPACE,
        env::POD_IPS,
        env::HOST_IP,
    ] {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} in docs/CONVENTIONS.md"
        );
    }
}

//! The harness end to end at smoke size: every path carries traffic, nothing fails, the policy
//! swap soak loses no connection, and the report is written. Figures are not asserted: timing
//! targets live in the full run (`portcullis-loadtests`), never in tests. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

#[test]
fn smoke_run_measures_every_path_without_failures() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the load harness builds network namespaces: run as root (sudo ./scripts/test.sh)"
    );
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "portcullis-proxy",
            "-p",
            "portcullis-init",
        ])
        .current_dir(repo())
        .status()
        .expect("cargo");
    assert!(status.success(), "building the proxy and init failed");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_portcullis-loadtests"));
    let target = bin.parent().expect("target dir");
    let out_dir = std::env::temp_dir().join(format!("pc-loadtests-smoke-{}", std::process::id()));
    let output = Command::new(&bin)
        .arg("--smoke")
        // Flow records on vs off (issue 25): proxies restarted per setting, in the same run.
        .args(["--flow-records", "compare"])
        .arg("--out")
        .arg(&out_dir)
        .arg("--proxy-bin")
        .arg(target.join("portcullis-proxy"))
        .arg("--init-bin")
        .arg(target.join("portcullis-init"))
        .output()
        .expect("run the harness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "harness failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = std::fs::read_dir(&out_dir)
        .expect("results folder")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .next()
        .expect("one run folder");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("results.json")).expect("results.json"),
    )
    .expect("JSON");
    let paths = json["paths"].as_array().expect("paths");
    let names: Vec<&str> = paths.iter().filter_map(|p| p["path"].as_str()).collect();
    for want in ["direct", "inbound", "mesh", "service", "haproxy"] {
        assert!(names.contains(&want), "path {want} missing: {names:?}");
    }
    for p in paths {
        assert!(p["throughput_1_gbps"].as_f64().unwrap_or(0.0) > 0.0, "{p}");
        assert!(p["connections_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{p}");
        assert_eq!(p["connection_failures"], 0, "{p}");
    }
    optional_workloads_ran_or_were_explained(&json, &target.join("portcullis-proxy"));
    assert_eq!(
        json["soak"]["connections_failed"], 0,
        "policy swaps must not break connections"
    );
    assert!(json["soak"]["generations_observed"].as_u64().unwrap_or(0) > 0);
    let flows = json["flow_records"].as_array().expect("flow_records");
    for path in ["inbound", "mesh", "service"] {
        for on in [false, true] {
            let r = flows
                .iter()
                .find(|r| r["path"] == path && r["flow_records"] == on)
                .unwrap_or_else(|| panic!("{path} with flow records {on}: {flows:?}"));
            assert!(r["connections_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        }
    }
    assert!(run.join("results.md").exists() && run.join("plot.svg").exists());
    assert!(stdout.contains("Ratios"));
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// The optional workloads at smoke size: sockperf and iperf3 stay off (CI does not install
/// them); UDP and DNS run when the proxy enforces UDP, and then every new UDP flow of the load
/// must have gone through the server proxy's queue (one verdict each), and nothing failed.
/// Without `--enforce-udp` the report says why they were skipped.
fn optional_workloads_ran_or_were_explained(json: &serde_json::Value, proxy: &Path) {
    let help = Command::new(proxy)
        .arg("--help")
        .output()
        .expect("proxy --help");
    let enforces_udp = String::from_utf8_lossy(&help.stdout).contains("--enforce-udp");
    let notes = json["notes"].to_string();
    let paths = json["paths"].as_array().expect("paths");
    for p in paths {
        let t = &p["tools"];
        assert!(
            t["sockperf_tcp"].is_null() && t["iperf3_1_gbps"].is_null(),
            "{p}"
        );
    }
    if !enforces_udp {
        assert!(notes.contains("udp skipped"), "{notes}");
        assert!(paths.iter().all(|p| p["tools"]["udp_rr"].is_null()));
        return;
    }
    // The flood test's three phases ran (its figures are the report's, not a pass mark here).
    let flood = json["flood"].as_array().expect("flood phases");
    assert_eq!(flood.len(), 3, "{flood:?}");
    assert!(
        flood.iter().all(|p| p["legit_flows"].as_u64() > Some(0)),
        "{flood:?}"
    );
    assert!(
        flood[1..]
            .iter()
            .all(|p| p["flood_pps"].as_f64() > Some(0.0)),
        "{flood:?}"
    );
    let dnsmasq = Command::new("sh")
        .args(["-c", "command -v dnsmasq"])
        .output()
        .is_ok_and(|o| o.status.success());
    for p in paths {
        let t = &p["tools"];
        if p["path"] == "haproxy" {
            assert!(t["udp_rr"].is_null(), "HAProxy carries no UDP here: {p}");
            continue;
        }
        if p["path"] == "service" {
            // UDP to a ClusterIP goes on to kube-proxy, which the harness does not have.
            assert!(
                t["udp_rr"].is_null(),
                "no UDP through the Service path: {p}"
            );
            continue;
        }
        assert!(t["udp_rr"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{p}");
        assert!(
            t["udp_new_flows_per_s"].as_f64().unwrap_or(0.0) > 0.0,
            "{p}"
        );
        assert_eq!(t["udp_flow_failures"], serde_json::json!([]), "{p}");
        if p["path"] != "direct" {
            let answered = t["udp_new_flows_answered"].as_u64().unwrap_or(0);
            let judged = t["udp_new_flows_judged"].as_u64().unwrap_or(0);
            // A source port that comes round again while conntrack still holds its entry is the
            // same flow, answered without a new verdict: allow a handful of those.
            assert!(
                answered > 0 && judged + answered / 100 + 2 >= answered,
                "(nearly) every new flow is judged in the queue: {answered} answered, {judged} judged"
            );
        }
        if dnsmasq {
            assert!(t["dns_qps"].as_f64().unwrap_or(0.0) > 0.0, "{p}");
            assert!(t["dns_new_socket_qps"].as_f64().unwrap_or(0.0) > 0.0, "{p}");
            assert_eq!(t["dns_failures"], serde_json::json!([]), "{p}");
        } else {
            assert!(notes.contains("dns skipped"), "{notes}");
        }
    }
}

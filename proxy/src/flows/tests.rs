use super::*;
use std::time::UNIX_EPOCH;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_000_000 + secs)
}

fn key(peer: &str, port: u16, went_through: bool) -> FlowKey {
    FlowKey::new(
        Direction::Egress,
        Protocol::Tcp,
        peer.parse().expect("ip"),
        port,
        went_through,
    )
    .expect("TCP has a key")
}

#[test]
fn repeats_merge_into_one_record_with_first_and_last_seen() {
    let r = FlowRecords::new("zoo", "kangaroo-1", 16);
    let k = key("10.0.0.7", 8080, true).with_peer_pod(Some("zoo/wombat-0".into()));
    r.record(k.clone(), at(5));
    r.record(k.clone(), at(2));
    r.record(k.clone(), at(9));
    r.record(key("10.0.0.7", 8080, false), at(3));
    let period = r.take();
    assert_eq!(period.records.len(), 2, "the verdict is part of the key");
    assert_eq!(period.dropped, 0);
    let lines = r.summaries(&period);
    let allowed = lines
        .iter()
        .find(|l| l.verdict == FlowVerdict::Allowed)
        .expect("allowed");
    assert_eq!(allowed.count, 3);
    assert_eq!(allowed.first_seen, log::seconds(at(2)));
    assert_eq!(allowed.last_seen, log::seconds(at(9)));
    assert_eq!(allowed.peer_namespace.as_deref(), Some("zoo"));
    assert_eq!(allowed.peer_pod.as_deref(), Some("wombat-0"));
    assert_eq!(
        (allowed.pod_namespace.as_str(), allowed.pod.as_str()),
        ("zoo", "kangaroo-1")
    );
    assert_eq!(allowed.event, FLOW_SUMMARY);
    assert_eq!(allowed.schema, LOG_SCHEMA);
    assert!(r.take().records.is_empty(), "a period starts empty");
}

#[test]
fn the_bound_holds_across_shards_and_counts_what_it_drops() {
    let r = FlowRecords::new("x", "a", 10);
    for port in 1..=1000 {
        r.record(key("10.0.0.9", port, false), at(0));
    }
    // Keys already held still count beyond the bound.
    let first = r.take();
    assert_eq!(first.records.len(), 10);
    assert_eq!(first.dropped, 990);
    assert_eq!(r.dropped_line(&first).expect("a drop line").dropped, 990);
    // The next period has the whole bound again, and no drop line when nothing dropped.
    for port in 1..=10 {
        r.record(key("10.0.0.9", port, false), at(1));
        r.record(key("10.0.0.9", port, false), at(2));
    }
    let second = r.take();
    assert_eq!(second.records.len(), 10);
    assert!(second.records.iter().all(|(_, s)| s.count == 2));
    assert!(r.dropped_line(&second).is_none());
}

#[test]
fn keys_beyond_the_bound_are_dropped_but_known_keys_still_count() {
    let r = FlowRecords::new("x", "a", 1);
    r.record(key("10.0.0.1", 80, true), at(0));
    r.record(key("10.0.0.2", 80, true), at(0));
    r.record(key("10.0.0.1", 80, true), at(1));
    let p = r.take();
    assert_eq!(p.records.len(), 1);
    assert_eq!(p.records[0].1.count, 2);
    assert_eq!(p.dropped, 1);
}

#[test]
fn concurrent_recorders_lose_nothing_below_the_bound() {
    let r = Arc::new(FlowRecords::new("x", "a", 4096));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u32 {
                    let peer = format!("10.0.{}.{}", t, i % 50);
                    r.record(key(&peer, 80, true), at(u64::from(i)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("recorder thread");
    }
    let p = r.take();
    assert_eq!(p.records.len(), 200);
    assert_eq!(p.records.iter().map(|(_, s)| s.count).sum::<u64>(), 40_000);
    assert_eq!(p.dropped, 0);
}

#[test]
fn other_ip_protocols_have_no_record_and_v4_mapped_peers_are_canonical() {
    assert!(FlowKey::new(
        Direction::Ingress,
        Protocol::Other(47),
        "10.0.0.1".parse().expect("ip"),
        0,
        false
    )
    .is_none());
    let mapped = FlowKey::new(
        Direction::Ingress,
        Protocol::Udp,
        "::ffff:10.0.0.1".parse().expect("ip"),
        53,
        true,
    )
    .expect("UDP");
    assert_eq!(mapped.peer_ip, "10.0.0.1".parse::<IpAddr>().expect("ip"));
    assert_eq!(mapped.protocol, FlowProtocol::Udp);
    assert_eq!(mapped.direction, FlowDirection::Ingress);
}

/// What recording costs on the data path, single-threaded (debug builds are slower; the
/// loadtests measure the release build end to end).
#[test]
fn recording_is_cheap() {
    let r = FlowRecords::new("x", "a", 4096);
    let keys: Vec<FlowKey> = (0..64)
        .map(|i| key(&format!("10.0.0.{i}"), 8080, true).with_peer_pod(Some(format!("x/p-{i}"))))
        .collect();
    let n = 200_000;
    let started = std::time::Instant::now();
    for i in 0..n {
        r.record(keys[i % keys.len()].clone(), SystemTime::now());
    }
    let per = started.elapsed() / n as u32;
    eprintln!("flow record: {per:?} per flow (key clone included)");
    assert!(per < Duration::from_micros(20), "{per:?} per record");
    assert_eq!(
        r.take().records.iter().map(|(_, s)| s.count).sum::<u64>(),
        n as u64
    );
}

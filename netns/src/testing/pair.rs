//! Namespaces joined by veth pairs, as every netns test builds them: a "pod" and a "peer"
//! ([`Pair`]), more namespaces behind them ([`veth`]), unique names per test, everything deleted
//! when the test ends (after a failed assertion too).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Numbers the namespaces and veths of one test process, so that tests running in parallel
/// (and the test binaries of other crates, by their process id) never share a name.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `{pid}-{n}`: unique in this process, and across processes while they run.
pub fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{}-{n}", std::process::id())
}

/// Panics with `ip -n NS ARGS...`'s stderr when it fails.
pub fn ip_in(ns: &str, args: &[&str]) {
    crate::ip_in(ns, args).unwrap_or_else(|e| panic!("{e}"));
}

/// Adds `addrs` (`IP/LEN`; IPv6 ones without duplicate address detection, so they are usable
/// at once) to `dev` in `ns`.
pub fn add_addrs(ns: &str, dev: &str, addrs: &[&str]) {
    for addr in addrs {
        if addr.contains(':') {
            ip_in(ns, &["-6", "addr", "add", addr, "dev", dev, "nodad"]);
        } else {
            ip_in(ns, &["addr", "add", addr, "dev", dev]);
        }
    }
}

/// A veth pair from namespace `a` to namespace `b`, with `a_addrs` on `a`'s end and `b_addrs`
/// on `b`'s (see [`add_addrs`]), both up. Returns the two ends' names (unique, at most 15
/// characters).
pub fn veth(a: &str, a_addrs: &[&str], b: &str, b_addrs: &[&str]) -> (String, String) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let tag = std::process::id() % 100000;
    let (a_dev, b_dev) = (format!("pc{n}a{tag}"), format!("pc{n}b{tag}"));
    ip_in(
        a,
        &[
            "link", "add", &a_dev, "type", "veth", "peer", "name", &b_dev, "netns", b,
        ],
    );
    add_addrs(a, &a_dev, a_addrs);
    add_addrs(b, &b_dev, b_addrs);
    ip_in(a, &["link", "set", &a_dev, "up"]);
    ip_in(b, &["link", "set", &b_dev, "up"]);
    (a_dev, b_dev)
}

/// A namespace made for one test (loopback up), deleted with everything in it when dropped.
#[derive(Debug)]
pub struct TestNamespace(crate::Namespace);

impl TestNamespace {
    /// Creates `name`; panics when it cannot.
    pub fn create(name: &str) -> TestNamespace {
        TestNamespace(crate::Namespace::create(name).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }
}

/// Two namespaces, "pod" and "peer", joined by a veth pair, and deleted when dropped.
#[derive(Debug)]
pub struct Pair {
    /// `{prefix}-{id}-pod` and `{prefix}-{id}-peer`.
    pub pod: String,
    pub peer: String,
    /// The veth ends: in the pod, in the peer.
    pub pod_dev: String,
    pub peer_dev: String,
    /// What made the names unique (see [`unique_id`]), for the test's other resources.
    pub id: String,
    _namespaces: [TestNamespace; 2],
}

impl Pair {
    /// The two namespaces, named after `prefix`, with `pod_addrs` on the pod's end of the veth
    /// and `peer_addrs` on the peer's (`IP/LEN`, IPv4 or IPv6). Panics, after removing what it
    /// made, when something fails.
    pub fn new(prefix: &str, pod_addrs: &[&str], peer_addrs: &[&str]) -> Pair {
        let id = unique_id();
        let namespaces = [
            TestNamespace::create(&format!("{prefix}-{id}-pod")),
            TestNamespace::create(&format!("{prefix}-{id}-peer")),
        ];
        let (pod, peer) = (namespaces[0].name(), namespaces[1].name());
        let (pod_dev, peer_dev) = veth(pod, pod_addrs, peer, peer_addrs);
        Pair {
            pod: pod.to_string(),
            peer: peer.to_string(),
            pod_dev,
            peer_dev,
            id,
            _namespaces: namespaces,
        }
    }
}

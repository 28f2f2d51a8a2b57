//! Where the inbound proxy may forward a connection: only to this pod's own addresses.
//!
//! iptables `REDIRECT` hands the inbound listener every TCP packet that arrives on the pod's
//! interfaces, whatever it was addressed to, and `SO_ORIGINAL_DST` returns what the sender wrote
//! into the packet. A neighbour that routes another pod's IP via this pod (relay through a
//! neighbour), or a hand-made frame addressed to `127.0.0.1` (into the pod's localhost-only
//! applications), would otherwise make the proxy connect there on the sender's behalf, as the
//! pod's own UID 2171. So the inbound proxy forwards only to `POD_IPS` (on any port), and to the
//! IPv6 link-local address of the interface the connection came in on, which is this pod too.
//! Everything else is refused before any policy decision.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_policy::table::canonical;

/// This pod's own addresses (`POD_IPS`), checked when the proxy starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddresses {
    ips: Vec<IpAddr>,
}

/// Why `POD_IPS` cannot be used: the proxy refuses to start rather than guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodIpsError {
    /// No address: every inbound connection would be refused, or (worse) nothing checked.
    #[error(
        "POD_IPS (--pod-ips) is empty: the inbound proxy forwards only to the pod's own \
         addresses, so it needs them; set POD_IPS from the downward API \
         (fieldRef status.podIPs), comma separated"
    )]
    Empty,
    /// An address no pod has (loopback, unspecified, multicast, broadcast): loopback would let
    /// crafted packets into localhost-only applications again.
    #[error(
        "POD_IPS (--pod-ips) contains {0}, which cannot be a pod's address \
         (loopback, unspecified, multicast or broadcast)"
    )]
    NotAPodAddress(IpAddr),
}

/// Why an inbound connection's original destination is not this pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignDestination {
    /// `127.0.0.0/8` or `::1`: only a crafted packet arrives on an interface addressed there.
    Loopback,
    /// Any other address: another pod, a Service, the node, or one of this namespace's
    /// addresses that is not in `POD_IPS`.
    NotThisPod,
}

impl ForeignDestination {
    /// The `reason` label of `portcullis_connections_refused_total`.
    pub fn metric_reason(self) -> &'static str {
        match self {
            ForeignDestination::Loopback => "destination_loopback",
            ForeignDestination::NotThisPod => "destination_not_pod",
        }
    }

    /// The `reason` of the `connection_refused` log line.
    pub fn log_reason(self) -> &'static str {
        match self {
            ForeignDestination::Loopback => {
                "original destination is a loopback address, not this pod (a crafted packet)"
            }
            ForeignDestination::NotThisPod => {
                "original destination is not this pod (only POD_IPS are forwarded to)"
            }
        }
    }
}

impl PodAddresses {
    pub fn new(ips: &[IpAddr]) -> Result<PodAddresses, PodIpsError> {
        if ips.is_empty() {
            return Err(PodIpsError::Empty);
        }
        let mut canonical_ips = Vec::with_capacity(ips.len());
        for ip in ips {
            let ip = canonical(*ip);
            if !usable_pod_ip(ip) {
                return Err(PodIpsError::NotAPodAddress(ip));
            }
            if !canonical_ips.contains(&ip) {
                canonical_ips.push(ip);
            }
        }
        Ok(PodAddresses { ips: canonical_ips })
    }

    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    /// Where an inbound connection may go: `destination` itself when it is this pod, with the
    /// scope id of the interface that holds it when it is an IPv6 link-local address (without
    /// one, connecting fails with `EINVAL`).
    pub fn check(&self, destination: SocketAddr) -> Result<SocketAddr, ForeignDestination> {
        let ip = canonical(destination.ip());
        if ip.is_loopback() {
            return Err(ForeignDestination::Loopback);
        }
        if self.ips.contains(&ip) {
            return Ok(destination);
        }
        match (ip, destination) {
            (IpAddr::V6(v6), SocketAddr::V6(d)) if is_unicast_link_local(v6) => {
                own_link_local(v6, d.scope_id())
                    .map(|scope| {
                        SocketAddr::V6(SocketAddrV6::new(v6, d.port(), d.flowinfo(), scope))
                    })
                    .ok_or(ForeignDestination::NotThisPod)
            }
            _ => Err(ForeignDestination::NotThisPod),
        }
    }
}

fn usable_pod_ip(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    !matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// `fe80::/10`.
pub fn is_unicast_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The index of the interface of this network namespace that holds the link-local `ip`: the one
/// numbered `scope` when the kernel said which (it does for a link-local client: the accepted
/// socket is bound to the interface the connection came in on), else the only one that holds
/// it. `None` when no interface (or more than one, without a scope) holds it.
fn own_link_local(ip: Ipv6Addr, scope: u32) -> Option<u32> {
    let interfaces = nix::ifaddrs::getifaddrs().ok()?;
    let mut holders = interfaces.filter_map(|ifa| {
        let addr = ifa.address?;
        let v6 = addr.as_sockaddr_in6()?;
        (v6.ip() == ip)
            .then(|| nix::net::if_::if_nametoindex(ifa.interface_name.as_str()).ok())
            .flatten()
    });
    if scope != 0 {
        return holders.any(|index| index == scope).then_some(scope);
    }
    let first = holders.next()?;
    holders.next().is_none().then_some(first)
}

/// At most one `connection_refused` line per second for foreign destinations, with the number
/// left out since the last one: a flood of crafted packets costs a bounded number of log lines
/// (the metric counts every one).
pub struct RefusalThrottle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalThrottle {
    pub const fn new(every: Duration) -> Self {
        RefusalThrottle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be written now (`suppressed` lines were left out
    /// before it), `None` when this one is left out.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let Ok(mut state) = self.state.lock() else {
            return Some(0);
        };
        let (last, suppressed) = &mut *state;
        match last {
            Some(at) if now.duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

/// Shared by both inbound listeners.
pub static FOREIGN_DESTINATION_LOG: RefusalThrottle = RefusalThrottle::new(Duration::from_secs(1));

/// Source address of the inbound proxy's connections to the application (IPv4), as Istio's
/// sidecar uses: a loopback source lets the kernel reuse TIME_WAIT ports (`tcp_tw_reuse`'s
/// default covers loopback only). The proxy usually closes first toward the application, so with
/// the pod IP as source every short inbound connection left a TIME_WAIT on the one
/// (pod IP → app port) pair, and a few hundred new connections a second ran out of ports.
pub const INBOUND_SOURCE_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 6);

/// Binds an inbound upstream socket to [`INBOUND_SOURCE_V4`] (IPv4 destinations only).
pub fn bind_source(socket: &tokio::net::TcpSocket, destination: SocketAddr) {
    if destination.is_ipv4() {
        // The port is chosen at connect time, per destination, not at bind time per source.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        if let Err(e) = socket.bind(SocketAddr::from((INBOUND_SOURCE_V4, 0))) {
            tracing::debug!(error = %e, "cannot bind the upstream to {INBOUND_SOURCE_V4}; using the default source");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> PodAddresses {
        let ips: Vec<IpAddr> = list.iter().map(|s| s.parse().unwrap()).collect();
        PodAddresses::new(&ips).expect("usable")
    }

    #[test]
    fn only_the_pods_own_ips_pass_on_any_port() {
        let pod = addrs(&["10.1.0.5", "fd00::5"]);
        for ok in [
            "10.1.0.5:80",
            "10.1.0.5:65535",
            "[fd00::5]:443",
            "[::ffff:10.1.0.5]:8080",
        ] {
            let d: SocketAddr = ok.parse().unwrap();
            assert_eq!(pod.check(d), Ok(d), "{ok}");
        }
        for (bad, why) in [
            ("10.1.0.6:443", ForeignDestination::NotThisPod),
            ("192.168.1.1:80", ForeignDestination::NotThisPod),
            ("[fd00::6]:443", ForeignDestination::NotThisPod),
            ("127.0.0.1:7777", ForeignDestination::Loopback),
            ("127.4.5.6:80", ForeignDestination::Loopback),
            ("[::1]:7777", ForeignDestination::Loopback),
            ("[::ffff:127.0.0.1]:7777", ForeignDestination::Loopback),
            ("0.0.0.0:80", ForeignDestination::NotThisPod),
            ("[::]:80", ForeignDestination::NotThisPod),
        ] {
            assert_eq!(pod.check(bad.parse().unwrap()), Err(why), "{bad}");
        }
    }

    #[test]
    fn a_link_local_destination_passes_only_when_an_interface_here_holds_it() {
        let pod = addrs(&["10.1.0.5"]);
        // No interface of the test's namespace holds this address.
        let d: SocketAddr = "[fe80::dead:beef:1]:80".parse().unwrap();
        assert_eq!(pod.check(d), Err(ForeignDestination::NotThisPod));
        let scoped = SocketAddr::V6(SocketAddrV6::new(
            "fe80::dead:beef:1".parse().unwrap(),
            80,
            0,
            1,
        ));
        assert_eq!(pod.check(scoped), Err(ForeignDestination::NotThisPod));
    }

    #[test]
    fn unusable_pod_ips_fail_closed() {
        assert_eq!(PodAddresses::new(&[]), Err(PodIpsError::Empty));
        for bad in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert_eq!(
                PodAddresses::new(&["10.0.0.1".parse().unwrap(), ip]),
                Err(PodIpsError::NotAPodAddress(ip)),
                "{bad}"
            );
        }
        let err = PodAddresses::new(&[]).unwrap_err().to_string();
        assert!(
            err.contains("POD_IPS") && err.contains("status.podIPs"),
            "{err}"
        );
        // Mapped IPv4 is the IPv4 address.
        assert_eq!(
            addrs(&["::ffff:10.0.0.1", "10.0.0.1"]).ips(),
            &["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn refusal_lines_are_throttled_and_say_how_many_were_left_out() {
        let throttle = RefusalThrottle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(throttle.admit(t0), Some(0));
        assert_eq!(throttle.admit(t0 + Duration::from_millis(10)), None);
        assert_eq!(throttle.admit(t0 + Duration::from_millis(900)), None);
        assert_eq!(throttle.admit(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(throttle.admit(t0 + Duration::from_millis(2500)), Some(0));
    }
}

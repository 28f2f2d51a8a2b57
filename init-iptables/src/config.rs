//! Flags (each also an environment variable) and the values they parse into.

use std::fmt;
use std::str::FromStr;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;
use portcullis_contract::{env as var, ports, Mark, DEFAULT_SERVICE_CIDRS, NFQUEUE, PROXY_UID};

/// Installs the iptables rules that send the pod's TCP traffic through portcullis-proxy.
///
/// Runs once, as root with NET_ADMIN and NET_RAW, in the pod's network namespace, before any
/// other container. Outbound TCP (nat OUTPUT) is redirected to the proxy's outbound port; the
/// first packet of each new inbound TCP connection and of each UDP and SCTP flow goes to the
/// proxy's NFQUEUE (filter INPUT/OUTPUT) for a verdict (or, with --inbound-tcp proxy, inbound
/// TCP addressed to the pod is redirected to its inbound port); IPv4 and (when the pod has it)
/// IPv6. The proxy's own traffic (by UID, and mark with --proxy-mark), loopback
/// traffic, the proxy's ports and what you exclude are left alone. Packets from outside with a loopback address are
/// dropped before any redirect (raw PREROUTING), and nothing is forwarded through the pod
/// (filter FORWARD) unless --allow-forwarding. Rules live in chains named PORTCULLIS_*, are written with one
/// `iptables-restore --noflush` per family, and are verified after writing. Running it twice
/// changes nothing; `--cleanup` removes exactly what it added.
#[derive(Debug, Clone, Parser)]
#[command(name = "portcullis-init", version, max_term_width = 100)]
pub struct Config {
    /// UID of portcullis-proxy; its connections are never redirected.
    #[arg(long, env = var::PROXY_UID, default_value_t = PROXY_UID)]
    pub proxy_uid: u32,

    /// Packet mark (`0x1000` or `4096`) the proxy sets on its own sockets (its `--proxy-mark`,
    /// which needs CAP_NET_ADMIN). When set, only traffic from the proxy's UID that also carries
    /// this mark is exempt from the redirect and the UDP/SCTP queue. Without it the exemption is
    /// by UID alone: any process that runs as the proxy's UID (an image with `USER 2171`, a debug
    /// container) opens connections that are never checked.
    #[arg(long, env = var::PROXY_MARK)]
    pub proxy_mark: Option<Mark>,

    /// Port of the proxy's inbound listener.
    #[arg(long, env = var::INBOUND_PORT, default_value_t = ports::INBOUND)]
    pub inbound_port: u16,

    /// Port of the proxy's outbound listener.
    #[arg(long, env = var::OUTBOUND_PORT, default_value_t = ports::OUTBOUND)]
    pub outbound_port: u16,

    /// Port of the proxy's admin listener (metrics, probes); never redirected.
    #[arg(long, env = var::ADMIN_PORT, default_value_t = ports::ADMIN)]
    pub admin_port: u16,

    /// Inbound destination ports that bypass the proxy, e.g. `22,8000-8100`.
    #[arg(long, env = var::SKIP_INBOUND_PORTS, default_value = "")]
    pub skip_inbound_ports: PortList,

    /// Outbound destination ports that bypass the proxy, e.g. `53,5432`.
    #[arg(long, env = var::SKIP_OUTBOUND_PORTS, default_value = "")]
    pub skip_outbound_ports: PortList,

    /// Outbound destinations that bypass the proxy, IPv4 and IPv6 CIDRs, e.g.
    /// `10.96.0.1/32,fd00::/8`.
    #[arg(long, env = var::SKIP_OUTBOUND_CIDRS, default_value = "")]
    pub skip_outbound_cidrs: CidrList,

    /// Leave forwarding alone. By default a `filter FORWARD` drop is installed: a pod is not a
    /// router, and a packet routed through it toward another address would pass unpoliced. Set
    /// it only for pods that route on purpose (VM launchers, VPN gateways).
    #[arg(long, env = var::ALLOW_FORWARDING)]
    pub allow_forwarding: bool,

    /// iptables backend: `auto` uses the one that already holds rules in this network namespace
    /// (as Linkerd and Istio do), `nft` when neither does.
    #[arg(
        long,
        env = var::IPTABLES_BACKEND,
        value_enum,
        default_value = "auto"
    )]
    pub backend: BackendChoice,

    /// Send the first packet of every new UDP and SCTP flow (inbound and outbound) to the
    /// proxy's NFQUEUE for a verdict. `false` installs no queue rules (and removes ours if a
    /// previous run left them): UDP and SCTP then pass unchecked, and the proxy says so.
    #[arg(long, env = var::ENFORCE_UDP, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub enforce_udp: bool,

    /// Also send the pod's outbound DNS queries (UDP port 53, every datagram) and the replies
    /// conntrack ties to them to the proxy's DNS queue (`DNS_NFQUEUE`, 4172), so that it learns
    /// the addresses `domainNames` rules allow (docs/dns-policy.md). Needs `--enforce-udp`.
    #[arg(long)]
    pub learn_dns: bool,

    /// How inbound TCP is judged. `queue` (the default when UDP is enforced): the first packet
    /// of each new inbound connection goes to the proxy's NFQUEUE, as for UDP, and the kernel
    /// carries an allowed connection straight to the application: no second socket pair, no
    /// copy, nothing added to its round trips. Denied connections are dropped, as CNIs do.
    /// `proxy`: redirected (nat PREROUTING) into the proxy's inbound listener, which accepts,
    /// judges, connects to the application and relays; the only choice with
    /// `--enforce-udp=false` (reading the queue takes the proxy's CAP_NET_ADMIN). Set the same
    /// value on the proxy.
    #[arg(long, env = var::INBOUND_TCP, value_enum)]
    pub inbound_tcp: Option<TcpPath>,

    /// How outbound TCP is judged. `queue` (the default when UDP is enforced): the SYN of each
    /// new connection to anything outside `--service-cidrs` (pod IPs, node IPs, addresses
    /// outside the cluster) goes to the proxy's NFQUEUE and the kernel carries an allowed
    /// connection; a denied one is answered with a TCP reset (`ECONNREFUSED` at once).
    /// Connections to `--service-cidrs` are still redirected to the proxy's outbound listener,
    /// which picks an allowed backend. `proxy`: every outbound connection is redirected and
    /// relayed (the only choice with `--enforce-udp=false`).
    #[arg(long, env = var::OUTBOUND_TCP, value_enum)]
    pub outbound_tcp: Option<TcpPath>,

    /// The cluster's Service ClusterIP ranges, IPv4 and IPv6 (e.g. `10.96.0.0/12,fd00:96::/108`).
    /// With `--outbound-tcp queue`, outbound TCP to them goes to the proxy's relay and all other
    /// outbound TCP to the queue. A ClusterIP outside these ranges is judged in the queue on
    /// every backend kube-proxy could pick (fail closed); an address inside them that is no
    /// ClusterIP is judged by the relay: both paths judge with the same table.
    #[arg(long, env = var::SERVICE_CIDRS, default_value = DEFAULT_SERVICE_CIDRS)]
    pub service_cidrs: CidrList,

    /// NFQUEUE number the proxy reads (the same `--nfqueue` as the proxy's).
    #[arg(long, env = var::NFQUEUE, default_value_t = NFQUEUE)]
    pub nfqueue: u16,

    /// New inbound flows and connections per second one source address may send to the queue;
    /// beyond that (bursts of twice as many), the kernel drops its new flows before they reach
    /// the queue, so one flooding peer cannot crowd out the first packets of the others. Counted
    /// by the rule (`iptables -t filter -vL PORTCULLIS_UDP_IN` in the pod). 0: no limit.
    #[arg(long, env = "PORTCULLIS_NEW_FLOWS_PER_SOURCE", default_value_t = 5000)]
    pub new_flows_per_source: u32,

    /// Print the iptables-restore input for each family and change nothing.
    #[arg(long, env = "PORTCULLIS_DRY_RUN")]
    pub dry_run: bool,

    /// Remove every rule and chain this program adds, and nothing else.
    #[arg(long, env = "PORTCULLIS_CLEANUP")]
    pub cleanup: bool,
}

/// Where inbound (`--inbound-tcp`) or outbound (`--outbound-tcp`) TCP is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TcpPath {
    /// A verdict on the first packet, in the proxy's NFQUEUE; the kernel carries the rest.
    Queue,
    /// Redirected into the proxy's listener for that direction, which relays every byte.
    Proxy,
}

impl Config {
    /// `--inbound-tcp`, or its default: `queue` when the queue is read (`--enforce-udp`),
    /// `proxy` otherwise.
    pub fn inbound_tcp(&self) -> TcpPath {
        self.inbound_tcp.unwrap_or(if self.enforce_udp {
            TcpPath::Queue
        } else {
            TcpPath::Proxy
        })
    }

    /// `--outbound-tcp`, or its default: `queue` when the queue is read (`--enforce-udp`),
    /// `proxy` otherwise.
    pub fn outbound_tcp(&self) -> TcpPath {
        self.outbound_tcp.unwrap_or(if self.enforce_udp {
            TcpPath::Queue
        } else {
            TcpPath::Proxy
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    Auto,
    Nft,
    Legacy,
}

/// Why a port or CIDR list does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("`{0}` is not a port or a range (1-65535, e.g. `22` or `8000-8100`)")]
    NotAPort(String),
    #[error("`{0}`: the range is backwards")]
    Backwards(String),
    #[error("`{0}` is not a CIDR (e.g. `10.0.0.0/8`, `fd00::/8`)")]
    NotACidr(String),
}

/// A port or an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpan {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            // iptables' multiport syntax.
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// `22,8000-8100`: ports and ranges, comma separated; empty means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<PortSpan>);

impl FromStr for PortList {
    type Err = ListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spans = Vec::new();
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let port = |p: &str| match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(ListError::NotAPort(token.to_string())),
                Ok(n) => Ok(n),
            };
            let span = match token.split_once('-') {
                Some((a, b)) => {
                    let (first, last) = (port(a)?, port(b)?);
                    if first > last {
                        return Err(ListError::Backwards(token.to_string()));
                    }
                    PortSpan { first, last }
                }
                None => {
                    let p = port(token)?;
                    PortSpan { first: p, last: p }
                }
            };
            spans.push(span);
        }
        Ok(PortList(spans))
    }
}

/// `10.0.0.0/8,fd00::/8`: CIDRs, comma separated; a bare address means a single host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

impl FromStr for CidrList {
    type Err = ListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nets = Vec::new();
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let net = match token.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => token
                    .parse::<std::net::IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| ListError::NotACidr(token.to_string()))?,
            };
            nets.push(net.trunc());
        }
        Ok(CidrList(nets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_parse_ports_and_ranges() {
        let l: PortList = "22, 8000-8100,53".parse().expect("parses");
        assert_eq!(l.0.len(), 3);
        assert_eq!(l.0[1].to_string(), "8000:8100");
        assert_eq!("".parse::<PortList>(), Ok(PortList::default()));
        assert!("22,http"
            .parse::<PortList>()
            .unwrap_err()
            .to_string()
            .contains("`http`"));
        assert!("0".parse::<PortList>().is_err());
        assert!("70000".parse::<PortList>().is_err());
        assert!("90-80"
            .parse::<PortList>()
            .unwrap_err()
            .to_string()
            .contains("backwards"));
    }

    #[test]
    fn cidr_lists_accept_both_families_and_bare_addresses() {
        let l: CidrList = "10.1.2.3/8,fd00::/8,192.168.0.1".parse().expect("parses");
        assert_eq!(l.0[0].to_string(), "10.0.0.0/8");
        assert_eq!(l.0[2].to_string(), "192.168.0.1/32");
        assert!("10.0.0.0/33"
            .parse::<CidrList>()
            .unwrap_err()
            .to_string()
            .contains("not a CIDR"));
    }

    #[test]
    fn marks_parse_in_hex_and_decimal_and_zero_is_refused() {
        // The parser is the contract's (`Mark`'s `FromStr`); these are the flag's cases.
        let parse_mark = |s: &str| s.parse::<Mark>().map(Mark::get).map_err(|e| e.to_string());
        assert_eq!(parse_mark("0x1000"), Ok(0x1000));
        assert_eq!(parse_mark("0X1000"), Ok(0x1000));
        assert_eq!(parse_mark("4096"), Ok(0x1000));
        assert_eq!(parse_mark("0xffffffff"), Ok(u32::MAX));
        assert!(parse_mark("0").unwrap_err().contains("must not be 0"));
        assert!(parse_mark("0x0").unwrap_err().contains("must not be 0"));
        for bad in ["", "mark", "0x", "0x100000000", "-1", "4294967296"] {
            assert!(
                parse_mark(bad).unwrap_err().contains("not a packet mark"),
                "{bad}"
            );
        }
        let unset = Config::try_parse_from(["portcullis-init"]).expect("parses");
        assert_eq!(unset.proxy_mark, None);
        let set =
            Config::try_parse_from(["portcullis-init", "--proxy-mark=0x1000"]).expect("parses");
        assert_eq!(set.proxy_mark, Some(Mark(0x1000)));
        let zero = Config::try_parse_from(["portcullis-init", "--proxy-mark=0"])
            .expect_err("0 is refused");
        assert!(zero.to_string().contains("must not be 0"), "{zero}");
    }

    #[test]
    fn help_says_what_the_mark_buys() {
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("any process that runs as the proxy's UID"),
            "{help}"
        );
    }

    #[test]
    fn every_flag_reads_its_environment_variable() {
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for var in [
            "PORTCULLIS_PROXY_UID",
            "PORTCULLIS_PROXY_MARK",
            "PORTCULLIS_INBOUND_PORT",
            "PORTCULLIS_OUTBOUND_PORT",
            "PORTCULLIS_ADMIN_PORT",
            "PORTCULLIS_SKIP_INBOUND_PORTS",
            "PORTCULLIS_SKIP_OUTBOUND_PORTS",
            "PORTCULLIS_SKIP_OUTBOUND_CIDRS",
            "PORTCULLIS_IPTABLES_BACKEND",
            "PORTCULLIS_ALLOW_FORWARDING",
            "PORTCULLIS_DRY_RUN",
            "PORTCULLIS_CLEANUP",
            "PORTCULLIS_ENFORCE_UDP",
            "PORTCULLIS_NFQUEUE",
            "PORTCULLIS_INBOUND_TCP",
            "PORTCULLIS_OUTBOUND_TCP",
            "PORTCULLIS_SERVICE_CIDRS",
        ] {
            assert!(help.contains(var), "{var} missing from --help");
        }
    }
}

//! Sets of IP addresses as sorted, disjoint ranges: pod IPs and CIDR blocks (minus their
//! `except` holes) in one structure, answered by a binary search.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable set of IPv4 and IPv6 addresses.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpSet {
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => contains(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // The proxy can see IPv4 peers as ::ffff:a.b.c.d on a dual-stack socket.
                Some(v4) => contains(&self.v4, u32::from(v4)),
                None => contains(&self.v6, u128::from(v6)),
            },
        }
    }

    /// The set as the smallest list of CIDRs that covers it exactly.
    pub fn to_cidrs(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for &(a, b) in &self.v4 {
            out.extend(
                ipnet::Ipv4Subnets::new(Ipv4Addr::from(a), Ipv4Addr::from(b), 0).map(IpNet::V4),
            );
        }
        for &(a, b) in &self.v6 {
            out.extend(
                ipnet::Ipv6Subnets::new(Ipv6Addr::from(a), Ipv6Addr::from(b), 0).map(IpNet::V6),
            );
        }
        out
    }

    /// Number of disjoint ranges; a measure of the table's size.
    pub fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

#[inline]
fn contains<T: Ord + Copy>(ranges: &[(T, T)], ip: T) -> bool {
    // Index of the first range starting after `ip`; the one before it is the only candidate.
    let after = ranges.partition_point(|&(start, _)| start <= ip);
    after > 0 && ranges[after - 1].1 >= ip
}

/// Accumulates addresses and blocks, then sorts and merges them once in [`IpSetBuilder::build`].
#[derive(Default)]
pub struct IpSetBuilder {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpSetBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                let n = u32::from(v4);
                self.v4.push((n, n));
            }
            IpAddr::V6(v6) => {
                let n = u128::from(v6);
                self.v6.push((n, n));
            }
        }
    }

    pub fn add_net(&mut self, net: IpNet) {
        match net {
            IpNet::V4(n) => self.v4.push(v4_range(n)),
            IpNet::V6(n) => self.v6.push(v6_range(n)),
        }
    }

    /// Adds `cidr` without the addresses of `except` (an ipBlock).
    pub fn add_block(&mut self, cidr: IpNet, except: &[IpNet]) {
        match cidr {
            IpNet::V4(n) => {
                let holes: Vec<_> = except
                    .iter()
                    .filter_map(|e| match e {
                        IpNet::V4(e) => Some(v4_range(*e)),
                        IpNet::V6(_) => None,
                    })
                    .collect();
                subtract(v4_range(n), holes, &mut self.v4);
            }
            IpNet::V6(n) => {
                let holes: Vec<_> = except
                    .iter()
                    .filter_map(|e| match e {
                        IpNet::V6(e) => Some(v6_range(*e)),
                        IpNet::V4(_) => None,
                    })
                    .collect();
                subtract(v6_range(n), holes, &mut self.v6);
            }
        }
    }

    pub fn extend(&mut self, other: &IpSet) {
        self.v4.extend_from_slice(&other.v4);
        self.v6.extend_from_slice(&other.v6);
    }

    pub fn build(self) -> IpSet {
        IpSet {
            v4: merge(self.v4),
            v6: merge(self.v6),
        }
    }
}

impl FromIterator<IpAddr> for IpSet {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Self {
        let mut b = IpSetBuilder::new();
        for ip in iter {
            b.add_ip(ip);
        }
        b.build()
    }
}

fn v4_range(n: Ipv4Net) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

fn v6_range(n: Ipv6Net) -> (u128, u128) {
    (u128::from(n.network()), u128::from(n.broadcast()))
}

trait Addr: Ord + Copy {
    fn pred(self) -> Option<Self>;
    fn succ(self) -> Option<Self>;
}

impl Addr for u32 {
    fn pred(self) -> Option<Self> {
        self.checked_sub(1)
    }
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Addr for u128 {
    fn pred(self) -> Option<Self> {
        self.checked_sub(1)
    }
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Pushes `range` minus every hole into `out`.
fn subtract<T: Addr>(range: (T, T), holes: Vec<(T, T)>, out: &mut Vec<(T, T)>) {
    let holes = merge(holes);
    let (mut start, end) = range;
    for (hole_start, hole_end) in holes {
        if hole_end < start || hole_start > end {
            continue;
        }
        if hole_start > start {
            if let Some(before) = hole_start.pred() {
                out.push((start, before));
            }
        }
        match hole_end.succ() {
            Some(next) if hole_end < end => start = next,
            _ => return,
        }
    }
    out.push((start, end));
}

/// Sorts ranges and merges the ones that overlap or touch.
fn merge<T: Addr>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        if let Some(last) = out.last_mut() {
            let touches = match last.1.succ() {
                Some(next) => start <= next,
                None => true,
            };
            if touches {
                if end > last.1 {
                    last.1 = end;
                }
                continue;
            }
        }
        out.push((start, end));
    }
    out.shrink_to_fit();
    out
}

impl fmt::Debug for IpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.to_cidrs().iter().map(|c| c.to_string()))
            .finish()
    }
}

/// Serialised as a list of CIDRs (`["10.0.0.5/32", "192.168.0.0/16"]`), which people can read.
impl Serialize for IpSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.to_cidrs().iter().map(|c| c.to_string()))
    }
}

impl<'de> Deserialize<'de> for IpSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let cidrs = Vec::<String>::deserialize(d)?;
        let mut b = IpSetBuilder::new();
        for c in cidrs {
            let net: IpNet = c
                .parse()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("invalid CIDR {c:?}")))?;
            b.add_net(net.trunc());
        }
        Ok(b.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn block_with_excepts() {
        let mut b = IpSetBuilder::new();
        b.add_block(
            net("10.0.0.0/8"),
            &[
                net("10.1.0.0/16"),
                net("10.0.0.0/24"),
                net("10.255.255.255/32"),
            ],
        );
        let s = b.build();
        assert!(!s.contains(ip("10.0.0.1")));
        assert!(s.contains(ip("10.0.1.0")));
        assert!(!s.contains(ip("10.1.200.3")));
        assert!(s.contains(ip("10.2.0.0")));
        assert!(s.contains(ip("10.255.255.254")));
        assert!(!s.contains(ip("10.255.255.255")));
        assert!(!s.contains(ip("11.0.0.0")));
        assert!(!s.contains(ip("9.255.255.255")));
    }

    #[test]
    fn whole_address_space_and_edges() {
        let mut b = IpSetBuilder::new();
        b.add_block(
            net("0.0.0.0/0"),
            &[net("0.0.0.0/32"), net("255.255.255.255/32")],
        );
        b.add_block(net("::/0"), &[]);
        let s = b.build();
        assert!(!s.contains(ip("0.0.0.0")));
        assert!(s.contains(ip("0.0.0.1")));
        assert!(s.contains(ip("255.255.255.254")));
        assert!(!s.contains(ip("255.255.255.255")));
        assert!(s.contains(ip("::")));
        assert!(s.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn except_everything_leaves_nothing() {
        let mut b = IpSetBuilder::new();
        b.add_block(
            net("192.168.0.0/24"),
            &[net("192.168.0.0/25"), net("192.168.0.128/25")],
        );
        assert!(b.build().is_empty());
    }

    #[test]
    fn ipv6_blocks_and_mapped_v4() {
        let mut b = IpSetBuilder::new();
        b.add_block(net("fd00::/64"), &[net("fd00::1/128")]);
        b.add_ip(ip("10.0.0.7"));
        let s = b.build();
        assert!(s.contains(ip("fd00::2")));
        assert!(!s.contains(ip("fd00::1")));
        assert!(!s.contains(ip("fd00:0:0:1::2")));
        assert!(s.contains(ip("::ffff:10.0.0.7")));
        assert!(!s.contains(ip("10.0.0.8")));
    }

    #[test]
    fn merges_adjacent_and_serialises_as_cidrs() {
        let s: IpSet = ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"]
            .iter()
            .map(|s| ip(s))
            .collect();
        assert_eq!(s.range_count(), 2);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["10.0.0.0/30","10.0.0.9/32"]"#);
        let back: IpSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}

//! Addresses outside the cluster as ipBlocks: exact addresses merged without loss, or widened
//! to a prefix the user chooses (`--ip-block-prefix`), which the report counts as over-permission.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// How far to widen addresses before merging them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Widen {
    pub v4: u8,
    pub v6: u8,
}

impl Default for Widen {
    /// Exact addresses.
    fn default() -> Self {
        Widen { v4: 32, v6: 128 }
    }
}

/// The fewest CIDRs that cover `ips` widened to `widen`, in address order. With the default
/// (exact) prefixes, they cover exactly the given addresses.
pub fn aggregate(ips: impl IntoIterator<Item = IpAddr>, widen: Widen) -> Vec<IpNet> {
    let nets: Vec<IpNet> = ips
        .into_iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => IpNet::V4(
                Ipv4Net::new(v4, widen.v4.min(32))
                    .map(|n| n.trunc())
                    .unwrap_or_else(|_| Ipv4Net::from(v4)),
            ),
            IpAddr::V6(v6) => IpNet::V6(
                Ipv6Net::new(v6, widen.v6.min(128))
                    .map(|n| n.trunc())
                    .unwrap_or_else(|_| Ipv6Net::from(v6)),
            ),
        })
        .collect();
    IpNet::aggregate(&nets)
}

/// How many addresses a set of CIDRs covers, saturating.
pub fn size(nets: &[IpNet]) -> u128 {
    nets.iter()
        .map(|n| {
            1u128
                .checked_shl(u32::from(n.max_prefix_len() - n.prefix_len()))
                .unwrap_or(u128::MAX)
        })
        .fold(0u128, u128::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn exact_addresses_merge_only_where_nothing_else_is_covered() {
        let nets = aggregate(
            ips(&["203.0.113.4", "203.0.113.5", "203.0.113.9", "2001:db8::1"]),
            Widen::default(),
        );
        let text: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            text,
            ["203.0.113.4/31", "203.0.113.9/32", "2001:db8::1/128"]
        );
        assert_eq!(size(&nets), 4, "no address beyond the observed ones");
    }

    #[test]
    fn widening_covers_the_chosen_prefix_and_says_how_much() {
        let nets = aggregate(
            ips(&["198.51.100.7", "198.51.100.200", "192.0.2.1"]),
            Widen { v4: 24, v6: 64 },
        );
        let text: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(text, ["192.0.2.0/24", "198.51.100.0/24"]);
        assert_eq!(size(&nets), 512);
    }
}

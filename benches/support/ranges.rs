//! The synthetic egress ranges both benchmarks use: 100,000 disjoint ranges of a second data
//! center, with the mix of prefix lengths a real egress list has (single addresses, small IPv4
//! blocks, one IPv6 /64 in ten), plus addresses that hit and miss them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

pub const EXTRA_RANGES: usize = 100_000;

const V4_PREFIXES: [u8; 6] = [32, 29, 28, 27, 26, 24];

/// Range `i`: each IPv4 one lives in its own /24 from 20.0.0.0, each IPv6 one in its own /64.
pub fn range(i: usize) -> IpNet {
    if i % 10 == 9 {
        let address = Ipv6Addr::from((0x2a05_d000_u128 << 96) | ((i as u128) << 64));
        IpNet::new(IpAddr::V6(address), 64).unwrap()
    } else {
        let address = Ipv4Addr::from(0x1400_0000_u32 + ((i as u32) << 8));
        IpNet::new(IpAddr::V4(address), V4_PREFIXES[i % V4_PREFIXES.len()])
            .unwrap()
            .trunc()
    }
}

/// `count` addresses, half inside one of the ranges and half outside all of them.
pub fn probe_addresses(count: usize) -> Vec<IpAddr> {
    (0..count)
        .map(|n| {
            let i = (n * 7919) % EXTRA_RANGES;
            match (n % 2, range(i)) {
                (0, net) => net.network(),
                (_, IpNet::V4(_)) => IpAddr::V4(Ipv4Addr::from(0x1e00_0000_u32 + n as u32)),
                (_, IpNet::V6(_)) => {
                    IpAddr::V6(Ipv6Addr::from((0x2a05_e000_u128 << 96) | n as u128))
                }
            }
        })
        .collect()
}

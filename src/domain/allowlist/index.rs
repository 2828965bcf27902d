//! The lookup behind CheckAddress: which stored ranges contain an address, fast with 100k ranges.
//!
//! CIDRs either nest or are disjoint, so the ranges containing an address are exactly those
//! whose network equals the address truncated to their prefix length. The index keeps one hash
//! map per prefix length present, so a lookup costs at most 33 (IPv4) or 129 (IPv6) hash probes
//! whatever the number of ranges.

use std::collections::HashMap;
use std::net::IpAddr;

use foldhash::fast::RandomState;

use super::RangeRecord;

/// Networks of one prefix length, as integers: the address bits above the prefix.
#[derive(Debug)]
struct Prefix {
    length: u8,
    networks: HashMap<u128, Vec<usize>, RandomState>,
}

#[derive(Debug, Default)]
pub struct RangeIndex {
    records: Vec<RangeRecord>,
    /// Per family, the prefix lengths present (ascending), each with its networks → positions in
    /// `records`. Integer keys with a fast seeded hash keep a probe at a few nanoseconds.
    ipv4: Vec<Prefix>,
    ipv6: Vec<Prefix>,
}

/// The address as an integer of its family's width (IPv4 in the low 32 bits).
fn bits(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// `address` truncated to its first `length` bits of a `width`-bit family.
fn network(address: u128, length: u8, width: u8) -> u128 {
    let host_bits = width - length;
    if host_bits >= 128 {
        0
    } else {
        address >> host_bits << host_bits
    }
}

fn width(ipv6: bool) -> u8 {
    if ipv6 { 128 } else { 32 }
}

impl RangeIndex {
    pub fn new(records: Vec<RangeRecord>) -> Self {
        let mut ipv4: Vec<Prefix> = Vec::new();
        let mut ipv6: Vec<Prefix> = Vec::new();
        for (position, record) in records.iter().enumerate() {
            let ipv6_range = record.cidr.addr().is_ipv6();
            let prefixes = if ipv6_range { &mut ipv6 } else { &mut ipv4 };
            let length = record.cidr.prefix_len();
            let slot = match prefixes.binary_search_by_key(&length, |prefix| prefix.length) {
                Ok(slot) => slot,
                Err(slot) => {
                    prefixes.insert(
                        slot,
                        Prefix {
                            length,
                            networks: HashMap::default(),
                        },
                    );
                    slot
                }
            };
            let key = network(bits(record.cidr.addr()), length, width(ipv6_range));
            prefixes[slot]
                .networks
                .entry(key)
                .or_default()
                .push(position);
        }
        Self {
            records,
            ipv4,
            ipv6,
        }
    }

    /// Every stored range containing `address` (IPv4-mapped IPv6 is looked up as IPv4).
    pub fn containing(&self, address: IpAddr) -> Vec<&RangeRecord> {
        let address = address.to_canonical();
        let (prefixes, width) = if address.is_ipv6() {
            (&self.ipv6, 128)
        } else {
            (&self.ipv4, 32)
        };
        let address = bits(address);
        let mut found = Vec::new();
        for prefix in prefixes {
            if let Some(positions) = prefix.networks.get(&network(address, prefix.length, width)) {
                found.extend(positions.iter().map(|&position| &self.records[position]));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ipnet::IpNet;

    use super::*;
    use crate::domain::allowlist::Protocol;
    use crate::domain::directory::DataCenterId;

    fn record(cidr: IpNet) -> RangeRecord {
        RangeRecord {
            data_center: DataCenterId::parse("dc", "na1").unwrap(),
            protocol: Protocol::Smtp,
            cidr,
            effective_time: 0,
            retire_time: None,
        }
    }

    /// A deterministic pseudo-random sequence (no timing, no external crate).
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 11
    }

    /// The index agrees with a linear scan on 100k mixed, nested and overlapping ranges.
    #[test]
    fn agrees_with_a_linear_scan_on_many_ranges() {
        let mut state = 42;
        let mut records = Vec::new();
        for _ in 0..100_000 {
            let bits = lcg(&mut state);
            let cidr = if bits.is_multiple_of(5) {
                let address = Ipv6Addr::from(((bits as u128) << 64) | lcg(&mut state) as u128);
                IpNet::new(IpAddr::V6(address), (16 + bits % 113) as u8)
                    .unwrap()
                    .trunc()
            } else {
                // Confined to 16.0.0.0/6 so that ranges nest and collide often.
                let address = Ipv4Addr::from(0x1000_0000 | (bits as u32 & 0x03ff_ffff));
                IpNet::new(IpAddr::V4(address), (8 + bits % 25) as u8)
                    .unwrap()
                    .trunc()
            };
            records.push(record(cidr));
        }
        let index = RangeIndex::new(records.clone());
        let mut probes: Vec<IpAddr> = records
            .iter()
            .step_by(500)
            .flat_map(|record| [record.cidr.network(), record.cidr.broadcast()])
            .collect();
        for _ in 0..100 {
            let bits = lcg(&mut state);
            probes.push(IpAddr::V4(Ipv4Addr::from(
                0x1000_0000 | (bits as u32 & 0x03ff_ffff),
            )));
            probes.push(IpAddr::V6(Ipv6Addr::from(
                ((bits as u128) << 64) | bits as u128,
            )));
        }
        let mut matched = 0;
        for probe in probes {
            let mut expected: Vec<IpNet> = records
                .iter()
                .filter(|r| r.cidr.contains(&probe))
                .map(|r| r.cidr)
                .collect();
            let mut actual: Vec<IpNet> = index.containing(probe).iter().map(|r| r.cidr).collect();
            expected.sort();
            actual.sort();
            assert_eq!(actual, expected, "{probe}");
            matched += usize::from(!actual.is_empty());
        }
        assert!(
            matched > 300,
            "the probes must exercise matches, got {matched}"
        );
    }

    #[test]
    fn the_shortest_and_longest_prefixes_match_exactly() {
        let index = RangeIndex::new(
            ["0.0.0.0/0", "::/0", "141.193.184.7/32", "2600:1f18::1/128"]
                .map(|cidr| record(cidr.parse().unwrap()))
                .to_vec(),
        );
        let cidrs = |address: &str| -> Vec<String> {
            let mut found: Vec<String> = index
                .containing(address.parse().unwrap())
                .iter()
                .map(|r| r.cidr.to_string())
                .collect();
            found.sort();
            found
        };
        assert_eq!(cidrs("141.193.184.7"), ["0.0.0.0/0", "141.193.184.7/32"]);
        assert_eq!(cidrs("141.193.184.8"), ["0.0.0.0/0"]);
        assert_eq!(cidrs("2600:1f18::1"), ["2600:1f18::1/128", "::/0"]);
        assert_eq!(cidrs("2600:1f18::2"), ["::/0"]);
    }

    #[test]
    fn mapped_ipv6_is_looked_up_as_ipv4() {
        let index = RangeIndex::new(vec![record("141.193.184.0/27".parse().unwrap())]);
        assert_eq!(
            index
                .containing("::ffff:141.193.184.31".parse().unwrap())
                .len(),
            1
        );
        assert!(
            index
                .containing("::ffff:141.193.184.32".parse().unwrap())
                .is_empty()
        );
    }
}

//! The one table of special-purpose IP ranges (IANA's IPv4 and IPv6 special-purpose address
//! registries, multicast and the deprecated ranges), shared by the probe's egress guard and the
//! allowlist parser, and the host names the probe refuses before asking DNS. The standard
//! library's `is_global` is not stable, hence this table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;

/// How an IPv6 range carries an IPv4 address that is then judged in its place: `::ffff:10.0.0.1`
/// reaches 10.0.0.1, and a NAT64 or 6to4 address of a public IPv4 address is public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedding {
    /// The last 32 bits (IPv4-mapped, NAT64 well-known prefix).
    Low32,
    /// Bits 16..48 (6to4, `2002:AABB:CCDD::/48`).
    SixToFour,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialRange {
    pub net: IpNet,
    /// What the range is for, for messages (`private-use (RFC 1918)`).
    pub purpose: &'static str,
    pub embeds: Option<Embedding>,
}

const TABLE: &[(&str, &str, Option<Embedding>)] = &[
    // IPv4
    ("0.0.0.0/8", "\"this network\" (unspecified)", None),
    ("10.0.0.0/8", "private-use (RFC 1918)", None),
    (
        "100.64.0.0/10",
        "shared address space for carrier-grade NAT (RFC 6598)",
        None,
    ),
    ("127.0.0.0/8", "loopback", None),
    ("169.254.0.0/16", "link-local", None),
    ("172.16.0.0/12", "private-use (RFC 1918)", None),
    (
        "192.0.0.0/24",
        "reserved for IETF protocol assignments",
        None,
    ),
    ("192.0.2.0/24", "documentation (TEST-NET-1)", None),
    ("192.31.196.0/24", "AS112 DNS sink", None),
    ("192.52.193.0/24", "AMT relay anycast", None),
    (
        "192.88.99.0/24",
        "reserved (deprecated 6to4 relay anycast)",
        None,
    ),
    ("192.168.0.0/16", "private-use (RFC 1918)", None),
    ("192.175.48.0/24", "AS112 direct delegation", None),
    ("198.18.0.0/15", "reserved for benchmarking", None),
    ("198.51.100.0/24", "documentation (TEST-NET-2)", None),
    ("203.0.113.0/24", "documentation (TEST-NET-3)", None),
    ("224.0.0.0/4", "multicast", None),
    (
        "240.0.0.0/4",
        "reserved (including the broadcast address)",
        None,
    ),
    // IPv6
    ("::/128", "the unspecified address", None),
    ("::1/128", "loopback", None),
    (
        "::ffff:0:0/96",
        "IPv4-mapped (write the IPv4 range instead)",
        Some(Embedding::Low32),
    ),
    ("::/96", "deprecated IPv4-compatible", None),
    ("64:ff9b::/96", "NAT64 translation", Some(Embedding::Low32)),
    ("64:ff9b:1::/48", "local-use NAT64 translation", None),
    ("100::/64", "discard-only", None),
    ("100:0:0:1::/64", "dummy IPv6 prefix", None),
    // All of it, Teredo (2001::/32) and the anycast services included: no mail server is there.
    ("2001::/23", "reserved for IETF protocol assignments", None),
    ("2001:db8::/32", "documentation", None),
    ("2002::/16", "6to4", Some(Embedding::SixToFour)),
    ("2620:4f:8000::/48", "AS112 direct delegation", None),
    ("3fff::/20", "documentation", None),
    ("5f00::/16", "segment routing (SRv6) SIDs", None),
    ("fc00::/7", "unique local (private)", None),
    ("fe80::/10", "link-local", None),
    ("fec0::/10", "deprecated site-local", None),
    ("ff00::/8", "multicast", None),
];

static RANGES: LazyLock<Vec<SpecialRange>> = LazyLock::new(|| {
    TABLE
        .iter()
        .map(|(cidr, purpose, embeds)| SpecialRange {
            net: cidr
                .parse()
                .expect("the special-purpose table holds valid CIDRs"),
            purpose,
            embeds: *embeds,
        })
        .collect()
});

/// Every special-purpose range, most specific first where ranges nest.
pub fn ranges() -> &'static [SpecialRange] {
    &RANGES
}

/// IPv6 unicast addresses are only allocated from here; anything outside is reserved.
pub fn ipv6_global_unicast() -> IpNet {
    IpNet::V6("2000::/3".parse().expect("a valid CIDR"))
}

/// Cloud instance metadata services (AWS, AWS ECS, AWS IPv6, Alibaba, Azure's wire server): never
/// reached, whatever the operator allows, since they hand out this service's own credentials.
pub const CLOUD_METADATA: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)),
];

/// The special-purpose range `ip` is in, if any.
pub fn range_of(ip: IpAddr) -> Option<&'static SpecialRange> {
    ranges().iter().find(|range| range.net.contains(&ip))
}

/// The first special-purpose range that `network` lies in or includes.
pub fn overlapping(network: &IpNet) -> Option<&'static SpecialRange> {
    ranges()
        .iter()
        .find(|range| range.net.contains(network) || network.contains(&range.net))
}

/// The IPv4 address an address of an embedding range carries.
pub fn embedded_ipv4(ip: Ipv6Addr, embedding: Embedding) -> Ipv4Addr {
    let bits = u128::from(ip);
    match embedding {
        Embedding::Low32 => Ipv4Addr::from((bits & 0xffff_ffff) as u32),
        Embedding::SixToFour => Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32),
    }
}

/// Whether a host name is `localhost` or a name under it, which is always this machine's
/// loopback, never a DNS question (RFC 6761 §6.3).
pub fn is_localhost_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    let last = name.rsplit('.').next().unwrap_or_default();
    last.eq_ignore_ascii_case("localhost")
}

/// Whether a host name (not an IP literal) is an IPv4 address in a spelling the C resolver
/// accepts (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`): its last label is numeric or hex,
/// which no top-level domain can be (RFC 3696 §2).
pub fn is_numeric_spelling(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    let last = name.rsplit('.').next().unwrap_or_default();
    !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last.get(..2).is_some_and(|x| x.eq_ignore_ascii_case("0x")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_ranges_come_before_the_ranges_that_hold_them() {
        for (index, range) in ranges().iter().enumerate() {
            for earlier in &ranges()[..index] {
                assert!(
                    !earlier.net.contains(&range.net),
                    "{} holds the later-listed {}: list the narrower one first",
                    earlier.net,
                    range.net
                );
            }
        }
    }

    #[test]
    fn embedded_addresses() {
        let ip = |text: &str| text.parse::<Ipv6Addr>().unwrap();
        assert_eq!(
            embedded_ipv4(ip("64:ff9b::a00:1"), Embedding::Low32),
            Ipv4Addr::new(10, 0, 0, 1)
        );
        assert_eq!(
            embedded_ipv4(ip("2002:7f00:1::1"), Embedding::SixToFour),
            Ipv4Addr::new(127, 0, 0, 1)
        );
    }

    #[test]
    fn localhost_and_numeric_spellings() {
        for name in [
            "localhost",
            "LOCALHOST.",
            "mail.localhost",
            "a.b.localhost.",
        ] {
            assert!(is_localhost_name(name), "{name}");
        }
        for name in [
            "2130706433",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "0X7F.1",
            "127.1",
            "0x7f000001",
        ] {
            assert!(is_numeric_spelling(name), "{name}");
        }
        for name in [
            "mail.example.com",
            "imap.example.com.",
            "1and1.com",
            "localhost.example",
        ] {
            assert!(
                !is_localhost_name(name) && !is_numeric_spelling(name),
                "{name}"
            );
        }
    }
}

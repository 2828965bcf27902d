//! Property tests of what the probe parses and decides: server host and port, allowlist CIDRs and
//! the egress guard's decision. Nothing here touches the network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use mailconnect::domain::Violations;
use mailconnect::domain::allowlist::parse_entry;
use mailconnect::domain::domain_name::parse_host;
use mailconnect::domain::domain_settings::{Choice, ServerInput};
use mailconnect::domain::probe::Security;
use mailconnect::domain::special_purpose::{self, CLOUD_METADATA};
use mailconnect::probe::net::EgressGuard;
use proptest::prelude::*;

use crate::probe_guard::default_settings;

/// Strings a caller might send as a host: names, IP literals in every spelling, and noise.
fn host_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9.-]{0,70}",
        any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
        "\\PC{0,80}",
    ]
}

/// An address inside `net`: its first address with random host bits.
fn address_in(net: IpNet, bits: u128) -> IpAddr {
    match net {
        IpNet::V4(v4) => {
            let host =
                u32::try_from(bits & u128::from(u32::MAX)).unwrap() & !u32::from(v4.netmask());
            IpAddr::V4(Ipv4Addr::from(u32::from(v4.network()) | host))
        }
        IpNet::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            u128::from(v6.network()) | (bits & !u128::from(v6.netmask())),
        )),
    }
}

proptest! {
    /// A host either parses to a form that parses to itself, or is refused with its field named.
    #[test]
    fn hosts_normalise_once(raw in host_text()) {
        match parse_host("imap_server.host", &raw) {
            Ok(host) => {
                prop_assert_eq!(parse_host("imap_server.host", &host), Ok(host.clone()));
                prop_assert!(!host.contains(char::is_whitespace), "{:?}", host);
            }
            Err(violation) => prop_assert_eq!(violation.field, "imap_server.host"),
        }
    }

    /// Any host, port and security: an endpoint whose port is the one sent, or violations that
    /// name only fields of this server.
    #[test]
    fn server_addresses_parse_or_name_their_fields(
        host in host_text(),
        port in any::<u32>(),
        security in prop_oneof![Just(Choice::Unspecified), Just(Choice::Value(Security::StartTls)), any::<i32>().prop_map(Choice::Unknown)],
    ) {
        let input = ServerInput { host, port, security };
        let mut violations = Violations::new();
        let parsed = input.parse("imap.imap_server", &mut violations);
        match violations.finish(|| ()) {
            Ok(()) => {
                let endpoint = parsed.expect("no violation means an endpoint");
                prop_assert_eq!(u32::from(endpoint.port), port);
                prop_assert!(endpoint.port > 0);
            }
            Err(found) => {
                prop_assert!(parsed.is_none());
                for violation in found {
                    prop_assert!(violation.field.starts_with("imap.imap_server."), "{}", violation.field);
                }
            }
        }
    }

    /// An allowlist entry that parses is canonical, prints as itself and is public unicast.
    #[test]
    fn allowlist_cidrs_round_trip_and_are_public(
        ip in any::<IpAddr>(),
        prefix in 0u8..=128,
        noise in "[ /0-9a-f:.]{0,3}",
    ) {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        for raw in [format!("{ip}/{}", prefix.min(max)), format!("{ip}{noise}")] {
            if let Ok(network) = parse_entry(&raw) {
                prop_assert_eq!(network, network.trunc());
                prop_assert_eq!(parse_entry(&network.to_string()), Ok(network));
                prop_assert!(special_purpose::overlapping(&network).is_none(), "{}", network);
                if let IpNet::V6(_) = network {
                    prop_assert!(special_purpose::ipv6_global_unicast().contains(&network));
                }
            }
        }
    }

    /// Every address of every special-purpose range is refused, unless it embeds a public IPv4
    /// address (NAT64, 6to4, mapped), which decides in its place.
    #[test]
    fn special_purpose_addresses_are_refused(index in any::<prop::sample::Index>(), bits in any::<u128>()) {
        let guard = EgressGuard::new(&default_settings(&[993]));
        let range = index.get(special_purpose::ranges());
        let ip = address_in(range.net, bits);
        let verdict = guard.check_address(ip);
        match (range.embeds, ip) {
            (Some(embedding), IpAddr::V6(v6)) => {
                let embedded = IpAddr::V4(special_purpose::embedded_ipv4(v6, embedding));
                prop_assert_eq!(verdict.is_ok(), guard.check_address(embedded).is_ok(), "{}", ip);
            }
            _ => prop_assert!(verdict.is_err(), "{} in {} passed", ip, range.net),
        }
    }

    /// An IPv4 address and its mapped, NAT64 and 6to4 forms get the same answer.
    #[test]
    fn embedded_forms_are_judged_as_their_ipv4_address(v4 in any::<Ipv4Addr>()) {
        let guard = EgressGuard::new(&default_settings(&[993]));
        let bits = u128::from(u32::from(v4));
        let verdict = guard.check_address(IpAddr::V4(v4)).is_ok();
        for form in [
            Ipv6Addr::from(0xffff_0000_0000 | bits),
            Ipv6Addr::from((0x64_ff9b_u128 << 96) | bits),
            Ipv6Addr::from((0x2002_u128 << 112) | (bits << 80)),
        ] {
            prop_assert_eq!(guard.check_address(IpAddr::V6(form)).is_ok(), verdict, "{}", form);
        }
    }

    /// IPv6 outside global unicast 2000::/3 is refused, except the embedding forms.
    #[test]
    fn ipv6_outside_global_unicast_is_refused(v6 in any::<Ipv6Addr>()) {
        let guard = EgressGuard::new(&default_settings(&[993]));
        let ip = IpAddr::V6(v6);
        let embeds = special_purpose::range_of(ip).is_some_and(|range| range.embeds.is_some());
        if !special_purpose::ipv6_global_unicast().contains(&ip) && !embeds {
            prop_assert!(guard.check_address(ip).is_err(), "{}", ip);
        }
    }

    /// Cloud metadata addresses stay refused whatever the operator allows.
    #[test]
    fn metadata_is_refused_whatever_is_allowed(index in any::<prop::sample::Index>(), prefix in 0u8..=128) {
        let metadata = *index.get(CLOUD_METADATA);
        let max = if metadata.is_ipv4() { 32 } else { 128 };
        let allowed = IpNet::new(metadata, prefix.min(max)).unwrap().trunc();
        let guard = EgressGuard::new(&mailconnect::config::ProbeSettings {
            probe_allow_cidrs: vec![allowed],
            ..default_settings(&[993])
        });
        prop_assert!(guard.check_address(metadata).is_err());
    }
}

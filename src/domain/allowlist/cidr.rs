//! One allowlist entry: a public IPv4 or IPv6 network in canonical CIDR form.
//!
//! Entries are what customers paste into firewalls, so parsing is strict: the network address
//! must be the real one (no host bits), and ranges that can never be a public egress address
//! (private, loopback, link-local, multicast, documentation, reserved, …) are refused.

use std::net::IpAddr;
use std::str::FromStr as _;

use ipnet::IpNet;

use crate::domain::special_purpose;

/// Why `network` cannot be a public egress range, if it cannot.
fn why_not_public(network: &IpNet) -> Option<String> {
    if let Some(special) = special_purpose::overlapping(network) {
        let (what, range) = (special.purpose, special.net);
        return Some(if range.contains(network) {
            format!(
                "{network} is {what} address space ({range}) and cannot be a public egress range"
            )
        } else {
            format!(
                "{network} includes {range}, which is {what} address space and cannot be a public egress range"
            )
        });
    }
    let global = special_purpose::ipv6_global_unicast();
    match network {
        IpNet::V6(_) if !global.contains(network) => Some(format!(
            "{network} is outside the IPv6 global unicast space {global} and cannot be a public egress range"
        )),
        _ => None,
    }
}

/// Parses one entry: a CIDR (`141.193.184.0/27`) or a single address (`143.244.82.12`, stored
/// as /32 or /128), surrounding whitespace ignored. The error says what is wrong and, for host
/// bits, which network was meant.
pub fn parse_entry(raw: &str) -> Result<IpNet, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("is empty: give an IPv4 or IPv6 address or CIDR".to_owned());
    }
    let network = match text.split_once('/') {
        None => {
            let address = parse_address(text)?;
            IpNet::from(address)
        }
        Some((address, prefix)) => {
            let address = parse_address(address)?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let prefix = prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| {
                    format!("{text:?} has prefix length {prefix:?}: use a number from 0 to {max}")
                })?;
            IpNet::new(address, prefix).map_err(|error| error.to_string())?
        }
    };
    let canonical = network.trunc();
    if canonical != network {
        return Err(format!(
            "{text:?} has host bits set: the network is {canonical}"
        ));
    }
    match why_not_public(&canonical) {
        Some(reason) => Err(reason),
        None => Ok(canonical),
    }
}

fn parse_address(text: &str) -> Result<IpAddr, String> {
    IpAddr::from_str(text).map_err(|_| {
        if text == "-" || text == "*" {
            format!("{text:?} is a placeholder, not an IPv4 or IPv6 address or CIDR")
        } else {
            format!("{text:?} is not an IPv4 or IPv6 address or CIDR")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_addresses_become_full_length_networks() {
        assert_eq!(
            parse_entry(" 143.244.82.12 ").unwrap().to_string(),
            "143.244.82.12/32"
        );
        assert_eq!(
            parse_entry("2600:1f18::1").unwrap().to_string(),
            "2600:1f18::1/128"
        );
        assert_eq!(
            parse_entry("141.193.184.0/27").unwrap().to_string(),
            "141.193.184.0/27"
        );
        assert_eq!(
            parse_entry("2600:1F18::/36").unwrap().to_string(),
            "2600:1f18::/36"
        );
    }

    #[test]
    fn host_bits_name_the_network() {
        let error = parse_entry("141.193.184.7/27").unwrap_err();
        assert!(error.contains("141.193.184.0/27"), "{error}");
        let error = parse_entry("2600:1f18::1/36").unwrap_err();
        assert!(error.contains("2600:1f18::/36"), "{error}");
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "",
            "  ",
            "-",
            "1.2.3",
            "1.2.3.4/33",
            "1.2.3.4/",
            "1.2.3.4/x",
            "::1/129",
            "example.com",
        ] {
            assert!(parse_entry(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_entry("-").unwrap_err().contains("placeholder"));
    }

    #[test]
    fn special_purpose_ranges_are_refused() {
        for bad in [
            "10.1.2.3",
            "172.16.0.0/12",
            "192.168.1.0/24",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "0.0.0.0/0",
            "192.0.2.1",
            "198.51.100.0/24",
            "203.0.113.9",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:8.8.8.8",
            "fe80::1",
            "fd00::/8",
            "ff02::1",
            "2001:db8::/32",
            "2002::/16",
            "64:ff9b::808:808",
            "::/0",
            "4000::/3",
        ] {
            assert!(parse_entry(bad).is_err(), "{bad} accepted");
        }
        assert!(
            parse_entry("10.0.0.0/8")
                .unwrap_err()
                .contains("private-use")
        );
        assert!(parse_entry("0.0.0.0/0").unwrap_err().contains("includes"));
    }
}

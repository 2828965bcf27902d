//! Where the probe may connect: resolve once, let the egress guard judge every address, then
//! connect to the address that was checked (never resolve again, so DNS cannot swap it).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use tokio::net::TcpStream;

use crate::config::{PortRange, ProbeSettings};

/// Ranges the probe never reaches unless the operator allows them: this service's own network,
/// cloud metadata and addresses that are not public unicast.
const DENIED_RANGES: &[&str] = &[
    // IPv4
    "0.0.0.0/8",       // "this network", unspecified
    "10.0.0.0/8",      // private
    "100.64.0.0/10",   // carrier-grade NAT
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local, incl. 169.254.169.254 (cloud metadata)
    "172.16.0.0/12",   // private
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation
    "192.88.99.0/24",  // 6to4 relay anycast
    "192.168.0.0/16",  // private
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation
    "203.0.113.0/24",  // documentation
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, incl. broadcast
    // IPv6
    "::/128",         // unspecified
    "::1/128",        // loopback
    "::/96",          // IPv4-compatible (deprecated)
    "64:ff9b:1::/48", // local-use NAT64
    "100::/64",       // discard
    "2001:2::/48",    // benchmarking
    "2001:10::/28",   // ORCHID
    "2001:20::/28",   // ORCHIDv2
    "2001:db8::/32",  // documentation
    "3fff::/20",      // documentation
    "fc00::/7",       // unique local, incl. fd00:ec2::254 (cloud metadata)
    "fe80::/10",      // link-local
    "fec0::/10",      // site-local (deprecated)
    "ff00::/8",       // multicast
];

/// Why the guard refused a destination. Nothing was sent when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("port {0} is not one this service may connect to")]
    Port(u16),
    #[error("{0} is in a range this service never connects to ({1})")]
    Address(IpAddr, IpNet),
}

/// The egress guard: decides, before any packet, whether an address and port may be reached.
#[derive(Debug, Clone)]
pub struct EgressGuard {
    denied: Vec<IpNet>,
    allowed: Vec<IpNet>,
    operator_denied: Vec<IpNet>,
    ports: Vec<PortRange>,
}

impl EgressGuard {
    pub fn new(settings: &ProbeSettings) -> Self {
        Self {
            denied: DENIED_RANGES
                .iter()
                .map(|range| range.parse().expect("built-in ranges are valid CIDRs"))
                .collect(),
            allowed: settings.probe_allow_cidrs.clone(),
            operator_denied: settings.probe_deny_cidrs.clone(),
            ports: settings.probe_allowed_ports.clone(),
        }
    }

    pub fn check_port(&self, port: u16) -> Result<(), Refusal> {
        if self.ports.iter().any(|range| range.contains(port)) {
            Ok(())
        } else {
            Err(Refusal::Port(port))
        }
    }

    /// Refuses the whole destination when any of its addresses is refused: a name that resolves to
    /// both a public and a private address is not reached at all.
    pub fn check_addresses(&self, addresses: &[IpAddr]) -> Result<(), Refusal> {
        addresses.iter().try_for_each(|ip| self.check_address(*ip))
    }

    /// An address is judged with every IPv4 address it embeds (mapped, NAT64, 6to4, Teredo), so
    /// `::ffff:127.0.0.1` is loopback. Operator-denied ranges win over allowed ones, which win over
    /// the built-in ranges.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Refusal> {
        for form in forms(ip) {
            if let Some(range) = self.operator_denied.iter().find(|net| net.contains(&form)) {
                return Err(Refusal::Address(ip, *range));
            }
            if self.allowed.iter().any(|net| net.contains(&form)) {
                continue;
            }
            if let Some(range) = self.denied.iter().find(|net| net.contains(&form)) {
                return Err(Refusal::Address(ip, *range));
            }
        }
        Ok(())
    }
}

/// The address itself and the IPv4 addresses embedded in it.
fn forms(ip: IpAddr) -> Vec<IpAddr> {
    let mut forms = vec![ip];
    if let IpAddr::V6(v6) = ip {
        forms.extend(embedded_ipv4(v6).into_iter().map(IpAddr::V4));
    }
    forms
}

fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(v6);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let segments = v6.segments();
    let mut embedded = Vec::new();
    if let Some(mapped) = v6.to_ipv4_mapped() {
        embedded.push(mapped);
    }
    // NAT64 well-known prefix 64:ff9b::/96 (and the local-use 64:ff9b:1::/48).
    if segments[0] == 0x64 && segments[1] == 0xff9b {
        embedded.push(low32);
    }
    // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if segments[0] == 0x2002 {
        embedded.push(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    // Teredo 2001:0::/32: the server in bits 32..64, the client (inverted) in the last 32 bits.
    if segments[0] == 0x2001 && segments[1] == 0 {
        embedded.push(Ipv4Addr::from(((bits >> 64) & 0xffff_ffff) as u32));
        embedded.push(Ipv4Addr::from(!((bits & 0xffff_ffff) as u32)));
    }
    embedded
}

/// Resolves a host name or IP literal (IPv6 with or without brackets) once.
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    addresses.dedup();
    Ok(addresses)
}

/// Resolves names and opens TCP connections to addresses the guard approved. Tests substitute one
/// that answers names itself and records connection attempts instead of sending anything.
pub trait Connector: Send + Sync + 'static {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send {
        resolve(host, port)
    }

    fn connect(&self, address: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

/// The real network.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    async fn connect(&self, address: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

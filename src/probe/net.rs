//! Where the probe may connect: resolve once, let the egress guard judge every address, then
//! connect to the address that was checked (never resolve again, so DNS cannot swap it).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use tokio::net::TcpStream;

use crate::config::{PortRange, ProbeSettings};
use crate::domain::special_purpose::{self, CLOUD_METADATA};

/// Why the guard refused a destination. Nothing was sent when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("port {0} is not one this service may connect to")]
    Port(u16),
    #[error("{0}")]
    Name(&'static str),
    /// `range` says what kind of range (`loopback`), for the operator's logs; the report names
    /// neither for a host name (a tenant must not map the service's internal DNS).
    #[error("{address} is in a range this service never connects to ({range})")]
    Address {
        address: IpAddr,
        range: &'static str,
    },
}

/// The egress guard: decides, before any packet, whether a host, an address and a port may be
/// reached. Cloud metadata services are refused first, then operator-denied ranges, then what
/// the operator allows passes, then the special-purpose ranges and the IPv6 space outside global
/// unicast are refused.
#[derive(Debug, Clone)]
pub struct EgressGuard {
    allowed: Vec<IpNet>,
    operator_denied: Vec<IpNet>,
    ports: Vec<PortRange>,
}

impl EgressGuard {
    pub fn new(settings: &ProbeSettings) -> Self {
        Self {
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

    /// Refuses, before any DNS query, a numeric address in a spelling that the C resolver would
    /// turn into one (`0x7f.1`, `2130706433`). IP literals pass here.
    pub fn check_host(&self, host: &str) -> Result<(), Refusal> {
        if ip_literal(host).is_none() && special_purpose::is_numeric_spelling(host) {
            return Err(Refusal::Name(
                "a numeric address must be written as a dotted IPv4 or an IPv6 address",
            ));
        }
        Ok(())
    }

    /// Refuses the whole destination when any of its addresses is refused: a name that resolves to
    /// both a public and a private address is not reached at all.
    pub fn check_addresses(&self, addresses: &[IpAddr]) -> Result<(), Refusal> {
        addresses.iter().try_for_each(|ip| self.check_address(*ip))
    }

    /// An address is judged with the IPv4 address it embeds (mapped, NAT64, 6to4), so
    /// `::ffff:127.0.0.1` is loopback and a NAT64 address of a public server is public.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Refusal> {
        let refuse = |range| Err(Refusal::Address { address: ip, range });
        for form in forms(ip) {
            if CLOUD_METADATA.contains(&form) {
                return refuse("cloud metadata service");
            }
            if self.operator_denied.iter().any(|net| net.contains(&form)) {
                return refuse("denied by the operator");
            }
            if self.allowed.iter().any(|net| net.contains(&form)) {
                continue;
            }
            match special_purpose::range_of(form) {
                // The embedded address, next in `forms`, decides.
                Some(range) if range.embeds.is_some() => {}
                Some(range) => return refuse(range.purpose),
                None if form.is_ipv6()
                    && !special_purpose::ipv6_global_unicast().contains(&form) =>
                {
                    return refuse("outside IPv6 global unicast 2000::/3");
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// The address itself and the IPv4 address it embeds, if its range embeds one.
fn forms(ip: IpAddr) -> Vec<IpAddr> {
    let mut forms = vec![ip];
    if let IpAddr::V6(v6) = ip
        && let Some(embedding) = special_purpose::range_of(ip).and_then(|range| range.embeds)
    {
        forms.push(IpAddr::V4(special_purpose::embedded_ipv4(v6, embedding)));
    }
    forms
}

/// The IP address a host field holds, if it is a literal (IPv6 with or without brackets).
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The loopback addresses `localhost` and the names under it always are: no resolver, however
/// configured, is asked about them.
pub fn localhost(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
    special_purpose::is_localhost_name(host).then(|| {
        [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ]
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
    })
}

/// Resolves a host name or IP literal once, off the blocking pool (see `resolve`).
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Some(ip) = ip_literal(host) {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut addresses = super::resolve::lookup(host, port).await?;
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

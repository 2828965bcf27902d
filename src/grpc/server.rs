//! The hardened gRPC server: message sizes, per-connection and global concurrency, request
//! timeout, HTTP/2 keepalive, connection age (and a bound past it) and optional (mutual) TLS that
//! follows its files. Every limit is a setting with a documented default, so an operator can tune
//! it without a rebuild.

use std::future::Future as _;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpIncoming};

use super::tls::{ReloadingTls, TlsFiles, TlsIncoming};
use crate::config::{parse_duration, parse_interval};

/// The transport settings of `mailconnect serve` (flattened into [`crate::config::Settings`]).
#[derive(clap::Args, Debug, Clone)]
pub struct ServerSettings {
    /// Largest request message accepted, in bytes; a larger one is refused (OUT_OF_RANGE).
    #[arg(
        long,
        env = "MAILCONNECT_MAX_RECV_MESSAGE_SIZE",
        default_value_t = 4 * 1024 * 1024
    )]
    pub max_recv_message_size: usize,
    /// Largest response message sent, in bytes; a larger one fails the call (OUT_OF_RANGE).
    #[arg(
        long,
        env = "MAILCONNECT_MAX_SEND_MESSAGE_SIZE",
        default_value_t = 4 * 1024 * 1024
    )]
    pub max_send_message_size: usize,
    /// Calls one HTTP/2 connection may run at once; further calls on it wait for a slot.
    #[arg(
        long,
        env = "MAILCONNECT_MAX_CONCURRENT_CALLS_PER_CONNECTION",
        default_value_t = 64
    )]
    pub max_concurrent_calls_per_connection: usize,
    /// Calls the whole server runs at once (health checks not counted); beyond it a call is
    /// refused at once with RESOURCE_EXHAUSTED (reason OVERLOADED) so clients retry elsewhere.
    #[arg(long, env = "MAILCONNECT_MAX_CONCURRENT_CALLS", default_value_t = 512)]
    pub max_concurrent_calls: usize,
    /// Longest a call may take to answer (a shorter `grpc-timeout` from the client wins).
    #[arg(long, env = "MAILCONNECT_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Interval of HTTP/2 PINGs that detect dead connections.
    #[arg(long, env = "MAILCONNECT_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// How long a PING may stay unanswered before the connection is closed.
    #[arg(long, env = "MAILCONNECT_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,
    /// Age after which a connection is asked to go away (GOAWAY, in-flight calls finish), so that
    /// clients reconnect and spread over new replicas.
    #[arg(long, env = "MAILCONNECT_MAX_CONNECTION_AGE", default_value = "30m", value_parser = parse_duration)]
    pub max_connection_age: Duration,
    /// How long a connection that got GOAWAY for its age may still run calls before it is closed
    /// (calls and streams still open then end with UNAVAILABLE). None: no limit.
    #[arg(long, env = "MAILCONNECT_MAX_CONNECTION_AGE_GRACE", value_parser = parse_interval)]
    pub max_connection_age_grace: Option<Duration>,
    /// Optional plaintext address serving only the health service, for Kubernetes gRPC probes
    /// (which cannot speak TLS) when the main port uses TLS.
    #[arg(long, env = "MAILCONNECT_HEALTH_LISTEN_ADDR")]
    pub health_listen_addr: Option<std::net::SocketAddr>,
    /// PEM certificate chain of the server; with `--tls-key`, the server speaks TLS only.
    #[arg(long, env = "MAILCONNECT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "MAILCONNECT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): when set, every client must present a certificate they signed
    /// (mutual TLS). Needs `--tls-cert`.
    #[arg(long, env = "MAILCONNECT_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the certificate, key and client CA files are read again: new connections get
    /// what changed; files that do not load keep the previous ones (and log an error).
    #[arg(long, env = "MAILCONNECT_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_interval)]
    pub tls_reload_interval: Duration,
}

impl Default for ServerSettings {
    /// The documented defaults (the flags' own), whatever the environment says.
    fn default() -> Self {
        let command = <Self as clap::Args>::augment_args(clap::Command::new("defaults"))
            .mut_args(|arg| arg.env(None));
        let matches = command.get_matches_from(["defaults"]);
        <Self as clap::FromArgMatches>::from_arg_matches(&matches)
            .expect("every server setting has a default")
    }
}

impl ServerSettings {
    /// A server builder with the connection-level limits applied. Message sizes are a setting of
    /// each generated service server: `app.rs` applies `max_recv_message_size` and
    /// `max_send_message_size` to every `mailconnect.v1` service it adds. TLS is not the
    /// builder's: [`Self::tls`] loads it, and the connections come through [`tls_connections`].
    pub fn builder(&self) -> anyhow::Result<Server> {
        anyhow::ensure!(
            self.max_concurrent_calls > 0,
            "MAILCONNECT_MAX_CONCURRENT_CALLS must be at least 1"
        );
        anyhow::ensure!(
            self.max_concurrent_calls_per_connection > 0,
            "MAILCONNECT_MAX_CONCURRENT_CALLS_PER_CONNECTION must be at least 1"
        );
        // Not tonic's max_connection_age_grace: in tonic 0.14 setting it replaces the GOAWAY at
        // max_connection_age with a plain close at age + grace. [`Aged`] closes instead.
        Ok(Server::builder()
            .concurrency_limit_per_connection(self.max_concurrent_calls_per_connection)
            .http2_keepalive_interval(Some(self.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(self.http2_keepalive_timeout))
            .max_connection_age(self.max_connection_age))
    }

    /// Whether the server speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The TLS configuration, loaded from its files (which must load at startup).
    pub fn tls(&self) -> anyhow::Result<Option<ReloadingTls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            anyhow::ensure!(
                self.tls_cert.is_none() && self.tls_key.is_none() && self.tls_client_ca.is_none(),
                "TLS needs both MAILCONNECT_TLS_CERT and MAILCONNECT_TLS_KEY"
            );
            return Ok(None);
        };
        ReloadingTls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
        })
        .map(Some)
    }

    /// How long a connection may live at most: its age plus the grace, when a grace is set.
    pub fn connection_lifetime(&self) -> Option<Duration> {
        self.max_connection_age_grace
            .map(|grace| self.max_connection_age.saturating_add(grace))
    }
}

/// The connections a server accepts on `listener`, with TCP_NODELAY: `serve_with_incoming`
/// ignores the builder's `tcp_nodelay`, and without it a response written in several pieces
/// (any list of a few KiB) waits for the client's delayed ACK, about 40 ms, on every call.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The plaintext connections of the gRPC port, each closed at `lifetime` when one is set.
pub fn connections(
    listener: TcpListener,
    lifetime: Option<Duration>,
) -> impl Stream<Item = io::Result<Aged<TcpStream>>> {
    incoming(listener).map(move |connection| connection.map(|io| Aged::new(io, lifetime)))
}

/// The TLS connections of the gRPC port (handshakes with the configuration current when each
/// connection arrives), each closed at `lifetime` when one is set.
pub fn tls_connections(
    listener: TcpListener,
    tls: ReloadingTls,
    lifetime: Option<Duration>,
) -> impl Stream<Item = io::Result<Aged<tokio_rustls::server::TlsStream<TcpStream>>>> {
    TlsIncoming::new(incoming(listener), tls)
        .map(move |connection| connection.map(|io| Aged::new(io, lifetime)))
}

/// A connection that fails every read and write once its lifetime is over, so that hyper closes
/// it: the bound past max_connection_age for clients that keep calls (or streams) open on a
/// connection that got GOAWAY. Reads are always pending on a served HTTP/2 connection, so the
/// deadline's timer wakes the connection's task when it passes.
pub struct Aged<IO> {
    io: IO,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> Aged<IO> {
    fn new(io: IO, lifetime: Option<Duration>) -> Self {
        Self {
            io,
            deadline: lifetime.map(|lifetime| Box::pin(tokio::time::sleep(lifetime))),
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready())
    }
}

fn lifetime_over() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "connection open longer than MAILCONNECT_MAX_CONNECTION_AGE + _GRACE",
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for Aged<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Aged<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(lifetime_over()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The peer address (and, over TLS, certificates) tonic puts in each request, as without it.
impl<IO: Connected> Connected for Aged<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_tcp_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let stream = accepted.next().await.unwrap().unwrap();
        assert!(stream.nodelay().unwrap());
    }
}

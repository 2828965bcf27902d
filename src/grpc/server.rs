//! The hardened gRPC server: message sizes, per-connection and global concurrency, request
//! timeout, HTTP/2 keepalive, connection age and optional (mutual) TLS. Every limit is a setting
//! with a documented default, so an operator can tune it without a rebuild.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

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
    #[arg(long, env = "MAILCONNECT_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Interval of HTTP/2 PINGs that detect dead connections.
    #[arg(long, env = "MAILCONNECT_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// How long a PING may stay unanswered before the connection is closed.
    #[arg(long, env = "MAILCONNECT_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,
    /// Age after which a connection is asked to go away (GOAWAY, in-flight calls finish), so that
    /// clients reconnect and spread over new replicas.
    #[arg(long, env = "MAILCONNECT_MAX_CONNECTION_AGE", default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
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
    /// A server builder with the connection-level limits and TLS applied. Message sizes are a
    /// setting of each generated service server: `app.rs` applies `max_recv_message_size` and
    /// `max_send_message_size` to every `mailconnect.v1` service it adds.
    pub fn builder(&self) -> anyhow::Result<Server> {
        anyhow::ensure!(
            self.max_concurrent_calls > 0,
            "MAILCONNECT_MAX_CONCURRENT_CALLS must be at least 1"
        );
        anyhow::ensure!(
            self.max_concurrent_calls_per_connection > 0,
            "MAILCONNECT_MAX_CONCURRENT_CALLS_PER_CONNECTION must be at least 1"
        );
        let mut server = Server::builder()
            .concurrency_limit_per_connection(self.max_concurrent_calls_per_connection)
            .timeout(self.request_timeout)
            .http2_keepalive_interval(Some(self.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(self.http2_keepalive_timeout))
            .max_connection_age(self.max_connection_age);
        if let Some(tls) = self.tls_config()? {
            server = server
                .tls_config(tls)
                .context("invalid TLS configuration")?;
        }
        Ok(server)
    }

    /// Whether the server speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    fn tls_config(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            anyhow::ensure!(
                self.tls_cert.is_none() && self.tls_key.is_none() && self.tls_client_ca.is_none(),
                "TLS needs both MAILCONNECT_TLS_CERT and MAILCONNECT_TLS_KEY"
            );
            return Ok(None);
        };
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("reading TLS {what} {}", path.display()))
        };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
            read(cert, "certificate")?,
            read(key, "key")?,
        ));
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Ok(Some(config))
    }
}

/// The connections a server accepts on `listener`, with TCP_NODELAY: `serve_with_incoming`
/// ignores the builder's `tcp_nodelay`, and without it a response written in several pieces
/// (any list of a few KiB) waits for the client's delayed ACK, about 40 ms, on every call.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

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

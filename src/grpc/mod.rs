//! The transport: the only place that sees generated protobuf types. One module per service
//! converts between proto and domain; errors become statuses in `status`.

mod allowlist;
pub mod auth;
mod channel;
mod codec;
pub mod deadline;
mod directory;
mod domain_settings;
pub mod drain;
pub mod gate;
pub mod health_port;
mod inbox_connection;
pub mod limits;
pub mod observe;
pub mod policy;
pub mod probe_report;
mod redact;
pub mod server;
pub mod status;
mod timestamp;
pub mod tls;

pub use allowlist::AllowlistApi;
pub use directory::DirectoryApi;
pub use domain_settings::DomainSettingsApi;
pub use inbox_connection::InboxConnectionApi;

/// The standard health service, which the tower layers treat specially (never shed, not traced).
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// A health entry that is SERVING for as long as the process answers, whatever the database
/// says: the liveness probe's target (readiness probes the overall `""`).
pub const LIVENESS_SERVICE: &str = "liveness";

/// The future of the tower layers over the router.
type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

/// The `("package.Service", "Method")` of a gRPC path `/package.Service/Method`.
fn split_rpc_path(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix('/')?.split_once('/')
}

/// The generated `mailconnect.v1` messages, servers and clients.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("mailconnect.v1");

    /// The encoded descriptor set of every `mailconnect.v1` file, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/mailconnect_descriptor.bin"));
}

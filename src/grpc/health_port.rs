//! An optional plaintext listener that serves only `grpc.health.v1.Health`: kubelet's native
//! gRPC probes cannot speak TLS, so with TLS on the main port they probe this one instead.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::pb::health_server::{Health, HealthServer};

/// Binds the health listener when an address is configured.
pub async fn bind(addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => {
            Ok(Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for health checks on {addr}")
            })?))
        }
        None => Ok(None),
    }
}

/// Serves `health` on `listener` until the task is aborted (after the main server stopped).
pub fn spawn<H: Health>(listener: TcpListener, health: HealthServer<H>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let served = Server::builder()
            .add_service(health)
            .serve_with_incoming(super::server::incoming(listener))
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "health port failed");
        }
    })
}

//! SIGTERM to the real binary while calls are in flight.

use std::time::Duration;

use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::backend_tests;
use crate::hardening::{list_services, open_reflection_stream};
use crate::harness::{Backend, TestDatabase};
use crate::process::ServerProcess;

/// Health turns NOT_SERVING on the open Watch stream at once (and the stream is closed so it
/// does not hold the drain), a call in flight keeps being served and completes, and the process
/// exits 0 having drained before the grace period ran out.
async fn sigterm_drains_in_flight_calls_and_exits_cleanly(backend: Backend) {
    let database = TestDatabase::create(backend);
    let mut server = ServerProcess::start(&database, &["--shutdown-grace", "120s"], &[]);
    let channel = server.channel();

    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch health")
        .into_inner();
    // Readiness follows the database: skip NOT_SERVING updates until SERVING arrives.
    loop {
        let update = watch.next().await.expect("watch open").expect("update");
        if update.status() == ServingStatus::Serving {
            break;
        }
    }
    // The call in flight: a reflection stream, open across the signal.
    let (requests, mut responses) = open_reflection_stream(channel.clone()).await;
    list_services(&requests, &mut responses).await;

    server.terminate();

    let update = watch.next().await.expect("an update").expect("update ok");
    assert_eq!(update.status(), ServingStatus::NotServing);
    let end = watch.next().await;
    assert!(
        matches!(&end, Some(Err(status)) if status.code() == Code::Unavailable),
        "the Watch stream is closed with UNAVAILABLE once NOT_SERVING is sent: {end:?}"
    );

    // The call in flight is still served after the signal, then completes cleanly.
    list_services(&requests, &mut responses).await;
    drop(requests);
    assert!(
        responses.next().await.is_none(),
        "the call completes with OK"
    );

    let status = server.wait(Duration::from_secs(120)).await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert_eq!(
        server
            .logged("shutting down: NOT_SERVING, draining in-flight calls")
            .len(),
        1
    );
    assert!(
        server
            .logged("grace period over, dropping remaining connections")
            .is_empty(),
        "the drain finished before the grace period"
    );
}

backend_tests!(sigterm_drains_in_flight_calls_and_exits_cleanly);

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

/// Once the server has returned, the thread that follows other writers for the read cache is
/// gone (it closed its connection and was joined), not left to end on its own while `main`
/// returns and the exit handlers run (issue 16, 1). nextest runs each test in a process of its
/// own, so the threads seen are this server's.
async fn the_stopped_server_leaves_no_listener_thread(backend: Backend) {
    let app = crate::harness::spawn_app(backend).await;
    assert_eq!(threads_named("cache-listener"), 1, "the listener runs");
    app.stop().await;
    assert_eq!(
        threads_named("cache-listener"),
        0,
        "the listener outlived the server"
    );
}

/// How many threads of this process have this name.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

backend_tests!(
    sigterm_drains_in_flight_calls_and_exits_cleanly,
    the_stopped_server_leaves_no_listener_thread
);

/// Start, one call that reads through the cache, SIGTERM: every exit is status 0, never a
/// signal. The release binary on Postgres exited with SIGSEGV in 1 of 40 such cycles, a thread
/// still inside libpq (the cache listener's, detached) while the exit handlers ran (issue 16, 1).
/// 20 cycles in the normal suite, 200 with `scripts/test --long`. The database URL carries a
/// password both ways libpq takes one (trust authentication ignores it): neither is ever logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_sigterm_cycles_on_postgres_always_exit_0() {
    use mailconnect::grpc::proto::GetAllowlistRequest;
    use mailconnect::grpc::proto::allowlist_service_client::AllowlistServiceClient;

    let cycles = if crate::harness::long_tests() {
        200
    } else {
        20
    };
    let database = TestDatabase::create(Backend::Postgres);
    let (scheme, rest) = database.url().split_once("://").unwrap();
    let (user, rest) = rest.split_once('@').unwrap();
    let url = format!("{scheme}://{user}:cycle-userinfo-secret@{rest}?password=cycle-query-secret");
    let token = crate::harness::user_token(1, 7, &[]);
    for cycle in 0..cycles {
        let mut server = ServerProcess::start_on(&url, &[], &[]);
        server.wait_until_serving().await;
        AllowlistServiceClient::new(server.channel())
            .get_allowlist(crate::harness::authed(
                &token,
                GetAllowlistRequest::default(),
            ))
            .await
            .unwrap_or_else(|status| panic!("cycle {cycle}: {status:?}"));
        server.terminate();
        let status = server.wait(Duration::from_secs(60)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "cycle {cycle} of {cycles}: {status:?}"
        );
        let logs = server.log_text();
        for secret in ["cycle-userinfo-secret", "cycle-query-secret"] {
            assert!(
                !logs.contains(secret),
                "cycle {cycle} logged {secret}: {logs}"
            );
        }
    }
}

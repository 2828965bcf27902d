//! The service with a fault proxy between it and Postgres (`fault_proxy.rs`): while Postgres
//! stalls, is cut off or reset, every call ends within its deadline, UNAVAILABLE or past its
//! deadline, never INTERNAL and never naming the database's internals; once the proxy heals, the
//! same server serves again without anyone acting; a multi-row write cut midway is all or nothing.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailconnect::domain::secret::Secret;
use mailconnect::grpc::proto::inbox_connection_service_client::InboxConnectionServiceClient;
use mailconnect::grpc::proto::{GetAccountRequest, ListInboxesRequest};
use tokio::sync::Notify;
use tonic::Code;

use crate::fault_proxy::{Fault, FaultProxy};
use crate::harness::{Backend, TestApp, TestDatabase, authed, eventually, start_app_with};
use crate::shutdown_load::{
    Outcomes, admin, assert_whole_or_absent, create, load, seed_account, stored_inboxes,
};

/// The deadline every call is sent with.
const DEADLINE: Duration = Duration::from_secs(2);
/// What a call may take beyond its deadline: the answer's way back, on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

/// The app on a fresh Postgres database that it reaches only through the proxy.
async fn app_behind_proxy() -> (TestApp, FaultProxy) {
    let database = TestDatabase::create(Backend::Postgres);
    let mut url = url::Url::parse(database.url()).expect("database URL");
    let upstream: SocketAddr = (url.host_str().expect("host"), url.port().unwrap_or(5432))
        .to_socket_addrs()
        .expect("resolve the Postgres host")
        .next()
        .expect("an address");
    assert!(upstream.ip().is_loopback(), "tests reach loopback only");
    let proxy = FaultProxy::start(upstream).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    let app = start_app_with(database, |settings| {
        settings.database.database_url = Some(Secret::new(url.to_string()));
        settings.inbox.inbox_limits = "professional=1000000".parse().unwrap();
    })
    .await;
    app.wait_until_serving().await;
    (app, proxy)
}

/// One call of each kind the service makes of its database: a write, a read, a cached read.
async fn calls(app: &TestApp, round: &str) -> Vec<(String, Result<(), tonic::Status>, Duration)> {
    let mut running = Vec::new();
    for index in 0..8 {
        let channel = app.channel.clone();
        let name = format!("{round}-{index}");
        running.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut inboxes = InboxConnectionServiceClient::new(channel.clone());
            let result = match index % 3 {
                0 => {
                    let mut request = authed(&admin(), create(&name));
                    request.set_timeout(DEADLINE);
                    inboxes.create_inbox(request).await.map(drop)
                }
                1 => {
                    let mut request = authed(&admin(), ListInboxesRequest::default());
                    request.set_timeout(DEADLINE);
                    inboxes.list_inboxes(request).await.map(drop)
                }
                _ => {
                    let mut request = authed(&admin(), GetAccountRequest { account_id: 1 });
                    request.set_timeout(DEADLINE);
                    mailconnect::grpc::proto::directory_service_client::DirectoryServiceClient::new(
                        channel,
                    )
                    .get_account(request)
                    .await
                    .map(drop)
                }
            };
            (name, result, started.elapsed())
        }));
    }
    let mut results = Vec::new();
    for call in running {
        results.push(call.await.expect("call task"));
    }
    results
}

/// Whether a failed call's status is one the caller can act on, without the database's
/// internals in its message: UNAVAILABLE (retry), or its deadline passed: DEADLINE_EXCEEDED from
/// the server, or the tonic client's own timer (which it reports as CANCELLED "Timeout expired",
/// its source `TimeoutExpired`; the server's answer races it).
pub fn acceptable(status: &tonic::Status) -> bool {
    let internals = [
        "diesel",
        "libpq",
        "ssl",
        "pg_",
        "sqlstate",
        "server closed",
        "tcp",
        "socket",
    ];
    let message = status.message().to_lowercase();
    let client_deadline = status.code() == Code::Cancelled
        && format!("{:?}", std::error::Error::source(status)).contains("TimeoutExpired");
    let code_ok =
        client_deadline || matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded);
    code_ok && !internals.iter().any(|word| message.contains(word))
}

async fn database_faults_end_calls_in_time_and_heal() {
    let (app, proxy) = app_behind_proxy().await;
    seed_account(&app.channel).await;
    for fault in [Fault::Stall, Fault::Cut, Fault::Reset] {
        proxy.set(fault);
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for (name, result, took) in calls(&app, &format!("{fault:?}")).await {
            assert!(took < DEADLINE + SLACK, "{fault:?} {name}: took {took:?}");
            let code = result.as_ref().err().map_or(Code::Ok, tonic::Status::code);
            *seen.entry(format!("{code:?}")).or_default() += 1;
            if let Err(status) = result {
                assert!(acceptable(&status), "{fault:?} {name}: {status:?}");
            }
        }
        println!("{fault:?}: {seen:?}");
        proxy.set(Fault::Pass);
        // The same server serves again: the pool drops what broke and connects anew.
        eventually(
            &format!("the service serves again after {fault:?}"),
            || async {
                let healed = calls(&app, &format!("healed-{fault:?}")).await;
                healed
                    .iter()
                    .all(|(_, result, _)| result.is_ok())
                    .then_some(())
            },
        )
        .await;
    }
}

/// Writes of an inbox and its request record (one transaction) from 64 streams, the database
/// reset under them: after healing, every acknowledged write is there and every cut one is whole
/// or absent.
async fn a_write_cut_midway_is_all_or_nothing() {
    let (app, proxy) = app_behind_proxy().await;
    seed_account(&app.channel).await;
    let loaded = Arc::new(Notify::new());
    let load = tokio::spawn(load(app.channel.clone(), Arc::clone(&loaded)));
    loaded.notified().await;
    proxy.set(Fault::Reset);
    let outcomes: Outcomes = load.await.unwrap();
    proxy.set(Fault::Pass);
    let stored = eventually("the service reads again", || async {
        let mut client = InboxConnectionServiceClient::new(app.channel.clone());
        client
            .list_inboxes(authed(&admin(), ListInboxesRequest::default()))
            .await
            .ok()
            .map(drop)
    })
    .await;
    let () = stored;
    let stored = stored_inboxes(&app.channel).await;
    for (name, inbox) in &outcomes.acknowledged {
        assert_eq!(stored.get(name), Some(inbox), "{name} was acknowledged");
    }
    for (name, status) in &outcomes.failed {
        assert!(acceptable(status), "{name}: {status:?}");
    }
    assert_whole_or_absent(&app.channel, &outcomes, &stored).await;
    println!(
        "database reset under 64 streams of writes: {} acknowledged and present, {} cut, none partial",
        outcomes.acknowledged.len(),
        outcomes.failed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_faults_end_calls_in_time_and_heal() {
    database_faults_end_calls_in_time_and_heal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reset_under_writes_is_all_or_nothing() {
    a_write_cut_midway_is_all_or_nothing().await;
}

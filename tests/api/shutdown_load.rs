//! The real binary under steady load from 64 concurrent streams of writes: SIGTERM fails none of
//! the calls the server accepted, and `kill -9` loses no acknowledged write and leaves no partial
//! one. Each write is a CreateInbox with its own request id (the inbox row and its idempotency
//! record, written in one transaction); a restarted server on the same database is the judge.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mailconnect::domain::principal::Role;
use mailconnect::grpc::proto::inbox_connection_service_client::InboxConnectionServiceClient;
use mailconnect::grpc::proto::{
    Account, CreateInboxRequest, Inbox, ListInboxesRequest, Tier, UpsertAccountRequest,
};
use tokio::sync::Notify;
use tonic::Code;
use tonic::transport::Channel;

use crate::backend_tests;
use crate::harness::{Backend, TestDatabase, authed, test_token, user_token};
use crate::process::ServerProcess;

/// Concurrent streams of calls.
const STREAMS: usize = 64;
/// Acknowledged writes before the signal: the load is steady by then.
const BEFORE_SIGNAL: usize = 256;

/// Room for every inbox the load creates.
const ENV: &[(&str, &str)] = &[("MAILCONNECT_INBOX_LIMITS", "professional=1000000")];

pub fn admin() -> String {
    user_token(1, 7, &[Role::SuperAdmin])
}

pub fn create(name: &str) -> CreateInboxRequest {
    CreateInboxRequest {
        inbox: Some(Inbox {
            display_name: name.to_owned(),
            ..Default::default()
        }),
        request_id: format!("req-{name}"),
    }
}

async fn start(database: &TestDatabase) -> ServerProcess {
    let server = ServerProcess::start(database, &["--shutdown-grace", "60s"], ENV);
    server.wait_until_serving().await;
    server
}

/// What each write's caller was told: the inbox it got, or the status.
#[derive(Default)]
pub struct Outcomes {
    pub acknowledged: BTreeMap<String, Inbox>,
    pub failed: Vec<(String, tonic::Status)>,
}

/// Runs 64 streams of creates until each fails once (the server went away); `loaded` is told
/// once `BEFORE_SIGNAL` writes were acknowledged.
pub async fn load(channel: Channel, loaded: Arc<Notify>) -> Outcomes {
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let streams: Vec<_> = (0..STREAMS)
        .map(|stream| {
            let mut client = InboxConnectionServiceClient::new(channel.clone());
            let acknowledged = Arc::clone(&acknowledged);
            let loaded = Arc::clone(&loaded);
            tokio::spawn(async move {
                let mut outcomes = Outcomes::default();
                for n in 0.. {
                    let name = format!("s{stream}-{n}");
                    match client.create_inbox(authed(&admin(), create(&name))).await {
                        Ok(response) => {
                            let inbox = response.into_inner().inbox.expect("inbox");
                            outcomes.acknowledged.insert(name, inbox);
                            if acknowledged.fetch_add(1, Ordering::SeqCst) + 1 == BEFORE_SIGNAL {
                                loaded.notify_one();
                            }
                        }
                        Err(status) => {
                            outcomes.failed.push((name, status));
                            break;
                        }
                    }
                }
                outcomes
            })
        })
        .collect();
    let mut all = Outcomes::default();
    for stream in streams {
        let outcomes = stream.await.expect("load stream");
        all.acknowledged.extend(outcomes.acknowledged);
        all.failed.extend(outcomes.failed);
    }
    all
}

/// Whether a call ended on the client because the server no longer took calls: UNAVAILABLE
/// (connection refused or reset), CANCELLED (hyper had queued it on a connection that closed
/// before it was sent), or a stream the server refused with GOAWAY (not processed, RFC 9113
/// §6.8), which tonic's client reports as INTERNAL "h2 protocol error".
fn not_taken(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Cancelled => true,
        Code::Internal => format!("{:?}", std::error::Error::source(status))
            .contains("GoAway(b\"\", NO_ERROR, Remote)"),
        _ => false,
    }
}

/// Every inbox of the account, by display name, read from a restarted server.
pub async fn stored_inboxes(channel: &Channel) -> BTreeMap<String, Inbox> {
    let mut client = InboxConnectionServiceClient::new(channel.clone());
    let mut stored = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_inboxes(authed(
                &admin(),
                ListInboxesRequest {
                    page_size: 1000,
                    page_token,
                },
            ))
            .await
            .expect("list inboxes")
            .into_inner();
        stored.extend(
            page.inboxes
                .into_iter()
                .map(|inbox| (inbox.display_name.clone(), inbox)),
        );
        if page.next_page_token.is_empty() {
            return stored;
        }
        page_token = page.next_page_token;
    }
}

pub async fn seed_account(channel: &Channel) {
    let platform = test_token(&mailconnect::domain::principal::Principal {
        subject: "platform".into(),
        account_id: None,
        user_id: None,
        roles: vec![Role::Platform],
    });
    mailconnect::grpc::proto::directory_service_client::DirectoryServiceClient::new(
        channel.clone(),
    )
    .upsert_account(authed(
        &platform,
        UpsertAccountRequest {
            account: Some(Account {
                id: 1,
                tier: Tier::Professional.into(),
                subdomain: "acme".into(),
                ..Default::default()
            }),
        },
    ))
    .await
    .expect("upsert account");
}

async fn sigterm_under_load_fails_no_accepted_call(backend: Backend) {
    let database = TestDatabase::create(backend);
    let mut server = start(&database).await;
    seed_account(&server.channel()).await;
    let loaded = Arc::new(Notify::new());
    let load = tokio::spawn(load(server.channel(), Arc::clone(&loaded)));
    loaded.notified().await;
    server.terminate();
    let outcomes = load.await.unwrap();
    let status = server.wait(Duration::from_secs(120)).await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");

    // None of the calls the server accepted failed: a write whose caller saw an error is not
    // stored, and the error says the server never took the call.
    let restarted = start(&database).await;
    let stored = stored_inboxes(&restarted.channel()).await;
    for (name, status) in &outcomes.failed {
        assert!(not_taken(status), "{name}: {status:?}");
        assert!(
            !stored.contains_key(name),
            "{name} was accepted and stored, yet failed: {status:?}"
        );
    }
    assert_eq!(
        outcomes.failed.len(),
        STREAMS,
        "each stream ended on the shutdown"
    );
    let acknowledged: BTreeSet<&String> = outcomes.acknowledged.keys().collect();
    assert_eq!(stored.keys().collect::<BTreeSet<_>>(), acknowledged);
    assert!(acknowledged.len() >= BEFORE_SIGNAL);
    println!(
        "SIGTERM under load: {} writes acknowledged, {} refused, none accepted and failed",
        acknowledged.len(),
        outcomes.failed.len()
    );
}

async fn kill_9_during_writes_loses_no_acknowledged_write(backend: Backend) {
    let database = TestDatabase::create(backend);
    let mut server = start(&database).await;
    seed_account(&server.channel()).await;
    let loaded = Arc::new(Notify::new());
    let load = tokio::spawn(load(server.channel(), Arc::clone(&loaded)));
    loaded.notified().await;
    server.kill();
    let outcomes = load.await.unwrap();

    let restarted = start(&database).await;
    let channel = restarted.channel();
    let stored = stored_inboxes(&channel).await;
    // Every acknowledged write is there, as it was acknowledged.
    for (name, inbox) in &outcomes.acknowledged {
        assert_eq!(stored.get(name), Some(inbox), "{name} was acknowledged");
    }
    println!(
        "kill -9 under load: {} writes acknowledged and all present, {} cut",
        outcomes.acknowledged.len(),
        outcomes.failed.len()
    );
    assert_whole_or_absent(&channel, &outcomes, &stored).await;
}

/// No partial write: whatever a cut call left, its inbox and its request record are both there
/// (a retry replays the stored inbox) or neither (a retry creates it now, and nothing else).
pub async fn assert_whole_or_absent(
    channel: &Channel,
    outcomes: &Outcomes,
    stored: &BTreeMap<String, Inbox>,
) {
    let mut client = InboxConnectionServiceClient::new(channel.clone());
    for (name, _) in &outcomes.failed {
        let retried = client
            .create_inbox(authed(&admin(), create(name)))
            .await
            .expect("retry")
            .into_inner()
            .inbox
            .unwrap();
        match stored.get(name) {
            Some(inbox) => assert_eq!(&retried, inbox, "{name}: the retry replays it"),
            None => assert_eq!(retried.display_name, *name),
        }
    }
    let created = outcomes
        .failed
        .iter()
        .filter(|(name, _)| !stored.contains_key(name))
        .count();
    assert_eq!(stored_inboxes(channel).await.len(), stored.len() + created);
}

backend_tests!(
    sigterm_under_load_fails_no_accepted_call,
    kill_9_during_writes_loses_no_acknowledged_write,
);

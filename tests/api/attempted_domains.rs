//! ListAttemptedDomains counts what ResolveConnectionSettings saw, although the counts are kept in
//! memory and written behind the calls.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use mailconnect::domain::domain_name::DomainName;
use mailconnect::domain::principal::Role;
use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
use mailconnect::grpc::proto::{ListAttemptedDomainsRequest, ResolveConnectionSettingsRequest};
use mailconnect::service::attempts::{AttemptStore as _, AttemptTally};
use mailconnect::service::domain_settings::DomainSettingsStore as _;
use mailconnect::storage::{Database, DatabaseUrl};
use tonic::transport::Channel;

use crate::backend_tests;
use crate::harness::{Backend, TestDatabase, authed, spawn_app_with, user_token};
use crate::process::ServerProcess;

async fn resolve(channel: &Channel, account_id: i64, address: String) {
    DomainSettingsServiceClient::new(channel.clone())
        .resolve_connection_settings(authed(
            &user_token(account_id, 1, &[]),
            ResolveConnectionSettingsRequest {
                email_address: address,
            },
        ))
        .await
        .unwrap_or_else(|status| panic!("resolve failed: {status:?}"));
}

/// Domain → attempts on the account's list, checking each entry's times on the way.
async fn listed(channel: &Channel, account_id: i64) -> BTreeMap<String, i64> {
    let admin = user_token(account_id, 7, &[Role::SuperAdmin]);
    let attempted = DomainSettingsServiceClient::new(channel.clone())
        .list_attempted_domains(authed(&admin, ListAttemptedDomainsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .attempted_domains;
    attempted
        .into_iter()
        .map(|entry| {
            let (first, last) = (
                entry.first_attempt_time.unwrap(),
                entry.last_attempt_time.unwrap(),
            );
            assert!((first.seconds, first.nanos) <= (last.seconds, last.nanos));
            (entry.domain, entry.attempts)
        })
        .collect()
}

/// Concurrent resolves of the same and of different domains in two accounts, while flushes run
/// every few milliseconds beside the ones ListAttemptedDomains makes: every call is counted once.
async fn concurrent_resolves_are_counted_exactly(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.attempts_flush_interval = Duration::from_millis(5);
    })
    .await;
    let plan = [
        (1, "gamma.example", 40),
        (1, "acme.example", 25),
        (1, "Beta.Example", 10),
        (2, "gamma.example", 15),
        (2, "acme.example", 30),
    ];
    for round in 1..=2 {
        let mut calls = tokio::task::JoinSet::new();
        for (account_id, domain, count) in plan {
            for n in 0..count {
                let channel = app.channel.clone();
                calls.spawn(async move {
                    resolve(&channel, account_id, format!("user{n}@{domain}")).await;
                });
            }
        }
        calls.join_all().await;
        // The second round adds to rows the first one wrote.
        assert_eq!(
            listed(&app.channel, 1).await,
            BTreeMap::from([
                ("acme.example".to_owned(), 25 * round),
                ("beta.example".to_owned(), 10 * round),
                ("gamma.example".to_owned(), 40 * round),
            ])
        );
        assert_eq!(
            listed(&app.channel, 2).await,
            BTreeMap::from([
                ("acme.example".to_owned(), 30 * round),
                ("gamma.example".to_owned(), 15 * round),
            ])
        );
    }
}

/// The real binary with a flush interval far beyond the test: the calls write nothing, and the
/// counts are in the database once SIGTERM has stopped it.
async fn sigterm_writes_the_pending_attempts(backend: Backend) {
    let database = TestDatabase::create(backend);
    let mut server = ServerProcess::start(&database, &["--attempts-flush-interval", "1h"], &[]);
    server.wait_until_serving().await;
    let channel = server.channel();
    for address in ["a@acme.example", "b@acme.example", "c@gamma.example"] {
        resolve(&channel, 3, address.to_owned()).await;
    }
    let stored = Database::new(DatabaseUrl::parse(database.url()).unwrap(), 1).unwrap();
    let attempts = || async { stored.list_attempts(3, None, 10).await.unwrap() };
    assert!(
        attempts().await.is_empty(),
        "the calls wrote no attempt themselves"
    );

    server.terminate();
    let status = server.wait(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    let written: BTreeMap<String, i64> = attempts()
        .await
        .into_iter()
        .map(|attempt| (attempt.domain, attempt.attempts))
        .collect();
    assert_eq!(
        written,
        BTreeMap::from([
            ("acme.example".to_owned(), 2),
            ("gamma.example".to_owned(), 1)
        ])
    );
}

fn tally(domain: &str, attempts: i64, first_second: u64, last_second: u64) -> AttemptTally {
    let at = |second| UNIX_EPOCH + Duration::from_secs(second);
    AttemptTally {
        account_id: 1,
        domain: DomainName::parse("domain", domain).unwrap(),
        attempts,
        first_attempt_time: at(first_second),
        last_attempt_time: at(last_second),
    }
}

/// A fresh, migrated database and the store over it (the database is dropped with the first).
async fn migrated_store(backend: Backend) -> (TestDatabase, Database) {
    let database = TestDatabase::create(backend);
    let stored = Database::new(DatabaseUrl::parse(database.url()).unwrap(), 1).unwrap();
    stored.migrate().await.unwrap();
    (database, stored)
}

/// Flushes add to the stored counts and keep the earliest first and the latest last attempt,
/// also in a flush of many rows.
async fn flushes_add_up_in_the_database(backend: Backend) {
    let (_database, stored) = migrated_store(backend).await;
    let many: Vec<AttemptTally> = (0..1200)
        .map(|n| tally(&format!("d{n:04}.example"), 1, 1, 1))
        .collect();
    stored.record_attempts(many.clone()).await.unwrap();
    stored
        .record_attempts(vec![tally("acme.example", 2, 100, 200)])
        .await
        .unwrap();
    stored
        .record_attempts(vec![
            tally("acme.example", 3, 50, 150),
            tally("d0007.example", 4, 2, 3),
        ])
        .await
        .unwrap();
    stored
        .record_attempts(vec![tally("acme.example", 1, 120, 300)])
        .await
        .unwrap();
    stored.record_attempts(many).await.unwrap();

    let listed = stored.list_attempts(1, None, 2000).await.unwrap();
    assert_eq!(listed.len(), 1201);
    let acme = listed.iter().find(|a| a.domain == "acme.example").unwrap();
    assert_eq!(acme.attempts, 6);
    assert_eq!(
        acme.first_attempt_time,
        UNIX_EPOCH + Duration::from_secs(50)
    );
    assert_eq!(
        acme.last_attempt_time,
        UNIX_EPOCH + Duration::from_secs(300)
    );
    let d7 = listed.iter().find(|a| a.domain == "d0007.example").unwrap();
    assert_eq!(
        (d7.attempts, d7.first_attempt_time, d7.last_attempt_time),
        (
            6,
            UNIX_EPOCH + Duration::from_secs(1),
            UNIX_EPOCH + Duration::from_secs(3)
        )
    );
    assert!(
        listed
            .iter()
            .filter(|a| a.domain.starts_with('d') && a.domain != "d0007.example")
            .all(|a| a.attempts == 2)
    );
}

/// The list is newest first, then by domain, and pages continue exactly after the last row: no
/// index serves that order (the rows are rewritten in place by every flush), so the database
/// sorts one account's rows.
async fn attempts_are_listed_newest_first_across_pages(backend: Backend) {
    let (_database, stored) = migrated_store(backend).await;
    stored
        .record_attempts(vec![
            tally("b.example", 1, 1, 30),
            tally("a.example", 1, 1, 30),
            tally("old.example", 1, 1, 10),
            tally("new.example", 1, 1, 40),
            tally("c.example", 1, 1, 30),
        ])
        .await
        .unwrap();
    // A later flush moves a row to the top.
    stored
        .record_attempts(vec![tally("old.example", 1, 50, 50)])
        .await
        .unwrap();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = stored.list_attempts(1, after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((
            mailconnect::storage::to_micros(last.last_attempt_time),
            last.domain.clone(),
        ));
        pages.push(page.into_iter().map(|a| a.domain).collect::<Vec<_>>());
    }
    assert_eq!(
        pages,
        [
            vec!["old.example", "new.example"],
            vec!["a.example", "b.example"],
            vec!["c.example"],
        ]
    );
}

backend_tests!(
    attempts_are_listed_newest_first_across_pages,
    flushes_add_up_in_the_database,
    concurrent_resolves_are_counted_exactly,
    sigterm_writes_the_pending_attempts,
);

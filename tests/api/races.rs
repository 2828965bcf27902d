//! Races at ten times the feature tests' counts (with `MAILCONNECT_TEST_LONG=1`; a tenth of that
//! in the normal suite): concurrent creates with one `request_id` make one row and give every
//! caller the same answer, and concurrent writes on one etag have exactly one winner, so no
//! update is lost.

use std::collections::BTreeSet;
use std::sync::Arc;

use mailconnect::domain::principal::Role;
use mailconnect::grpc::proto::allowlist_service_client::AllowlistServiceClient;
use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
use mailconnect::grpc::proto::{
    self, CreateDomainSettingsRequest, CreateInboxRequest, DeleteDomainSettingsRequest,
    DomainSettings, ExchangeScope, ExchangeSettings, GetAllowlistRequest, Inbox,
    ListDomainSettingsRequest, ListInboxesRequest, Protocol, PublishRangesRequest, Tier,
    UpdateDomainSettingsRequest, UpdateInboxRequest, domain_settings::Settings,
};
use prost_types::FieldMask;
use tonic::{Code, Status};

use crate::backend_tests;
use crate::domain_settings::parse_ca;
use crate::fault_servers::FakeEws;
use crate::harness::{Backend, TestApp, assert_error, authed, long_tests, spawn_app_with};
use crate::inbox_world::{ADMIN, client, seed_directory, token};
use crate::mail_servers::TestCa;

/// `long` in the long runs, a tenth of it otherwise.
fn count(long: usize) -> usize {
    if long_tests() { long } else { long / 10 }
}

/// Room for every racing call at once: nothing is shed, every call reaches the database.
fn roomy(settings: &mut mailconnect::config::Settings) {
    settings.server.max_concurrent_calls = 4096;
    settings.probe.probe_max_concurrent = 1024;
    settings.probe.probe_max_concurrent_per_account = 1024;
}

/// Runs `n` calls at once and returns their results, in the order of their indexes.
async fn race<T, F, Fut>(n: usize, call: F) -> Vec<Result<T, Status>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>> + Send + 'static,
{
    let calls: Vec<_> = (0..n).map(|index| tokio::spawn(call(index))).collect();
    let mut results = Vec::with_capacity(n);
    for call in calls {
        results.push(call.await.expect("the call's task"));
    }
    results
}

/// Exactly one winner; every loser told ABORTED, reason ETAG_MISMATCH.
fn one_winner<T: std::fmt::Debug>(results: &[Result<T, Status>]) -> usize {
    one_winner_else(results, |status| {
        assert_error(status, Code::Aborted, "ETAG_MISMATCH");
    })
}

/// Exactly one winner; `loser` checks what each other caller was told.
fn one_winner_else<T: std::fmt::Debug>(
    results: &[Result<T, Status>],
    loser: impl Fn(&Status),
) -> usize {
    let winners: Vec<usize> = (0..results.len()).filter(|i| results[*i].is_ok()).collect();
    let won: Vec<_> = winners
        .iter()
        .map(|index| (index, &results[*index]))
        .collect();
    assert_eq!(winners.len(), 1, "winners: {won:?}");
    results
        .iter()
        .filter_map(|result| result.as_ref().err())
        .for_each(loser);
    winners[0]
}

async fn one_request_id_makes_one_inbox(backend: Backend) {
    let app = spawn_app_with(backend, roomy).await;
    seed_directory(&app, Tier::Professional).await;
    let admin = token(&app, ADMIN);
    let n = count(1_000);
    let results = race(n, |_| {
        let mut client = client(&app);
        let admin = admin.clone();
        async move {
            let request = CreateInboxRequest {
                inbox: Some(Inbox {
                    display_name: "Support".into(),
                    ..Default::default()
                }),
                request_id: "7d3f0c8e-one-inbox".into(),
            };
            Ok(client
                .create_inbox(authed(&admin, request))
                .await?
                .into_inner()
                .inbox)
        }
    })
    .await;
    let answers: BTreeSet<_> = results
        .iter()
        .map(|result| {
            format!(
                "{:?}",
                result.as_ref().expect("every caller gets the inbox")
            )
        })
        .collect();
    assert_eq!(answers.len(), 1, "one answer for {n} callers: {answers:#?}");
    let listed = client(&app)
        .list_inboxes(authed(&admin, ListInboxesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .inboxes;
    assert_eq!(listed.len(), 1, "{listed:?}");
}

/// Exchange settings probed against the in-process EWS look-alike, and the app trusting its CA.
struct ExchangeWorld {
    app: TestApp,
    ews: FakeEws,
    _dir: tempfile::TempDir,
}

impl ExchangeWorld {
    async fn start(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let ews = FakeEws::start(&ca.issue(dir.path(), &["127.0.0.1"])).await;
        let ca_file = dir.path().join("ca.pem");
        ca.write_pem(&ca_file);
        let app = spawn_app_with(backend, |settings| {
            settings.probe.probe_ca_files = vec![parse_ca(&ca_file)];
            roomy(settings);
        })
        .await;
        Self {
            app,
            ews,
            _dir: dir,
        }
    }

    fn settings(&self, domain: &str, scopes: &[ExchangeScope]) -> DomainSettings {
        DomainSettings {
            domain: domain.into(),
            settings: Some(Settings::Exchange(ExchangeSettings {
                exchange_url: format!("https://127.0.0.1:{}/EWS/Exchange.asmx", self.ews.port),
                scopes: scopes.iter().map(|scope| (*scope).into()).collect(),
            })),
            ..Default::default()
        }
    }

    fn client(&self) -> DomainSettingsServiceClient<tonic::transport::Channel> {
        DomainSettingsServiceClient::new(self.app.channel.clone())
    }
}

fn admin_token(app: &TestApp) -> String {
    app.user_token(1, 7, &[Role::SuperAdmin])
}

async fn one_request_id_makes_one_preset(backend: Backend) {
    let world = Arc::new(ExchangeWorld::start(backend).await);
    let admin = admin_token(&world.app);
    let n = count(200);
    let results = race(n, |_| {
        let world = Arc::clone(&world);
        let admin = admin.clone();
        async move {
            let request = CreateDomainSettingsRequest {
                domain_settings: Some(world.settings("race.example", &[])),
                validate_only: false,
                request_id: "0b6d-one-preset".into(),
            };
            let created = world
                .client()
                .create_domain_settings(authed(&admin, request))
                .await?;
            Ok(created.into_inner().domain_settings)
        }
    })
    .await;
    let answers: BTreeSet<_> = results
        .iter()
        .map(|result| {
            format!(
                "{:?}",
                result.as_ref().expect("every caller gets the preset")
            )
        })
        .collect();
    assert_eq!(answers.len(), 1, "one answer for {n} callers: {answers:#?}");
    let listed = world
        .client()
        .list_domain_settings(authed(&admin, ListDomainSettingsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .domain_settings;
    assert_eq!(listed.len(), 1, "{listed:?}");
}

/// Updates and deletes racing on one etag: one wins, the others are told, and the stored
/// preset is the winner's.
async fn preset_writes_on_one_etag_have_one_winner(backend: Backend) {
    let world = Arc::new(ExchangeWorld::start(backend).await);
    let admin = admin_token(&world.app);
    let created = world
        .client()
        .create_domain_settings(authed(
            &admin,
            CreateDomainSettingsRequest {
                domain_settings: Some(world.settings("etag.example", &[])),
                validate_only: false,
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .domain_settings
        .unwrap();
    let n = count(160);
    let results = race(n, |index| {
        let world = Arc::clone(&world);
        let admin = admin.clone();
        let etag = created.etag.clone();
        async move {
            let scope = if index % 2 == 0 {
                ExchangeScope::Email
            } else {
                ExchangeScope::Calendar
            };
            let mut settings = world.settings("etag.example", &[scope]);
            settings.name = "domainSettings/etag.example".into();
            settings.etag = etag;
            let request = UpdateDomainSettingsRequest {
                domain_settings: Some(settings),
                update_mask: Some(FieldMask {
                    paths: vec!["exchange.scopes".into()],
                }),
                validate_only: false,
            };
            let updated = world
                .client()
                .update_domain_settings(authed(&admin, request))
                .await?;
            Ok(updated.into_inner().domain_settings.unwrap())
        }
    })
    .await;
    let winner = results[one_winner(&results)].as_ref().unwrap().clone();
    let stored = world
        .client()
        .get_domain_settings(authed(
            &admin,
            proto::GetDomainSettingsRequest {
                name: "domainSettings/etag.example".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .domain_settings
        .unwrap();
    assert_eq!(stored.etag, winner.etag);
    assert_eq!(
        stored.settings, winner.settings,
        "the winner's update is the one stored"
    );

    // Deletes and updates on the winner's etag: again one wins.
    let results = race(n, |index| {
        let world = Arc::clone(&world);
        let admin = admin.clone();
        let etag = winner.etag.clone();
        async move {
            let name = "domainSettings/etag.example".to_owned();
            if index % 2 == 0 {
                let request = DeleteDomainSettingsRequest { name, etag };
                world
                    .client()
                    .delete_domain_settings(authed(&admin, request))
                    .await?;
            } else {
                let mut settings = world.settings("etag.example", &[ExchangeScope::Email]);
                settings.name = name;
                settings.etag = etag;
                let request = UpdateDomainSettingsRequest {
                    domain_settings: Some(settings),
                    update_mask: Some(FieldMask {
                        paths: vec!["exchange.scopes".into()],
                    }),
                    validate_only: false,
                };
                world
                    .client()
                    .update_domain_settings(authed(&admin, request))
                    .await?;
            }
            Ok(index)
        }
    })
    .await;
    let deleted = results
        .iter()
        .enumerate()
        .any(|(index, result)| result.is_ok() && index % 2 == 0);
    let winner = one_winner_else(&results, |status| {
        // After a delete won, the preset is gone for the others.
        if deleted && status.code() == Code::NotFound {
            assert_error(status, Code::NotFound, "DOMAIN_SETTINGS_NOT_FOUND");
        } else {
            assert_error(status, Code::Aborted, "ETAG_MISMATCH");
        }
    });
    let listed = world
        .client()
        .list_domain_settings(authed(&admin, ListDomainSettingsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .domain_settings;
    assert_eq!(
        listed.len(),
        usize::from(winner % 2 == 1),
        "deleted only if a delete won: {listed:?}"
    );
}

async fn inbox_renames_on_one_etag_have_one_winner(backend: Backend) {
    let app = spawn_app_with(backend, roomy).await;
    seed_directory(&app, Tier::Professional).await;
    let admin = token(&app, ADMIN);
    let inbox = crate::inbox_world::create_inbox(&app, "Support").await;
    let n = count(160);
    let results = race(n, |index| {
        let mut client = client(&app);
        let admin = admin.clone();
        let inbox = inbox.clone();
        async move {
            let request = UpdateInboxRequest {
                inbox: Some(Inbox {
                    display_name: format!("Support {index}"),
                    ..inbox
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["display_name".into()],
                }),
            };
            Ok(client
                .update_inbox(authed(&admin, request))
                .await?
                .into_inner()
                .inbox
                .unwrap())
        }
    })
    .await;
    let winner = results[one_winner(&results)].as_ref().unwrap().clone();
    let stored = client(&app)
        .get_inbox(authed(
            &admin,
            proto::GetInboxRequest {
                name: inbox.name.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .inbox
        .unwrap();
    assert_eq!(stored, winner);
}

async fn publications_on_one_etag_have_one_winner(backend: Backend) {
    let app = spawn_app_with(backend, roomy).await;
    let platform = app.platform_token();
    let allowlist = || AllowlistServiceClient::new(app.channel.clone());
    let publish = |ranges: Vec<String>, etag: String| PublishRangesRequest {
        data_center: "race2".into(),
        protocol: Protocol::Smtp.into(),
        ranges,
        etag,
        ..Default::default()
    };
    allowlist()
        .publish_ranges(authed(
            &platform,
            publish(vec!["8.8.4.0/24".into()], String::new()),
        ))
        .await
        .unwrap();
    let etag = |app: &TestApp| {
        let mut client = AllowlistServiceClient::new(app.channel.clone());
        let platform = platform.clone();
        async move {
            client
                .get_allowlist(authed(
                    &platform,
                    GetAllowlistRequest {
                        data_center: "race2".into(),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let before = etag(&app).await;
    let n = count(160);
    let results = race(n, |index| {
        let mut client = allowlist();
        let platform = platform.clone();
        let request = publish(
            vec![format!("9.9.{}.0/24", index % 250 + 1)],
            before.etag.clone(),
        );
        async move {
            Ok(client
                .publish_ranges(authed(&platform, request))
                .await?
                .into_inner())
        }
    })
    .await;
    let winner = one_winner(&results);
    let after = etag(&app).await;
    assert_eq!(after.version, before.version + 1);
    let ranges: Vec<&str> = after
        .ranges
        .iter()
        .map(|range| range.cidr.as_str())
        .collect();
    assert_eq!(ranges, [format!("9.9.{}.0/24", winner % 250 + 1)]);
}

backend_tests!(
    one_request_id_makes_one_inbox,
    one_request_id_makes_one_preset,
    preset_writes_on_one_etag_have_one_winner,
    inbox_renames_on_one_etag_have_one_winner,
    publications_on_one_etag_have_one_winner,
);

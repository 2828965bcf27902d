use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::sync::Arc;
use std::time::SystemTime;

use crate::domain::domain_settings::SettingsInput;
use crate::domain::domain_settings::{
    Choice, ExchangeInput, ExchangeScope, ImapInput, ServerInput,
};
use crate::domain::principal::{Principal, Role};
use crate::domain::probe::{ProbeContext, ProbeReport};
use crate::domain::probe::{ProbeOutcome, ProbeRefused, ProbeRequest};
use crate::domain::providers::OAuthProvider;
use crate::service::ServiceError;
use crate::service::attempts::AttemptRecorder;
use crate::service::domain_settings::*;
use crate::service::pagination::PageRequest;
use crate::service::probing::Prober;
use crate::storage::{Database, DatabaseUrl};

/// A prober that fails the hosts it is told to and records what it was asked.
#[derive(Default)]
struct ScriptedProber {
    failing_hosts: Vec<String>,
    asked: Mutex<Vec<String>>,
    no_room: AtomicBool,
}

impl Prober for ScriptedProber {
    async fn probe_all(
        &self,
        requests: Vec<ProbeRequest>,
        _context: ProbeContext,
    ) -> Result<Vec<ProbeReport>, ProbeRefused> {
        Ok(requests
            .into_iter()
            .map(|request| self.report(request))
            .collect())
    }

    fn has_room(&self, _probes: usize) -> bool {
        !self.no_room.load(Ordering::Relaxed)
    }
}

impl ScriptedProber {
    fn report(&self, request: ProbeRequest) -> ProbeReport {
        let target = request.target.to_string();
        self.asked.lock().unwrap().push(target.clone());
        let failed = self
            .failing_hosts
            .iter()
            .any(|host| target.contains(host.as_str()));
        ProbeReport {
            target,
            protocol: request.target.protocol(),
            outcome: if failed {
                ProbeOutcome::Failed
            } else {
                ProbeOutcome::Ok
            },
            stages: vec![],
            tls: None,
            capabilities: vec![],
            auth_mechanisms: vec![],
            field: if failed {
                format!("{}.host", request.field_prefix)
            } else {
                String::new()
            },
            hint: if failed {
                "host not found".into()
            } else {
                String::new()
            },
            total_latency: Duration::ZERO,
            connected_address: String::new(),
            probe_time: SystemTime::now(),
        }
    }
}

fn admin() -> Principal {
    Principal {
        subject: "user:1:7".into(),
        account_id: Some(1),
        user_id: Some(7),
        roles: vec![Role::SuperAdmin],
    }
}

fn imap(domain: &str, host: &str) -> SettingsRequest {
    let server = |port| ServerInput {
        host: host.into(),
        port,
        security: Choice::Unspecified,
    };
    SettingsRequest {
        domain: domain.into(),
        settings: SettingsInput::Imap(ImapInput {
            imap_server: Some(server(993)),
            smtp_server: Some(server(587)),
            allow_insecure_certificate: false,
        }),
    }
}

fn exchange(domain: &str) -> SettingsRequest {
    SettingsRequest {
        domain: domain.into(),
        settings: SettingsInput::Exchange(ExchangeInput {
            exchange_url: "https://mail.example.com/EWS/Exchange.asmx".into(),
            scopes: vec![],
        }),
    }
}

async fn service(failing: &[&str]) -> DomainSettingsService<Database, ScriptedProber> {
    let database = Database::new(DatabaseUrl::SqliteMemory, 1).unwrap();
    database.migrate().await.unwrap();
    DomainSettingsService::new(
        database.clone(),
        Arc::new(AttemptRecorder::new(database)),
        ScriptedProber {
            failing_hosts: failing.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        },
        Arc::new(crate::service::clock::SystemClock),
    )
}

fn ctx() -> ProbeContext {
    ProbeContext::default()
}

#[tokio::test]
async fn a_domain_has_imap_or_exchange_never_both() {
    let service = service(&[]).await;
    let created = service
        .create(
            &admin(),
            imap("Example.com", "imap.example.com"),
            false,
            "",
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(created.value.domain.as_str(), "example.com");
    assert_eq!(created.reports.len(), 2, "IMAP and SMTP probed");
    let err = service
        .create(&admin(), exchange("example.com"), false, "", &ctx())
        .await
        .err()
        .unwrap();
    let ServiceError::AlreadyExists {
        reason, metadata, ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(reason, "DOMAIN_ALREADY_CONFIGURED");
    assert_eq!(metadata["existing_kind"], "imap");
}

/// Without room for its probes a create is refused before it reads whether the domain exists
/// (a herd retrying while the probes are busy would otherwise each read the database); a
/// replay of a create that already happened still gets its answer.
#[tokio::test]
async fn a_create_without_probe_room_is_refused_before_it_reads_the_database() {
    let service = service(&[]).await;
    let request = || imap("example.com", "imap.example.com");
    service
        .create(&admin(), request(), false, "first", &ctx())
        .await
        .unwrap();
    service.prober().no_room.store(true, Ordering::Relaxed);

    let replayed = service
        .create(&admin(), request(), false, "first", &ctx())
        .await
        .unwrap();
    assert_eq!(replayed.value.domain.as_str(), "example.com");
    for domain in ["example.com", "example.org"] {
        let err = service
            .create(
                &admin(),
                imap(domain, "imap.example.com"),
                false,
                "",
                &ctx(),
            )
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                ServiceError::ResourceExhausted {
                    reason: "PROBE_CAPACITY",
                    retry_after: None,
                    ..
                }
            ),
            "{domain}: {err:?}"
        );
    }
    assert_eq!(
        service.prober().asked.lock().unwrap().len(),
        2,
        "only the first create probed"
    );

    service.prober().no_room.store(false, Ordering::Relaxed);
    let err = service
        .create(&admin(), request(), false, "", &ctx())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ServiceError::AlreadyExists { .. }), "{err:?}");
}

#[tokio::test]
async fn a_failed_probe_stores_nothing_and_validate_only_stores_nothing() {
    let service = service(&["bad.example.net"]).await;
    let err = service
        .create(
            &admin(),
            imap("example.com", "bad.example.net"),
            false,
            "",
            &ctx(),
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ServiceError::ProbeFailed { ref reports } if reports.len() == 2));
    let probed = service
        .create(
            &admin(),
            imap("example.org", "imap.example.org"),
            true,
            "",
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(probed.reports.len(), 2);
    for domain in ["domainSettings/example.com", "domainSettings/example.org"] {
        let err = service.get(&admin(), domain).await.err().unwrap();
        assert!(matches!(err, ServiceError::NotFound { .. }), "{domain}");
    }
}

#[tokio::test]
async fn request_ids_replay_the_first_result_without_probing_again() {
    let service = service(&[]).await;
    let first = service
        .create(
            &admin(),
            imap("example.com", "imap.example.com"),
            false,
            "req-1",
            &ctx(),
        )
        .await
        .unwrap();
    let asked = service.prober().asked.lock().unwrap().len();
    let again = service
        .create(
            &admin(),
            imap("example.com", "imap.example.com"),
            false,
            "req-1",
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(again.value, first.value);
    assert_eq!(service.prober().asked.lock().unwrap().len(), asked);
    let err = service
        .create(
            &admin(),
            imap("example.org", "imap.example.org"),
            false,
            "req-1",
            &ctx(),
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ServiceError::InvalidArgument(ref v) if v[0].field == "request_id"));
}

#[tokio::test]
async fn updates_check_etags_kinds_and_probe_only_what_changed() {
    let service = service(&[]).await;
    let created = service
        .create(&admin(), exchange("example.com"), false, "", &ctx())
        .await
        .unwrap();
    let etag = created.value.etag();
    let scopes_only = SettingsInput::Exchange(ExchangeInput {
        exchange_url: String::new(),
        scopes: vec![Choice::Value(ExchangeScope::Calendar)],
    });
    let asked = service.prober().asked.lock().unwrap().len();
    let updated = service
        .update(
            &admin(),
            UpdateRequest {
                name: "domainSettings/example.com",
                etag: &etag,
                input: &scopes_only,
                mask: &["exchange.scopes".to_owned()],
                validate_only: false,
            },
            &ctx(),
        )
        .await
        .unwrap();
    assert!(updated.reports.is_empty());
    assert_eq!(
        service.prober().asked.lock().unwrap().len(),
        asked,
        "no probe for scopes"
    );
    assert_ne!(updated.value.etag(), etag);
    // The old etag is stale now.
    let err = service
        .update(
            &admin(),
            UpdateRequest {
                name: "domainSettings/example.com",
                etag: &etag,
                input: &scopes_only,
                mask: &["exchange.scopes".to_owned()],
                validate_only: false,
            },
            &ctx(),
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(
        err,
        ServiceError::Aborted {
            reason: "ETAG_MISMATCH",
            ..
        }
    ));
    let switch = imap("example.com", "imap.example.com").settings;
    let err = service
        .update(
            &admin(),
            UpdateRequest {
                name: "domainSettings/example.com",
                etag: "",
                input: &switch,
                mask: &[],
                validate_only: false,
            },
            &ctx(),
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(
        err,
        ServiceError::FailedPrecondition {
            reason: "SETTINGS_KIND_MISMATCH",
            ..
        }
    ));
    let err = service
        .delete(&admin(), "domainSettings/example.com", &etag)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ServiceError::Aborted { .. }));
    service
        .delete(
            &admin(),
            "domainSettings/example.com",
            &updated.value.etag(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn resolving_records_attempts_until_the_domain_is_configured() {
    let service = service(&[]).await;
    let user = Principal {
        roles: vec![],
        ..admin()
    };
    for _ in 0..3 {
        let (domain, resolution) = service.resolve(&user, "ada@Example.ORG").await.unwrap();
        assert_eq!(domain.as_str(), "example.org");
        assert!(matches!(resolution, Resolution::None));
    }
    let (_, gmail) = service.resolve(&user, "bob@gmail.com").await.unwrap();
    assert!(matches!(
        gmail,
        Resolution::BuiltinProvider {
            name: "Gmail",
            access: BuiltinAccess::OAuth(OAuthProvider::Google)
        }
    ));
    let first_page = PageRequest {
        page_size: 0,
        page_token: "",
    };
    let attempts = service
        .list_attempted(&admin(), first_page)
        .await
        .unwrap()
        .items;
    let org = attempts.iter().find(|a| a.domain == "example.org").unwrap();
    assert_eq!(org.attempts, 3);
    assert!(
        attempts.iter().all(|a| a.domain != "gmail.com"),
        "a built-in provider is no task for the admins: {attempts:?}"
    );
    assert!(
        service
            .list_attempted(
                &user,
                PageRequest {
                    page_size: 0,
                    page_token: ""
                }
            )
            .await
            .is_err()
    );

    // Still pending when the settings are created.
    service.resolve(&user, "ada@example.org").await.unwrap();
    service
        .create(
            &admin(),
            imap("example.org", "imap.example.org"),
            false,
            "",
            &ctx(),
        )
        .await
        .unwrap();
    let first_page = PageRequest {
        page_size: 0,
        page_token: "",
    };
    let attempts = service
        .list_attempted(&admin(), first_page)
        .await
        .unwrap()
        .items;
    assert!(attempts.iter().all(|a| a.domain != "example.org"));
    let (_, resolution) = service.resolve(&user, "ada@example.org").await.unwrap();
    assert!(matches!(resolution, Resolution::AdminPreset(_)));
}

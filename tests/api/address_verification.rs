//! Verifying a hosted channel's custom from address over gRPC, on both backends: the code mailed
//! through the relay (aiosmtpd on loopback), its expiry on a clock the tests move, the attempt
//! limit, the per-address rate limit, sending domains verified at once for paid tiers only, and
//! a LIVE channel keeping its verified address until a new one is verified.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailconnect::domain::secret::Secret;
use mailconnect::grpc::proto::{
    Account, Connection, FromAddressKind, StartAddressVerificationRequest,
    StartAddressVerificationResponse, Tier, UpsertAccountRequest, VerificationState,
    VerifyAddressRequest,
};
use mailconnect::service::clock::{Clock, ManualClock};
use tonic::{Code, Status};

use crate::backend_tests;
use crate::harness::{
    Backend, TestApp, assert_error, authed, eventually, violated_fields_with_reason,
};
use crate::hosted_channels::{
    channel, complete, connect_hosted, custom_from, hosted_world_on, update,
};
use crate::inbox_world::{ACCOUNT, ADMIN, client, token};
use crate::mail_servers::{Aiosmtpd, free_port};

pub fn manual_clock() -> Arc<ManualClock> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(now),
    ))
}

/// A hosted world whose relay is an aiosmtpd sink, on a manual clock.
async fn world(backend: Backend, tier: Tier) -> (TestApp, Aiosmtpd, Arc<ManualClock>) {
    let sink = Aiosmtpd::sink(free_port());
    let clock = manual_clock();
    let relay = format!("smtp://127.0.0.1:{}", sink.port);
    let app = hosted_world_on(backend, tier, clock.clone(), |settings| {
        settings.inbox.smtp_relay_url = Some(Secret::new(relay));
        settings.inbox.notification_from = "mailconnect <verify@mailconnect.test>".into();
    })
    .await;
    (app, sink, clock)
}

/// A hosted channel with `address` as its custom from address, not verified yet.
pub async fn with_custom(app: &TestApp, address: &str) -> Connection {
    let hosted = connect_hosted(app, "support@acme.example", None)
        .await
        .unwrap();
    update(
        app,
        ADMIN,
        &hosted.name,
        custom_from(address),
        &["from_address"],
    )
    .await
    .unwrap()
}

pub async fn start(app: &TestApp, name: &str) -> Result<StartAddressVerificationResponse, Status> {
    client(app)
        .start_address_verification(authed(
            &token(app, ADMIN),
            StartAddressVerificationRequest { name: name.into() },
        ))
        .await
        .map(|r| r.into_inner())
}

pub async fn verify(app: &TestApp, name: &str, code: &str) -> Result<Connection, Status> {
    client(app)
        .verify_address(authed(
            &token(app, ADMIN),
            VerifyAddressRequest {
                name: name.into(),
                code: code.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().connection.unwrap())
}

/// The code of the `n`th message the sink received (1-based), and that message.
pub async fn code_in(sink: &Aiosmtpd, n: usize) -> (String, String) {
    let message = eventually("the verification email reaches the relay", || async {
        sink.messages().get(n - 1).cloned()
    })
    .await;
    let code = message
        .split(|c: char| !c.is_ascii_digit())
        .find(|word| word.len() == 6)
        .unwrap_or_else(|| panic!("no code in {message}"))
        .to_owned();
    (code, message)
}

fn state(connection: &Connection) -> VerificationState {
    channel(connection)
        .from_address
        .as_ref()
        .unwrap()
        .verification_state()
}

fn effective(connection: &Connection) -> String {
    channel(connection)
        .from_address
        .clone()
        .unwrap()
        .effective_address
}

/// The code arrives at the relay, a wrong code is refused, the right one verifies.
async fn the_code_sent_through_the_relay_verifies_the_address(backend: Backend) {
    let (app, sink, clock) = world(backend, Tier::Free).await;
    let hosted = with_custom(&app, "help@acme.example").await;
    assert_eq!(state(&hosted), VerificationState::NotStarted);
    let status = verify(&app, &hosted.name, "123456").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "VERIFICATION_NOT_STARTED",
    );

    let started = start(&app, &hosted.name).await.unwrap();
    assert_eq!(started.sent_to, "help@acme.example");
    assert_eq!(
        state(started.connection.as_ref().unwrap()),
        VerificationState::Pending
    );
    let expire = SystemTime::try_from(started.expire_time.unwrap()).unwrap();
    assert_eq!(expire, Clock::now(&*clock) + Duration::from_secs(15 * 60));
    let (code, message) = code_in(&sink, 1).await;
    assert!(
        message.starts_with("X-Envelope-To: help@acme.example"),
        "{message}"
    );
    assert!(message.contains("Message-ID: <verification-"), "{message}");
    assert!(
        message.contains("From: mailconnect <verify@mailconnect.test>")
            || message.contains("From: \"mailconnect\" <verify@mailconnect.test>"),
        "{message}"
    );

    let wrong = if code == "000000" { "000001" } else { "000000" };
    let status = verify(&app, &hosted.name, wrong).await.unwrap_err();
    assert_eq!(
        violated_fields_with_reason(&status, "VERIFICATION_CODE_INVALID"),
        ["code"]
    );
    let status = verify(&app, &hosted.name, "12ab").await.unwrap_err();
    assert_eq!(
        violated_fields_with_reason(&status, "VERIFICATION_CODE_INVALID"),
        ["code"]
    );
    let verified = verify(&app, &hosted.name, &format!(" {code} \n"))
        .await
        .unwrap();
    assert_eq!(state(&verified), VerificationState::Verified);
    assert_eq!(effective(&verified), "help@acme.example");
    let again = verify(&app, &hosted.name, &code).await.unwrap();
    assert_eq!(again.etag, verified.etag, "idempotent once verified");
    let live = complete(&app, &hosted.name).await.unwrap();
    assert_eq!(effective(&live), "help@acme.example");
}

/// A code expires, and five wrong guesses use it up, even for the right code after them.
async fn codes_expire_and_allow_few_attempts(backend: Backend) {
    let (app, sink, clock) = world(backend, Tier::Free).await;
    let hosted = with_custom(&app, "help@acme.example").await;
    start(&app, &hosted.name).await.unwrap();
    let (code, _) = code_in(&sink, 1).await;
    clock.advance(Duration::from_secs(15 * 60));
    let status = verify(&app, &hosted.name, &code).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "VERIFICATION_EXPIRED");

    start(&app, &hosted.name).await.unwrap();
    let (code, _) = code_in(&sink, 2).await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    for _ in 0..5 {
        let status = verify(&app, &hosted.name, wrong).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "VERIFICATION_CODE_INVALID");
    }
    let status = verify(&app, &hosted.name, &code).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "VERIFICATION_EXPIRED");

    // A new code replaces the old one; a code for a replaced address verifies nothing.
    start(&app, &hosted.name).await.unwrap();
    let (code, _) = code_in(&sink, 3).await;
    let changed = update(
        &app,
        ADMIN,
        &hosted.name,
        custom_from("other@acme.example"),
        &["from_address"],
    )
    .await
    .unwrap();
    assert_eq!(state(&changed), VerificationState::NotStarted);
    let status = verify(&app, &hosted.name, &code).await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "VERIFICATION_NOT_STARTED",
    );

    let default = update(
        &app,
        ADMIN,
        &hosted.name,
        Default::default(),
        &["from_address"],
    )
    .await
    .unwrap();
    assert_eq!(
        channel(&default).from_address.as_ref().unwrap().kind(),
        FromAddressKind::Default
    );
    let status = start(&app, &hosted.name).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "NO_CUSTOM_FROM_ADDRESS");
}

/// Five codes an hour to one address, whichever channel asks; then RESOURCE_EXHAUSTED with a
/// retry delay, until the hour has passed.
async fn codes_are_rate_limited_per_address(backend: Backend) {
    let (app, sink, clock) = world(backend, Tier::Free).await;
    let hosted = with_custom(&app, "help@acme.example").await;
    for _ in 0..5 {
        start(&app, &hosted.name).await.unwrap();
        clock.advance(Duration::from_secs(60));
    }
    let status = start(&app, &hosted.name).await.unwrap_err();
    assert_error(
        &status,
        Code::ResourceExhausted,
        "VERIFICATION_RATE_LIMITED",
    );
    code_in(&sink, 5).await;
    assert_eq!(sink.messages().len(), 5, "the refused code was not sent");
    clock.advance(Duration::from_secs(56 * 60));
    start(&app, &hosted.name).await.unwrap();
    code_in(&sink, 6).await;
}

/// An address on one of the account's sending domains is verified at once on paid tiers; the
/// free tier verifies it by code.
async fn sending_domains_verify_at_once_for_paid_tiers_only(backend: Backend) {
    for (tier, at_once) in [(Tier::Starter, true), (Tier::Free, false)] {
        let (app, sink, _clock) = world(backend, tier).await;
        app.directory()
            .upsert_account(authed(
                &app.platform_token(),
                UpsertAccountRequest {
                    account: Some(Account {
                        id: ACCOUNT,
                        tier: tier.into(),
                        subdomain: "acme".into(),
                        sending_domains: vec!["acme.example".into()],
                        ..Default::default()
                    }),
                },
            ))
            .await
            .unwrap();
        let hosted = with_custom(&app, "help@acme.example").await;
        let started = start(&app, &hosted.name).await.unwrap();
        let connection = started.connection.unwrap();
        if at_once {
            assert_eq!(state(&connection), VerificationState::Verified, "{tier:?}");
            assert!(started.expire_time.is_none());
            assert!(sink.messages().is_empty(), "no email for a sending domain");
        } else {
            assert_eq!(state(&connection), VerificationState::Pending, "{tier:?}");
            code_in(&sink, 1).await;
        }
    }
}

/// On a LIVE channel a new custom address waits for its verification; the verified one stays.
async fn a_live_channel_keeps_its_verified_address_until_the_new_one_is_verified(backend: Backend) {
    let (app, sink, _clock) = world(backend, Tier::Free).await;
    let hosted = with_custom(&app, "help@acme.example").await;
    start(&app, &hosted.name).await.unwrap();
    let (code, _) = code_in(&sink, 1).await;
    verify(&app, &hosted.name, &code).await.unwrap();
    complete(&app, &hosted.name).await.unwrap();
    let changed = update(
        &app,
        ADMIN,
        &hosted.name,
        custom_from("new@acme.example"),
        &["from_address"],
    )
    .await
    .unwrap();
    assert_eq!(state(&changed), VerificationState::NotStarted);
    assert_eq!(effective(&changed), "help@acme.example");
    start(&app, &hosted.name).await.unwrap();
    let (code, message) = code_in(&sink, 2).await;
    assert!(
        message.starts_with("X-Envelope-To: new@acme.example"),
        "{message}"
    );
    let verified = verify(&app, &hosted.name, &code).await.unwrap();
    assert_eq!(effective(&verified), "new@acme.example");
    // Another change waits for its own code; the address verified last stays in use.
    let back = update(
        &app,
        ADMIN,
        &hosted.name,
        custom_from("help@acme.example"),
        &["from_address"],
    )
    .await
    .unwrap();
    assert_eq!(effective(&back), "new@acme.example");
}

backend_tests!(
    the_code_sent_through_the_relay_verifies_the_address,
    codes_expire_and_allow_few_attempts,
    codes_are_rate_limited_per_address,
    sending_domains_verify_at_once_for_paid_tiers_only,
    a_live_channel_keeps_its_verified_address_until_the_new_one_is_verified,
);

//! The fault proxy before the SMTP relay (an aiosmtpd sink): while the relay is reset, cut off or
//! stalled, notifications wait; once it heals each is mailed, and only once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailconnect::grpc::proto::{DeleteConnectionRequest, Tier};
use mailconnect::service::clock::ManualClock;

use crate::backend_tests;
use crate::credentials::count_rows;
use crate::fault_proxy::{Fault, FaultProxy};
use crate::harness::{Backend, authed, eventually, spawn_app_on};
use crate::inbox_world::{ADMIN, client, connect_team_gmail, create_inbox, seed_directory, token};
use crate::mail_servers::{Aiosmtpd, free_port};

/// Team connections deleted while each fault lasts: each deletion mails the Account Access user.
const PER_FAULT: usize = 4;

async fn notifications_survive_relay_faults_and_arrive_once(backend: Backend) {
    let sink = Aiosmtpd::sink(free_port());
    let proxy = FaultProxy::start(([127, 0, 0, 1], sink.port).into()).await;
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let relay = format!("smtp://127.0.0.1:{}", proxy.addr.port());
    let app = spawn_app_on(
        backend,
        |settings| {
            settings.inbox.smtp_relay_url = Some(mailconnect::domain::secret::Secret::new(relay));
            settings.inbox.notification_from = "mailconnect <notify@mailconnect.test>".into();
        },
        clock.clone(),
    )
    .await;
    seed_directory(&app, Tier::Professional).await;
    let inbox = create_inbox(&app, "Support").await;
    let faults = [Fault::Reset, Fault::Cut, Fault::Stall];
    let mut addresses = Vec::new();
    for index in 0..faults.len() * PER_FAULT {
        let address = format!("team{index}@acme.example");
        let connection = connect_team_gmail(&app, &address, &inbox.name)
            .await
            .unwrap();
        addresses.push((address, connection.name));
    }
    let mut deleted = 0;
    for (round, fault) in faults.into_iter().enumerate() {
        proxy.set(fault);
        let accepted = proxy.accepted();
        for (_, name) in &addresses[round * PER_FAULT..(round + 1) * PER_FAULT] {
            client(&app)
                .delete_connection(authed(
                    &token(&app, ADMIN),
                    DeleteConnectionRequest {
                        name: name.clone(),
                        etag: String::new(),
                    },
                ))
                .await
                .unwrap();
            deleted += 1;
        }
        // Deletions stamp their notifications with the system's time: the manual clock catches up.
        clock.advance(Duration::from_secs(60));
        // The dispatcher met the fault: every send of this round failed and waits for its
        // backoff, or the round hangs in a stalled conversation.
        eventually(&format!("the dispatcher met {fault:?}"), || async {
            let failed = count_rows(
                &app,
                "SELECT COUNT(*) AS n FROM notifications WHERE sent_time IS NULL AND last_error <> ''",
            );
            let met = match fault {
                Fault::Stall => proxy.accepted() > accepted,
                _ => failed == PER_FAULT as i64,
            };
            met.then_some(())
        })
        .await;
        proxy.set(Fault::Pass);
        // Past every backoff, so the failed sends are due again. Not while a stalled send is in
        // flight: moving past its lease would let the next round claim it a second time.
        if fault != Fault::Stall {
            clock.advance(Duration::from_secs(3600));
        }
        eventually(
            &format!("every notification is sent after {fault:?}"),
            || async {
                let sent = count_rows(
                    &app,
                    "SELECT COUNT(*) AS n FROM notifications WHERE sent_time IS NOT NULL",
                );
                (sent == deleted).then_some(())
            },
        )
        .await;
    }
    let messages = sink.messages();
    for (address, _) in &addresses {
        let mailed = messages
            .iter()
            .filter(|message| message.contains(address.as_str()))
            .count();
        assert_eq!(mailed, 1, "{address} was mailed {mailed} times");
    }
    assert_eq!(messages.len(), addresses.len());
    println!(
        "relay reset, cut and stalled: {} notifications, each mailed once, {} relay connections",
        messages.len(),
        proxy.accepted()
    );
}

backend_tests!(notifications_survive_relay_faults_and_arrive_once);

//! RouteInboundEmail over gRPC, on both backends: routing by forwarding address, a setup
//! channel keeping its forwarding test, attribution, assignment and tickets of real-looking
//! messages, clear statuses for bad ones and at the size limit, and round robin shared by two
//! replicas of one database.

use std::collections::BTreeMap;

use mailconnect::grpc::proto::inbox_connection_service_client::InboxConnectionServiceClient;
use mailconnect::grpc::proto::{
    AttributionRule, ChannelSettings, ChannelState, Connection, DeactivateConnectionRequest,
    DeleteUserRequest, InboundMessageKind, RouteInboundEmailRequest, RouteInboundEmailResponse,
    Routing, RoutingMode, TicketRule, Tier,
};
use prost::Message as _;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::backend_tests;
use crate::harness::{Backend, TestApp, assert_error, authed, violated_fields};
use crate::hosted_channels::{TEAM, channel, complete, connect_hosted, hosted_world, update};
use crate::inbox_world::{ACCESS, ACCOUNT, ADA, ADMIN, BOB, client, get_connection, token};

async fn route_on(
    client: &mut InboxConnectionServiceClient<Channel>,
    app: &TestApp,
    recipients: &[&str],
    raw: &[u8],
) -> Result<RouteInboundEmailResponse, Status> {
    client
        .route_inbound_email(authed(
            &app.platform_token(),
            RouteInboundEmailRequest {
                envelope_recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
                raw_message: raw.to_vec(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn route(app: &TestApp, to: &str, raw: &str) -> Result<RouteInboundEmailResponse, Status> {
    route_on(&mut client(app), app, &[to], raw.as_bytes()).await
}

/// A LIVE hosted channel with `routing` and tickets to pipeline 0, stage 1.
async fn live_channel(app: &TestApp, routing: Routing) -> (Connection, String) {
    let hosted = connect_hosted(app, "support@acme.example", None)
        .await
        .unwrap();
    update(
        app,
        ADMIN,
        &hosted.name,
        ChannelSettings {
            routing: Some(routing),
            tickets: Some(TicketRule {
                create_tickets: true,
                pipeline_id: "0".into(),
                stage_id: "1".into(),
                properties: BTreeMap::from([("hs_ticket_priority".into(), "HIGH".into())])
                    .into_iter()
                    .collect(),
            }),
            ..Default::default()
        },
        &["routing", "tickets"],
    )
    .await
    .unwrap();
    let live = complete(app, &hosted.name).await.unwrap();
    let address = channel(&live).forwarding_address.clone();
    (live, address)
}

fn customer(message_id: &str) -> String {
    format!(
        "From: Ana Cliente <ana@customer.example>\r\nTo: support@acme.example\r\nSubject: Help\r\nMessage-ID: <{message_id}>\r\n\r\nMy order is late.\r\n"
    )
}

/// Gmail's confirmation reaching a channel in setup is kept for the admin, and the call says
/// the channel is not live.
async fn a_setup_channel_keeps_the_forwarding_confirmation(backend: Backend) {
    let app = hosted_world(backend, Tier::Professional).await;
    let hosted = connect_hosted(&app, "support@acme.example", None)
        .await
        .unwrap();
    let address = channel(&hosted).forwarding_address.clone();
    assert!(channel(&hosted).last_forwarding_test.is_none());
    let confirmation = "From: Gmail Team <forwarding-noreply@google.com>\r\nSubject: (#123456789) Gmail Forwarding Confirmation - Receive Mail from support@acme.example\r\n\r\nConfirmation code: 123456789\r\nhttps://mail-settings.google.com/mail/vf-abc\r\n";
    let status = route(&app, &address, confirmation).await.unwrap_err();
    let metadata = assert_error(&status, Code::FailedPrecondition, "CHANNEL_NOT_LIVE");
    assert_eq!(metadata["connection"], hosted.name);
    let stored = get_connection(&app, &hosted.name).await;
    let settings = channel(&stored);
    let test = settings.last_forwarding_test.clone().unwrap();
    let sender = test.sender.unwrap();
    assert_eq!(sender.email_address, "forwarding-noreply@google.com");
    assert_eq!(sender.display_name, "Gmail Team");
    assert!(
        test.subject
            .starts_with("(#123456789) Gmail Forwarding Confirmation")
    );
    assert_eq!(test.confirmation, "123456789");
    assert!(test.receive_time.is_some());
    assert!(settings.last_inbound_time.is_some());
    assert_eq!(
        stored.etag, hosted.etag,
        "an arrival is no change of the settings"
    );
    assert_eq!(settings.state(), ChannelState::SetupInProgress);
}

/// Only forwarding addresses route, case-insensitively; a channel that is not active refuses.
async fn mail_routes_by_forwarding_address_only(backend: Backend) {
    let app = hosted_world(backend, Tier::Professional).await;
    let (live, address) = live_channel(
        &app,
        Routing {
            mode: RoutingMode::Unassigned.into(),
            ..Default::default()
        },
    )
    .await;
    for to in ["nobody@acme.hosted.example", "support@acme.example"] {
        let status = route(&app, to, &customer("m0@customer.example"))
            .await
            .unwrap_err();
        assert_error(&status, Code::NotFound, "NO_ROUTE");
    }
    let routed = route_on(
        &mut client(&app),
        &app,
        &["someone@else.example", &address.to_uppercase()],
        customer("m1@customer.example").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(routed.connection, live.name);
    assert_eq!(routed.inbox, live.inbox);
    assert_eq!(routed.account_id, ACCOUNT);
    assert_eq!(routed.message_id, "m1@customer.example");
    let status = client(&app)
        .route_inbound_email(authed(
            &token(&app, ADMIN),
            RouteInboundEmailRequest {
                envelope_recipients: vec![address.clone()],
                raw_message: customer("m2@customer.example").into_bytes(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "PLATFORM only");
    let status = route_on(&mut client(&app), &app, &[], b"x")
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["envelope_recipients"]);
    let status = route_on(&mut client(&app), &app, &["not an address"], b"")
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["envelope_recipients[0]", "raw_message"]
    );
    client(&app)
        .deactivate_connection(authed(
            &token(&app, ADMIN),
            DeactivateConnectionRequest {
                name: live.name.clone(),
                etag: String::new(),
            },
        ))
        .await
        .unwrap();
    let status = route(&app, &address, &customer("m3@customer.example"))
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "CONNECTION_NOT_ACTIVE");
}

/// Real-looking messages: the original sender and rule, the assignment, and a ticket only for a
/// new conversation a person wrote.
async fn routed_mail_is_attributed_assigned_and_ticketed(backend: Backend) {
    let app = hosted_world(backend, Tier::Professional).await;
    let (_, address) = live_channel(
        &app,
        Routing {
            mode: RoutingMode::SpecificUsersAndTeams.into(),
            user_ids: vec![ADA, BOB],
            team_ids: vec![TEAM],
        },
    )
    .await;
    app.directory()
        .delete_user(authed(
            &app.platform_token(),
            DeleteUserRequest {
                account_id: ACCOUNT,
                user_id: BOB,
            },
        ))
        .await
        .unwrap();
    let new = route(&app, &address, &customer("m1@customer.example"))
        .await
        .unwrap();
    let sender = new.original_sender.clone().unwrap();
    assert_eq!(
        (sender.email_address.as_str(), sender.display_name.as_str()),
        ("ana@customer.example", "Ana Cliente")
    );
    assert_eq!(new.attribution(), AttributionRule::FromHeader);
    assert_eq!(new.kind(), InboundMessageKind::Conversation);
    assert!(new.forwarded_by.is_none());
    let assignment = new.assignment.clone().unwrap();
    assert_eq!(assignment.mode(), RoutingMode::SpecificUsersAndTeams);
    assert_eq!(assignment.user_ids, [ADA], "the deleted user is skipped");
    assert_eq!(assignment.team_ids, [TEAM]);
    assert!(new.create_ticket);
    assert_eq!(
        (
            new.ticket_pipeline_id.as_str(),
            new.ticket_stage_id.as_str()
        ),
        ("0", "1")
    );
    assert_eq!(new.ticket_properties["hs_ticket_priority"], "HIGH");

    let group = "From: 'Ana Cliente' via Support <support@acme.example>\r\nX-Original-From: Ana Cliente <ana@customer.example>\r\nPrecedence: list\r\nMessage-ID: <g1@customer.example>\r\n\r\nHelp\r\n";
    let routed = route(&app, &address, group).await.unwrap();
    assert_eq!(routed.attribution(), AttributionRule::ListRewrite);
    assert_eq!(
        routed.original_sender.clone().unwrap().email_address,
        "ana@customer.example"
    );
    assert_eq!(
        routed.forwarded_by.clone().unwrap().email_address,
        "support@acme.example"
    );
    assert_eq!(routed.kind(), InboundMessageKind::Conversation);

    let forwarded = "From: Ada <ada@acme.example>\r\nSubject: Fwd: Help\r\n\r\n---------- Forwarded message ---------\r\nFrom: Ana Cliente <ana@customer.example>\r\n\r\nHelp\r\n";
    let routed = route(&app, &address, forwarded).await.unwrap();
    assert_eq!(routed.attribution(), AttributionRule::InlineForward);
    assert_eq!(
        routed.original_sender.clone().unwrap().email_address,
        "ana@customer.example"
    );
    assert_eq!(
        routed.forwarded_by.clone().unwrap().email_address,
        "ada@acme.example"
    );

    let reply = "From: ana@customer.example\r\nIn-Reply-To: <t1@acme.example>\r\n\r\nthanks\r\n";
    let routed = route(&app, &address, reply).await.unwrap();
    assert!(routed.reply);
    assert!(!routed.create_ticket, "a reply continues a conversation");
    assert!(routed.ticket_pipeline_id.is_empty());

    for (raw, kind) in [
        (
            "From: ana@customer.example\r\nAuto-Submitted: auto-replied\r\n\r\naway\r\n",
            InboundMessageKind::Automatic,
        ),
        (
            "From: MAILER-DAEMON@mx.example\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\nStatus: 5.1.1\r\n--r--\r\n",
            InboundMessageKind::DeliveryReport,
        ),
        (
            "From: mailconnect <noreply@mailconnect.invalid>\r\nMessage-ID: <notification-42@mailconnect.invalid>\r\n\r\nsupport@acme.example was disconnected\r\n",
            InboundMessageKind::Loop,
        ),
    ] {
        let routed = route(&app, &address, raw).await.unwrap();
        assert_eq!(routed.kind(), kind);
        assert!(!routed.create_ticket, "{kind:?}");
        assert_eq!(
            routed.assignment.unwrap().mode(),
            RoutingMode::Unassigned,
            "{kind:?}"
        );
    }
}

/// Bad messages get INVALID_ARGUMENT naming `raw_message`; a message exactly at the server's
/// receive limit routes, one byte more is OUT_OF_RANGE.
async fn bad_messages_and_the_size_limit_get_clear_statuses(backend: Backend) {
    const LIMIT: usize = 256 * 1024;
    let app = crate::hosted_channels::hosted_world_on(
        backend,
        Tier::Professional,
        std::sync::Arc::new(mailconnect::service::clock::SystemClock),
        |settings| settings.server.max_recv_message_size = LIMIT,
    )
    .await;
    let (_, address) = live_channel(
        &app,
        Routing {
            mode: RoutingMode::Unassigned.into(),
            ..Default::default()
        },
    )
    .await;
    for raw in [
        "Subject: no sender\r\n\r\nbody\r\n",
        "From: not an address\r\n\r\nbody\r\n",
    ] {
        let status = route(&app, &address, raw).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["raw_message"], "{raw}");
    }
    let mut latin1 =
        b"From: Jos\xe9 <jose@customer.example>\r\nSubject: r\xe9clamation\r\n\r\n".to_vec();
    latin1.extend_from_slice(b"\xff\xfe body");
    let routed = route_on(&mut client(&app), &app, &[&address], &latin1)
        .await
        .unwrap();
    assert_eq!(
        routed.original_sender.clone().unwrap().email_address,
        "jose@customer.example"
    );

    // A request of exactly LIMIT bytes, then one more.
    let sized = |extra: usize| {
        let head = "From: ana@customer.example\r\nSubject: big\r\n\r\n";
        let mut request = RouteInboundEmailRequest {
            envelope_recipients: vec![address.clone()],
            raw_message: Vec::new(),
        };
        let mut body = LIMIT;
        loop {
            request.raw_message = format!("{head}{}", "x".repeat(body)).into_bytes();
            let length = request.encoded_len();
            if length == LIMIT + extra {
                return request;
            }
            body = body + LIMIT + extra - length;
        }
    };
    let at_limit = sized(0);
    assert_eq!(at_limit.encoded_len(), LIMIT);
    let routed = route_on(&mut client(&app), &app, &[&address], &at_limit.raw_message)
        .await
        .unwrap();
    assert_eq!(routed.kind(), InboundMessageKind::Conversation);
    let over = sized(1);
    let status = route_on(&mut client(&app), &app, &[&address], &over.raw_message)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

/// Round robin over three members, 1,000 messages spread over two replicas of one database:
/// each member within one of a third; a redelivered Message-ID gets its first answer and does
/// not advance the rotation.
async fn round_robin_is_fair_across_replicas(backend: Backend) {
    let app = hosted_world(backend, Tier::Professional).await;
    let (_, address) = live_channel(
        &app,
        Routing {
            mode: RoutingMode::RoundRobin.into(),
            user_ids: vec![ACCESS],
            team_ids: vec![TEAM],
        },
    )
    .await;
    let replica = app.spawn_replica(|_| {}).await;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let server = if worker % 2 == 0 { &app } else { &replica };
        let (channel, token, address) = (
            server.channel.clone(),
            app.platform_token(),
            address.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = InboxConnectionServiceClient::new(channel);
            let mut users = Vec::new();
            for n in 0..125 {
                let routed = client
                    .route_inbound_email(authed(
                        &token,
                        RouteInboundEmailRequest {
                            envelope_recipients: vec![address.clone()],
                            raw_message: customer(&format!("w{worker}-{n}@customer.example"))
                                .into_bytes(),
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                users.push(routed.assignment.unwrap().user_id);
            }
            users
        }));
    }
    let mut counts = BTreeMap::<i64, usize>::new();
    for task in tasks {
        for user in task.await.unwrap() {
            *counts.entry(user).or_default() += 1;
        }
    }
    let mut members = vec![ADA, BOB, ACCESS];
    members.sort_unstable();
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), members);
    assert_eq!(counts.values().sum::<usize>(), 1000);
    for (user, count) in &counts {
        assert!(
            (332..=334).contains(count),
            "user {user}: {count} of 1000 ({counts:?})"
        );
    }

    // The same Message-ID on either replica: one answer, one step of the rotation.
    let first = route(&app, &address, &customer("again@customer.example"))
        .await
        .unwrap()
        .assignment
        .unwrap()
        .user_id;
    let second = route(&replica, &address, &customer("again@customer.example"))
        .await
        .unwrap()
        .assignment
        .unwrap()
        .user_id;
    assert_eq!(first, second);
    let next = route(&app, &address, &customer("next@customer.example"))
        .await
        .unwrap()
        .assignment
        .unwrap()
        .user_id;
    let at = members.iter().position(|u| *u == first).unwrap();
    assert_eq!(next, members[(at + 1) % 3], "the rotation advanced once");
}

/// A LIVE channel shows when mail last arrived to the minute: a busy channel writes it once a
/// minute, not once a message.
async fn the_last_arrival_is_kept_to_the_minute(backend: Backend) {
    let clock = crate::address_verification::manual_clock();
    let app =
        crate::hosted_channels::hosted_world_on(backend, Tier::Professional, clock.clone(), |_| {})
            .await;
    let (live, address) = live_channel(
        &app,
        Routing {
            mode: RoutingMode::Unassigned.into(),
            ..Default::default()
        },
    )
    .await;
    let arrival = || async {
        let stored = get_connection(&app, &live.name).await;
        channel(&stored).last_inbound_time
    };
    route(&app, &address, &customer("m1@customer.example"))
        .await
        .unwrap();
    let first = arrival().await.expect("the first arrival is recorded");
    clock.advance(std::time::Duration::from_secs(59));
    route(&app, &address, &customer("m2@customer.example"))
        .await
        .unwrap();
    assert_eq!(arrival().await, Some(first), "within the minute");
    clock.advance(std::time::Duration::from_secs(1));
    route(&app, &address, &customer("m3@customer.example"))
        .await
        .unwrap();
    let later = arrival().await.unwrap();
    assert_eq!(later.seconds, first.seconds + 60, "a minute later");
}

backend_tests!(
    a_setup_channel_keeps_the_forwarding_confirmation,
    mail_routes_by_forwarding_address_only,
    routed_mail_is_attributed_assigned_and_ticketed,
    bad_messages_and_the_size_limit_get_clear_statuses,
    round_robin_is_fair_across_replicas,
    the_last_arrival_is_kept_to_the_minute,
);

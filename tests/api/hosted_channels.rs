//! Hosted team channels over gRPC, on both backends (seed 001, issue 15): connecting a team
//! address with PROVIDER_HOSTED, its forwarding address, channel settings, the sender preview,
//! customizing the forwarding address and completing the setup.

use std::sync::Arc;

use mailconnect::config::Settings;
use mailconnect::domain::domain_name::DomainName;
use mailconnect::grpc::proto::{
    self, ChannelSettings, ChannelState, CompleteSetupRequest, ConnectTeamEmailRequest, Connection,
    CustomizeForwardingAddressRequest, DeleteUserRequest, FromAddress, FromAddressKind,
    PreviewSenderRequest, Provider, Routing, RoutingMode, SenderName, SenderNameFormat, Team,
    TicketRule, Tier, UpdateChannelSettingsRequest, UpsertAccountRequest, UpsertTeamRequest,
};
use mailconnect::service::clock::{Clock, SystemClock};
use prost_types::FieldMask;
use tonic::{Code, Status};

use crate::backend_tests;
use crate::harness::{
    Backend, TestApp, assert_error, authed, spawn_app_on, spawn_app_with, violated_fields,
    violated_fields_with_reason,
};
use crate::inbox_world::{
    ACCOUNT, ADA, ADMIN, BOB, client, connect_gmail, connect_team_gmail, create_inbox,
    get_connection, password, seed_directory, token,
};

pub const PAID_DOMAIN: &str = "hosted.example";
pub const FREE_DOMAIN: &str = "free-hosted.example";
/// A team of ADA and BOB.
pub const TEAM: i64 = 40;

/// The world of the inbox tests on a server with both hosted mail domains.
pub async fn hosted_world(backend: Backend, tier: Tier) -> TestApp {
    hosted_world_on(backend, tier, Arc::new(SystemClock), |_| {}).await
}

/// Like [`hosted_world`], on `clock`, with the settings changed by `configure` too.
pub async fn hosted_world_on(
    backend: Backend,
    tier: Tier,
    clock: Arc<dyn Clock>,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let app = spawn_app_on(
        backend,
        |settings| {
            settings.inbox.hosted_domain = Some(DomainName::parse("d", PAID_DOMAIN).unwrap());
            settings.inbox.hosted_domain_free = Some(DomainName::parse("d", FREE_DOMAIN).unwrap());
            configure(settings);
        },
        clock,
    )
    .await;
    seed_directory(&app, tier).await;
    app.directory()
        .upsert_team(authed(
            &app.platform_token(),
            UpsertTeamRequest {
                team: Some(Team {
                    account_id: ACCOUNT,
                    id: TEAM,
                    name: "Support".into(),
                    member_user_ids: vec![ADA, BOB],
                }),
            },
        ))
        .await
        .unwrap();
    app
}

/// An admin connects `address` as a HOSTED channel of a new inbox.
pub async fn connect_hosted(
    app: &TestApp,
    address: &str,
    settings: Option<ChannelSettings>,
) -> Result<Connection, Status> {
    let inbox = create_inbox(app, "Support").await;
    connect_hosted_to(app, &inbox.name, address, settings).await
}

pub async fn connect_hosted_to(
    app: &TestApp,
    inbox: &str,
    address: &str,
    settings: Option<ChannelSettings>,
) -> Result<Connection, Status> {
    client(app)
        .connect_team_email(authed(
            &token(app, ADMIN),
            ConnectTeamEmailRequest {
                email_address: address.into(),
                provider: Provider::Hosted.into(),
                inbox: inbox.into(),
                channel_settings: settings,
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner().connection.unwrap())
}

pub fn channel(connection: &Connection) -> &ChannelSettings {
    connection.channel_settings.as_ref().unwrap()
}

pub fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

pub async fn update(
    app: &TestApp,
    user: i64,
    name: &str,
    settings: ChannelSettings,
    paths: &[&str],
) -> Result<Connection, Status> {
    client(app)
        .update_channel_settings(authed(
            &token(app, user),
            UpdateChannelSettingsRequest {
                name: name.into(),
                channel_settings: Some(settings),
                update_mask: mask(paths),
                etag: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().connection.unwrap())
}

pub async fn customize(app: &TestApp, name: &str, local_part: &str) -> Result<Connection, Status> {
    client(app)
        .customize_forwarding_address(authed(
            &token(app, ADMIN),
            CustomizeForwardingAddressRequest {
                name: name.into(),
                local_part: local_part.into(),
                etag: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().connection.unwrap())
}

pub async fn complete(app: &TestApp, name: &str) -> Result<Connection, Status> {
    client(app)
        .complete_setup(authed(
            &token(app, ADMIN),
            CompleteSetupRequest {
                name: name.into(),
                etag: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().connection.unwrap())
}

pub fn custom_from(address: &str) -> ChannelSettings {
    ChannelSettings {
        from_address: Some(FromAddress {
            kind: FromAddressKind::Custom.into(),
            custom_address: address.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Seed 001, the whole setup: connect, settings, preview, forwarding address, complete.
async fn a_hosted_channel_is_set_up_and_its_address_locked(backend: Backend) {
    let app = hosted_world(backend, Tier::Professional).await;
    let hosted = connect_hosted(
        &app,
        "Support@Acme.example",
        Some(ChannelSettings {
            sender_name: Some(SenderName {
                format: SenderNameFormat::AgentAndCompany.into(),
                company_name: "Acme Support".into(),
            }),
            // Output-only fields are ignored.
            forwarding_address: "mine@elsewhere.example".into(),
            state: ChannelState::Live.into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert_eq!(hosted.provider(), Provider::Hosted);
    assert_eq!(hosted.state(), proto::ConnectionState::Active);
    assert!(hosted.servers.is_none());
    let settings = channel(&hosted);
    assert_eq!(settings.state(), ChannelState::SetupInProgress);
    let forwarding = settings.forwarding_address.clone();
    let (local, domain) = forwarding.split_once('@').unwrap();
    assert_eq!(domain, format!("acme.{PAID_DOMAIN}"));
    let suffix = local.strip_prefix("support-").unwrap();
    assert_eq!(suffix.len(), 6, "{forwarding}");
    let from = settings.from_address.as_ref().unwrap();
    assert_eq!(from.kind(), FromAddressKind::Default);
    assert_eq!(from.effective_address, forwarding, "the hosted address");
    assert_eq!(
        settings.sender_name.as_ref().unwrap().format(),
        SenderNameFormat::AgentAndCompany
    );
    assert_eq!(
        get_connection(&app, &hosted.name).await.channel_settings,
        hosted.channel_settings
    );

    // Routing and tickets, one group at a time.
    let routed = update(
        &app,
        ADMIN,
        &hosted.name,
        ChannelSettings {
            routing: Some(Routing {
                mode: RoutingMode::RoundRobin.into(),
                user_ids: vec![BOB, ADA, BOB],
                team_ids: vec![TEAM],
            }),
            tickets: Some(TicketRule {
                create_tickets: true,
                pipeline_id: "0".into(),
                stage_id: "1".into(),
                properties: [("hs_ticket_priority".to_owned(), "HIGH".to_owned())].into(),
            }),
            ..Default::default()
        },
        &[
            "routing",
            "tickets.create_tickets",
            "tickets.pipeline_id",
            "tickets.stage_id",
        ],
    )
    .await
    .unwrap();
    let settings = channel(&routed);
    let routing = settings.routing.as_ref().unwrap();
    assert_eq!(routing.mode(), RoutingMode::RoundRobin);
    assert_eq!(routing.user_ids, [ADA, BOB]);
    assert_eq!(routing.team_ids, [TEAM]);
    let tickets = settings.tickets.as_ref().unwrap();
    assert!(tickets.create_tickets);
    assert!(tickets.properties.is_empty(), "not in the mask");
    assert_eq!(
        settings.sender_name.as_ref().unwrap().company_name,
        "Acme Support",
        "untouched"
    );
    assert_ne!(routed.etag, hosted.etag);

    // The preview, as a plain user may see it.
    let preview = client(&app)
        .preview_sender(authed(
            &token(&app, ADA),
            PreviewSenderRequest {
                name: hosted.name.clone(),
                channel_settings: None,
                agent_name: "Ada Lovelace".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.display_name, "Ada Lovelace at Acme Support");
    assert_eq!(preview.email_address, forwarding);
    assert_eq!(
        preview.from_header,
        format!("\"Ada Lovelace at Acme Support\" <{forwarding}>")
    );

    let customized = customize(&app, &hosted.name, "support").await.unwrap();
    assert_eq!(
        channel(&customized).forwarding_address,
        format!("support@acme.{PAID_DOMAIN}")
    );
    let live = complete(&app, &hosted.name).await.unwrap();
    assert_eq!(channel(&live).state(), ChannelState::Live);
    assert_eq!(
        channel(&live).forwarding_address,
        format!("support@acme.{PAID_DOMAIN}")
    );
    let again = complete(&app, &hosted.name).await.unwrap();
    assert_eq!(again.etag, live.etag, "idempotent on a LIVE channel");
    let status = customize(&app, &hosted.name, "help").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "FORWARDING_ADDRESS_LOCKED",
    );
}

/// PreviewSender shows what a contact's client gets: quoting and RFC 2047 as lettre sends them.
async fn the_sender_preview_quotes_and_encodes_company_names(backend: Backend) {
    let app = hosted_world(backend, Tier::Professional).await;
    let hosted = connect_hosted(&app, "support@acme.example", None)
        .await
        .unwrap();
    let preview = |format: SenderNameFormat, company: &str, agent: &str| {
        let mut client = client(&app);
        let request = authed(
            &token(&app, ADMIN),
            PreviewSenderRequest {
                name: hosted.name.clone(),
                channel_settings: Some(ChannelSettings {
                    sender_name: Some(SenderName {
                        format: format.into(),
                        company_name: company.into(),
                    }),
                    ..custom_from("help@acme.example")
                }),
                agent_name: agent.into(),
            },
        );
        async move { client.preview_sender(request).await.map(|r| r.into_inner()) }
    };
    let plain = preview(SenderNameFormat::Company, "Acme Support", "")
        .await
        .unwrap();
    assert_eq!(plain.display_name, "Acme Support");
    assert_eq!(plain.email_address, "help@acme.example");
    assert_eq!(plain.from_header, "\"Acme Support\" <help@acme.example>");
    let agent = preview(SenderNameFormat::AgentName, "", "").await.unwrap();
    assert_eq!(agent.display_name, "Agent Name", "the placeholder");
    let quoted = preview(SenderNameFormat::Company, "Acme \"Best\", Inc.", "")
        .await
        .unwrap();
    assert_eq!(quoted.display_name, "Acme \"Best\", Inc.");
    assert_eq!(
        quoted.from_header, "=?utf-8?b?QWNtZSAiQmVzdCIsIEluYy4=?= <help@acme.example>",
        "an encoded word, as lettre writes a name with quotes"
    );
    let accented = preview(SenderNameFormat::AgentAndCompany, "Café Zoë", "Zoë")
        .await
        .unwrap();
    assert_eq!(accented.display_name, "Zoë at Café Zoë");
    assert!(accented.from_header.starts_with("=?utf-8?b?"));
    assert!(accented.from_header.is_ascii());
    let status = preview(SenderNameFormat::Company, "", "")
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["channel_settings.sender_name.company_name"]
    );
    // The draft was never stored.
    let stored = get_connection(&app, &hosted.name).await;
    assert_eq!(
        channel(&stored).from_address.as_ref().unwrap().kind(),
        FromAddressKind::Default
    );

    let personal = connect_gmail(&app, ADA, "ada@acme.example").await.unwrap();
    let status = client(&app)
        .preview_sender(authed(
            &token(&app, ADA),
            PreviewSenderRequest {
                name: personal.name,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "NOT_A_TEAM_CONNECTION");
}

/// The hosted domain follows the tier at connect time; a tier change never moves the address.
async fn the_hosted_domain_follows_the_tier_and_never_moves(backend: Backend) {
    let app = hosted_world(backend, Tier::Free).await;
    let hosted = connect_hosted(&app, "support@acme.example", None)
        .await
        .unwrap();
    let forwarding = channel(&hosted).forwarding_address.clone();
    assert!(
        forwarding.ends_with(&format!("@acme.{FREE_DOMAIN}")),
        "{forwarding}"
    );
    seed_directory(&app, Tier::Enterprise).await;
    assert_eq!(
        channel(&get_connection(&app, &hosted.name).await).forwarding_address,
        forwarding
    );
    let live = complete(&app, &hosted.name).await.unwrap();
    assert_eq!(channel(&live).forwarding_address, forwarding);
    let paid = connect_hosted(&app, "sales@acme.example", None)
        .await
        .unwrap();
    assert!(
        channel(&paid)
            .forwarding_address
            .ends_with(&format!("@acme.{PAID_DOMAIN}"))
    );
}

/// Without the operator's domains, or an account subdomain, HOSTED is refused with its reason.
async fn hosted_needs_a_domain_and_a_subdomain(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.inbox.hosted_domain = Some(DomainName::parse("d", PAID_DOMAIN).unwrap());
    })
    .await;
    seed_directory(&app, Tier::Free).await;
    let inbox = create_inbox(&app, "Support").await;
    let status = connect_hosted_to(&app, &inbox.name, "support@acme.example", None)
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "HOSTED_MAIL_NOT_CONFIGURED",
    );
    app.directory()
        .upsert_account(authed(
            &app.platform_token(),
            UpsertAccountRequest {
                account: Some(proto::Account {
                    id: ACCOUNT,
                    tier: Tier::Starter.into(),
                    subdomain: String::new(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap();
    let status = connect_hosted_to(&app, &inbox.name, "support@acme.example", None)
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "ACCOUNT_SUBDOMAIN_REQUIRED",
    );
    let status = client(&app)
        .connect_team_email(authed(
            &token(&app, ADMIN),
            ConnectTeamEmailRequest {
                email_address: "support@acme.example".into(),
                provider: Provider::Hosted.into(),
                inbox: inbox.name.clone(),
                credentials: Some(password("support", "secret")),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["credentials"]);
    let status = client(&app)
        .connect_team_email(authed(
            &token(&app, ADMIN),
            ConnectTeamEmailRequest {
                email_address: "support@acme.example".into(),
                provider: Provider::Hosted.into(),
                inbox: inbox.name,
                servers: Some(proto::ServerSettings::default()),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["servers"]);
}

/// Forwarding addresses: the local part's syntax, unique across channels (the database's
/// index), and only for hosted channels.
async fn forwarding_addresses_are_checked_and_unique(backend: Backend) {
    let app = hosted_world(backend, Tier::Professional).await;
    let first = connect_hosted(&app, "support@acme.example", None)
        .await
        .unwrap();
    let second = connect_hosted(&app, "help@acme.example", None)
        .await
        .unwrap();
    customize(&app, &first.name, "team").await.unwrap();
    let status = customize(&app, &second.name, "team").await.unwrap_err();
    let metadata = assert_error(&status, Code::AlreadyExists, "FORWARDING_ADDRESS_TAKEN");
    assert_eq!(
        metadata["forwarding_address"],
        format!("team@acme.{PAID_DOMAIN}")
    );
    for bad in ["", "Team", ".team", "te..am", "a b", "x@y"] {
        let status = customize(&app, &second.name, bad).await.unwrap_err();
        assert_eq!(
            violated_fields_with_reason(&status, "INVALID_LOCAL_PART"),
            ["local_part"],
            "{bad:?}"
        );
    }
    let gmail_inbox = create_inbox(&app, "Sales").await;
    let gmail = connect_team_gmail(&app, "sales@acme.example", &gmail_inbox.name)
        .await
        .unwrap();
    assert_eq!(channel(&gmail).state(), ChannelState::Live);
    assert!(channel(&gmail).forwarding_address.is_empty());
    for status in [
        customize(&app, &gmail.name, "sales").await.unwrap_err(),
        complete(&app, &gmail.name).await.unwrap_err(),
    ] {
        assert_error(&status, Code::FailedPrecondition, "NOT_A_HOSTED_CHANNEL");
    }
}

/// Settings are checked field by field, routing against the directory; CompleteSetup refuses
/// an unverified custom from address.
async fn channel_settings_are_checked(backend: Backend) {
    let app = hosted_world(backend, Tier::Professional).await;
    let hosted = connect_hosted(&app, "support@acme.example", None)
        .await
        .unwrap();
    let routing = |mode: RoutingMode, users: Vec<i64>, teams: Vec<i64>| ChannelSettings {
        routing: Some(Routing {
            mode: mode.into(),
            user_ids: users,
            team_ids: teams,
        }),
        ..Default::default()
    };
    let status = update(
        &app,
        ADMIN,
        &hosted.name,
        routing(RoutingMode::SpecificUsersAndTeams, vec![ADA, 999], vec![41]),
        &["routing"],
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        [
            "channel_settings.routing.user_ids",
            "channel_settings.routing.team_ids"
        ]
    );
    let status = update(
        &app,
        ADMIN,
        &hosted.name,
        routing(RoutingMode::RoundRobin, vec![], vec![]),
        &["routing"],
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["channel_settings.routing.user_ids"]
    );
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
    let status = update(
        &app,
        ADMIN,
        &hosted.name,
        routing(RoutingMode::RoundRobin, vec![BOB], vec![]),
        &["routing"],
    )
    .await
    .unwrap_err();
    assert!(status.message().contains("deleted"), "{status:?}");
    let properties = (0..51).map(|i| (format!("p{i}"), "v".to_owned())).collect();
    let status = update(
        &app,
        ADMIN,
        &hosted.name,
        ChannelSettings {
            tickets: Some(TicketRule {
                properties,
                ..Default::default()
            }),
            ..Default::default()
        },
        &["tickets.properties"],
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["channel_settings.tickets.properties"]
    );
    for path in ["forwarding_address", "state", "routing.nope"] {
        let status = update(
            &app,
            ADMIN,
            &hosted.name,
            ChannelSettings::default(),
            &[path],
        )
        .await
        .unwrap_err();
        assert_eq!(violated_fields(&status), ["update_mask"], "{path}");
    }
    // Only admins and the user who connected it change a channel.
    let status = update(&app, ADA, &hosted.name, ChannelSettings::default(), &[])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let custom = update(
        &app,
        ADMIN,
        &hosted.name,
        custom_from("help@acme.example"),
        &["from_address"],
    )
    .await
    .unwrap();
    let from = channel(&custom).from_address.clone().unwrap();
    assert_eq!(from.kind(), FromAddressKind::Custom);
    assert_eq!(
        from.verification_state(),
        proto::VerificationState::NotStarted
    );
    assert_eq!(
        from.effective_address,
        channel(&custom).forwarding_address,
        "unverified: the default address"
    );
    let status = complete(&app, &hosted.name).await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "FROM_ADDRESS_NOT_VERIFIED",
    );
}

backend_tests!(
    a_hosted_channel_is_set_up_and_its_address_locked,
    the_sender_preview_quotes_and_encodes_company_names,
    the_hosted_domain_follows_the_tier_and_never_moves,
    hosted_needs_a_domain_and_a_subdomain,
    forwarding_addresses_are_checked_and_unique,
    channel_settings_are_checked,
);

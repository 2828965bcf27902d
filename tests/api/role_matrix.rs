//! Every method of every service the server lists through reflection, called over gRPC by each
//! kind of caller, against the code its proto comment promises. A method the table does not list
//! fails the test, so a new method cannot ship without its row.

use mailconnect::domain::principal::Role;
use mailconnect::grpc::proto::inbox_connection_service_client::InboxConnectionServiceClient;
use mailconnect::grpc::proto::{
    Account, ConnectTeamEmailRequest, CreateInboxRequest, DeleteInboxRequest, DeleteUserRequest,
    GetAccountRequest, GetConnectionRequest, GetDomainSettingsRequest, GetInboxRequest,
    GetUserRequest, Inbox, ListTeamsRequest, ListUsersRequest, Protocol, Provider,
    PublishRangesRequest, ReleaseAddressRequest, ResolveConnectionSettingsRequest, Team, Tier,
    UpdateInboxRequest, UpsertAccountRequest, UpsertTeamRequest, UpsertUserRequest, User,
};
use mailconnect::grpc::proto::{
    CheckAddressRequest, CustomizeForwardingAddressRequest, DeleteDomainSettingsRequest,
    VerifyAddressRequest,
};
use tonic::Code;

use crate::backend_tests;
use crate::harness::{
    Backend, TestApp, authed, expired_token, forged_token, spawn_app, user_token,
};
use crate::raw_grpc::{Method, all_descriptor_sets, call_code, described_methods, served_methods};

/// The kinds of caller every method is tried with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    NoToken,
    Expired,
    BadSignature,
    OtherAccountSuperAdmin,
    PlainUser,
    AccountAccess,
    SuperAdmin,
    Platform,
}

const CALLERS: [Caller; 8] = [
    Caller::NoToken,
    Caller::Expired,
    Caller::BadSignature,
    Caller::OtherAccountSuperAdmin,
    Caller::PlainUser,
    Caller::AccountAccess,
    Caller::SuperAdmin,
    Caller::Platform,
];

/// Who a method's proto comment lets in.
#[derive(Debug, Clone, Copy)]
enum Access {
    /// Health and reflection: no token needed (Kubernetes probes, `grpcurl list`).
    Anyone,
    /// Any user of the account.
    User,
    /// SUPER_ADMIN or ACCOUNT_ACCESS of the account.
    Admin,
    /// PLATFORM only.
    Platform,
    /// Users of the account, and the platform (the directory's reads, for any account; the
    /// allowlist's, for the default data center or the one it names).
    UserOrPlatform,
}

/// The account the table's requests name, its users, and another account with its super admin.
const ACCOUNT: i64 = 1;
const SUPER_ADMIN: i64 = 10;
const ACCOUNT_ACCESS: i64 = 11;
const PLAIN_USER: i64 = 12;
/// A user only there to be deleted by DeleteUser's row.
const LEAVER: i64 = 13;
const OTHER_ACCOUNT: i64 = 2;
const OTHER_SUPER_ADMIN: i64 = 20;
/// No inbox or connection has this id.
const MISSING: &str = "999999";

/// What the requests refer to.
pub struct World {
    /// An inbox of [`ACCOUNT`].
    pub inbox: String,
}

pub struct Row {
    pub method: &'static str,
    access: Access,
    pub request: fn(&World) -> Vec<u8>,
    /// The code for a caller the method lets in.
    allowed: Code,
    /// The code for another account's super admin (the request names [`ACCOUNT`]'s records,
    /// which are invisible to them): `allowed` unless said otherwise.
    other_account: Option<Code>,
}

fn row(method: &'static str, access: Access, request: fn(&World) -> Vec<u8>, allowed: Code) -> Row {
    Row {
        method,
        access,
        request,
        allowed,
        other_account: None,
    }
}

impl Row {
    /// Another account's records are NOT_FOUND, never their data (design §3).
    fn hidden_from_other_accounts(mut self) -> Self {
        self.other_account = Some(Code::NotFound);
        self
    }

    fn expected(&self, caller: Caller) -> Code {
        use Access as A;
        use Caller as C;
        match (self.access, caller) {
            (A::Anyone, _) => self.allowed,
            (_, C::NoToken | C::Expired | C::BadSignature) => Code::Unauthenticated,
            (A::Platform, C::Platform) | (A::UserOrPlatform, C::Platform) => self.allowed,
            // Per-account methods and tokens without an account: nothing to act on.
            (A::Platform, _) | (A::User | A::Admin, C::Platform) => Code::PermissionDenied,
            (A::Admin, C::PlainUser) => Code::PermissionDenied,
            (_, C::OtherAccountSuperAdmin) => self.other_account.unwrap_or(self.allowed),
            (A::User | A::Admin | A::UserOrPlatform, _) => self.allowed,
        }
    }
}

fn encode(message: impl prost::Message) -> Vec<u8> {
    message.encode_to_vec()
}

fn empty(_: &World) -> Vec<u8> {
    Vec::new()
}

fn missing_connection(_: &World) -> Vec<u8> {
    encode(GetConnectionRequest {
        name: format!("connections/{MISSING}"),
    })
}

fn user(id: i64, roles: &[mailconnect::grpc::proto::Role]) -> User {
    User {
        account_id: ACCOUNT,
        id,
        email: format!("user{id}@acme.example"),
        roles: roles.iter().map(|role| (*role).into()).collect(),
        deleted: false,
    }
}

fn account(id: i64) -> Account {
    Account {
        id,
        tier: Tier::Professional.into(),
        data_center: String::new(),
        subdomain: format!("acme{id}"),
        sending_domains: vec![],
    }
}

pub fn table() -> Vec<Row> {
    use Access::*;
    vec![
        row("/grpc.health.v1.Health/Check", Anyone, empty, Code::Ok),
        row("/grpc.health.v1.Health/Watch", Anyone, empty, Code::Ok),
        row(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            Anyone,
            empty,
            Code::Ok,
        ),
        row(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            Anyone,
            empty,
            Code::Ok,
        ),
        // DirectoryService: the platform writes, users read their own account.
        row(
            "/mailconnect.v1.DirectoryService/UpsertAccount",
            Platform,
            |_| {
                encode(UpsertAccountRequest {
                    account: Some(account(ACCOUNT)),
                })
            },
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.DirectoryService/GetAccount",
            UserOrPlatform,
            |_| {
                encode(GetAccountRequest {
                    account_id: ACCOUNT,
                })
            },
            Code::Ok,
        )
        .hidden_from_other_accounts(),
        row(
            "/mailconnect.v1.DirectoryService/UpsertUser",
            Platform,
            |_| {
                encode(UpsertUserRequest {
                    user: Some(user(PLAIN_USER, &[])),
                })
            },
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.DirectoryService/DeleteUser",
            Platform,
            |_| {
                encode(DeleteUserRequest {
                    account_id: ACCOUNT,
                    user_id: LEAVER,
                })
            },
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.DirectoryService/GetUser",
            UserOrPlatform,
            |_| {
                encode(GetUserRequest {
                    account_id: ACCOUNT,
                    user_id: PLAIN_USER,
                })
            },
            Code::Ok,
        )
        .hidden_from_other_accounts(),
        row(
            "/mailconnect.v1.DirectoryService/ListUsers",
            UserOrPlatform,
            |_| {
                encode(ListUsersRequest {
                    account_id: ACCOUNT,
                    ..Default::default()
                })
            },
            Code::Ok,
        )
        .hidden_from_other_accounts(),
        row(
            "/mailconnect.v1.DirectoryService/UpsertTeam",
            Platform,
            |_| {
                encode(UpsertTeamRequest {
                    team: Some(Team {
                        account_id: ACCOUNT,
                        id: 1,
                        name: "Support".into(),
                        member_user_ids: vec![PLAIN_USER],
                    }),
                })
            },
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.DirectoryService/ListTeams",
            UserOrPlatform,
            |_| {
                encode(ListTeamsRequest {
                    account_id: ACCOUNT,
                    ..Default::default()
                })
            },
            Code::Ok,
        )
        .hidden_from_other_accounts(),
        // AllowlistService: any user reads (their data center's list), the platform publishes.
        row(
            "/mailconnect.v1.AllowlistService/GetAllowlist",
            UserOrPlatform,
            empty,
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.AllowlistService/ExportAllowlist",
            UserOrPlatform,
            empty,
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.AllowlistService/CheckAddress",
            UserOrPlatform,
            |_| {
                encode(CheckAddressRequest {
                    ip_address: "192.0.2.1".into(),
                })
            },
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.AllowlistService/ListAllowlistChanges",
            UserOrPlatform,
            empty,
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.AllowlistService/WatchAllowlist",
            UserOrPlatform,
            empty,
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.AllowlistService/PublishRanges",
            Platform,
            |_| {
                encode(PublishRangesRequest {
                    data_center: "matrix1".into(),
                    protocol: Protocol::Smtp.into(),
                    ranges: vec!["8.8.8.0/24".into()],
                    ..Default::default()
                })
            },
            Code::Ok,
        ),
        // DomainSettingsService: admins write and probe, any user of the account reads.
        row(
            "/mailconnect.v1.DomainSettingsService/CreateDomainSettings",
            Admin,
            empty,
            Code::InvalidArgument,
        ),
        row(
            "/mailconnect.v1.DomainSettingsService/GetDomainSettings",
            User,
            |_| {
                encode(GetDomainSettingsRequest {
                    name: "domainSettings/acme.example".into(),
                })
            },
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.DomainSettingsService/UpdateDomainSettings",
            Admin,
            empty,
            Code::InvalidArgument,
        ),
        row(
            "/mailconnect.v1.DomainSettingsService/DeleteDomainSettings",
            Admin,
            |_| {
                encode(DeleteDomainSettingsRequest {
                    name: "domainSettings/acme.example".into(),
                    ..Default::default()
                })
            },
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.DomainSettingsService/ListDomainSettings",
            User,
            empty,
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.DomainSettingsService/ResolveConnectionSettings",
            User,
            |_| {
                encode(ResolveConnectionSettingsRequest {
                    email_address: "a@gmail.com".into(),
                })
            },
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.DomainSettingsService/ListAttemptedDomains",
            Admin,
            empty,
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.DomainSettingsService/ProbeDomainSettings",
            Admin,
            empty,
            Code::InvalidArgument,
        ),
        // InboxConnectionService.
        row(
            "/mailconnect.v1.InboxConnectionService/CreateInbox",
            Admin,
            |_| {
                encode(CreateInboxRequest {
                    inbox: Some(Inbox {
                        display_name: "Matrix".into(),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
            },
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/GetInbox",
            User,
            |world| {
                encode(GetInboxRequest {
                    name: world.inbox.clone(),
                })
            },
            Code::Ok,
        )
        .hidden_from_other_accounts(),
        row(
            "/mailconnect.v1.InboxConnectionService/ListInboxes",
            User,
            empty,
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/UpdateInbox",
            Admin,
            |world| {
                encode(UpdateInboxRequest {
                    inbox: Some(Inbox {
                        name: world.inbox.clone(),
                        display_name: "Support desk".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["display_name".into()],
                    }),
                })
            },
            Code::Ok,
        )
        .hidden_from_other_accounts(),
        row(
            "/mailconnect.v1.InboxConnectionService/DeleteInbox",
            Admin,
            |_| {
                encode(DeleteInboxRequest {
                    name: format!("inboxes/{MISSING}"),
                    ..Default::default()
                })
            },
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/ConnectPersonalInbox",
            User,
            empty,
            Code::InvalidArgument,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/ConnectTeamEmail",
            Admin,
            empty,
            Code::InvalidArgument,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/ConnectTeamEmail#hosted",
            Admin,
            |_| {
                encode(ConnectTeamEmailRequest {
                    email_address: "support@acme.example".into(),
                    provider: Provider::Hosted.into(),
                    inbox: format!("inboxes/{MISSING}"),
                    ..Default::default()
                })
            },
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/GetConnection",
            User,
            missing_connection,
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/ListConnections",
            User,
            empty,
            Code::Ok,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/DeactivateConnection",
            User,
            missing_connection,
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/DeleteConnection",
            User,
            missing_connection,
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/ReauthorizeConnection",
            User,
            missing_connection,
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/SetUsages",
            User,
            missing_connection,
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/ReleaseAddress",
            Admin,
            |_| {
                encode(ReleaseAddressRequest {
                    email_address: "nobody@acme.example".into(),
                })
            },
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/UpdateChannelSettings",
            User,
            missing_connection,
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/PreviewSender",
            User,
            missing_connection,
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/CustomizeForwardingAddress",
            User,
            |_| {
                encode(CustomizeForwardingAddressRequest {
                    name: format!("connections/{MISSING}"),
                    local_part: "support".into(),
                    etag: String::new(),
                })
            },
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/StartAddressVerification",
            User,
            missing_connection,
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/VerifyAddress",
            User,
            |_| {
                encode(VerifyAddressRequest {
                    name: format!("connections/{MISSING}"),
                    code: "123456".into(),
                })
            },
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/CompleteSetup",
            User,
            missing_connection,
            Code::NotFound,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/RouteInboundEmail",
            Platform,
            empty,
            Code::InvalidArgument,
        ),
        row(
            "/mailconnect.v1.InboxConnectionService/ListNotifications",
            User,
            empty,
            Code::Ok,
        ),
    ]
}

/// The token a caller sends, if any.
fn token_of(app: &TestApp, caller: Caller) -> Option<String> {
    match caller {
        Caller::NoToken => None,
        Caller::Expired => Some(expired_token()),
        Caller::BadSignature => Some(forged_token()),
        Caller::OtherAccountSuperAdmin => Some(user_token(
            OTHER_ACCOUNT,
            OTHER_SUPER_ADMIN,
            &[Role::SuperAdmin],
        )),
        Caller::PlainUser => Some(user_token(ACCOUNT, PLAIN_USER, &[])),
        Caller::AccountAccess => Some(user_token(ACCOUNT, ACCOUNT_ACCESS, &[Role::AccountAccess])),
        Caller::SuperAdmin => Some(user_token(ACCOUNT, SUPER_ADMIN, &[Role::SuperAdmin])),
        Caller::Platform => Some(app.platform_token()),
    }
}

/// The two accounts and their users in the directory, and an inbox of [`ACCOUNT`].
pub async fn seed(app: &TestApp) -> World {
    use mailconnect::grpc::proto::Role as R;
    let platform = app.platform_token();
    let mut directory = app.directory();
    for id in [ACCOUNT, OTHER_ACCOUNT] {
        directory
            .upsert_account(authed(
                &platform,
                UpsertAccountRequest {
                    account: Some(account(id)),
                },
            ))
            .await
            .expect("upsert account");
    }
    let users = [
        user(SUPER_ADMIN, &[R::SuperAdmin]),
        user(ACCOUNT_ACCESS, &[R::AccountAccess]),
        user(PLAIN_USER, &[]),
        user(LEAVER, &[]),
        User {
            account_id: OTHER_ACCOUNT,
            ..user(OTHER_SUPER_ADMIN, &[R::SuperAdmin])
        },
    ];
    for user in users {
        directory
            .upsert_user(authed(&platform, UpsertUserRequest { user: Some(user) }))
            .await
            .expect("upsert user");
    }
    let inbox = InboxConnectionServiceClient::new(app.channel.clone())
        .create_inbox(authed(
            &user_token(ACCOUNT, SUPER_ADMIN, &[Role::SuperAdmin]),
            CreateInboxRequest {
                inbox: Some(Inbox {
                    display_name: "Support".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .expect("create inbox")
        .into_inner()
        .inbox
        .expect("inbox")
        .name;
    World { inbox }
}

async fn every_method_answers_every_caller_as_its_proto_says(backend: Backend) {
    let app = spawn_app(backend).await;
    let world = seed(&app).await;
    let table = table();
    let served = served_methods(&app.channel, &all_descriptor_sets()).await;
    let described = described_methods(&all_descriptor_sets());
    let listed: Vec<&str> = table.iter().map(|row| row.method).collect();
    let unlisted: Vec<&Method> = served
        .iter()
        .filter(|method| !listed.contains(&method.path.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "methods without a row in the role matrix: {unlisted:#?}"
    );
    let mut failures = Vec::new();
    let mut cases = 0;
    for row in &table {
        let path = row.method.split('#').next().expect("a path");
        let method = described
            .iter()
            .find(|method| method.path == path)
            .unwrap_or_else(|| panic!("{} is in the table but in no descriptor", row.method));
        for caller in CALLERS {
            let token = token_of(&app, caller);
            let code = call_code(
                &app.channel,
                method,
                token.as_deref(),
                (row.request)(&world),
            )
            .await;
            let expected = row.expected(caller);
            cases += 1;
            if code != expected {
                failures.push(format!(
                    "{} as {caller:?}: {code:?}, expected {expected:?}",
                    row.method
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

backend_tests!(every_method_answers_every_caller_as_its_proto_says);

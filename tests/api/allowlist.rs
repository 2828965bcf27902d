//! AllowlistService over gRPC, on both backends.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use mailconnect::domain::principal::Role;
use mailconnect::grpc::proto::allowlist_service_client::AllowlistServiceClient;
use mailconnect::grpc::proto::{
    Account, AllowlistChange, CheckAddressRequest, CheckAddressResponse, DataCenterSource,
    ExportAllowlistRequest, ExportFormat, GetAllowlistRequest, GetAllowlistResponse,
    ListAllowlistChangesRequest, Protocol, PublishRangesRequest, PublishRangesResponse, Tier,
    UpsertAccountRequest, WatchAllowlistRequest, WatchAllowlistResponse,
};
use prost_types::Timestamp;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt as _;

use crate::backend_tests;
use crate::cli::mailconnect;
use crate::harness::{
    Backend, TestApp, assert_error, authed, eventually, spawn_app, violated_fields,
    violated_fields_with_reason,
};

/// The seed's lists (article 003), canonical, in address order.
const SEED_SMTP: [&str; 12] = [
    "54.174.62.128/26",
    "54.174.62.192/32",
    "54.174.62.193/32",
    "54.174.62.194/32",
    "54.174.62.195/32",
    "141.193.184.0/27",
    "141.193.185.0/27",
    "143.244.82.12/32",
    "143.244.82.13/32",
    "143.244.82.14/32",
    "143.244.82.15/32",
    "143.244.87.0/25",
];
const SEED_IMAP: [&str; 12] = [
    "54.174.62.128/26",
    "54.174.62.196/32",
    "54.174.62.197/32",
    "54.174.62.198/32",
    "54.174.62.199/32",
    "141.193.184.0/27",
    "141.193.185.0/27",
    "143.244.82.8/32",
    "143.244.82.9/32",
    "143.244.82.10/32",
    "143.244.82.11/32",
    "143.244.87.0/25",
];

/// 2099-01-01T00:00:00Z: a fixed time in the future for advance notices.
const FUTURE: i64 = 4_070_908_800;

fn client(app: &TestApp) -> AllowlistServiceClient<Channel> {
    AllowlistServiceClient::new(app.channel.clone())
}

fn publish_request(data_center: &str, protocol: Protocol, ranges: &[&str]) -> PublishRangesRequest {
    PublishRangesRequest {
        data_center: data_center.to_owned(),
        protocol: protocol.into(),
        ranges: ranges.iter().map(|range| (*range).to_owned()).collect(),
        ..Default::default()
    }
}

async fn try_publish(
    app: &TestApp,
    request: PublishRangesRequest,
) -> Result<PublishRangesResponse, Status> {
    client(app)
        .publish_ranges(authed(&app.platform_token(), request))
        .await
        .map(tonic::Response::into_inner)
}

async fn publish(
    app: &TestApp,
    data_center: &str,
    protocol: Protocol,
    ranges: &[&str],
) -> PublishRangesResponse {
    try_publish(app, publish_request(data_center, protocol, ranges))
        .await
        .expect("publish")
}

/// GetAllowlist as a platform caller naming the data center.
async fn get(app: &TestApp, data_center: &str, protocols: &[Protocol]) -> GetAllowlistResponse {
    get_as(&app.platform_token(), app, data_center, protocols)
        .await
        .expect("get allowlist")
}

async fn get_as(
    token: &str,
    app: &TestApp,
    data_center: &str,
    protocols: &[Protocol],
) -> Result<GetAllowlistResponse, Status> {
    client(app)
        .get_allowlist(authed(
            token,
            GetAllowlistRequest {
                protocols: protocols.iter().map(|&p| p.into()).collect(),
                data_center: data_center.to_owned(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

fn cidrs(response: &GetAllowlistResponse) -> Vec<&str> {
    response
        .ranges
        .iter()
        .map(|range| range.cidr.as_str())
        .collect()
}

async fn check(app: &TestApp, ip_address: &str) -> Result<CheckAddressResponse, Status> {
    client(app)
        .check_address(authed(
            &app.user_token(1, 1, &[]),
            CheckAddressRequest {
                ip_address: ip_address.to_owned(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn host_account(app: &TestApp, id: i64, data_center: &str) {
    app.directory()
        .upsert_account(authed(
            &app.platform_token(),
            UpsertAccountRequest {
                account: Some(Account {
                    id,
                    tier: Tier::Starter.into(),
                    data_center: data_center.to_owned(),
                    subdomain: format!("acct{id}"),
                    sending_domains: vec![],
                }),
            },
        ))
        .await
        .expect("upsert account");
}

/// The next change of a watch stream; the bound only turns a hang into a failure.
async fn next(stream: &mut Streaming<WatchAllowlistResponse>) -> AllowlistChange {
    tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("a change arrives")
        .expect("stream open")
        .expect("a message")
        .change
        .expect("a change")
}

async fn seed_lists_come_back_exactly(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(
        app.health("mailconnect.v1.AllowlistService").await.unwrap(),
        ServingStatus::Serving
    );
    // Account 1 is unknown to the directory: the default data center, na1.
    let user = app.user_token(1, 1, &[]);
    let smtp = get_as(&user, &app, "", &[Protocol::Smtp]).await.unwrap();
    assert_eq!(smtp.data_center, "na1");
    assert_eq!(cidrs(&smtp), SEED_SMTP);
    let imap = get_as(&user, &app, "", &[Protocol::Imap]).await.unwrap();
    assert_eq!(cidrs(&imap), SEED_IMAP);
    assert_eq!(smtp.version, 2, "one version per seeded list");
    assert!(!smtp.etag.is_empty());
    assert!(smtp.update_time.is_some());

    // Both protocols: one entry per CIDR, shared ones carry both protocols.
    let all = get_as(&user, &app, "", &[]).await.unwrap();
    let union: BTreeSet<&str> = SEED_SMTP.iter().chain(&SEED_IMAP).copied().collect();
    assert_eq!(all.ranges.len(), union.len());
    let shared = all
        .ranges
        .iter()
        .find(|range| range.cidr == "141.193.184.0/27")
        .unwrap();
    assert_eq!(
        shared.protocols,
        [Protocol::Smtp as i32, Protocol::Imap as i32]
    );
    assert!(
        all.ranges
            .iter()
            .all(|range| !range.upcoming && range.data_center == "na1")
    );

    let changes = client(&app)
        .list_allowlist_changes(authed(&user, ListAllowlistChangesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changes.current_version, 2);
    let versions: Vec<(i64, i32, usize)> = changes
        .changes
        .iter()
        .map(|change| (change.version, change.protocol, change.added.len()))
        .collect();
    assert_eq!(
        versions,
        [
            (1, Protocol::Smtp as i32, 12),
            (2, Protocol::Imap as i32, 12)
        ]
    );
    app.stop().await;
}

/// The import command reports the seed's empty entry with its line number, publishes nothing
/// unless told to skip it, and then publishes exactly the good lines; a watcher connected to the
/// server learns of the change by reading the database.
async fn import_command_reports_bad_lines(backend: Backend) {
    let app = spawn_app(backend).await;
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/allowlist/na1-smtp.txt");
    let import = |extra: &[&str]| {
        mailconnect()
            .args([
                "allowlist",
                "import",
                "--data-center",
                "eu2",
                "--protocol",
                "smtp",
            ])
            .args(["--database-url", app.database_url()])
            .args(extra)
            .arg(&file)
            .output()
            .expect("run mailconnect")
    };
    let mut watch = client(&app)
        .watch_allowlist(authed(
            &app.platform_token(),
            WatchAllowlistRequest {
                from_version: 0,
                data_center: "eu2".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    let refused = import(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("line 3: \"-\": empty entry"), "{stderr}");
    assert!(stderr.contains("nothing published"), "{stderr}");
    let status = get_as(&app.platform_token(), &app, "eu2", &[])
        .await
        .unwrap_err();
    let metadata = assert_error(&status, Code::FailedPrecondition, "ALLOWLIST_NOT_PUBLISHED");
    assert_eq!(metadata["data_center"], "eu2");

    let imported = import(&["--skip-invalid"]);
    let stdout = String::from_utf8_lossy(&imported.stdout);
    let stderr = String::from_utf8_lossy(&imported.stderr);
    assert!(imported.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("line 3"), "still reported: {stderr}");
    assert!(
        stdout.contains("as version 1 (12 added, 0 removed)"),
        "{stdout}"
    );
    // Written by another process: this replica's cache learns of it through the database.
    let eu2 = eventually("the imported list is served", || async {
        get_as(&app.platform_token(), &app, "eu2", &[Protocol::Smtp])
            .await
            .ok()
            .filter(|list| list.version == 1)
    })
    .await;
    assert_eq!(cidrs(&eu2), SEED_SMTP);

    // Published by another process: found by the watcher's periodic read of the database.
    let change = next(&mut watch).await;
    assert_eq!((change.version, change.data_center.as_str()), (1, "eu2"));
    assert_eq!(change.added, SEED_SMTP);
}

/// Migrating again publishes nothing: an operator's publication (even an empty list) stays.
async fn initial_lists_are_published_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let cleared = publish(&app, "na1", Protocol::Smtp, &[]).await;
    assert_eq!((cleared.version, cleared.removed.len()), (3, 12));
    let migrated = mailconnect()
        .args(["migrate", "--database-url", app.database_url()])
        .output()
        .expect("run mailconnect");
    let stdout = String::from_utf8_lossy(&migrated.stdout);
    assert!(
        migrated.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    assert!(stdout.contains("applied 0 migration(s)"), "{stdout}");
    assert!(!stdout.contains("initial allowlist"), "{stdout}");
    let smtp = get(&app, "na1", &[Protocol::Smtp]).await;
    assert_eq!(smtp.version, 3);
    assert!(smtp.ranges.is_empty());
}

/// A dataset for the golden files: SMTP and IMAP sharing ranges, an IPv6 range, and an upcoming
/// IMAP range announced for 2099.
async fn publish_golden_dataset(app: &TestApp) {
    publish(
        app,
        "gold1",
        Protocol::Smtp,
        &[
            "141.193.184.0/27",
            "143.244.82.12",
            "143.244.82.13",
            "143.244.82.14",
            "143.244.82.15",
            "143.244.87.0/25",
            "2600:1f18::/36",
        ],
    )
    .await;
    let imap = [
        "141.193.184.0/27",
        "143.244.82.8",
        "143.244.82.9",
        "2600:1f18::/36",
    ];
    publish(app, "gold1", Protocol::Imap, &imap).await;
    let mut announced = publish_request("gold1", Protocol::Imap, &imap);
    announced.ranges.push("54.174.62.196".into());
    announced.effective_time = Some(Timestamp {
        seconds: FUTURE,
        nanos: 0,
    });
    let response = try_publish(app, announced).await.unwrap();
    assert_eq!(response.added, ["54.174.62.196/32"]);
}

/// Publication times differ from run to run: golden files hold `<published>` instead.
fn normalise_times(content: &str) -> String {
    let shape = |candidate: &str, pattern: &str| {
        candidate.len() == pattern.len()
            && candidate
                .chars()
                .zip(pattern.chars())
                .all(|(c, p)| match p {
                    'd' => c.is_ascii_digit(),
                    other => c == other,
                })
    };
    let mut out = String::new();
    let mut rest = content;
    'scan: while !rest.is_empty() {
        for pattern in ["dddd-dd-ddTdd:dd:ddZ", "dddd-dd-dd-dd-dd-dd"] {
            if let Some(candidate) = rest.get(..pattern.len())
                && shape(candidate, pattern)
                && !candidate.starts_with("2099-")
            {
                out.push_str("<published>");
                rest = &rest[pattern.len()..];
                continue 'scan;
            }
        }
        let next = rest.chars().next().unwrap();
        out.push(next);
        rest = &rest[next.len_utf8()..];
    }
    out
}

/// Compares with `tests/golden/allowlist/NAME`; `MAILCONNECT_UPDATE_GOLDEN=1` rewrites the file.
fn assert_golden(name: &str, content: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/allowlist")
        .join(name);
    let content = normalise_times(content);
    if std::env::var_os("MAILCONNECT_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &content).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (MAILCONNECT_UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    assert_eq!(content, expected, "{name} differs from its golden file");
}

async fn export(
    app: &TestApp,
    format: ExportFormat,
    aggregate: bool,
    protocols: &[Protocol],
) -> (String, String, String) {
    let response = client(app)
        .export_allowlist(authed(
            &app.platform_token(),
            ExportAllowlistRequest {
                protocols: protocols.iter().map(|&p| p.into()).collect(),
                format: format.into(),
                aggregate,
                data_center: "gold1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.version, 3);
    assert!(response.content.ends_with('\n'));
    (response.content, response.content_type, response.file_name)
}

async fn every_export_format_matches_its_golden_file(backend: Backend) {
    let app = spawn_app(backend).await;
    publish_golden_dataset(&app).await;
    for (format, name, content_type) in [
        (
            ExportFormat::Plain,
            "gold1.txt",
            "text/plain; charset=utf-8",
        ),
        (ExportFormat::Csv, "gold1.csv", "text/csv; charset=utf-8"),
        (ExportFormat::Json, "gold1.json", "application/json"),
        (
            ExportFormat::Nginx,
            "gold1.conf",
            "text/plain; charset=utf-8",
        ),
        (
            ExportFormat::Iptables,
            "gold1.rules",
            "text/plain; charset=utf-8",
        ),
        (
            ExportFormat::Nftables,
            "gold1.nft",
            "text/plain; charset=utf-8",
        ),
        (
            ExportFormat::Postfix,
            "gold1.cidr",
            "text/plain; charset=utf-8",
        ),
    ] {
        let (content, actual_type, file_name) = export(&app, format, false, &[]).await;
        assert_eq!(actual_type, content_type, "{format:?}");
        let extension = name.rsplit('.').next().unwrap();
        assert_eq!(
            file_name,
            format!("mailconnect-allowlist-gold1-v3.{extension}")
        );
        assert_golden(name, &content);
    }
    let (plain, ..) = export(&app, ExportFormat::Plain, true, &[]).await;
    assert_golden("gold1-aggregated.txt", &plain);
    let (smtp, ..) = export(&app, ExportFormat::Plain, true, &[Protocol::Smtp]).await;
    assert_golden("gold1-smtp-aggregated.txt", &smtp);
    let (csv, ..) = export(&app, ExportFormat::Csv, true, &[]).await;
    assert_golden("gold1-aggregated.csv", &csv);
    let (unspecified, ..) = export(&app, ExportFormat::Unspecified, false, &[]).await;
    assert_golden("gold1.txt", &unspecified);
}

async fn json_export_parses_back_to_the_same_set(backend: Backend) {
    let app = spawn_app(backend).await;
    publish_golden_dataset(&app).await;
    let (content, ..) = export(&app, ExportFormat::Json, false, &[]).await;
    let document: serde_json::Value = serde_json::from_str(&content).unwrap();
    assert_eq!(document["syncToken"], "3");
    let mut exported = BTreeSet::new();
    for (list, key) in [("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")] {
        for prefix in document[list].as_array().unwrap() {
            assert_eq!(prefix["region"], "gold1");
            exported.insert((
                prefix[key].as_str().unwrap().to_owned(),
                prefix["service"].as_str().unwrap().to_owned(),
                prefix["upcoming"].as_bool().unwrap(),
            ));
        }
    }
    let mut published = BTreeSet::new();
    for range in get(&app, "gold1", &[]).await.ranges {
        for protocol in range.protocols() {
            let service = protocol
                .as_str_name()
                .trim_start_matches("PROTOCOL_")
                .to_owned();
            published.insert((range.cidr.clone(), service, range.upcoming));
        }
    }
    assert_eq!(exported, published);
    assert_eq!(exported.len(), 12);
}

async fn check_address_at_the_edges(backend: Backend) {
    let app = spawn_app(backend).await;
    publish(&app, "v6dc", Protocol::Imap, &["2600:1f18::/36"]).await;
    // 141.193.184.0/27 is in both seeded lists of na1.
    for inside in ["141.193.184.0", "141.193.184.31", "::ffff:141.193.184.7"] {
        let response = check(&app, inside).await.unwrap();
        assert!(response.r#match, "{inside}");
        assert_eq!(response.matched_ranges.len(), 1, "{inside}");
        let range = &response.matched_ranges[0];
        assert_eq!(range.cidr, "141.193.184.0/27");
        assert_eq!(range.data_center, "na1");
        assert_eq!(
            range.protocols,
            [Protocol::Smtp as i32, Protocol::Imap as i32]
        );
        assert!(!range.upcoming);
    }
    for outside in ["141.193.183.255", "141.193.184.32", "8.8.8.8"] {
        let response = check(&app, outside).await.unwrap();
        assert!(!response.r#match, "{outside}");
        assert!(response.matched_ranges.is_empty(), "{outside}");
    }
    // Single addresses of one protocol.
    let single = check(&app, "143.244.82.12").await.unwrap();
    assert_eq!(single.matched_ranges[0].cidr, "143.244.82.12/32");
    assert_eq!(single.matched_ranges[0].protocols, [Protocol::Smtp as i32]);

    for inside in ["2600:1f18::", "2600:1f18:fff:ffff:ffff:ffff:ffff:ffff"] {
        let response = check(&app, inside).await.unwrap();
        assert!(response.r#match, "{inside}");
        assert_eq!(response.matched_ranges[0].cidr, "2600:1f18::/36");
        assert_eq!(response.matched_ranges[0].data_center, "v6dc");
    }
    for outside in [
        "2600:1f18:1000::",
        "2600:1f17:ffff:ffff:ffff:ffff:ffff:ffff",
    ] {
        assert!(!check(&app, outside).await.unwrap().r#match, "{outside}");
    }

    for malformed in [
        "141.193.184",
        "",
        "141.193.184.0/27",
        "not-an-ip",
        "2600:1f18::g",
    ] {
        let status = check(&app, malformed).await.unwrap_err();
        assert_eq!(
            violated_fields_with_reason(&status, "INVALID_IP_ADDRESS"),
            ["ip_address"],
            "{malformed:?}"
        );
    }
}

async fn publications_are_versioned_with_their_diff(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = publish(
        &app,
        "pub1",
        Protocol::Smtp,
        &["8.8.8.0/24", "1.1.1.1", " 1.1.1.1/32 "],
    )
    .await;
    assert_eq!(first.version, 1);
    assert_eq!(
        first.added,
        ["1.1.1.1/32", "8.8.8.0/24"],
        "duplicates merged"
    );
    assert!(first.removed.is_empty());

    let etag = get(&app, "pub1", &[]).await.etag;
    assert_eq!(etag, first.etag);
    let mut second = publish_request("pub1", Protocol::Smtp, &["1.1.1.1", "9.9.9.9"]);
    second.etag = etag.clone();
    let second = try_publish(&app, second).await.unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(second.added, ["9.9.9.9/32"]);
    assert_eq!(second.removed, ["8.8.8.0/24"]);

    // The etag of version 1 is stale now.
    let mut stale = publish_request("pub1", Protocol::Smtp, &["1.1.1.1"]);
    stale.etag = etag;
    let status = try_publish(&app, stale).await.unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    let mut foreign = publish_request("pub1", Protocol::Smtp, &["1.1.1.1"]);
    foreign.etag = "garbage".into();
    assert_error(
        &try_publish(&app, foreign).await.unwrap_err(),
        Code::Aborted,
        "ETAG_MISMATCH",
    );

    // Another protocol of the same data center is the next version of its list.
    let third = publish(&app, "pub1", Protocol::Imap, &["9.9.9.9"]).await;
    assert_eq!(third.version, 3);

    // Nothing to change: no version.
    let same = publish(&app, "pub1", Protocol::Smtp, &["9.9.9.9", "1.1.1.1"]).await;
    assert_eq!(same.version, 3);
    assert!(same.added.is_empty() && same.removed.is_empty());

    // Validation only: the diff, no version.
    let mut dry = publish_request("pub1", Protocol::Smtp, &["1.1.1.1"]);
    dry.validate_only = true;
    let dry = try_publish(&app, dry).await.unwrap();
    assert_eq!(
        (dry.version, dry.removed.as_slice()),
        (3, ["9.9.9.9/32".to_owned()].as_slice())
    );
    assert_eq!(get(&app, "pub1", &[Protocol::Smtp]).await.ranges.len(), 2);

    // The history, paginated.
    let list = |since_version: i64, page_size: i32, page_token: String| {
        let app = &app;
        async move {
            client(app)
                .list_allowlist_changes(authed(
                    &app.platform_token(),
                    ListAllowlistChangesRequest {
                        since_version,
                        page_size,
                        page_token,
                        data_center: "pub1".into(),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let page = list(0, 2, String::new()).await.unwrap();
    assert_eq!(page.current_version, 3);
    let summary: Vec<(i64, Vec<String>, Vec<String>)> = page
        .changes
        .iter()
        .map(|c| (c.version, c.added.clone(), c.removed.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, vec!["1.1.1.1/32".into(), "8.8.8.0/24".into()], vec![]),
            (2, vec!["9.9.9.9/32".into()], vec!["8.8.8.0/24".into()]),
        ]
    );
    assert!(!page.next_page_token.is_empty());
    let rest = list(0, 2, page.next_page_token.clone()).await.unwrap();
    assert_eq!(rest.changes.len(), 1);
    assert_eq!(
        (rest.changes[0].version, rest.changes[0].protocol),
        (3, Protocol::Imap as i32)
    );
    assert!(rest.next_page_token.is_empty());
    assert_eq!(list(2, 0, String::new()).await.unwrap().changes.len(), 1);
    assert!(list(3, 0, String::new()).await.unwrap().changes.is_empty());

    let ahead = list(4, 0, String::new()).await.unwrap_err();
    assert_error(&ahead, Code::OutOfRange, "VERSION_AHEAD");
    assert_eq!(
        violated_fields(&list(-1, 0, String::new()).await.unwrap_err()),
        ["since_version"]
    );
    assert_eq!(
        violated_fields(&list(0, -1, String::new()).await.unwrap_err()),
        ["page_size"]
    );
    assert_eq!(
        violated_fields(&list(0, 0, "nope".into()).await.unwrap_err()),
        ["page_token"]
    );
    assert_eq!(
        violated_fields(&list(1, 2, page.next_page_token).await.unwrap_err()),
        ["page_token"],
        "a token is bound to its since_version"
    );
}

/// Concurrent publications take turns: no lost update, no version twice, and of conditional
/// publications on one etag exactly one wins.
async fn concurrent_publications_get_distinct_versions(backend: Backend) {
    let app = spawn_app(backend).await;
    let tasks: Vec<_> = (1..=8_u8)
        .map(|n| {
            let protocol = if n % 2 == 0 {
                Protocol::Smtp
            } else {
                Protocol::Imap
            };
            let request = publish_request("race1", protocol, &[&format!("9.9.9.{n}")]);
            let mut client = client(&app);
            let token = app.platform_token();
            tokio::spawn(async move { client.publish_ranges(authed(&token, request)).await })
        })
        .collect();
    let mut versions = BTreeSet::new();
    for task in tasks {
        versions.insert(task.await.unwrap().unwrap().into_inner().version);
    }
    assert_eq!(versions, (1..=8).collect::<BTreeSet<i64>>());
    let history = client(&app)
        .list_allowlist_changes(authed(
            &app.platform_token(),
            ListAllowlistChangesRequest {
                data_center: "race1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<i64> = history
        .changes
        .iter()
        .map(|change| change.version)
        .collect();
    assert_eq!(listed, (1..=8).collect::<Vec<i64>>());
    // Each protocol's list is its last publication, and the diffs chain without gaps.
    let final_list = get(&app, "race1", &[]).await;
    assert_eq!(final_list.ranges.len(), 2);
    for protocol in [Protocol::Smtp as i32, Protocol::Imap as i32] {
        let mut current: BTreeSet<String> = BTreeSet::new();
        for change in history
            .changes
            .iter()
            .filter(|change| change.protocol == protocol)
        {
            for removed in &change.removed {
                assert!(
                    current.remove(removed),
                    "removed {removed} that was not there"
                );
            }
            current.extend(change.added.iter().cloned());
        }
        let published: BTreeSet<String> = final_list
            .ranges
            .iter()
            .filter(|range| range.protocols.contains(&protocol))
            .map(|range| range.cidr.clone())
            .collect();
        assert_eq!(current, published);
    }

    let etag = final_list.etag;
    let tasks: Vec<_> = (1..=6_u8)
        .map(|n| {
            let mut request = publish_request("race1", Protocol::Smtp, &[&format!("8.8.8.{n}")]);
            request.etag = etag.clone();
            let mut client = client(&app);
            let token = app.platform_token();
            tokio::spawn(async move { client.publish_ranges(authed(&token, request)).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(response) => {
                assert_eq!(response.into_inner().version, 9);
                won += 1;
            }
            Err(status) => {
                assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
            }
        }
    }
    assert_eq!(won, 1);
}

async fn a_bad_batch_names_every_bad_index(backend: Backend) {
    let app = spawn_app(backend).await;
    let request = publish_request(
        "na1",
        Protocol::Smtp,
        &[
            "141.193.184.0/27",
            "",
            "-",
            "10.0.0.0/8",
            "141.193.184.7/27",
            "1.2.3.4/40",
            "bogus",
            "2001:db8::/32",
            "143.244.82.12",
        ],
    );
    let status = try_publish(&app, request).await.unwrap_err();
    let fields = violated_fields_with_reason(&status, "INVALID_CIDR");
    assert_eq!(
        fields,
        [
            "ranges[1]",
            "ranges[2]",
            "ranges[3]",
            "ranges[4]",
            "ranges[5]",
            "ranges[6]",
            "ranges[7]"
        ]
    );
    let violations = status.get_details_bad_request().unwrap().field_violations;
    assert!(
        violations[3].description.contains("141.193.184.0/27"),
        "{:?}",
        violations[3]
    );
    assert!(
        violations[2].description.contains("private-use"),
        "{:?}",
        violations[2]
    );
    // Nothing was published.
    assert_eq!(get(&app, "na1", &[Protocol::Smtp]).await.version, 2);

    let status = try_publish(
        &app,
        publish_request("", Protocol::Unspecified, &["1.1.1.1", "-"]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_fields_with_reason(&status, "INVALID_ARGUMENT"),
        ["data_center", "protocol", "ranges[1]"]
    );
    let mut bad_time = publish_request("bad1", Protocol::Smtp, &["1.1.1.1", "-"]);
    bad_time.effective_time = Some(Timestamp {
        seconds: 0,
        nanos: -5,
    });
    assert_eq!(
        violated_fields(&try_publish(&app, bad_time).await.unwrap_err()),
        ["ranges[1]", "effective_time"]
    );
}

async fn a_watcher_receives_the_history_then_new_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    publish(&app, "watch1", Protocol::Smtp, &["1.1.1.1"]).await;
    let watch = |from_version: i64| {
        let app = &app;
        async move {
            client(app)
                .watch_allowlist(authed(
                    &app.user_token(5, 1, &[]),
                    WatchAllowlistRequest {
                        from_version,
                        data_center: String::new(),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    host_account(&app, 5, "watch1").await;
    let mut stream = watch(0).await.unwrap();
    let history = next(&mut stream).await;
    assert_eq!(
        (history.version, history.added.as_slice()),
        (1, ["1.1.1.1/32".to_owned()].as_slice())
    );

    publish(&app, "watch1", Protocol::Smtp, &["9.9.9.9"]).await;
    publish(&app, "other1", Protocol::Smtp, &["9.9.9.9"]).await;
    publish(&app, "watch1", Protocol::Imap, &["8.8.8.8"]).await;
    let live = next(&mut stream).await;
    assert_eq!(live.version, 2);
    assert_eq!(live.data_center, "watch1");
    assert_eq!(live.added, ["9.9.9.9/32"]);
    assert_eq!(live.removed, ["1.1.1.1/32"]);
    assert_eq!(live.protocol, Protocol::Smtp as i32);
    let imap = next(&mut stream).await;
    assert_eq!(
        (imap.version, imap.protocol),
        (3, Protocol::Imap as i32),
        "other data centers are not streamed"
    );

    // Starting from the current version replays nothing; a later publication arrives.
    let mut from_now = watch(3).await.unwrap();
    // A client going away ends its stream and nothing else.
    drop(stream);
    publish(&app, "watch1", Protocol::Imap, &[]).await;
    let removal = next(&mut from_now).await;
    assert_eq!(
        (removal.version, removal.removed.as_slice()),
        (4, ["8.8.8.8/32".to_owned()].as_slice())
    );

    assert_error(
        &watch(5).await.unwrap_err(),
        Code::OutOfRange,
        "VERSION_AHEAD",
    );
    assert_eq!(
        violated_fields(&watch(-1).await.unwrap_err()),
        ["from_version"]
    );

    // Shutting down ends open streams with UNAVAILABLE instead of holding the drain open.
    app.stop().await;
    let ended = tokio::time::timeout(Duration::from_secs(60), from_now.message())
        .await
        .expect("the stream ends");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

async fn accounts_see_only_their_data_center(backend: Backend) {
    let app = spawn_app(backend).await;
    host_account(&app, 7, "eu1").await;
    publish(&app, "eu1", Protocol::Smtp, &["18.200.0.0/16"]).await;
    let eu_user = app.user_token(7, 1, &[]);
    let eu = get_as(&eu_user, &app, "", &[]).await.unwrap();
    assert_eq!(eu.data_center, "eu1");
    assert_eq!(cidrs(&eu), ["18.200.0.0/16"]);
    assert_eq!(eu.version, 1);
    assert_eq!(eu.data_center_source(), DataCenterSource::Account);
    // Naming one's own data center is fine; another one is not.
    let named = get_as(&eu_user, &app, "eu1", &[]).await.unwrap();
    assert_eq!(named.version, 1);
    assert_eq!(named.data_center_source(), DataCenterSource::Account);
    let status = get_as(&eu_user, &app, "na1", &[]).await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");

    // Account 1 is not in the directory: it gets the default data center's list, and is told so.
    let na_user = app.user_token(1, 1, &[Role::SuperAdmin]);
    let na = get_as(&na_user, &app, "", &[]).await.unwrap();
    assert_eq!(na.data_center, "na1");
    assert_eq!(na.data_center_source(), DataCenterSource::UnknownAccount);
    assert!(!cidrs(&na).contains(&"18.200.0.0/16"));
    let platform = get_as(&app.platform_token(), &app, "", &[]).await.unwrap();
    assert_eq!(platform.data_center_source(), DataCenterSource::Default);
    let named = get_as(&app.platform_token(), &app, "eu1", &[])
        .await
        .unwrap();
    assert_eq!(named.data_center_source(), DataCenterSource::Requested);

    // A data center nothing was ever published for is no empty list ("allow nothing").
    host_account(&app, 8, "ap1").await;
    let ap_user = app.user_token(8, 1, &[]);
    let status = get_as(&ap_user, &app, "", &[]).await.unwrap_err();
    let metadata = assert_error(&status, Code::FailedPrecondition, "ALLOWLIST_NOT_PUBLISHED");
    assert_eq!(metadata["data_center"], "ap1");
    assert!(
        status.message().contains("mailconnect allowlist import"),
        "{status:?}"
    );
    let status = client(&app)
        .export_allowlist(authed(&ap_user, ExportAllowlistRequest::default()))
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "ALLOWLIST_NOT_PUBLISHED");

    let changes = client(&app)
        .list_allowlist_changes(authed(&eu_user, ListAllowlistChangesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changes.changes.len(), 1);
    assert_eq!(changes.changes[0].data_center, "eu1");

    let export = client(&app)
        .export_allowlist(authed(&eu_user, ExportAllowlistRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.content, "18.200.0.0/16\n");
    assert_eq!(export.data_center_source(), DataCenterSource::Account);
}

async fn plain_users_cannot_publish(backend: Backend) {
    let app = spawn_app(backend).await;
    for roles in [&[][..], &[Role::SuperAdmin, Role::AccountAccess][..]] {
        let status = client(&app)
            .publish_ranges(authed(
                &app.user_token(1, 1, roles),
                publish_request("na1", Protocol::Smtp, &["1.1.1.1"]),
            ))
            .await
            .unwrap_err();
        let metadata = assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
        assert_eq!(metadata["required_roles"], "platform");
    }
    let status = client(&app)
        .publish_ranges(publish_request("na1", Protocol::Smtp, &["1.1.1.1"]))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "MISSING_TOKEN");
    assert_eq!(get(&app, "na1", &[Protocol::Smtp]).await.version, 2);
}

async fn ranges_can_be_announced_in_advance(backend: Backend) {
    let app = spawn_app(backend).await;
    publish(&app, "adv1", Protocol::Smtp, &["1.1.1.1"]).await;
    let future = Some(Timestamp {
        seconds: FUTURE,
        nanos: 0,
    });
    let mut announce = publish_request("adv1", Protocol::Smtp, &["1.1.1.1", "9.9.9.0/24"]);
    announce.effective_time = future;
    try_publish(&app, announce).await.unwrap();
    let list = get(&app, "adv1", &[]).await;
    let flags: Vec<(&str, bool)> = list
        .ranges
        .iter()
        .map(|r| (r.cidr.as_str(), r.upcoming))
        .collect();
    assert_eq!(flags, [("1.1.1.1/32", false), ("9.9.9.0/24", true)]);
    assert_eq!(list.ranges[1].effective_time, future);

    let upcoming = check(&app, "9.9.9.77").await.unwrap();
    assert!(upcoming.r#match);
    assert!(upcoming.matched_ranges[0].upcoming);

    // A removal announced in advance keeps the range listed until then.
    let mut retire = publish_request("adv1", Protocol::Smtp, &["9.9.9.0/24"]);
    retire.effective_time = future;
    let retired = try_publish(&app, retire).await.unwrap();
    assert_eq!(retired.removed, ["1.1.1.1/32"]);
    let list = get(&app, "adv1", &[]).await;
    assert_eq!(cidrs(&list), ["1.1.1.1/32", "9.9.9.0/24"]);
    assert!(check(&app, "1.1.1.1").await.unwrap().r#match);
    let changes = client(&app)
        .list_allowlist_changes(authed(
            &app.platform_token(),
            ListAllowlistChangesRequest {
                since_version: 2,
                data_center: "adv1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changes.changes[0].effective_time, future);

    // Kept after all: listed as before, no longer retiring.
    publish(&app, "adv1", Protocol::Smtp, &["1.1.1.1", "9.9.9.0/24"]).await;
    let nginx = client(&app)
        .export_allowlist(authed(
            &app.platform_token(),
            ExportAllowlistRequest {
                format: ExportFormat::Nginx.into(),
                data_center: "adv1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .content;
    assert!(nginx.contains("allow 1.1.1.1/32;\n"), "{nginx}");
    assert!(
        nginx.contains("allow 9.9.9.0/24; # upcoming: traffic starts 2099-01-01T00:00:00Z\n"),
        "{nginx}"
    );
}

async fn reads_refuse_bad_filters(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user_token(1, 1, &[]);
    let status = client(&app)
        .get_allowlist(authed(
            &token,
            GetAllowlistRequest {
                protocols: vec![Protocol::Smtp.into(), Protocol::Unspecified.into(), 42],
                data_center: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["protocols[1]", "protocols[2]"]);
    let status = client(&app)
        .export_allowlist(authed(
            &token,
            ExportAllowlistRequest {
                format: 99,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["format"]);
    let status = client(&app)
        .export_allowlist(authed(
            &token,
            ExportAllowlistRequest {
                protocols: vec![0],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["protocols[0]"]);
    let status = get_as(&app.platform_token(), &app, "NA 1", &[])
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["data_center"]);
}

backend_tests!(
    seed_lists_come_back_exactly,
    import_command_reports_bad_lines,
    initial_lists_are_published_once,
    every_export_format_matches_its_golden_file,
    json_export_parses_back_to_the_same_set,
    check_address_at_the_edges,
    publications_are_versioned_with_their_diff,
    a_bad_batch_names_every_bad_index,
    concurrent_publications_get_distinct_versions,
    a_watcher_receives_the_history_then_new_changes,
    accounts_see_only_their_data_center,
    plain_users_cannot_publish,
    ranges_can_be_announced_in_advance,
    reads_refuse_bad_filters,
);

/// Shows that `app` answers GetAllowlist for `data_center` from its cache: the version in the
/// database is raised behind every replica's back (triggers off for that session) and `app` still
/// serves the old one. Retried until the notifications of earlier writes (this replica's own
/// included) have all been applied, since each empties the entry. Returns the cached version and
/// the one in the database.
async fn prove_cached(app: &TestApp, data_center: &str) -> (i64, i64) {
    eventually("GetAllowlist is answered from the cache", || async {
        let cached = get(app, data_center, &[]).await.version;
        let in_database = cached + 100;
        app.postgres_sql(&format!(
            "SET session_replication_role = replica; \
             UPDATE allowlist_data_centers SET version = {in_database} WHERE id = '{data_center}'"
        ));
        (get(app, data_center, &[]).await.version == cached).then_some((cached, in_database))
    })
    .await
}

/// Two replicas on one Postgres database: what one publishes, the other serves, although it had
/// the old list cached (its read cache learns of the change from the trigger's NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_on_one_replica_is_served_by_the_other() {
    let first = spawn_app(Backend::Postgres).await;
    let second = first.spawn_replica(|_| {}).await;
    publish(&first, "rep1", Protocol::Smtp, &["54.174.63.0/24"]).await;
    assert!(check(&second, "54.174.63.7").await.unwrap().r#match);
    let (_, in_database) = prove_cached(&second, "rep1").await;

    let started = std::time::Instant::now();
    publish(&first, "rep1", Protocol::Smtp, &["143.244.90.0/24"]).await;
    let seen = eventually("the second replica serves the new list", || async {
        Some(get(&second, "rep1", &[]).await).filter(|list| list.version == in_database + 1)
    })
    .await;
    let after = started.elapsed();
    assert_eq!(cidrs(&seen), ["143.244.90.0/24"]);
    let matched = check(&second, "143.244.90.9").await.unwrap();
    assert!(matched.r#match, "CheckAddress's index was rebuilt too");
    assert!(!check(&second, "54.174.63.7").await.unwrap().r#match);
    eprintln!("the other replica served the publication {after:?} after it was sent");
}

/// A replica whose change listener loses its connection stops answering from its cache: a change
/// nobody announced is seen once the listener is gone (and again after it reconnected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_its_listener_reads_the_database() {
    let app = spawn_app(Backend::Postgres).await;
    publish(&app, "rep2", Protocol::Imap, &["141.193.190.0/24"]).await;
    let (_, in_database) = prove_cached(&app, "rep2").await;
    app.postgres_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() \
         AND application_name = 'mailconnect cache listener'",
    );
    eventually(
        "the unannounced change is read from the database",
        || async { Some(get(&app, "rep2", &[]).await).filter(|list| list.version == in_database) },
    )
    .await;
}

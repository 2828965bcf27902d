//! Mailbox credentials at rest, on both backends: sealed per field (no secret in the database's
//! bytes), bound to their row (a ciphertext moved to another connection does not open), and
//! re-sealed under a new key by `mailconnect rotate-keys` (resumable, nothing left behind).

use std::process::Command;

use diesel::sql_types::BigInt;
use diesel::{Connection as _, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};
use mailconnect::domain::connection::parse_connection_name;
use mailconnect::domain::sealing::Keyring;
use mailconnect::domain::secret::Secret;
use mailconnect::grpc::proto::inbox_connection_service_client::InboxConnectionServiceClient;
use mailconnect::grpc::proto::{
    ConnectPersonalInboxRequest, Provider, ReauthorizeConnectionRequest, Tier,
};
use mailconnect::service::inbox_connections::store::InboxConnectionStore;
use mailconnect::service::key_rotation::rotate_keys;
use mailconnect::storage::{Database, DatabaseUrl};

use crate::backend_tests;
use crate::harness::{Backend, TEST_ENCRYPTION_KEYS, TestApp, authed, spawn_app};
use crate::inbox_world::{ADA, BOB, client, grant, seed_directory, token};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Runs SQL on the test's database, whatever its backend.
fn execute(app: &TestApp, sql: &str) -> usize {
    let url = app.database_url();
    match url.strip_prefix("sqlite://") {
        Some(path) => diesel::sql_query(sql)
            .execute(&mut SqliteConnection::establish(path).unwrap())
            .unwrap(),
        None => diesel::sql_query(sql)
            .execute(&mut PgConnection::establish(url).unwrap())
            .unwrap(),
    }
}

/// The `n` a `SELECT COUNT(*) AS n …` gives on the test's database.
pub fn count_rows(app: &TestApp, sql: &str) -> i64 {
    let url = app.database_url();
    let rows: Vec<Count> = match url.strip_prefix("sqlite://") {
        Some(path) => diesel::sql_query(sql)
            .load(&mut SqliteConnection::establish(path).unwrap())
            .unwrap(),
        None => diesel::sql_query(sql)
            .load(&mut PgConnection::establish(url).unwrap())
            .unwrap(),
    };
    rows[0].n
}

/// How many credential rows the connection named `name` has.
pub fn stored_credentials(app: &TestApp, name: &str) -> i64 {
    let id = parse_connection_name("name", name).unwrap();
    count_rows(
        app,
        &format!("SELECT COUNT(*) AS n FROM connection_credentials WHERE connection_id = {id}"),
    )
}

/// Every byte the database keeps: `pg_dump` of the test database, or the SQLite file and its
/// write-ahead log.
pub(crate) fn database_bytes(app: &TestApp) -> Vec<u8> {
    let url = app.database_url();
    match url.strip_prefix("sqlite://") {
        Some(path) => {
            let mut bytes = std::fs::read(path).unwrap();
            bytes.extend(std::fs::read(format!("{path}-wal")).unwrap_or_default());
            bytes
        }
        None => {
            let output = Command::new("pg_dump")
                .arg("--data-only")
                .arg(url)
                .output()
                .expect("pg_dump (Debian's postgresql-client) is needed to read the test database");
            assert!(output.status.success(), "pg_dump failed: {output:?}");
            output.stdout
        }
    }
}

pub(crate) fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

async fn connect(app: &TestApp, user: i64, address: &str, refresh_token: &str) -> String {
    client(app)
        .connect_personal_inbox(authed(
            &token(app, user),
            ConnectPersonalInboxRequest {
                email_address: address.into(),
                provider: Provider::Gmail.into(),
                credentials: Some(grant(address, refresh_token)),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap()
        .name
}

fn store(app: &TestApp) -> Database {
    Database::new(DatabaseUrl::parse(app.database_url()).unwrap(), 1).unwrap()
}

/// The refresh token each connection's credentials open to, with `keys`.
async fn opened(app: &TestApp, keys: &Keyring, name: &str) -> Result<String, String> {
    let id = parse_connection_name("name", name).unwrap();
    let sealed = store(app)
        .credentials(1, id)
        .await
        .unwrap()
        .expect("stored credentials");
    match sealed.open(keys, 1, id) {
        Ok(mailconnect::domain::credentials::Credentials::OAuth(grant)) => {
            Ok(grant.refresh_token.expose().to_owned())
        }
        Ok(other) => Err(format!("not a grant: {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}

async fn credentials_are_sealed_bound_and_rotated(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_directory(&app, Tier::Professional).await;
    const ADA_TOKEN: &str = "1//ada-refresh-token-7cbd1e";
    const BOB_TOKEN: &str = "1//bob-refresh-token-93af20";
    let ada = connect(&app, ADA, "ada@acme.example", ADA_TOKEN).await;
    let bob = connect(&app, BOB, "bob.b@acme.example", BOB_TOKEN).await;

    let bytes = database_bytes(&app);
    for secret in [ADA_TOKEN, BOB_TOKEN] {
        assert!(!contains(&bytes, secret), "{secret} is stored in clear");
    }
    let keys = Keyring::parse(&Secret::new(TEST_ENCRYPTION_KEYS.to_owned())).unwrap();
    assert_eq!(opened(&app, &keys, &ada).await.unwrap(), ADA_TOKEN);

    // Bob's ciphertext copied onto Ada's row: it does not open there.
    let (ada_id, bob_id) = (
        parse_connection_name("n", &ada).unwrap(),
        parse_connection_name("n", &bob).unwrap(),
    );
    execute(
        &app,
        &format!(
            "UPDATE connection_credentials SET refresh_token = \
             (SELECT refresh_token FROM connection_credentials WHERE connection_id = {bob_id}) \
             WHERE connection_id = {ada_id}"
        ),
    );
    let moved = opened(&app, &keys, &ada).await.unwrap_err();
    assert!(moved.contains("does not open"), "{moved}");
    assert_eq!(opened(&app, &keys, &bob).await.unwrap(), BOB_TOKEN);

    // A new key first: rotation re-seals what opens, leaves what does not, and a second run
    // finds nothing more to do.
    let new_key = Keyring::generate_entry("next");
    let both = Keyring::parse(&Secret::new(format!(
        "{},{TEST_ENCRYPTION_KEYS}",
        new_key.expose()
    )))
    .unwrap();
    let rotation = rotate_keys(&store(&app), &both).await.unwrap();
    assert_eq!((rotation.resealed, rotation.unreadable), (1, 1));
    let rotation = rotate_keys(&store(&app), &both).await.unwrap();
    assert_eq!((rotation.resealed, rotation.unreadable), (0, 1));
    let only_new = Keyring::parse(&new_key).unwrap();
    assert_eq!(opened(&app, &only_new, &bob).await.unwrap(), BOB_TOKEN);
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) AS n FROM connection_credentials WHERE key_id = 'next'"
        ),
        1
    );
}

/// The command an operator runs: `mailconnect rotate-keys` with the new key first.
async fn the_rotate_keys_command_reseals_everything(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_directory(&app, Tier::Professional).await;
    let name = connect(&app, ADA, "ada@acme.example", "1//rotate-me").await;
    let new_key = Keyring::generate_entry("k2");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_mailconnect"))
            .arg("rotate-keys")
            .env(
                "MAILCONNECT_ENCRYPTION_KEYS",
                format!("{},{TEST_ENCRYPTION_KEYS}", new_key.expose()),
            )
            .env("MAILCONNECT_DATABASE_URL", app.database_url())
            .env("MAILCONNECT_DATA_DIR", tempfile::tempdir().unwrap().path())
            .output()
            .unwrap()
    };
    let first = run();
    let printed = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{first:?}");
    assert!(
        printed.contains("re-sealed 1 credential(s) under key \"k2\""),
        "{printed}"
    );
    assert!(
        !String::from_utf8_lossy(&first.stderr).contains(new_key.expose()),
        "the key is never printed"
    );
    let second = run();
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("re-sealed 0 credential(s)"),
        "{second:?}"
    );
    let only_new = Keyring::parse(&new_key).unwrap();
    assert_eq!(
        opened(&app, &only_new, &name).await.unwrap(),
        "1//rotate-me"
    );
}

/// The real binary at debug level, asked to connect, refuse and reauthorize with secrets: no log
/// line carries one.
async fn secrets_never_reach_the_logs(backend: Backend) {
    let database = crate::harness::TestDatabase::create(backend);
    let mut server = crate::process::ServerProcess::start(
        &database,
        &[],
        &[
            ("RUST_LOG", "debug"),
            ("MAILCONNECT_ENCRYPTION_KEYS", TEST_ENCRYPTION_KEYS),
        ],
    );
    server.wait_until_serving().await;
    let mut client = InboxConnectionServiceClient::new(server.channel());
    let ada = crate::harness::user_token(1, ADA, &[]);
    const SECRETS: [&str; 4] = [
        "1//stored-refresh-token-5e1f",
        "password-refused-9b2c",
        "1//mismatched-grant-77aa",
        "1//reauthorized-token-c0de",
    ];
    let connected = client
        .connect_personal_inbox(authed(
            &ada,
            ConnectPersonalInboxRequest {
                email_address: "ada@acme.example".into(),
                provider: Provider::Gmail.into(),
                credentials: Some(grant("ada@acme.example", SECRETS[0])),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    let refused = client
        .connect_personal_inbox(authed(
            &ada,
            ConnectPersonalInboxRequest {
                email_address: "ada@nowhere-known.example".into(),
                provider: Provider::Imap.into(),
                credentials: Some(crate::inbox_world::password("ada", SECRETS[1])),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(!refused.message().contains(SECRETS[1]));
    let refused = client
        .connect_personal_inbox(authed(
            &ada,
            ConnectPersonalInboxRequest {
                email_address: "ada.b@acme.example".into(),
                provider: Provider::Gmail.into(),
                credentials: Some(grant("someone@else.example", SECRETS[2])),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert!(!format!("{refused:?}").contains(SECRETS[2]));
    client
        .reauthorize_connection(authed(
            &ada,
            ReauthorizeConnectionRequest {
                name: connected.name,
                credentials: Some(grant("ada@acme.example", SECRETS[3])),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    server.terminate();
    assert!(
        server
            .wait(std::time::Duration::from_secs(60))
            .await
            .success()
    );
    let logs = server.log_text();
    assert!(
        logs.contains("no OAuth client configured"),
        "the calls were logged: {logs}"
    );
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret} was logged");
    }
}

backend_tests!(
    credentials_are_sealed_bound_and_rotated,
    the_rotate_keys_command_reseals_everything,
    secrets_never_reach_the_logs,
);

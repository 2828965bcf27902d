//! `spawn_app()`: the application on a random port with a fresh database, connected clients and
//! a token maker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use diesel::{Connection, PgConnection, RunQueryDsl};
use mailconnect::app::Application;
use mailconnect::config::{
    DatabaseSettings, InboxSettings, KeySettings, LogFormat, ProbeSettings, Settings,
};
use mailconnect::domain::principal::{Principal, Role};
use mailconnect::domain::secret::Secret;
use mailconnect::grpc::proto::directory_service_client::DirectoryServiceClient;
use mailconnect::grpc::server::ServerSettings;
use mailconnect::service::clock::{Clock, SystemClock};
use mailconnect::tokens::TokenKeys;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret-0123";
/// The credential key of every test server (replicas of one database share it).
pub const TEST_ENCRYPTION_KEYS: &str = "test1:bWFpbGNvbm5lY3QtdGVzdC1rZXktMDEyMzQ1Njc4OSE=";

/// Whether the long parts run (`scripts/test --long`, which CI passes, sets
/// `MAILCONNECT_TEST_LONG=1`): more cycles, more cases, the same assertions.
pub fn long_tests() -> bool {
    std::env::var_os("MAILCONNECT_TEST_LONG").is_some_and(|value| value == "1")
}

/// The Postgres server the tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("MAILCONNECT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database that exists for one test and is dropped after it.
pub enum TestDatabase {
    Postgres {
        name: String,
        url: String,
    },
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    /// Another replica's view of a database a [`TestApp`] owns: never dropped by this one.
    Shared {
        url: String,
    },
}

impl TestDatabase {
    pub fn create(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => {
                let name = format!("mailconnect_test_{}", rand_suffix());
                let admin = postgres_admin_url();
                let mut conn = PgConnection::establish(&admin).unwrap_or_else(|e| {
                    panic!(
                        "Postgres at {admin} is needed by the tests (scripts/test starts it): {e}"
                    )
                });
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .expect("create test database");
                let url = match admin.rsplit_once('/') {
                    Some((server, _)) => format!("{server}/{name}"),
                    None => panic!("MAILCONNECT_TEST_POSTGRES_URL must end in /DATABASE"),
                };
                TestDatabase::Postgres { name, url }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.sqlite").display());
                TestDatabase::Sqlite { _dir: dir, url }
            }
        }
    }

    pub fn url(&self) -> &str {
        match self {
            TestDatabase::Postgres { url, .. }
            | TestDatabase::Sqlite { url, .. }
            | TestDatabase::Shared { url } => url,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { name, .. } = self {
            let name = name.clone();
            // Dropping happens inside the runtime; the blocking work goes to its own thread.
            let _ = std::thread::spawn(move || {
                if let Ok(mut conn) = PgConnection::establish(&postgres_admin_url()) {
                    let _ =
                        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut conn);
                }
            })
            .join();
        }
    }
}

pub fn rand_suffix() -> String {
    let n: u64 = rand::random();
    format!("{n:016x}")
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The plaintext health-only address, when the settings asked for one.
    pub health_addr: Option<SocketAddr>,
    pub channel: Channel,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    database: TestDatabase,
    _data_dir: tempfile::TempDir,
}

pub fn test_settings(database_url: &str, data_dir: PathBuf) -> Settings {
    Settings {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        keys: KeySettings {
            data_dir,
            jwt_secret: Some(Secret::new(TEST_SECRET.to_owned())),
            jwt_public_keys: vec![],
            jwt_issuer: None,
            jwt_audience: None,
        },
        database: DatabaseSettings {
            database_url: Some(Secret::new(database_url.to_owned())),
            db_max_connections: 4,
        },
        server: ServerSettings::default(),
        migrate_on_start: true,
        cache_entries: 10_000,
        default_data_center: "na1".to_owned(),
        shutdown_grace: Duration::from_secs(5),
        attempts_flush_interval: Duration::from_secs(1),
        log_format: LogFormat::Text,
        // Loopback and any port: the tests' mail servers listen on random loopback ports.
        probe: ProbeSettings {
            probe_allowed_ports: vec!["1-65535".parse().unwrap()],
            ..crate::mail_servers::probe_settings(&[])
        },
        inbox: InboxSettings {
            encryption_keys: Some(Secret::new(TEST_ENCRYPTION_KEYS.to_owned())),
            background_poll_interval: Duration::from_millis(20),
            ..defaults::<InboxSettings>()
        },
    }
}

/// A settings group as `mailconnect serve` has it with nothing set.
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"));
    T::from_arg_matches(&command.get_matches_from(["defaults"])).expect("defaults parse")
}

/// Starts the application on a fresh database and waits until it reports SERVING.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Like [`spawn_app`], with the test settings changed by `configure` first.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let app = start_app_with(TestDatabase::create(backend), configure).await;
    app.wait_until_serving().await;
    app
}

/// Starts the application without waiting for readiness.
pub async fn start_app(database: TestDatabase) -> TestApp {
    start_app_with(database, |_| {}).await
}

/// Starts the application with test settings changed by `configure`, without waiting for
/// readiness.
pub async fn start_app_with(
    database: TestDatabase,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    start_app_on(database, configure, Arc::new(SystemClock)).await
}

/// Like [`spawn_app_with`], with the use cases on `clock` (tests move time by hand).
pub async fn spawn_app_on(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
    clock: Arc<dyn Clock>,
) -> TestApp {
    let app = start_app_on(TestDatabase::create(backend), configure, clock).await;
    app.wait_until_serving().await;
    app
}

async fn start_app_on(
    database: TestDatabase,
    configure: impl FnOnce(&mut Settings),
    clock: Arc<dyn Clock>,
) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(database.url(), data_dir.path().to_owned());
    configure(&mut settings);
    let application = Application::build(settings)
        .await
        .expect("build application")
        .with_clock(clock);
    let addr = application.local_addr();
    let health_addr = application.health_addr();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    TestApp {
        addr,
        health_addr,
        channel,
        shutdown: Some(shutdown),
        server: Some(server),
        database,
        _data_dir: data_dir,
    }
}

impl TestApp {
    pub async fn health(&self, service: &str) -> Result<ServingStatus, Status> {
        let response = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?;
        Ok(response.into_inner().status())
    }

    /// Polls health until SERVING; readiness depends on the database, not on a clock, and the
    /// generous bound only turns a hang into a failure.
    pub async fn wait_until_serving(&self) {
        eventually("the application reports SERVING", || async {
            matches!(self.health("").await, Ok(ServingStatus::Serving)).then_some(())
        })
        .await;
    }

    pub fn token(&self, principal: &Principal) -> String {
        test_token(principal)
    }

    pub fn platform_token(&self) -> String {
        self.token(&Principal {
            subject: "platform".into(),
            account_id: None,
            user_id: None,
            roles: vec![Role::Platform],
        })
    }

    pub fn user_token(&self, account_id: i64, user_id: i64, roles: &[Role]) -> String {
        user_token(account_id, user_id, roles)
    }

    /// A second instance of the service on this one's database (another replica), SERVING.
    pub async fn spawn_replica(&self, configure: impl FnOnce(&mut Settings)) -> TestApp {
        self.spawn_replica_on(configure, Arc::new(SystemClock))
            .await
    }

    /// Another replica, its use cases on `clock`.
    pub async fn spawn_replica_on(
        &self,
        configure: impl FnOnce(&mut Settings),
        clock: Arc<dyn Clock>,
    ) -> TestApp {
        let url = self.database_url().to_owned();
        let replica = start_app_on(TestDatabase::Shared { url }, configure, clock).await;
        replica.wait_until_serving().await;
        replica
    }

    /// Runs SQL on the test's Postgres database behind the service's back.
    pub fn postgres_sql(&self, sql: &str) {
        use diesel::connection::SimpleConnection as _;
        PgConnection::establish(self.database_url())
            .expect("connect to the test database")
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The URL of the test's database, for commands run beside the server.
    pub fn database_url(&self) -> &str {
        self.database.url()
    }

    pub fn directory(&self) -> DirectoryServiceClient<Channel> {
        DirectoryServiceClient::new(self.channel.clone())
    }

    /// Stops the server as SIGTERM would and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestApp {
    /// Stops the server as SIGTERM would and waits for it, so that its pool, listener and
    /// workers are closed and joined: a thread left inside libpq while the test process exits
    /// crashed it in OpenSSL's or Kerberos' exit handlers. A test that failed (panicking) or runs
    /// on a single-threaded runtime, where nothing can be waited for here, aborts the server.
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let waitable = !std::thread::panicking()
            && tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
                runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            });
        if waitable {
            let _ =
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(server));
        } else {
            server.abort();
        }
    }
}

/// A token for `principal` signed with the test secret, valid for ten minutes.
pub fn test_token(principal: &Principal) -> String {
    TokenKeys::new(Some(&Secret::new(TEST_SECRET.to_owned())), &[])
        .expect("the test secret")
        .mint(principal, Duration::from_secs(600))
        .expect("mint token")
}

/// A platform token signed with another secret than the server's.
pub fn forged_token() -> String {
    TokenKeys::new(
        Some(&Secret::new("another-secret-another-secret-00".into())),
        &[],
    )
    .expect("another secret")
    .mint(
        &Principal {
            subject: "platform".into(),
            account_id: None,
            user_id: None,
            roles: vec![Role::Platform],
        },
        Duration::from_secs(60),
    )
    .expect("mint token")
}

/// An HS256 token of account 1's super admin, user 10, with the test secret, that expired an
/// hour ago (well beyond the leeway).
pub fn expired_token() -> String {
    #[derive(serde::Serialize)]
    struct Claims {
        sub: &'static str,
        account_id: i64,
        user_id: i64,
        roles: Vec<&'static str>,
        iat: u64,
        exp: u64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub: "user:1:10",
            account_id: 1,
            user_id: 10,
            roles: vec!["super_admin"],
            iat: now - 7200,
            exp: now - 3600,
        },
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A test token of a user of `account_id` with `roles`.
pub fn user_token(account_id: i64, user_id: i64, roles: &[Role]) -> String {
    test_token(&Principal {
        subject: format!("user:{account_id}:{user_id}"),
        account_id: Some(account_id),
        user_id: Some(user_id),
        roles: roles.to_vec(),
    })
}

/// Wraps a message in a request carrying a bearer token.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

/// Asserts the status code and ErrorInfo reason, and returns the ErrorInfo metadata.
pub fn assert_error(status: &Status, code: Code, reason: &str) -> HashMap<String, String> {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "mailconnect");
    info.metadata
}

/// The field paths of an INVALID_ARGUMENT status's BadRequest violations.
pub fn violated_fields(status: &Status) -> Vec<String> {
    violated_fields_with_reason(status, "INVALID_ARGUMENT")
}

/// The field paths of an INVALID_ARGUMENT status with this ErrorInfo reason.
pub fn violated_fields_with_reason(status: &Status, reason: &str) -> Vec<String> {
    assert_error(status, Code::InvalidArgument, reason);
    status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest on {status:?}"))
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect()
}

/// Declares, for each async fn taking a [`Backend`], one test per backend.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::harness::Backend::Postgres).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::harness::Backend::Sqlite).await;
                }
            }
        )*
    };
}

/// Retries `check` until it returns `Some`: for what happens in its own time (readiness, batched
/// exports, another process's change that a replica sees within the read cache's bound). The
/// deadline only keeps a broken build from hanging; nothing here measures time.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

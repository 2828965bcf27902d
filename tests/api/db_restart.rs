//! Postgres itself restarted under load (issue 16, faults): a private Postgres instance (initdb
//! in a temporary directory, on a port of its own, so the machine's shared server is never
//! touched) is restarted while 16 streams call the service. Every call meanwhile ends
//! UNAVAILABLE or past its deadline, never INTERNAL, and the service serves again by itself.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mailconnect::domain::secret::Secret;
use mailconnect::grpc::proto::ListInboxesRequest;
use mailconnect::grpc::proto::inbox_connection_service_client::InboxConnectionServiceClient;
use tonic::Status;

use crate::db_faults::acceptable;
use crate::harness::{Backend, TestDatabase, authed, eventually, start_app_with};
use crate::mail_servers::free_port;
use crate::shutdown_load::{admin, create, seed_account};

const STREAMS: usize = 16;
const DEADLINE: Duration = Duration::from_secs(2);

/// A Postgres server of this test's own, stopped when dropped.
struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|version| version.path().join("bin"))
            .find(|bin| bin.join("initdb").exists())
            .expect(
                "initdb is needed (Debian's postgresql package): run scripts/test, which installs it",
            );
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let port = free_port();
        let server = Self {
            bin,
            data,
            port,
            _dir: dir,
        };
        // initdb and postgres refuse to run as root: as root, they run as the postgres user.
        if is_root() {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(server._dir.path()));
        }
        server.pg("initdb", |command| {
            command.arg("-D").arg(&server.data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ]);
        });
        server.pg_ctl("start");
        server
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl start|restart|stop`, waiting until it is done; `fast` ends open sessions at once.
    fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self._dir.path().display()
        );
        let log = self._dir.path().join("postgres.log");
        self.pg("pg_ctl", |command| {
            command
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&log)
                .args(["-o", &options, "-m", "fast", "-w", action]);
        });
    }

    fn pg(&self, tool: &str, args: impl FnOnce(&mut Command)) {
        let program = self.bin.join(tool);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        args(&mut command);
        run(&mut command);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.pg_ctl("stop")));
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn run(command: &mut Command) {
    let output = command.output().expect("run a Postgres tool");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One stream: a write then a read, again and again, until `stop`; the failures it saw.
async fn stream(
    app: tonic::transport::Channel,
    index: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Status> {
    let mut client = InboxConnectionServiceClient::new(app);
    let mut failures = Vec::new();
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut write = authed(&admin(), create(&format!("restart-{index}-{round}")));
        write.set_timeout(DEADLINE);
        let mut read = authed(&admin(), ListInboxesRequest::default());
        read.set_timeout(DEADLINE);
        if let Err(status) = client.create_inbox(write).await {
            failures.push(status);
        }
        if let Err(status) = client.list_inboxes(read).await {
            failures.push(status);
        }
        round += 1;
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_is_served_again_without_help() {
    let postgres = PrivatePostgres::start();
    let app = start_app_with(TestDatabase::create(Backend::Postgres), |settings| {
        settings.database.database_url = Some(Secret::new(postgres.url()));
        settings.inbox.inbox_limits = "professional=1000000".parse().unwrap();
    })
    .await;
    app.wait_until_serving().await;
    seed_account(&app.channel).await;

    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = (0..STREAMS)
        .map(|index| tokio::spawn(stream(app.channel.clone(), index, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| postgres.pg_ctl("restart"));
    let restarted = Instant::now();
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    eventually("the service serves again after the restart", || async {
        let attempt = attempts.fetch_add(1, Ordering::Relaxed);
        let mut client = InboxConnectionServiceClient::new(app.channel.clone());
        let mut write = authed(&admin(), create(&format!("after-the-restart-{attempt}")));
        write.set_timeout(DEADLINE);
        client.create_inbox(write).await.ok().map(drop)
    })
    .await;
    let took = restarted.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for stream in streams {
        failures.extend(stream.await.unwrap());
    }
    for status in &failures {
        assert!(acceptable(status), "a call during the restart: {status:?}");
    }
    println!(
        "Postgres restarted under {STREAMS} streams: served again {took:?} after pg_ctl restart returned; {} calls failed meanwhile, each UNAVAILABLE or past its deadline",
        failures.len()
    );
}

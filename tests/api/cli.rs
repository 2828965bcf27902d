//! The `mailconnect` binary's commands.

use std::process::Command;

pub fn mailconnect() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mailconnect"));
    // The tests' own environment must not configure the binary.
    for (key, _) in std::env::vars() {
        if key.starts_with("MAILCONNECT_") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn unknown_database_scheme_is_a_clear_error_that_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for subcommand in ["serve", "migrate"] {
        let output = mailconnect()
            .current_dir(dir.path())
            .args([subcommand, "--database-url", "postgress://x"])
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("unsupported database URL scheme \"postgress\""),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "created files"
        );
    }
}

#[test]
fn token_minting_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = mailconnect()
        .args(["token", "--role", "super-admin", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--account"));

    let output = mailconnect()
        .args(["token", "--account", "1", "--user", "2", "--role", "wizard"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "clap usage error");

    // The development secret is created once and reused: two tokens verify with one key.
    let mint = || {
        let output = mailconnect()
            .args([
                "token",
                "--account",
                "3",
                "--user",
                "4",
                "--role",
                "account-access",
                "--ttl",
                "5m",
                "--data-dir",
            ])
            .arg(&data_dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let (first, second) = (mint(), mint());
    let secret = std::fs::read_to_string(data_dir.join("jwt-secret")).unwrap();
    let keys = mailconnect::tokens::TokenKeys::new(
        Some(&mailconnect::domain::secret::Secret::new(
            secret.trim().to_owned(),
        )),
        &[],
    )
    .unwrap();
    for token in [first, second] {
        let principal = keys.verify(&token).unwrap();
        assert_eq!(principal.account_id, Some(3));
        assert_eq!(principal.user_id, Some(4));
        assert_eq!(
            principal.roles,
            [mailconnect::domain::principal::Role::AccountAccess]
        );
    }
}

/// Defaults → settings file → environment → flags.
#[test]
fn a_settings_file_sits_between_defaults_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mailconnect.env");
    let database = dir.path().join("from-env.sqlite");
    std::fs::write(
        &file,
        "# a typo'd scheme, to see the file is read\nMAILCONNECT_DATABASE_URL = postgress://x\n",
    )
    .unwrap();

    let output = mailconnect()
        .current_dir(dir.path())
        .env("MAILCONNECT_CONFIG_FILE", &file)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"postgress\""));

    // The environment wins over the file, and a flag over both.
    let output = mailconnect()
        .current_dir(dir.path())
        .env("MAILCONNECT_CONFIG_FILE", &file)
        .env(
            "MAILCONNECT_DATABASE_URL",
            format!("sqlite://{}", database.display()),
        )
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(database.exists());
    let flagged = dir.path().join("from-flag.sqlite");
    let output = mailconnect()
        .current_dir(dir.path())
        .env("MAILCONNECT_CONFIG_FILE", &file)
        .env("MAILCONNECT_DATABASE_URL", "postgress://y")
        .args(["migrate", "--database-url"])
        .arg(format!("sqlite://{}", flagged.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(flagged.exists());

    // A name that is no setting is an error, not a silent default.
    std::fs::write(&file, "MAILCONNECT_DATABSE_URL=sqlite::memory:\n").unwrap();
    let output = mailconnect()
        .env("MAILCONNECT_CONFIG_FILE", &file)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("MAILCONNECT_DATABSE_URL"));
}

/// A call with IMAP and SMTP settings runs two probes at once: a bound or a rate of one would
/// refuse every such call, so the server does not start with it.
#[test]
fn probe_bounds_below_a_calls_two_probes_are_refused_at_start() {
    for variable in [
        "MAILCONNECT_PROBE_MAX_CONCURRENT",
        "MAILCONNECT_PROBE_RATE_PER_MINUTE",
    ] {
        let output = mailconnect()
            .args(["serve", "--database-url", "sqlite::memory:"])
            .env(variable, "1")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "clap usage error for {variable}"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("1 is not in 2.."), "{variable}: {stderr}");
    }
}

/// `scripts/run` on a fresh data directory: the printed token's account and user exist, so the
/// printed commands work as shown (ListUsers lists the user; an inbox and a mailbox connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_server_seeds_the_printed_tokens_directory() {
    use std::io::{BufRead as _, BufReader};

    use mailconnect::grpc::proto::inbox_connection_service_client::InboxConnectionServiceClient;
    use mailconnect::grpc::proto::{self, Inbox};

    use crate::harness::authed;

    let data_dir = tempfile::tempdir().unwrap();
    let mut server = mailconnect()
        .args(["serve", "--listen-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(server.stdout.take().unwrap());
    let (found, printed) = std::sync::mpsc::channel();
    // Read everything the server prints (a closed pipe would stop it at its next log line).
    std::thread::spawn(move || {
        let mut addr = None;
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(rest) = line.split("mailconnect is listening on ").nth(1) {
                addr = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(rest) = line.strip_prefix("export TOKEN='") {
                let _ = found.send((addr.clone(), Some(rest.trim_end_matches('\'').to_owned())));
            }
        }
    });
    let (addr, token) = printed.recv().expect("the server prints its commands");
    let (addr, token) = (
        addr.expect("the address is printed"),
        token.expect("a token"),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The commands are printed before the database is ready (a person pasting them is slower):
    // a client this fast waits for SERVING first, as a readiness probe would.
    crate::harness::eventually("the development server reports SERVING", || async {
        let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await;
        health
            .is_ok_and(|response| {
                response.into_inner().status()
                    == tonic_health::pb::health_check_response::ServingStatus::Serving
            })
            .then_some(())
    })
    .await;
    let users = mailconnect::grpc::proto::directory_service_client::DirectoryServiceClient::new(
        channel.clone(),
    )
    .list_users(authed(
        &token,
        proto::ListUsersRequest {
            account_id: 1,
            ..Default::default()
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .users;
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(users[0].id, 1);
    assert_eq!(
        users[0].roles().collect::<Vec<_>>(),
        [proto::Role::SuperAdmin]
    );
    let mut inboxes = InboxConnectionServiceClient::new(channel);
    inboxes
        .create_inbox(authed(
            &token,
            proto::CreateInboxRequest {
                inbox: Some(Inbox {
                    display_name: "Support".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(data_dir.path().join("encryption-keys").is_file());
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Every duration setting past a year is a usage error at start (exit 2, the reason named), not
/// a panic once the server adds it to a clock (issue 16, 11: `--connection-check-interval` of
/// 18446744073709551615s panicked with "overflow when adding duration to instant").
#[test]
fn absurd_durations_are_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    for flag in [
        "--shutdown-grace",
        "--attempts-flush-interval",
        "--connection-check-interval",
        "--connection-failure-min-span",
        "--background-poll-interval",
        "--request-timeout",
        "--http2-keepalive-interval",
        "--http2-keepalive-timeout",
        "--max-connection-age",
        "--max-connection-age-grace",
        "--tls-reload-interval",
        "--probe-timeout",
        "--probe-stage-timeout",
    ] {
        let mut child = mailconnect()
            .current_dir(dir.path())
            .args(["serve", "--listen-addr", "127.0.0.1:0"])
            .args([
                "--database-url",
                "sqlite::memory:",
                flag,
                "18446744073709551615s",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The bound only turns a server that started anyway into a failure.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{flag}: the server started with an absurd duration");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains("at most"), "{flag}: {stderr}");
        assert!(!stderr.contains("panicked"), "{flag}: {stderr}");
    }
}

/// Settings from a file become the flags' defaults, and `--help` prints defaults: a secret's
/// must not show there, as its environment value does not (issue 16, 11).
#[test]
fn help_never_prints_a_secret_from_the_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mailconnect.env");
    let secrets = [
        (
            "MAILCONNECT_JWT_SECRET",
            "file-jwt-secret-0123456789abcdef0123",
        ),
        (
            "MAILCONNECT_DATABASE_URL",
            "postgres://app:file-db-password@db/mail",
        ),
        (
            "MAILCONNECT_ENCRYPTION_KEYS",
            "k1:ZmlsZS1lbmNyeXB0aW9uLWtleS0wMTIzNDU2Nzg5YWI=",
        ),
        (
            "MAILCONNECT_SMTP_RELAY_URL",
            "smtp://relay:file-relay-password@relay.example:587",
        ),
        (
            "MAILCONNECT_GOOGLE_OAUTH_CLIENT_SECRET",
            "file-google-secret",
        ),
        (
            "MAILCONNECT_MICROSOFT_OAUTH_CLIENT_SECRET",
            "file-microsoft-secret",
        ),
    ];
    let mut text: String = secrets
        .iter()
        .map(|(name, value)| format!("{name}={value}\n"))
        .collect();
    text.push_str("MAILCONNECT_NOTIFICATION_FROM=file-notification-from@example.com\n");
    std::fs::write(&file, text).unwrap();
    for subcommand in ["serve", "migrate", "token", "rotate-keys"] {
        let output = mailconnect()
            .env("MAILCONNECT_CONFIG_FILE", &file)
            .args([subcommand, "--help"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{subcommand} --help");
        let help = String::from_utf8_lossy(&output.stdout);
        for (name, value) in secrets {
            assert!(
                !help.contains(value),
                "{subcommand} --help shows {name}: {help}"
            );
        }
        if subcommand == "serve" {
            assert!(
                help.contains("file-notification-from@example.com"),
                "the file is read: {help}"
            );
        }
    }
}

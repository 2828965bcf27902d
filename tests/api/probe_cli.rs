//! `mailconnect probe` against Dovecot: human output, `--json`, exit statuses.

use std::process::{Command, Output};

use crate::mail_servers::{Dovecot, PASSWORD, USER};

/// The binary with loopback and one port allowed, and none of the tests' own configuration.
fn probe(port: u16, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mailconnect"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MAILCONNECT_") {
            command.env_remove(key);
        }
    }
    command
        .arg("probe")
        .args(args)
        .args(["--probe-allow-cidrs", "127.0.0.0/8,::1/128"])
        .args(["--probe-allowed-ports", &port.to_string()])
        .env("PROBE_TEST_PASSWORD", PASSWORD)
        .env("PROBE_TEST_WRONG_PASSWORD", "wrong")
        .output()
        .expect("run mailconnect probe")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn probe_prints_a_readable_report_and_exits_0() {
    let dovecot = Dovecot::start();
    let url = format!("imaps://127.0.0.1:{}", dovecot.imaps_port);
    let output = probe(
        dovecot.imaps_port,
        &[
            &url,
            "--insecure",
            "--user",
            USER,
            "--password-env",
            "PROBE_TEST_PASSWORD",
        ],
    );
    let text = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains(&format!("{url} (IMAP): WARNING")), "{text}");
    assert!(text.contains("login"), "{text}");
    assert!(text.contains("self-signed: yes"), "{text}");
    assert!(text.contains("IMAP4rev1"), "{text}");
    assert!(!text.contains(PASSWORD), "the password never prints");
}

#[test]
fn probe_json_is_machine_readable() {
    let dovecot = Dovecot::start();
    let url = format!("imap://127.0.0.1:{}", dovecot.imap_port);
    let output = probe(
        dovecot.imap_port,
        &[&url, "--starttls", "--insecure", "--json"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["outcome"], "WARNING", "{report:#}");
    assert_eq!(report["protocol"], "IMAP");
    let names: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| stage["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"starttls") && names.contains(&"tls"),
        "{names:?}"
    );
    assert_eq!(report["tls"]["self_signed"], true);
    assert!(report["tls"]["not_after"].is_string());
}

#[test]
fn probe_exits_1_when_the_server_fails_the_check() {
    let dovecot = Dovecot::start();
    let url = format!("imaps://127.0.0.1:{}", dovecot.imaps_port);
    let untrusted = probe(dovecot.imaps_port, &[&url]);
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(
        stdout(&untrusted).contains("allow_insecure_certificate"),
        "{}",
        stdout(&untrusted)
    );

    let wrong = probe(
        dovecot.imaps_port,
        &[
            &url,
            "--insecure",
            "--user",
            USER,
            "--password-env",
            "PROBE_TEST_WRONG_PASSWORD",
            "--json",
        ],
    );
    assert_eq!(wrong.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&wrong.stdout).unwrap();
    assert_eq!(report["field"], "credentials.password");
}

#[test]
fn probe_applies_the_egress_guard() {
    let output = Command::new(env!("CARGO_BIN_EXE_mailconnect"))
        .args(["probe", "imaps://127.0.0.1:993", "--json"])
        .env_remove("MAILCONNECT_PROBE_ALLOW_CIDRS")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["outcome"], "BLOCKED");
    assert_eq!(report["connected_address"], "");
}

#[test]
fn probe_usage_errors_exit_2() {
    for args in [
        vec!["gopher://example.com"],
        vec!["imaps://127.0.0.1:993", "--starttls"],
        vec!["imap://127.0.0.1:143/INBOX"],
        vec![
            "imaps://127.0.0.1:993",
            "--user",
            "u",
            "--password-env",
            "PROBE_TEST_UNSET_VARIABLE",
        ],
        vec!["imaps://127.0.0.1:993", "--user", "u"],
        vec!["not a url"],
        vec!["imaps://user:secret@127.0.0.1:993"],
        // Absurd settings: a usage error, never a panic in the deadline arithmetic.
        vec![
            "imaps://127.0.0.1:993",
            "--probe-timeout",
            "18446744073709551615s",
        ],
        vec!["imaps://127.0.0.1:993", "--probe-stage-timeout", "0s"],
        vec!["imaps://127.0.0.1:993", "--probe-timeout", "2h"],
        vec!["imaps://127.0.0.1:993", "--probe-max-concurrent", "0"],
        vec![
            "imaps://127.0.0.1:993",
            "--probe-max-concurrent-per-account",
            "0",
        ],
        // Allowing more than a /8 (IPv4) or /32 (IPv6) is a mistake, not a setting.
        vec!["imaps://127.0.0.1:993", "--probe-allow-cidrs", "0.0.0.0/0"],
        vec!["imaps://127.0.0.1:993", "--probe-allow-cidrs", "10.0.0.0/7"],
        vec!["imaps://127.0.0.1:993", "--probe-allow-cidrs", "fd00::/8"],
    ] {
        let output = probe(993, &args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A certificate dated before 1970 is printed, not a panic (humantime cannot format it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_prints_a_certificate_dated_before_1970() {
    let dir = tempfile::tempdir().unwrap();
    let old = crate::mail_servers::TestCertificate::self_signed_dated(
        dir.path(),
        &["127.0.0.1"],
        (1950, 1, 1),
        (1960, 1, 1),
    );
    let server = crate::fault_servers::FaultServer::start_tls(
        &old,
        crate::fault_servers::Fault::ImapWithoutStartTls,
    )
    .await;
    let url = format!("imaps://127.0.0.1:{}", server.port);
    for json in [false, true] {
        let (url, port) = (url.clone(), server.port);
        let output = tokio::task::spawn_blocking(move || {
            let mut args = vec![url.as_str(), "--insecure"];
            if json {
                args.push("--json");
            }
            probe(port, &args)
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("1960-01-01T00:00:00Z"), "{stdout}");
        if json {
            assert!(stdout.contains("1950-01-01T00:00:00Z"), "{stdout}");
        }
    }
}

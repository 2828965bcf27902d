//! What ships around the binary agrees with it: the README documents every setting, and the
//! Dockerfile and the Helm chart only set settings the binary knows. The Dockerfile check is
//! static (its text): no Docker engine runs here, so the image itself is not built by the tests.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Settings the chart already passes for work that lands beside this one (the inbox connections'
/// field encryption); clap ignores unknown variables, so passing them early is harmless.
fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// `(flag, environment variable)` of every option `mailconnect <command> --help` lists.
fn settings_of(command: &str) -> Vec<(String, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailconnect"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MAILCONNECT_") {
            child.env_remove(key);
        }
    }
    let output = child.args([command, "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let mut settings = Vec::new();
    let mut flag = None;
    for line in help.lines().map(str::trim) {
        if let Some(option) = line.strip_prefix("--") {
            flag = option
                .split_whitespace()
                .next()
                .map(|name| format!("--{name}"));
        } else if let Some(env) = line.strip_prefix("[env: ") {
            let name = env.split(['=', ']']).next().unwrap().to_owned();
            settings.push((flag.clone().expect("env after its flag"), name));
        }
    }
    settings
}

fn mailconnect_variables(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|word| word.starts_with("MAILCONNECT_") && word.len() > "MAILCONNECT_".len())
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_documents_every_setting_with_flag_and_variable() {
    let readme = repo_file("README.md");
    let settings = settings_of("serve");
    assert!(settings.len() > 10, "{settings:?}");
    for (flag, env) in settings {
        let row = format!("| `{flag}` | `{env}` |");
        assert!(readme.contains(&row), "README lacks the row {row}");
    }
}

#[test]
fn chart_and_image_only_set_settings_the_binary_knows() {
    let known: BTreeSet<String> = settings_of("serve")
        .into_iter()
        .chain(settings_of("migrate"))
        .map(|(_, env)| env)
        .collect();
    for path in [
        "Dockerfile",
        "helm/mailconnect/templates/configmap.yaml",
        "helm/mailconnect/templates/deployment.yaml",
        "helm/mailconnect/templates/migration-job.yaml",
        "helm/mailconnect/templates/_helpers.tpl",
    ] {
        let used = mailconnect_variables(&repo_file(path));
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{path} sets unknown settings {unknown:?}"
        );
    }
}

/// Static check of the Dockerfile's shape (not a build): multi-stage, runtime libraries the
/// binary links, a non-root user, the binary as entrypoint and `serve` listening on all
/// interfaces by default.
#[test]
fn dockerfile_runs_the_binary_as_non_root() {
    let dockerfile = repo_file("Dockerfile");
    let stages: Vec<&str> = dockerfile.split("\nFROM ").skip(1).collect();
    assert!(stages.len() >= 2, "multi-stage build expected");
    let runtime = stages.last().unwrap();
    for package in ["libpq5", "ca-certificates"] {
        assert!(runtime.contains(package), "runtime stage lacks {package}");
    }
    let user = runtime
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    let uid = user.split(':').next().unwrap().trim();
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "USER must be a numeric non-root uid (runAsNonRoot checks it), got {user}"
    );
    assert!(runtime.contains(r#"ENTRYPOINT ["/usr/local/bin/mailconnect"]"#));
    assert!(runtime.contains(r#"CMD ["serve"]"#));
    assert!(runtime.contains("MAILCONNECT_LISTEN_ADDR=0.0.0.0:50051"));
    assert!(runtime.contains("COPY --from=build"));
}

//! Real mail servers for the tests, on free loopback ports: Dovecot (IMAP) and aiosmtpd (SMTP),
//! with certificates made by rcgen. Each stops when dropped. Other tests may reuse them.

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailconnect::config::{PortRange, ProbeSettings};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::RootCertStore;

pub const USER: &str = "testuser";
pub const PASSWORD: &str = "testpass";

/// Probe settings for the tests: loopback allowed explicitly, only the given ports, short budgets
/// (no test depends on them; they only keep a failing test from hanging).
pub fn probe_settings(ports: &[u16]) -> ProbeSettings {
    ProbeSettings {
        probe_allow_cidrs: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        probe_deny_cidrs: vec![],
        probe_allowed_ports: ports
            .iter()
            .map(|port| PortRange {
                first: *port,
                last: *port,
            })
            .collect(),
        probe_timeout: Duration::from_secs(20),
        probe_stage_timeout: Duration::from_secs(5),
        probe_max_concurrent: 16,
        probe_max_concurrent_per_account: 16,
        probe_rate_per_minute: 1000,
        probe_ca_files: vec![],
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// An external program the tests need: missing is a failure with the install hint, never a
/// skip (a test that cannot run must not pass).
pub fn require(program: &Path, install: &str) {
    assert!(
        program.exists(),
        "{} is needed and missing: run scripts/test, which installs it ({install})",
        program.display()
    );
}

/// Waits until something accepts connections on the port (a server starting up).
fn wait_for_port(port: u16, server: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_ok() {
            return;
        }
        if let Ok(Some(status)) = server.try_wait() {
            panic!(
                "the server exited ({status}) before listening: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "nothing listens on port {port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A certificate and its key, as PEM files in a folder.
pub struct TestCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCertificate {
    /// Self-signed, for `localhost` and 127.0.0.1.
    pub fn self_signed(dir: &Path) -> Self {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        Self::write(
            dir,
            generated.cert.pem(),
            generated.signing_key.serialize_pem(),
        )
    }

    /// Self-signed for these names, valid from `from` until `until` (year, month, day, UTC).
    pub fn self_signed_dated(
        dir: &Path,
        names: &[&str],
        from: (i32, u8, u8),
        until: (i32, u8, u8),
    ) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let cert = params.self_signed(&key).unwrap();
        Self::write(dir, cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, cert_pem: String, key_pem: String) -> Self {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        Self {
            cert,
            key,
            cert_pem,
            key_pem,
        }
    }
}

/// A private certificate authority, to test certificates the probe trusts.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mailconnect test CA");
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A certificate for these names, signed by this authority.
    pub fn issue(&self, dir: &Path, names: &[&str]) -> TestCertificate {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TestCertificate::write(dir, cert.pem(), key.serialize_pem())
    }

    /// Writes the authority's certificate as PEM (for `--probe-ca-files`).
    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.issuer.pem()).unwrap();
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

/// Runs `program` as `nobody` when we are root (Dovecot refuses to run its services as root).
fn unprivileged(program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command.args([
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            program,
        ]);
        command
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    id("-u") == "0"
}

/// `id FLAG`: the current user's id or name.
fn id(flag: &str) -> String {
    Command::new("id")
        .arg(flag)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

const DOVECOT: &str = "/usr/sbin/dovecot";

/// Dovecot with an IMAP (STARTTLS) and an IMAPS port, a self-signed certificate and one user.
pub struct Dovecot {
    pub imap_port: u16,
    pub imaps_port: u16,
    config: PathBuf,
    users: PathBuf,
    process: Child,
    _dir: tempfile::TempDir,
}

impl Dovecot {
    /// Starts Dovecot; fails the test when it is not installed.
    pub fn start() -> Self {
        require(Path::new(DOVECOT), "apt-get install dovecot-imapd");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        TestCertificate::self_signed(path);
        let users = path.join("users");
        std::fs::write(&users, format!("{USER}:{{PLAIN}}{PASSWORD}\n")).unwrap();
        for sub in ["run", "state", "home"] {
            std::fs::create_dir(path.join(sub)).unwrap();
        }
        let (imap_port, imaps_port) = (free_port(), free_port());
        let config = path.join("dovecot.conf");
        let (user, group) = if is_root() {
            ("nobody".to_owned(), "nogroup".to_owned())
        } else {
            (id("-un"), id("-gn"))
        };
        let config_text = dovecot_config(path, imap_port, imaps_port, &user, &group);
        std::fs::write(&config, config_text).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success(), "chown the Dovecot folder");
        }
        let log = path.join("dovecot.log");
        let mut process = unprivileged(DOVECOT)
            .arg("-F")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dovecot");
        wait_for_port(imap_port, &mut process, &log);
        wait_for_port(imaps_port, &mut process, &log);
        Self {
            imap_port,
            imaps_port,
            config,
            users,
            process,
            _dir: dir,
        }
    }

    /// Changes the test user's password, as a mail admin would (Dovecot reads the file again
    /// when it changes).
    pub fn set_password(&self, password: &str) {
        let next = self.users.with_extension("next");
        std::fs::write(&next, format!("{USER}:{{PLAIN}}{password}\n")).unwrap();
        std::fs::rename(&next, &self.users).unwrap();
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(&self.config)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A private Dovecot; services run as `user` (nobody when started as root, else ourselves).
fn dovecot_config(dir: &Path, imap_port: u16, imaps_port: u16, user: &str, group: &str) -> String {
    let dir = dir.display();
    format!(
        r#"protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
ssl = yes
ssl_cert = <{dir}/cert.pem
ssl_key = <{dir}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={dir}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"#
    )
}

/// How the test SMTP server is secured.
#[derive(Debug, Clone, Copy)]
pub enum SmtpMode {
    StartTls,
    ImplicitTls,
}

/// aiosmtpd (tests/servers/smtp_server.py) with a self-signed certificate and AUTH for one user.
pub struct Aiosmtpd {
    pub port: u16,
    process: Child,
    _dir: tempfile::TempDir,
}

impl Aiosmtpd {
    pub fn start(mode: SmtpMode) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certificate = TestCertificate::self_signed(dir.path());
        let mode = match mode {
            SmtpMode::StartTls => "starttls",
            SmtpMode::ImplicitTls => "implicit",
        };
        let args = [
            certificate.cert.display().to_string(),
            certificate.key.display().to_string(),
            mode.to_owned(),
            USER.to_owned(),
            PASSWORD.to_owned(),
        ];
        Self::spawn(free_port(), &args, dir)
    }

    /// A relay without TLS or AUTH on `port` that keeps every message it accepts (see
    /// [`Aiosmtpd::messages`]).
    pub fn sink(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).unwrap();
        Self::spawn(port, &["sink".to_owned(), mail.display().to_string()], dir)
    }

    /// The messages a sink accepted, in order, each with its `X-Envelope-To:` lines first.
    pub fn messages(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self._dir.path().join("mail"))
            .map(|entries| {
                entries
                    .filter_map(|entry| Some(entry.ok()?.path()))
                    .collect()
            })
            .unwrap_or_default();
        names.retain(|name| name.extension().is_some_and(|ext| ext == "eml"));
        names.sort();
        names
            .iter()
            .map(|name| std::fs::read_to_string(name).unwrap())
            .collect()
    }

    fn spawn(port: u16, args: &[String], dir: tempfile::TempDir) -> Self {
        let python = std::env::var_os("MAILCONNECT_TEST_PYTHON").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-tools/bin/python"),
            PathBuf::from,
        );
        let aiosmtpd = python.with_file_name("aiosmtpd");
        require(&python, "python3 -m venv .venv-tools");
        require(&aiosmtpd, ".venv-tools/bin/pip install aiosmtpd");
        let log = dir.path().join("smtp.log");
        let mut process = Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/smtp_server.py"))
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the aiosmtpd test server");
        let mut ready = String::new();
        let stdout = process.stdout.take().unwrap();
        BufReader::new(stdout).read_line(&mut ready).unwrap();
        assert_eq!(
            ready.trim(),
            "READY",
            "aiosmtpd did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        wait_for_port(port, &mut process, &log);
        Self {
            port,
            process,
            _dir: dir,
        }
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

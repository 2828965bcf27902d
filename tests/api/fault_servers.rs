//! In-process servers that misbehave on purpose (stall, hang up, speak garbage or another
//! protocol, trickle), and an HTTPS server that answers like Exchange Web Services.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::mail_servers::{PASSWORD, TestCertificate, USER};

/// What a fault server does with each connection.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Accepts and never says anything.
    Silent,
    /// Accepts and closes at once.
    CloseAtOnce,
    /// Sends these bytes, then stays silent.
    Say(&'static [u8]),
    /// Sends these bytes one per second.
    Trickle(&'static [u8]),
    /// An IMAP server that offers neither STARTTLS nor anything after CAPABILITY.
    ImapWithoutStartTls,
    /// An SMTP server that offers no STARTTLS and only AUTH CRAM-MD5.
    SmtpWithoutStartTls,
    /// An IMAP server that answers CAPABILITY with this many `* OK` lines before the real reply.
    CapabilityFlood(usize),
    /// Sends these bytes, then this many bytes without a line break, then stays silent.
    Endless(&'static [u8], usize),
    /// An IMAP server with this greeting that answers CAPABILITY with these untagged lines.
    Scripted(&'static [u8], &'static [u8]),
}

/// A loopback listener with a fault; counts the connections it accepted. Stops when dropped.
pub struct FaultServer {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultServer {
    pub async fn start(fault: Fault) -> Self {
        Self::start_on("127.0.0.1:0", fault).await
    }

    pub async fn start_on(address: &str, fault: Fault) -> Self {
        Self::serve(address, fault, None).await
    }

    /// The fault behind implicit TLS with this certificate.
    pub async fn start_tls(certificate: &TestCertificate, fault: Fault) -> Self {
        Self::serve("127.0.0.1:0", fault, Some(acceptor(certificate))).await
    }

    async fn serve(address: &str, fault: Fault, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind(address).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (fault, tls) = (fault.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                misbehave(stream, fault).await;
                            }
                        }
                        None => misbehave(stream, fault).await,
                    }
                });
            }
        });
        Self {
            port,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn misbehave<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, fault: Fault) {
    match fault {
        Fault::Silent => hold(stream).await,
        Fault::CloseAtOnce => drop(stream),
        Fault::Say(bytes) => {
            let _ = stream.write_all(bytes).await;
            hold(stream).await;
        }
        Fault::ImapWithoutStartTls => {
            converse(
                stream,
                "* OK [CAPABILITY IMAP4rev1] fake ready\r\n",
                |line| {
                    let tag = line.split_whitespace().next().unwrap_or("*");
                    format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n")
                },
            )
            .await;
        }
        Fault::SmtpWithoutStartTls => {
            converse(stream, "220 fake.example.com ESMTP\r\n", |line| {
                if line.to_ascii_uppercase().starts_with("EHLO") {
                    "250-fake.example.com\r\n250 AUTH CRAM-MD5\r\n".to_owned()
                } else {
                    "250 OK\r\n".to_owned()
                }
            })
            .await;
        }
        Fault::CapabilityFlood(lines) => {
            let flood = format!(
                "{}* CAPABILITY IMAP4rev1\r\n",
                "* OK flood\r\n".repeat(lines)
            );
            answer_capability(stream, b"* OK flood ready\r\n", flood.as_bytes()).await;
        }
        Fault::Scripted(greeting, capabilities) => {
            answer_capability(stream, greeting, capabilities).await;
        }
        Fault::Endless(prefix, bytes) => {
            let chunk = [b'x'; 64 * 1024];
            if stream.write_all(prefix).await.is_err() {
                return;
            }
            for _ in 0..bytes / chunk.len() {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            hold(stream).await;
        }
        Fault::Trickle(bytes) => {
            for byte in bytes {
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            hold(stream).await;
        }
    }
}

/// An IMAP server: the greeting, then `capabilities` before the tagged OK of a CAPABILITY command,
/// a bare tagged OK to anything else.
async fn answer_capability<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    greeting: &[u8],
    capabilities: &[u8],
) {
    converse(stream, &String::from_utf8_lossy(greeting), |line| {
        let tag = line.split_whitespace().next().unwrap_or("*");
        let untagged = if line.to_ascii_uppercase().contains("CAPABILITY") {
            String::from_utf8_lossy(capabilities).into_owned()
        } else {
            String::new()
        };
        format!("{untagged}{tag} OK done\r\n")
    })
    .await;
}

/// Sends a greeting, then answers each line the client sends.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    greeting: &str,
    answer: impl Fn(&str) -> String,
) {
    use tokio::io::AsyncBufReadExt as _;
    let (reader, mut writer) = tokio::io::split(stream);
    if writer.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    let mut lines = tokio::io::BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if writer.write_all(answer(&line).as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Keeps the connection open, reading and ignoring, until the client leaves.
async fn hold<S: AsyncRead + Unpin>(mut stream: S) {
    let mut buffer = [0u8; 1024];
    while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
}

/// A listener that never accepts, with its accept queue full: Linux drops every further SYN, so a
/// connection attempt hears nothing at all, as from a server behind a firewall that drops packets.
pub struct Unanswered {
    pub port: u16,
    _listener: TcpListener,
    _queued: TcpStream,
}

impl Unanswered {
    pub async fn start() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
        // A backlog of 0 queues one connection: this one, which is never accepted.
        let listener = socket.listen(0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let queued = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Self {
            port,
            _listener: listener,
            _queued: queued,
        }
    }
}

/// A port that refuses connections: bound once, then released.
pub fn refused_port() -> u16 {
    crate::mail_servers::free_port()
}

/// An HTTPS server answering like EWS, by path:
/// - `/EWS/Exchange.asmx`: 401 `Negotiate` and `NTLM`
/// - `/basic/EWS/Exchange.asmx`: 401 `Basic`, 200 with the test user's credentials
/// - `/modern/EWS/Exchange.asmx`: 401 `Bearer` with `ms-diagnostics-public`
/// - `/open/EWS/Exchange.asmx`: 200 with a SOAP answer
/// - `/owa`: 302 to a sign-in page
/// - `/internal`: 302 to the cloud metadata address
/// - anything else: 404
pub struct FakeEws {
    pub port: u16,
    task: JoinHandle<()>,
}

impl FakeEws {
    pub async fn start(certificate: &TestCertificate) -> Self {
        let acceptor = acceptor(certificate);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        serve_ews(tls).await;
                    }
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for FakeEws {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS acceptor presenting this certificate.
fn acceptor(certificate: &TestCertificate) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject as _;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(certificate.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(certificate.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Answers requests on one keep-alive connection until the client leaves.
async fn serve_ews<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S) {
    loop {
        let Some((path, headers)) = read_request(&mut stream).await else {
            return;
        };
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        );
        let authorized = headers
            .iter()
            .any(|(name, value)| name == "authorization" && *value == basic);
        let soap = "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body/></s:Envelope>";
        let response = match path.as_str() {
            "/EWS/Exchange.asmx" => reply(
                "401 Unauthorized",
                &["WWW-Authenticate: Negotiate", "WWW-Authenticate: NTLM"],
                "",
            ),
            "/basic/EWS/Exchange.asmx" if authorized => {
                reply("200 OK", &["Content-Type: text/xml; charset=utf-8"], soap)
            }
            "/basic/EWS/Exchange.asmx" => reply(
                "401 Unauthorized",
                &["WWW-Authenticate: Basic realm=\"mail.example.com\""],
                "",
            ),
            "/modern/EWS/Exchange.asmx" => reply(
                "401 Unauthorized",
                &[
                    "WWW-Authenticate: Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\"",
                    "ms-diagnostics-public: 2000000;reason=\"Basic authentication is disabled\"",
                ],
                "",
            ),
            "/open/EWS/Exchange.asmx" => {
                reply("200 OK", &["Content-Type: text/xml; charset=utf-8"], soap)
            }
            "/owa" => reply(
                "302 Found",
                &["Location: https://login.example.com/adfs/ls/?wa=wsignin1.0"],
                "",
            ),
            "/internal" => reply(
                "302 Found",
                &["Location: https://169.254.169.254/latest/meta-data/"],
                "",
            ),
            _ => reply(
                "404 Not Found",
                &["Content-Type: text/html"],
                "<h1>Not Found</h1>",
            ),
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn reply(status: &str, headers: &[&str], body: &str) -> String {
    let mut response = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for header in headers {
        response.push_str(header);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.push_str(body);
    response
}

/// Reads one request (head and Content-Length body); returns its path and lower-cased headers.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Option<(String, Vec<(String, String)>)> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buffer).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut buffer).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buffer[..n]);
    }
    Some((path, headers))
}

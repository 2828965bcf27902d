//! Server TLS that follows its files: cert-manager renews certificates in place, and Kubernetes
//! updates a mounted Secret by swapping a symlink (`..data`) under the same paths, so the files
//! are read again every `MAILCONNECT_TLS_RELOAD_INTERVAL` and compared by content (never by inode
//! or modification time, which the swap does not change on the paths themselves). New content that
//! loads becomes the rustls configuration of every later handshake; content that does not load
//! (a half-written renewal, a key that does not match its certificate) is logged and the previous
//! configuration stays. Connections already open keep the session they negotiated.
//!
//! tonic's own TLS cannot change its certificate once serving, so the handshakes happen here, on
//! the accepted TCP connections, with tokio-rustls on the ring provider (as tonic's would).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;

/// How long a client may take to finish its handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's certificate chain, its key and (for mutual TLS) the client CA are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The files' bytes as read at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl TlsFiles {
    fn read(&self) -> anyhow::Result<Contents> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path).with_context(|| format!("reading TLS {what} {}", path.display()))
        };
        Ok(Contents {
            cert: read(&self.cert, "certificate")?,
            key: read(&self.key, "key")?,
            client_ca: self
                .client_ca
                .as_deref()
                .map(|path| read(path, "client CA"))
                .transpose()?,
        })
    }

    /// The rustls configuration the contents make: HTTP/2 only (ALPN `h2`), and with a client CA
    /// every client must present a certificate it signed.
    fn server_config(&self, contents: &Contents) -> anyhow::Result<ServerConfig> {
        let certificates = |pem: &[u8], path: &Path, what: &str| {
            let certificates = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing TLS {what} {}", path.display()))?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "no PEM certificate in TLS {what} {}",
                path.display()
            );
            Ok(certificates)
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match (&self.client_ca, &contents.client_ca) {
            (Some(path), Some(pem)) => {
                let mut roots = RootCertStore::empty();
                for certificate in certificates(pem, path, "client CA")? {
                    roots
                        .add(certificate)
                        .with_context(|| format!("TLS client CA {}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .with_context(|| format!("TLS client CA {}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let chain = certificates(&contents.cert, &self.cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&contents.key)
            .with_context(|| format!("parsing TLS key {}", self.key.display()))?;
        let mut config = builder.with_single_cert(chain, key).with_context(|| {
            format!(
                "TLS key {} with certificate {}",
                self.key.display(),
                self.cert.display()
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// What [`ReloadingTls::reload_if_changed`] did.
#[derive(Debug)]
pub enum Reload {
    /// The files hold what is already in use (or what failed to load last time).
    Unchanged,
    /// New content loaded: later handshakes use it.
    Reloaded,
    /// New content that does not load: the previous configuration stays.
    Failed(anyhow::Error),
}

/// The server's TLS configuration, kept in step with its files.
#[derive(Clone)]
pub struct ReloadingTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
    /// The contents last read, whether they loaded or not: a failure is reported once per change.
    seen: Mutex<Contents>,
}

impl ReloadingTls {
    /// Reads and loads the files: at startup a file that does not load is an error.
    pub fn load(files: TlsFiles) -> anyhow::Result<Self> {
        let contents = files.read()?;
        let config = files.server_config(&contents)?;
        Ok(Self {
            inner: Arc::new(Inner {
                files,
                config: RwLock::new(Arc::new(config)),
                seen: Mutex::new(contents),
            }),
        })
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(
            &self
                .inner
                .config
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Reads the files again and loads them when their content changed.
    pub fn reload_if_changed(&self) -> Reload {
        let files = &self.inner.files;
        let outcome = files.read().and_then(|contents| {
            let mut seen = self
                .inner
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *seen == contents {
                return Ok(None);
            }
            *seen = contents.clone();
            files.server_config(&contents).map(Some)
        });
        match outcome {
            Ok(None) => Reload::Unchanged,
            Ok(Some(config)) => {
                *self
                    .inner
                    .config
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
                tracing::info!(
                    cert = %files.cert.display(),
                    client_ca = ?files.client_ca,
                    "TLS files changed: new connections use them"
                );
                Reload::Reloaded
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "TLS files changed but do not load: keeping the previous certificate"
                );
                Reload::Failed(error)
            }
        }
    }

    /// Checks the files every `interval` until the task is aborted.
    pub fn watch(&self, interval: Duration) -> JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                // Reading files blocks: off the runtime's worker threads.
                let check = tls.clone();
                if let Err(error) =
                    tokio::task::spawn_blocking(move || check.reload_if_changed()).await
                {
                    tracing::error!(%error, "TLS file check failed");
                }
            }
        })
    }
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<TlsStream<TcpStream>>> + Send>>;

/// The TLS connections made over `tcp`: each accepted connection's handshake runs on its own (a
/// slow client never holds up the others) with the configuration current when it arrived, and a
/// failed handshake is logged and skipped. Dropping the stream drops the listener (through `tcp`)
/// and every handshake still running.
pub struct TlsIncoming<S> {
    tcp: S,
    tls: ReloadingTls,
    handshakes: JoinSet<io::Result<TlsStream<TcpStream>>>,
    tcp_done: bool,
}

impl<S> TlsIncoming<S> {
    pub fn new(tcp: S, tls: ReloadingTls) -> Self {
        Self {
            tcp,
            tls,
            handshakes: JoinSet::new(),
            tcp_done: false,
        }
    }

    fn handshake(&self, stream: TcpStream) -> Handshake {
        let acceptor = TlsAcceptor::from(self.tls.current());
        Box::pin(async move {
            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
        })
    }
}

impl<S> Stream for TlsIncoming<S>
where
    S: Stream<Item = io::Result<TcpStream>> + Unpin,
{
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while !this.tcp_done {
            match Pin::new(&mut this.tcp).poll_next(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    let handshake = this.handshake(stream);
                    this.handshakes.spawn(handshake);
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => this.tcp_done = true,
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Ok(stream)))) => return Poll::Ready(Some(Ok(stream))),
                Poll::Ready(Some(Ok(Err(error)))) => {
                    tracing::debug!(%error, "TLS handshake failed");
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "TLS handshake task failed");
                }
                Poll::Ready(None) if this.tcp_done => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    use super::*;

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn certificate() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A mounted Secret as the kubelet writes it: the files live in a timestamped directory,
    /// `..data` points at it, and the names the server reads are symlinks through `..data`.
    struct MountedSecret {
        dir: tempfile::TempDir,
        generation: usize,
    }

    impl MountedSecret {
        fn new(cert: &str, key: &str) -> Self {
            let mut secret = Self {
                dir: tempfile::tempdir().unwrap(),
                generation: 0,
            };
            secret.update(cert.as_bytes(), key.as_bytes());
            for name in ["tls.crt", "tls.key"] {
                std::os::unix::fs::symlink(format!("..data/{name}"), secret.dir.path().join(name))
                    .unwrap();
            }
            secret
        }

        /// Writes a new generation and swaps `..data` to it in one rename.
        fn update(&mut self, cert: &[u8], key: &[u8]) {
            self.generation += 1;
            let generation = format!("..gen_{}", self.generation);
            let dir = self.dir.path().join(&generation);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("tls.crt"), cert).unwrap();
            std::fs::write(dir.join("tls.key"), key).unwrap();
            let link = self.dir.path().join("..data_tmp");
            std::os::unix::fs::symlink(&generation, &link).unwrap();
            std::fs::rename(&link, self.dir.path().join("..data")).unwrap();
        }

        fn files(&self) -> TlsFiles {
            TlsFiles {
                cert: self.dir.path().join("tls.crt"),
                key: self.dir.path().join("tls.key"),
                client_ca: None,
            }
        }
    }

    /// The certificate a client that trusts `trusted` is shown in a handshake with `tls`.
    async fn presented(tls: &ReloadingTls, trusted: &[&str]) -> Result<Vec<u8>, io::Error> {
        let mut roots = RootCertStore::empty();
        for pem in trusted {
            roots
                .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                .unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(tls.current());
        let server = tokio::spawn(async move { acceptor.accept(server_io).await });
        let stream = TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("localhost").unwrap(), client_io)
            .await?;
        let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        drop(stream);
        let _ = server.await;
        Ok(leaf)
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn a_renewed_secret_is_served_to_new_handshakes() {
        let (old_cert, old_key) = certificate();
        let (new_cert, new_key) = certificate();
        let mut secret = MountedSecret::new(&old_cert, &old_key);
        let tls = ReloadingTls::load(secret.files()).unwrap();
        assert!(matches!(tls.reload_if_changed(), Reload::Unchanged));
        let trusted = [old_cert.as_str(), new_cert.as_str()];
        assert_eq!(presented(&tls, &trusted).await.unwrap(), der(&old_cert));

        secret.update(new_cert.as_bytes(), new_key.as_bytes());
        assert!(matches!(tls.reload_if_changed(), Reload::Reloaded));
        assert_eq!(presented(&tls, &trusted).await.unwrap(), der(&new_cert));
        assert!(matches!(tls.reload_if_changed(), Reload::Unchanged));
    }

    #[tokio::test]
    async fn files_that_do_not_load_keep_the_previous_certificate() {
        let (cert, key) = certificate();
        let (other_cert, other_key) = certificate();
        let mut secret = MountedSecret::new(&cert, &key);
        let tls = ReloadingTls::load(secret.files()).unwrap();
        let trusted = [cert.as_str(), other_cert.as_str()];

        for (what, new_cert, new_key) in [
            ("not PEM", b"not a certificate".as_slice(), key.as_bytes()),
            (
                "a key that is not the certificate's",
                other_cert.as_bytes(),
                key.as_bytes(),
            ),
            ("an empty key", other_cert.as_bytes(), b"".as_slice()),
        ] {
            secret.update(new_cert, new_key);
            let outcome = tls.reload_if_changed();
            assert!(matches!(outcome, Reload::Failed(_)), "{what}: {outcome:?}");
            assert_eq!(
                presented(&tls, &trusted).await.unwrap(),
                der(&cert),
                "{what}: the previous certificate stays"
            );
            // Reported once: the same content is not loaded (or logged) again.
            assert!(
                matches!(tls.reload_if_changed(), Reload::Unchanged),
                "{what}"
            );
        }

        secret.update(other_cert.as_bytes(), other_key.as_bytes());
        assert!(matches!(tls.reload_if_changed(), Reload::Reloaded));
        assert_eq!(presented(&tls, &trusted).await.unwrap(), der(&other_cert));
    }

    #[test]
    fn files_that_disappear_keep_the_previous_certificate() {
        let (cert, key) = certificate();
        let secret = MountedSecret::new(&cert, &key);
        let tls = ReloadingTls::load(secret.files()).unwrap();
        std::fs::remove_file(secret.dir.path().join("..data")).unwrap();
        let outcome = tls.reload_if_changed();
        assert!(
            matches!(&outcome, Reload::Failed(error) if format!("{error:#}").contains("reading TLS certificate")),
            "{outcome:?}"
        );
    }
}

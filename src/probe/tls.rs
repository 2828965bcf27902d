//! TLS for every protocol: rustls (ring) with the webpki roots, a verifier that remembers what it
//! found so the report can describe the certificate even when the handshake fails, and
//! `allow_insecure_certificate` accepting an untrusted certificate without hiding it.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::CaFile;
use crate::domain::probe::TlsInfo;
use crate::probe::stream::RecordedTcp;

/// Builds one TLS client configuration per connection around shared roots.
#[derive(Debug, Clone)]
pub struct TlsClient {
    provider: Arc<CryptoProvider>,
    verifier: Arc<WebPkiServerVerifier>,
}

/// A handshake that failed, with what was learnt about the certificate before it did.
#[derive(Debug)]
pub struct TlsFailure {
    pub error: io::Error,
    /// Why the certificate was rejected, when that is why the handshake failed.
    pub certificate_error: Option<rustls::Error>,
    pub info: Option<TlsInfo>,
}

/// A handshake that succeeded: the stream, what it negotiated and, when the certificate was only
/// accepted because `allow_insecure_certificate` is on, why it is not trusted.
pub struct Handshake {
    pub stream: TlsStream<RecordedTcp>,
    pub info: TlsInfo,
    pub untrusted_because: Option<rustls::Error>,
}

impl TlsClient {
    /// Trusts the webpki (Mozilla) roots and the operator's extra authorities.
    pub fn with_webpki_roots(extra: &[CaFile]) -> Self {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for file in extra {
            let (added, ignored) = roots.add_parsable_certificates(file.certificates.clone());
            if ignored > 0 {
                tracing::warn!(path = %file.path.display(), added, ignored, "some CA certificates could not be used");
            }
        }
        Self::with_roots(roots).expect("the webpki root store is not empty")
    }

    /// Trusts these roots (a private CA); fails when there are none.
    pub fn with_roots(roots: RootCertStore) -> Result<Self, rustls::client::VerifierBuilderError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
        Ok(Self { provider, verifier })
    }

    /// Runs the TLS handshake for `host` (a name or IP literal) over an open connection.
    pub async fn handshake(
        &self,
        tcp: RecordedTcp,
        host: &str,
        allow_insecure_certificate: bool,
        alpn: &[&[u8]],
    ) -> Result<Handshake, TlsFailure> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(literal.to_owned()).map_err(|_| TlsFailure {
            error: io::Error::new(io::ErrorKind::InvalidInput, "not a valid TLS server name"),
            certificate_error: None,
            info: None,
        })?;
        let observed = Arc::new(Mutex::new(Observed::default()));
        let verifier = Arc::new(Recording {
            inner: self.verifier.clone(),
            allow_insecure_certificate,
            observed: observed.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let result = TlsConnector::from(Arc::new(config))
            .connect(server_name.clone(), tcp)
            .await;
        let observed = std::mem::take(&mut *observed.lock().unwrap_or_else(|p| p.into_inner()));
        let describe = |negotiated: Option<(String, String)>| {
            observed.end_entity.as_ref().map(|certificate| {
                describe(
                    certificate,
                    &server_name,
                    observed.chain_trusted,
                    negotiated,
                )
            })
        };
        match result {
            Ok(stream) => {
                let connection = stream.get_ref().1;
                let negotiated = (
                    connection
                        .protocol_version()
                        .map(|version| tls_version_name(version).to_owned())
                        .unwrap_or_default(),
                    connection
                        .negotiated_cipher_suite()
                        .map(|suite| format!("{:?}", suite.suite()))
                        .unwrap_or_default(),
                );
                let info = describe(Some(negotiated)).unwrap_or_default();
                Ok(Handshake {
                    stream,
                    info,
                    untrusted_because: observed.error,
                })
            }
            Err(error) => {
                let rejected_certificate = error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|inner| matches!(inner, rustls::Error::InvalidCertificate(_)));
                Err(TlsFailure {
                    info: describe(None),
                    certificate_error: observed.error.clone().filter(|_| rejected_certificate),
                    error,
                })
            }
        }
    }
}

fn tls_version_name(version: rustls::ProtocolVersion) -> &'static str {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS (other)",
    }
}

/// What the verifier saw: the server's certificate and, if it is not trusted, why.
#[derive(Debug, Default)]
struct Observed {
    end_entity: Option<CertificateDer<'static>>,
    error: Option<rustls::Error>,
    chain_trusted: bool,
}

/// Verifies like webpki, records the outcome, and lets an untrusted certificate through when the
/// admin allowed it. Handshake signatures are always checked.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    allow_insecure_certificate: bool,
    observed: Arc<Mutex<Observed>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let webpki = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        // webpki checks the dates before it looks for an issuer, and the name only once the chain
        // is trusted: an untrusted chain must still be for this host.
        let untrusted_chain = matches!(
            webpki,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
        let verdict = if untrusted_chain {
            ParsedCertificate::try_from(end_entity)
                .and_then(|parsed| verify_server_name(&parsed, server_name))
                .and(webpki)
        } else {
            webpki
        };
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        observed.end_entity = Some(end_entity.clone().into_owned());
        observed.chain_trusted =
            !untrusted_chain && verdict.as_ref().err().is_none_or(is_name_error);
        observed.error = verdict.as_ref().err().cloned();
        // "Allow non-secure certificate" is for a certificate no trusted authority signed (seed
        // 003); an expired, not yet valid or wrong-name certificate fails whatever the flag says.
        match verdict {
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
                if self.allow_insecure_certificate =>
            {
                Ok(ServerCertVerified::assertion())
            }
            verdict => verdict,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Describes the server's certificate; `negotiated` is the (version, cipher) of a finished handshake.
fn describe(
    der: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    chain_trusted: bool,
    negotiated: Option<(String, String)>,
) -> TlsInfo {
    let (version, cipher) = negotiated.unwrap_or_default();
    let hostname_matches = ParsedCertificate::try_from(der)
        .and_then(|parsed| verify_server_name(&parsed, server_name))
        .is_ok();
    let mut info = TlsInfo {
        version,
        cipher,
        hostname_matches,
        chain_trusted,
        ..TlsInfo::default()
    };
    if let Ok((_, certificate)) = X509Certificate::from_der(der) {
        let validity = certificate.validity();
        info.subject = certificate.subject().to_string();
        info.issuer = certificate.issuer().to_string();
        info.not_before = Some(unix_time(validity.not_before.timestamp()));
        info.not_after = Some(unix_time(validity.not_after.timestamp()));
        info.self_signed = certificate.subject().as_raw() == certificate.issuer().as_raw();
        if let Ok(Some(names)) = certificate.subject_alternative_name() {
            info.subject_alt_names = names
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(format!("DNS:{dns}")),
                    GeneralName::IPAddress(bytes) => {
                        ip_from_bytes(bytes).map(|ip| format!("IP:{ip}"))
                    }
                    _ => None,
                })
                .collect();
        }
    }
    info
}

fn is_name_error(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

fn unix_time(seconds: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

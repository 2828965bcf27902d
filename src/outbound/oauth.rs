//! Proves OAuth grants with a refresh at the provider's token endpoint (RFC 6749 §6): a
//! refused grant (`invalid_grant`) is revoked or expired; anything else proves nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::InboxSettings;
use crate::domain::connection::Provider;
use crate::domain::secret::Secret;
use crate::service::inbox_connections::{GrantCheck, TokenRefresher};

/// The longest a refresh may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Token responses are a few hundred bytes; more is not a token endpoint.
const MAX_RESPONSE: usize = 64 * 1024;

/// One provider's OAuth client.
#[derive(Clone)]
struct Client {
    id: String,
    secret: Secret,
    token_url: url::Url,
}

/// The configured OAuth clients, by provider.
#[derive(Clone)]
pub struct OAuthClients {
    google: Option<Client>,
    microsoft: Option<Client>,
    tls: TlsConnector,
}

impl OAuthClients {
    pub fn from_settings(settings: &InboxSettings) -> Self {
        let client = |id: &Option<String>, secret: &Option<Secret>, url: &url::Url| {
            Some(Client {
                id: id.clone()?,
                secret: secret.clone().unwrap_or_else(|| Secret::new(String::new())),
                token_url: url.clone(),
            })
        };
        let google = &settings.google;
        let microsoft = &settings.microsoft;
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            google: client(
                &google.google_oauth_client_id,
                &google.google_oauth_client_secret,
                &google.google_oauth_token_url,
            ),
            microsoft: client(
                &microsoft.microsoft_oauth_client_id,
                &microsoft.microsoft_oauth_client_secret,
                &microsoft.microsoft_oauth_token_url,
            ),
            tls: TlsConnector::from(Arc::new(config)),
        }
    }

    fn client(&self, provider: Provider) -> Option<&Client> {
        match provider {
            Provider::Gmail => self.google.as_ref(),
            Provider::Office365 => self.microsoft.as_ref(),
            _ => None,
        }
    }

    /// POSTs the form to the token URL; the status and the body.
    async fn post(&self, url: &url::Url, form: String) -> Result<(u16, Bytes), String> {
        let host = url
            .host_str()
            .ok_or("the token URL has no host")?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or("the token URL has no port")?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let request = hyper::Request::post(url.as_str())
            .header(hyper::header::HOST, host.as_str())
            .header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| e.to_string())?;
        match url.scheme() {
            "https" => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| e.to_string())?;
                let tls = self
                    .tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {host}: {e}"))?;
                send(TokioIo::new(tls), request).await
            }
            "http" => send(TokioIo::new(tcp), request).await,
            other => Err(format!("the token URL's scheme {other} is not http(s)")),
        }
    }
}

async fn send<T>(
    io: TokioIo<T>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, Bytes), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string());
    let result = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map(|body| (status, body.to_bytes()))
                .map_err(|e| format!("reading the answer: {e}"))
        }
        Err(error) => Err(error),
    };
    driver.abort();
    result
}

/// The `error` of an OAuth error answer (RFC 6749 §5.2).
fn oauth_error(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(json.get("error")?.as_str()?.to_owned())
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

impl TokenRefresher for OAuthClients {
    async fn check(&self, provider: Provider, refresh_token: &Secret) -> GrantCheck {
        let Some(client) = self.client(provider) else {
            return GrantCheck::NotConfigured;
        };
        let body = form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("client_id", &client.id),
            ("client_secret", client.secret.expose()),
        ]);
        let answer = tokio::time::timeout(TIMEOUT, self.post(&client.token_url, body)).await;
        match answer {
            Err(_) => GrantCheck::Unavailable("the token endpoint did not answer in time".into()),
            Ok(Err(error)) => GrantCheck::Unavailable(error),
            Ok(Ok((200, _))) => GrantCheck::Valid,
            Ok(Ok((status, body))) => match oauth_error(&body) {
                Some(error) if error == "invalid_grant" => GrantCheck::Invalid(error),
                Some(error) => GrantCheck::Unavailable(format!("HTTP {status}, {error}")),
                None => GrantCheck::Unavailable(format!("HTTP {status}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oauth_errors_and_encodes_forms() {
        assert_eq!(
            oauth_error(br#"{"error":"invalid_grant","error_description":"Bad Request"}"#),
            Some("invalid_grant".into())
        );
        assert_eq!(oauth_error(b"<html>"), None);
        assert_eq!(form(&[("a", "x y"), ("b", "1/2&3")]), "a=x+y&b=1%2F2%263");
    }
}

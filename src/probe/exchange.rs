//! Exchange Web Services: POST a minimal SOAP request without credentials and read the answer.
//! EWS answers 401 with its authentication schemes; a 404, a redirect to a sign-in page or a web
//! page mean the URL is not the EWS endpoint. Redirects are reported, never followed.

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::domain::probe::ProbeCredentials;
use crate::probe::Probe;
use crate::probe::classify;
use crate::probe::net::Connector;
use crate::probe::run::{Failure, FieldRef, Passed, ProbeRun, Stopped};
use crate::probe::stream::ProbeStream;

/// The smallest useful EWS call: the inbox's id. Without credentials it only earns a 401.
const GET_INBOX: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"
    xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
  <soap:Header><t:RequestServerVersion Version="Exchange2013"/></soap:Header>
  <soap:Body>
    <m:GetFolder>
      <m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>
      <m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds>
    </m:GetFolder>
  </soap:Body>
</soap:Envelope>
"#;

/// How much of a response body is read.
const BODY_LIMIT: usize = 64 * 1024;

const URL_HINT: &str = "use the EWS endpoint: the URL usually ends in /EWS/Exchange.asmx, e.g. \
     https://mail.example.com/EWS/Exchange.asmx";

type Sender = SendRequest<Full<Bytes>>;

/// What the server answered.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn summary(&self) -> String {
        let mut summary = format!("HTTP {}", self.status);
        for name in [
            WWW_AUTHENTICATE.as_str(),
            LOCATION.as_str(),
            "ms-diagnostics-public",
            "x-ms-diagnostics",
        ] {
            let values: Vec<&str> = self
                .headers
                .get_all(name)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .collect();
            if !values.is_empty() {
                summary.push_str(&format!("; {name}: {}", values.join(", ")));
            }
        }
        if !self.body.trim().is_empty() {
            summary.push_str("; ");
            summary.push_str(&classify::excerpt(self.body.as_bytes()));
        }
        summary
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The schemes of every `WWW-Authenticate` challenge (Negotiate, NTLM, Basic, Bearer, …).
    fn auth_schemes(&self) -> Vec<String> {
        let mut schemes: Vec<String> = Vec::new();
        for value in self.headers.get_all(WWW_AUTHENTICATE) {
            let Ok(value) = value.to_str() else { continue };
            for challenge in value.split(',') {
                let Some(scheme) = challenge.split_whitespace().next() else {
                    continue;
                };
                if !scheme.contains('=') && !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
                {
                    schemes.push(scheme.to_owned());
                }
            }
        }
        schemes
    }
}

pub async fn probe<C: Connector>(
    probe: &Probe<C>,
    run: &mut ProbeRun<'_>,
    url: &str,
) -> Result<(), Stopped> {
    let Some(uri) = url
        .parse::<Uri>()
        .ok()
        .filter(|uri| uri.scheme_str() == Some("https") && uri.host().is_some())
        // Credentials never travel in the URL.
        .filter(|uri| {
            !uri.authority()
                .is_some_and(|authority| authority.as_str().contains('@'))
        })
    else {
        let failure = Failure::failed(
            "the EWS URL must be https:// with a host name and without credentials",
            FieldRef::Url,
            URL_HINT,
        );
        return run
            .stage("url", async { Err::<Passed<()>, _>(failure) })
            .await;
    };
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = run.connect(probe, &host, port).await?;
    let tls = run
        .secure(&probe.tls, tcp, &host, &[b"http/1.1".as_slice()])
        .await?;
    let io = TokioIo::new(ProbeStream::Tls(Box::new(tls)));
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(io).await {
        Ok(parts) => parts,
        Err(error) => {
            return run
                .stage("ews_request", async move {
                    Err::<Passed<()>, _>(http_error(&error))
                })
                .await;
        }
    };
    // Drives the connection; aborted when the probe ends, so a stalled server leaves nothing behind.
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let authority = uri.authority().map(ToString::to_string).unwrap_or(host);
    run.auth_mechanisms = run
        .stage("ews_request", async {
            let answer = post(&mut sender, &uri, &authority, None).await?;
            judge(&answer)
        })
        .await?;
    if let Some(credentials) = run.request.credentials.clone() {
        let schemes = run.auth_mechanisms.clone();
        run.stage("login", async {
            if !schemes.iter().any(|s| s.eq_ignore_ascii_case("Basic")) {
                return Ok(Passed::new(
                    (),
                    format!(
                        "the password was not checked: the server offers {}, and only Basic can be \
                         checked without signing in interactively",
                        schemes.join(", ")
                    ),
                )
                .warning());
            }
            let answer = post(&mut sender, &uri, &authority, Some(&credentials)).await?;
            match answer.status {
                status if status.is_success() => {
                    Ok(Passed::new((), "Basic credentials accepted").with_reply(answer.summary()))
                }
                StatusCode::UNAUTHORIZED => Err(classify::login_refused(answer.summary())),
                _ => Err(Failure::failed(
                    format!(
                        "unexpected answer to the credentials: HTTP {}",
                        answer.status
                    ),
                    FieldRef::Url,
                    URL_HINT,
                )
                .with_reply(answer.summary())),
            }
        })
        .await?;
    }
    Ok(())
}

/// What the first, anonymous answer says about the URL.
fn judge(answer: &Answer) -> Result<Passed<Vec<String>>, Failure> {
    let summary = answer.summary();
    let status = answer.status;
    if status == StatusCode::UNAUTHORIZED {
        let schemes = answer.auth_schemes();
        let diagnostics = answer
            .header("ms-diagnostics-public")
            .or_else(|| answer.header("x-ms-diagnostics"));
        let modern_only = schemes.iter().all(|s| s.eq_ignore_ascii_case("Bearer"));
        let mut detail = format!(
            "EWS answered and asks for authentication ({})",
            if schemes.is_empty() {
                "no scheme named".to_owned()
            } else {
                schemes.join(", ")
            }
        );
        if let Some(diagnostics) = diagnostics {
            detail.push_str(&format!("; server diagnostics: {diagnostics}"));
        }
        if modern_only && !schemes.is_empty() {
            detail.push_str("; only modern authentication (OAuth) is accepted, not passwords");
        }
        return Ok(Passed::new(schemes, detail).with_reply(summary));
    }
    if status.is_success() {
        let xml = answer
            .header(CONTENT_TYPE.as_str())
            .is_some_and(|content_type| content_type.contains("xml"));
        return if xml {
            Ok(
                Passed::new(Vec::new(), "EWS answered without asking for authentication")
                    .with_reply(summary),
            )
        } else {
            Err(Failure::failed(
                format!("the URL answers with a web page, not EWS (HTTP {status})"),
                FieldRef::Url,
                URL_HINT,
            )
            .with_reply(summary))
        };
    }
    if status.is_redirection() {
        let location = answer.header(LOCATION.as_str()).unwrap_or("nowhere");
        let login_page = ["login", "logon", "signin", "adfs", "/owa", "auth"]
            .iter()
            .any(|word| location.to_ascii_lowercase().contains(word));
        let detail = if login_page {
            format!("the URL redirects to a sign-in page ({location}), not to EWS")
        } else {
            format!("the URL redirects to {location} (redirects are not followed)")
        };
        return Err(Failure::failed(detail, FieldRef::Url, URL_HINT).with_reply(summary));
    }
    if status == StatusCode::NOT_FOUND {
        return Err(Failure::failed(
            "there is no EWS endpoint at this URL (HTTP 404)",
            FieldRef::Url,
            URL_HINT,
        )
        .with_reply(summary));
    }
    Err(Failure::failed(
        format!("EWS did not answer as expected (HTTP {status})"),
        FieldRef::Url,
        URL_HINT,
    )
    .with_reply(summary))
}

async fn post(
    sender: &mut Sender,
    uri: &Uri,
    authority: &str,
    credentials: Option<&ProbeCredentials>,
) -> Result<Answer, Failure> {
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "text/xml; charset=utf-8")
        .header(
            USER_AGENT,
            concat!("mailconnect-probe/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(credentials) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            credentials.username,
            credentials.password.expose()
        ));
        request = request.header(AUTHORIZATION, format!("Basic {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from_static(GET_INBOX.as_bytes())))
        .map_err(|error| http_error(&error))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| http_error(&error))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, BODY_LIMIT)
        .collect()
        .await
        .map(|collected| String::from_utf8_lossy(&collected.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn http_error(error: &dyn std::fmt::Display) -> Failure {
    Failure::failed(
        format!("the HTTPS exchange failed: {error}"),
        FieldRef::Url,
        "the server does not answer HTTP on this URL: check the host and port of the EWS URL",
    )
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! An OAuth token endpoint on loopback (RFC 6749 §6 refreshes): it accepts every refresh token
//! but those marked revoked, which get `invalid_grant`, and records what it was asked.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

pub const CLIENT_ID: &str = "mailconnect-test-client";
pub const CLIENT_SECRET: &str = "client-secret-of-the-test";

#[derive(Default)]
struct State {
    revoked: HashSet<String>,
    /// The form of every request, in order.
    requests: Vec<Vec<(String, String)>>,
}

pub struct TokenEndpoint {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl TokenEndpoint {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, Arc::clone(&shared)));
            }
        });
        Self {
            addr,
            state,
            server,
        }
    }

    pub fn url(&self) -> url::Url {
        format!("http://{}/token", self.addr).parse().unwrap()
    }

    pub fn revoke(&self, refresh_token: &str) {
        self.state
            .lock()
            .unwrap()
            .revoked
            .insert(refresh_token.to_owned());
    }

    /// The refresh tokens asked about, in order.
    pub fn refreshed(&self) -> Vec<String> {
        self.forms()
            .iter()
            .filter_map(|form| field(form, "refresh_token"))
            .collect()
    }

    pub fn forms(&self) -> Vec<Vec<(String, String)>> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn field(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
}

async fn answer(mut stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    let body = loop {
        let Ok(read) = stream.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        request.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&request).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        if body.len() >= length {
            break body[..length].to_owned();
        }
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let token = field(&form, "refresh_token").unwrap_or_default();
    let revoked = {
        let mut state = state.lock().unwrap();
        state.requests.push(form);
        state.revoked.contains(&token)
    };
    let (status, json) = if revoked {
        (
            "400 Bad Request",
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
        )
    } else {
        (
            "200 OK",
            r#"{"access_token":"ya29.test","expires_in":3599,"token_type":"Bearer"}"#,
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
        json.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

//! IMAP (async-imap): implicit TLS or STARTTLS, greeting, CAPABILITY, optional login, LOGOUT.

use async_imap::Client;
use async_imap::imap_proto::{Capability, Response, Status};
use tokio::io::AsyncWriteExt as _;

use crate::domain::probe::{ProbeCredentials, Security, ServerEndpoint};
use crate::probe::Probe;
use crate::probe::classify;
use crate::probe::literal::LiteralGuard;
use crate::probe::net::Connector;
use crate::probe::run::{Failure, FieldRef, Passed, ProbeRun, Stopped};
use crate::probe::stream::{ProbeStream, Transcript};

type ImapClient = Client<LiteralGuard<ProbeStream>>;

/// Untagged replies other than CAPABILITY tolerated while waiting for CAPABILITY to end: each is
/// dropped at once, and a server that sends more is not an IMAP server worth waiting for.
const MAX_OTHER_REPLIES: usize = 32;

/// Capability atoms kept (Dovecot announces about 30).
const MAX_CAPABILITIES: usize = 128;

pub async fn probe<C: Connector>(
    probe: &Probe<C>,
    run: &mut ProbeRun<'_>,
    server: &ServerEndpoint,
) -> Result<(), Stopped> {
    let stream = run.open(probe, server).await?;
    let mut client = Client::new(LiteralGuard::new(stream));
    let security = server.security;
    let transcript = run.transcript.clone();
    run.stage("greeting", greeting(&mut client, transcript, security))
        .await?;
    let mut capabilities = run
        .stage("capabilities", capability(&mut client, "C1"))
        .await?;
    if security == Security::StartTls {
        let offered = capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case("STARTTLS"));
        run.stage("starttls", async {
            if !offered {
                return Err(Failure::failed(
                    "the server does not offer STARTTLS",
                    FieldRef::Security,
                    "the password would travel unencrypted: use the server's implicit TLS port \
                     (usually 993) with implicit TLS, or enable STARTTLS on the server",
                ));
            }
            client
                .run_command_and_check_ok("STARTTLS", None)
                .await
                .map_err(|error| imap_error("STARTTLS", &error))?;
            Ok(Passed::new((), "STARTTLS accepted"))
        })
        .await?;
        let ProbeStream::Plain(tcp) = client.into_inner().into_inner() else {
            unreachable!("STARTTLS runs on a plain connection");
        };
        let tls = run.secure(&probe.tls, tcp, &server.host, &[]).await?;
        client = Client::new(LiteralGuard::new(ProbeStream::Tls(Box::new(tls))));
        capabilities = run
            .stage("capabilities_after_tls", capability(&mut client, "C2"))
            .await?;
    }
    run.auth_mechanisms = capabilities
        .iter()
        .filter_map(|c| {
            c.get(..5)
                .filter(|prefix| prefix.eq_ignore_ascii_case("AUTH="))
                .map(|_| c[5..].to_owned())
        })
        .collect();
    run.capabilities = capabilities;
    if let Some(credentials) = run.request.credentials.clone() {
        let mechanisms = run.auth_mechanisms.clone();
        let login_disabled = run
            .capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case("LOGINDISABLED"));
        let mut session = run
            .stage(
                "login",
                login(client, &credentials, &mechanisms, login_disabled),
            )
            .await?;
        run.stage("logout", async {
            session
                .logout()
                .await
                .map_err(|error| imap_error("LOGOUT", &error))?;
            Ok(Passed::new((), "logged out"))
        })
        .await
    } else {
        run.stage("logout", async {
            client
                .run_command_and_check_ok("LOGOUT", None)
                .await
                .map_err(|error| imap_error("LOGOUT", &error))?;
            Ok(Passed::new((), "logged out"))
        })
        .await
    }
}

/// The server's first line must be an IMAP OK (or PREAUTH) greeting.
async fn greeting(
    client: &mut ImapClient,
    transcript: Transcript,
    security: Security,
) -> Result<Passed<()>, Failure> {
    let mark = transcript.mark();
    let not_imap = |error: &str| {
        let mut failure = classify::not_this_protocol("IMAP", &transcript.since(mark), security);
        failure.detail = format!("{} ({error})", failure.detail);
        failure
    };
    let response = match client.read_response().await {
        Ok(Some(response)) => response,
        Ok(None) => return Err(not_imap("connection closed")),
        Err(error) => return Err(not_imap(&error.to_string())),
    };
    match response.parsed() {
        Response::Data {
            status: status @ (Status::Ok | Status::PreAuth),
            outcome,
        } => Ok(
            Passed::new((), "IMAP greeting received").with_reply(format!(
                "* {} {}",
                if *status == Status::Ok {
                    "OK"
                } else {
                    "PREAUTH"
                },
                outcome.information.as_deref().unwrap_or_default()
            )),
        ),
        Response::Data {
            status: Status::Bye,
            outcome,
        } => Err(Failure::failed(
            "the server said BYE instead of a greeting",
            FieldRef::Host,
            "the server refuses connections from us: it may be overloaded or block our egress IP \
             addresses (AllowlistService lists them)",
        )
        .with_reply(format!(
            "* BYE {}",
            outcome.information.as_deref().unwrap_or_default()
        ))),
        _ => Err(not_imap("not an untagged OK greeting")),
    }
}

/// CAPABILITY, read reply by reply: only the capabilities are kept, and only so many of them.
/// (async-imap's own command loop would hand every untagged reply over, each in a 4 KiB buffer.)
async fn capability(client: &mut ImapClient, tag: &str) -> Result<Passed<Vec<String>>, Failure> {
    let broke_off = |error: &dyn std::fmt::Display| imap_error("CAPABILITY", error);
    let command = format!("{tag} CAPABILITY\r\n");
    let stream = client.get_mut();
    stream
        .write_all(command.as_bytes())
        .await
        .map_err(|e| broke_off(&e))?;
    stream.flush().await.map_err(|e| broke_off(&e))?;
    let mut capabilities = Vec::new();
    let mut others = 0;
    loop {
        let response = client
            .read_response()
            .await
            .map_err(|e| broke_off(&e))?
            .ok_or_else(|| broke_off(&"the connection was closed"))?;
        match response.parsed() {
            Response::Capabilities(list) => {
                let room = MAX_CAPABILITIES.saturating_sub(capabilities.len());
                capabilities.extend(list.iter().take(room).map(|capability| match capability {
                    Capability::Imap4rev1 => "IMAP4rev1".to_owned(),
                    Capability::Auth(mechanism) => format!("AUTH={mechanism}"),
                    Capability::Atom(atom) => atom.to_string(),
                }));
            }
            Response::Done {
                tag: done, status, ..
            } if done.0 == tag => {
                if *status != Status::Ok {
                    return Err(broke_off(&format!("the server answered {status:?}")));
                }
                break;
            }
            _ if others < MAX_OTHER_REPLIES => others += 1,
            _ => {
                return Err(Failure::failed(
                    format!(
                        "the server sent more than {MAX_OTHER_REPLIES} other replies instead of \
                         its capabilities"
                    ),
                    FieldRef::Port,
                    "this does not behave like an IMAP server: check the host and port",
                ));
            }
        }
    }
    if capabilities.is_empty() {
        return Err(Failure::failed(
            "the server listed no capabilities",
            FieldRef::Port,
            "this does not behave like an IMAP server: check the host and port",
        ));
    }
    let detail = format!("{} capabilities", capabilities.len());
    let reply = format!("* CAPABILITY {}", capabilities.join(" "));
    Ok(Passed::new(capabilities, detail).with_reply(reply))
}

/// LOGIN, or AUTHENTICATE PLAIN when the server offers it.
async fn login(
    client: ImapClient,
    credentials: &ProbeCredentials,
    mechanisms: &[String],
    login_disabled: bool,
) -> Result<Passed<async_imap::Session<LiteralGuard<ProbeStream>>>, Failure> {
    let password = credentials.password.expose();
    let plain = mechanisms.iter().any(|m| m.eq_ignore_ascii_case("PLAIN"));
    let (result, how) = if plain {
        let authenticator = PlainAuthenticator {
            response: format!("\0{}\0{password}", credentials.username),
        };
        (
            client.authenticate("PLAIN", authenticator).await,
            "AUTHENTICATE PLAIN",
        )
    } else if login_disabled {
        return Err(classify::mechanism_unsupported(mechanisms));
    } else {
        (client.login(&credentials.username, password).await, "LOGIN")
    };
    match result {
        Ok(session) => Ok(Passed::new(session, format!("{how} accepted"))),
        Err((async_imap::error::Error::No(reply), _)) => Err(classify::login_refused(reply)),
        Err((error, _)) => Err(imap_error(how, &error)),
    }
}

struct PlainAuthenticator {
    response: String,
}

impl async_imap::Authenticator for PlainAuthenticator {
    type Response = String;

    fn process(&mut self, _challenge: &[u8]) -> String {
        std::mem::take(&mut self.response)
    }
}

/// A command that failed for another reason than a refused login.
fn imap_error(command: &str, error: &dyn std::fmt::Display) -> Failure {
    Failure::failed(
        format!("{command} failed: {error}"),
        FieldRef::Host,
        "the server broke off the conversation: check that this is a working IMAP server",
    )
}

//! IMAP (async-imap): implicit TLS or STARTTLS, greeting, CAPABILITY, optional login, LOGOUT.

use async_imap::Client;
use async_imap::imap_proto::{Capability, Response, Status};
use async_imap::types::UnsolicitedResponse;

use crate::domain::probe::{ProbeCredentials, Security, ServerEndpoint};
use crate::probe::Probe;
use crate::probe::classify;
use crate::probe::net::Connector;
use crate::probe::run::{Failure, FieldRef, Passed, ProbeRun, Stopped};
use crate::probe::stream::{ProbeStream, Transcript};

type ImapClient = Client<ProbeStream>;

pub async fn probe<C: Connector>(
    probe: &Probe<C>,
    run: &mut ProbeRun<'_>,
    server: &ServerEndpoint,
) -> Result<(), Stopped> {
    let stream = run.open(probe, server).await?;
    let mut client = Client::new(stream);
    let security = server.security;
    let transcript = run.transcript.clone();
    run.stage("greeting", greeting(&mut client, transcript, security))
        .await?;
    let mut capabilities = run.stage("capabilities", capability(&mut client)).await?;
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
        let ProbeStream::Plain(tcp) = client.into_inner() else {
            unreachable!("STARTTLS runs on a plain connection");
        };
        let tls = run.secure(&probe.tls, tcp, &server.host, &[]).await?;
        client = Client::new(ProbeStream::Tls(Box::new(tls)));
        capabilities = run
            .stage("capabilities_after_tls", capability(&mut client))
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

/// CAPABILITY: async-imap parses the untagged reply and hands it over as unsolicited.
async fn capability(client: &mut ImapClient) -> Result<Passed<Vec<String>>, Failure> {
    let (sender, receiver) = async_channel::unbounded();
    client
        .run_command_and_check_ok("CAPABILITY", Some(sender))
        .await
        .map_err(|error| imap_error("CAPABILITY", &error))?;
    let mut capabilities = Vec::new();
    while let Ok(response) = receiver.try_recv() {
        if let UnsolicitedResponse::Other(data) = response
            && let Response::Capabilities(list) = data.parsed()
        {
            capabilities.extend(list.iter().map(|capability| match capability {
                Capability::Imap4rev1 => "IMAP4rev1".to_owned(),
                Capability::Auth(mechanism) => format!("AUTH={mechanism}"),
                Capability::Atom(atom) => atom.to_string(),
            }));
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
) -> Result<Passed<async_imap::Session<ProbeStream>>, Failure> {
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
fn imap_error(command: &str, error: &async_imap::error::Error) -> Failure {
    Failure::failed(
        format!("{command} failed: {error}"),
        FieldRef::Host,
        "the server broke off the conversation: check that this is a working IMAP server",
    )
}

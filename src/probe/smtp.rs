//! SMTP (lettre's connection and commands over our guarded, TLS-inspected stream): implicit TLS
//! or STARTTLS (required when asked for), EHLO extensions, AUTH mechanisms, optional AUTH.
//!
//! lettre's own STARTTLS would run its TLS configuration, which cannot report the negotiated
//! version and cipher or accept an untrusted certificate while still describing it. So the
//! connection is lent to lettre, taken back after `STARTTLS`, and handed again over our TLS.

#![allow(deprecated)] // `AsyncNetworkStream` is how lettre takes an existing stream.

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncNetworkStream, AsyncSmtpConnection};
use lettre::transport::smtp::commands::{Auth, Ehlo, Quit, Starttls};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use crate::domain::probe::{ProbeCredentials, Security, ServerEndpoint};
use crate::probe::Probe;
use crate::probe::classify;
use crate::probe::net::Connector;
use crate::probe::run::{Failure, FieldRef, Passed, ProbeRun, Stopped};
use crate::probe::stream::{Lent, ProbeStream, Transcript};

/// At most this many AUTH challenges are answered (LOGIN needs two).
const MAX_CHALLENGES: usize = 4;

pub async fn probe<C: Connector>(
    probe: &Probe<C>,
    run: &mut ProbeRun<'_>,
    server: &ServerEndpoint,
) -> Result<(), Stopped> {
    let stream = run.open(probe, server).await?;
    let lent = Lent::new(stream);
    let client_id = ClientId::default();
    let transcript = run.transcript.clone();
    let mut connection = run
        .stage("greeting", greeting(lent.clone(), &client_id, transcript))
        .await?;
    let mut extensions = run.stage("ehlo", ehlo(&mut connection, &client_id)).await?;
    if server.security == Security::StartTls {
        let offered = extensions
            .iter()
            .any(|line| line.eq_ignore_ascii_case("STARTTLS"));
        run.stage("starttls", async {
            if !offered {
                return Err(Failure::failed(
                    "the server does not offer STARTTLS",
                    FieldRef::Security,
                    "the password would travel unencrypted: use the server's implicit TLS port \
                     (usually 465) with implicit TLS, or enable STARTTLS on the server",
                ));
            }
            let reply = connection
                .command(Starttls)
                .await
                .map_err(|error| smtp_error("STARTTLS", &error))?;
            Ok(Passed::new((), "STARTTLS accepted").with_reply(reply_text(&reply)))
        })
        .await?;
        let Some(ProbeStream::Plain(tcp)) = lent.reclaim() else {
            unreachable!("STARTTLS runs on the plain connection lent to lettre");
        };
        let tls = run.secure(&probe.tls, tcp, &server.host, &[]).await?;
        // Never reclaimed: `Lent` is simply the stream type lettre accepts.
        let upgraded = Lent::new(ProbeStream::Tls(Box::new(tls)));
        connection.set_stream(AsyncNetworkStream::use_existing_tokio1(Box::new(upgraded)));
        extensions = run
            .stage("ehlo_after_tls", ehlo(&mut connection, &client_id))
            .await?;
    }
    run.auth_mechanisms = extensions
        .iter()
        .filter_map(|line| {
            line.strip_prefix("AUTH ")
                .or_else(|| line.strip_prefix("AUTH="))
        })
        .flat_map(|mechanisms| mechanisms.split_whitespace().map(str::to_owned))
        .collect();
    run.capabilities = extensions;
    if let Some(credentials) = run.request.credentials.clone() {
        let offered = run.auth_mechanisms.clone();
        run.stage("login", login(&mut connection, &credentials, &offered))
            .await?;
    }
    run.stage("quit", async {
        let reply = connection
            .command(Quit)
            .await
            .map_err(|error| smtp_error("QUIT", &error))?;
        Ok(Passed::new((), "QUIT accepted").with_reply(reply_text(&reply)))
    })
    .await
}

/// The banner (lettre reads it and sends a first EHLO).
async fn greeting(
    lent: Lent,
    client_id: &ClientId,
    transcript: Transcript,
) -> Result<Passed<AsyncSmtpConnection>, Failure> {
    let mark = transcript.mark();
    match AsyncSmtpConnection::connect_with_transport(Box::new(lent), client_id).await {
        Ok(connection) => {
            let name = connection.server_info().name().to_owned();
            Ok(Passed::new(connection, format!("SMTP banner from {name}")))
        }
        Err(error) if error.is_permanent() || error.is_transient() => Err(Failure::failed(
            format!("the server refused the session: {error}"),
            FieldRef::Host,
            "the server turns us away: it may block our egress IP addresses (AllowlistService \
             lists them) or be overloaded",
        )),
        Err(error) => {
            let mut failure =
                classify::not_this_protocol("SMTP", &transcript.since(mark), Security::StartTls);
            failure.detail = format!("{} ({error})", failure.detail);
            Err(failure)
        }
    }
}

/// EHLO, listing every extension line (lettre keeps only those it uses).
async fn ehlo(
    connection: &mut AsyncSmtpConnection,
    client_id: &ClientId,
) -> Result<Passed<Vec<String>>, Failure> {
    let reply = connection
        .command(Ehlo::new(client_id.clone()))
        .await
        .map_err(|error| smtp_error("EHLO", &error))?;
    let extensions: Vec<String> = reply.message().skip(1).map(str::to_owned).collect();
    Ok(Passed::new(
        extensions.clone(),
        format!("{} extensions", extensions.len()),
    )
    .with_reply(reply_text(&reply)))
}

/// AUTH PLAIN (or LOGIN) with the given credentials.
async fn login(
    connection: &mut AsyncSmtpConnection,
    credentials: &ProbeCredentials,
    offered: &[String],
) -> Result<Passed<()>, Failure> {
    let offers = |name: &str| offered.iter().any(|m| m.eq_ignore_ascii_case(name));
    let mechanism = if offers("PLAIN") {
        Mechanism::Plain
    } else if offers("LOGIN") {
        Mechanism::Login
    } else {
        return Err(classify::mechanism_unsupported(offered));
    };
    let credentials = Credentials::new(
        credentials.username.clone(),
        credentials.password.expose().to_owned(),
    );
    let auth_error = |error: lettre::transport::smtp::Error| match error.status().map(u16::from) {
        Some(535) => classify::login_refused(error.to_string()),
        Some(504 | 534 | 538) => classify::mechanism_unsupported(offered),
        Some(530) => Failure::failed(
            format!("the server wants TLS before AUTH: {error}"),
            FieldRef::Security,
            "use STARTTLS or implicit TLS: this server does not accept a password in plain text",
        ),
        _ => smtp_error("AUTH", &error),
    };
    let command = Auth::new(mechanism, credentials.clone(), None).map_err(auth_error)?;
    let mut reply = connection.command(command).await.map_err(auth_error)?;
    for _ in 0..MAX_CHALLENGES {
        if !reply.has_code(334) {
            break;
        }
        let answer =
            Auth::new_from_response(mechanism, credentials.clone(), &reply).map_err(auth_error)?;
        reply = connection.command(answer).await.map_err(auth_error)?;
    }
    if reply.has_code(235) {
        Ok(Passed::new((), format!("AUTH {mechanism} accepted")).with_reply(reply_text(&reply)))
    } else {
        Err(smtp_error(
            "AUTH",
            &format!("unexpected reply {}", reply_text(&reply)),
        ))
    }
}

fn reply_text(reply: &Response) -> String {
    let lines: Vec<&str> = reply.message().collect();
    format!("{} {}", reply.code(), lines.join(" / "))
}

fn smtp_error(command: &str, error: &dyn std::fmt::Display) -> Failure {
    Failure::failed(
        format!("{command} failed: {error}"),
        FieldRef::Host,
        "the server broke off the conversation: check that this is a working SMTP server",
    )
}

//! Mail arriving at a hosted channel's forwarding address (seed 001): who the original sender
//! is (not the mailbox that forwarded it), whether a person wrote it (not an auto-reply, a
//! delivery report or the service's own mail coming back), whether it continues a conversation,
//! and what a forwarding confirmation holds. Pure: the bytes in, an analysis out; the MIME
//! parsing is mail-parser's, whatever the bytes (it never panics, and neither does this).

mod forward_block;

use mail_parser::{Address, HeaderForm, HeaderValue, Message, MessageParser, MimeHeaders};

use super::email::EmailAddress;

/// A sender as the CRM needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// A valid address (domain lower-cased).
    pub email_address: String,
    /// The display name, unquoted; empty if none.
    pub display_name: String,
}

/// Longest display name kept (longer ones are cut, never refused: they come from strangers).
const MAX_NAME: usize = 256;

impl Sender {
    /// `None` unless `address` is a valid address.
    pub fn parse(address: &str, name: &str) -> Option<Sender> {
        let email = EmailAddress::parse("sender", address).ok()?;
        let display_name: String = name
            .trim()
            .trim_matches(['"', '\''])
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_NAME)
            .collect();
        Some(Sender {
            email_address: email.as_str().to_owned(),
            display_name,
        })
    }

    fn key(&self) -> String {
        self.email_address.to_lowercase()
    }
}

/// How the original sender was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributionRule {
    /// Not forwarded: `From` wrote it.
    FromHeader,
    /// Forwarded automatically with the original headers kept (`Resent-*`, `X-Forwarded-For`).
    AutoForward,
    /// A mailing list or group rewrote `From`; the original is in `X-Original-From`,
    /// `X-Original-Sender` or `Reply-To`.
    ListRewrite,
    /// Forwarded by hand inline: the block's `From:` line.
    InlineForward,
    /// Forwarded as an attached `message/rfc822`.
    AttachedMessage,
    /// Forwarded, original not found: the forwarder.
    ForwarderFallback,
}

/// What kind of message arrived; only a conversation opens one or moves the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A person wrote it.
    Conversation,
    /// An auto-reply or bulk mail (`Auto-Submitted`, `Precedence: bulk/list/junk`).
    Automatic,
    /// A delivery status notification (`multipart/report`).
    DeliveryReport,
    /// One of the service's own notification or verification emails, come back.
    Loop,
}

/// What the router knows about the channel the mail arrived for.
pub struct Context<'a> {
    /// The team address of the channel, lower-cased.
    pub team_address: &'a str,
    /// The login addresses of the account's users, lower-cased.
    pub user_addresses: &'a [String],
    /// Message-ID prefixes of the service's own mail (`notification-`, `verification-`) …
    pub own_id_prefixes: &'a [&'a str],
    /// … at the domain of its From address, which is `own_address`.
    pub own_domain: &'a str,
    pub own_address: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub original_sender: Sender,
    pub rule: AttributionRule,
    pub forwarded_by: Option<Sender>,
    /// Without angle brackets; empty if none.
    pub message_id: String,
    /// It answers an earlier message (`In-Reply-To` or `References`).
    pub reply: bool,
    pub kind: MessageKind,
    /// At most 200 characters.
    pub subject: String,
    /// The confirmation code or link a forwarding confirmation holds (Gmail, Outlook).
    pub confirmation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("is empty or not an email message (no header could be read)")]
    Unparseable,
    #[error("has no From (or Sender) address to attribute the email to")]
    NoSender,
}

/// Subject prefixes of a forward (English, French, German, Spanish).
const FORWARD_PREFIXES: &[&str] = &["fwd:", "fw:", "tr:", "wg:", "rv:", "enc:"];
const MAX_SUBJECT: usize = 200;
const MAX_CONFIRMATION: usize = 500;

pub fn analyze(raw: &[u8], context: &Context<'_>) -> Result<Analysis, InboundError> {
    let message = MessageParser::new()
        .parse(raw)
        .filter(|message| !message.headers().is_empty())
        .ok_or(InboundError::Unparseable)?;
    let from = first_sender(message.from())
        .or_else(|| first_sender(message.sender()))
        .ok_or(InboundError::NoSender)?;
    let (original_sender, rule, forwarded_by) = attribute(&message, from.clone(), context);
    let subject: String = message
        .subject()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_SUBJECT)
        .collect();
    let body = message.body_text(0).unwrap_or_default();
    Ok(Analysis {
        message_id: message.message_id().unwrap_or_default().trim().to_owned(),
        reply: !message.in_reply_to().is_empty() || !message.references().is_empty(),
        kind: kind(&message, &from, context),
        confirmation: confirmation(&subject, &body),
        subject,
        original_sender,
        rule,
        forwarded_by,
    })
}

fn first_sender(address: Option<&Address<'_>>) -> Option<Sender> {
    address?
        .iter()
        .find_map(|addr| Sender::parse(addr.address()?, addr.name().unwrap_or_default()))
}

/// An address header mail-parser reads as raw text by default (`X-Original-From`, …).
fn address_header(message: &Message<'_>, name: &'static str) -> Option<Sender> {
    message
        .header_as(name, HeaderForm::Addresses)
        .iter()
        .find_map(|value| match value {
            HeaderValue::Address(address) => first_sender(Some(address)),
            _ => None,
        })
}

fn raw_header<'a>(message: &'a Message<'_>, name: &'static str) -> Option<&'a str> {
    message.header_raw(name).map(str::trim)
}

fn attribute(
    message: &Message<'_>,
    from: Sender,
    context: &Context<'_>,
) -> (Sender, AttributionRule, Option<Sender>) {
    let resent =
        first_sender(message.resent_from()).or_else(|| first_sender(message.resent_sender()));
    if let Some(resent) = resent {
        return (from, AttributionRule::AutoForward, Some(resent));
    }
    if let Some(original) = list_original(message, &from, context) {
        return (original, AttributionRule::ListRewrite, Some(from));
    }
    let ours = from.key() == context.team_address
        || context
            .user_addresses
            .iter()
            .any(|user| *user == from.key());
    if ours {
        return manual_forward(message, from);
    }
    // Gmail's automatic forwarding keeps the headers and names the forwarder.
    let forwarder = raw_header(message, "X-Forwarded-For").and_then(|value| {
        value
            .split_whitespace()
            .find_map(|word| Sender::parse(word.trim_matches(['<', '>', ',']), ""))
    });
    match forwarder {
        Some(forwarder) => (from, AttributionRule::AutoForward, Some(forwarder)),
        None => (from, AttributionRule::FromHeader, None),
    }
}

/// The person a list or group wrote for, when it rewrote `From` ("Ana via Support").
fn list_original(message: &Message<'_>, from: &Sender, context: &Context<'_>) -> Option<Sender> {
    let via = from.display_name.to_lowercase().contains(" via ");
    let listed =
        via || raw_header(message, "List-Id").is_some() || from.key() == context.team_address;
    if !listed {
        return None;
    }
    address_header(message, "X-Original-From")
        .or_else(|| address_header(message, "X-Original-Sender"))
        .or_else(|| {
            first_sender(message.reply_to()).filter(|reply_to| via && reply_to.key() != from.key())
        })
        .filter(|original| original.key() != from.key())
}

/// A message from the team address or a user of the account: a forward by hand when it looks
/// like one; its original is in an attached message or the body's forwarded block.
fn manual_forward(
    message: &Message<'_>,
    from: Sender,
) -> (Sender, AttributionRule, Option<Sender>) {
    let attached = message.attachments().find_map(|part| part.message());
    if let Some(original) = attached.and_then(|inner| first_sender(inner.from())) {
        return (original, AttributionRule::AttachedMessage, Some(from));
    }
    let body = message.body_text(0).unwrap_or_default();
    if let Some(original) = forward_block::forwarded_sender(&body) {
        return (original, AttributionRule::InlineForward, Some(from));
    }
    let subject = message
        .subject()
        .unwrap_or_default()
        .trim_start()
        .to_lowercase();
    let forwarded = attached.is_some()
        || forward_block::has_forward_marker(&body)
        || FORWARD_PREFIXES
            .iter()
            .any(|prefix| subject.starts_with(prefix));
    if forwarded {
        (from.clone(), AttributionRule::ForwarderFallback, Some(from))
    } else {
        (from, AttributionRule::FromHeader, None)
    }
}

fn kind(message: &Message<'_>, from: &Sender, context: &Context<'_>) -> MessageKind {
    let id = message.message_id().unwrap_or_default().to_lowercase();
    let own_id = !context.own_domain.is_empty()
        && id.ends_with(&format!("@{}", context.own_domain.to_lowercase()))
        && context
            .own_id_prefixes
            .iter()
            .any(|prefix| id.starts_with(prefix));
    if own_id || from.key() == context.own_address.to_lowercase() {
        return MessageKind::Loop;
    }
    let report = message.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    });
    if report {
        return MessageKind::DeliveryReport;
    }
    let auto_submitted = raw_header(message, "Auto-Submitted")
        .is_some_and(|value| !value.to_lowercase().starts_with("no"));
    let precedence = raw_header(message, "Precedence").map(str::to_lowercase);
    // The team's own group distributing a customer's message is not bulk mail.
    let team_list = list_original(message, from, context).is_some();
    let bulk = match precedence.as_deref() {
        Some("bulk" | "junk") => true,
        Some("list") => !team_list,
        _ => false,
    };
    if auto_submitted || bulk {
        MessageKind::Automatic
    } else {
        MessageKind::Conversation
    }
}

/// The code (Gmail: `(#123456789)` in the subject, `Confirmation code: 123456789` in the body)
/// or else the first link of a forwarding confirmation.
fn confirmation(subject: &str, body: &str) -> String {
    let digits = |text: &str| -> Option<String> {
        let code: String = text
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        (code.len() >= 4).then_some(code)
    };
    let in_subject = subject.split_once("(#").and_then(|(_, rest)| digits(rest));
    let in_body = || {
        body.lines().find_map(|line| {
            let lower = line.to_lowercase();
            let at = lower.find("confirmation code:")?;
            digits(line.get(at + "confirmation code:".len()..)?)
        })
    };
    let link = || {
        body.split_whitespace()
            .find(|word| word.starts_with("https://"))
            .map(|word| {
                word.trim_end_matches(['.', ',', ')', '>', ']'])
                    .chars()
                    .take(MAX_CONFIRMATION)
                    .collect()
            })
    };
    in_subject
        .or_else(in_body)
        .or_else(link)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;

//! A corpus of messages written here for every attribution rule and every kind, the negatives
//! (a customer's own forward, replies, auto-replies, reports, loops, malformed MIME, no From,
//! non-UTF-8 headers), and property tests: random bytes and mutated messages never panic.

use proptest::prelude::*;

use super::*;

const USERS: &[&str] = &["ada@acme.example"];

fn analyzed(raw: &str) -> Result<Analysis, InboundError> {
    analyze_bytes(raw.as_bytes())
}

fn analyze_bytes(raw: &[u8]) -> Result<Analysis, InboundError> {
    let users: Vec<String> = USERS.iter().map(|u| (*u).to_owned()).collect();
    analyze(
        raw,
        &Context {
            team_address: "support@acme.example",
            user_addresses: &users,
            own_id_prefixes: &["notification-", "verification-"],
            own_domain: "mailconnect.test",
            own_address: "notify@mailconnect.test",
        },
    )
}

/// The original sender's address, the rule, and the forwarder's address.
fn attribution(raw: &str) -> (String, AttributionRule, Option<String>) {
    let analysis = analyzed(raw).unwrap();
    (
        analysis.original_sender.email_address,
        analysis.rule,
        analysis.forwarded_by.map(|s| s.email_address),
    )
}

fn who(
    address: &str,
    rule: AttributionRule,
    by: Option<&str>,
) -> (String, AttributionRule, Option<String>) {
    (address.to_owned(), rule, by.map(str::to_owned))
}

#[test]
fn a_direct_message_is_from_its_from() {
    let raw = "From: \"Ana Cliente\" <Ana@Customer.EXAMPLE>\r\nTo: support@acme.example\r\nSubject: Help\r\nMessage-ID: <m1@customer.example>\r\n\r\nMy order is late.\r\n";
    let analysis = analyzed(raw).unwrap();
    assert_eq!(
        analysis.original_sender.email_address,
        "Ana@customer.example"
    );
    assert_eq!(analysis.original_sender.display_name, "Ana Cliente");
    assert_eq!(analysis.rule, AttributionRule::FromHeader);
    assert_eq!(analysis.forwarded_by, None);
    assert_eq!(analysis.message_id, "m1@customer.example");
    assert_eq!(analysis.kind, MessageKind::Conversation);
    assert!(!analysis.reply);
}

#[test]
fn automatic_forwards_keep_from_and_name_the_forwarder() {
    let gmail = "X-Forwarded-To: support-abc@acme.hosted.example\r\nX-Forwarded-For: support@acme.example support-abc@acme.hosted.example\r\nFrom: Ana <ana@customer.example>\r\nTo: support@acme.example\r\nSubject: Help\r\n\r\nbody\r\n";
    assert_eq!(
        attribution(gmail),
        who(
            "ana@customer.example",
            AttributionRule::AutoForward,
            Some("support@acme.example")
        )
    );
    let resent = "Resent-From: support@acme.example\r\nFrom: Ana <ana@customer.example>\r\nSubject: Help\r\n\r\nbody\r\n";
    assert_eq!(
        attribution(resent),
        who(
            "ana@customer.example",
            AttributionRule::AutoForward,
            Some("support@acme.example")
        )
    );
    let resent_sender =
        "Resent-Sender: <relay@acme.example>\r\nFrom: ana@customer.example\r\n\r\nbody\r\n";
    assert_eq!(
        attribution(resent_sender),
        who(
            "ana@customer.example",
            AttributionRule::AutoForward,
            Some("relay@acme.example")
        )
    );
}

#[test]
fn lists_and_groups_that_rewrite_from_give_back_the_person() {
    let google_group = "From: 'Ana Cliente' via Support <support@acme.example>\r\nX-Original-From: Ana Cliente <ana@customer.example>\r\nReply-To: Ana Cliente <ana@customer.example>\r\nPrecedence: list\r\nList-Id: <support.acme.example>\r\nSubject: Help\r\n\r\nbody\r\n";
    let analysis = analyzed(google_group).unwrap();
    assert_eq!(
        analysis.original_sender.email_address,
        "ana@customer.example"
    );
    assert_eq!(analysis.original_sender.display_name, "Ana Cliente");
    assert_eq!(analysis.rule, AttributionRule::ListRewrite);
    assert_eq!(
        analysis.forwarded_by.unwrap().email_address,
        "support@acme.example"
    );
    assert_eq!(
        analysis.kind,
        MessageKind::Conversation,
        "the team's own group is no bulk mail"
    );
    let original_sender = "From: Ana via Support <support@acme.example>\r\nX-Original-Sender: ana@customer.example\r\n\r\nbody\r\n";
    assert_eq!(
        attribution(original_sender),
        who(
            "ana@customer.example",
            AttributionRule::ListRewrite,
            Some("support@acme.example")
        )
    );
    let reply_to = "From: Ana via Support <support@acme.example>\r\nReply-To: ana@customer.example\r\n\r\nbody\r\n";
    assert_eq!(
        attribution(reply_to),
        who(
            "ana@customer.example",
            AttributionRule::ListRewrite,
            Some("support@acme.example")
        )
    );
    // A Reply-To without a rewritten From is only where answers go.
    let plain_reply_to =
        "From: Ana <ana@customer.example>\r\nReply-To: orders@customer.example\r\n\r\nbody\r\n";
    assert_eq!(attribution(plain_reply_to).1, AttributionRule::FromHeader);
    // Someone else's mailing list is bulk mail.
    let other_list = "From: News <news@shop.example>\r\nList-Id: <news.shop.example>\r\nPrecedence: list\r\n\r\nsale\r\n";
    assert_eq!(analyzed(other_list).unwrap().kind, MessageKind::Automatic);
}

#[test]
fn manual_forwards_by_the_team_or_a_user_find_the_original() {
    for (client, body) in [
        (
            "gmail",
            "FYI\r\n\r\n---------- Forwarded message ---------\r\nFrom: Ana Cliente <ana@customer.example>\r\nDate: Mon, 30 Nov 2026\r\nSubject: Help\r\nTo: <ada@acme.example>\r\n\r\nMy order is late.\r\n",
        ),
        (
            "outlook fr",
            "________________________________\r\nDe : Ana Cliente <ana@customer.example>\r\nEnvoy\u{e9} : lundi 30 novembre 2026\r\n\r\nMa commande\r\n",
        ),
        (
            "apple de",
            "Anfang der weitergeleiteten Nachricht:\r\n\r\nVon: Ana Cliente <ana@customer.example>\r\nBetreff: Hilfe\r\n",
        ),
        (
            "thunderbird es",
            "-------- Mensaje reenviado --------\r\nAsunto: Ayuda\r\nFecha: lunes\r\nDe: Ana Cliente <ana@customer.example>\r\n",
        ),
    ] {
        let raw = format!(
            "From: Ada <ada@acme.example>\r\nSubject: Fwd: Help\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}"
        );
        assert_eq!(
            attribution(&raw),
            who(
                "ana@customer.example",
                AttributionRule::InlineForward,
                Some("ada@acme.example")
            ),
            "{client}"
        );
    }
    let from_team = "From: support@acme.example\r\nSubject: TR: Aide\r\n\r\n-----Message d'origine-----\r\nDe : ana@customer.example\r\n";
    assert_eq!(
        attribution(from_team),
        who(
            "ana@customer.example",
            AttributionRule::InlineForward,
            Some("support@acme.example")
        )
    );
}

#[test]
fn an_attached_message_names_the_original() {
    let raw = "From: Ada <ada@acme.example>\r\nSubject: Fwd: Help\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b1\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\nFrom: Ana Cliente <ana@customer.example>\r\nSubject: Help\r\n\r\nMy order is late.\r\n--b1--\r\n";
    assert_eq!(
        attribution(raw),
        who(
            "ana@customer.example",
            AttributionRule::AttachedMessage,
            Some("ada@acme.example")
        )
    );
}

#[test]
fn a_forward_without_a_readable_original_falls_back_to_the_forwarder() {
    let raw = "From: Ada <ada@acme.example>\r\nSubject: Fwd: Help\r\n\r\nSee below, the customer called.\r\n";
    assert_eq!(
        attribution(raw),
        who(
            "ada@acme.example",
            AttributionRule::ForwarderFallback,
            Some("ada@acme.example")
        )
    );
    let marker_only = "From: ada@acme.example\r\nSubject: note\r\n\r\n-----Original Message-----\r\nSent: Monday\r\n";
    assert_eq!(
        attribution(marker_only).1,
        AttributionRule::ForwarderFallback
    );
    // The team writing to its own channel without forwarding anything.
    let plain = "From: ada@acme.example\r\nSubject: note\r\n\r\nhello\r\n";
    assert_eq!(attribution(plain).1, AttributionRule::FromHeader);
}

#[test]
fn a_customer_forwarding_mail_themselves_is_never_reattributed() {
    let raw = "From: Ana <ana@customer.example>\r\nSubject: Fwd: invoice from my supplier\r\n\r\n---------- Forwarded message ---------\r\nFrom: Supplier <billing@supplier.example>\r\n\r\nInvoice\r\n";
    assert_eq!(
        attribution(raw),
        who("ana@customer.example", AttributionRule::FromHeader, None)
    );
    let attached = "From: ana@customer.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: billing@supplier.example\r\n\r\nx\r\n--b--\r\n";
    assert_eq!(attribution(attached).0, "ana@customer.example");
}

#[test]
fn replies_automatic_mail_reports_and_loops_are_told_apart() {
    let reply = "From: ana@customer.example\r\nIn-Reply-To: <t1@acme.example>\r\nReferences: <t0@acme.example> <t1@acme.example>\r\n\r\nthanks\r\n";
    let analysis = analyzed(reply).unwrap();
    assert!(analysis.reply);
    assert_eq!(analysis.kind, MessageKind::Conversation);
    for (raw, kind) in [
        (
            "From: ana@customer.example\r\nAuto-Submitted: auto-replied\r\nSubject: Out of office\r\n\r\naway\r\n",
            MessageKind::Automatic,
        ),
        (
            "From: ana@customer.example\r\nAuto-Submitted: no\r\n\r\nhi\r\n",
            MessageKind::Conversation,
        ),
        (
            "From: ana@customer.example\r\nPrecedence: bulk\r\n\r\nnews\r\n",
            MessageKind::Automatic,
        ),
        (
            "From: ana@customer.example\r\nPrecedence: junk\r\n\r\nnews\r\n",
            MessageKind::Automatic,
        ),
        (
            "From: MAILER-DAEMON@mx.customer.example\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n--r\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\nStatus: 5.1.1\r\n--r--\r\n",
            MessageKind::DeliveryReport,
        ),
        (
            "From: mailconnect <notify@mailconnect.test>\r\nMessage-ID: <notification-42@mailconnect.test>\r\n\r\nsupport@acme.example was disconnected\r\n",
            MessageKind::Loop,
        ),
        (
            "From: Ada <ada@acme.example>\r\nMessage-ID: <verification-7-00ff@mailconnect.test>\r\nSubject: Fwd: code\r\n\r\nx\r\n",
            MessageKind::Loop,
        ),
        (
            "From: \"mailconnect\" <NOTIFY@mailconnect.test>\r\n\r\nx\r\n",
            MessageKind::Loop,
        ),
    ] {
        assert_eq!(analyzed(raw).unwrap().kind, kind, "{raw}");
    }
}

#[test]
fn forwarding_confirmations_give_their_code_or_link() {
    let gmail = "From: Gmail Team <forwarding-noreply@google.com>\r\nSubject: (#123456789) Gmail Forwarding Confirmation - Receive Mail from support@acme.example\r\n\r\nsupport@acme.example has requested to automatically forward mail.\r\nConfirmation code: 123456789\r\n\r\nTo allow, click: https://mail-settings.google.com/mail/vf-abc123\r\n";
    let analysis = analyzed(gmail).unwrap();
    assert_eq!(analysis.confirmation, "123456789");
    assert!(analysis.subject.starts_with("(#123456789) Gmail"));
    let outlook = "From: Microsoft <no-reply@microsoft.example>\r\nSubject: Verify your forwarding address\r\n\r\nTo confirm, go to https://outlook.example/verify?token=abc.\r\n";
    assert_eq!(
        analyzed(outlook).unwrap().confirmation,
        "https://outlook.example/verify?token=abc"
    );
}

#[test]
fn bad_messages_get_a_clear_answer() {
    assert_eq!(analyze_bytes(b""), Err(InboundError::Unparseable));
    assert_eq!(analyzed("no headers at all"), Err(InboundError::NoSender));
    assert_eq!(
        analyzed("Subject: hi\r\n\r\nbody\r\n"),
        Err(InboundError::NoSender)
    );
    assert_eq!(
        analyzed("From: not an address\r\n\r\nbody\r\n"),
        Err(InboundError::NoSender)
    );
    // A Sender stands in for a missing From.
    assert_eq!(
        attribution("Sender: ana@customer.example\r\n\r\nbody\r\n").0,
        "ana@customer.example"
    );
    // Malformed MIME: an unterminated multipart still yields its sender.
    let broken = "From: ana@customer.example\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nunterminated";
    assert_eq!(attribution(broken).0, "ana@customer.example");
    // Non-UTF-8 bytes in headers: Latin-1 in a display name, raw 8-bit in the subject.
    let mut latin1 =
        b"From: Jos\xe9 <jose@customer.example>\r\nSubject: r\xe9clamation \xff\r\n\r\nbody\r\n"
            .to_vec();
    let analysis = analyze_bytes(&latin1).unwrap();
    assert_eq!(
        analysis.original_sender.email_address,
        "jose@customer.example"
    );
    latin1.extend_from_slice(b"\xc3\x28");
    assert!(analyze_bytes(&latin1).is_ok());
    let encoded = "From: =?iso-8859-1?q?Jos=E9?= <jose@customer.example>\r\n\r\nbody\r\n";
    assert_eq!(
        analyzed(encoded).unwrap().original_sender.display_name,
        "José"
    );
}

/// Real-looking messages to mutate.
const SEEDS: &[&str] = &[
    "From: 'Ana Cliente' via Support <support@acme.example>\r\nX-Original-From: Ana Cliente <ana@customer.example>\r\nReply-To: ana@customer.example\r\nPrecedence: list\r\nSubject: Help\r\n\r\nbody\r\n",
    "From: Ada <ada@acme.example>\r\nSubject: Fwd: Help\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n---------- Forwarded message ---------\r\nFrom: Ana <ana@customer.example>\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: Ana <ana@customer.example>\r\n\r\nx\r\n--b1--\r\n",
    "From: MAILER-DAEMON@mx.example\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\nStatus: 5.1.1\r\n--r--\r\n",
    "From: =?utf-8?b?QW5h?= <ana@customer.example>\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nDe : =C3=A9\r\n",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = analyze_bytes(&raw);
    }

    #[test]
    fn mutated_messages_never_panic(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..24),
    ) {
        let mut raw = SEEDS[seed].as_bytes().to_vec();
        for (at, byte, op) in edits {
            let at = at % (raw.len() + 1);
            match op {
                0 => raw.insert(at, byte),
                1 if at < raw.len() => { raw.remove(at); }
                _ if at < raw.len() => raw[at] = byte,
                _ => raw.push(byte),
            }
        }
        let _ = analyze_bytes(&raw);
    }
}

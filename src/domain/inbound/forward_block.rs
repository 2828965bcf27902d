//! The forwarded block a mail client writes into the body when someone forwards a message by
//! hand: a marker line (Gmail, Outlook, Apple Mail, Thunderbird; English, French, German,
//! Spanish), then header lines of which `From:` (or its translation) names the original sender.
//! This reads decoded body text only; MIME is mail-parser's.

use super::Sender;

/// Lines that open a forwarded block, lower-cased; a line matches when it contains one.
const MARKERS: &[&str] = &[
    // Gmail
    "---------- forwarded message ---------",
    "---------- message transféré ---------",
    "---------- weitergeleitete nachricht ---------",
    "---------- mensaje reenviado ---------",
    // Thunderbird
    "-------- forwarded message --------",
    "-------- message transféré --------",
    "-------- weitergeleitete nachricht --------",
    "-------- mensaje reenviado --------",
    // Outlook
    "-----original message-----",
    "-----message d'origine-----",
    "-----ursprüngliche nachricht-----",
    "-----mensaje original-----",
    "________________________________",
    // Apple Mail
    "begin forwarded message:",
    "début du message réexpédié :",
    "début du message réexpédié:",
    "anfang der weitergeleiteten nachricht:",
    "inicio del mensaje reenviado:",
];

/// The `From` label of a block's header lines, in the languages above (French puts a space
/// before the colon).
const FROM_LABELS: &[&str] = &["from:", "de :", "de:", "von:"];

/// Header lines a block has at most before its `From:` (Thunderbird puts Subject and Date first).
const BLOCK_HEADER_LINES: usize = 8;

/// The original sender in the first forwarded block of `body`, if it names one.
pub fn forwarded_sender(body: &str) -> Option<Sender> {
    let lines: Vec<&str> = body.lines().map(clean).collect();
    let start = lines.iter().position(|line| is_marker(line))?;
    lines[start + 1..]
        .iter()
        .filter(|line| !line.is_empty())
        .take(BLOCK_HEADER_LINES)
        .find_map(|line| from_line(line))
}

/// Whether `body` has a forwarded block at all (the original may still be unreadable).
pub fn has_forward_marker(body: &str) -> bool {
    body.lines().map(clean).any(is_marker)
}

/// A line without quoting (`> `), the asterisks of bold text rendered from HTML, and outer
/// white space.
fn clean(line: &str) -> &str {
    line.trim_start_matches(['>', ' ', '\t'])
        .trim()
        .trim_matches('*')
        .trim()
}

fn is_marker(line: &str) -> bool {
    let lower = line.to_lowercase();
    MARKERS.iter().any(|marker| lower.contains(marker))
}

/// `From: Ana Cliente <ana@customer.example>`, `De : "Ana" <ana@…>`, `From: Ana
/// [mailto:ana@…]` or `From: ana@…`.
fn from_line(line: &str) -> Option<Sender> {
    let lower = line.to_lowercase();
    let label = FROM_LABELS.iter().find(|label| lower.starts_with(*label))?;
    // The labels are ASCII, so their length is a char boundary of `line` too.
    let rest = line
        .get(label.len()..)?
        .trim()
        .trim_start_matches('*')
        .trim();
    let (name, address) = if let Some((name, tail)) = rest.split_once('<') {
        (name, tail.split_once('>')?.0)
    } else if let Some((name, tail)) = rest.split_once("[mailto:") {
        (name, tail.split_once(']')?.0)
    } else {
        ("", rest.split_whitespace().find(|word| word.contains('@'))?)
    };
    Sender::parse(address, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(body: &str) -> Option<(String, String)> {
        forwarded_sender(body).map(|s| (s.email_address, s.display_name))
    }

    #[test]
    fn client_styles_and_languages() {
        let ana = Some(("ana@customer.example".to_owned(), "Ana Cliente".to_owned()));
        for body in [
            "FYI\n\n---------- Forwarded message ---------\nFrom: Ana Cliente <ana@customer.example>\nDate: Mon\nSubject: Help\n",
            "---------- Message transféré ---------\nDe : Ana Cliente <ana@customer.example>\n",
            "---------- Weitergeleitete Nachricht ---------\nVon: Ana Cliente <ana@customer.example>\n",
            "---------- Mensaje reenviado ---------\nDe: Ana Cliente <ana@customer.example>\n",
            "-------- Forwarded Message --------\nSubject: Help\nDate: Mon, 1 Jan\nFrom: Ana Cliente <ana@customer.example>\n",
            "-----Original Message-----\nFrom: Ana Cliente [mailto:ana@customer.example]\nSent: Monday\n",
            "________________________________\nDe : Ana Cliente <ana@customer.example>\nEnvoyé : lundi\n",
            "-----Ursprüngliche Nachricht-----\nVon: Ana Cliente <ana@customer.example>\n",
            "Begin forwarded message:\n\nFrom: \"Ana Cliente\" <ana@customer.example>\n",
            "Début du message réexpédié :\n\nDe : Ana Cliente <ana@customer.example>\n",
            "Anfang der weitergeleiteten Nachricht:\n\nVon: Ana Cliente <ana@customer.example>\n",
            "Inicio del mensaje reenviado:\n\nDe: Ana Cliente <ana@customer.example>\n",
            "> ---------- Forwarded message ---------\n> *From:* Ana Cliente <ana@customer.example>\n",
        ] {
            assert_eq!(sender(body), ana, "{body}");
        }
        assert_eq!(
            sender("-----Original Message-----\nFrom: ana@customer.example\n"),
            Some(("ana@customer.example".to_owned(), String::new()))
        );
    }

    #[test]
    fn no_block_or_no_sender() {
        assert_eq!(sender("From: Ana <ana@customer.example>\nhello"), None);
        assert_eq!(
            sender("---------- Forwarded message ---------\nFrom: nobody\n"),
            None
        );
        assert!(has_forward_marker(
            "---------- Forwarded message ---------\n"
        ));
        assert!(!has_forward_marker("hello"));
        assert_eq!(
            sender("---------- Forwarded message ---------\nFrom: é<\n"),
            None
        );
    }
}

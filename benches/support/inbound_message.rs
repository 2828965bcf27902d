//! The message the inbound benchmarks route: a 20 KiB manual forward.

/// A manual forward by a user of the account, about 20 KiB, quoted-printable HTML beside text.
pub fn forwarded_message() -> Vec<u8> {
    let paragraph = "Hello, my order 4711 has not arrived yet and the tracking page shows no movement since last week. Could you check with the carrier? Thanks, Ana.\r\n";
    let text = paragraph.repeat(60);
    let html = format!(
        "<p>{}</p>",
        paragraph.repeat(60).replace("\r\n", "</p>\r\n<p>")
    );
    let message = format!(
        "From: Ada <ada@acme.example>\r\nTo: support-7f3k9q@acme.hosted.example\r\nSubject: Fwd: Order 4711\r\nMessage-ID: <fwd-1@acme.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee below.\r\n\r\n---------- Forwarded message ---------\r\nFrom: Ana Cliente <ana@customer.example>\r\nDate: Mon, 30 Nov 2026 08:00:00 +0000\r\nSubject: Order 4711\r\nTo: <ada@acme.example>\r\n\r\n{text}\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--b--\r\n"
    );
    message.into_bytes()
}

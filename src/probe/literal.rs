//! A reader in front of async-imap that refuses an IMAP literal over `LITERAL_LIMIT` before any of
//! it is read: async-imap grows its buffer to the size a server announces (`{500000000}`), up to
//! 512 MiB, before the first byte of it arrives.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest literal accepted: a probe reads greetings and capabilities, never messages.
pub const LITERAL_LIMIT: u64 = 64 * 1024;

/// Where the scanner is in the server's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Text,
    /// After `{`, the digits so far.
    Digits(u64),
    /// After `{n}`, and after `{n}\r`.
    Close(u64),
    CloseCr(u64),
    /// Inside an accepted literal: this many bytes of it are still to come.
    Skip(u64),
}

/// Follows the server's output for literal announcements: `{n}` ending a line, then n bytes of
/// the literal (skipped, so that a `{` inside one announces nothing).
#[derive(Debug, Clone, Default)]
pub struct LiteralScanner {
    state: State,
}

impl LiteralScanner {
    /// Reads on; fails with the announced size when a literal is over the limit.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), u64> {
        while let Some((&byte, rest)) = bytes.split_first() {
            if let State::Skip(left) = self.state {
                let skipped = left.min(bytes.len() as u64);
                self.state = match left - skipped {
                    0 => State::Text,
                    left => State::Skip(left),
                };
                bytes = &bytes[usize::try_from(skipped).unwrap_or(bytes.len())..];
                continue;
            }
            self.state = match (self.state, byte) {
                (_, b'{') => State::Digits(0),
                (State::Digits(n), b'0'..=b'9') => {
                    State::Digits(n.saturating_mul(10).saturating_add(u64::from(byte - b'0')))
                }
                (State::Digits(n), b'}') => State::Close(n),
                (State::Close(n), b'\r') => State::CloseCr(n),
                (State::Close(n) | State::CloseCr(n), b'\n') if n > LITERAL_LIMIT => {
                    return Err(n);
                }
                (State::Close(n) | State::CloseCr(n), b'\n') if n > 0 => State::Skip(n),
                _ => State::Text,
            };
            bytes = rest;
        }
        Ok(())
    }
}

/// The stream async-imap reads through: every byte passes the scanner first.
pub struct LiteralGuard<S> {
    inner: S,
    scanner: LiteralScanner,
}

impl<S> LiteralGuard<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            scanner: LiteralScanner::default(),
        }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> fmt::Debug for LiteralGuard<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LiteralGuard")
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LiteralGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Err(announced) = this.scanner.feed(&buf.filled()[before..]) {
            // async-imap never sees the announcement, so never sizes a buffer for it.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the server announced a literal of {announced} bytes; a probe accepts at \
                     most {LITERAL_LIMIT}"
                ),
            )));
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LiteralGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn scan_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<(), u64> {
        let mut scanner = LiteralScanner::default();
        let mut start = 0;
        for cut in cuts.iter().map(|cut| cut % (bytes.len() + 1)) {
            if cut > start {
                scanner.feed(&bytes[start..cut])?;
                start = cut;
            }
        }
        scanner.feed(&bytes[start..])
    }

    #[test]
    fn announcements() {
        let scan = |text: &str| LiteralScanner::default().feed(text.as_bytes());
        assert_eq!(scan("* 1 FETCH (BODY[] {500000000}\r\n"), Err(500_000_000));
        assert_eq!(scan("* 1 FETCH (BODY[] {65537}\n"), Err(65_537));
        assert_eq!(
            scan("* 1 FETCH (BODY[] {99999999999999999999999}\r\n"),
            Err(u64::MAX)
        );
        assert_eq!(scan("* 1 FETCH (BODY[] {65536}\r\n"), Ok(()));
        // Not at the end of a line: text, not an announcement.
        assert_eq!(scan("* OK {500000000} is a number\r\n"), Ok(()));
        // A `{` inside an accepted literal announces nothing.
        assert_eq!(
            scan("* 1 FETCH (BODY[] {14}\r\n{900000000}\r\n)\r\n"),
            Ok(())
        );
    }

    proptest! {
        /// However the bytes are cut into reads, an announcement over the limit is found.
        #[test]
        fn an_oversized_literal_is_found_in_any_pieces(
            prefix in "[ -z]{0,40}",
            size in (LITERAL_LIMIT + 1)..u64::MAX / 16,
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let text = format!("* 1 FETCH ({prefix}\r\n* 2 FETCH (BODY[] {{{size}}}\r\n");
            prop_assert_eq!(scan_in_pieces(text.as_bytes(), &cuts), Err(size));
        }

        /// Output without `{` never trips the scanner, whatever it holds.
        #[test]
        fn text_without_braces_passes(
            bytes in proptest::collection::vec(any::<u8>().prop_filter("no brace", |b| *b != b'{'), 0..512),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            prop_assert_eq!(scan_in_pieces(&bytes, &cuts), Ok(()));
        }
    }
}

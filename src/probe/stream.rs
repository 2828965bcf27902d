//! The probe's connection: a TCP stream that keeps what the server sent in plain text (for the
//! report's excerpts and to recognise a foreign protocol), optionally wrapped in TLS.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How much of the server's plain-text output is kept.
const TRANSCRIPT_LIMIT: usize = 4096;

/// The most a server may send on one probe connection (TLS records included): a probe reads
/// greetings, capabilities and one HTTP answer, so a server sending more (a line without end, a
/// flood of replies) is cut off before the protocol libraries buffer it.
pub const READ_LIMIT: usize = 256 * 1024;

/// What the server sent before TLS (or on a connection without TLS). Recording stops once TLS is
/// up: the bytes below it are ciphertext, and the protocol libraries report what came above it.
#[derive(Debug, Clone, Default)]
pub struct Transcript(Arc<Mutex<TranscriptState>>);

#[derive(Debug, Default)]
struct TranscriptState {
    bytes: Vec<u8>,
    stopped: bool,
}

impl Transcript {
    fn state(&self) -> MutexGuard<'_, TranscriptState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, received: &[u8]) {
        let mut state = self.state();
        if !state.stopped {
            let room = TRANSCRIPT_LIMIT.saturating_sub(state.bytes.len());
            state
                .bytes
                .extend_from_slice(&received[..received.len().min(room)]);
        }
    }

    /// Where the transcript ends now, to take an excerpt of what comes after.
    pub fn mark(&self) -> usize {
        self.state().bytes.len()
    }

    /// The bytes received since `mark`.
    pub fn since(&self, mark: usize) -> Vec<u8> {
        self.state().bytes.get(mark..).unwrap_or_default().to_vec()
    }

    pub fn stop(&self) {
        self.state().stopped = true;
    }
}

/// The TCP connection, recording what it receives into a [`Transcript`] and refusing to read
/// more than [`READ_LIMIT`].
#[derive(Debug)]
pub struct RecordedTcp {
    tcp: TcpStream,
    transcript: Transcript,
    received: usize,
}

impl RecordedTcp {
    pub fn new(tcp: TcpStream, transcript: Transcript) -> Self {
        Self {
            tcp,
            transcript,
            received: 0,
        }
    }
}

impl AsyncRead for RecordedTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let room = READ_LIMIT - self.received;
        if room == 0 {
            return Poll::Ready(Err(io::Error::other(format!(
                "the server sent more than {} KiB on one connection",
                READ_LIMIT / 1024
            ))));
        }
        // Read at most `room` bytes, through a chunk of our own so as not to over-read `buf`.
        let mut chunk = [0u8; 8 * 1024];
        let wanted = room.min(buf.remaining()).min(chunk.len());
        let mut limited = ReadBuf::new(&mut chunk[..wanted]);
        let this = &mut *self;
        let polled = Pin::new(&mut this.tcp).poll_read(cx, &mut limited);
        let received = limited.filled();
        this.received += received.len();
        this.transcript.record(received);
        buf.put_slice(received);
        polled
    }
}

impl AsyncWrite for RecordedTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A probe connection, in plain text or TLS.
pub enum ProbeStream {
    Plain(RecordedTcp),
    Tls(Box<TlsStream<RecordedTcp>>),
}

impl ProbeStream {
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            ProbeStream::Plain(stream) => stream.tcp.peer_addr(),
            ProbeStream::Tls(stream) => stream.get_ref().0.tcp.peer_addr(),
        }
    }
}

impl fmt::Debug for ProbeStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeStream::Plain(_) => f.write_str("ProbeStream::Plain"),
            ProbeStream::Tls(_) => f.write_str("ProbeStream::Tls"),
        }
    }
}

impl AsyncRead for ProbeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProbeStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            ProbeStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ProbeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ProbeStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            ProbeStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProbeStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            ProbeStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ProbeStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            ProbeStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream handed to a protocol library that can be taken back later: lettre owns its stream, but
/// STARTTLS must be done by our TLS code (to inspect the certificate), on the same connection.
#[derive(Clone)]
pub struct Lent(Arc<Mutex<Option<ProbeStream>>>);

impl Lent {
    pub fn new(stream: ProbeStream) -> Self {
        Self(Arc::new(Mutex::new(Some(stream))))
    }

    /// Takes the stream back; the library's handle then fails every read and write.
    pub fn reclaim(&self) -> Option<ProbeStream> {
        self.slot().take()
    }

    fn slot(&self) -> MutexGuard<'_, Option<ProbeStream>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with<T>(
        &self,
        f: impl FnOnce(Pin<&mut ProbeStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.slot().as_mut() {
            Some(stream) => f(Pin::new(stream)),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection was taken back for TLS",
            ))),
        }
    }
}

impl fmt::Debug for Lent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lent")
    }
}

impl AsyncRead for Lent {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|stream| stream.poll_read(cx, buf))
    }
}

impl AsyncWrite for Lent {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|stream| stream.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|stream| stream.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|stream| stream.poll_shutdown(cx))
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for Lent {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self.slot().as_ref() {
            Some(stream) => stream.peer_addr(),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
}

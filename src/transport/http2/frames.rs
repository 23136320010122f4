//! What went over the wire: the connection's socket, wrapped so that the
//! frame headers of both directions are seen (never changed) on their way.
//!
//! `h2` keeps its own counts private. The drive task needs these:
//!
//! - how far the server has read: a stream's HEADERS leave in the order of
//!   stream ids, so a server that sent HEADERS on a stream has read every
//!   stream up to it (and an `h2` server, which takes new streams in order,
//!   has accepted them), and a server that acknowledged a PING has read
//!   every stream whose HEADERS were written before the PING. Resetting
//!   such a stream cannot count against the server's rapid-reset guard
//!   (see [`pacer`](super::pacer));
//! - whether the server sent HEADERS or DATA since it received our last
//!   PING, which gRPC servers' ping policies care about;
//! - how many RST_STREAMs were written, by error code: `CANCEL` ones are
//!   calls cancelled by their callers, any other code is a reset `h2` sent
//!   on its own, which counts toward its per-connection limit;
//! - whether the server sent a GOAWAY: only then does the drive task ask
//!   `h2` whether the connection still takes new streams;
//! - how many streams we opened and how many the server ended (END_STREAM
//!   or RST_STREAM): the difference is the calls the server still has to
//!   answer, which tells the drive task whether holding back a write would
//!   leave the server without work (write coalescing, `Coalesce`).
//!
//! Reading a frame header costs a few comparisons per frame; payloads are
//! skipped, except the four bytes of a RST_STREAM's error code.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The client connection preface, written before the first frame.
const CLIENT_PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
/// The END_STREAM flag of HEADERS and DATA (RFC 9113, section 6.1).
const END_STREAM: u8 = 0x1;
/// RST_STREAM error code CANCEL (RFC 9113, section 7).
const CANCEL: u32 = 0x8;
/// grpc-go's and C-core's default minimum time between client PINGs
/// (`MinTime` / `min_recv_ping_interval_without_data`).
const PING_POLICY_INTERVAL: Duration = Duration::from_secs(300);

/// What the frames of one connection told so far. Written by the socket
/// (inside `h2`'s connection, on the drive task), read by the drive task
/// and by calls.
#[derive(Debug)]
pub(crate) struct Wire {
    /// The highest stream id the server is known to have read.
    read: AtomicU32,
    /// The highest stream id whose HEADERS we wrote.
    opened: AtomicU32,
    /// `opened` when our last PING was written.
    ping_covers: AtomicU32,
    /// Our last PING has not been acknowledged yet.
    ping_unanswered: AtomicBool,
    /// The server sent HEADERS or DATA after it acknowledged our last
    /// PING (so after it received it).
    spoke_since_ping: AtomicBool,
    /// When our last PING was written, in ms after `epoch` (0: never).
    last_ping_ms: AtomicU64,
    epoch: Instant,
    cancels_sent: AtomicUsize,
    error_resets_sent: AtomicUsize,
    /// The server sent a GOAWAY.
    go_away: AtomicBool,
    /// Streams whose first HEADERS we wrote (wrapping).
    streams_sent: AtomicU32,
    /// Streams the server ended with END_STREAM or reset (wrapping).
    streams_ended: AtomicU32,
}

impl Wire {
    pub(crate) fn new() -> Wire {
        Wire {
            read: AtomicU32::new(0),
            opened: AtomicU32::new(0),
            ping_covers: AtomicU32::new(0),
            ping_unanswered: AtomicBool::new(false),
            spoke_since_ping: AtomicBool::new(false),
            last_ping_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            cancels_sent: AtomicUsize::new(0),
            error_resets_sent: AtomicUsize::new(0),
            go_away: AtomicBool::new(false),
            streams_sent: AtomicU32::new(0),
            streams_ended: AtomicU32::new(0),
        }
    }

    /// Whether the server is known to have read stream `id`.
    pub(crate) fn has_read(&self, id: u32) -> bool {
        id <= self.read_up_to()
    }

    /// The highest stream id the server is known to have read.
    pub(crate) fn read_up_to(&self) -> u32 {
        self.read.load(Ordering::Acquire)
    }

    /// Our last PING was acknowledged: the server has read every stream
    /// whose HEADERS went before it.
    pub(crate) fn ping_acked(&self) {
        let covers = self.ping_covers.load(Ordering::Acquire);
        self.read.fetch_max(covers, Ordering::AcqRel);
    }

    /// Whether a PING now cannot count as abuse under gRPC servers' ping
    /// policies (grpc-go and C-core strike a PING that comes less than
    /// 5 minutes after the previous one, unless they sent HEADERS or DATA
    /// since).
    pub(crate) fn ping_is_welcome(&self, now: Instant) -> bool {
        if self.spoke_since_ping.load(Ordering::Acquire) {
            return true;
        }
        match self.last_ping_ms.load(Ordering::Acquire) {
            0 => true,
            ms => {
                now.saturating_duration_since(self.epoch)
                    >= Duration::from_millis(ms) + PING_POLICY_INTERVAL
            }
        }
    }

    /// RST_STREAM(CANCEL) frames written: calls cancelled by their callers.
    pub(crate) fn cancels_sent(&self) -> usize {
        self.cancels_sent.load(Ordering::Relaxed)
    }

    /// RST_STREAM frames with any other code: resets `h2` sent by itself,
    /// e.g. for a frame on a stream it had already forgotten.
    pub(crate) fn error_resets_sent(&self) -> usize {
        self.error_resets_sent.load(Ordering::Relaxed)
    }

    /// Whether the server sent a GOAWAY (read whole; `h2` may process it
    /// in a later poll of the connection).
    pub(crate) fn go_away_seen(&self) -> bool {
        self.go_away.load(Ordering::Acquire)
    }

    /// Streams we opened minus streams the server ended, as wrapping
    /// counters (a stream we reset that the server never ends stays in it;
    /// a stream the server both ends and resets counts twice): an estimate
    /// for the drive task's write coalescing, which corrects it whenever
    /// no call is in flight, never a figure to rely on.
    pub(crate) fn unanswered(&self) -> u32 {
        let sent = self.streams_sent.load(Ordering::Relaxed);
        sent.wrapping_sub(self.streams_ended.load(Ordering::Relaxed))
    }

    fn server_frame(&self, kind: u8, flags: u8, stream: u32) {
        let ends = matches!(kind, HEADERS | DATA) && flags & END_STREAM != 0;
        if ends || (kind == RST_STREAM && stream != 0) {
            self.streams_ended.fetch_add(1, Ordering::Relaxed);
        }
        match kind {
            HEADERS | DATA => {
                if kind == HEADERS {
                    self.read.fetch_max(stream, Ordering::AcqRel);
                }
                if !self.ping_unanswered.load(Ordering::Acquire) {
                    self.spoke_since_ping.store(true, Ordering::Release);
                }
            }
            PING if flags & ACK != 0 => self.ping_unanswered.store(false, Ordering::Release),
            GOAWAY => self.go_away.store(true, Ordering::Release),
            _ => {}
        }
    }

    fn our_frame(&self, kind: u8, flags: u8, stream: u32, code: u32) {
        match kind {
            HEADERS => {
                // A stream's first HEADERS: ids only grow (trailers reuse one).
                let before = self.opened.fetch_max(stream, Ordering::AcqRel);
                if before < stream {
                    self.streams_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            PING if flags & ACK == 0 => {
                let opened = self.opened.load(Ordering::Acquire);
                self.ping_covers.store(opened, Ordering::Release);
                self.spoke_since_ping.store(false, Ordering::Release);
                self.ping_unanswered.store(true, Ordering::Release);
                let ms = Instant::now()
                    .saturating_duration_since(self.epoch)
                    .as_millis();
                let ms = u64::try_from(ms).unwrap_or(u64::MAX).max(1);
                self.last_ping_ms.store(ms, Ordering::Release);
            }
            RST_STREAM if code == CANCEL => {
                self.cancels_sent.fetch_add(1, Ordering::Relaxed);
            }
            RST_STREAM => {
                self.error_resets_sent.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Splits one direction of a connection into frames.
#[derive(Debug)]
struct Parser {
    /// Preface bytes still to skip.
    preface_left: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// The frame being skipped: (type, flags, stream, payload bytes left).
    frame: Option<(u8, u8, u32, usize)>,
    /// The first four payload bytes (a RST_STREAM's error code).
    code: [u8; 4],
    code_len: usize,
}

impl Parser {
    fn new(preface: usize) -> Parser {
        Parser {
            preface_left: preface,
            header: [0; HEADER_LEN],
            header_len: 0,
            frame: None,
            code: [0; 4],
            code_len: 0,
        }
    }

    /// Feeds bytes; calls `frame(type, flags, stream, code)` for each frame
    /// completed.
    fn feed(&mut self, mut bytes: &[u8], frame: &mut impl FnMut(u8, u8, u32, u32)) {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            let Some((kind, flags, stream, left)) = self.frame else {
                let take = (HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len == HEADER_LEN {
                    self.start(frame);
                }
                continue;
            };
            let take = left.min(bytes.len());
            let code_take = (4 - self.code_len).min(take);
            self.code[self.code_len..self.code_len + code_take]
                .copy_from_slice(&bytes[..code_take]);
            self.code_len += code_take;
            bytes = &bytes[take..];
            self.frame = Some((kind, flags, stream, left - take));
            if left == take {
                self.finish(frame);
            }
        }
    }

    fn start(&mut self, frame: &mut impl FnMut(u8, u8, u32, u32)) {
        let h = self.header;
        let length = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.header_len = 0;
        self.code_len = 0;
        self.frame = Some((h[3], h[4], stream, length));
        if length == 0 {
            self.finish(frame);
        }
    }

    fn finish(&mut self, frame: &mut impl FnMut(u8, u8, u32, u32)) {
        if let Some((kind, flags, stream, _)) = self.frame.take() {
            let code = if self.code_len == 4 {
                u32::from_be_bytes(self.code)
            } else {
                0
            };
            frame(kind, flags, stream, code);
        }
    }
}

/// A client connection's socket that reports its frames to a [`Wire`].
#[derive(Debug)]
pub(crate) struct FrameWatch<IO> {
    io: IO,
    wire: std::sync::Arc<Wire>,
    reads: Parser,
    writes: Parser,
}

impl<IO> FrameWatch<IO> {
    pub(crate) fn new(io: IO, wire: std::sync::Arc<Wire>) -> Self {
        FrameWatch {
            io,
            wire,
            reads: Parser::new(0),
            writes: Parser::new(CLIENT_PREFACE_LEN),
        }
    }

    fn wrote(&mut self, bytes: &[u8]) {
        let wire = &self.wire;
        let mut seen = |kind, flags, stream, code| wire.our_frame(kind, flags, stream, code);
        self.writes.feed(bytes, &mut seen);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FrameWatch<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let wire = &this.wire;
        let mut seen = |kind, flags, stream, _code| wire.server_frame(kind, flags, stream);
        this.reads.feed(&buf.filled()[before..], &mut seen);
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FrameWatch<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(&buf[..n.min(buf.len())]);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            for buf in bufs {
                if n == 0 {
                    break;
                }
                let take = n.min(buf.len());
                self.wrote(&buf[..take]);
                n -= take;
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn parse(preface: usize, bytes: &[u8], chunk: usize) -> Vec<(u8, u8, u32, u32)> {
        let mut parser = Parser::new(preface);
        let mut seen = Vec::new();
        for piece in bytes.chunks(chunk) {
            parser.feed(piece, &mut |k, f, s, c| seen.push((k, f, s, c)));
        }
        seen
    }

    #[test]
    fn frames_split_anywhere_are_seen_whole() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0; 6]));
        bytes.extend(frame(HEADERS, 0x4, 1, &[0x88; 20]));
        bytes.extend(frame(DATA, 0x1, 1, &[7; 100]));
        bytes.extend(frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()));
        bytes.extend(frame(RST_STREAM, 0, 3, &5u32.to_be_bytes()));
        bytes.extend(frame(PING, 0, 0, &[1; 8]));
        let want = vec![
            (0x4, 0, 0, 0),
            (HEADERS, 0x4, 1, 0x8888_8888),
            (DATA, 0x1, 1, 0x0707_0707),
            (RST_STREAM, 0, 1, CANCEL),
            (RST_STREAM, 0, 3, 5),
            (PING, 0, 0, 0x0101_0101),
        ];
        for chunk in [1, 2, 5, 9, 10, 13, 1000] {
            assert_eq!(
                parse(CLIENT_PREFACE_LEN, &bytes, chunk),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn the_wire_tells_what_the_server_read_and_what_we_reset() {
        let wire = Wire::new();
        // We open streams 1 and 3, then PING: the ACK covers both.
        wire.our_frame(HEADERS, 0x4, 1, 0);
        wire.our_frame(HEADERS, 0x4, 3, 0);
        wire.our_frame(PING, 0, 0, 0);
        wire.our_frame(HEADERS, 0x4, 5, 0);
        assert!(!wire.has_read(1));
        wire.server_frame(HEADERS, 0x4, 1);
        assert!(wire.has_read(1) && !wire.has_read(3));
        wire.ping_acked();
        assert!(wire.has_read(3) && !wire.has_read(5));
        wire.our_frame(RST_STREAM, 0, 5, CANCEL);
        wire.our_frame(RST_STREAM, 0, 7, 5);
        assert_eq!((wire.cancels_sent(), wire.error_resets_sent()), (1, 1));
        assert!(!wire.go_away_seen());
        wire.server_frame(GOAWAY, 0, 0);
        assert!(wire.go_away_seen());
    }

    #[test]
    fn the_wire_counts_the_streams_the_server_has_not_answered() {
        let wire = Wire::new();
        // Streams 1, 3 and 5 opened; 1 with a request trailer (same id).
        wire.our_frame(HEADERS, 0x4, 1, 0);
        wire.our_frame(HEADERS, 0x4, 3, 0);
        wire.our_frame(HEADERS, 0x4 | END_STREAM, 1, 0);
        wire.our_frame(HEADERS, 0x4, 5, 0);
        assert_eq!(wire.unanswered(), 3);
        // Response headers and DATA do not end a stream; trailers do.
        wire.server_frame(HEADERS, 0x4, 1);
        wire.server_frame(DATA, 0, 1);
        assert_eq!(wire.unanswered(), 3);
        wire.server_frame(HEADERS, 0x4 | END_STREAM, 1);
        // A DATA frame with END_STREAM, a reset; a connection PING does not count.
        wire.server_frame(DATA, END_STREAM, 3);
        wire.server_frame(PING, 0, 0);
        assert_eq!(wire.unanswered(), 1);
        wire.server_frame(RST_STREAM, 0, 5);
        assert_eq!(wire.unanswered(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_is_welcome_first_after_the_server_spoke_since_the_last_or_after_five_minutes() {
        let wire = Wire::new();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(wire.ping_is_welcome(Instant::now()), "the first PING");
        wire.our_frame(PING, 0, 0, 0);
        assert!(!wire.ping_is_welcome(Instant::now()));
        wire.server_frame(DATA, 0, 1);
        assert!(
            !wire.ping_is_welcome(Instant::now()),
            "DATA sent before the server received the PING"
        );
        wire.server_frame(PING, ACK, 0);
        wire.server_frame(DATA, 0, 1);
        assert!(wire.ping_is_welcome(Instant::now()), "the server sent DATA");
        wire.our_frame(PING, 0, 0, 0);
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(!wire.ping_is_welcome(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(wire.ping_is_welcome(Instant::now()), "five minutes later");
    }
}

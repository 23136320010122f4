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
//! - how many of the streams we opened are still open, that is, held by
//!   the server: it tells the drive task whether holding back a write
//!   would leave the server without work (write coalescing, `Coalesce`).
//!   Kept exactly, stream by stream, by [`OpenStreams`].
//!
//! Reading a frame header costs a few comparisons per frame; payloads are
//! skipped, except the first four bytes (a RST_STREAM's error code, a
//! GOAWAY's last stream id).

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
/// How many stream ids [`OpenStreams`] follows, from the oldest open one.
const OPEN_WINDOW: u32 = 4096;
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
    /// [`OpenStreams::held`], published after each read and write of the
    /// socket.
    held: AtomicU32,
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
            held: AtomicU32::new(0),
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

    /// The streams the server holds: streams whose first HEADERS we wrote
    /// and that nobody ended yet (no END_STREAM or RST_STREAM from the
    /// server, no RST_STREAM from us, not above a GOAWAY's last stream id),
    /// counted once each; see [`OpenStreams`]. As of the drive task's last
    /// read or write of the socket; a stream open while more than
    /// [`OPEN_WINDOW`] newer stream ids were opened after it no longer
    /// counts. For the drive task's write coalescing.
    pub(crate) fn unanswered(&self) -> u32 {
        self.held.load(Ordering::Relaxed)
    }

    fn server_frame(&self, kind: u8, flags: u8, stream: u32) {
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
                self.opened.fetch_max(stream, Ordering::AcqRel);
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

/// The streams we opened that nobody has ended yet, exactly, stream by
/// stream: a stream counts from its first HEADERS we write until the first
/// of the server's END_STREAM (on HEADERS or DATA), the server's
/// RST_STREAM, our RST_STREAM (any code: a cancelled call, or a reset `h2`
/// sent on its own), or a GOAWAY whose last stream id is below it (the
/// server never processed it). Any later frame on it, a frame on a stream
/// we never opened, on stream 0 or on an even (server-initiated) id
/// changes nothing.
///
/// Our client opens streams with increasing odd ids, so one bit per id
/// from the oldest open stream on is enough: a ring of [`OPEN_WINDOW`]
/// bits (512 bytes, no allocation), indexed by id. Opening sets a bit,
/// ending clears one, and the start of the window moves past the ended
/// streams at its front: O(1) per frame (amortized over the ids the start
/// moves past). The window spans at most [`OPEN_WINDOW`] ids: a stream
/// still open when that many newer ids were opened is pushed out and
/// counted as ended from then on (the count may then be short by such
/// long-lived streams, never over: too short only makes write coalescing
/// write sooner, see `Coalesce`).
///
/// Owned by the socket wrapper ([`FrameWatch`]), so only ever changed from
/// within `h2`'s connection, polled by the drive task: no lock.
#[derive(Debug)]
struct OpenStreams {
    /// Every stream below this id has ended or was never opened (odd).
    first: u32,
    /// The id after the highest stream opened (odd); `next - first` is at
    /// most `2 * OPEN_WINDOW`.
    next: u32,
    /// Bit `(id / 2) % OPEN_WINDOW`: stream `id` is open. Only ids in
    /// `first..next` may have their bit set.
    open: [u64; OPEN_WINDOW as usize / 64],
    /// How many bits of `open` are set.
    held: u32,
}

impl Default for OpenStreams {
    fn default() -> Self {
        OpenStreams {
            first: 1,
            next: 1,
            open: [0; OPEN_WINDOW as usize / 64],
            held: 0,
        }
    }
}

impl OpenStreams {
    #[inline]
    fn our_frame(&mut self, kind: u8, stream: u32) {
        match kind {
            HEADERS => self.opened(stream),
            RST_STREAM => self.ended(stream),
            _ => {}
        }
    }

    #[inline]
    fn server_frame(&mut self, kind: u8, flags: u8, stream: u32, first_word: u32) {
        match kind {
            HEADERS | DATA if flags & END_STREAM != 0 => self.ended(stream),
            RST_STREAM => self.ended(stream),
            GOAWAY => self.not_processed_after(first_word & 0x7fff_ffff),
            _ => {}
        }
    }

    /// The word and the bit of stream `id`'s flag.
    #[inline]
    fn slot(id: u32) -> (usize, u64) {
        let index = (id >> 1) % OPEN_WINDOW;
        ((index / 64) as usize, 1 << (index % 64))
    }

    /// Clears stream `id`'s flag; whether it was set.
    #[inline]
    fn clear(&mut self, id: u32) -> bool {
        let (word, bit) = Self::slot(id);
        let was = self.open[word] & bit != 0;
        self.open[word] &= !bit;
        // Not `self.held -= u32::from(was)`: rustc 1.95 at opt-level 2
        // and 3 dropped that subtraction when `ended` inlines this.
        if was {
            self.held -= 1;
        }
        was
    }

    /// We wrote HEADERS on `stream`: its first ones if its id is new.
    #[inline]
    fn opened(&mut self, stream: u32) {
        if stream < self.next || stream & 1 == 0 {
            return; // trailers, or a stream counted before
        }
        // Ids between `next` and `stream` were never opened (e.g. `h2`
        // dropped a stream before its HEADERS left): their bits are clear.
        if self.first == self.next {
            self.first = stream; // nothing open: the window starts here
        } else if stream - self.first >= 2 * OPEN_WINDOW {
            self.push_out(stream + 2 - 2 * OPEN_WINDOW);
        }
        let (word, bit) = Self::slot(stream);
        self.open[word] |= bit;
        self.held += 1;
        self.next = stream + 2;
    }

    /// Counts the streams below `first` as ended, to make room.
    #[cold]
    fn push_out(&mut self, first: u32) {
        if first >= self.next {
            self.open = [0; OPEN_WINDOW as usize / 64];
            self.held = 0;
        } else {
            for id in (self.first..first).step_by(2) {
                self.clear(id);
            }
        }
        self.first = first;
        self.next = self.next.max(first);
        self.skip_ended();
    }

    /// `stream` ended (first time, or again).
    #[inline]
    fn ended(&mut self, stream: u32) {
        if stream < self.first || stream >= self.next || stream & 1 == 0 {
            return;
        }
        if self.clear(stream) && stream == self.first {
            self.skip_ended();
        }
    }

    /// A GOAWAY: the server processed no stream above `last`.
    fn not_processed_after(&mut self, last: u32) {
        let from = self.first.max(last.saturating_add(1) | 1);
        for id in (from..self.next).step_by(2) {
            self.clear(id);
        }
        self.skip_ended();
    }

    /// Moves `first` past the ended streams at the window's front.
    #[inline]
    fn skip_ended(&mut self) {
        while self.first < self.next {
            let (word, bit) = Self::slot(self.first);
            if self.open[word] & bit != 0 {
                return;
            }
            self.first += 2;
        }
    }

    /// How many stream ids the window spans.
    #[cfg(test)]
    fn span(&self) -> u32 {
        (self.next - self.first) / 2
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
    open: OpenStreams,
}

impl<IO> FrameWatch<IO> {
    pub(crate) fn new(io: IO, wire: std::sync::Arc<Wire>) -> Self {
        FrameWatch {
            io,
            wire,
            reads: Parser::new(0),
            writes: Parser::new(CLIENT_PREFACE_LEN),
            open: OpenStreams::default(),
        }
    }

    fn wrote(&mut self, bytes: &[u8]) {
        let (wire, open) = (&self.wire, &mut self.open);
        let mut seen = |kind, flags, stream, code| {
            wire.our_frame(kind, flags, stream, code);
            open.our_frame(kind, stream);
        };
        self.writes.feed(bytes, &mut seen);
        wire.held.store(open.held, Ordering::Relaxed);
    }

    fn read(&mut self, bytes: &[u8]) {
        let (wire, open) = (&self.wire, &mut self.open);
        let mut seen = |kind, flags, stream, first_word| {
            wire.server_frame(kind, flags, stream);
            open.server_frame(kind, flags, stream, first_word);
        };
        self.reads.feed(bytes, &mut seen);
        wire.held.store(open.held, Ordering::Relaxed);
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
        this.read(&buf.filled()[before..]);
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

    /// A frame watch fed by hand: what we write (after the preface) and
    /// what the server sends, as bytes.
    fn watch() -> FrameWatch<()> {
        let mut watch = FrameWatch::new((), std::sync::Arc::new(Wire::new()));
        watch.wrote(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        watch
    }

    fn ours(watch: &mut FrameWatch<()>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        watch.wrote(&frame(kind, flags, stream, payload));
    }

    fn theirs(watch: &mut FrameWatch<()>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        watch.read(&frame(kind, flags, stream, payload));
    }

    const NO_ERROR: [u8; 4] = [0; 4];

    #[test]
    fn the_wire_counts_the_streams_the_server_has_not_answered() {
        let w = &mut watch();
        // Streams 1, 3 and 5 opened; 1 with a request trailer (same id).
        ours(w, HEADERS, 0x4, 1, &[]);
        ours(w, HEADERS, 0x4, 3, &[]);
        ours(w, HEADERS, 0x4 | END_STREAM, 1, &[]);
        ours(w, HEADERS, 0x4, 5, &[]);
        assert_eq!(w.wire.unanswered(), 3);
        // Response headers and DATA do not end a stream; trailers do.
        theirs(w, HEADERS, 0x4, 1, &[]);
        theirs(w, DATA, 0, 1, &[1; 10]);
        assert_eq!(w.wire.unanswered(), 3);
        theirs(w, HEADERS, 0x4 | END_STREAM, 1, &[]);
        // A DATA frame with END_STREAM, a reset; a connection PING does not count.
        theirs(w, DATA, END_STREAM, 3, &[]);
        theirs(w, PING, 0, 0, &[0; 8]);
        assert_eq!(w.wire.unanswered(), 1);
        theirs(w, RST_STREAM, 0, 5, &NO_ERROR);
        assert_eq!(w.wire.unanswered(), 0);
    }

    #[test]
    fn a_stream_we_reset_is_no_longer_held_though_the_server_never_ends_it() {
        let w = &mut watch();
        for id in [1, 3, 5] {
            ours(w, HEADERS, 0x4, id, &[]);
        }
        // A cancelled call, and a reset `h2` sent on its own.
        ours(w, RST_STREAM, 0, 3, &CANCEL.to_be_bytes());
        assert_eq!(w.wire.unanswered(), 2);
        ours(w, RST_STREAM, 0, 5, &2u32.to_be_bytes());
        assert_eq!(w.wire.unanswered(), 1);
        theirs(w, HEADERS, 0x4 | END_STREAM, 1, &[]);
        assert_eq!(w.wire.unanswered(), 0);
    }

    #[test]
    fn a_stream_ended_twice_counts_once() {
        let w = &mut watch();
        for id in [1, 3, 5, 7] {
            ours(w, HEADERS, 0x4, id, &[]);
        }
        // The server's trailers, then its RST_STREAM(NO_ERROR) to a
        // request it did not read to the end.
        theirs(w, HEADERS, 0x4 | END_STREAM, 1, &[]);
        theirs(w, RST_STREAM, 0, 1, &NO_ERROR);
        assert_eq!(w.wire.unanswered(), 3);
        // Our cancel, then the server's END_STREAM it sent before reading it.
        ours(w, RST_STREAM, 0, 5, &CANCEL.to_be_bytes());
        theirs(w, DATA, END_STREAM, 5, &[]);
        assert_eq!(w.wire.unanswered(), 2);
        // The server's END_STREAM, then our cancel racing it.
        theirs(w, DATA, END_STREAM, 3, &[]);
        ours(w, RST_STREAM, 0, 3, &CANCEL.to_be_bytes());
        assert_eq!(w.wire.unanswered(), 1);
        theirs(w, RST_STREAM, 0, 7, &NO_ERROR);
        theirs(w, RST_STREAM, 0, 7, &NO_ERROR);
        ours(w, RST_STREAM, 0, 7, &CANCEL.to_be_bytes());
        assert_eq!(w.wire.unanswered(), 0);
        // Nothing wrapped: a new stream is one held.
        ours(w, HEADERS, 0x4, 9, &[]);
        assert_eq!(w.wire.unanswered(), 1);
    }

    #[test]
    fn frames_on_streams_we_never_opened_change_nothing() {
        let w = &mut watch();
        ours(w, HEADERS, 0x4, 3, &[]);
        ours(w, HEADERS, 0x4, 5, &[]);
        // Stream 0, an even id, ids above and below ours.
        theirs(w, RST_STREAM, 0, 0, &NO_ERROR);
        theirs(w, DATA, END_STREAM, 0, &[]);
        theirs(w, HEADERS, 0x4 | END_STREAM, 4, &[]);
        theirs(w, HEADERS, 0x4 | END_STREAM, 9, &[]);
        theirs(w, RST_STREAM, 0, 1, &NO_ERROR);
        ours(w, RST_STREAM, 0, 11, &CANCEL.to_be_bytes());
        ours(w, RST_STREAM, 0, 0, &NO_ERROR);
        // HEADERS again on an open stream (trailers) and an older id.
        ours(w, HEADERS, 0x4 | END_STREAM, 5, &[]);
        ours(w, HEADERS, 0x4, 1, &[]);
        assert_eq!(w.wire.unanswered(), 2);
        // Stream 7 never left (`h2` dropped it before its HEADERS): a gap.
        ours(w, HEADERS, 0x4, 9, &[]);
        theirs(w, RST_STREAM, 0, 7, &NO_ERROR);
        assert_eq!(w.wire.unanswered(), 3);
        for id in [3, 5, 9] {
            theirs(w, DATA, END_STREAM, id, &[]);
        }
        assert_eq!(w.wire.unanswered(), 0);
        // Trailers on a stream that ended open nothing.
        ours(w, HEADERS, 0x4 | END_STREAM, 9, &[]);
        assert_eq!(w.wire.unanswered(), 0);
    }

    #[test]
    fn a_goaway_ends_the_streams_above_its_last_stream_id() {
        let w = &mut watch();
        for id in [1, 3, 5, 7] {
            ours(w, HEADERS, 0x4, id, &[]);
        }
        // A first GOAWAY of a graceful shutdown (2^31 - 1) ends none.
        theirs(w, GOAWAY, 0, 0, &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(w.wire.unanswered(), 4);
        let mut payload = 3u32.to_be_bytes().to_vec();
        payload.extend(NO_ERROR);
        theirs(w, GOAWAY, 0, 0, &payload);
        assert_eq!(w.wire.unanswered(), 2);
        theirs(w, DATA, END_STREAM, 1, &[]);
        theirs(w, DATA, END_STREAM, 3, &[]);
        assert_eq!(w.wire.unanswered(), 0);
    }

    #[test]
    fn the_window_stays_bounded_while_one_stream_stays_open_and_100_000_pass() {
        let w = &mut watch();
        ours(w, HEADERS, 0x4, 1, &[]);
        let mut longest = 0;
        let mut next = 3;
        // 100,000 calls, 10 in flight at a time, answered in order.
        for _ in 0..10_000 {
            for id in (next..).step_by(2).take(10) {
                ours(w, HEADERS, 0x4, id, &[]);
            }
            longest = longest.max(w.open.span());
            if next < 2 * OPEN_WINDOW - 30 {
                assert_eq!(w.wire.unanswered(), 11, "stream 1 still followed");
            }
            for id in (next..).step_by(2).take(10) {
                theirs(w, HEADERS, 0x4 | END_STREAM, id, &[]);
            }
            next += 20;
        }
        assert!(longest <= OPEN_WINDOW, "{longest} flags");
        assert_eq!(w.open.span(), 0);
        // Stream 1 was pushed out: counted as ended, and its late end is
        // a frame on a stream no longer followed.
        assert_eq!(w.wire.unanswered(), 0);
        theirs(w, HEADERS, 0x4 | END_STREAM, 1, &[]);
        assert_eq!(w.wire.unanswered(), 0);
        ours(w, HEADERS, 0x4, next, &[]);
        assert_eq!(w.wire.unanswered(), 1);
    }

    proptest::proptest! {
        /// Against a set of the open streams: opens (with gaps), ends by
        /// either side in any order, repeated ends, frames on unknown ids.
        #[test]
        fn the_count_is_the_number_of_open_streams(
            ops in proptest::collection::vec((0u8..6, 0u32..40), 1..400),
        ) {
            let mut open = OpenStreams::default();
            let mut model = std::collections::BTreeSet::new();
            let mut next = 1u32;
            for (op, n) in ops {
                match op {
                    0 | 1 => {
                        // Open a new stream, skipping a few ids sometimes.
                        let id = next + 2 * (n % 3) * u32::from(op);
                        open.our_frame(HEADERS, id);
                        model.insert(id);
                        next = id + 2;
                    }
                    2 => {
                        let id = 2 * n + 1;
                        open.server_frame(DATA, END_STREAM, id, 0);
                        model.remove(&id);
                    }
                    3 => {
                        let id = 2 * n + 1;
                        open.our_frame(RST_STREAM, id);
                        model.remove(&id);
                    }
                    4 => {
                        // The oldest open stream ends.
                        if let Some(id) = model.pop_first() {
                            open.server_frame(RST_STREAM, 0, id, 0);
                        }
                    }
                    _ => {
                        // Even ids, stream 0, trailers: nothing.
                        open.server_frame(HEADERS, END_STREAM, 2 * n, 0);
                        open.our_frame(HEADERS, next.saturating_sub(2 * n + 2));
                    }
                }
                proptest::prop_assert_eq!(open.held as usize, model.len());
                if let Some(first) = model.first() {
                    proptest::prop_assert!(open.first <= *first);
                }
                proptest::prop_assert!(open.span() <= OPEN_WINDOW);
            }
        }
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

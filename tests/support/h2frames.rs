//! Counts HTTP/2 frames in the bytes a server reads and writes, without
//! touching them: how many RST_STREAMs a client sent, how many streams it
//! opened and reset before the server could accept them, and whether the
//! server sent a GOAWAY (and why). Used by the tonic backends of
//! `tests/support` and by `examples/loadgen`'s cancel-storm backend, whose
//! connections are [`CountedIo`]s.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;

/// Totals over every connection of one server.
#[derive(Debug, Default)]
pub struct FrameStats {
    /// HEADERS frames the server read (request headers, and trailers).
    pub headers_received: AtomicUsize,
    /// RST_STREAM frames the server read: the client's cancellations.
    pub resets_received: AtomicUsize,
    /// The largest number of streams whose HEADERS and RST_STREAM both came
    /// in one burst of reads (reads until the socket had nothing more):
    /// streams reset before the server could accept them, which is what
    /// h2's `max_pending_accept_reset_streams` (20 by default) counts.
    pub max_reset_unaccepted_per_burst: AtomicUsize,
    /// GOAWAY frames the server wrote.
    pub goaways_sent: AtomicUsize,
    /// The debug data of the server's GOAWAYs that had any (e.g.
    /// `too_many_resets`).
    pub goaway_debug: Mutex<Vec<String>>,
}

impl FrameStats {
    pub fn resets_received(&self) -> usize {
        self.resets_received.load(Ordering::SeqCst)
    }

    pub fn goaways_sent(&self) -> usize {
        self.goaways_sent.load(Ordering::SeqCst)
    }

    pub fn max_reset_unaccepted_per_burst(&self) -> usize {
        self.max_reset_unaccepted_per_burst.load(Ordering::SeqCst)
    }

    pub fn goaway_debug(&self) -> Vec<String> {
        self.goaway_debug
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }
}

/// Which way the bytes go, seen from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes the server reads: the client's preface, then frames.
    Read,
    /// Bytes the server writes: frames only.
    Write,
}

/// Splits one direction of one connection into frames.
#[derive(Debug)]
pub struct FrameParser {
    direction: Direction,
    /// Preface bytes still to skip.
    preface_left: usize,
    /// A frame header being assembled.
    header: Vec<u8>,
    /// The frame being read: its type and the payload bytes still to come.
    frame: Option<(u8, u32, usize)>,
    /// The payload of a frame whose content is wanted (GOAWAY, RST_STREAM).
    payload: Vec<u8>,
    /// Streams whose HEADERS came in the current burst of reads.
    opened_in_burst: HashSet<u32>,
    reset_unaccepted_in_burst: usize,
}

impl FrameParser {
    pub fn new(direction: Direction) -> Self {
        FrameParser {
            direction,
            preface_left: match direction {
                Direction::Read => PREFACE.len(),
                Direction::Write => 0,
            },
            header: Vec::with_capacity(9),
            frame: None,
            payload: Vec::new(),
            opened_in_burst: HashSet::new(),
            reset_unaccepted_in_burst: 0,
        }
    }

    /// Feeds bytes that went through the connection.
    pub fn feed(&mut self, mut bytes: &[u8], stats: &FrameStats) {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            match self.frame {
                None => {
                    let take = (9 - self.header.len()).min(bytes.len());
                    self.header.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.header.len() == 9 {
                        self.start_frame(stats);
                    }
                }
                Some((kind, stream, left)) => {
                    let take = left.min(bytes.len());
                    if matches!(kind, GOAWAY | RST_STREAM) {
                        self.payload.extend_from_slice(&bytes[..take]);
                    }
                    bytes = &bytes[take..];
                    self.frame = Some((kind, stream, left - take));
                    if left == take {
                        self.end_frame(stats);
                    }
                }
            }
        }
    }

    /// The read side had nothing more to read: the server's HTTP/2 stack
    /// now gets to accept the streams it read.
    pub fn end_burst(&mut self, stats: &FrameStats) {
        stats
            .max_reset_unaccepted_per_burst
            .fetch_max(self.reset_unaccepted_in_burst, Ordering::SeqCst);
        self.opened_in_burst.clear();
        self.reset_unaccepted_in_burst = 0;
    }

    fn start_frame(&mut self, stats: &FrameStats) {
        let h = &self.header;
        let length = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let kind = h[3];
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.header.clear();
        self.payload.clear();
        self.frame = Some((kind, stream, length));
        if length == 0 {
            self.end_frame(stats);
        }
    }

    fn end_frame(&mut self, stats: &FrameStats) {
        let Some((kind, stream, _)) = self.frame.take() else {
            return;
        };
        match (self.direction, kind) {
            (Direction::Read, HEADERS) => {
                stats.headers_received.fetch_add(1, Ordering::SeqCst);
                self.opened_in_burst.insert(stream);
            }
            (Direction::Read, RST_STREAM) => {
                stats.resets_received.fetch_add(1, Ordering::SeqCst);
                if self.opened_in_burst.remove(&stream) {
                    self.reset_unaccepted_in_burst += 1;
                }
            }
            (Direction::Write, GOAWAY) => {
                stats.goaways_sent.fetch_add(1, Ordering::SeqCst);
                // Last stream id (4 bytes), error code (4), debug data.
                if let Some(debug) = self.payload.get(8..).filter(|d| !d.is_empty()) {
                    if let Ok(mut list) = stats.goaway_debug.lock() {
                        list.push(String::from_utf8_lossy(debug).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
}

/// What a server's [`CountedIo`] connections count into.
pub trait ConnectionCounters: Send + Sync + 'static {
    /// The server's frame totals.
    fn frames(&self) -> &FrameStats;

    /// A connection closed (was dropped). Does nothing by default.
    fn closed(&self) {}
}

/// A server-side connection that counts the HTTP/2 frames going through
/// it into its server's counters, and tells them when it closes.
pub struct CountedIo<C: ConnectionCounters> {
    io: TcpStream,
    counters: Arc<C>,
    reads: FrameParser,
    writes: FrameParser,
}

impl<C: ConnectionCounters> CountedIo<C> {
    pub fn new(io: TcpStream, counters: Arc<C>) -> Self {
        CountedIo {
            io,
            counters,
            reads: FrameParser::new(Direction::Read),
            writes: FrameParser::new(Direction::Write),
        }
    }
}

impl<C: ConnectionCounters> Drop for CountedIo<C> {
    fn drop(&mut self) {
        self.counters.closed();
    }
}

impl<C: ConnectionCounters> Connected for CountedIo<C> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<C: ConnectionCounters> AsyncRead for CountedIo<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        let frames = this.counters.frames();
        match poll {
            Poll::Ready(Ok(())) => this.reads.feed(&buf.filled()[before..], frames),
            Poll::Pending => this.reads.end_burst(frames),
            Poll::Ready(Err(_)) => {}
        }
        poll
    }
}

impl<C: ConnectionCounters> AsyncWrite for CountedIo<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.writes.feed(&buf[..n], this.counters.frames());
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

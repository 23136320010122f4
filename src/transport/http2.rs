//! One HTTP/2 connection on `h2`, without a dispatch task in front of it.
//!
//! Calls take a clone of the connection's [`Sender`] and open their stream
//! from their own task: the request's HEADERS and DATA are queued in the
//! same poll and leave in one write. The only task per connection is the
//! [`drive`] task, which runs `h2`'s connection (reading, writing, flow
//! control) and watches these things for the subchannel:
//!
//! - the connection ending (peer close, I/O error, protocol error);
//! - the server refusing new streams (a GOAWAY, e.g. at its maximum
//!   connection age): reported at once as [`Lost::Draining`] while the calls
//!   already open run to completion;
//! - keepalive (gRFC A8): a PING every `interval` (only while calls are open
//!   unless `while_idle`), and the connection is closed if no PING ACK comes
//!   back within `timeout`;
//! - the streams of cancelled calls, reset at a pace the server's
//!   rapid-reset guard accepts (see [`pacer`]);
//! - `h2`'s own count of the streams it reset because of the server's
//!   frames (see below): past half of its limit the connection stops taking
//!   new calls ([`Lost::ErrorResets`]) and drains.
//!
//! When the subchannel lets go of the connection (it was lost, or the
//! subchannel shut down) the drive task drops its own handle; `h2` then
//! closes the connection as soon as the last call's stream ends.
//!
//! # Resets and `h2`'s limits
//!
//! A call dropped before it ends (its future or response body dropped, its
//! deadline passed) resets its stream with RST_STREAM(CANCEL), paced so
//! that the server's own rapid-reset guard is never tripped (see
//! [`pacer`]). The server may already have sent frames on the stream:
//! `h2` ignores frames on a stream it reset for as long as it remembers
//! the stream, and answers a frame on a forgotten stream with a
//! RST_STREAM(STREAM_CLOSED) of its own. It counts those resets over the
//! connection's whole life and, at `max_local_error_reset_streams`, ends
//! the connection with GOAWAY(ENHANCE_YOUR_CALM, "too_many_internal_resets"),
//! failing every call on it. The limits used here:
//!
//! | `h2` client option | `h2` default | here |
//! |---|---|---|
//! | `max_concurrent_reset_streams` (reset streams remembered) | 50 | [`REMEMBERED_RESETS`]: 10,000 |
//! | `reset_stream_duration` (for how long) | 1 s | [`REMEMBER_RESETS_FOR`]: 1 s |
//! | `max_local_error_reset_streams` (resets `h2` sends by itself) | 1024 | [`MAX_ERROR_RESETS`]: 1024, and the connection drains at [`DRAIN_AFTER_ERROR_RESETS`] (512) |
//!
//! - A storm resets thousands of streams a second (16,600 to 18,800 in
//!   BENCHMARKS.md, section 4), and `h2` remembers a reset stream only if
//!   fewer than `max_concurrent_reset_streams` are remembered. With `h2`'s
//!   50, in that storm `h2` had reset 512 streams by itself on a
//!   connection after 2,700 to 5,200 cancellations (and the connection
//!   drained); with 10,000 it reset none. Each remembered stream stays in
//!   `h2`'s stream table for `reset_stream_duration`, ample for the frames
//!   a server sent before it read the RST_STREAM.
//! - The limit on resets `h2` sends by itself stays: it bounds what a
//!   server that keeps sending frames on closed streams can make the client
//!   queue (one RST_STREAM each, without bound if the server does not
//!   read). But it counts over the connection's whole life, and reaching
//!   it fails the calls in flight. So a connection that has sent
//!   [`DRAIN_AFTER_ERROR_RESETS`] such resets stops taking new calls
//!   ([`Lost::ErrorResets`]) and drains: the calls on it finish with the
//!   other half of the limit to spare, new calls go to a new connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::Instant;

mod frames;
pub(crate) mod pacer;
mod pings;

use frames::{FrameWatch, Wire};
use pacer::{Cancels, Pacer};
use pings::Pings;

const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// The HTTP/2 settings a channel's connections announce. The defaults are
/// hyper's client's, and so tonic's `Channel`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Http2Settings {
    /// SETTINGS_INITIAL_WINDOW_SIZE: 2 MiB.
    pub(crate) stream_window: u32,
    /// The connection's receive window: 5 MiB.
    pub(crate) connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE: 16 KiB.
    pub(crate) max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: 16 KiB.
    pub(crate) max_header_list_size: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            stream_window: 2 * 1024 * 1024,
            connection_window: 5 * 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_header_list_size: 16 * 1024,
        }
    }
}

/// How many streams reset by us `h2` remembers (frames on them are
/// ignored, not answered with a RST_STREAM of its own).
pub(crate) const REMEMBERED_RESETS: usize = 10_000;
/// How long `h2` remembers a stream reset by us.
pub(crate) const REMEMBER_RESETS_FOR: Duration = Duration::from_secs(1);
/// `h2`'s limit of the resets it sends by itself, per connection.
pub(crate) const MAX_ERROR_RESETS: usize = 1024;
/// The connection drains once `h2` sent this many resets by itself.
pub(crate) const DRAIN_AFTER_ERROR_RESETS: usize = MAX_ERROR_RESETS / 2;

/// Keepalive settings of one connection (gRFC A8).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keepalive {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) while_idle: bool,
}

/// Why a READY connection stopped taking new calls.
#[derive(Debug)]
pub(crate) enum Lost {
    /// The connection ended: closed by the peer, or an error.
    Closed(Option<h2::Error>),
    /// The server refuses new streams (GOAWAY); open calls continue.
    Draining(h2::Error),
    /// No PING ACK within the keepalive timeout; the connection was closed.
    KeepaliveTimeout(Duration),
    /// `h2` reset this many streams by itself, half of its limit: the
    /// connection drains before `h2` would end it; open calls continue.
    ErrorResets(usize),
    /// The connection used up its 2^31 stream ids; open calls continue.
    StreamIdsExhausted,
    /// The drive task panicked (with this message); the connection is gone.
    /// Reported by its spawner (`connect`), which sees the task end.
    Panicked(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Closed(None) => f.write_str("closed by the server"),
            Lost::Closed(Some(e)) => write!(f, "closed: {e}"),
            Lost::Draining(e) => write!(f, "the server refuses new calls: {e}"),
            Lost::KeepaliveTimeout(t) => write!(f, "no keepalive ping ack within {t:?}"),
            Lost::ErrorResets(n) => write!(
                f,
                "drained after resetting {n} streams the server sent frames on after they \
                 were closed (h2 ends a connection at {MAX_ERROR_RESETS})"
            ),
            Lost::StreamIdsExhausted => f.write_str("drained: it used up its HTTP/2 stream ids"),
            Lost::Panicked(panic) => write!(f, "task panicked: {panic}"),
        }
    }
}

/// The handle calls open streams with: `h2`'s sender, where a call
/// dropped before its response hands its stream (see [`pacer`]), and the
/// count of calls in flight.
#[derive(Clone)]
pub(crate) struct Sender {
    h2: h2::client::SendRequest<Bytes>,
    cancels: Arc<Cancels>,
    streams: Arc<Streams>,
}

/// What the calls on a connection tell its drive task.
#[derive(Debug, Default)]
struct Streams {
    /// Calls in flight: streams opened whose call has not ended.
    in_flight: AtomicUsize,
    /// `h2` ran out of stream ids (2^31 streams on one connection).
    exhausted: AtomicBool,
}

/// One call's stream counted in flight on its connection until dropped
/// (the call ended, however it ended).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Streams>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl Sender {
    /// Ready when a stream may be opened: fewer than [`pacer::MAX_HELD`]
    /// cancelled streams wait for the server. While the call waits for
    /// room, an error as soon as the connection refuses new streams
    /// (GOAWAY) or has ended.
    ///
    /// With room, `h2` is not asked: each call has its own clone of `h2`'s
    /// sender, with no stream of its own pending, so `h2`'s `poll_ready`
    /// would only check the connection's error and the next stream id,
    /// which [`send_request`](Self::send_request) checks anyway, under the
    /// lock it takes to open the stream.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        if self.cancels.poll_room(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        match self.h2.poll_ready(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Pending,
        }
    }

    /// Opens a stream with `request`'s HEADERS (see
    /// `h2::client::SendRequest::send_request`); the stream counts in
    /// flight until the returned [`InFlight`] drops.
    pub(crate) fn send_request(
        &mut self,
        request: Request<()>,
        end_of_stream: bool,
    ) -> Result<(ResponseFuture, SendStream<Bytes>, InFlight), h2::Error> {
        let (inner, stream) = self.h2.send_request(request, end_of_stream)?;
        let response = ResponseFuture {
            inner,
            cancels: self.cancels.clone(),
            done: false,
        };
        self.streams.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok((response, stream, InFlight(self.streams.clone())))
    }

    /// The calls in flight on this connection: streams opened whose call
    /// has not ended.
    pub(crate) fn in_flight(&self) -> usize {
        self.streams.in_flight.load(Ordering::Acquire)
    }

    /// `h2` refused a stream because the connection used up its stream ids
    /// (`send_request` failed with an overflowed stream id, after 2^31
    /// streams): the connection must drain; the call was never sent.
    pub(crate) fn ran_out_of_stream_ids(&self) {
        self.streams.exhausted.store(true, Ordering::Release);
        self.cancels.wake_task();
    }

    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS as `h2` applies it.
    pub(crate) fn max_concurrent_streams(&self) -> usize {
        self.h2.current_max_send_streams()
    }
}

/// A stream's response headers. Dropping it before they came cancels the
/// call: its stream is reset at once or held briefly (see [`pacer`]).
pub(crate) struct ResponseFuture {
    inner: h2::client::ResponseFuture,
    cancels: Arc<Cancels>,
    done: bool,
}

impl Future for ResponseFuture {
    type Output = Result<Response<RecvStream>, h2::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        self.done = true;
        Poll::Ready(result)
    }
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        if !self.done {
            let id = self.inner.stream_id().as_u32();
            self.cancels.cancel(id, &mut self.inner);
        }
    }
}

/// The connection [`drive`] runs, and what it shares with the calls.
pub(crate) struct Connection<IO> {
    h2: h2::client::Connection<FrameWatch<IO>, Bytes>,
    wire: Arc<Wire>,
    cancels: Arc<Cancels>,
}

/// Performs the HTTP/2 handshake on `io` and returns the sender and the
/// connection, which [`drive`] must run.
pub(crate) async fn handshake<IO>(
    io: IO,
    settings: Http2Settings,
) -> Result<(Sender, Connection<IO>), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let wire = Arc::new(Wire::new());
    let (h2, connection) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(settings.max_header_list_size)
        .max_concurrent_reset_streams(REMEMBERED_RESETS)
        .reset_stream_duration(REMEMBER_RESETS_FOR)
        .max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
        .handshake(FrameWatch::new(io, wire.clone()))
        .await?;
    let cancels = Arc::new(Cancels::new(wire.clone()));
    let sender = Sender {
        h2,
        cancels: cancels.clone(),
        streams: Arc::default(),
    };
    let connection = Connection {
        h2: connection,
        wire,
        cancels,
    };
    Ok((sender, connection))
}

/// Runs `connection` until it ends. Reports, once, the first reason it stops
/// taking new calls on `lost`. `release` resolving (or its sender being
/// dropped) means the subchannel no longer uses this connection.
pub(crate) async fn drive<IO>(
    connection: Connection<IO>,
    probe: Sender,
    keepalive: Option<Keepalive>,
    release: oneshot::Receiver<()>,
    lost: oneshot::Sender<Lost>,
    too_many_pings: Arc<AtomicU32>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Connection {
        h2: mut connection,
        wire,
        cancels,
    } = connection;
    let pings = Pings::new(connection.ping_pong(), keepalive);
    let mut watch = DriveState {
        streams: probe.streams.clone(),
        probe: Some(probe),
        too_many_pings,
        pings,
        pacer: Pacer::new(cancels),
        wire,
        release: Some(release),
        lost: Some(lost),
    };
    let mut coalesce = Coalesce::default();
    std::future::poll_fn(|cx| {
        let in_flight = watch.streams.in_flight.load(Ordering::Acquire);
        if coalesce.defer(cx, in_flight, watch.wire.unanswered()) {
            return Poll::Pending;
        }
        if let Poll::Ready(result) = Pin::new(&mut connection).poll(cx) {
            watch.closed(cx, result.err());
            return Poll::Ready(());
        }
        watch.poll(cx)
    })
    .await;
    watch.pacer.close();
    tracing::debug!(
        cancels = watch.wire.cancels_sent(),
        error_resets = watch.wire.error_resets_sent(),
        "HTTP/2 connection ended"
    );
}

/// Write coalescing: the drive task lets every other task that is ready
/// run before it writes, so that one write carries the frames of every
/// call that was ready to send, not of the one call that woke it.
///
/// A call queues its HEADERS and DATA in `h2` and wakes the drive task.
/// tokio runs a task woken by another task next (its LIFO slot), so without
/// this the drive task would flush each call's frames in a write of their
/// own, one system call per call whatever the number of calls in flight
/// (BENCHMARKS.md, section 6). So when woken with more than one call in
/// flight, the drive task first wakes itself and returns: a task that wakes
/// itself goes to the back of its worker's run queue, behind the calls that
/// are ready to run; their wake-ups of the drive task meanwhile cost
/// nothing (it is already scheduled). It then runs `h2` once for all of
/// them: one write, and every response read so far delivered in one pass.
/// With one call in flight there is nothing to wait for, and it runs at
/// once.
///
/// Nor does it wait while the server holds fewer than half of the calls in
/// flight (streams we opened that nobody ended yet, counted exactly by the
/// frame watch, `Wire::unanswered`): then the server may be idle, waiting
/// for exactly these frames. Against a server that
/// also answers a whole read in one write (a tokio `current_thread`
/// server, grpc-go's), waiting then moved every call in flight back and
/// forth as one batch, and each side idled while the other worked: half
/// the throughput of writing at once (BENCHMARKS.md, section 7). Writing
/// at once until the server holds half keeps it busy while the rest are
/// coalesced.
///
/// The streams the server holds can exceed the calls in flight (a
/// cancelled call's stream is held until its paced RST_STREAM leaves, see
/// [`pacer`]); the share is capped at the calls in flight. The count
/// needs no correction: it is exact per stream, and a stream it stops
/// following (open while thousands of newer ones came and went) counts as
/// ended, which can only make the drive task write sooner.
#[derive(Debug, Default)]
struct Coalesce {
    /// The last poll deferred: this one runs the connection.
    deferred: bool,
}

impl Coalesce {
    /// Whether this poll of the drive task should only reschedule it.
    /// `unanswered` is `Wire::unanswered`, read now.
    fn defer(&mut self, cx: &mut Context<'_>, in_flight: usize, unanswered: u32) -> bool {
        let deferred = std::mem::take(&mut self.deferred);
        if deferred || in_flight <= 1 {
            return false;
        }
        let at_server = (unanswered as usize).min(in_flight);
        if at_server * 2 < in_flight {
            return false;
        }
        self.deferred = true;
        cx.waker().wake_by_ref();
        true
    }
}

/// What the drive task watches besides the connection itself.
struct DriveState {
    probe: Option<Sender>,
    streams: Arc<Streams>,
    /// How many times a server of this channel said too_many_pings.
    too_many_pings: Arc<AtomicU32>,
    pings: Pings,
    pacer: Pacer,
    wire: Arc<Wire>,
    release: Option<oneshot::Receiver<()>>,
    lost: Option<oneshot::Sender<Lost>>,
}

impl DriveState {
    fn report(&mut self, reason: Lost) {
        if let Lost::Draining(e) | Lost::Closed(Some(e)) = &reason {
            if is_too_many_pings(e) && self.lost.is_some() {
                // gRFC A8: double this channel's keepalive interval.
                self.too_many_pings.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(error = %e, "the server said too_many_pings: keepalive interval doubled");
            }
        }
        if let Some(lost) = self.lost.take() {
            let _ = lost.send(reason);
        }
    }

    /// The connection ended, with `h2`'s error if it failed. A server that
    /// shuts down gracefully (GOAWAY(NO_ERROR), a PING, a second GOAWAY,
    /// then close) ends `h2`'s connection without an error, often in the
    /// poll that read the GOAWAY: then the GOAWAY is the reason (gRFC A94
    /// reports the first reason seen).
    fn closed(&mut self, cx: &mut Context<'_>, error: Option<h2::Error>) {
        let error = error.or_else(|| self.go_away(cx));
        self.report(Lost::Closed(error));
    }

    /// The server's GOAWAY as `h2` reports it to new streams, once one
    /// was read.
    fn go_away(&mut self, cx: &mut Context<'_>) -> Option<h2::Error> {
        if !self.wire.go_away_seen() {
            return None;
        }
        match self.probe.as_mut()?.h2.poll_ready(cx) {
            Poll::Ready(Err(e)) => Some(e),
            _ => None,
        }
    }

    /// Ready when the connection must be closed now (keepalive timeout).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(release) = self.release.as_mut() {
            if Pin::new(release).poll(cx).is_ready() {
                self.let_go();
            }
        }
        // An ACK tells the pacer which streams the server has read.
        self.pings.poll_ack(cx, &self.wire);
        let holding = self.pacer.poll(cx);
        if holding && self.wire.ping_is_welcome(Instant::now()) {
            self.pings.send(cx, &self.wire);
        }
        if let Some(lost) = self.poll_lost(cx) {
            self.report(lost);
            self.let_go();
        }
        // Keepalive protects the calls still open, also while the
        // connection drains after a GOAWAY.
        let active = self.streams.in_flight.load(Ordering::Acquire) > 0;
        if self.pings.poll_keepalive(cx, active, &self.wire).is_ready() {
            let timeout = self.pings.keepalive.map(|k| k.timeout).unwrap_or_default();
            self.report(Lost::KeepaliveTimeout(timeout));
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Why the connection stops taking new calls now, if it does.
    fn poll_lost(&mut self, cx: &mut Context<'_>) -> Option<Lost> {
        self.probe.as_ref()?;
        // A GOAWAY makes every new stream fail: stop taking calls now.
        // `h2` is asked (a lock of its streams) only once the server sent
        // one; any other end of the connection ends `h2`'s connection
        // future itself (`Lost::Closed`).
        if let Some(e) = self.go_away(cx) {
            return Some(Lost::Draining(e));
        }
        let error_resets = self.wire.error_resets_sent();
        if error_resets >= DRAIN_AFTER_ERROR_RESETS {
            tracing::debug!(
                error_resets,
                "draining the connection before h2's reset limit"
            );
            return Some(Lost::ErrorResets(error_resets));
        }
        if self.streams.exhausted.load(Ordering::Acquire) {
            return Some(Lost::StreamIdsExhausted);
        }
        None
    }

    /// Drops this task's handle so that `h2` closes the connection once the
    /// calls still on it end.
    fn let_go(&mut self) {
        self.probe = None;
        self.release = None;
        // Pings go on only while calls remain.
        if let Some(keepalive) = self.pings.keepalive.as_mut() {
            keepalive.while_idle = false;
        }
    }
}

/// A GOAWAY(ENHANCE_YOUR_CALM) with debug data `too_many_pings`, as gRPC
/// servers send when pinged more often than they allow (gRFC A8). `h2`
/// shows the debug data only in the error's text.
fn is_too_many_pings(e: &h2::Error) -> bool {
    e.is_go_away()
        && e.is_remote()
        && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        && e.to_string().contains("too_many_pings")
}

/// Whether `e`, from `send_request`, says the connection ran out of
/// stream ids. `h2` reports it as a user error, told apart by its text.
pub(crate) fn is_stream_id_overflow(e: &h2::Error) -> bool {
    !e.is_io()
        && !e.is_go_away()
        && e.reason().is_none()
        && e.to_string().contains("stream ID overflowed")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the drive task defers, for calls in flight and streams the
    /// server has not answered, after a poll that ran the connection.
    fn defers(coalesce: &mut Coalesce, in_flight: usize, unanswered: u32) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        coalesce.defer(&mut cx, in_flight, unanswered)
    }

    #[test]
    fn coalescing_waits_only_while_the_server_holds_half_the_calls() {
        let mut coalesce = Coalesce::default();
        // One call in flight: nothing to wait for.
        assert!(!defers(&mut coalesce, 1, 1));
        // 64 calls, all answered (a batch of responses just read): the
        // server is idle, write at once.
        assert!(!defers(&mut coalesce, 64, 0));
        assert!(!defers(&mut coalesce, 64, 31));
        // Half of them at the server: wait once for the other calls, then run.
        assert!(defers(&mut coalesce, 64, 32));
        assert!(!defers(&mut coalesce, 64, 32));
        assert!(defers(&mut coalesce, 64, 64));
    }

    mod real_server {
        //! Many calls on one connection to a real tonic server, some of them
        //! cancelled: the count of streams the server holds is exact.

        use super::super::*;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        use tokio::sync::watch;
        use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

        #[allow(unreachable_pub, dead_code, missing_docs)]
        mod proto {
            tonic::include_proto!("proto");
        }
        use proto::simple_server::{Simple, SimpleServer};
        use proto::{SimpleRequest, SimpleResponse};

        /// Answers `answer` at once; any other call waits for `release`.
        /// `running` counts the handlers running (a cancelled call's handler
        /// is dropped when the server reads its RST_STREAM).
        struct Holding {
            running: Arc<AtomicUsize>,
            release: watch::Receiver<bool>,
        }

        struct Running(Arc<AtomicUsize>);

        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }

        #[tonic::async_trait]
        impl Simple for Holding {
            async fn route(
                &self,
                request: GrpcRequest<SimpleRequest>,
            ) -> Result<GrpcResponse<SimpleResponse>, Status> {
                self.running.fetch_add(1, Ordering::SeqCst);
                let _running = Running(self.running.clone());
                let data = request.into_inner().data;
                if data != "answer" {
                    let mut release = self.release.clone();
                    let _ = release.wait_for(|go| *go).await;
                }
                Ok(GrpcResponse::new(SimpleResponse {
                    code: 0,
                    value: data,
                }))
            }
        }

        /// A unary `Route` call's HEADERS and message on one stream.
        async fn open(
            sender: &Sender,
            authority: &str,
            data: &str,
        ) -> (ResponseFuture, SendStream<Bytes>, InFlight) {
            let mut sender = sender.clone();
            std::future::poll_fn(|cx| sender.poll_ready(cx))
                .await
                .expect("the connection takes calls");
            let request = Request::post(format!("http://{authority}/proto.Simple/Route"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("a valid request");
            let (response, mut body, in_flight) =
                sender.send_request(request, false).expect("a stream");
            // A length-prefixed SimpleRequest { data }.
            let length = u8::try_from(data.len()).expect("short");
            let mut message = vec![0, 0, 0, 0, length + 2, 0x0a, length];
            message.extend_from_slice(data.as_bytes());
            body.send_data(Bytes::from(message), true).expect("sent");
            (response, body, in_flight)
        }

        /// Reads a call's response to its trailers.
        async fn answered(call: (ResponseFuture, SendStream<Bytes>, InFlight)) {
            let (response, _body, _in_flight) = call;
            let mut body = response.await.expect("response headers").into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("response data");
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let trailers = body.trailers().await.expect("trailers").expect("trailers");
            assert_eq!(
                trailers.get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"0"[..])
            );
        }

        /// Waits (bounded by the test's timeout) until the client's count
        /// and the server's running handlers are both `want`.
        async fn settle(wire: &Wire, running: &AtomicUsize, want: u32) {
            loop {
                let (held, handlers) = (wire.unanswered(), running.load(Ordering::SeqCst));
                if held == want && handlers == want as usize {
                    return;
                }
                tracing::debug!(held, handlers, want, "settling");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        #[tokio::test]
        async fn the_count_of_streams_the_server_holds_is_exact_with_cancelled_calls() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let running = Arc::new(AtomicUsize::new(0));
            let (release, release_rx) = watch::channel(false);
            let service = Holding {
                running: running.clone(),
                release: release_rx,
            };
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(SimpleServer::new(service))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (sender, connection) = handshake(socket, Http2Settings::default()).await.unwrap();
            let wire = connection.wire.clone();
            let (_release_connection, release_rx) = oneshot::channel();
            let (lost, _lost_rx) = oneshot::channel();
            tokio::spawn(drive(
                connection,
                sender.clone(),
                None,
                release_rx,
                lost,
                Arc::default(),
            ));
            let authority = addr.to_string();

            let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                // Three rounds: 40 calls the server holds, 50 cancelled
                // once the server runs their handlers, 60 answered at once.
                // The held calls keep calls in flight throughout (the
                // connection is never idle).
                for round in 1..=3u32 {
                    let mut kept = Vec::new();
                    for _ in 0..40 {
                        kept.push(open(&sender, &authority, "hold").await);
                    }
                    let mut cancelled = Vec::new();
                    for _ in 0..50 {
                        cancelled.push(open(&sender, &authority, "cancel").await);
                    }
                    let answers: Vec<_> = futures_util::future::join_all(
                        (0..60).map(|_| open(&sender, &authority, "answer")),
                    )
                    .await;
                    futures_util::future::join_all(answers.into_iter().map(answered)).await;
                    while running.load(Ordering::SeqCst) < 90 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    drop(cancelled);
                    settle(&wire, &running, 40).await;
                    assert_eq!(sender.in_flight(), 40, "round {round}");
                    release.send_replace(true);
                    futures_util::future::join_all(kept.into_iter().map(answered)).await;
                    settle(&wire, &running, 0).await;
                    release.send_replace(false);
                }
            })
            .await;
            assert!(
                outcome.is_ok(),
                "the count did not settle: {} streams held by the client's count, {} handlers running",
                wire.unanswered(),
                running.load(Ordering::SeqCst)
            );
            assert_eq!(wire.cancels_sent(), 150, "every cancelled call was reset");
        }
    }
}

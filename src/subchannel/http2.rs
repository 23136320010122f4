//! One HTTP/2 connection on `h2`, without a dispatch task in front of it.
//!
//! Calls take a clone of the connection's [`Sender`] and open their stream
//! from their own task: the request's HEADERS and DATA are queued in the
//! same poll and leave in one write. The only task per connection is the
//! [`drive`] task, which runs `h2`'s connection (reading, writing, flow
//! control) and watches three things for the subchannel:
//!
//! - the connection ending (peer close, I/O error, protocol error);
//! - the server refusing new streams (a GOAWAY, e.g. at its maximum
//!   connection age): reported at once as [`Lost::Draining`] while the calls
//!   already open run to completion;
//! - keepalive (gRFC A8): a PING every `interval` (only while calls are open
//!   unless `while_idle`), and the connection is closed if no PING ACK comes
//!   back within `timeout`.
//!
//! When the subchannel lets go of the connection (it was lost, or the
//! subchannel shut down) the drive task drops its own handle; `h2` then
//! closes the connection as soon as the last call's stream ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// The handle calls open streams with.
pub(crate) type Sender = h2::client::SendRequest<Bytes>;

/// HTTP/2 settings, as hyper's client (and so tonic's channel) uses them.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

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
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Closed(None) => f.write_str("closed by the server"),
            Lost::Closed(Some(e)) => write!(f, "closed: {e}"),
            Lost::Draining(e) => write!(f, "the server refuses new calls: {e}"),
            Lost::KeepaliveTimeout(t) => write!(f, "no keepalive ping ack within {t:?}"),
        }
    }
}

/// Performs the HTTP/2 handshake on `io` and returns the sender and the
/// connection, which [`drive`] must run.
pub(crate) async fn handshake<IO>(
    io: IO,
) -> Result<(Sender, h2::client::Connection<IO, Bytes>), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .handshake(io)
        .await
}

/// Runs `connection` until it ends. Reports, once, the first reason it stops
/// taking new calls on `lost`. `release` resolving (or its sender being
/// dropped) means the subchannel no longer uses this connection.
pub(crate) async fn drive<IO>(
    mut connection: h2::client::Connection<IO, Bytes>,
    probe: Sender,
    keepalive: Option<Keepalive>,
    release: oneshot::Receiver<()>,
    lost: oneshot::Sender<Lost>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let pinger = keepalive.and_then(|k| Some(Pinger::new(k, connection.ping_pong()?)));
    let mut watch = Watch {
        probe: Some(probe),
        pinger,
        release: Some(release),
        lost: Some(lost),
    };
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = Pin::new(&mut connection).poll(cx) {
            watch.report(Lost::Closed(result.err()));
            return Poll::Ready(());
        }
        watch.poll(cx)
    })
    .await
}

/// What the drive task watches besides the connection itself.
struct Watch {
    probe: Option<Sender>,
    pinger: Option<Pinger>,
    release: Option<oneshot::Receiver<()>>,
    lost: Option<oneshot::Sender<Lost>>,
}

impl Watch {
    fn report(&mut self, reason: Lost) {
        if let Some(lost) = self.lost.take() {
            let _ = lost.send(reason);
        }
    }

    /// Ready when the connection must be closed now (keepalive timeout).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(release) = self.release.as_mut() {
            if Pin::new(release).poll(cx).is_ready() {
                self.let_go();
                return Poll::Pending;
            }
        }
        let Some(probe) = self.probe.as_mut() else {
            return Poll::Pending;
        };
        // A GOAWAY makes every new stream fail: stop taking calls now.
        if let Poll::Ready(Err(e)) = probe.poll_ready(cx) {
            self.report(Lost::Draining(e));
            self.let_go();
            return Poll::Pending;
        }
        let active = probe.num_active_streams() > 0;
        if let Some(pinger) = self.pinger.as_mut() {
            if pinger.poll(cx, active).is_ready() {
                let timeout = pinger.config.timeout;
                self.report(Lost::KeepaliveTimeout(timeout));
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Drops this task's handle so that `h2` closes the connection once the
    /// calls still on it end.
    fn let_go(&mut self) {
        self.probe = None;
        self.pinger = None;
        self.release = None;
    }
}

/// Sends keepalive PINGs and times out their ACKs.
struct Pinger {
    config: Keepalive,
    ping_pong: h2::PingPong,
    timer: Pin<Box<Sleep>>,
    awaiting_ack: bool,
}

impl Pinger {
    fn new(config: Keepalive, ping_pong: h2::PingPong) -> Self {
        Pinger {
            config,
            ping_pong,
            timer: Box::pin(tokio::time::sleep(config.interval)),
            awaiting_ack: false,
        }
    }

    /// Ready when a PING went unanswered for the timeout.
    fn poll(&mut self, cx: &mut Context<'_>, active: bool) -> Poll<()> {
        if self.awaiting_ack {
            // An error here is the connection's: it surfaces as its end.
            if let Poll::Ready(Ok(_)) = self.ping_pong.poll_pong(cx) {
                self.awaiting_ack = false;
                self.rearm(self.config.interval);
            }
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.awaiting_ack {
                return Poll::Ready(());
            }
            if (active || self.config.while_idle)
                && self.ping_pong.send_ping(h2::Ping::opaque()).is_ok()
            {
                self.awaiting_ack = true;
                self.rearm(self.config.timeout);
                // Registers interest in the ACK.
                if let Poll::Ready(Ok(_)) = self.ping_pong.poll_pong(cx) {
                    self.awaiting_ack = false;
                    self.rearm(self.config.interval);
                }
            } else {
                self.rearm(self.config.interval);
            }
        }
        Poll::Pending
    }

    fn rearm(&mut self, after: Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
    }
}

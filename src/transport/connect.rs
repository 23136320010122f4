//! Establishing one connection: dial (TCP, unix socket, or the user's
//! connector), then TLS if configured, then the preface watch and the
//! HTTP/2 handshake; READY once the server's preface arrived.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::uri::Authority;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::dial::{self, Connector, Dialled, SocketOptions};
use super::http2::{self, Http2Settings, Keepalive, Lost};
use super::origin::{self, Origin, TargetHost};
use super::preface::PrefaceWatch;
use super::progress::{Phase, Progress};
use super::Connection;
use crate::{Address, Error, ErrorKind};

/// gRPC's default keepalive timeout (gRFC A8), when only an interval is set.
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How connections are made and run; one per channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) keepalive_timeout: Option<Duration>,
    pub(crate) keepalive_while_idle: bool,
    /// The channel's `:authority` override.
    pub(crate) authority: Option<Authority>,
    /// The one host the target names, if it names one (TLS server name).
    pub(crate) target_host: Option<TargetHost>,
    pub(crate) socket: SocketOptions,
    pub(crate) http2: Http2Settings,
    pub(crate) connector: Option<Connector>,
    /// How many times a server of this channel answered our pings with
    /// GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"): each doubles the
    /// keepalive interval of the channel's next connections (gRFC A8).
    pub(crate) too_many_pings: Arc<AtomicU32>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<super::tls::TlsConnector>,
}

impl Settings {
    /// The scheme, `:authority` and TLS server name of calls to `address`.
    pub(crate) fn origin_for(&self, address: &Address) -> Result<Origin, Error> {
        #[cfg(feature = "tls")]
        let tls = self.tls.as_ref().map(|t| t.server_name_override());
        #[cfg(not(feature = "tls"))]
        let tls = None;
        origin::origin_for(
            address,
            self.authority.as_ref(),
            self.target_host.as_ref(),
            tls,
        )
    }

    /// The keepalive interval a new connection uses now.
    #[cfg(test)]
    pub(crate) fn keepalive_interval_now(&self) -> Option<Duration> {
        self.keepalive().map(|k| k.interval)
    }

    fn keepalive(&self) -> Option<Keepalive> {
        let doublings = self.too_many_pings.load(Ordering::Acquire).min(16);
        self.keepalive_interval.map(|interval| Keepalive {
            interval: interval.saturating_mul(1 << doublings),
            timeout: self.keepalive_timeout.unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT),
            while_idle: self.keepalive_while_idle,
        })
    }
}

/// A READY connection as its owner (the subchannel) holds it.
#[derive(Debug)]
pub(crate) struct Established {
    /// The handle calls open streams with.
    pub(crate) connection: Connection,
    /// Resolves with the reason the connection stopped taking calls.
    lost: oneshot::Receiver<Lost>,
    /// Dropping it tells the drive task the owner let go.
    _release: oneshot::Sender<()>,
    /// The drive task: how it ended, when it ended without a report.
    drive: JoinHandle<()>,
}

impl Established {
    /// Waits until the connection stops taking new calls: [`Lost::Panicked`]
    /// if the drive task panicked, `None` if it ended without saying why.
    pub(crate) async fn lost(&mut self) -> Option<Lost> {
        if let Ok(lost) = (&mut self.lost).await {
            return Some(lost);
        }
        // The drive task dropped its sender: it ended, or is unwinding.
        match (&mut self.drive).await {
            Err(e) if e.is_panic() => Some(Lost::Panicked(panic_message(e.into_panic()))),
            _ => None,
        }
    }
}

/// Connects to `address` and returns once the connection is READY: the
/// (TLS and) HTTP/2 handshake is done and the server's preface has arrived.
/// A panic on the way (in `h2`, the connector, TLS) fails the attempt with
/// its message, so the subchannel backs off instead of staying CONNECTING.
/// Each step reached is noted in `progress`.
pub(crate) async fn establish(
    address: &Address,
    origin: &Origin,
    settings: &Settings,
    progress: &Progress,
) -> Result<Established, Error> {
    let attempt = AssertUnwindSafe(connect(address, origin, settings, progress));
    attempt.catch_unwind().await.unwrap_or_else(|panic| {
        Err(Error::new(
            ErrorKind::Connect,
            format!(
                "{address}: connection attempt panicked: {}",
                panic_message(panic)
            ),
        ))
    })
}

/// The text of a panic's payload (`panic!`'s message, when it has one).
fn panic_message(panic: Box<dyn Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => match panic.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

/// [`establish`] without the panic guard.
async fn connect(
    address: &Address,
    origin: &Origin,
    settings: &Settings,
    progress: &Progress,
) -> Result<Established, Error> {
    if let Some(connector) = &settings.connector {
        let io = connector.connect(address).await?;
        return secure(io, address, origin, settings, progress).await;
    }
    match dial::dial(address, &settings.socket).await? {
        Dialled::Tcp(tcp) => secure(tcp, address, origin, settings, progress).await,
        #[cfg(unix)]
        Dialled::Unix(unix) => secure(unix, address, origin, settings, progress).await,
    }
}

/// TLS on `io` when the channel has it, then the HTTP/2 handshake.
#[allow(unused_variables)]
async fn secure<IO>(
    io: IO,
    address: &Address,
    origin: &Origin,
    settings: &Settings,
    progress: &Progress,
) -> Result<Established, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tls")]
    if let (Some(tls), Some(name)) = (&settings.tls, &origin.server_name) {
        progress.reached(Phase::Tls);
        let io = tls.connect(io, name, address).await?;
        progress.reached(Phase::Settings);
        return handshake(io, address, settings, true).await;
    }
    progress.reached(Phase::Settings);
    handshake(io, address, settings, false).await
}

/// The HTTP/2 handshake on `io` (over TLS if `tls`: then a server that
/// closes before its preface is described in TLS's terms).
async fn handshake<IO>(
    io: IO,
    address: &Address,
    settings: &Settings,
    tls: bool,
) -> Result<Established, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: h2::Error| match closed_after_tls(settings, tls, Some(&e)) {
        Some(reason) => Error::new(ErrorKind::Connect, format!("{address}: {reason}")),
        None => Error::with_source(
            ErrorKind::Connect,
            format!("{address}: HTTP/2 handshake"),
            e,
        ),
    };
    let (io, spoke) = PrefaceWatch::new(io);
    let (sender, connection) = http2::handshake(io, settings.http2).await.map_err(failed)?;
    let (release, released) = oneshot::channel();
    let (lost_tx, mut lost) = oneshot::channel();
    let mut drive = tokio::spawn(http2::drive(
        connection,
        sender.clone(),
        settings.keepalive(),
        released,
        lost_tx,
        settings.too_many_pings.clone(),
    ));
    // READY only once the server has sent its preface (see `preface`). The
    // socket is dropped, failing `spoke`, when the connection ends first.
    let spoke = spoke.await;
    if let Ok(Err(not_http2)) = spoke {
        return Err(Error::new(
            ErrorKind::Connect,
            format!("{address}: {not_http2}"),
        ));
    }
    if spoke.is_err() {
        // The drive task reported why the connection ended before it
        // dropped the socket.
        let error = match lost.try_recv() {
            Ok(Lost::Closed(e)) => e,
            Ok(_) | Err(oneshot::error::TryRecvError::Empty) => None,
            // It ended without a report: it panicked.
            Err(oneshot::error::TryRecvError::Closed) => match (&mut drive).await {
                Err(e) if e.is_panic() => {
                    let panic = panic_message(e.into_panic());
                    return Err(Error::new(
                        ErrorKind::Connect,
                        format!("{address}: connection task panicked: {panic}"),
                    ));
                }
                _ => None,
            },
        };
        let why = match (closed_after_tls(settings, tls, error.as_ref()), &error) {
            (Some(reason), _) => format!(": {reason}"),
            (None, Some(e)) => format!(": {e}"),
            (None, None) => String::new(),
        };
        return Err(Error::new(
            ErrorKind::Connect,
            format!("{address}: connection closed before the server's HTTP/2 preface{why}"),
        ));
    }
    Ok(Established {
        connection: Connection { sender },
        lost,
        _release: release,
        drive,
    })
}

/// TLS's reason for a connection over TLS (`tls`) that ended before the
/// server's preface (a server that requires a client certificate says so
/// only after the client's handshake is done).
#[allow(unused_variables)]
fn closed_after_tls(settings: &Settings, tls: bool, e: Option<&h2::Error>) -> Option<String> {
    #[cfg(feature = "tls")]
    if let (true, Some(connector)) = (tls, &settings.tls) {
        return connector.describe_closed(e);
    }
    None
}

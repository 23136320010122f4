//! Establishing one connection: dial, then the HTTP/2 handshake, READY
//! once the server's preface arrived.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::http2::{self, Keepalive, Lost};
use super::preface::PrefaceWatch;
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
}

impl Settings {
    fn keepalive(&self) -> Option<Keepalive> {
        self.keepalive_interval.map(|interval| Keepalive {
            interval,
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
}

impl Established {
    /// Waits until the connection stops taking new calls; `None` if the
    /// drive task ended without saying why.
    pub(crate) async fn lost(&mut self) -> Option<Lost> {
        (&mut self.lost).await.ok()
    }
}

/// Connects to `address` and returns once the connection is READY: the
/// HTTP/2 handshake is done and the server's preface has arrived.
pub(crate) async fn establish(
    address: &Address,
    settings: &Settings,
) -> Result<Established, Error> {
    let addr = address.addr();
    let fail = |e: std::io::Error| Error::with_source(ErrorKind::Connect, addr.to_owned(), e);
    #[cfg(unix)]
    if let Some(path) = addr.strip_prefix("unix:") {
        let io = tokio::net::UnixStream::connect(path).await.map_err(fail)?;
        return handshake(io, address, settings).await;
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(fail)?;
    tcp.set_nodelay(true).map_err(fail)?;
    handshake(tcp, address, settings).await
}

async fn handshake<IO>(io: IO, address: &Address, settings: &Settings) -> Result<Established, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: h2::Error| {
        Error::with_source(
            ErrorKind::Connect,
            format!("{address}: HTTP/2 handshake"),
            e,
        )
    };
    let (io, spoke) = PrefaceWatch::new(io);
    let (sender, connection) = http2::handshake(io).await.map_err(failed)?;
    let (release, released) = oneshot::channel();
    let (lost_tx, lost) = oneshot::channel();
    tokio::spawn(http2::drive(
        connection,
        sender.clone(),
        settings.keepalive(),
        released,
        lost_tx,
    ));
    // READY only once the server has sent its preface (see `preface`). The
    // socket is dropped, failing `spoke`, when the connection ends first.
    spoke.await.map_err(|_| {
        Error::new(
            ErrorKind::Connect,
            format!("{address}: connection closed before the server's HTTP/2 preface"),
        )
    })?;
    Ok(Established {
        connection: Connection { sender },
        lost,
        _release: release,
    })
}

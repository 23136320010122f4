//! The connection task of one subchannel: connect, serve, notice loss,
//! back off, report every state change.

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::backoff::{Backoff, BackoffConfig};
use super::{Link, SubchannelState};
use crate::{Address, ConnectivityState, Error, ErrorKind};

/// How subchannels connect; one per channel, shared by its subchannels.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectConfig {
    pub(crate) backoff: BackoffConfig,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) keepalive_timeout: Option<Duration>,
    pub(crate) keepalive_while_idle: bool,
    pub(crate) authority: Option<http::uri::Authority>,
    pub(crate) rng_seed: u64,
}

/// A state change of subchannel `id`, for the control task.
#[derive(Debug)]
pub(crate) struct StateEvent {
    pub(crate) id: u64,
    pub(crate) state: SubchannelState,
}

type Sender = http2::SendRequest<tonic::body::Body>;
type Closed = oneshot::Receiver<Option<hyper::Error>>;

impl ConnectConfig {
    /// The `:authority` of calls on `address`: the channel's override, else
    /// the address itself (a `unix:` address uses `localhost`).
    pub(crate) fn authority_for(&self, address: &Address) -> Result<http::uri::Authority, Error> {
        if let Some(a) = &self.authority {
            return Ok(a.clone());
        }
        let addr = address.addr();
        let text = if addr.starts_with("unix:") {
            "localhost"
        } else {
            addr
        };
        text.parse().map_err(|e| {
            Error::with_source(
                ErrorKind::Connect,
                format!("{addr}: not a valid authority"),
                e,
            )
        })
    }
}

pub(crate) async fn run(
    link: Arc<Link>,
    config: Arc<ConnectConfig>,
    events: mpsc::UnboundedSender<StateEvent>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let report = |connectivity, error| {
        let state = SubchannelState {
            connectivity,
            error,
        };
        let _ = events.send(StateEvent { id: link.id, state });
    };
    let seed = config.rng_seed ^ link.id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut backoff = Backoff::new(config.backoff, seed);
    loop {
        // IDLE: wait until the balancer asks for a connection.
        tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = link.connect.notified() => {}
        }
        report(ConnectivityState::Connecting, None);
        let started = Instant::now();
        let attempt = tokio::time::timeout(backoff.connect_timeout(), connect(&link, &config));
        let result = tokio::select! {
            biased;
            _ = &mut shutdown => return,
            r = attempt => r.unwrap_or_else(|_| Err(timed_out(&link, backoff.connect_timeout()))),
        };
        match result {
            Ok((sender, closed)) => {
                backoff.reset();
                link.sender.store(Some(Arc::new(sender)));
                report(ConnectivityState::Ready, None);
                let lost = tokio::select! {
                    biased;
                    _ = &mut shutdown => None,
                    r = closed => Some(r),
                };
                link.sender.store(None);
                let Some(reason) = lost else { return };
                tracing::debug!(address = %link.address, "connection lost");
                report(
                    ConnectivityState::Idle,
                    Some(connection_lost(&link, reason)),
                );
            }
            Err(error) => {
                tracing::debug!(address = %link.address, %error, "connect failed");
                report(ConnectivityState::TransientFailure, Some(error));
                let wake = started + backoff.next_delay();
                tokio::select! {
                    biased;
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep_until(wake) => {}
                }
                report(ConnectivityState::Idle, None);
            }
        }
    }
}

async fn connect(link: &Link, config: &ConnectConfig) -> Result<(Sender, Closed), Error> {
    let addr = link.address.addr();
    let fail = |e: std::io::Error| Error::with_source(ErrorKind::Connect, addr.to_owned(), e);
    #[cfg(unix)]
    if let Some(path) = addr.strip_prefix("unix:") {
        let io = tokio::net::UnixStream::connect(path).await.map_err(fail)?;
        return handshake(io, link, config).await;
    }
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(fail)?;
    tcp.set_nodelay(true).map_err(fail)?;
    handshake(tcp, link, config).await
}

async fn handshake<IO>(
    io: IO,
    link: &Link,
    config: &ConnectConfig,
) -> Result<(Sender, Closed), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(interval) = config.keepalive_interval {
        builder
            .keep_alive_interval(interval)
            .keep_alive_while_idle(config.keepalive_while_idle);
        if let Some(timeout) = config.keepalive_timeout {
            builder.keep_alive_timeout(timeout);
        }
    }
    let (mut sender, connection) = builder.handshake(TokioIo::new(io)).await.map_err(|e| {
        Error::with_source(
            ErrorKind::Connect,
            format!("{}: HTTP/2 handshake", link.address),
            e,
        )
    })?;
    let (tx, closed) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(connection.await.err());
    });
    sender.ready().await.map_err(|e| {
        Error::with_source(
            ErrorKind::Connect,
            format!("{}: HTTP/2 handshake", link.address),
            e,
        )
    })?;
    Ok((sender, closed))
}

fn timed_out(link: &Link, after: Duration) -> Error {
    Error::new(
        ErrorKind::Connect,
        format!("{}: connect timed out after {after:?}", link.address),
    )
}

fn connection_lost(
    link: &Link,
    reason: Result<Option<hyper::Error>, oneshot::error::RecvError>,
) -> Error {
    let message = format!("{}: connection closed", link.address);
    match reason {
        Ok(Some(e)) => Error::with_source(ErrorKind::Connect, message, e),
        _ => Error::new(ErrorKind::Connect, message),
    }
}

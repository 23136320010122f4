//! The connection task of one subchannel: connect, serve, notice loss,
//! back off, report every state change. A connection counts as made (READY)
//! once the server's HTTP/2 preface has arrived, as in grpc-go.

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::backoff::{Backoff, BackoffConfig};
use super::preface::PrefaceWatch;
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
    let (io, spoke) = PrefaceWatch::new(io);
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
    // READY only once the server has sent its preface (see `preface`).
    spoke.await.map_err(|_| {
        Error::new(
            ErrorKind::Connect,
            format!(
                "{}: connection closed before the server's HTTP/2 preface",
                link.address
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Subchannel;
    use tokio::time::Instant;

    /// Plays the balancer for one subchannel: reconnects whenever it goes
    /// IDLE, and records (state, time since start) for `n` events.
    async fn record(
        sc: &Subchannel,
        rx: &mut mpsc::UnboundedReceiver<StateEvent>,
        n: usize,
    ) -> Vec<(ConnectivityState, f64)> {
        let start = Instant::now();
        let mut seen = Vec::new();
        sc.connect();
        while seen.len() < n {
            let event = rx.recv().await.expect("the connection task reports");
            let state = event.state.connectivity;
            sc.set_state(state);
            seen.push((state, (Instant::now() - start).as_secs_f64()));
            if state == ConnectivityState::Idle {
                sc.connect();
            }
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn failed_attempts_back_off_by_grpc_schedule() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let config = Arc::new(ConnectConfig {
            backoff: BackoffConfig {
                jitter: 0.0,
                ..BackoffConfig::default()
            },
            ..ConnectConfig::default()
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sc = Subchannel::spawn(1, Address::from(addr), config, tx).unwrap();
        let seen = record(&sc, &mut rx, 9).await;
        use ConnectivityState::*;
        let states: Vec<_> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            states,
            [
                Connecting,
                TransientFailure,
                Idle,
                Connecting,
                TransientFailure,
                Idle,
                Connecting,
                TransientFailure,
                Idle
            ]
        );
        // IDLE again 1 s after the first attempt started, then 1.6 s after
        // the second, then 2.56 s after the third.
        let idle_at: Vec<f64> = seen
            .iter()
            .filter(|(s, _)| *s == Idle)
            .map(|(_, t)| *t)
            .collect();
        let want = [1.0, 2.6, 5.16];
        for (got, want) in idle_at.iter().zip(want) {
            assert!((got - want).abs() < 0.05, "{idle_at:?}");
        }
    }

    /// The first connection's state and error for a server at `addr`.
    async fn first_attempt(addr: std::net::SocketAddr) -> (ConnectivityState, String) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sc = Subchannel::spawn(1, Address::from(addr), Arc::default(), tx).unwrap();
        sc.connect();
        let connecting = rx.recv().await.unwrap().state;
        assert_eq!(connecting.connectivity, ConnectivityState::Connecting);
        let state = rx.recv().await.unwrap().state;
        let error = state.error.map(|e| e.to_string()).unwrap_or_default();
        (state.connectivity, error)
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_accepts_but_never_speaks_is_not_ready() {
        // The kernel accepts into the backlog; nothing ever answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (state, error) = first_attempt(silent.local_addr().unwrap()).await;
        assert_eq!(state, ConnectivityState::TransientFailure);
        assert!(error.contains("timed out"), "{error}");
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_servers_preface_is_a_failed_attempt() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closer = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            drop(socket);
        });
        let (state, error) = tokio::time::timeout(Duration::from_secs(10), first_attempt(addr))
            .await
            .expect("the attempt ends");
        closer.await.unwrap();
        assert_eq!(state, ConnectivityState::TransientFailure);
        assert!(
            error.contains("before the server's HTTP/2 preface"),
            "{error}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_the_task_while_it_backs_off() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sc = Subchannel::spawn(1, Address::from(addr), Arc::default(), tx).unwrap();
        record(&sc, &mut rx, 2).await;
        drop(sc);
        assert!(
            rx.recv().await.is_none(),
            "the task ended and dropped its sender"
        );
    }
}

//! The connection task of one subchannel: connect, serve, notice loss,
//! back off, report every state change. A connection counts as made (READY)
//! once the server's HTTP/2 preface has arrived, as in grpc-go, and as a
//! success that resets the backoff once it has stayed READY for the initial
//! backoff delay (see the [module docs](super)).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{SubchannelShared, SubchannelState};
use crate::backoff::{Backoff, BackoffConfig};
use crate::metrics::SubchannelMetrics;
use crate::transport;
use crate::{ConnectivityState, Error, ErrorKind};

/// How subchannels connect; one per channel, shared by its subchannels.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectConfig {
    pub(crate) backoff: BackoffConfig,
    pub(crate) transport: transport::Settings,
    pub(crate) rng_seed: u64,
    /// HTTP/2 connections per subchannel (see `pool`); 0 or 1: one.
    pub(crate) connections_per_address: usize,
    /// The health service READY connections watch (see `health`).
    pub(crate) health: super::HealthService,
    /// gRFC A94's instruments (feature `otel`; empty otherwise).
    pub(crate) metrics: SubchannelMetrics,
}

/// A state change of subchannel `id`, for the control task.
#[derive(Debug)]
pub(crate) struct StateEvent {
    pub(crate) id: u64,
    pub(crate) state: SubchannelState,
}

/// The connection task of a subchannel: its connectivity state machine
/// around one attempt at a time (one connection, or a pool's `n`, see
/// `pool`), until the subchannel shuts down.
pub(crate) async fn run(
    link: Arc<SubchannelShared>,
    config: Arc<ConnectConfig>,
    events: mpsc::UnboundedSender<StateEvent>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let report = |connectivity, error| {
        let state = SubchannelState {
            error,
            ..SubchannelState::new(connectivity)
        };
        let _ = events.send(StateEvent { id: link.id, state });
    };
    let seed = config.rng_seed ^ link.id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut backoff = Backoff::new(config.backoff, seed);
    // When the next attempt may start, after a connection lost too soon.
    let mut not_before: Option<Instant> = None;
    loop {
        // IDLE: wait until the balancer asks for a connection (and, after
        // a connection that did not count as a success, for the backoff).
        tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = link.connect.notified() => {}
        }
        if let Some(at) = not_before.take() {
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        report(ConnectivityState::Connecting, None);
        let started = Instant::now();
        link.progress.start();
        let attempt = attempt(&link, &config, &events, backoff.connect_timeout(), seed);
        let ended = tokio::select! {
            biased;
            _ = &mut shutdown => return,
            ended = attempt => ended,
        };
        link.progress.end();
        match ended {
            Ok(Lost { ready_at, error }) => {
                if Instant::now() - ready_at >= backoff.min_success() {
                    backoff.reset();
                    tracing::debug!(address = %link.address, "connection lost");
                } else {
                    let at = started + backoff.next_delay();
                    tracing::debug!(address = %link.address, after = ?(Instant::now() - ready_at), "connection lost too soon to count; backing off");
                    not_before = Some(at);
                }
                report(ConnectivityState::Idle, Some(error));
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

/// How an attempt that was READY ended.
pub(super) struct Lost {
    /// When it became READY (the first connection of a pool).
    pub(super) ready_at: Instant,
    /// Why it is no longer.
    pub(super) error: Error,
}

/// One attempt: connects and serves until the connection (every
/// connection of a pool) is lost, or fails to connect (`Err`).
async fn attempt(
    link: &Arc<SubchannelShared>,
    config: &Arc<ConnectConfig>,
    events: &mpsc::UnboundedSender<StateEvent>,
    timeout: Duration,
    seed: u64,
) -> Result<Lost, Error> {
    match config.connections_per_address {
        0 | 1 => one(link, config, events, timeout).await,
        n => super::pool::connect(link, config, events, seed, n).await,
    }
}

/// One connection, made within `timeout`, served until it is lost.
async fn one(
    link: &SubchannelShared,
    config: &ConnectConfig,
    events: &mpsc::UnboundedSender<StateEvent>,
    timeout: Duration,
) -> Result<Lost, Error> {
    let attempt = transport::establish(
        &link.address,
        &link.origin,
        &config.transport,
        &link.progress,
    );
    let mut established = within(link, config, timeout, attempt).await?;
    link.progress.end();
    let open = config.metrics.connected();
    link.connection
        .store(Some(Arc::new(established.connection.clone())));
    let unpublish = Unpublish(link);
    let ready_at = Instant::now();
    // READY, as health checking shows it (READY at once when it is off),
    // for as long as the connection is; ORCA's out-of-band stream too
    // while a listener wants it. (Health first: its first poll reports
    // READY, or CONNECTING until the health service answers, before a
    // loss is looked at.)
    let reason = tokio::select! {
        biased;
        never = super::while_ready(link, config, events) => match never {},
        reason = established.lost() => reason,
    };
    drop(unpublish);
    drop(established);
    open.lost(reason.as_ref());
    let error = connection_lost(link, reason);
    Ok(Lost { ready_at, error })
}

/// `attempt` (`transport::establish` to `link`'s address) given up after
/// `timeout`; a failure is counted in the metrics.
pub(super) async fn within<T>(
    link: &SubchannelShared,
    config: &ConnectConfig,
    timeout: Duration,
    attempt: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let attempt = tokio::time::timeout(timeout, attempt).await;
    let established = attempt.unwrap_or_else(|_| Err(timed_out(link, timeout)));
    if established.is_err() {
        config.metrics.attempt_failed();
    }
    established
}

/// Withdraws a subchannel's READY connections from calls when dropped:
/// when they are lost, and when the subchannel shuts down meanwhile.
pub(super) struct Unpublish<'a>(pub(super) &'a SubchannelShared);

impl Drop for Unpublish<'_> {
    fn drop(&mut self) {
        self.0.connection.store(None);
        self.0.pool.store(None);
    }
}

fn timed_out(link: &SubchannelShared, after: Duration) -> Error {
    Error::new(
        ErrorKind::Connect,
        format!("{}: connect timed out after {after:?}", link.address),
    )
}

pub(super) fn connection_lost(link: &SubchannelShared, reason: Option<transport::Lost>) -> Error {
    let message = match reason {
        Some(lost) => format!("{}: connection {lost}", link.address),
        None => format!("{}: connection closed", link.address),
    };
    Error::new(ErrorKind::Connect, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Address, Subchannel};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// A loopback address nothing listens on.
    fn closed_port() -> std::net::SocketAddr {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        closed.local_addr().unwrap()
    }

    /// The default connect settings with a backoff without jitter.
    fn without_jitter() -> Arc<ConnectConfig> {
        Arc::new(ConnectConfig {
            backoff: BackoffConfig {
                jitter: 0.0,
                ..BackoffConfig::default()
            },
            ..ConnectConfig::default()
        })
    }

    /// A subchannel to `addr` with its connection task, and its events.
    fn spawn(
        addr: std::net::SocketAddr,
        config: Arc<ConnectConfig>,
    ) -> (Subchannel, mpsc::UnboundedReceiver<StateEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sc = Subchannel::spawn(1, Address::from(addr), config, tx).unwrap();
        (sc, rx)
    }

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
        let addr = closed_port();
        let (sc, mut rx) = spawn(addr, without_jitter());
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
        let (sc, mut rx) = spawn(addr, Arc::default());
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
    async fn a_backoff_of_duration_max_waits_instead_of_panicking() {
        let config = ConnectConfig {
            backoff: BackoffConfig {
                initial: Duration::MAX,
                max: Duration::MAX,
                ..BackoffConfig::default()
            },
            ..ConnectConfig::default()
        };
        let (sc, mut rx) = spawn(closed_port(), Arc::new(config));
        sc.connect();
        let connecting = rx.recv().await.expect("CONNECTING").state;
        assert_eq!(connecting.connectivity, ConnectivityState::Connecting);
        let failed = rx.recv().await.expect("TRANSIENT_FAILURE").state;
        assert_eq!(failed.connectivity, ConnectivityState::TransientFailure);
        // The connection task lives on, backing off (a task that panicked
        // would drop its sender: `recv` would return `None` at once).
        let next = tokio::time::timeout(Duration::from_secs(24 * 3600), rx.recv()).await;
        assert!(next.is_err(), "{next:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_while_connecting_is_a_failed_attempt_that_backs_off() {
        // `h2` asserts on a frame size outside RFC 9113's range (`build`
        // refuses one; this config skips `build`).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = (*without_jitter()).clone();
        config.transport.http2.max_frame_size = 1;
        let (sc, mut rx) = spawn(listener.local_addr().unwrap(), Arc::new(config));
        sc.connect();
        let start = Instant::now();
        let connecting = rx.recv().await.expect("CONNECTING").state;
        assert_eq!(connecting.connectivity, ConnectivityState::Connecting);
        let failed = rx.recv().await.expect("TRANSIENT_FAILURE").state;
        assert_eq!(failed.connectivity, ConnectivityState::TransientFailure);
        let error = failed.error.map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("connection attempt panicked"), "{error}");
        assert!(error.contains("MAX_FRAME_SIZE"), "{error}");
        let idle = rx.recv().await.expect("IDLE after the backoff").state;
        assert_eq!(idle.connectivity, ConnectivityState::Idle);
        let waited = (Instant::now() - start).as_secs_f64();
        assert!((waited - 1.0).abs() < 0.05, "{waited}");
    }

    #[tokio::test(start_paused = true)]
    async fn connect_requests_before_the_next_delivered_state_queue_one_attempt() {
        let addr = closed_port();
        let (sc, mut rx) = spawn(addr, Arc::default());
        // Nobody delivers the events (the control task is busy): the
        // balancer's view stays IDLE and it keeps asking for 60 s.
        for _ in 0..60 {
            sc.connect();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut queued = Vec::new();
        while let Ok(event) = rx.try_recv() {
            queued.push(event.state.connectivity);
        }
        use ConnectivityState::*;
        assert_eq!(queued, [Connecting, TransientFailure, Idle], "one attempt");
        assert_eq!(sc.connect_requests(), 1);
        // Delivering the IDLE lets the balancer ask again.
        sc.set_state(Idle);
        sc.connect();
        let next = rx.recv().await.unwrap().state.connectivity;
        assert_eq!(next, Connecting);
    }

    /// Holds tokio's paused clock still while real sockets work: a running
    /// blocking task stops the clock from jumping ahead on its own, so the
    /// test moves it with [`step`] and real I/O is never raced by a timer.
    struct ClockHold(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

    fn hold_clock() -> ClockHold {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let _ = rx.recv_timeout(Duration::from_secs(60));
        });
        ClockHold(tx)
    }

    /// Moves the held clock by `by`, then gives real I/O a moment.
    async fn step(by: Duration) {
        tokio::time::advance(by).await;
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1)))
            .await
            .unwrap();
    }

    /// A raw HTTP/2 server that, on every connection, reads the client
    /// preface, sends an empty SETTINGS, waits `hold` and sends
    /// GOAWAY(last_stream_id = 0, NO_ERROR), then closes. Counts connections.
    async fn goaway_server(hold: Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut preface = [0u8; 24];
                    if socket.read_exact(&mut preface).await.is_err() {
                        return;
                    }
                    let _ = socket.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await;
                    tokio::time::sleep(hold).await;
                    let goaway = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    let _ = socket.write_all(&goaway).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        (addr, connections)
    }

    /// Plays round_robin for one subchannel to a server that keeps each
    /// connection `hold`: reconnects at once on IDLE. Returns when each
    /// attempt started (seconds), for `secs` seconds or 50 attempts.
    async fn attempts_against(hold: Duration, secs: u64) -> (Vec<f64>, usize) {
        let (addr, connections) = goaway_server(hold).await;
        let (sc, mut rx) = spawn(addr, without_jitter());
        let _hold = hold_clock();
        let start = Instant::now();
        let mut attempts = Vec::new();
        sc.connect();
        while Instant::now() - start < Duration::from_secs(secs) && attempts.len() <= 50 {
            while let Ok(event) = rx.try_recv() {
                let state = event.state.connectivity;
                sc.set_state(state);
                match state {
                    ConnectivityState::Connecting => {
                        attempts.push((Instant::now() - start).as_secs_f64())
                    }
                    ConnectivityState::Idle => sc.connect(),
                    _ => {}
                }
            }
            step(Duration::from_millis(50)).await;
        }
        (attempts, connections.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_drops_every_connection_at_once_is_retried_on_the_backoff_schedule() {
        let (attempts, connections) = attempts_against(Duration::ZERO, 60).await;
        // Each connection is READY (the server's SETTINGS came) and lost at
        // once: the attempts follow gRPC's schedule (1 s, x1.6) as failed
        // ones would, 8 in a minute, instead of reconnecting in a loop.
        let want = [0.0, 1.0, 2.6, 5.16, 9.256, 15.81, 26.3, 43.07];
        assert_eq!(attempts.len(), want.len(), "{attempts:?}");
        for (got, want) in attempts.iter().zip(want) {
            assert!(*got >= want - 0.01 && *got <= want + 0.2, "{attempts:?}");
        }
        assert_eq!(connections, attempts.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_stayed_ready_past_the_initial_delay_reconnects_at_once() {
        // The server keeps each connection 2 s (more than the 1 s initial
        // delay): every loss is after a success, so the backoff is reset
        // and the next attempt starts at once, about every 2 s.
        let (attempts, _) = attempts_against(Duration::from_secs(2), 21).await;
        assert!(attempts.len() >= 10, "{attempts:?}");
        for pair in attempts.windows(2) {
            let gap = pair[1] - pair[0];
            assert!((2.0..2.3).contains(&gap), "{attempts:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_the_task_while_it_backs_off() {
        let addr = closed_port();
        let (sc, mut rx) = spawn(addr, Arc::default());
        record(&sc, &mut rx, 2).await;
        drop(sc);
        assert!(
            rx.recv().await.is_none(),
            "the task ended and dropped its sender"
        );
    }

    /// A raw HTTP/2 server on 127.0.0.1 that completes one handshake and
    /// then hands the connection to `serve`.
    async fn h2_server<F, Fut>(serve: F) -> std::net::SocketAddr
    where
        F: FnOnce(h2::server::Connection<tokio::net::TcpStream, bytes::Bytes>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let connection = h2::server::handshake(socket).await.unwrap();
            serve(connection).await;
        });
        addr
    }

    fn keepalive(interval_ms: u64, timeout_ms: u64) -> Arc<ConnectConfig> {
        Arc::new(ConnectConfig {
            transport: transport::Settings {
                keepalive_interval: Some(Duration::from_millis(interval_ms)),
                keepalive_timeout: Some(Duration::from_millis(timeout_ms)),
                keepalive_while_idle: true,
                ..transport::Settings::default()
            },
            ..ConnectConfig::default()
        })
    }

    /// Connects a subchannel to `addr` and waits until it is READY.
    async fn ready(
        addr: std::net::SocketAddr,
        config: Arc<ConnectConfig>,
    ) -> (Subchannel, mpsc::UnboundedReceiver<StateEvent>) {
        let (sc, mut rx) = spawn(addr, config);
        sc.connect();
        for want in [ConnectivityState::Connecting, ConnectivityState::Ready] {
            let event = rx.recv().await.unwrap();
            assert_eq!(event.state.connectivity, want, "{:?}", event.state.error);
        }
        (sc, rx)
    }

    #[tokio::test]
    async fn a_server_that_stops_answering_pings_is_dropped_by_keepalive() {
        tokio::time::timeout(Duration::from_secs(20), async {
            // The server handshakes, then never reads again: no PING ACK.
            let addr = h2_server(|connection| async move {
                let _hold = connection;
                std::future::pending::<()>().await;
            })
            .await;
            let (_sc, mut rx) = ready(addr, keepalive(100, 200)).await;
            let event = rx.recv().await.unwrap();
            assert_eq!(event.state.connectivity, ConnectivityState::Idle);
            let error = event.state.error.unwrap().to_string();
            assert!(error.contains("keepalive"), "{error}");
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn answered_pings_keep_the_connection() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let addr = h2_server(|mut connection| async move {
                // Serving the connection answers PINGs.
                while let Some(Ok(_)) = connection.accept().await {}
            })
            .await;
            // A PING every 20 ms, each answered well within 5 s.
            let (sc, mut rx) = ready(addr, keepalive(20, 5_000)).await;
            let quiet = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
            assert!(quiet.is_err(), "no state change: {quiet:?}");
            assert!(sc.connection().is_some());
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn goaway_stops_new_calls_at_once_and_lets_open_ones_finish() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let (go_away, go_away_sent) = oneshot::channel::<()>();
            let (respond, respond_now) = oneshot::channel::<()>();
            let addr = h2_server(|mut connection| async move {
                let (_request, mut reply) = connection.accept().await.unwrap().unwrap();
                connection.graceful_shutdown();
                let serve =
                    tokio::spawn(
                        async move { while let Some(Ok(_)) = connection.accept().await {} },
                    );
                let _ = go_away.send(());
                let _ = respond_now.await;
                let response = http::Response::new(());
                reply.send_response(response, true).unwrap();
                let _ = serve.await;
            })
            .await;
            let (sc, mut rx) = ready(addr, Arc::default()).await;
            let connection = sc.connection().unwrap();
            let address = sc.address().clone();
            let call = tokio::spawn(async move {
                let request = http::Request::post("http://test/echo.Echo/Unary")
                    .body(tonic::body::Body::empty())
                    .unwrap();
                let user_agent = http::HeaderValue::from_static("test");
                let mut outgoing = transport::Outgoing::new(request, &user_agent);
                let opened = connection.send(&mut outgoing, &address).await;
                opened
                    .map(|o| o.status())
                    .map_err(|_| "the open call failed")
            });
            go_away_sent.await.unwrap();
            // The server refuses new streams: the subchannel leaves READY
            // and withdraws its connection while the open call goes on.
            let event = rx.recv().await.unwrap();
            assert_eq!(event.state.connectivity, ConnectivityState::Idle);
            let error = event.state.error.unwrap().to_string();
            assert!(error.contains("refuses new calls"), "{error}");
            assert!(sc.connection().is_none());
            respond.send(()).unwrap();
            let response = call.await.unwrap().unwrap();
            assert_eq!(response, http::StatusCode::OK);
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn keepalive_still_protects_the_calls_open_on_a_draining_connection() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let (go_away, go_away_sent) = oneshot::channel::<()>();
            let addr = h2_server(|mut connection| async move {
                let (_request, _reply) = connection.accept().await.unwrap().unwrap();
                // GOAWAY, then silence: the open call's server is gone
                // without closing the socket, and no PING is answered.
                connection.graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_millis(50), connection.accept()).await;
                let _ = go_away.send(());
                let _hold = connection;
                std::future::pending::<()>().await;
            })
            .await;
            let (sc, mut rx) = ready(addr, keepalive(100, 200)).await;
            let connection = sc.connection().unwrap();
            let address = sc.address().clone();
            let call = tokio::spawn(async move {
                let request = http::Request::post("http://test/echo.Echo/Unary")
                    .body(tonic::body::Body::empty())
                    .unwrap();
                let user_agent = http::HeaderValue::from_static("test");
                let mut outgoing = transport::Outgoing::new(request, &user_agent);
                connection.send(&mut outgoing, &address).await.map(|_| ())
            });
            go_away_sent.await.unwrap();
            let event = rx.recv().await.unwrap();
            assert_eq!(event.state.connectivity, ConnectivityState::Idle);
            // The call open on the draining connection ends when keepalive
            // finds the server dead, not never.
            let ended = call.await.unwrap();
            assert!(ended.is_err(), "the call failed");
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn too_many_pings_doubles_the_keepalive_interval_of_the_channel() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tokio::time::timeout(Duration::from_secs(20), async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut preface = [0u8; 24];
                socket.read_exact(&mut preface).await.unwrap();
                socket
                    .write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0])
                    .await
                    .unwrap();
                // GOAWAY(last_stream_id 0, ENHANCE_YOUR_CALM, "too_many_pings"),
                // as gRPC servers send it.
                let debug = b"too_many_pings";
                let mut goaway = vec![0, 0, (8 + debug.len()) as u8, 0x7, 0, 0, 0, 0, 0];
                goaway.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0xb]);
                goaway.extend_from_slice(debug);
                socket.write_all(&goaway).await.unwrap();
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
            let config = keepalive(100, 200);
            let (_sc, mut rx) = ready(addr, config.clone()).await;
            let event = rx.recv().await.unwrap();
            assert_eq!(event.state.connectivity, ConnectivityState::Idle);
            let error = event.state.error.unwrap().to_string();
            assert!(error.contains("too_many_pings"), "{error}");
            assert_eq!(config.transport.too_many_pings.load(Ordering::SeqCst), 1);
            assert_eq!(
                config.transport.keepalive_interval_now(),
                Some(Duration::from_millis(200))
            );
        })
        .await
        .expect("bounded");
    }
}

//! Shared fixtures for integration tests: real tonic `Simple` backends on
//! 127.0.0.1, each on its own runtime thread so a test can kill one outright
//! (every socket closes at once, as when a process dies).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use h2frames::FrameStats;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

pub mod counting;
pub mod dns;
pub mod echo;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod every_address;
pub mod grpcio;
pub mod h2frames;
pub mod h2server;
pub mod late_frames;
#[cfg(feature = "tls")]
pub mod tls;

pub mod proto {
    tonic::include_proto!("proto");
}

use proto::simple_client::SimpleClient;
use proto::simple_server::{Simple, SimpleServer};
use proto::{SimpleRequest, SimpleResponse};

/// Counters a backend keeps.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicUsize,
    pub open_connections: AtomicUsize,
    pub accepted_connections: AtomicUsize,
    /// Handlers running now (a cancelled call's handler is dropped).
    pub in_flight: AtomicUsize,
    /// HTTP/2 frames seen on every connection.
    pub frames: FrameStats,
}

/// Counts a handler in flight until dropped (also when the call is
/// cancelled and the server drops the handler's future).
struct InFlight(Arc<Stats>);

impl InFlight {
    fn enter(stats: &Arc<Stats>) -> InFlight {
        stats.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `Simple` service of the test backends. `Route`'s `data` steers it:
/// `"fail:<code>"` fails with that code, `"sleep:<ms>"` sleeps first,
/// `"grpc-timeout"` answers the `grpc-timeout` header it received (empty
/// when none) in `value`; anything else answers `hello <data> from <addr>`.
#[derive(Clone)]
pub struct Service {
    addr: SocketAddr,
    stats: Arc<Stats>,
    delay: Duration,
    /// Answers 9 calls in 10 UNAVAILABLE (all but every tenth).
    failing: bool,
}

#[tonic::async_trait]
impl Simple for Service {
    async fn route(&self, req: Request<SimpleRequest>) -> Result<Response<SimpleResponse>, Status> {
        let n = self.stats.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing && !n.is_multiple_of(10) {
            return Err(Status::unavailable(format!(
                "{}: failing on purpose",
                self.addr
            )));
        }
        let _in_flight = InFlight::enter(&self.stats);
        if req.get_ref().data == "grpc-timeout" {
            // The call's deadline as the server received it ("" if none).
            let value = req
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            return Ok(Response::new(SimpleResponse { code: 200, value }));
        }
        let data = req.into_inner().data;
        if let Some(code) = data
            .strip_prefix("fail:")
            .and_then(|c| c.parse::<i32>().ok())
        {
            // A trailers-only answer carrying `x-failed-by`.
            let mut metadata = tonic::metadata::MetadataMap::new();
            let by = self.addr.to_string().parse().expect("an ASCII address");
            metadata.insert("x-failed-by", by);
            let message = format!("failed on request by {}", self.addr);
            return Err(Status::with_metadata(code.into(), message, metadata));
        }
        if let Some(ms) = data.strip_prefix("sleep:").and_then(|m| m.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(Response::new(SimpleResponse {
            code: 200,
            value: format!("hello {data} from {}", self.addr),
        }))
    }
}

/// A `Simple` service answering as a backend on `addr` would.
pub fn simple_server(addr: SocketAddr) -> SimpleServer<Service> {
    SimpleServer::new(Service {
        addr,
        stats: Arc::default(),
        delay: Duration::ZERO,
        failing: false,
    })
}

/// Serves `Simple` on every connection `incoming` yields (unix sockets,
/// in-memory pipes), on the current runtime; returns its counters.
pub fn serve_incoming<S, IO>(incoming: S) -> Arc<Stats>
where
    S: futures_core::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let stats = Arc::new(Stats::default());
    let service = Service {
        addr: "0.0.0.0:0".parse().unwrap(),
        stats: stats.clone(),
        delay: Duration::ZERO,
        failing: false,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(SimpleServer::new(service))
            .serve_with_incoming(incoming),
    );
    stats
}

/// An in-memory pipe as a server connection (tonic asks who connected).
pub struct Piped(pub tokio::io::DuplexStream);

impl tonic::transport::server::Connected for Piped {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for Piped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Piped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// No health service (a type for `start_full`'s `None`).
const NO_HEALTH: Option<
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
> = None;

/// A running backend. Dropping it kills it.
pub struct Backend {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Starts a backend on a free port of 127.0.0.1.
    pub fn start() -> Backend {
        Backend::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Starts a backend on `addr` (port 0 picks a free one).
    pub fn start_on(addr: SocketAddr) -> Backend {
        Backend::start_with(addr, Duration::ZERO)
    }

    /// Starts a backend that answers each call after `delay`.
    pub fn start_with(addr: SocketAddr, delay: Duration) -> Backend {
        Backend::start_configured(addr, delay, None)
    }

    /// Starts a backend that closes each connection (GOAWAY) after `age`.
    pub fn start_with_max_age(age: Duration) -> Backend {
        Backend::start_configured("127.0.0.1:0".parse().unwrap(), Duration::ZERO, Some(age))
    }

    /// Starts a backend that allows `limit` concurrent streams per
    /// connection (SETTINGS_MAX_CONCURRENT_STREAMS) and answers each call
    /// after `delay`.
    pub fn start_with_stream_limit(limit: u32, delay: Duration) -> Backend {
        let addr = "127.0.0.1:0".parse().unwrap();
        Backend::start_full(addr, delay, None, Some(limit), NO_HEALTH)
    }

    /// Starts a backend that also serves `grpc.health.v1.Health` from
    /// `tonic-health`, with `service` SERVING; the reporter changes it.
    pub fn start_with_health(service: &str) -> (Backend, tonic_health::server::HealthReporter) {
        let (reporter, health) = tonic_health::server::health_reporter();
        let status = tonic_health::ServingStatus::Serving;
        futures_util::FutureExt::now_or_never(reporter.set_service_status(service, status))
            .expect("setting a status does not wait");
        let addr = "127.0.0.1:0".parse().unwrap();
        let backend = Backend::start_full(addr, Duration::ZERO, None, None, Some(health));
        (backend, reporter)
    }

    /// Starts a backend that serves `health` as its `grpc.health.v1.Health`.
    pub fn start_with_health_service<H: tonic_health::pb::health_server::Health>(
        health: H,
    ) -> Backend {
        let health = tonic_health::pb::health_server::HealthServer::new(health);
        Backend::start_full(
            "127.0.0.1:0".parse().unwrap(),
            Duration::ZERO,
            None,
            None,
            Some(health),
        )
    }

    fn start_configured(addr: SocketAddr, delay: Duration, max_age: Option<Duration>) -> Backend {
        Backend::start_full(addr, delay, max_age, None, NO_HEALTH)
    }

    fn start_full<H: tonic_health::pb::health_server::Health>(
        addr: SocketAddr,
        delay: Duration,
        max_age: Option<Duration>,
        stream_limit: Option<u32>,
        health: Option<tonic_health::pb::health_server::HealthServer<H>>,
    ) -> Backend {
        Backend::start_full_failing(addr, delay, max_age, stream_limit, health, false)
    }

    /// Starts a backend that answers 9 calls in 10 UNAVAILABLE (every
    /// tenth succeeds); `calls()` counts them all.
    pub fn start_failing_nine_in_ten() -> Backend {
        let addr = "127.0.0.1:0".parse().unwrap();
        Backend::start_full_failing(addr, Duration::ZERO, None, None, NO_HEALTH, true)
    }

    fn start_full_failing<H: tonic_health::pb::health_server::Health>(
        addr: SocketAddr,
        delay: Duration,
        max_age: Option<Duration>,
        stream_limit: Option<u32>,
        health: Option<tonic_health::pb::health_server::HealthServer<H>>,
        failing: bool,
    ) -> Backend {
        let std_listener = std::net::TcpListener::bind(addr).expect("bind backend");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let service = Service {
            addr,
            stats: stats.clone(),
            delay,
            failing,
        };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let stats = service.stats.clone();
                let incoming = async_stream(listener, stats);
                let mut builder = tonic::transport::Server::builder();
                if let Some(age) = max_age {
                    builder = builder.max_connection_age(age);
                }
                if let Some(limit) = stream_limit {
                    builder = builder.max_concurrent_streams(limit);
                }
                builder
                    .add_service(SimpleServer::new(service))
                    .add_optional_service(health)
                    .serve_with_incoming(incoming)
                    .await
                    .ok();
            });
            // Block until asked to stop, then drop every task and socket.
            let _ = stop_rx.recv();
            rt.shutdown_background();
        });
        Backend {
            addr,
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn calls(&self) -> usize {
        self.stats.calls.load(Ordering::SeqCst)
    }

    pub fn open_connections(&self) -> usize {
        self.stats.open_connections.load(Ordering::SeqCst)
    }

    pub fn accepted_connections(&self) -> usize {
        self.stats.accepted_connections.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.stats.in_flight.load(Ordering::SeqCst)
    }

    /// Kills the backend: its listener and every connection close at once.
    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn async_stream(
    listener: TcpListener,
    stats: Arc<Stats>,
) -> impl futures_core::Stream<Item = std::io::Result<CountedIo>> {
    futures_util::stream::unfold((listener, stats), |(listener, stats)| async move {
        let result = listener.accept().await.map(|(io, _)| {
            stats.accepted_connections.fetch_add(1, Ordering::SeqCst);
            stats.open_connections.fetch_add(1, Ordering::SeqCst);
            CountedIo::new(io, stats.clone())
        });
        Some((result, (listener, stats)))
    })
}

/// A server-side connection that counts itself open until dropped, and
/// counts the HTTP/2 frames that go through it.
pub type CountedIo = h2frames::CountedIo<Stats>;

impl h2frames::ConnectionCounters for Stats {
    fn frames(&self) -> &FrameStats {
        &self.frames
    }

    fn closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reconnect backoff for tests: 50 ms, at most 200 ms, 2 s connect timeout.
pub fn fast_backoff() -> tonic_balance::subchannel::BackoffConfig {
    tonic_balance::subchannel::BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        min_connect_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// A loopback port that is free now (nothing listens on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback port held bound but not listening: connecting to it is
/// refused for as long as this lives, and no other test (or process) can
/// start a server on it meanwhile, as one can on a port [`free_port`]
/// returned.
pub struct ClosedPort {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind a loopback port");
        let addr = socket.local_addr().expect("bound address");
        ClosedPort {
            addr,
            _socket: socket,
        }
    }
}

/// `static:///a,b,c` for these backends.
pub fn static_target(backends: &[&Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    format!("static:///{}", list.join(","))
}

/// One `Route` call; returns the address that served it.
pub async fn route<T>(client: &mut SimpleClient<T>, data: &str) -> Result<String, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let response = client
        .route(SimpleRequest {
            data: data.to_owned(),
        })
        .await?;
    let peer = response
        .extensions()
        .get::<tonic_balance::Peer>()
        .map(|p| p.address().to_string());
    let value = response.into_inner().value;
    Ok(peer.unwrap_or_else(|| value.rsplit(' ').next().unwrap_or_default().to_owned()))
}

/// How many of `n` calls (`"call {i}"`) each peer served; every call
/// must succeed.
pub async fn tally(
    client: &mut SimpleClient<tonic_balance::BalancedChannel>,
    n: usize,
) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for i in 0..n {
        let peer = route(client, &format!("call {i}"))
            .await
            .expect("call succeeds");
        *counts.entry(peer).or_default() += 1;
    }
    counts
}

/// Polls `check` every 10 ms until it is true or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

/// Installs a tracing subscriber once, honouring RUST_LOG.
pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

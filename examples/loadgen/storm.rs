//! The cancellation storm: `callers` tasks send `calls` unary calls over one
//! channel to one backend that answers each after 1 ms; each caller drops
//! its call after a random 0 to `longest_wait` unless it ended first.
//! Run against this crate's channel and tonic's `Channel`, each on a fresh
//! backend.
//!
//! The backend runs in this process, on a runtime thread of its own, and
//! counts on its side of the socket what the client did to it: the
//! connections it accepted, the RST_STREAMs it read, the streams reset
//! before it could accept them (per burst of reads), its own GOAWAYs and
//! the handlers it started.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::net::TcpListener;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};
use tonic_balance::BalancedChannel;

use crate::h2frames::{ConnectionCounters, CountedIo, FrameStats};
use crate::proto::simple_client::SimpleClient;
use crate::proto::simple_server::{Simple, SimpleServer};
use crate::proto::{SimpleRequest, SimpleResponse};
use crate::BoxError;

/// The storm's shape.
#[derive(Debug, Clone, Copy)]
pub struct Storm {
    pub calls: usize,
    pub callers: usize,
    pub longest_wait: Duration,
    pub handler_delay: Duration,
}

/// The clients a storm runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StormClient {
    Ours,
    TonicChannel,
}

impl StormClient {
    pub const ALL: [StormClient; 2] = [StormClient::Ours, StormClient::TonicChannel];

    pub fn name(self) -> &'static str {
        match self {
            StormClient::Ours => "ours",
            StormClient::TonicChannel => "tonic-channel",
        }
    }
}

/// What one storm did, seen from both ends.
#[derive(Debug)]
pub struct Outcome {
    client: StormClient,
    round: usize,
    elapsed: Duration,
    ok: usize,
    cancelled: usize,
    /// Calls not cancelled that failed, by message.
    failed: Vec<String>,
    /// Latency of the calls that ended, µs, sorted.
    ok_latencies_us: Vec<u32>,
    connections: usize,
    handlers: usize,
    resets: usize,
    max_reset_unaccepted: usize,
    goaways: Vec<String>,
}

/// Runs `storm` once against `client` on a fresh backend.
pub async fn run(storm: Storm, client: StormClient, round: usize) -> Result<Outcome, BoxError> {
    let backend = StormBackend::start(storm.handler_delay)?;
    let addr = backend.addr;
    let outcome = match client {
        StormClient::Ours => {
            let channel = BalancedChannel::builder(format!("static:///{addr}"))
                .connect(Duration::from_secs(5))
                .await?;
            drive(storm, SimpleClient::new(channel)).await
        }
        StormClient::TonicChannel => {
            let channel = Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?;
            drive(storm, SimpleClient::new(channel)).await
        }
    };
    let stats = &backend.stats;
    Ok(Outcome {
        client,
        round,
        connections: stats.accepted.load(Ordering::SeqCst),
        handlers: stats.handlers.load(Ordering::SeqCst),
        resets: stats.frames.resets_received(),
        max_reset_unaccepted: stats.frames.max_reset_unaccepted_per_burst(),
        goaways: stats.frames.goaway_debug(),
        ..outcome
    })
}

/// The client side of one storm.
async fn drive<T>(storm: Storm, client: SimpleClient<T>) -> Outcome
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let callers: Vec<_> = (0..storm.callers)
        .map(|caller| {
            let mut client = client.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(caller as u64);
                let mut tally = (0, 0, Vec::new(), Vec::new());
                while next.fetch_add(1, Ordering::Relaxed) < storm.calls {
                    let wait = rng.random_range(Duration::ZERO..=storm.longest_wait);
                    let began = Instant::now();
                    let call = client.route(SimpleRequest {
                        data: "storm".into(),
                    });
                    match tokio::time::timeout(wait, call).await {
                        Err(_) => tally.1 += 1,
                        Ok(Ok(_)) => {
                            tally.0 += 1;
                            let us = began.elapsed().as_micros();
                            tally.3.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                        Ok(Err(status)) => {
                            tally
                                .2
                                .push(format!("{:?}: {}", status.code(), status.message()))
                        }
                    }
                }
                tally
            })
        })
        .collect();
    let mut outcome = Outcome {
        client: StormClient::Ours,
        round: 0,
        elapsed: Duration::ZERO,
        ok: 0,
        cancelled: 0,
        failed: Vec::new(),
        ok_latencies_us: Vec::new(),
        connections: 0,
        handlers: 0,
        resets: 0,
        max_reset_unaccepted: 0,
        goaways: Vec::new(),
    };
    for caller in callers {
        if let Ok((ok, cancelled, failed, latencies)) = caller.await {
            outcome.ok += ok;
            outcome.cancelled += cancelled;
            outcome.failed.extend(failed);
            outcome.ok_latencies_us.extend(latencies);
        }
    }
    outcome.elapsed = started.elapsed();
    outcome.ok_latencies_us.sort_unstable();
    outcome
}

/// Prints a table of `outcomes` and one JSON line each.
pub fn print(storm: Storm, outcomes: &[Outcome]) {
    println!(
        "\n# cancel-storm: {} calls, {} callers, each dropped after a random 0-{:?}, \
         handler {:?}, one connection per client",
        storm.calls, storm.callers, storm.longest_wait, storm.handler_delay
    );
    println!(
        "{:<14} {:>5} {:>6} {:>9} {:>6} {:>5} {:>8} {:>7} {:>8} {:>9} {:>7} {:>7}  GOAWAYs",
        "client",
        "round",
        "ok",
        "cancelled",
        "failed",
        "conns",
        "handlers",
        "RSTs",
        "RSTs/s",
        "unacc/rd",
        "p50 µs",
        "p99 µs"
    );
    for o in outcomes {
        println!(
            "{:<14} {:>5} {:>6} {:>9} {:>6} {:>5} {:>8} {:>7} {:>8.0} {:>9} {:>7} {:>7}  {:?}",
            o.client.name(),
            o.round + 1,
            o.ok,
            o.cancelled,
            o.failed.len(),
            o.connections,
            o.handlers,
            o.resets,
            o.resets as f64 / o.elapsed.as_secs_f64(),
            o.max_reset_unaccepted,
            percentile(&o.ok_latencies_us, 50.0),
            percentile(&o.ok_latencies_us, 99.0),
            o.goaways
        );
    }
    println!();
    for o in outcomes {
        let mut failures = std::collections::BTreeMap::<&str, usize>::new();
        for f in &o.failed {
            *failures.entry(f.as_str()).or_default() += 1;
        }
        println!(
            "{}",
            json!({
                "scenario": "cancel-storm",
                "client": o.client.name(),
                "round": o.round + 1,
                "calls": o.ok + o.cancelled + o.failed.len(),
                "ok": o.ok,
                "cancelled": o.cancelled,
                "failed_not_cancelled": o.failed.len(),
                "failures": failures,
                "connections_accepted": o.connections,
                "handlers_started": o.handlers,
                "rst_streams_received": o.resets,
                "rst_streams_per_s": (o.resets as f64 / o.elapsed.as_secs_f64()).round(),
                "max_reset_before_accept_per_read_burst": o.max_reset_unaccepted,
                "server_goaways": o.goaways,
                "elapsed_ms": o.elapsed.as_millis() as u64,
                "ok_p50_us": percentile(&o.ok_latencies_us, 50.0),
                "ok_p99_us": percentile(&o.ok_latencies_us, 99.0),
            })
        );
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What the backend counts.
#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicUsize,
    handlers: AtomicUsize,
    frames: FrameStats,
}

/// A tonic server with its default settings on 127.0.0.1, on a runtime
/// thread of its own; dropping it stops it.
struct StormBackend {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct Handler {
    delay: Duration,
    stats: Arc<Stats>,
}

#[tonic::async_trait]
impl Simple for Handler {
    async fn route(&self, _: Request<SimpleRequest>) -> Result<Response<SimpleResponse>, Status> {
        self.stats.handlers.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.delay).await;
        Ok(Response::new(SimpleResponse {
            code: 200,
            value: String::new(),
        }))
    }
}

impl StormBackend {
    fn start(delay: Duration) -> Result<StormBackend, BoxError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let handler = Handler {
            delay,
            stats: stats.clone(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                let counters = handler.stats.clone();
                let incoming = futures_util::stream::unfold(listener, move |listener| {
                    let stats = counters.clone();
                    async move {
                        let accepted = listener.accept().await.map(|(io, _)| {
                            let _ = io.set_nodelay(true);
                            stats.accepted.fetch_add(1, Ordering::SeqCst);
                            CountedIo::new(io, stats)
                        });
                        Some((accepted, listener))
                    }
                });
                let serve = tonic::transport::Server::builder()
                    .add_service(SimpleServer::new(handler.clone()))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    });
                let _ = serve.await;
            });
        });
        Ok(StormBackend {
            addr,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for StormBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The storm backend's connections count their HTTP/2 frames.
impl ConnectionCounters for Stats {
    fn frames(&self) -> &FrameStats {
        &self.frames
    }
}

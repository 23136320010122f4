//! Control-plane load: what a channel costs when most of its endpoints
//! fail, and how often it reconnects to a server that drops every
//! connection. Prints peak RSS (getrusage), what the balancer was asked
//! and did, and the calls served.
//!
//! ```text
//! cargo run --release --example many_endpoints -- [--failing N] [--seconds S] [--policy P]
//! cargo run --release --example many_endpoints -- --storm [--seconds S]
//! ```
//!
//! Default mode: `static:///` with N addresses that refuse connections
//! (127.0.x.y:1, every one loopback) and one live in-process backend,
//! round_robin, one call every 10 ms for S seconds.
//!
//! `--storm`: a live backend next to a server that sends its HTTP/2
//! SETTINGS and then GOAWAY(last_stream_id = 0) at once on every
//! connection; prints how many connections that server was opened.
//!
//! The last line is JSON: `{"peak_rss_mib", "pickers_built",
//! "resolver_updates", "resolution_requests", "calls_ok", "calls_failed",
//! "storm_connections"}`. `pickers_built` counts the pickers the policy
//! handed the channel (the channel publishes at most that many).

mod common;
#[path = "../tests/support/counting.rs"]
mod counting;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::proto::simple_client::SimpleClient;
use common::proto::SimpleRequest;
use counting::{Observed, PolicyObserver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_balance::balancer::{BalancerRegistry, ROUND_ROBIN};
use tonic_balance::{BalancedChannel, Picker};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("many_endpoints: {e}");
        std::process::exit(1);
    }
}

/// What the policy was asked and did.
#[derive(Debug, Default)]
struct Counts {
    pickers: AtomicUsize,
    resolver_updates: AtomicUsize,
    resolutions: AtomicUsize,
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = common::Args::from_env();
    if args.flag("--help") {
        println!("usage: many_endpoints [--failing N] [--seconds S] [--policy P] [--storm]");
        return Ok(());
    }
    let failing: usize = args.parsed("--failing", 10_000)?;
    let seconds: f64 = args.parsed("--seconds", 10.0)?;
    let policy: String = args.parsed("--policy", ROUND_ROBIN.to_owned())?;
    let storm = args.flag("--storm");
    args.finish()?;

    let live = common::spawn_backend("127.0.0.1:0", false).await?;
    let storm_connections = Arc::new(AtomicUsize::new(0));
    let mut addresses = vec![live.to_string()];
    if storm {
        addresses.push(spawn_goaway_server(storm_connections.clone()).await?);
    } else {
        // 127.0.0.0/8 is loopback: nothing listens on port 1, so every
        // connection is refused at once.
        addresses.extend((0..failing).map(|i| format!("127.0.{}.{}:1", 1 + i / 250, 1 + i % 250)));
    }

    let counts = Arc::new(Counts::default());
    let registry = BalancerRegistry::global();
    let inner = registry
        .get(&policy)
        .ok_or_else(|| format!("unknown policy {policy:?}"))?;
    let counting = Observed::wrap(inner, counts.clone());
    let channel = BalancedChannel::builder(format!("static:///{}", addresses.join(",")))
        .balancer_builder(counting)
        .wait_for_ready(true)
        .build()?;
    let mut client = SimpleClient::new(channel.clone());

    let (mut ok, mut failed) = (0usize, 0usize);
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let mut request = tonic::Request::new(SimpleRequest { data: "x".into() });
        request.set_timeout(Duration::from_secs(1));
        match client.route(request).await {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    println!(
        "{{\"endpoints\":{},\"seconds\":{seconds},\"policy\":\"{policy}\",\"state\":\"{}\",\"peak_rss_mib\":{:.1},\"pickers_built\":{},\"resolver_updates\":{},\"resolution_requests\":{},\"calls_ok\":{ok},\"calls_failed\":{failed},\"storm_connections\":{}}}",
        addresses.len(),
        channel.state(),
        peak_rss_mib(),
        counts.pickers.load(Ordering::Relaxed),
        counts.resolver_updates.load(Ordering::Relaxed),
        counts.resolutions.load(Ordering::Relaxed),
        storm_connections.load(Ordering::Relaxed),
    );
    Ok(())
}

/// The process's peak resident set size so far, in MiB.
fn peak_rss_mib() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return f64::NAN;
        }
        usage.assume_init()
    };
    usage.ru_maxrss as f64 / 1024.0 // Linux reports KiB
}

/// A server on 127.0.0.1 that reads the client preface, sends an empty
/// SETTINGS and GOAWAY(0, NO_ERROR) on every connection, and closes it
/// 20 ms later. Counts connections.
async fn spawn_goaway_server(connections: Arc<AtomicUsize>) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if socket.read_exact(&mut preface).await.is_err() {
                    return;
                }
                let settings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
                let goaway = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let _ = socket.write_all(&settings).await;
                let _ = socket.write_all(&goaway).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    Ok(addr.to_string())
}

/// Counts what the policy was asked and did.
impl PolicyObserver for Counts {
    fn resolver_update(&self) {
        self.resolver_updates.fetch_add(1, Ordering::Relaxed);
    }

    fn picker(&self, picker: Arc<dyn Picker>) -> Arc<dyn Picker> {
        self.pickers.fetch_add(1, Ordering::Relaxed);
        picker
    }

    fn resolution_requested(&self) {
        self.resolutions.fetch_add(1, Ordering::Relaxed);
    }
}

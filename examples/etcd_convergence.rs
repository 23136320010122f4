//! How fast an etcd change reaches traffic, under steady load.
//!
//! Starts its own etcd (a temporary single member on a free loopback port,
//! like the tests' fixture) and three `Simple` backends, registers two of
//! them, and drives a round_robin channel (`etcd://.../grpclb/bench`) with
//! steady load. Then, run after run, it PUTs the third backend's key and
//! measures the time until that backend receives its first call, and
//! DELETEs it and measures the time until it receives its last call. Both
//! are measured from just before the etcd request is sent to a call's
//! arrival at the backend (same process, same clock).
//!
//! ```text
//! cargo run --release --example etcd_convergence -- [--runs 30] [--concurrency 4] [--interval-us 1000]
//! ```

mod common;
#[path = "../tests/support/etcd.rs"]
mod etcd_fixture;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proto::simple_client::SimpleClient;
use common::proto::simple_server::{Simple, SimpleServer};
use common::proto::{SimpleRequest, SimpleResponse};
use tonic::{Request, Response, Status};
use tonic_balance::BalancedChannel;

const PREFIX: &str = "/grpclb/bench/";
/// A backend that got no call for this long after a DELETE is taken as
/// removed (and the DELETE as converged).
const QUIET: Duration = Duration::from_millis(300);

/// Arrival times a backend records.
#[derive(Debug, Default)]
struct Arrivals {
    first: Option<Instant>,
    last: Option<Instant>,
}

#[derive(Clone)]
struct Recorder {
    arrivals: Arc<Mutex<Arrivals>>,
}

#[tonic::async_trait]
impl Simple for Recorder {
    async fn route(&self, req: Request<SimpleRequest>) -> Result<Response<SimpleResponse>, Status> {
        let now = Instant::now();
        {
            let mut a = self.arrivals.lock().unwrap();
            a.first.get_or_insert(now);
            a.last = Some(now);
        }
        Ok(Response::new(SimpleResponse {
            code: 200,
            value: req.into_inner().data,
        }))
    }
}

async fn backend() -> Result<(SocketAddr, Arc<Mutex<Arrivals>>), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let service = SimpleServer::new(Recorder {
        arrivals: arrivals.clone(),
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    Ok((addr, arrivals))
}

/// Steady load: `concurrency` loops, each sending one call per `interval`.
fn load(channel: BalancedChannel, concurrency: usize, interval: Duration) {
    for worker in 0..concurrency {
        let mut client = SimpleClient::new(channel.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let request = SimpleRequest {
                    data: format!("w{worker}"),
                };
                // Failures are possible only if every backend is down.
                let _ = client.route(request).await;
            }
        });
    }
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = samples[samples.len() / 2];
    let worst = samples[samples.len() - 1];
    println!(
        "{name}: median {:.1} ms, worst {:.1} ms, best {:.1} ms over {} runs",
        ms(median),
        ms(worst),
        ms(samples[0]),
        samples.len()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = common::Args::from_env();
    if args.flag("--help") {
        println!("usage: etcd_convergence [--runs N] [--concurrency C] [--interval-us U]");
        return Ok(());
    }
    let runs: usize = args.parsed("--runs", 30)?;
    let concurrency: usize = args.parsed("--concurrency", 4)?;
    let interval = Duration::from_micros(args.parsed("--interval-us", 1000)?);
    args.finish()?;
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }

    let etcd = tokio::task::spawn_blocking(etcd_fixture::Etcd::start).await?;
    let mut kv = etcd.client().await;
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(backend().await?);
    }
    for (addr, _) in &backends[..2] {
        kv.put(format!("{PREFIX}{addr}"), addr.to_string(), None)
            .await?;
    }
    let target = format!("etcd://{}//grpclb/bench", etcd.endpoint(0));
    let channel = BalancedChannel::builder(target.as_str())
        .balancer("round_robin")
        .connect(Duration::from_secs(10))
        .await?;
    println!(
        "{target}: {concurrency} callers, one call each per {interval:?} (about {} calls/s)",
        (concurrency as f64 / interval.as_secs_f64()).round()
    );
    load(channel, concurrency, interval);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (addr, arrivals) = &backends[2];
    let key = format!("{PREFIX}{addr}");
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for run in 0..runs {
        *arrivals.lock().unwrap() = Arrivals::default();
        let put_at = Instant::now();
        kv.put(key.as_str(), addr.to_string(), None).await?;
        let first = loop {
            if let Some(first) = arrivals.lock().unwrap().first {
                break first;
            }
            if put_at.elapsed() > Duration::from_secs(10) {
                return Err(format!("run {run}: {addr} got no call 10 s after its PUT").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        added.push(first.saturating_duration_since(put_at));
        tokio::time::sleep(Duration::from_millis(200)).await;

        let delete_at = Instant::now();
        kv.delete(key.as_str(), None).await?;
        let last = loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let last = arrivals.lock().unwrap().last.unwrap_or(delete_at);
            if last.elapsed() > QUIET {
                break last;
            }
            if delete_at.elapsed() > Duration::from_secs(10) {
                return Err(format!("run {run}: {addr} still called 10 s after its DELETE").into());
            }
        };
        removed.push(last.saturating_duration_since(delete_at));
        println!(
            "run {run:>2}: PUT -> first call {:>7.2} ms, DELETE -> last call {:>7.2} ms",
            added[run].as_secs_f64() * 1e3,
            removed[run].as_secs_f64() * 1e3
        );
    }
    summary("PUT -> first call served by the new backend", added);
    summary("DELETE -> last call sent to the removed backend", removed);
    Ok(())
}

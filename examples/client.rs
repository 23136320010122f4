//! Sends `Route` calls through a balanced channel and reports where they
//! went. The last line of output is one JSON object:
//!
//! ```text
//! {"ok":N,"failed":N,"by_backend":{"ADDR":N,...},"errors":{"CODE: message":N},"p50_us":N,"p99_us":N}
//! ```
//!
//! ```text
//! cargo run --example client -- --target static:///127.0.0.1:8000,127.0.0.1:8001 \
//!     --policy round_robin --requests 8 --verbose
//! cargo run --features tls --example client -- --target dns:///localhost:8443 \
//!     --tls-ca ca.pem [--tls-cert client.pem --tls-key client.key] [--tls-server-name NAME]
//! cargo run --example client -- --target static:///127.0.0.1:8000,127.0.0.1:8001 \
//!     --service-config '{"loadBalancingConfig":[{"round_robin":{}}]}'
//! cargo run --example client -- --target static:///127.0.0.1:8000,127.0.0.1:8001 \
//!     --policy least_request --concurrency 16 --requests 1000
//! cargo run --example client -- --target static:///127.0.0.1:8000,127.0.0.1:8001 \
//!     --service-config '{"loadBalancingConfig":[{"least_request_experimental":{"choiceCount":2}}]}'
//! ```
//!
//! It exits with status 1 when any call failed (2 for bad flags), so a
//! script can rely on it.
//!
//! `--service-config` takes any gRPC service config (JSON); its
//! `loadBalancingConfig` chooses the policy (it wins over `--policy`), and
//! a bad one is rejected before any call with an error that says why.
//!
//! `RUST_LOG=tonic_balance=debug` logs the control plane (state changes,
//! resolver updates, ejections, health warnings) on stderr.
//!
//! `--stats` adds `"channel"` to the last line's JSON: the channel's
//! snapshot (`BalancedChannel::snapshot`) after the last call: target,
//! policy, state, the resolver's last update and, per subchannel, its
//! state, last error and call and connection counters.
//!
//! `--metadata KEY=VALUE` adds a header to every call, e.g. the key
//! ring_hash hashes; repeat the flag for more headers (`--metadata a=1
//! --metadata b=2`, not `--metadata a=1 b=2`):
//!
//! ```text
//! cargo run --example client -- --target static:///127.0.0.1:8000,127.0.0.1:8001 \
//!     --service-config '{"loadBalancingConfig":[{"ring_hash":{"requestHashHeader":"session-id"}}]}' \
//!     --metadata session-id=user-42 --requests 8
//! ```

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proto::simple_client::SimpleClient;
use common::proto::SimpleRequest;
use tonic_balance::{BalancedChannel, Peer, WaitForReady};

const USAGE: &str = "usage: client --target URI \
[--policy pick_first|round_robin|least_request|weighted_round_robin|ring_hash] \
[--service-config JSON] [--metadata KEY=VALUE]... (repeat the flag for each header) [--requests N] \
[--concurrency C] [--interval-ms M] [--timeout-ms T] [--wait-for-ready] [--verbose] [--stats] \
[--connections-per-address N] [--user-agent S] \
[--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME] (TLS: --features tls)";

struct Options {
    target: String,
    policy: String,
    service_config: Option<String>,
    metadata: Vec<(
        tonic::metadata::MetadataKey<tonic::metadata::Ascii>,
        tonic::metadata::AsciiMetadataValue,
    )>,
    requests: usize,
    concurrency: usize,
    interval: Duration,
    timeout: Duration,
    wait_for_ready: bool,
    verbose: bool,
    /// Print the channel's snapshot (`"channel"`) in the last line.
    stats: bool,
    connections_per_address: usize,
    user_agent: Option<String>,
    tls: Tls,
}

/// The TLS flags, as given.
#[derive(Default)]
struct Tls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    server_name: Option<String>,
}

impl Tls {
    fn wanted(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.server_name.is_some()
    }
}

#[derive(Default)]
struct Tally {
    by_backend: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

#[tokio::main]
async fn main() {
    let options = match parse() {
        Ok(Some(o)) => o,
        Ok(None) => return println!("{USAGE}"),
        Err(e) => {
            eprintln!("client: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // RUST_LOG=tonic_balance=debug shows the control plane on stderr (the
    // JSON lines stay alone on stdout).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    match run(options).await {
        Ok(0) => {}
        Ok(failed) => {
            eprintln!("client: {failed} call(s) failed");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("client: {e}");
            std::process::exit(1);
        }
    }
}

/// `--tls-*` onto the builder.
#[cfg(feature = "tls")]
fn with_tls(
    builder: tonic_balance::BalancedChannelBuilder,
    tls: &Tls,
) -> Result<tonic_balance::BalancedChannelBuilder, Box<dyn std::error::Error>> {
    if !tls.wanted() {
        return Ok(builder);
    }
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    let mut config = tonic_balance::ClientTlsConfig::new();
    if let Some(ca) = &tls.ca {
        config = config.ca_certificate(read(ca)?);
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        config = config.identity(read(cert)?, read(key)?);
    }
    if let Some(name) = &tls.server_name {
        config = config.server_name(name);
    }
    Ok(builder.tls(config))
}

#[cfg(not(feature = "tls"))]
fn with_tls(
    builder: tonic_balance::BalancedChannelBuilder,
    tls: &Tls,
) -> Result<tonic_balance::BalancedChannelBuilder, Box<dyn std::error::Error>> {
    if tls.wanted() {
        return Err("the --tls-* flags need the crate's `tls` feature (--features tls)".into());
    }
    Ok(builder)
}

fn parse() -> Result<Option<Options>, String> {
    let mut args = common::Args::from_env();
    if args.flag("--help") {
        return Ok(None);
    }
    let options = Options {
        target: args.value("--target")?.ok_or("--target is required")?,
        policy: args.parsed("--policy", "pick_first".to_owned())?,
        service_config: args.value("--service-config")?,
        metadata: metadata(&mut args)?,
        requests: args.parsed("--requests", 10)?,
        concurrency: args.parsed::<usize>("--concurrency", 1)?.max(1),
        interval: Duration::from_millis(args.parsed("--interval-ms", 0)?),
        timeout: Duration::from_millis(args.parsed("--timeout-ms", 10_000)?),
        wait_for_ready: args.flag("--wait-for-ready"),
        verbose: args.flag("--verbose"),
        stats: args.flag("--stats"),
        connections_per_address: args.parsed("--connections-per-address", 1)?,
        user_agent: args.value("--user-agent")?,
        tls: Tls {
            ca: args.value("--tls-ca")?,
            cert: args.value("--tls-cert")?,
            key: args.value("--tls-key")?,
            server_name: args.value("--tls-server-name")?,
        },
    };
    if options.tls.cert.is_some() != options.tls.key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    args.finish()?;
    Ok(Some(options))
}

/// Every `--metadata KEY=VALUE`, checked as gRPC metadata.
fn metadata(
    args: &mut common::Args,
) -> Result<
    Vec<(
        tonic::metadata::MetadataKey<tonic::metadata::Ascii>,
        tonic::metadata::AsciiMetadataValue,
    )>,
    String,
> {
    let mut all = Vec::new();
    while let Some(pair) = args.value("--metadata")? {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--metadata {pair:?}: want KEY=VALUE"))?;
        let key = key
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| format!("--metadata {pair:?}: {key:?} is not a metadata key"))?;
        let value = value
            .parse()
            .map_err(|_| format!("--metadata {pair:?}: {value:?} is not a metadata value"))?;
        all.push((key, value));
    }
    Ok(all)
}

/// Runs the calls; returns how many failed.
async fn run(options: Options) -> Result<u64, Box<dyn std::error::Error>> {
    let mut builder = BalancedChannel::builder(&options.target)
        .balancer(&options.policy)
        .wait_for_ready(options.wait_for_ready)
        .connections_per_address(options.connections_per_address);
    if let Some(user_agent) = &options.user_agent {
        builder = builder.user_agent(user_agent);
    }
    if let Some(json) = &options.service_config {
        builder = builder.service_config(json);
    }
    let channel = with_tls(builder, &options.tls)?.build()?;
    let options = Arc::new(options);
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..options.concurrency)
        .map(|_| {
            let client = SimpleClient::new(channel.clone());
            tokio::spawn(worker(client, options.clone(), next.clone(), tally.clone()))
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let tally = std::mem::take(&mut *tally.lock().map_err(|_| "a worker panicked")?);
    let failed = tally.errors.values().sum::<u64>();
    let mut summary = summary(tally);
    if options.stats {
        summary["channel"] = serde_json::to_value(channel.snapshot().await)?;
    }
    println!("{summary}");
    Ok(failed)
}

async fn worker(
    mut client: SimpleClient<BalancedChannel>,
    options: Arc<Options>,
    next: Arc<AtomicUsize>,
    tally: Arc<Mutex<Tally>>,
) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= options.requests {
            return;
        }
        if i >= options.concurrency && !options.interval.is_zero() {
            tokio::time::sleep(options.interval).await;
        }
        let mut request = tonic::Request::new(SimpleRequest {
            data: format!("request {}", i + 1),
        });
        request.set_timeout(options.timeout);
        for (key, value) in &options.metadata {
            request.metadata_mut().append(key.clone(), value.clone());
        }
        request
            .extensions_mut()
            .insert(WaitForReady(options.wait_for_ready));
        let started = Instant::now();
        let result = client.route(request).await;
        let elapsed = started.elapsed().as_micros() as u64;
        let Ok(mut t) = tally.lock() else { return };
        match result {
            Ok(response) => {
                let backend = response
                    .extensions()
                    .get::<Peer>()
                    .map_or_else(|| "?".to_owned(), |p| p.address().to_string());
                if options.verbose {
                    let reply = response.get_ref();
                    println!(
                        "request {}: {backend} replied {} {:?} in {elapsed}us",
                        i + 1,
                        reply.code,
                        reply.value
                    );
                }
                *t.by_backend.entry(backend).or_default() += 1;
                t.latencies_us.push(elapsed);
            }
            Err(status) => {
                if options.verbose {
                    println!(
                        "request {}: failed {:?}: {}",
                        i + 1,
                        status.code(),
                        status.message()
                    );
                }
                let key = format!("{:?}: {}", status.code(), status.message());
                *t.errors.entry(key).or_default() += 1;
            }
        }
    }
}

fn summary(mut tally: Tally) -> serde_json::Value {
    tally.latencies_us.sort_unstable();
    let percentile = |p: f64| -> u64 {
        let n = tally.latencies_us.len();
        if n == 0 {
            return 0;
        }
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        tally.latencies_us[rank - 1]
    };
    serde_json::json!({
        "ok": tally.latencies_us.len(),
        "failed": tally.errors.values().sum::<u64>(),
        "by_backend": tally.by_backend,
        "errors": tally.errors,
        "p50_us": percentile(0.50),
        "p99_us": percentile(0.99),
    })
}

//! A `Simple` backend: replies code 200 and `hello <data>`, logging each
//! request.
//!
//! ```text
//! cargo run --example server -- --addr 127.0.0.1:8000
//! ```
//!
//! With `--etcd`, it also registers `--addr` in etcd under `--prefix` with a
//! lease (`--ttl` seconds, kept alive every TTL/3), prints the target clients
//! should use, and revokes the lease on Ctrl-C / SIGTERM so clients stop
//! calling it at once (the classic `/grpclb/simple_grpc` demo):
//!
//! ```text
//! cargo run --example server -- --addr 127.0.0.1:8000 --etcd 127.0.0.1:2379
//! cargo run --example server -- --addr 127.0.0.1:8001 --etcd 127.0.0.1:2379
//! cargo run --example client -- --target etcd://127.0.0.1:2379//grpclb/simple_grpc \
//!     --policy round_robin --requests 8
//! ```
//!
//! `--weight N` registers the address with `{"Metadata":{"weight":N}}`
//! (etcd's Go naming JSON), which `weighted_round_robin` uses while no
//! server reports its load; `--utilization X` attaches an ORCA load report
//! (CPU utilization X, a nominal 100 requests per second) to every
//! response, which `weighted_round_robin` weighs the server by (100 / X),
//! and serves the same report out of band (ORCA's `OpenRcaService`, for
//! clients with `enableOobLoadReport`; at most once a second):
//!
//! ```text
//! cargo run --example server -- --addr 127.0.0.1:8000 --etcd 127.0.0.1:2379 --weight 1
//! cargo run --example server -- --addr 127.0.0.1:8001 --etcd 127.0.0.1:2379 --weight 3
//! cargo run --example client -- --target etcd://127.0.0.1:2379//grpclb/simple_grpc \
//!     --policy weighted_round_robin --requests 400
//! ```
//!
//! With `--tls-cert FILE --tls-key FILE` it serves TLS (ALPN h2), and with
//! `--tls-client-ca FILE` requires client certificates signed by that CA
//! (mutual TLS). `--addr unix:PATH` serves on a unix socket. Accepted TCP
//! sockets get TCP_NODELAY: the server serves from its own listener, so
//! tonic's `tcp_nodelay` does not apply, and without it a small response
//! can wait for Nagle's algorithm (a fresh client's first call sometimes
//! took 40 ms).
//!
//! `--health-service NAME` serves `grpc.health.v1.Health` (tonic-health)
//! with NAME SERVING; SIGUSR1 toggles it between SERVING and NOT_SERVING,
//! for clients with client-side health checking (gRFC A17).
//! `--fail-rate P` answers a fraction P (0 to 1) of calls UNAVAILABLE, for
//! outlier detection (gRFC A50):
//!
//! ```text
//! cargo run --example server -- --addr 127.0.0.1:8000 --health-service proto.Simple
//! cargo run --example server -- --addr 127.0.0.1:8001 --fail-rate 0.9
//! cargo run --example client -- --target static:///127.0.0.1:8000,127.0.0.1:8001 \
//!     --service-config '{"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":"proto.Simple"}}'
//! kill -USR1 <pid of the first server>   # NOT_SERVING: its calls stop; again: they resume
//! ```

mod common;

use std::net::SocketAddr;

use common::proto::simple_server::{Simple, SimpleServer};
use common::proto::{SimpleRequest, SimpleResponse};
use common::Greeter;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use tonic_balance::orca::{OrcaLayer, OrcaOobService, ServerMetricsRecorder};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

const USAGE: &str = "usage: server --addr HOST:PORT|unix:PATH [--etcd HOST:PORT[,HOST:PORT...]] \
[--prefix PREFIX (default /grpclb/simple_grpc/)] [--ttl SECONDS (default 10)] [--metadata JSON] \
[--weight N] [--utilization X] \
[--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]] [--health-service NAME] [--fail-rate P]";

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("server: {e}");
        std::process::exit(1);
    }
}

/// Where to register, from `--etcd`, `--prefix`, `--ttl`, `--metadata`.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
struct EtcdOptions {
    endpoints: String,
    prefix: String,
    ttl: u64,
    metadata: Option<String>,
    weight: Option<u32>,
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = common::Args::from_env();
    if args.flag("--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let addr = args.parsed("--addr", "127.0.0.1:50051".to_owned())?;
    let etcd = match args.value("--etcd")? {
        Some(endpoints) => Some(EtcdOptions {
            endpoints,
            prefix: args.parsed("--prefix", "/grpclb/simple_grpc/".to_owned())?,
            ttl: args.parsed("--ttl", 10)?,
            metadata: args.value("--metadata")?,
            weight: args
                .value("--weight")?
                .map(|w| parse_weight(&w))
                .transpose()?,
        }),
        None => None,
    };
    if etcd.is_none() && args.value("--weight")?.is_some() {
        return Err("--weight is registered in etcd: it needs --etcd".into());
    }
    let recorder = ServerMetricsRecorder::new();
    if let Some(utilization) = args.value("--utilization")? {
        let x: f64 = utilization
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite() && *x > 0.0)
            .ok_or_else(|| format!("--utilization {utilization:?}: want a number above 0"))?;
        // A nominal rate: clients weigh this server 100 / X (gRFC A58).
        recorder.set_cpu_utilization(x);
        recorder.set_qps(100.0);
        println!("reporting ORCA load: cpu_utilization {x}, rps 100");
    }
    let tls = tls_config(
        args.value("--tls-cert")?,
        args.value("--tls-key")?,
        args.value("--tls-client-ca")?,
    )?;
    let health = match args.value("--health-service")? {
        Some(name) => Some(health_service(name).await?),
        None => None,
    };
    let fail_rate: f64 = args.parsed("--fail-rate", 0.0)?;
    if !(0.0..=1.0).contains(&fail_rate) {
        return Err(format!("--fail-rate {fail_rate}: must be between 0 and 1").into());
    }
    args.finish()?;

    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    if let Some(path) = addr.strip_prefix("unix:") {
        if etcd.is_some() {
            return Err("--etcd registers a TCP address; not with --addr unix:PATH".into());
        }
        let service = Flaky::new("0.0.0.0:0".parse()?, fail_rate);
        return serve_unix(server, path, service, health).await;
    }
    let addr: SocketAddr = addr.parse().map_err(|e| format!("--addr {addr}: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    println!("serving Simple on {addr}");
    let registration = match etcd {
        Some(etcd) => Some(register(addr, etcd).await?),
        None => None,
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|socket| {
        // Responses are small: do not hold them for Nagle's algorithm.
        socket.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let oob = OrcaOobService::new(recorder.clone())
        .min_reporting_interval(std::time::Duration::from_secs(1));
    server
        .layer(OrcaLayer::new(recorder))
        .add_service(SimpleServer::new(Flaky::new(addr, fail_rate)))
        .add_service(oob.into_server())
        .add_optional_service(health)
        .serve_with_incoming_shutdown(incoming, async {
            shutdown_signal().await;
            // Leave discovery first, so clients stop sending new calls.
            if let Some(registration) = registration {
                deregister(registration).await;
            }
        })
        .await?;
    println!("{addr}: stopped");
    Ok(())
}

/// Serves on the unix socket at `path` (removed first if it exists).
#[cfg(unix)]
async fn serve_unix(
    mut server: tonic::transport::Server,
    path: &str,
    service: Flaky,
    health: Option<HealthServer<HealthService>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on unix:{path}: {e}"))?;
    println!("serving Simple on unix:{path}");
    server
        .add_service(SimpleServer::new(service))
        .add_optional_service(health)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown_signal(),
        )
        .await?;
    let _ = std::fs::remove_file(path);
    println!("unix:{path}: stopped");
    Ok(())
}

#[cfg(not(unix))]
async fn serve_unix(
    _server: tonic::transport::Server,
    _path: &str,
    _service: Flaky,
    _health: Option<HealthServer<HealthService>>,
) -> Result<(), Box<dyn std::error::Error>> {
    Err("unix sockets need a unix system".into())
}

/// The `Simple` service, answering a fraction `fail_rate` of calls
/// UNAVAILABLE (`--fail-rate`).
#[derive(Debug)]
struct Flaky {
    greeter: Greeter,
    fail_rate: f64,
}

impl Flaky {
    fn new(addr: SocketAddr, fail_rate: f64) -> Flaky {
        let greeter = Greeter { addr, log: true };
        Flaky { greeter, fail_rate }
    }
}

#[tonic::async_trait]
impl Simple for Flaky {
    async fn route(&self, req: Request<SimpleRequest>) -> Result<Response<SimpleResponse>, Status> {
        if self.fail_rate > 0.0 && rand::random::<f64>() < self.fail_rate {
            println!(
                "{}: Route failed on purpose (--fail-rate)",
                self.greeter.addr
            );
            return Err(Status::unavailable(format!(
                "{}: failing {}% of calls (--fail-rate)",
                self.greeter.addr,
                self.fail_rate * 100.0
            )));
        }
        self.greeter.route(req).await
    }
}

/// `grpc.health.v1.Health` with `name` SERVING; SIGUSR1 toggles it.
async fn health_service(name: String) -> Result<HealthServer<HealthService>, String> {
    let reporter = HealthReporter::new();
    reporter
        .set_service_status(&name, ServingStatus::Serving)
        .await;
    println!("health: {name:?} SERVING (SIGUSR1 toggles SERVING / NOT_SERVING)");
    toggle_on_sigusr1(reporter.clone(), name)?;
    Ok(HealthServer::new(HealthService::from_health_reporter(
        reporter,
    )))
}

#[cfg(unix)]
fn toggle_on_sigusr1(reporter: HealthReporter, name: String) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(|e| format!("SIGUSR1: {e}"))?;
    tokio::spawn(async move {
        let mut serving = true;
        while usr1.recv().await.is_some() {
            serving = !serving;
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(&name, status).await;
            println!("health: {name:?} {status}");
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn toggle_on_sigusr1(_: HealthReporter, _: String) -> Result<(), String> {
    Err("--health-service toggles on SIGUSR1, which needs a unix system".into())
}

/// `--tls-cert`, `--tls-key`, `--tls-client-ca` as tonic's TLS config.
fn tls_config(
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) if client_ca.is_none() => return Ok(None),
        _ => {
            return Err(
                "--tls-cert and --tls-key go together (and --tls-client-ca needs both)".into(),
            )
        }
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(&cert)?, read(&key)?));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(&ca)?));
    }
    Ok(Some(tls))
}

#[cfg(feature = "etcd")]
/// `--weight N`: a positive integer.
fn parse_weight(w: &str) -> Result<u32, String> {
    w.parse()
        .ok()
        .filter(|w| *w > 0)
        .ok_or_else(|| format!("--weight {w:?}: want an integer in 1..=4294967295"))
}

type Registered = tonic_balance::registration::Registration;
#[cfg(not(feature = "etcd"))]
type Registered = std::convert::Infallible;

#[cfg(feature = "etcd")]
async fn register(addr: SocketAddr, etcd: EtcdOptions) -> Result<Registered, String> {
    use std::time::Duration;
    use tonic_balance::registration::{Registration, RegistrationStatus};

    let mut builder = Registration::builder(etcd.prefix, addr.to_string())
        .etcd_endpoints(&etcd.endpoints)
        .ttl(Duration::from_secs(etcd.ttl));
    let mut metadata = match etcd.metadata {
        Some(json) => serde_json::from_str(&json).map_err(|e| format!("--metadata: {e}"))?,
        None => serde_json::Value::Null,
    };
    if let Some(weight) = etcd.weight {
        // etcd's Go naming JSON: {"Addr": ..., "Metadata": {"weight": N}}.
        match &mut metadata {
            serde_json::Value::Object(object) => {
                object.insert("weight".into(), weight.into());
            }
            serde_json::Value::Null => metadata = serde_json::json!({ "weight": weight }),
            _ => return Err("--weight needs --metadata to be a JSON object".into()),
        }
    }
    if !metadata.is_null() {
        builder = builder.metadata(metadata);
    }
    let registration = builder.register().await.map_err(|e| e.to_string())?;
    println!("registered {} in etcd", registration.key());
    println!("clients: --target {}", registration.target());
    // Report what the lease keeper does in the background.
    let mut status = registration.status();
    tokio::spawn(async move {
        while status.changed().await.is_ok() {
            match &*status.borrow_and_update() {
                RegistrationStatus::Registered { lease_id } => {
                    println!("etcd: registered (lease {lease_id:x})")
                }
                RegistrationStatus::Retrying { error } => eprintln!("etcd: {error}; retrying"),
                RegistrationStatus::Stopped => break,
            }
        }
    });
    Ok(registration)
}

#[cfg(feature = "etcd")]
async fn deregister(registration: Registered) {
    let key = registration.key().to_owned();
    match registration.shutdown().await {
        Ok(()) => println!("revoked {key} in etcd"),
        Err(e) => eprintln!("could not revoke {key} (it expires with its lease): {e}"),
    }
}

#[cfg(not(feature = "etcd"))]
async fn register(_: SocketAddr, _: EtcdOptions) -> Result<Registered, String> {
    Err("--etcd needs the crate's `etcd` feature (on by default)".to_owned())
}

#[cfg(not(feature = "etcd"))]
async fn deregister(registration: Registered) {
    match registration {}
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

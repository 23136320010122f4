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

mod common;

use std::net::SocketAddr;

use common::proto::simple_server::SimpleServer;
use common::Greeter;

const USAGE: &str = "usage: server --addr HOST:PORT [--etcd HOST:PORT[,HOST:PORT...]] \
[--prefix PREFIX (default /grpclb/simple_grpc/)] [--ttl SECONDS (default 10)] [--metadata JSON]";

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
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = common::Args::from_env();
    if args.flag("--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let addr: SocketAddr = args.parsed("--addr", "127.0.0.1:50051".parse()?)?;
    let etcd = match args.value("--etcd")? {
        Some(endpoints) => Some(EtcdOptions {
            endpoints,
            prefix: args.parsed("--prefix", "/grpclb/simple_grpc/".to_owned())?,
            ttl: args.parsed("--ttl", 10)?,
            metadata: args.value("--metadata")?,
        }),
        None => None,
    };
    args.finish()?;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    println!("serving Simple on {addr}");
    let registration = match etcd {
        Some(etcd) => Some(register(addr, etcd).await?),
        None => None,
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(SimpleServer::new(Greeter { addr, log: true }))
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

#[cfg(feature = "etcd")]
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
    if let Some(json) = etcd.metadata {
        let metadata = serde_json::from_str(&json).map_err(|e| format!("--metadata: {e}"))?;
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

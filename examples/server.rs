//! A `Simple` backend: replies code 200 and `hello <data>`, logging each
//! request.
//!
//! ```text
//! cargo run --example server -- --addr 127.0.0.1:8000
//! ```

mod common;

use std::net::SocketAddr;

use common::proto::simple_server::SimpleServer;
use common::Greeter;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("server: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = common::Args::from_env();
    if args.flag("--help") {
        println!("usage: server --addr HOST:PORT");
        return Ok(());
    }
    let addr: SocketAddr = args.parsed("--addr", "127.0.0.1:50051".parse()?)?;
    args.finish()?;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    println!("serving Simple on {addr}");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(SimpleServer::new(Greeter { addr, log: true }))
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await?;
    println!("{addr}: stopped");
    Ok(())
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

//! Starts three in-process backends and sends 9 requests through a balanced
//! channel, first with `round_robin`, then with `pick_first`, printing which
//! backend served each. Needs no services.
//!
//! ```text
//! cargo run --example quickstart [-- --requests N]
//! ```

mod common;

use std::time::Duration;

use common::proto::simple_client::SimpleClient;
use common::proto::SimpleRequest;
use tonic_balance::{BalancedChannel, Peer};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("quickstart: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = common::Args::from_env();
    if args.flag("--help") {
        println!("usage: quickstart [--requests N]");
        return Ok(());
    }
    let requests: usize = args.parsed("--requests", 9)?;
    args.finish()?;

    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(
            common::spawn_backend("127.0.0.1:0", false)
                .await?
                .to_string(),
        );
    }
    let target = format!("static:///{}", backends.join(","));
    println!("backends: {}", backends.join(", "));
    println!("target:   {target}\n");

    for policy in ["round_robin", "pick_first"] {
        let channel = BalancedChannel::builder(&target)
            .balancer(policy)
            .connect(Duration::from_secs(5))
            .await?;
        if policy == "round_robin" {
            // READY means one backend is up; give the others a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut client = SimpleClient::new(channel);
        println!("{policy}:");
        for i in 1..=requests {
            let response = client
                .route(SimpleRequest {
                    data: format!("request {i}"),
                })
                .await?;
            let served_by = response
                .extensions()
                .get::<Peer>()
                .map(|p| p.address().to_string())
                .unwrap_or_default();
            let reply = response.into_inner();
            println!(
                "  request {i} -> {served_by}: code {} {:?}",
                reply.code, reply.value
            );
        }
        println!();
    }
    Ok(())
}

//! A resolver for a scheme of your own, as grpc-go's `resolver.Register`
//! allows: `example:///lb.example.grpc.io` resolves to two local backends.
//! Sends 10 calls with pick_first, then 10 with round_robin.
//!
//! ```text
//! cargo run --example custom_resolver
//! ```

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::proto::simple_client::SimpleClient;
use common::proto::SimpleRequest;
use tonic_balance::resolver::{self, Resolver, ResolverBuilder, ResolverUpdate, UpdateSink};
use tonic_balance::{Address, BalancedChannel, Error, ErrorKind, Peer, Target};

/// Resolves the service names it knows to fixed addresses.
struct ExampleResolverBuilder {
    service: String,
    addresses: Vec<String>,
}

/// The running resolver: keeps the sink to answer `resolve_now`.
struct ExampleResolver {
    sink: UpdateSink,
    update: ResolverUpdate,
}

impl ResolverBuilder for ExampleResolverBuilder {
    fn scheme(&self) -> &str {
        "example"
    }

    fn build(&self, target: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        if target.endpoint() != self.service {
            return Err(Error::new(
                ErrorKind::InvalidTarget,
                format!("example resolver: unknown service {:?}", target.endpoint()),
            ));
        }
        let update = ResolverUpdate::new(
            self.addresses
                .iter()
                .map(|a| Address::new(a.as_str()))
                .collect(),
        );
        sink.update(update.clone());
        Ok(Box::new(ExampleResolver { sink, update }))
    }
}

impl Resolver for ExampleResolver {
    fn resolve_now(&mut self) {
        self.sink.update(self.update.clone());
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("custom_resolver: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = common::Args::from_env();
    if args.flag("--help") {
        println!("usage: custom_resolver [--requests N]");
        return Ok(());
    }
    let requests: usize = args.parsed("--requests", 10)?;
    args.finish()?;

    let a = common::spawn_backend("127.0.0.1:0", false).await?;
    let b = common::spawn_backend("127.0.0.1:0", false).await?;
    resolver::register(Arc::new(ExampleResolverBuilder {
        service: "lb.example.grpc.io".into(),
        addresses: vec![a.to_string(), b.to_string()],
    }));
    println!("example:///lb.example.grpc.io resolves to {a} and {b}\n");

    for policy in ["pick_first", "round_robin"] {
        let channel = BalancedChannel::builder("example:///lb.example.grpc.io")
            .balancer(policy)
            .connect(Duration::from_secs(5))
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut client = SimpleClient::new(channel);
        println!("{policy}:");
        for i in 1..=requests {
            let response = client
                .route(SimpleRequest {
                    data: format!("call {i}"),
                })
                .await?;
            let peer = response
                .extensions()
                .get::<Peer>()
                .map(|p| p.address().to_string());
            println!(
                "  call {i} -> {} ({})",
                peer.unwrap_or_default(),
                response.into_inner().value
            );
        }
        println!();
    }
    Ok(())
}

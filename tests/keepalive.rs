//! Keepalive (gRFC A8) against a black-holed backend: gRPC's C-core
//! (`support::grpcio`) frozen with SIGSTOP keeps its TCP connection (the
//! kernel holds it) but answers nothing, like a host that vanished behind a
//! NAT or a firewall. Real processes cannot run on a paused clock: these
//! tests use wide margins, assert outcomes rather than durations, and bound
//! every wait.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::grpcio::GrpcioServer;
use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{fast_backoff, Backend};
use tonic::Code;
use tonic_balance::{BalancedChannel, Peer};

const INTERVAL: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_millis(500);

async fn call(
    client: &mut SimpleClient<BalancedChannel>,
    deadline: Duration,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(SimpleRequest { data: "x".into() });
    request.set_timeout(deadline);
    let response = client.route(request).await?;
    Ok(response
        .extensions()
        .get::<Peer>()
        .map(|p| p.address().to_string())
        .unwrap_or_default())
}

#[tokio::test]
async fn a_frozen_backend_is_dropped_by_keepalive_and_calls_go_to_the_healthy_one() {
    let frozen = GrpcioServer::start(&[]);
    let healthy = Backend::start();
    let channel = BalancedChannel::builder(format!("static:///{},{}", frozen.addr, healthy.addr))
        .balancer("round_robin")
        .backoff(fast_backoff())
        .keepalive_without_minimum(INTERVAL, TIMEOUT)
        .connect(Duration::from_secs(10))
        .await
        .expect("READY");
    let mut client = SimpleClient::new(channel);
    tokio::time::timeout(Duration::from_secs(60), async {
        // Both serve before the freeze.
        let mut served = HashMap::<String, usize>::new();
        for _ in 0..200 {
            let peer = call(&mut client, Duration::from_secs(5))
                .await
                .expect("call");
            *served.entry(peer).or_default() += 1;
            if served.len() == 2 {
                break;
            }
        }
        assert_eq!(served.len(), 2, "{served:?}");

        frozen.freeze();
        // A call sent to the frozen backend makes the connection send PINGs;
        // none is answered, so within interval + timeout the connection is
        // dropped and the call fails long before its 20 s deadline.
        let mut failed = Vec::new();
        let mut healthy_in_a_row = 0;
        for _ in 0..200 {
            match call(&mut client, Duration::from_secs(20)).await {
                Ok(peer) if peer == healthy.addr.to_string() => healthy_in_a_row += 1,
                Ok(peer) => panic!("served by the frozen backend {peer}"),
                Err(status) => {
                    healthy_in_a_row = 0;
                    failed.push(status);
                }
            }
            if healthy_in_a_row == 20 {
                break;
            }
        }
        assert_eq!(healthy_in_a_row, 20, "new calls go to the healthy backend");
        assert!(
            failed.len() <= 2,
            "only the calls in flight fail: {failed:?}"
        );
        for status in &failed {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(
                status.message().contains(&frozen.addr.to_string()),
                "{}",
                status.message()
            );
        }
    })
    .await
    .expect("bounded");
}

//! The literal target schemes of gRPC's naming document against real
//! servers: `ipv4:`, `passthrough:` and `unix:` (`unix-abstract:` needs the
//! transport's abstract-socket connector, tested with it).

mod support;

use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::proto::simple_server::{Simple, SimpleServer};
use support::proto::{SimpleRequest, SimpleResponse};
use support::{route, Backend};
use tonic_balance::BalancedChannel;

const TEST_LIMIT: Duration = Duration::from_secs(30);

async fn served_by(target: &str, policy: &str, calls: usize) -> Vec<String> {
    let channel = BalancedChannel::builder(target)
        .balancer(policy)
        .connect(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{target}: {e}"));
    let mut client = SimpleClient::new(channel);
    let mut peers = Vec::new();
    for _ in 0..calls {
        peers.push(route(&mut client, "x").await.expect("call"));
    }
    peers
}

#[tokio::test]
async fn an_ipv4_list_reaches_every_backend() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (a, b) = (Backend::start(), Backend::start());
        let target = format!("ipv4:{},{}", a.addr, b.addr);
        // `connect` returns once round_robin is READY, which is when the
        // first backend is; the second may still be connecting. So call
        // until both have answered (bounded), not a fixed number of times.
        let channel = BalancedChannel::builder(&target)
            .balancer("round_robin")
            .connect(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        let mut client = SimpleClient::new(channel);
        let mut peers = Vec::new();
        for _ in 0..400 {
            peers.push(route(&mut client, "x").await.expect("call"));
            if [&a, &b].iter().all(|b| peers.contains(&b.addr.to_string())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for backend in [&a, &b] {
            assert!(peers.contains(&backend.addr.to_string()), "{peers:?}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn passthrough_hands_the_name_to_the_dialer() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let target = format!("passthrough:///localhost:{}", backend.addr.port());
        served_by(&target, "pick_first", 3).await;
        assert_eq!(backend.calls(), 3);
    })
    .await
    .unwrap();
}

#[derive(Clone)]
struct Hello;

#[tonic::async_trait]
impl Simple for Hello {
    async fn route(
        &self,
        req: tonic::Request<SimpleRequest>,
    ) -> Result<tonic::Response<SimpleResponse>, tonic::Status> {
        Ok(tonic::Response::new(SimpleResponse {
            code: 200,
            value: format!("hello {} via unix", req.into_inner().data),
        }))
    }
}

#[tokio::test]
async fn a_unix_socket_serves_calls_in_both_target_forms() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("simple.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SimpleServer::new(Hello))
                .serve_with_incoming(incoming),
        );
        let absolute = path.to_str().unwrap();
        for target in [
            format!("unix:{absolute}"),
            format!("unix://{absolute}"), // unix:///path: three slashes
        ] {
            let peers = served_by(&target, "pick_first", 2).await;
            assert!(
                peers.iter().all(|p| p == &format!("unix:{absolute}")),
                "{target}: {peers:?}"
            );
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_literal_targets_are_errors_naming_the_part() {
    for (target, part) in [
        ("ipv4:10.0.0.1:x", "bad port \"x\""),
        ("ipv6:10.0.0.1", "not an IPv6"),
        ("unix://relative/sock", "three slashes"),
        ("passthrough:///no-port", "no port"),
    ] {
        let err = BalancedChannel::builder(target).build().unwrap_err();
        assert!(err.is_invalid_target(), "{target}: {err}");
        assert!(err.to_string().contains(part), "{target}: {err}");
    }
}

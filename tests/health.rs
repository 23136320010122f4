//! Client-side health checking (gRFC A17) against real servers: tonic
//! backends with `tonic-health`, a backend without a health service, a
//! health service that fails its streams, and grpcio's (gRPC C-core's).

mod support;

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::grpcio::GrpcioServer;
use support::proto::simple_client::SimpleClient;
use support::{fast_backoff, route, static_target, Backend};
use tonic::{Code, Request, Response, Status};
use tonic_balance::resolver::{ManualResolver, ResolverUpdate};
use tonic_balance::{Address, BalancedChannel, ConnectivityState, ServiceConfig};
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

const TEST_LIMIT: Duration = Duration::from_secs(60);
const SERVICE: &str = "proto.Simple";

fn health_config(policy: &str) -> String {
    format!(
        r#"{{"loadBalancingConfig":[{{"{policy}":{{}}}}],"healthCheckConfig":{{"serviceName":"{SERVICE}"}}}}"#
    )
}

fn channel(target: String, policy: &str) -> BalancedChannel {
    BalancedChannel::builder(target)
        .service_config(health_config(policy))
        .backoff(fast_backoff())
        .build()
        .unwrap()
}

/// The backends that served `n` calls (failed calls are left out).
async fn served_by(client: &mut SimpleClient<BalancedChannel>, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for i in 0..n {
        if let Ok(peer) = route(client, &format!("call {i}")).await {
            seen.insert(peer);
        }
    }
    seen
}

/// Makes calls until the set of backends serving them is `want`, at most
/// 500 rounds of 4 calls 10 ms apart.
async fn until_served_by(client: &mut SimpleClient<BalancedChannel>, want: &[&Backend]) -> bool {
    let want: HashSet<String> = want.iter().map(|b| b.addr.to_string()).collect();
    for _ in 0..500 {
        if served_by(client, 4).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn set(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status(SERVICE, status).await;
}

#[tokio::test]
async fn calls_stop_while_a_backend_is_not_serving_and_resume_when_it_serves_again() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (a, a_health) = Backend::start_with_health(SERVICE);
        let (b, _b_health) = Backend::start_with_health(SERVICE);
        let channel = channel(static_target(&[&a, &b]), "round_robin");
        channel
            .wait_until_ready(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        assert!(until_served_by(&mut client, &[&a, &b]).await);

        set(&a_health, ServingStatus::NotServing).await;
        assert!(until_served_by(&mut client, &[&b]).await, "a is left out");
        let a_calls = a.calls();
        assert!(served_by(&mut client, 20).await.len() == 1);
        assert_eq!(a.calls(), a_calls, "no call reaches a NOT_SERVING backend");
        assert_eq!(channel.state(), ConnectivityState::Ready);

        set(&a_health, ServingStatus::Serving).await;
        assert!(until_served_by(&mut client, &[&a, &b]).await, "a is back");
        // The connection to a was kept throughout.
        assert_eq!(a.accepted_connections(), 1);
    })
    .await
    .expect("bounded");
}

/// One backend that is NOT_SERVING from the start, then SERVING, behind a
/// channel with `connections` connections per address.
async fn unhealthy_then_healthy(connections: usize) {
    let (a, a_health) = Backend::start_with_health(SERVICE);
    set(&a_health, ServingStatus::NotServing).await;
    let channel = BalancedChannel::builder(static_target(&[&a]))
        .service_config(health_config("round_robin"))
        .backoff(fast_backoff())
        .connections_per_address(connections)
        .build()
        .unwrap();
    let error = channel
        .wait_until_ready(Duration::from_millis(500))
        .await
        .unwrap_err();
    // A timeout, whose reason is the health check's verdict.
    assert!(error.is_timeout() && error.is_health(), "{error:?}");
    let error = error.to_string();
    assert!(error.contains("TRANSIENT_FAILURE"), "{error}");
    assert!(error.contains("NOT_SERVING"), "{error}");
    let mut client = SimpleClient::new(channel.clone());
    let status = route(&mut client, "x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let want = format!(
        "health check: NOT_SERVING from {}, service \"{SERVICE}\"",
        a.addr
    );
    assert!(status.message().contains(&want), "{status:?}");
    assert!(
        !status.message().contains("connection error"),
        "the connection is fine: {status:?}"
    );
    assert_eq!(a.calls(), 0);
    assert_eq!(a.open_connections(), connections, "the connections stay up");

    set(&a_health, ServingStatus::Serving).await;
    channel
        .wait_until_ready(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(route(&mut client, "y").await.unwrap(), a.addr.to_string());
}

#[tokio::test]
async fn with_every_backend_unhealthy_calls_fail_with_the_health_status() {
    tokio::time::timeout(TEST_LIMIT, unhealthy_then_healthy(1))
        .await
        .expect("bounded");
}

#[tokio::test]
async fn a_pool_of_connections_is_health_checked_too() {
    tokio::time::timeout(TEST_LIMIT, unhealthy_then_healthy(3))
        .await
        .expect("bounded");
}

#[tokio::test]
async fn a_backend_without_a_health_service_still_gets_calls() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = Backend::start();
        let channel = channel(static_target(&[&a]), "round_robin");
        channel
            .wait_until_ready(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel);
        assert_eq!(route(&mut client, "x").await.unwrap(), a.addr.to_string());
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn pick_first_at_the_top_does_no_health_checking() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (a, a_health) = Backend::start_with_health(SERVICE);
        set(&a_health, ServingStatus::NotServing).await;
        let channel = channel(static_target(&[&a]), "pick_first");
        channel
            .wait_until_ready(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel);
        assert_eq!(route(&mut client, "x").await.unwrap(), a.addr.to_string());
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn the_resolvers_service_config_turns_health_checking_on_and_off() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (a, a_health) = Backend::start_with_health(SERVICE);
        let b = Backend::start();
        set(&a_health, ServingStatus::NotServing).await;
        let resolver = ManualResolver::new("health");
        let channel = BalancedChannel::builder("health:///x")
            .resolver_builder(resolver.clone())
            .backoff(fast_backoff())
            .build()
            .unwrap();
        let addresses = vec![Address::from(a.addr), Address::from(b.addr)];
        let update = |json: &str| {
            let config = ServiceConfig::from_json(json).unwrap();
            ResolverUpdate::new(addresses.clone()).with_service_config(config)
        };
        resolver.update_state(update(&health_config("round_robin")));
        let mut client = SimpleClient::new(channel);
        assert!(until_served_by(&mut client, &[&b]).await, "a is unhealthy");
        // A config the channel rejects (no policy it knows) changes
        // nothing, its missing healthCheckConfig included: a stays out.
        resolver.update_state(update(r#"{"loadBalancingConfig":[{"no_such_policy":{}}]}"#));
        let mut served = HashSet::new();
        for _ in 0..50 {
            served.extend(served_by(&mut client, 4).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            served,
            HashSet::from([b.addr.to_string()]),
            "a is still unhealthy"
        );
        // The same policy without healthCheckConfig: a serves again.
        resolver.update_state(update(r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#));
        assert!(until_served_by(&mut client, &[&a, &b]).await);
    })
    .await
    .expect("bounded");
}

/// A health service whose first `Watch` stream answers SERVING and then
/// fails; later streams answer SERVING and stay open.
#[derive(Clone, Default)]
struct FailsFirstStream {
    watches: Arc<AtomicUsize>,
}

type WatchStream =
    Pin<Box<dyn futures_core::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for FailsFirstStream {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Err(Status::unimplemented("only Watch"))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        let first = self.watches.fetch_add(1, Ordering::SeqCst) == 0;
        let serving = HealthCheckResponse {
            status: WireStatus::Serving as i32,
        };
        let stream = futures_util::stream::once(async move { Ok(serving) });
        let stream: WatchStream = if first {
            let fail = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err(Status::unavailable("health stream broken"))
            };
            Box::pin(futures_util::StreamExt::chain(
                stream,
                futures_util::stream::once(fail),
            ))
        } else {
            Box::pin(futures_util::StreamExt::chain(
                stream,
                futures_util::stream::pending(),
            ))
        };
        Ok(Response::new(stream))
    }
}

#[tokio::test]
async fn a_health_stream_that_fails_is_restarted_on_the_same_connection() {
    tokio::time::timeout(TEST_LIMIT, async {
        let health = FailsFirstStream::default();
        let watches = health.watches.clone();
        let a = Backend::start_with_health_service(health);
        let channel = channel(static_target(&[&a]), "round_robin");
        channel
            .wait_until_ready(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        assert_eq!(route(&mut client, "x").await.unwrap(), a.addr.to_string());
        assert!(
            support::eventually(Duration::from_secs(20), || watches.load(Ordering::SeqCst)
                >= 2)
            .await
        );
        channel
            .wait_until_ready(Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(route(&mut client, "y").await.unwrap(), a.addr.to_string());
        assert_eq!(a.accepted_connections(), 1, "the connection was kept");
        assert_eq!(watches.load(Ordering::SeqCst), 2, "restarted once");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_grpcio_servers_health_service_is_followed() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut a = GrpcioServer::start(&["--health-service", SERVICE]);
        let channel = channel(format!("static:///{}", a.addr), "round_robin");
        channel
            .wait_until_ready(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        assert!(route(&mut client, "x").await.is_ok());
        a.command("NOT_SERVING");
        let mut failed = None;
        for _ in 0..500 {
            match route(&mut client, "y").await {
                Err(status) => {
                    failed = Some(status);
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let status = failed.expect("calls fail once grpcio reports NOT_SERVING");
        assert!(status.message().contains("NOT_SERVING"), "{status:?}");
        a.command("SERVING");
        channel
            .wait_until_ready(Duration::from_secs(10))
            .await
            .unwrap();
        assert!(route(&mut client, "z").await.is_ok());
    })
    .await
    .expect("bounded");
}

//! Connection pools (`connections_per_address`) and the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS, against real tonic backends on
//! 127.0.0.1.

mod support;

use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{eventually, static_target, Backend};
use tonic_balance::BalancedChannel;

const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn call(channel: BalancedChannel, data: String) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(SimpleRequest { data });
    request.set_timeout(Duration::from_secs(20));
    let reply = SimpleClient::new(channel).route(request).await?;
    Ok(reply.into_inner().value)
}

/// `n` calls at once; every result.
async fn concurrent(
    channel: &BalancedChannel,
    n: usize,
    data: &str,
) -> Vec<Result<String, tonic::Status>> {
    let calls: Vec<_> = (0..n)
        .map(|i| tokio::spawn(call(channel.clone(), format!("{data}{i}"))))
        .collect();
    let mut results = Vec::new();
    for handle in calls {
        results.push(handle.await.expect("the call task ends"));
    }
    results
}

#[tokio::test]
async fn a_pool_of_four_is_seen_by_the_server_as_four_connections() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let channel = BalancedChannel::builder(static_target(&[&backend]))
            .connections_per_address(4)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            eventually(Duration::from_secs(10), || backend.open_connections() == 4).await,
            "{} connections",
            backend.open_connections()
        );
        for result in concurrent(&channel, 32, "sleep:").await {
            result.unwrap();
        }
        // Still four: calls spread over the pool, none opened another.
        assert_eq!(backend.accepted_connections(), 4);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn twenty_concurrent_calls_to_a_server_allowing_two_streams_all_succeed() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start_with_stream_limit(2, Duration::from_millis(20));
        for pool in [1, 3] {
            let channel = BalancedChannel::builder(static_target(&[&backend]))
                .connections_per_address(pool)
                .connect(Duration::from_secs(10))
                .await
                .unwrap();
            for result in concurrent(&channel, 20, "call ").await {
                result.unwrap_or_else(|status| panic!("pool {pool}: {status:?}"));
            }
        }
        assert_eq!(backend.calls(), 40);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_pooled_connection_drained_by_goaway_is_replaced_without_failing_calls_on_the_others() {
    tokio::time::timeout(TEST_LIMIT, async {
        // Every connection is told to go away 300 ms after it opened.
        let backend = Backend::start_with_max_age(Duration::from_millis(300));
        let channel = BalancedChannel::builder(static_target(&[&backend]))
            .connections_per_address(3)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        let mut rounds = 0;
        while tokio::time::Instant::now() < until && rounds < 500 {
            for result in concurrent(&channel, 8, "sleep:5 ").await {
                result.unwrap();
            }
            rounds += 1;
        }
        assert!(
            backend.accepted_connections() > 3,
            "connections were replaced: {}",
            backend.accepted_connections()
        );
    })
    .await
    .expect("bounded");
}

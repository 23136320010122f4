//! Outlier detection (gRFC A50) against five real tonic backends, with a
//! short interval and ejection time in the config; every wait is a bounded
//! loop of calls.

mod support;

use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::{route, static_target, Backend};
use tonic_balance::BalancedChannel;

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// round_robin under outlier detection: failure percentage above 50 % of
/// at least 5 calls, every 300 ms (each backend gets far more than 5 calls
/// in 300 ms of back-to-back calls, even on a loaded machine); ejections
/// of 1 s (x the ejection count, at most 3 s); at most 20 % of five
/// backends (one) ejected.
const CONFIG: &str = r#"{"loadBalancingConfig":[{"outlier_detection_experimental":{
    "interval":"0.3s","baseEjectionTime":"1s","maxEjectionTime":"3s","maxEjectionPercent":20,
    "failurePercentageEjection":{"threshold":50,"requestVolume":5,"minimumHosts":5},
    "childPolicy":[{"round_robin":{}}]}}]}"#;

async fn channel(backends: &[&Backend]) -> SimpleClient<BalancedChannel> {
    let channel = BalancedChannel::builder(static_target(backends))
        .service_config(CONFIG)
        .build()
        .unwrap();
    channel
        .wait_until_ready(Duration::from_secs(10))
        .await
        .unwrap();
    // Every backend connected before counting.
    let all_up = support::eventually(Duration::from_secs(10), || {
        backends.iter().all(|b| b.open_connections() == 1)
    })
    .await;
    assert!(all_up);
    SimpleClient::new(channel)
}

/// Which of `watched` received a call during 10 calls (a round robin over
/// at most five backends reaches each READY one at least twice).
async fn reached(client: &mut SimpleClient<BalancedChannel>, watched: &[&Backend]) -> Vec<bool> {
    let before: Vec<usize> = watched.iter().map(|b| b.calls()).collect();
    for i in 0..10 {
        let _ = route(client, &format!("call {i}")).await;
    }
    watched
        .iter()
        .zip(before)
        .map(|(b, n)| b.calls() > n)
        .collect()
}

#[tokio::test]
async fn a_backend_failing_most_calls_is_ejected_and_returns_after_the_ejection_time() {
    tokio::time::timeout(TEST_LIMIT, async {
        let bad = Backend::start_failing_nine_in_ten();
        let good: Vec<Backend> = (0..4).map(|_| Backend::start()).collect();
        let mut all: Vec<&Backend> = good.iter().collect();
        all.push(&bad);
        let mut client = channel(&all).await;
        // Calls until a window of 10 calls misses the bad backend: ejected.
        let mut ejected = false;
        for _ in 0..500 {
            if reached(&mut client, &[&bad]).await == [false] {
                ejected = true;
                break;
            }
        }
        assert!(ejected, "the failing backend is ejected");
        // The good ones keep taking every call meanwhile.
        for _ in 0..3 {
            let calls: Vec<bool> = reached(&mut client, &all).await;
            assert_eq!(
                calls,
                [true, true, true, true, false],
                "only the bad one is out"
            );
        }
        // After the ejection time it gets calls again.
        let mut back = false;
        for _ in 0..500 {
            if reached(&mut client, &[&bad]).await == [true] {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(back, "un-ejected after the ejection time");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn never_more_than_max_ejection_percent_of_the_backends_are_ejected() {
    tokio::time::timeout(TEST_LIMIT, async {
        let bad: Vec<Backend> = (0..2)
            .map(|_| Backend::start_failing_nine_in_ten())
            .collect();
        let good: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
        let mut all: Vec<&Backend> = good.iter().collect();
        all.extend(bad.iter());
        let mut client = channel(&all).await;
        let watched = [&bad[0], &bad[1]];
        let mut one_out = 0;
        for _ in 0..300 {
            let calls = reached(&mut client, &watched).await;
            assert_ne!(
                calls,
                [false, false],
                "both failing backends ejected at once"
            );
            if calls.contains(&false) {
                one_out += 1;
            }
        }
        assert!(one_out > 0, "one failing backend was ejected");
    })
    .await
    .expect("bounded");
}

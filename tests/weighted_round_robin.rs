//! `weighted_round_robin` (gRFC A58) against real tonic backends on
//! 127.0.0.1.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::{route, Backend};
use tonic_balance::BalancedChannel;

const TEST_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn static_weights_1_2_3_split_calls_1_2_3() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
        let entries: Vec<String> = (backends.iter().zip(1..))
            .map(|(b, weight)| format!("{};weight={weight}", b.addr))
            .collect();
        let channel = BalancedChannel::builder(format!("static:///{}", entries.join(",")))
            .balancer("weighted_round_robin")
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel);
        // READY as soon as one is: wait until every backend has had a call.
        for _ in 0..200 {
            route(&mut client, "warm-up").await.unwrap();
            if backends.iter().all(|b| b.calls() > 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before: Vec<usize> = backends.iter().map(Backend::calls).collect();
        let mut by_addr: HashMap<String, usize> = HashMap::new();
        for i in 0..3000 {
            let peer = route(&mut client, &format!("call {i}")).await.unwrap();
            *by_addr.entry(peer).or_default() += 1;
        }
        for ((backend, weight), before) in backends.iter().zip(1..).zip(before) {
            let got = backend.calls() - before;
            let want = 500 * weight;
            assert_eq!(by_addr[&backend.addr.to_string()], got);
            let off = (got as f64 - want as f64).abs() / 3000.0;
            assert!(
                off < 0.03,
                "weight {weight}: {got} of 3000 calls, want {want}"
            );
        }
    })
    .await
    .unwrap();
}

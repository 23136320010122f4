//! `least_request` (gRFC A48) against real tonic backends: a slow backend
//! next to fast ones gets far fewer calls (checked with a wide margin, no
//! timing asserted), and the calls in flight it
//! counts return to zero after every shape of call (unary, streaming,
//! failed, cancelled, past its deadline).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::echo::proto::echo_client::EchoClient;
use support::echo::proto::RepeatRequest;
use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{eventually, route, Backend};
use tonic::Code;
use tonic_balance::balancer::LeastRequestBuilder;
use tonic_balance::BalancedChannel;

const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn channel(target: String, total: &Arc<AtomicUsize>) -> BalancedChannel {
    BalancedChannel::builder(target)
        .balancer_builder(LeastRequestBuilder::new().counting_total(total.clone()))
        .connect(Duration::from_secs(10))
        .await
        .expect("READY")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_far_fewer_calls_at_concurrency_16() {
    tokio::time::timeout(TEST_LIMIT, async {
        let fast = [Backend::start(), Backend::start()];
        // With two choices among three endpoints, both samples are the
        // slow one for 1 call in 9, which it then gets whatever its load
        // (A48 samples with replacement, as Envoy does): a floor of 11 %.
        // Beyond that it gets a call only while it has fewer in flight
        // than a fast one, which its latency makes rare. 1 s, not the 50
        // ms of the issue: on a loaded 2-core machine a "fast" call can
        // take 50 to 100 ms, and the test is about the policy, not the
        // machine. A fair share would be a third; it must stay under a
        // sixth (measured: 84 of 800 with the machine at load 17).
        let slow = Backend::start_with("127.0.0.1:0".parse().unwrap(), Duration::from_secs(1));
        let target = format!("static:///{},{},{}", fast[0].addr, fast[1].addr, slow.addr);
        let channel = BalancedChannel::builder(target)
            .service_config(
                r#"{"loadBalancingConfig":[{"least_request_experimental":{"choiceCount":2}}]}"#,
            )
            .build()
            .expect("channel");
        // Every backend connected before the load starts.
        assert!(
            eventually(Duration::from_secs(10), || {
                fast.iter().all(|b| b.open_connections() == 1) && slow.open_connections() == 1
            })
            .await
        );
        channel
            .wait_until_ready(Duration::from_secs(10))
            .await
            .expect("READY");
        const WORKERS: usize = 16;
        const CALLS: usize = 50;
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let mut client = SimpleClient::new(channel.clone());
                tokio::spawn(async move {
                    for i in 0..CALLS {
                        route(&mut client, &format!("{i}")).await.expect("a call");
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        let total = WORKERS * CALLS;
        let slow_calls = slow.calls();
        let fast_calls: usize = fast.iter().map(Backend::calls).sum();
        assert_eq!(slow_calls + fast_calls, total);
        println!("the slow backend got {slow_calls} of {total} calls");
        // A fair share would be a third; least request gives it far less.
        assert!(
            slow_calls * 6 < total,
            "the slow backend got {slow_calls} of {total} calls"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn calls_in_flight_return_to_zero_after_every_shape_of_call() {
    tokio::time::timeout(TEST_LIMIT, async {
        let total = Arc::new(AtomicUsize::new(0));
        let in_flight = || total.load(Ordering::SeqCst);
        let backend = Backend::start();
        let simple = channel(format!("static:///{}", backend.addr), &total).await;
        let mut client = SimpleClient::new(simple.clone());

        // Unary, served.
        route(&mut client, "x").await.expect("served");
        assert_eq!(in_flight(), 0, "after a unary call");

        // Failed by the server.
        let status = route(&mut client, "fail:14").await.expect_err("fails");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(in_flight(), 0, "after a failed call");

        // Past its deadline while the backend sleeps.
        let mut request = tonic::Request::new(SimpleRequest {
            data: "sleep:30000".into(),
        });
        request.set_timeout(Duration::from_millis(200));
        let status = client.route(request).await.expect_err("too slow");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(in_flight(), 0, "after a call past its deadline");

        // Cancelled by the caller while in flight: counted until then.
        let calls_before = backend.calls();
        let mut slow_client = SimpleClient::new(simple.clone());
        let call = tokio::spawn(async move {
            let request = SimpleRequest {
                data: "sleep:30000".into(),
            };
            slow_client.route(request).await
        });
        assert!(eventually(Duration::from_secs(10), || backend.calls() > calls_before).await);
        assert_eq!(in_flight(), 1, "counted while in flight");
        call.abort();
        let _ = call.await;
        assert_eq!(in_flight(), 0, "after a cancelled call");

        // Server streaming: counted until the stream's trailers.
        let echo = support::echo::start(Duration::from_millis(1)).await;
        let streaming = channel(format!("static:///{echo}"), &total).await;
        let mut client = EchoClient::new(streaming);
        let request = RepeatRequest {
            data: b"m".to_vec(),
            count: 3,
        };
        let mut stream = client.repeat(request).await.expect("headers").into_inner();
        assert!(stream.message().await.expect("a message").is_some());
        assert_eq!(in_flight(), 1, "counted while streaming");
        while stream.message().await.expect("messages").is_some() {}
        assert_eq!(in_flight(), 0, "after a stream ended");
        // A stream dropped midway.
        let request = RepeatRequest {
            data: b"m".to_vec(),
            count: 1000,
        };
        let mut stream = client.repeat(request).await.expect("headers").into_inner();
        assert!(stream.message().await.expect("a message").is_some());
        drop(stream);
        assert_eq!(in_flight(), 0, "after a stream dropped");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_bad_config_is_an_error_naming_the_policy_as_written() {
    for name in ["least_request_experimental", "least_request"] {
        let config = format!(r#"{{"loadBalancingConfig":[{{"{name}":{{"choiceCount":1}}}}]}}"#);
        let err = BalancedChannel::builder("static:///127.0.0.1:1")
            .service_config(config)
            .build()
            .unwrap_err();
        assert!(err.is_config(), "{err}");
        let want = format!("{name}: \"choiceCount\" must be at least 2, not 1");
        assert!(err.to_string().contains(&want), "{err}");
    }
}

//! `weighted_round_robin` (gRFC A58) against real tonic backends on
//! 127.0.0.1.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{route, simple_server, Backend};
use tonic_balance::orca::{self, OrcaLayer, ServerMetricsRecorder};
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

/// A `Simple` backend on the test's runtime whose responses carry
/// `recorder`'s ORCA report.
async fn orca_backend(recorder: ServerMetricsRecorder) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(OrcaLayer::new(recorder))
            .add_service(simple_server(addr))
            .serve_with_incoming(incoming),
    );
    addr
}

#[tokio::test]
async fn the_orca_layer_puts_the_recorders_report_in_every_responses_trailers() {
    tokio::time::timeout(TEST_LIMIT, async {
        let recorder = ServerMetricsRecorder::new();
        recorder.set_cpu_utilization(0.75);
        recorder.set_qps(40.0);
        let addr = orca_backend(recorder.clone()).await;
        let channel = BalancedChannel::builder(format!("static:///{addr}"))
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel);
        for cpu in [0.75, 0.25] {
            recorder.set_cpu_utilization(cpu);
            let request = SimpleRequest { data: "x".into() };
            let response = client.route(request).await.unwrap();
            // tonic merges a unary call's trailers into its metadata.
            let headers = response.metadata().clone().into_headers();
            let report = orca::from_trailers(&headers).expect("a report");
            assert_eq!((report.cpu_utilization, report.rps_fractional), (cpu, 40.0));
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn backends_reporting_utilization_0_9_0_5_0_1_get_calls_inversely_to_it() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut addrs = Vec::new();
        for utilization in [0.9, 0.5, 0.1] {
            let recorder = ServerMetricsRecorder::new();
            recorder.set_cpu_utilization(utilization);
            recorder.set_qps(100.0);
            addrs.push(orca_backend(recorder).await.to_string());
        }
        let config = r#"{"loadBalancingConfig":[{"weighted_round_robin":
            {"blackoutPeriod":"0s","weightUpdatePeriod":"0.1s"}}]}"#;
        let channel = BalancedChannel::builder(format!("static:///{}", addrs.join(",")))
            .service_config(config)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel);
        // Weights 100/0.9 : 100/0.5 : 100/0.1, i.e. 1 : 1.8 : 9 of 11.8.
        let want = [1.0 / 11.8, 1.8 / 11.8, 9.0 / 11.8];
        let mut last = HashMap::new();
        for _ in 0..50 {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for i in 0..1000 {
                let peer = route(&mut client, &format!("call {i}")).await.unwrap();
                *counts.entry(peer).or_default() += 1;
            }
            let close = addrs.iter().zip(want).all(|(addr, want)| {
                let got = counts.get(addr).copied().unwrap_or(0) as f64 / 1000.0;
                (got - want).abs() < 0.05
            });
            if close {
                return;
            }
            last = counts;
            // The next weight update.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        panic!("calls never converged to {want:?} of {addrs:?}: last {last:?}");
    })
    .await
    .unwrap();
}

//! `weighted_round_robin` (gRFC A58) against real tonic backends on
//! 127.0.0.1.

mod support;

use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{route, simple_server, tally, Backend};
use tonic_balance::orca::{self, OrcaLayer, OrcaOobService, ServerMetricsRecorder};
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
        let by_addr = tally(&mut client, 3000).await;
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

/// Each backend's share of 1,000 calls, in the order of `addrs`.
async fn shares(client: &mut SimpleClient<BalancedChannel>, addrs: &[String]) -> Vec<f64> {
    let counts = tally(client, 1000).await;
    let share = |addr| counts.get(addr).copied().unwrap_or(0) as f64 / 1000.0;
    addrs.iter().map(share).collect()
}

fn close(got: &[f64], want: &[f64]) -> bool {
    got.iter()
        .zip(want)
        .all(|(got, want)| (got - want).abs() < 0.05)
}

/// Sends rounds of 1,000 calls (at most 50, 150 ms apart: a few weight
/// updates each) until each backend's share is within 0.05 of `want`.
async fn converges_to(client: &mut SimpleClient<BalancedChannel>, addrs: &[String], want: &[f64]) {
    let mut last = Vec::new();
    for _ in 0..50 {
        last = shares(client, addrs).await;
        if close(&last, want) {
            return;
        }
        // The next weight update.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!("calls never converged to {want:?} of {addrs:?}: last {last:?}");
}

/// A client of `addrs` with `config`'s weighted_round_robin.
async fn wrr_client(addrs: &[String], config: &str) -> SimpleClient<BalancedChannel> {
    let config = format!(r#"{{"loadBalancingConfig":[{{"weighted_round_robin":{config}}}]}}"#);
    let channel = BalancedChannel::builder(format!("static:///{}", addrs.join(",")))
        .service_config(config)
        .connect(Duration::from_secs(10))
        .await
        .unwrap();
    SimpleClient::new(channel)
}

/// A recorder reporting `utilization` at 100 qps.
fn recorder(utilization: f64) -> ServerMetricsRecorder {
    let recorder = ServerMetricsRecorder::new();
    recorder.set_cpu_utilization(utilization);
    recorder.set_qps(100.0);
    recorder
}

/// Weights 100/0.9 : 100/0.5 : 100/0.1, i.e. 1 : 1.8 : 9 of 11.8.
const SHARES_0_9_0_5_0_1: [f64; 3] = [1.0 / 11.8, 1.8 / 11.8, 9.0 / 11.8];

#[tokio::test]
async fn backends_reporting_utilization_0_9_0_5_0_1_get_calls_inversely_to_it() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut addrs = Vec::new();
        for utilization in [0.9, 0.5, 0.1] {
            addrs.push(orca_backend(recorder(utilization)).await.to_string());
        }
        let config = r#"{"blackoutPeriod":"0s","weightUpdatePeriod":"0.1s"}"#;
        let mut client = wrr_client(&addrs, config).await;
        converges_to(&mut client, &addrs, &SHARES_0_9_0_5_0_1).await;
    })
    .await
    .unwrap();
}

/// A `Simple` backend on the test's runtime that serves ORCA's
/// out-of-band service with `recorder`'s report (at most every 50 ms),
/// and no per-call reports.
async fn oob_backend(recorder: ServerMetricsRecorder) -> std::net::SocketAddr {
    // A recorder with nothing set adds no per-call reports.
    oob_and_per_call_backend(recorder, ServerMetricsRecorder::new()).await
}

/// [`oob_backend`], with `per_call`'s reports on every response too.
async fn oob_and_per_call_backend(
    recorder: ServerMetricsRecorder,
    per_call: ServerMetricsRecorder,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let oob = OrcaOobService::new(recorder).min_reporting_interval(Duration::from_millis(50));
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(OrcaLayer::new(per_call))
            .add_service(simple_server(addr))
            .add_service(oob.into_server())
            .serve_with_incoming(incoming),
    );
    addr
}

const OOB_CONFIG: &str = r#"{"enableOobLoadReport":true,"oobReportingPeriod":"0.05s",
    "blackoutPeriod":"0s","weightUpdatePeriod":"0.1s"}"#;

#[tokio::test]
async fn out_of_band_reports_of_utilization_0_9_0_5_0_1_split_calls_inversely_to_it() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut addrs = Vec::new();
        for utilization in [0.9, 0.5, 0.1] {
            addrs.push(oob_backend(recorder(utilization)).await.to_string());
        }
        let mut client = wrr_client(&addrs, OOB_CONFIG).await;
        converges_to(&mut client, &addrs, &SHARES_0_9_0_5_0_1).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn with_out_of_band_reports_on_per_call_reports_are_ignored() {
    tokio::time::timeout(TEST_LIMIT, async {
        // Out of band 0.9, 0.5, 0.1; per call the other way round.
        let mut addrs = Vec::new();
        for (oob, per_call) in [(0.9, 0.1), (0.5, 0.5), (0.1, 0.9)] {
            let addr = oob_and_per_call_backend(recorder(oob), recorder(per_call)).await;
            addrs.push(addr.to_string());
        }
        let mut client = wrr_client(&addrs, OOB_CONFIG).await;
        converges_to(&mut client, &addrs, &SHARES_0_9_0_5_0_1).await;
        // A few weight updates later, the per-call reports of those calls
        // have changed nothing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = shares(&mut client, &addrs).await;
        assert!(close(&got, &SHARES_0_9_0_5_0_1), "{got:?} of {addrs:?}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_backend_without_the_orca_service_gets_the_mean_weight_of_the_others() {
    tokio::time::timeout(TEST_LIMIT, async {
        let with = [
            oob_backend(recorder(0.9)).await,
            oob_backend(recorder(0.1)).await,
        ];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let without = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(simple_server(without))
                .serve_with_incoming(incoming),
        );
        let addrs = [with[0], with[1], without].map(|a| a.to_string());
        let mut client = wrr_client(&addrs, OOB_CONFIG).await;
        // 100/0.9 : 100/0.1 : their mean, i.e. 1 : 9 : 5 of 15.
        converges_to(&mut client, &addrs, &[1.0 / 15.0, 9.0 / 15.0, 5.0 / 15.0]).await;
    })
    .await
    .unwrap();
}

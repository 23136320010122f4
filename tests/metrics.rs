//! gRPC's OpenTelemetry instruments (feature `otel`), read back through
//! the OpenTelemetry SDK's in-memory exporter, against real tonic
//! backends on 127.0.0.1 and a refused port.
#![cfg(feature = "otel")]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use support::{fast_backoff, Backend, ClosedPort};
use tonic_balance::BalancedChannel;

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// One data point: instrument name, unit, labels, value (a histogram's
/// count).
#[derive(Debug, Clone)]
struct Point {
    name: String,
    unit: String,
    labels: BTreeMap<String, String>,
    value: f64,
    /// A histogram's bucket boundaries.
    bounds: Vec<f64>,
    /// A histogram's sum (a counter's value).
    total: f64,
    /// A histogram's largest value.
    max: f64,
}

struct Recorder {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

impl Recorder {
    fn new() -> Recorder {
        let exporter = InMemoryMetricExporter::default();
        let reader = PeriodicReader::builder(exporter.clone()).build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        Recorder { provider, exporter }
    }

    /// Every point of the last export (cumulative: the totals so far).
    fn points(&self) -> Vec<Point> {
        self.exporter.reset();
        self.provider.force_flush().unwrap();
        let exported = self.exporter.get_finished_metrics().unwrap();
        let mut points = Vec::new();
        for resource in exported.iter().rev().take(1) {
            for scope in resource.scope_metrics() {
                for metric in scope.metrics() {
                    collect(metric, &mut points);
                }
            }
        }
        points
    }
}

fn sum(points: &[Point], name: &str, with: &[(&str, &str)]) -> f64 {
    fold(points, name, with, |p| p.value)
}

/// The sum of the matching histograms' sums.
fn total(points: &[Point], name: &str, with: &[(&str, &str)]) -> f64 {
    fold(points, name, with, |p| p.total)
}

/// The sum of `field` over the points of `name` with labels `with`.
fn fold(points: &[Point], name: &str, with: &[(&str, &str)], field: fn(&Point) -> f64) -> f64 {
    points
        .iter()
        .filter(|p| p.name == name)
        .filter(|p| {
            with.iter()
                .all(|(k, v)| p.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(field)
        .sum()
}

fn collect(metric: &opentelemetry_sdk::metrics::data::Metric, out: &mut Vec<Point>) {
    let labels = |attrs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
        attrs
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    let mut push = |labels, value, bounds, total, max| {
        out.push(Point {
            max,
            name: metric.name().to_owned(),
            unit: metric.unit().to_owned(),
            labels,
            value,
            bounds,
            total,
        })
    };
    match metric.data() {
        AggregatedMetrics::U64(MetricData::Sum(s)) => {
            for p in s.data_points() {
                let value = p.value() as f64;
                push(labels(&mut p.attributes()), value, Vec::new(), value, value);
            }
        }
        AggregatedMetrics::I64(MetricData::Sum(s)) => {
            for p in s.data_points() {
                let value = p.value() as f64;
                push(labels(&mut p.attributes()), value, Vec::new(), value, value);
            }
        }
        AggregatedMetrics::F64(MetricData::Histogram(h)) => {
            for p in h.data_points() {
                push(
                    labels(&mut p.attributes()),
                    p.count() as f64,
                    p.bounds().collect(),
                    p.sum(),
                    p.max().unwrap_or(0.0),
                );
            }
        }
        AggregatedMetrics::U64(MetricData::Histogram(h)) => {
            for p in h.data_points() {
                push(
                    labels(&mut p.attributes()),
                    p.count() as f64,
                    p.bounds().collect(),
                    p.sum() as f64,
                    p.max().unwrap_or(0) as f64,
                );
            }
        }
        _ => {}
    }
}

/// Polls `check` on the recorder every 20 ms for at most 10 s.
async fn until(recorder: &Recorder, what: &str, mut check: impl FnMut(&[Point]) -> bool) {
    for _ in 0..500 {
        if check(&recorder.points()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: never true; points: {:#?}", recorder.points());
}

#[tokio::test]
async fn subchannel_instruments_count_attempts_goaway_disconnections_and_shutdown_with_a94_names() {
    tokio::time::timeout(TEST_LIMIT, async {
        let recorder = Recorder::new();
        // GOAWAY(NO_ERROR) on every connection after 300 ms (tonic's
        // max_connection_age).
        let backend = Backend::start_with_max_age(Duration::from_millis(300));
        let refused = ClosedPort::new();
        let target = format!("static:///{},{}", backend.addr, refused.addr);
        let channel = BalancedChannel::builder(&target)
            .balancer("round_robin")
            .backoff(fast_backoff())
            .meter_provider(&recorder.provider)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let labels = [
            ("grpc.target", target.as_str()),
            ("grpc.lb.backend_service", ""),
            ("grpc.lb.locality", ""),
        ];
        // A call open when the GOAWAY comes keeps the connection
        // draining, so the GOAWAY is what takes it out of READY (an idle
        // one closes at once: see the graceful shutdown test below).
        let mut client = support::proto::simple_client::SimpleClient::new(channel.clone());
        let call = tokio::spawn(async move { support::route(&mut client, "sleep:1500").await });
        let goaway = [("grpc.disconnect_error", "GOAWAY NO_ERROR")];
        until(&recorder, "a GOAWAY disconnection and 2 refusals", |p| {
            sum(p, "grpc.subchannel.disconnections", &goaway) >= 1.0
                && sum(p, "grpc.subchannel.connection_attempts_failed", &labels) >= 2.0
                && sum(p, "grpc.subchannel.connection_attempts_succeeded", &labels) >= 2.0
        })
        .await;
        call.await
            .unwrap()
            .expect("the draining connection finishes its call");
        let points = recorder.points();
        for (name, unit) in [
            ("grpc.subchannel.connection_attempts_succeeded", "{attempt}"),
            ("grpc.subchannel.connection_attempts_failed", "{attempt}"),
            ("grpc.subchannel.disconnections", "{disconnection}"),
            ("grpc.subchannel.open_connections", "{connection}"),
        ] {
            let point = points
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("no {name} in {points:#?}"));
            assert_eq!(point.unit, unit, "{name}");
            for (key, value) in labels {
                assert_eq!(
                    point.labels.get(key).map(String::as_str),
                    Some(value),
                    "{name} {key}"
                );
            }
        }
        // Open: the successes less the disconnections, 0 or 1 now.
        let open = sum(&points, "grpc.subchannel.open_connections", &labels);
        let made = sum(
            &points,
            "grpc.subchannel.connection_attempts_succeeded",
            &labels,
        );
        let lost = sum(&points, "grpc.subchannel.disconnections", &labels);
        assert_eq!(open, made - lost, "{points:#?}");

        // The channel dropped while connected: `subchannel shutdown`, and
        // nothing open.
        until(&recorder, "connected again", |p| {
            sum(p, "grpc.subchannel.open_connections", &labels) == 1.0
        })
        .await;
        drop(channel);
        let shutdown = [("grpc.disconnect_error", "subchannel shutdown")];
        until(&recorder, "a shutdown disconnection", |p| {
            sum(p, "grpc.subchannel.disconnections", &shutdown) >= 1.0
                && sum(p, "grpc.subchannel.open_connections", &labels) == 0.0
        })
        .await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_graceful_server_shutdown_is_a_goaway_no_error_disconnection() {
    tokio::time::timeout(TEST_LIMIT, async {
        let recorder = Recorder::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // hyper's graceful shutdown: GOAWAY(NO_ERROR), a PING, a second
        // GOAWAY, then the socket closes.
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(support::simple_server(addr))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        let channel = BalancedChannel::builder(format!("static:///{addr}"))
            .backoff(fast_backoff())
            .meter_provider(&recorder.provider)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = support::proto::simple_client::SimpleClient::new(channel.clone());
        support::route(&mut client, "x").await.unwrap();
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        until(&recorder, "a disconnection", |p| {
            sum(p, "grpc.subchannel.disconnections", &[]) >= 1.0
        })
        .await;
        let points = recorder.points();
        let goaway = [("grpc.disconnect_error", "GOAWAY NO_ERROR")];
        assert_eq!(
            sum(&points, "grpc.subchannel.disconnections", &goaway),
            1.0,
            "{points:#?}"
        );
    })
    .await
    .unwrap();
}

/// gRFC A66's latency buckets, copied from the gRFC ("Buckets for
/// histograms in default views") on purpose rather than imported from the
/// crate: the test holds the crate's table to the spec, which a shared
/// constant could not do.
const LATENCY_BUCKETS: [f64; 41] = [
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

#[tokio::test]
async fn per_call_instruments_record_attempts_and_durations_by_method_target_and_status() {
    tokio::time::timeout(TEST_LIMIT, async {
        let recorder = Recorder::new();
        let backend = Backend::start();
        let target = format!("static:///{}", backend.addr);
        let channel = BalancedChannel::builder(&target)
            .meter_provider(&recorder.provider)
            .metrics_methods(["/proto.Simple/Route"])
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = support::proto::simple_client::SimpleClient::new(channel);
        for i in 0..3 {
            support::route(&mut client, &format!("ok {i}"))
                .await
                .unwrap();
        }
        support::route(&mut client, "fail:13").await.unwrap_err();

        let points = recorder.points();
        let call = [
            ("grpc.method", "proto.Simple/Route"),
            ("grpc.target", target.as_str()),
        ];
        let with = |status: &'static str| {
            let mut labels = call.to_vec();
            labels.push(("grpc.status", status));
            labels
        };
        assert_eq!(sum(&points, "grpc.client.attempt.started", &call), 4.0);
        for name in ["grpc.client.attempt.duration", "grpc.client.call.duration"] {
            assert_eq!(sum(&points, name, &with("OK")), 3.0, "{name} {points:#?}");
            assert_eq!(sum(&points, name, &with("INTERNAL")), 1.0, "{name}");
            let point = points.iter().find(|p| p.name == name).unwrap();
            assert_eq!(point.unit, "s");
            assert_eq!(point.bounds, LATENCY_BUCKETS, "{name}: A66's buckets");
        }
        let started = points
            .iter()
            .find(|p| p.name == "grpc.client.attempt.started")
            .unwrap();
        assert_eq!(started.unit, "{attempt}");
        assert!(!started.labels.contains_key("grpc.status"));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn methods_not_registered_are_recorded_as_other_and_failed_picks_count_as_calls() {
    tokio::time::timeout(TEST_LIMIT, async {
        let recorder = Recorder::new();
        let refused = ClosedPort::new();
        let target = format!("static:///{}", refused.addr);
        let channel = BalancedChannel::builder(&target)
            .backoff(fast_backoff())
            .meter_provider(&recorder.provider)
            .build()
            .unwrap();
        let mut client = support::proto::simple_client::SimpleClient::new(channel.clone());
        // Fail fast once the address is refused: no attempt, one call.
        let mut states = channel.state_changes();
        states
            .wait_for(|s| *s == tonic_balance::ConnectivityState::TransientFailure)
            .await
            .unwrap();
        let status = support::route(&mut client, "x").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let points = recorder.points();
        let other = [
            ("grpc.method", "other"),
            ("grpc.target", target.as_str()),
            ("grpc.status", "UNAVAILABLE"),
        ];
        assert_eq!(
            sum(&points, "grpc.client.call.duration", &other),
            1.0,
            "{points:#?}"
        );
        assert_eq!(sum(&points, "grpc.client.attempt.started", &[]), 0.0);
    })
    .await
    .unwrap();
}

/// gRFC A66's size buckets, copied from the gRFC on purpose (see
/// [`LATENCY_BUCKETS`]).
const SIZE_BUCKETS: [f64; 14] = [
    0.0,
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

#[tokio::test]
async fn message_size_histograms_count_each_attempts_message_bytes_without_prefixes() {
    use prost::Message;
    use support::echo::proto::echo_client::EchoClient;
    use support::echo::proto::{EchoMessage, RepeatRequest};
    use support::proto::{SimpleRequest, SimpleResponse};

    tokio::time::timeout(TEST_LIMIT, async {
        let recorder = Recorder::new();
        let backend = Backend::start();
        let echo = support::echo::start(Duration::ZERO).await;
        let simple_target = format!("static:///{}", backend.addr);
        let echo_target = format!("static:///{echo}");
        let channel = |target: &str| {
            BalancedChannel::builder(target)
                .meter_provider(&recorder.provider)
                .metrics_methods([
                    "/proto.Simple/Route",
                    "/echo.Echo/Collect",
                    "/echo.Echo/Repeat",
                ])
                .build()
                .unwrap()
        };
        let sent = "grpc.client.attempt.sent_total_compressed_message_size";
        let rcvd = "grpc.client.attempt.rcvd_total_compressed_message_size";

        // Unary: one message each way, twice.
        let mut simple = support::proto::simple_client::SimpleClient::new(channel(&simple_target));
        for _ in 0..2 {
            support::route(&mut simple, "ok").await.unwrap();
        }
        let request = SimpleRequest { data: "ok".into() }.encoded_len();
        let response = SimpleResponse {
            code: 200,
            value: format!("hello ok from {}", backend.addr),
        }
        .encoded_len();
        let route = [
            ("grpc.method", "proto.Simple/Route"),
            ("grpc.target", simple_target.as_str()),
            ("grpc.status", "OK"),
        ];
        let points = recorder.points();
        assert_eq!(sum(&points, sent, &route), 2.0, "{points:#?}");
        assert_eq!(total(&points, sent, &route), (2 * request) as f64);
        assert_eq!(total(&points, rcvd, &route), (2 * response) as f64);

        // Client streaming: three messages, one beyond a DATA frame.
        let mut client = EchoClient::new(channel(&echo_target));
        let parts: Vec<_> = [10, 1000, 100_000]
            .iter()
            .map(|&n| EchoMessage { data: vec![7; n] })
            .collect();
        let request: usize = parts.iter().map(Message::encoded_len).sum();
        let reply = client
            .collect(tokio_stream::iter(parts))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.data.len(), 101_010);
        let collect = [
            ("grpc.method", "echo.Echo/Collect"),
            ("grpc.target", echo_target.as_str()),
            ("grpc.status", "OK"),
        ];
        let points = recorder.points();
        assert_eq!(sum(&points, sent, &collect), 1.0, "{points:#?}");
        assert_eq!(total(&points, sent, &collect), request as f64);
        assert_eq!(total(&points, rcvd, &collect), reply.encoded_len() as f64);

        // Server streaming: five messages back.
        let ask = RepeatRequest {
            data: vec![1; 300],
            count: 5,
        };
        let mut stream = client.repeat(ask.clone()).await.unwrap().into_inner();
        let mut received = 0;
        while let Some(m) = stream.message().await.unwrap() {
            received += m.encoded_len();
        }
        let one = EchoMessage { data: vec![1; 300] }.encoded_len();
        assert_eq!(received, 5 * one);
        let repeat = [
            ("grpc.method", "echo.Echo/Repeat"),
            ("grpc.target", echo_target.as_str()),
            ("grpc.status", "OK"),
        ];
        let points = recorder.points();
        assert_eq!(total(&points, sent, &repeat), ask.encoded_len() as f64);
        assert_eq!(total(&points, rcvd, &repeat), received as f64);

        for name in [sent, rcvd] {
            let point = points.iter().find(|p| p.name == name).unwrap();
            assert_eq!(point.unit, "By", "{name}");
            assert_eq!(point.bounds, SIZE_BUCKETS, "{name}: A66's buckets");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pick_first_counts_its_failed_attempts_its_selection_and_its_loss_with_a78_names() {
    tokio::time::timeout(TEST_LIMIT, async {
        let recorder = Recorder::new();
        let refused = ClosedPort::new();
        let mut backend = Backend::start();
        let target = format!("static:///{},{}", refused.addr, backend.addr);
        let channel = BalancedChannel::builder(&target)
            .backoff(fast_backoff())
            .meter_provider(&recorder.provider)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let labels = [("grpc.target", target.as_str())];
        let failed = "grpc.lb.pick_first.connection_attempts_failed";
        let succeeded = "grpc.lb.pick_first.connection_attempts_succeeded";
        let disconnections = "grpc.lb.pick_first.disconnections";
        let points = recorder.points();
        assert_eq!(sum(&points, succeeded, &labels), 1.0, "{points:#?}");
        assert_eq!(sum(&points, failed, &labels), 1.0, "the refused address");
        assert_eq!(sum(&points, disconnections, &labels), 0.0);

        // The selected connection is lost: one disconnection, and the
        // channel stays IDLE until a call (no attempt of its own).
        backend.kill();
        let mut states = channel.state_changes();
        states
            .wait_for(|s| *s == tonic_balance::ConnectivityState::Idle)
            .await
            .unwrap();
        let points = recorder.points();
        assert_eq!(sum(&points, disconnections, &labels), 1.0, "{points:#?}");
        for (name, unit) in [
            (succeeded, "{attempt}"),
            (failed, "{attempt}"),
            (disconnections, "{disconnection}"),
        ] {
            let point = points.iter().find(|p| p.name == name).unwrap();
            assert_eq!(point.unit, unit, "{name}");
            let keys: Vec<&str> = point.labels.keys().map(String::as_str).collect();
            assert_eq!(keys, ["grpc.target"], "{name}: A78's one label");
        }
    })
    .await
    .unwrap();
}

/// A `Simple` backend on the test's runtime whose responses carry
/// `recorder`'s ORCA report.
async fn orca_backend(
    recorder: tonic_balance::orca::ServerMetricsRecorder,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tonic_balance::orca::OrcaLayer::new(recorder))
            .add_service(support::simple_server(addr))
            .serve_with_incoming(incoming),
    );
    addr
}

#[tokio::test]
async fn weighted_round_robin_records_fallback_unusable_stale_and_weights_per_scheduler_update() {
    tokio::time::timeout(TEST_LIMIT, async {
        let recorder = Recorder::new();
        // Two backends report load (weights 100/0.5 = 200 and 100/0.25 =
        // 400); one reports nothing.
        let mut addrs = Vec::new();
        for utilization in [0.5, 0.25] {
            let orca = tonic_balance::orca::ServerMetricsRecorder::new();
            orca.set_cpu_utilization(utilization);
            orca.set_qps(100.0);
            addrs.push(orca_backend(orca).await.to_string());
        }
        let silent = Backend::start();
        addrs.push(silent.addr.to_string());
        let target = format!("static:///{}", addrs.join(","));
        let config = r#"{"loadBalancingConfig":[{"weighted_round_robin":{"blackoutPeriod":"0s",
            "weightUpdatePeriod":"0.1s","weightExpirationPeriod":"0.5s"}}]}"#;
        let channel = BalancedChannel::builder(&target)
            .service_config(config)
            .meter_provider(&recorder.provider)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let labels = [("grpc.target", target.as_str()), ("grpc.lb.locality", "")];
        let fallback = "grpc.lb.wrr.rr_fallback";
        let unusable = "grpc.lb.wrr.endpoint_weight_not_yet_usable";
        let stale = "grpc.lb.wrr.endpoint_weight_stale";
        let weights = "grpc.lb.wrr.endpoint_weights";
        // Before any report: round robin, every weight unusable.
        until(&recorder, "a first scheduler update", |p| {
            sum(p, fallback, &labels) >= 1.0 && sum(p, unusable, &labels) >= 1.0
        })
        .await;
        // Calls bring reports: both weights become usable (the silent
        // backend's stays unusable), recorded as they are.
        let mut client = support::proto::simple_client::SimpleClient::new(channel.clone());
        let heaviest = |p: &[Point]| {
            let point = p.iter().find(|p| p.name == weights);
            point.map_or(0.0, |p| p.max)
        };
        for _ in 0..100 {
            for _ in 0..6 {
                support::route(&mut client, "x").await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if heaviest(&recorder.points()) > 399.0 {
                break;
            }
        }
        let points = recorder.points();
        let max = heaviest(&points);
        assert!((max - 400.0).abs() < 1e-6, "weights: {points:#?}");
        assert_eq!(sum(&points, stale, &labels), 0.0);
        let unusable_before = sum(&points, unusable, &labels);
        until(&recorder, "the silent backend unusable again", |p| {
            sum(p, unusable, &labels) > unusable_before
        })
        .await;
        // No calls, no reports: after 0.5 s both weights are stale.
        until(&recorder, "two stale weights", |p| {
            sum(p, stale, &labels) >= 2.0
        })
        .await;
        let points = recorder.points();
        for (name, unit) in [
            (fallback, "{update}"),
            (unusable, "{endpoint}"),
            (stale, "{endpoint}"),
            (weights, "{weight}"),
        ] {
            let point = points
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("no {name}: {points:#?}"));
            assert_eq!(point.unit, unit, "{name}");
            assert_eq!(point.labels.len(), 2, "{name}: {:?}", point.labels);
        }
        drop(channel);
    })
    .await
    .unwrap();
}

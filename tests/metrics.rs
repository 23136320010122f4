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
    points
        .iter()
        .filter(|p| p.name == name)
        .filter(|p| {
            with.iter()
                .all(|(k, v)| p.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|p| p.value)
        .sum()
}

fn collect(metric: &opentelemetry_sdk::metrics::data::Metric, out: &mut Vec<Point>) {
    let labels = |attrs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
        attrs
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    let mut push = |labels, value, bounds| {
        out.push(Point {
            name: metric.name().to_owned(),
            unit: metric.unit().to_owned(),
            labels,
            value,
            bounds,
        })
    };
    match metric.data() {
        AggregatedMetrics::U64(MetricData::Sum(s)) => {
            for p in s.data_points() {
                push(labels(&mut p.attributes()), p.value() as f64, Vec::new());
            }
        }
        AggregatedMetrics::I64(MetricData::Sum(s)) => {
            for p in s.data_points() {
                push(labels(&mut p.attributes()), p.value() as f64, Vec::new());
            }
        }
        AggregatedMetrics::F64(MetricData::Histogram(h)) => {
            for p in h.data_points() {
                push(
                    labels(&mut p.attributes()),
                    p.count() as f64,
                    p.bounds().collect(),
                );
            }
        }
        AggregatedMetrics::U64(MetricData::Histogram(h)) => {
            for p in h.data_points() {
                push(
                    labels(&mut p.attributes()),
                    p.count() as f64,
                    p.bounds().collect(),
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
        // draining, so the GOAWAY is what ends it (an idle connection the
        // server closes right after its GOAWAY is `unknown`).
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

/// gRFC A66's latency buckets.
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

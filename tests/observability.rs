//! The state API (`BalancedChannel::state_changes`, `snapshot`) against
//! real tonic backends on 127.0.0.1 and a refused port.

mod support;

use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::{fast_backoff, route, Backend, ClosedPort};
use tonic::Code;
use tonic_balance::stats::SubchannelSnapshot;
use tonic_balance::{BalancedChannel, ConnectivityState};

const TEST_LIMIT: Duration = Duration::from_secs(60);

fn subchannel<'a>(subchannels: &'a [SubchannelSnapshot], addr: &str) -> &'a SubchannelSnapshot {
    subchannels
        .iter()
        .find(|s| s.address == addr)
        .unwrap_or_else(|| panic!("no subchannel for {addr} in {subchannels:?}"))
}

#[tokio::test]
async fn state_changes_follow_the_channel_from_connecting_to_ready_idle_failure_and_shutdown() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut backend = Backend::start();
        let channel = BalancedChannel::builder(format!("static:///{}", backend.addr))
            .backoff(fast_backoff())
            .build()
            .unwrap();
        let mut states = channel.state_changes();
        assert_eq!(*states.borrow_and_update(), ConnectivityState::Connecting);
        channel
            .wait_until_ready(Duration::from_secs(10))
            .await
            .unwrap();
        states
            .wait_for(|s| *s == ConnectivityState::Ready)
            .await
            .unwrap();
        // pick_first: a lost connection is IDLE; the next call reconnects
        // and the refused connection is TRANSIENT_FAILURE.
        backend.kill();
        states
            .wait_for(|s| *s == ConnectivityState::Idle)
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        let _ = route(&mut client, "after the kill").await;
        states
            .wait_for(|s| *s == ConnectivityState::TransientFailure)
            .await
            .unwrap();
        drop((client, channel));
        states
            .wait_for(|s| *s == ConnectivityState::Shutdown)
            .await
            .unwrap();
        assert!(states.changed().await.is_err(), "closed after SHUTDOWN");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn snapshot_counts_each_subchannels_connection_attempts_and_failures() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let refused = ClosedPort::new();
        let target = format!("static:///{},{}", backend.addr, refused.addr);
        let channel = BalancedChannel::builder(&target)
            .balancer("round_robin")
            .backoff(fast_backoff())
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        // Wait until the refused address failed a few times.
        let snapshot = loop {
            let snapshot = channel.snapshot().await;
            let bad = subchannel(&snapshot.subchannels, &refused.addr.to_string());
            if bad.connection_failures >= 3 {
                break snapshot;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(snapshot.target, target);
        assert_eq!(snapshot.policy, "round_robin");
        assert_eq!(snapshot.state, ConnectivityState::Ready);
        assert_eq!(snapshot.resolver.endpoints, 2);
        assert!(snapshot.resolver.updated.is_some() && snapshot.resolver.error.is_none());
        assert_eq!(snapshot.subchannels.len(), 2);

        let good = subchannel(&snapshot.subchannels, &backend.addr.to_string());
        assert_eq!(good.state, ConnectivityState::Ready);
        assert_eq!((good.connection_attempts, good.connection_failures), (1, 0));
        assert_eq!(good.last_error, None);
        assert!(good.last_change.is_some());

        let bad = subchannel(&snapshot.subchannels, &refused.addr.to_string());
        // Every failure was an attempt; one more may be under way.
        let (attempts, failures) = (bad.connection_attempts, bad.connection_failures);
        assert!(attempts == failures || attempts == failures + 1, "{bad:?}");
        assert_eq!(bad.calls_started, 0);
        let error = bad.last_error.as_deref().expect("the refusal is kept");
        assert!(
            error.contains(&refused.addr.to_string()) && error.contains("refused"),
            "{error}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn snapshot_counts_calls_started_succeeded_failed_and_in_flight_on_the_subchannel_that_served_them(
) {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let channel = BalancedChannel::builder(format!("static:///{}", backend.addr))
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        for i in 0..3 {
            route(&mut client, &format!("ok {i}")).await.unwrap();
        }
        for _ in 0..2 {
            let status = route(&mut client, "fail:13").await.unwrap_err();
            assert_eq!(status.code(), Code::Internal);
        }
        // One call held by the server while the snapshot is taken.
        let mut slow = client.clone();
        let held = tokio::spawn(async move { route(&mut slow, "sleep:1000").await });
        let counts = |s: &SubchannelSnapshot| {
            (
                s.calls_started,
                s.calls_succeeded,
                s.calls_failed,
                s.calls_in_flight,
            )
        };
        let addr = backend.addr.to_string();
        let mut during = None;
        for _ in 0..200 {
            let snapshot = channel.snapshot().await;
            let sc = subchannel(&snapshot.subchannels, &addr).clone();
            if sc.calls_in_flight == 1 {
                during = Some(sc);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let during = during.expect("the held call is in flight");
        assert_eq!(counts(&during), (6, 3, 2, 1));
        held.await.unwrap().unwrap();
        let after = channel.snapshot().await;
        assert_eq!(counts(subchannel(&after.subchannels, &addr)), (6, 4, 2, 0));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn snapshot_serializes_to_the_snake_case_shape_with_grpc_state_names() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let channel = BalancedChannel::builder(format!("static:///{}", backend.addr))
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let json = serde_json::to_value(channel.snapshot().await).unwrap();
        assert_eq!(json["policy"], "pick_first");
        assert_eq!(json["state"], "READY");
        assert_eq!(json["resolver"]["endpoints"], 1);
        let sc = &json["subchannels"][0];
        assert_eq!(sc["address"], backend.addr.to_string());
        assert_eq!(sc["state"], "READY");
        for key in [
            "last_error",
            "last_change_unix_ms",
            "calls_started",
            "calls_succeeded",
            "calls_failed",
            "calls_in_flight",
            "connection_attempts",
            "connection_failures",
        ] {
            assert!(sc.get(key).is_some(), "{key} missing in {sc}");
        }
    })
    .await
    .unwrap();
}

/// Every line a `fmt` subscriber with `filter` (`RUST_LOG` syntax) writes on this thread while
/// the returned guard lives.
fn capture_logs(
    filter: &str,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let buffer = buffer.clone();
        move || Captured(buffer.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(writer)
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn text(buffer: &std::sync::Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

// The channel's tasks run on this (current-thread) runtime, so the
// thread's subscriber sees them; the backends run on their own threads.
#[tokio::test]
async fn state_changes_are_debug_events_in_the_channels_span_and_calls_log_nothing_above_trace() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let target = format!("static:///{}", backend.addr);
        let (logs, _guard) = capture_logs("tonic_balance=debug");
        let channel = BalancedChannel::builder(&target)
            .balancer("round_robin")
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let mut states = channel.state_changes();
        states
            .wait_for(|s| *s == ConnectivityState::Ready)
            .await
            .unwrap();
        let setup = text(&logs);
        let span = format!("channel{{target={target} policy=\"round_robin\"}}");
        for wanted in [
            "resolver update endpoints=1",
            "channel state changed from=CONNECTING to=READY",
            "subchannel state address=",
        ] {
            let line = setup
                .lines()
                .find(|l| l.contains(wanted))
                .unwrap_or_else(|| panic!("no {wanted:?} in:\n{setup}"));
            assert!(line.contains("DEBUG") && line.contains(&span), "{line}");
        }

        logs.lock().unwrap().clear();
        let mut client = SimpleClient::new(channel.clone());
        for i in 0..50 {
            route(&mut client, &format!("call {i}")).await.unwrap();
        }
        let _ = route(&mut client, "fail:13").await;
        let calls = text(&logs);
        assert!(calls.is_empty(), "calls logged above trace:\n{calls}");
    })
    .await
    .unwrap();
}

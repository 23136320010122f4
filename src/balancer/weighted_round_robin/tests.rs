use std::time::Duration;

use super::*;
use crate::balancer::testing::FakeController;
use crate::{Address, ConnectivityState};
use ConnectivityState::*;

fn build() -> WeightedRoundRobin {
    WeightedRoundRobin::new(&BuildOptions::new("static:///a:1".parse().unwrap(), 1))
}

fn weighted(weights: &[(&str, u32)]) -> ResolverUpdate {
    ResolverUpdate::new(
        weights
            .iter()
            .map(|(a, w)| Address::from(*a).with_weight(*w))
            .collect(),
    )
}

fn config(json: serde_json::Value) -> LbConfig {
    WeightedRoundRobinBuilder.parse_config(&json).unwrap()
}

fn tally(ctl: &FakeController, picks: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..picks {
        *counts.entry(ctl.pick_addr().unwrap()).or_default() += 1;
    }
    counts
}

fn ready(addrs: &[(&str, u32)], json: serde_json::Value) -> (WeightedRoundRobin, FakeController) {
    let (mut wrr, mut ctl) = (build(), FakeController::new());
    wrr.resolver_update(&weighted(addrs), &config(json), &mut ctl);
    for (a, _) in addrs {
        ctl.deliver(&mut wrr, a, Ready);
    }
    (wrr, ctl)
}

/// A load report of 100 qps at `utilization` from the `index`-th READY
/// endpoint (the published table is in resolver order).
fn report(wrr: &WeightedRoundRobin, index: usize, utilization: f64) {
    let table = wrr.latest.load_full().unwrap();
    let load = Load {
        qps: 100.0,
        eps: 0.0,
        utilization,
    };
    table.weights[index].on_report(load, Instant::now(), 1.0);
}

#[tokio::test(start_paused = true)]
async fn static_weights_split_calls_in_proportion() {
    let (_wrr, ctl) = ready(&[("a:1", 1), ("b:1", 2), ("c:1", 3)], serde_json::json!({}));
    assert_eq!(ctl.last_state(), Ready);
    let counts = tally(&ctl, 6000);
    for (addr, want) in [("a:1", 1000.0), ("b:1", 2000.0), ("c:1", 3000.0)] {
        let got = counts[addr] as f64;
        assert!((got - want).abs() / want < 0.02, "{counts:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn reported_weights_win_over_static_ones_after_the_blackout() {
    let json = serde_json::json!({"blackoutPeriod": "1s", "weightUpdatePeriod": "0.5s"});
    let (mut wrr, mut ctl) = ready(&[("a:1", 3), ("b:1", 1), ("c:1", 1)], json);
    // Utilization 0.9, 0.5, 0.1 at the same qps: weights 1/0.9 : 2 : 10.
    for _ in 0..3 {
        for (index, utilization) in [0.9, 0.5, 0.1].into_iter().enumerate() {
            report(&wrr, index, utilization);
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(ctl.run_due_work(&mut wrr), "the update timer runs");
    }
    let counts = tally(&ctl, 13_111);
    let (a, b, c) = (
        counts["a:1"] as f64,
        counts["b:1"] as f64,
        counts["c:1"] as f64,
    );
    assert!((c / a - 9.0).abs() < 0.5, "{counts:?}");
    assert!((b / a - 1.8).abs() < 0.2, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn without_reports_for_the_expiration_period_the_static_weights_return() {
    let json = serde_json::json!({"blackoutPeriod": "0s", "weightExpirationPeriod": "2s"});
    let (mut wrr, mut ctl) = ready(&[("a:1", 1), ("b:1", 1)], json);
    report(&wrr, 0, 0.1);
    report(&wrr, 1, 0.9);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(ctl.run_due_work(&mut wrr));
    let counts = tally(&ctl, 1000);
    assert!(counts["a:1"] > 800, "reports: {counts:?}");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(ctl.run_due_work(&mut wrr));
    let counts = tally(&ctl, 1000);
    assert_eq!(
        counts["a:1"], 500,
        "expired: equal static weights {counts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_update_timer_keeps_running_and_the_children_connect_like_round_robin() {
    let (mut wrr, mut ctl) = (build(), FakeController::new());
    wrr.resolver_update(
        &weighted(&[("a:1", 1), ("b:1", 2)]),
        &LbConfig::empty(),
        &mut ctl,
    );
    assert_eq!((ctl.connects("a:1"), ctl.connects("b:1")), (1, 1));
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(1)).await;
        ctl.deliver(&mut wrr, "a:1", Connecting);
        assert!(ctl.work_at.is_some(), "the timer is still asked for");
        assert!(ctl.run_due_work(&mut wrr) || ctl.work_at.is_some());
    }
    ctl.deliver_error(&mut wrr, "a:1", TransientFailure, "a:1: refused");
    ctl.deliver(&mut wrr, "b:1", Ready);
    assert_eq!(ctl.last_state(), Ready);
    assert_eq!(tally(&ctl, 10)["b:1"], 10);
}

/// Ends one pick as a call whose trailers carry the ORCA report of its
/// backend: 100 qps at `utilization(address)`.
fn call_with_report(ctl: &FakeController, utilization: impl Fn(&str) -> f64) {
    let PickResult::Pick(pick) = ctl.pick() else {
        panic!("expected a pick");
    };
    let report = crate::orca::OrcaLoadReport {
        cpu_utilization: utilization(pick.subchannel().address().addr()),
        rps_fractional: 100.0,
        ..Default::default()
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert(crate::orca::TRAILER, crate::orca::to_header_value(&report));
    pick.complete(&crate::picker::DoneInfo::new(
        tonic::Code::Ok,
        true,
        true,
        &trailers,
    ));
}

#[tokio::test(start_paused = true)]
async fn reports_in_the_calls_trailers_weigh_the_backends_inversely_to_utilization() {
    let json = serde_json::json!({"blackoutPeriod": "1s", "weightUpdatePeriod": "0.5s"});
    let (mut wrr, mut ctl) = ready(&[("a:1", 1), ("b:1", 1), ("c:1", 1)], json);
    let utilization = |addr: &str| match addr {
        "a:1" => 0.9,
        "b:1" => 0.5,
        _ => 0.1,
    };
    for _ in 0..4 {
        for _ in 0..30 {
            call_with_report(&ctl, utilization);
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(ctl.run_due_work(&mut wrr), "the update timer runs");
    }
    let counts = tally(&ctl, 13_111);
    let (a, b, c) = (
        counts["a:1"] as f64,
        counts["b:1"] as f64,
        counts["c:1"] as f64,
    );
    assert!((c / a - 9.0).abs() < 0.5, "{counts:?}");
    assert!((b / a - 1.8).abs() < 0.2, "{counts:?}");
}

/// An out-of-band report of 100 qps at `utilization` through `addr`'s
/// registered listener.
fn oob_report(ctl: &FakeController, addr: &str, utilization: f64) {
    let (listener, period) = ctl.subchannel(addr).oob_listener().expect("a listener");
    assert_eq!(period, Duration::from_millis(200));
    let report = crate::orca::OrcaLoadReport {
        cpu_utilization: utilization,
        rps_fractional: 100.0,
        ..Default::default()
    };
    listener.on_load_report(&report);
}

#[tokio::test(start_paused = true)]
async fn out_of_band_reports_set_the_weights_and_per_call_ones_are_ignored() {
    let json = serde_json::json!({"enableOobLoadReport": true, "oobReportingPeriod": "0.2s",
        "blackoutPeriod": "0s", "weightUpdatePeriod": "0.5s"});
    let (mut wrr, mut ctl) = ready(&[("a:1", 1), ("b:1", 1)], json);
    oob_report(&ctl, "a:1", 0.1);
    oob_report(&ctl, "b:1", 0.9);
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(ctl.run_due_work(&mut wrr));
    let counts = tally(&ctl, 1000);
    assert!(
        (counts["a:1"] as f64 / counts["b:1"] as f64 - 9.0).abs() < 0.5,
        "{counts:?}"
    );
    // A call's trailer report (per call) says the opposite: ignored.
    let picker = ctl.picker().unwrap();
    let headers = http::HeaderMap::new();
    let info = PickInfo::new("/s/m", &headers);
    for _ in 0..10 {
        let PickResult::Pick(pick) = picker.pick(&info) else {
            panic!("no pick")
        };
        let mut trailers = http::HeaderMap::new();
        let report = crate::orca::OrcaLoadReport {
            cpu_utilization: 0.01,
            rps_fractional: 100.0,
            ..Default::default()
        };
        trailers.insert(crate::orca::TRAILER, crate::orca::to_header_value(&report));
        pick.complete(&DoneInfo::new(tonic::Code::Ok, true, true, &trailers));
    }
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(ctl.run_due_work(&mut wrr));
    let counts = tally(&ctl, 1000);
    assert!(
        (counts["a:1"] as f64 / counts["b:1"] as f64 - 9.0).abs() < 0.5,
        "{counts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn turning_out_of_band_reports_off_unregisters_the_listeners() {
    let on = serde_json::json!({"enableOobLoadReport": true, "oobReportingPeriod": "0.2s"});
    let (mut wrr, mut ctl) = ready(&[("a:1", 1), ("b:1", 1)], on);
    assert!(ctl.subchannel("a:1").oob_listener().is_some());
    let update = weighted(&[("a:1", 1), ("b:1", 1)]);
    wrr.resolver_update(&update, &config(serde_json::json!({})), &mut ctl);
    assert!(ctl.subchannel("a:1").oob_listener().is_none());
    assert!(ctl.subchannel("b:1").oob_listener().is_none());
}

//! The policy against the fake controller, on tokio's paused clock.

use std::time::Duration;

use serde_json::json;
use tokio::time::advance;

use super::*;
use crate::balancer::testing::FakeController;
use crate::Endpoint;
use ConnectivityState::*;

const ADDRS: [&str; 5] = ["a:1", "b:1", "c:1", "d:1", "e:1"];

fn config(json: serde_json::Value) -> LbConfig {
    OutlierDetectionBuilder.parse_config(&json).unwrap()
}

/// Fails-90 %-of-calls ejection over five READY round_robin children.
fn started(od_json: serde_json::Value) -> (OutlierDetection, FakeController, LbConfig) {
    let opts = BuildOptions::new("static:///a:1".parse().unwrap(), 1);
    let mut od = OutlierDetection::new(&opts);
    let mut ctl = FakeController::new();
    let config = config(od_json);
    let update = ResolverUpdate::new(ADDRS.iter().map(|a| Address::from(*a)).collect());
    od.resolver_update(&update, &config, &mut ctl);
    for a in ADDRS {
        ctl.deliver(&mut od, a, Ready);
    }
    (od, ctl, config)
}

fn failure_percentage() -> serde_json::Value {
    json!({
        "interval": "1s", "baseEjectionTime": "5s", "maxEjectionTime": "20s",
        "maxEjectionPercent": 20,
        "failurePercentageEjection": {"threshold": 50, "requestVolume": 10},
        "childPolicy": [{"round_robin": {}}]
    })
}

/// Plays an interval's calls through the published picker: 100 picks
/// (round robin: 20 per address), 90 % of `failing` ones UNAVAILABLE.
fn play_calls(ctl: &FakeController, failing: &[&str]) {
    play_n_calls(ctl, failing, 100);
}

/// Like [`play_calls`], `n` picks.
fn play_n_calls(ctl: &FakeController, failing: &[&str], n: usize) {
    let picker = ctl.picker().expect("a picker");
    let headers = http::HeaderMap::new();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for _ in 0..n {
        let PickResult::Pick(pick) = picker.pick(&PickInfo::new("/s/m", &headers)) else {
            panic!("READY picks");
        };
        let address = pick.subchannel().address().addr().to_owned();
        let n = seen.entry(address.clone()).or_default();
        *n += 1;
        let code = if failing.contains(&address.as_str()) && !n.is_multiple_of(10) {
            tonic::Code::Unavailable
        } else {
            tonic::Code::Ok
        };
        pick.complete(&crate::picker::DoneInfo::new(code, true, true, &headers));
    }
}

fn picked(ctl: &FakeController, n: usize) -> std::collections::HashSet<String> {
    (0..n).filter_map(|_| ctl.pick_addr()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_failing_address_is_ejected_at_the_interval_and_returns_after_the_ejection_time() {
    let (mut od, mut ctl, _) = started(failure_percentage());
    assert_eq!(picked(&ctl, 10).len(), 5);
    play_calls(&ctl, &["c:1"]);
    advance(Duration::from_secs(1)).await;
    assert!(ctl.run_due_work(&mut od));
    let picks = picked(&ctl, 20);
    assert_eq!(picks.len(), 4, "{picks:?}");
    assert!(!picks.contains("c:1"), "{picks:?}");
    // Ejected for 1 x 5 s: still out at 4 s (intervals without calls).
    for _ in 0..4 {
        advance(Duration::from_secs(1)).await;
        ctl.run_due_work(&mut od);
    }
    assert!(!picked(&ctl, 20).contains("c:1"));
    advance(Duration::from_secs(1)).await;
    assert!(ctl.run_due_work(&mut od));
    assert!(picked(&ctl, 20).contains("c:1"), "back after 5 s");
    // Its connection was kept throughout: the child never reconnected.
    assert_eq!(ctl.connects("c:1"), 1);
    assert_eq!(ctl.resolutions, 0);
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_ejection_percent_are_ejected() {
    let (mut od, mut ctl, _) = started(failure_percentage());
    play_calls(&ctl, &["a:1", "b:1", "c:1"]);
    advance(Duration::from_secs(1)).await;
    ctl.run_due_work(&mut od);
    let picks = picked(&ctl, 20);
    assert_eq!(picks.len(), 4, "one of five (20 %) ejected: {picks:?}");
}

#[tokio::test(start_paused = true)]
async fn a_state_change_while_ejected_is_shown_when_the_ejection_ends() {
    let (mut od, mut ctl, _) = started(failure_percentage());
    play_calls(&ctl, &["c:1"]);
    advance(Duration::from_secs(1)).await;
    ctl.run_due_work(&mut od);
    // The connection is lost and comes back while c is ejected: the child
    // keeps seeing TRANSIENT_FAILURE, then the last real state.
    ctl.deliver(&mut od, "c:1", Idle);
    ctl.deliver(&mut od, "c:1", Ready);
    assert!(!picked(&ctl, 20).contains("c:1"));
    for _ in 0..5 {
        advance(Duration::from_secs(1)).await;
        ctl.run_due_work(&mut od);
    }
    assert!(picked(&ctl, 20).contains("c:1"));
}

#[tokio::test(start_paused = true)]
async fn a_config_without_algorithms_passes_everything_through_and_un_ejects() {
    let (mut od, mut ctl, _) = started(failure_percentage());
    play_calls(&ctl, &["c:1"]);
    advance(Duration::from_secs(1)).await;
    ctl.run_due_work(&mut od);
    assert!(!picked(&ctl, 20).contains("c:1"));
    let plain = config(json!({"childPolicy": [{"round_robin": {}}]}));
    let update = ResolverUpdate::new(ADDRS.iter().map(|a| Address::from(*a)).collect());
    od.resolver_update(&update, &plain, &mut ctl);
    assert_eq!(picked(&ctl, 20).len(), 5);
}

#[tokio::test(start_paused = true)]
async fn picks_count_their_outcome_and_calls_that_never_left_are_not_counted() {
    let (od, ctl, _) = started(failure_percentage());
    let picker = ctl.picker().unwrap();
    let headers = http::HeaderMap::new();
    for (code, sent) in [
        (tonic::Code::Ok, true),
        (tonic::Code::Internal, true),
        (tonic::Code::Unavailable, false),
    ] {
        for _ in 0..5 {
            let PickResult::Pick(pick) = picker.pick(&PickInfo::new("/s/m", &headers)) else {
                panic!("READY picks");
            };
            pick.complete(&crate::picker::DoneInfo::new(code, sent, sent, &headers));
        }
    }
    let counted = ADDRS.map(|a| od.counter(a).take());
    let (ok, failed): (u32, u32) = counted
        .iter()
        .fold((0, 0), |(s, f), c| (s + c.successes, f + c.failures));
    assert_eq!((ok, failed), (5, 5));
}

/// Four one-address endpoints and `c`, an endpoint of two addresses
/// (`c:1` then `c:2`, tried in order by its pick_first child), all READY
/// through their first address.
fn started_with_two_address_endpoint(
    od_json: serde_json::Value,
) -> (OutlierDetection, FakeController) {
    let opts = BuildOptions::new("static:///a:1".parse().unwrap(), 1);
    let mut od = OutlierDetection::new(&opts);
    let mut ctl = FakeController::new();
    let endpoints = ["a:1", "b:1", "d:1", "e:1"]
        .iter()
        .map(|a| Endpoint::from(Address::from(*a)))
        .chain([Endpoint::new(vec!["c:1".into(), "c:2".into()])])
        .collect();
    let update = ResolverUpdate::from_endpoints(endpoints);
    od.resolver_update(&update, &config(od_json), &mut ctl);
    for a in ["a:1", "b:1", "c:1", "d:1", "e:1"] {
        ctl.deliver(&mut od, a, Ready);
    }
    (od, ctl)
}

#[tokio::test(start_paused = true)]
async fn an_endpoints_calls_are_counted_together_across_the_addresses_that_served_them() {
    // 15 calls are needed to judge an endpoint: c gets 10 through c:1,
    // then 10 through c:2 once c:1 is lost; per address it would have
    // too few (and only four hosts would be judged, below minimumHosts).
    let (mut od, mut ctl) = started_with_two_address_endpoint(json!({
        "interval": "1s", "baseEjectionTime": "5s", "maxEjectionPercent": 20,
        "failurePercentageEjection": {"threshold": 50, "requestVolume": 15},
        "childPolicy": [{"round_robin": {}}]
    }));
    play_n_calls(&ctl, &["c:1"], 50);
    ctl.deliver(&mut od, "c:1", TransientFailure);
    ctl.deliver(&mut od, "c:2", Ready);
    let picks = picked(&ctl, 20);
    assert!(picks.contains("c:2"), "c now served by c:2: {picks:?}");
    play_n_calls(&ctl, &["c:2"], 50);
    advance(Duration::from_secs(1)).await;
    assert!(ctl.run_due_work(&mut od));
    let picks = picked(&ctl, 20);
    assert_eq!(picks.len(), 4, "c ejected: {picks:?}");
    assert!(!picks.contains("c:2"), "{picks:?}");
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_is_ejected_with_all_its_addresses() {
    let (mut od, mut ctl) = started_with_two_address_endpoint(failure_percentage());
    play_calls(&ctl, &["c:1"]);
    // c:1's connection is lost and cannot be made again: c's pick_first
    // tries c:2, which is still connecting when the interval ends.
    ctl.deliver(&mut od, "c:1", Idle);
    ctl.deliver(&mut od, "c:1", TransientFailure);
    ctl.deliver(&mut od, "c:2", Connecting);
    advance(Duration::from_secs(1)).await;
    assert!(ctl.run_due_work(&mut od));
    // c is ejected with both its addresses: c:2, once connected, is shown
    // failed too, so c gets no calls.
    ctl.deliver(&mut od, "c:2", Ready);
    let picks = picked(&ctl, 20);
    assert_eq!(picks.len(), 4, "{picks:?}");
    assert!(!picks.contains("c:2"), "{picks:?}");
    // After the ejection time the endpoint is back, through c:2.
    for _ in 0..5 {
        advance(Duration::from_secs(1)).await;
        ctl.run_due_work(&mut od);
    }
    assert!(picked(&ctl, 20).contains("c:2"));
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_given_other_addresses_is_a_new_endpoint_and_not_ejected() {
    let (mut od, mut ctl, config) = started(failure_percentage());
    play_calls(&ctl, &["c:1"]);
    advance(Duration::from_secs(1)).await;
    assert!(ctl.run_due_work(&mut od));
    assert!(!picked(&ctl, 20).contains("c:1"));
    // c gains an address: an endpoint is its set of addresses (as in
    // gRPC), so this one is new, with no calls and no ejection.
    let endpoints = ["a:1", "b:1", "d:1", "e:1"]
        .iter()
        .map(|a| Endpoint::from(Address::from(*a)))
        .chain([Endpoint::new(vec!["c:1".into(), "c:2".into()])])
        .collect();
    od.resolver_update(
        &ResolverUpdate::from_endpoints(endpoints),
        &config,
        &mut ctl,
    );
    ctl.run_due_work(&mut od);
    assert!(picked(&ctl, 20).contains("c:1"));
}

#[test]
fn a_bad_config_is_an_error_naming_the_policy_and_field() {
    let error = OutlierDetectionBuilder
        .parse_config(&json!({"maxEjectionPercent": 300, "childPolicy": [{"round_robin": {}}]}))
        .unwrap_err();
    assert!(error.to_string().contains("maxEjectionPercent"), "{error}");
}

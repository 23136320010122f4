use super::*;
use crate::balancer::testing::FakeController;
use crate::picker::{PickInfo, PickResult};
use crate::Address;
use ConnectivityState::*;

fn config(json: serde_json::Value) -> LbConfig {
    RingHashBuilder.parse_config(&json).unwrap()
}

fn header_config() -> LbConfig {
    config(serde_json::json!({"requestHashHeader": "session-id"}))
}

fn update(addrs: &[&str]) -> ResolverUpdate {
    ResolverUpdate::new(addrs.iter().map(|a| Address::from(*a)).collect())
}

/// A ring_hash over `addrs`, hashing the `session-id` header.
fn ring_hash(addrs: &[&str]) -> (RingHash, FakeController) {
    let (mut rh, mut ctl) = (RingHash::new(1), FakeController::new());
    rh.resolver_update(&update(addrs), &header_config(), &mut ctl);
    (rh, ctl)
}

/// Picks for a call whose `session-id` is `key`.
fn pick_key(ctl: &FakeController, key: &str) -> PickResult<'static> {
    let mut headers = http::HeaderMap::new();
    headers.insert("session-id", key.parse().unwrap());
    let picker = ctl.picker().unwrap();
    let result = picker
        .pick(&PickInfo::new("/proto.Simple/Route", &headers))
        .into_owned();
    result
}

fn picked(ctl: &FakeController, key: &str) -> Option<String> {
    match pick_key(ctl, key) {
        PickResult::Pick(p) => Some(p.subchannel().address().to_string()),
        _ => None,
    }
}

/// The endpoint the ring puts `key` on, and the next different ones.
fn ring_order(rh: &RingHash, key: &str) -> Vec<String> {
    let start = rh.ring.find(RequestHash::of(key).0).unwrap();
    let points = rh.ring.points();
    let mut order: Vec<String> = Vec::new();
    for i in 0..points.len() {
        let e = &rh.endpoints[points[(start + i) % points.len()].endpoint as usize];
        let addr = e.subchannel.address().to_string();
        if !order.contains(&addr) {
            order.push(addr);
        }
    }
    order
}

#[test]
fn config_defaults_and_errors_name_the_field() {
    let parsed = config(serde_json::json!({}));
    assert_eq!(
        parsed.get::<RingHashConfig>(),
        Some(&RingHashConfig::default())
    );
    let parsed = config(
        serde_json::json!({"minRingSize": 8, "maxRingSize": 8_388_608, "requestHashHeader": "X-User"}),
    );
    let parsed = parsed.get::<RingHashConfig>().unwrap();
    assert_eq!(
        (parsed.min_ring_size(), parsed.max_ring_size()),
        (8, MAX_RING_SIZE)
    );
    assert_eq!(parsed.request_hash_header().unwrap().as_str(), "x-user");
    for (json, field) in [
        (serde_json::json!({"minRingSize": 0}), "minRingSize"),
        (serde_json::json!({"maxRingSize": 8_388_609}), "maxRingSize"),
        (serde_json::json!({"minRingSize": "big"}), "minRingSize"),
        (
            serde_json::json!({"minRingSize": 100, "maxRingSize": 10}),
            "above \"maxRingSize\"",
        ),
        (
            serde_json::json!({"requestHashHeader": "key-bin"}),
            "binary header",
        ),
        (
            serde_json::json!({"requestHashHeader": "bad header"}),
            "not a valid header name",
        ),
        (
            serde_json::json!({"requestHashHeader": 7}),
            "must be a string",
        ),
    ] {
        let err = RingHashBuilder.parse_config(&json).unwrap_err();
        assert!(err.is_config(), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("ring_hash") && message.contains(field),
            "{message}"
        );
    }
}

#[test]
fn nothing_connects_until_a_call_lands_and_then_only_its_endpoint() {
    let (_rh, ctl) = ring_hash(&["a:1", "b:1", "c:1"]);
    assert!(ctl.connected_addrs().is_empty(), "lazy: no connection yet");
    assert_eq!(ctl.last_state(), Idle);
    assert!(matches!(pick_key(&ctl, "user-1"), PickResult::Queue));
    assert_eq!(
        ctl.connected_addrs().len(),
        1,
        "{:?}",
        ctl.connected_addrs()
    );
}

#[test]
fn the_same_key_always_reaches_the_same_ready_endpoint() {
    let (mut rh, mut ctl) = ring_hash(&["a:1", "b:1", "c:1"]);
    for a in ["a:1", "b:1", "c:1"] {
        ctl.deliver(&mut rh, a, Ready);
    }
    assert_eq!(ctl.last_state(), Ready);
    let mut owners = std::collections::HashSet::new();
    for k in 0..100 {
        let key = format!("user-{k}");
        let first = picked(&ctl, &key).unwrap();
        assert_eq!(first, ring_order(&rh, &key)[0], "{key}");
        assert!((0..5).all(|_| picked(&ctl, &key).as_deref() == Some(first.as_str())));
        owners.insert(first);
    }
    assert_eq!(owners.len(), 3, "100 keys spread over every endpoint");
}

#[test]
fn a_failed_endpoints_keys_go_to_its_ring_successor_and_come_back() {
    let (mut rh, mut ctl) = ring_hash(&["a:1", "b:1", "c:1"]);
    for a in ["a:1", "b:1", "c:1"] {
        ctl.deliver(&mut rh, a, Ready);
    }
    ctl.deliver(&mut rh, "b:1", Idle);
    ctl.deliver_error(&mut rh, "b:1", TransientFailure, "b:1: refused");
    let keys: Vec<String> = (0..200).map(|k| format!("user-{k}")).collect();
    let mut moved = 0;
    for key in &keys {
        let order = ring_order(&rh, key);
        let want = if order[0] == "b:1" {
            &order[1]
        } else {
            &order[0]
        };
        moved += usize::from(order[0] == "b:1");
        assert_eq!(picked(&ctl, key).as_ref(), Some(want), "{key}");
    }
    assert!(moved > 20, "some keys were b:1's: {moved}");
    // The backoff ends: reconnected at once, still failed until READY.
    ctl.deliver(&mut rh, "b:1", Idle);
    assert_eq!(ctl.connects("b:1"), 1, "retried after its backoff");
    ctl.deliver(&mut rh, "b:1", Connecting);
    assert!(keys
        .iter()
        .all(|k| picked(&ctl, k).as_deref() != Some("b:1")));
    ctl.deliver(&mut rh, "b:1", Ready);
    for key in &keys {
        assert_eq!(picked(&ctl, key), Some(ring_order(&rh, key)[0].clone()));
    }
}

#[test]
fn the_state_follows_a42s_aggregation() {
    let (mut rh, mut ctl) = ring_hash(&["a:1", "b:1", "c:1"]);
    assert_eq!(ctl.last_state(), Idle);
    ctl.deliver_error(&mut rh, "a:1", TransientFailure, "a:1: refused");
    assert_eq!(ctl.last_state(), Connecting, "one failed of several");
    // None was CONNECTING: the policy started one IDLE endpoint itself.
    assert_eq!(ctl.connects("b:1"), 1);
    ctl.deliver(&mut rh, "b:1", Connecting);
    ctl.deliver_error(&mut rh, "b:1", TransientFailure, "b:1: refused");
    assert_eq!(ctl.last_state(), TransientFailure, "two failed");
    assert_eq!(ctl.connects("c:1"), 1, "the last IDLE one is tried too");
    ctl.deliver(&mut rh, "c:1", Ready);
    assert_eq!(ctl.last_state(), Ready);
}

#[test]
fn every_endpoint_failed_fails_calls_with_the_last_error() {
    let (mut rh, mut ctl) = ring_hash(&["a:1", "b:1"]);
    ctl.deliver_error(&mut rh, "a:1", TransientFailure, "a:1: refused");
    ctl.deliver_error(&mut rh, "b:1", TransientFailure, "b:1: refused");
    match pick_key(&ctl, "user-1") {
        PickResult::Fail(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert!(status.message().contains("b:1: refused"), "{status:?}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_random_hash_takes_a_ready_endpoint_and_starts_at_most_one_connection() {
    let (mut rh, mut ctl) = (RingHash::new(3), FakeController::new());
    rh.resolver_update(
        &update(&["a:1", "b:1", "c:1"]),
        &LbConfig::empty(),
        &mut ctl,
    );
    assert!(matches!(ctl.pick(), PickResult::Queue));
    assert_eq!(
        ctl.connected_addrs().len(),
        1,
        "one connection for the call"
    );
    let first = ctl.connected_addrs()[0].clone();
    ctl.deliver(&mut rh, &first, Ready);
    for _ in 0..20 {
        assert_eq!(ctl.pick_addr().as_deref(), Some(first.as_str()));
    }
    // Calls without the configured header get random hashes too.
    let (mut rh, mut ctl) = ring_hash(&["a:1", "b:1", "c:1"]);
    ctl.deliver(&mut rh, "c:1", Ready);
    assert_eq!(ctl.pick_addr().as_deref(), Some("c:1"));
}

#[test]
fn weights_and_hash_keys_place_endpoints() {
    let mut heavy = crate::Attributes::default();
    heavy.set_weight(Some(3));
    heavy.set_metadata(Some(serde_json::json!({"hash_key": "cache-1"})));
    let update = ResolverUpdate::from_endpoints(vec![
        Endpoint::new(vec!["a:1".into()]).with_attributes(heavy),
        Endpoint::new(vec!["b:1".into()]),
    ]);
    let (mut rh, mut ctl) = (RingHash::new(1), FakeController::new());
    rh.resolver_update(&update, &header_config(), &mut ctl);
    let keys: Vec<&str> = rh.endpoints.iter().map(|e| &*e.key).collect();
    assert_eq!(
        keys,
        ["b:1", "cache-1"],
        "the hash_key replaces the address"
    );
    let count = |e| rh.ring.points().iter().filter(|p| p.endpoint == e).count();
    assert_eq!((count(1), count(0)), (768, 256), "3:1 on a 1024-point ring");
}

#[test]
fn a_new_endpoint_keeps_the_others_subchannels_and_the_ring_is_kept_when_nothing_changed() {
    let (mut rh, mut ctl) = ring_hash(&["a:1", "b:1"]);
    ctl.deliver(&mut rh, "a:1", Ready);
    let (ring, a) = (rh.ring.clone(), ctl.subchannel("a:1"));
    rh.resolver_update(&update(&["b:1", "a:1"]), &header_config(), &mut ctl);
    assert!(
        Arc::ptr_eq(&ring, &rh.ring),
        "same keys and weights: same ring"
    );
    rh.resolver_update(&update(&["a:1", "b:1", "c:1"]), &header_config(), &mut ctl);
    assert!(!Arc::ptr_eq(&ring, &rh.ring));
    assert_eq!(ctl.subchannel("a:1"), a);
    assert_eq!(
        rh.endpoints[0].state, Ready,
        "a kept endpoint keeps its state"
    );
    // The kept ring still names the right endpoints after a reorder.
    let (mut rh, mut ctl) = ring_hash(&["a:1", "b:1"]);
    ctl.deliver(&mut rh, "a:1", Ready);
    ctl.deliver(&mut rh, "b:1", Ready);
    let before: Vec<Option<String>> = (0..50).map(|k| picked(&ctl, &k.to_string())).collect();
    rh.resolver_update(&update(&["b:1", "a:1"]), &header_config(), &mut ctl);
    let after: Vec<Option<String>> = (0..50).map(|k| picked(&ctl, &k.to_string())).collect();
    assert_eq!(before, after);
}

#[test]
fn an_empty_update_fails_calls_and_asks_for_resolution() {
    let (mut rh, mut ctl) = ring_hash(&["a:1"]);
    rh.resolver_update(&update(&[]), &header_config(), &mut ctl);
    assert_eq!(ctl.last_state(), TransientFailure);
    assert_eq!(ctl.resolutions, 1);
    let status = ctl.pick_status().unwrap();
    assert!(
        status
            .message()
            .contains("the resolver returned no addresses"),
        "{status:?}"
    );
}

#[test]
fn a_lost_connection_goes_idle_and_reconnects_on_the_next_call() {
    let (mut rh, mut ctl) = ring_hash(&["a:1"]);
    ctl.deliver(&mut rh, "a:1", Ready);
    ctl.deliver(&mut rh, "a:1", Idle);
    assert_eq!(ctl.last_state(), Idle);
    assert_eq!(ctl.connects("a:1"), 0, "lazy: nobody called yet");
    assert!(matches!(pick_key(&ctl, "k"), PickResult::Queue));
    assert_eq!(ctl.connects("a:1"), 1);
}

#[test]
fn without_a_header_config_the_callers_request_hash_decides() {
    let (mut rh, mut ctl) = (RingHash::new(1), FakeController::new());
    rh.resolver_update(
        &update(&["a:1", "b:1", "c:1"]),
        &LbConfig::empty(),
        &mut ctl,
    );
    for a in ["a:1", "b:1", "c:1"] {
        ctl.deliver(&mut rh, a, Ready);
    }
    let picker = ctl.picker().unwrap();
    let headers = http::HeaderMap::new();
    for k in 0..50 {
        let key = format!("user-{k}");
        let mut extensions = http::Extensions::new();
        extensions.insert(RequestHash::of(&key));
        let info = PickInfo::new("/proto.Simple/Route", &headers).with_extensions(&extensions);
        let got: Vec<String> = (0..3)
            .filter_map(|_| match picker.pick(&info) {
                PickResult::Pick(p) => Some(p.subchannel().address().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![ring_order(&rh, &key)[0].clone(); 3], "{key}");
    }
}

/// An endpoint of two addresses (gRFC A61) and one of one.
fn two_address_ring_hash() -> (RingHash, FakeController) {
    let update = ResolverUpdate::from_endpoints(vec![
        Endpoint::new(vec!["a:1".into(), "a:2".into()]),
        Endpoint::new(vec!["b:1".into()]),
    ]);
    let (mut rh, mut ctl) = (RingHash::new(1), FakeController::new());
    rh.resolver_update(&update, &header_config(), &mut ctl);
    (rh, ctl)
}

/// A key the ring puts on the endpoint whose first address is `addr`.
fn key_of(rh: &RingHash, addr: &str) -> String {
    (0..1000)
        .map(|k| format!("user-{k}"))
        .find(|k| ring_order(rh, k)[0] == addr)
        .unwrap_or_else(|| panic!("no key on {addr}"))
}

#[test]
fn an_endpoint_fails_over_to_its_second_address_and_keeps_its_keys() {
    let (mut rh, mut ctl) = two_address_ring_hash();
    let key = key_of(&rh, "a:1");
    assert!(matches!(pick_key(&ctl, &key), PickResult::Queue));
    assert_eq!(
        ctl.connected_addrs(),
        ["a:1"],
        "the call wakes its endpoint"
    );
    ctl.deliver(&mut rh, "a:1", Connecting);
    ctl.deliver_error(&mut rh, "a:1", TransientFailure, "a:1: refused");
    assert_eq!(ctl.connects("a:2"), 1, "the endpoint's second address");
    assert!(matches!(pick_key(&ctl, &key), PickResult::Queue));
    ctl.deliver(&mut rh, "a:2", Ready);
    assert_eq!(ctl.last_state(), Ready);
    assert_eq!(picked(&ctl, &key).as_deref(), Some("a:2"));
    assert_eq!(ctl.connects("b:1"), 0, "nothing went to the next endpoint");
}

#[test]
fn a_lost_connection_waits_for_a_call_and_then_tries_the_first_address_again() {
    let (mut rh, mut ctl) = two_address_ring_hash();
    let key = key_of(&rh, "a:1");
    pick_key(&ctl, &key);
    ctl.deliver(&mut rh, "a:1", Connecting);
    ctl.deliver_error(&mut rh, "a:1", TransientFailure, "a:1: refused");
    ctl.deliver(&mut rh, "a:2", Ready);
    ctl.deliver(&mut rh, "a:1", Idle);
    ctl.deliver(&mut rh, "a:2", Idle);
    assert_eq!(ctl.last_state(), Idle);
    assert_eq!((ctl.connects("a:1"), ctl.connects("a:2")), (1, 1), "lazy");
    assert!(matches!(pick_key(&ctl, &key), PickResult::Queue));
    assert_eq!(ctl.connects("a:1"), 2, "a new pass, from the top");
    ctl.deliver(&mut rh, "a:1", Connecting);
    ctl.deliver(&mut rh, "a:1", Ready);
    assert_eq!(picked(&ctl, &key).as_deref(), Some("a:1"));
}

#[test]
fn a_child_that_goes_idle_while_its_first_address_backs_off_reconnects_at_once() {
    // A call cannot wake such a child (its first address is not IDLE),
    // so the policy does.
    let (mut rh, mut ctl) = two_address_ring_hash();
    pick_key(&ctl, &key_of(&rh, "a:1"));
    ctl.deliver(&mut rh, "a:1", Connecting);
    ctl.deliver_error(&mut rh, "a:1", TransientFailure, "a:1: refused");
    ctl.deliver(&mut rh, "a:2", Ready);
    ctl.deliver(&mut rh, "a:2", Idle);
    assert_eq!(ctl.connects("a:2"), 2);
    assert_eq!(ctl.last_state(), Connecting);
}

#[test]
fn a_failed_endpoint_does_not_connect_idle_ones_while_another_is_ready() {
    let (mut rh, mut ctl) = ring_hash(&["a:1", "b:1", "c:1"]);
    ctl.deliver(&mut rh, "a:1", Ready);
    ctl.deliver_error(&mut rh, "b:1", TransientFailure, "b:1: refused");
    assert_eq!(ctl.last_state(), Ready);
    assert_eq!(
        ctl.connects("c:1"),
        0,
        "A42 connects one only with none READY"
    );
    ctl.deliver(&mut rh, "a:1", Idle);
    // None READY now: the first IDLE one (by key) is connected.
    assert_eq!((ctl.connects("a:1"), ctl.connects("c:1")), (1, 0));
}

#[test]
fn an_empty_request_hash_header_is_no_header_as_in_grpc_go() {
    let parsed = config(serde_json::json!({"requestHashHeader": ""}));
    let parsed = parsed.get::<RingHashConfig>().unwrap();
    assert_eq!(parsed.request_hash_header(), None);
}

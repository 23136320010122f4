//! `least_request`: the READY endpoint with the fewest calls in flight,
//! among a few chosen at random (gRFC A48, `least_request_experimental`).
//!
//! Like [`round_robin`](super::round_robin), a
//! [`ChildManager`](super::child_manager) with a `pick_first` child per
//! endpoint: every endpoint is connected at once, a lost connection is
//! reconnected, and the channel state is the children's
//! [`aggregate_state`](super::aggregate_state). Only the picker differs:
//! for each call it samples `choiceCount` READY endpoints at random (with
//! replacement, as Envoy and A48 do) and sends the call to the one with the
//! fewest calls in flight (the first sampled on a tie).
//!
//! **Config** (`{"least_request_experimental":{"choiceCount":N}}`, also
//! registered as `least_request`): `choiceCount` defaults to 2; below 2 it
//! is an error, above 10 it is 10 (A48). A changed `choiceCount` reaches
//! the running policy and its next picker.
//!
//! **Counting.** Each endpoint has a counter of calls in flight, kept
//! while the endpoint stays READY (a picker rebuilt for another READY set
//! keeps the counters of the endpoints still in it). The picker adds one
//! when it picks the endpoint (relaxed atomics) and the pick's
//! [`CallObserver`] takes it back when the call ends, however it ends
//! (response, error, deadline, cancellation, or the re-pick of an attempt
//! that never left): the channel reports every pick exactly once.
//!
//! **Cost.** A pick draws `choiceCount` random indices from a per-thread
//! [`SmallRng`] (no lock, nothing shared written), reads as many counters,
//! writes one counter and the observer's reference count (on the same
//! allocation, padded away from the other endpoints' counters so that
//! threads picking different endpoints share no cache line), and lets the
//! chosen child's pick_first picker lend its subchannel. It does not grow
//! with the number of endpoints.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::child_manager::{endpoint_key, ChildManager, ChildPickers, ReadyChild};
use super::{Balancer, BalancerBuilder, BuildOptions, Controller, LbConfig, LbPolicy};
use super::{Error, PickFirstBuilder};
use crate::picker::{CallObserver, DoneInfo, PickInfo, PickResult, Picker};
use crate::resolver::ResolverUpdate;
use crate::subchannel::SubchannelState;
use crate::{ErrorKind, Subchannel};

/// The policy's name in gRFC A48 and gRPC service configs.
pub const LEAST_REQUEST_EXPERIMENTAL: &str = "least_request_experimental";
/// The policy's short name (the same policy).
pub const LEAST_REQUEST: &str = "least_request";

/// `choiceCount` when the config does not say.
const DEFAULT_CHOICE_COUNT: u32 = 2;
/// The most endpoints a pick compares (A48 caps larger values to it).
const MAX_CHOICE_COUNT: u32 = 10;

/// least_request's parsed config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeastRequestConfig {
    /// How many READY endpoints each pick compares, 2..=10.
    pub choice_count: u32,
}

impl Default for LeastRequestConfig {
    fn default() -> Self {
        LeastRequestConfig {
            choice_count: DEFAULT_CHOICE_COUNT,
        }
    }
}

impl LeastRequestConfig {
    /// Parses `{"choiceCount": N}` as A48 says: absent is 2, below 2 an
    /// error (naming the policy `least_request_experimental`), above 10
    /// is 10.
    pub fn parse(json: &serde_json::Value) -> Result<Self, Error> {
        Self::parse_for(LEAST_REQUEST_EXPERIMENTAL, json)
    }

    /// [`parse`](Self::parse), with errors naming the policy as the
    /// config did (`least_request_experimental` or `least_request`).
    fn parse_for(policy: &str, json: &serde_json::Value) -> Result<Self, Error> {
        let Some(value) = json.get("choiceCount") else {
            return Ok(LeastRequestConfig::default());
        };
        let count = value.as_u64().ok_or_else(|| {
            let why = format!("{policy}: \"choiceCount\" must be an integer, not {value}");
            Error::new(ErrorKind::Config, why)
        })?;
        if count < 2 {
            let why = format!("{policy}: \"choiceCount\" must be at least 2, not {count}");
            return Err(Error::new(ErrorKind::Config, why));
        }
        let choice_count = count.min(u64::from(MAX_CHOICE_COUNT)) as u32;
        Ok(LeastRequestConfig { choice_count })
    }
}

/// Builds [`least_request`](self) balancers. Registered under both
/// [`LEAST_REQUEST_EXPERIMENTAL`] and [`LEAST_REQUEST`].
#[derive(Debug, Clone, Default)]
pub struct LeastRequestBuilder {
    name: Option<&'static str>,
    total: Option<Arc<AtomicUsize>>,
}

impl LeastRequestBuilder {
    /// The builder registered as `least_request_experimental`.
    pub fn new() -> Self {
        LeastRequestBuilder::default()
    }

    /// The same policy under the short name `least_request`.
    pub fn short_name() -> Self {
        LeastRequestBuilder {
            name: Some(LEAST_REQUEST),
            total: None,
        }
    }

    /// Also counts every call in flight through the balancers it builds
    /// into `total` (incremented at pick, decremented when the call ends,
    /// like the per-endpoint counters): for metrics and tests. Costs one
    /// more atomic add on a counter every picking thread shares.
    pub fn counting_total(mut self, total: Arc<AtomicUsize>) -> Self {
        self.total = Some(total);
        self
    }
}

impl BalancerBuilder for LeastRequestBuilder {
    fn name(&self) -> &str {
        self.name.unwrap_or(LEAST_REQUEST_EXPERIMENTAL)
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        let choice_count = Arc::new(AtomicU32::new(DEFAULT_CHOICE_COUNT));
        let pickers = LeastRequestPickers {
            choice_count: choice_count.clone(),
            loads: HashMap::new(),
            total: self.total.clone(),
        };
        let pick_first = LbPolicy::new(Arc::new(PickFirstBuilder), Default::default());
        let manager = ChildManager::new(pick_first, options.clone(), Box::new(pickers));
        Box::new(LeastRequest {
            manager,
            choice_count,
        })
    }

    fn parse_config(&self, json: &serde_json::Value) -> Result<LbConfig, Error> {
        Ok(LbConfig::new(
            LeastRequestConfig::parse_for(self.name(), json)?,
            json.clone(),
        ))
    }
}

/// The child manager, with the config its pickers read.
struct LeastRequest {
    manager: ChildManager,
    /// Shared with the [`LeastRequestPickers`] the manager owns.
    choice_count: Arc<AtomicU32>,
}

impl Balancer for LeastRequest {
    fn resolver_update(
        &mut self,
        update: &ResolverUpdate,
        config: &LbConfig,
        ctl: &mut dyn Controller,
    ) {
        let choice_count = config
            .get::<LeastRequestConfig>()
            .copied()
            .unwrap_or_default()
            .choice_count;
        if self.choice_count.swap(choice_count, Ordering::Relaxed) != choice_count {
            self.manager.invalidate_picker();
        }
        self.manager.resolver_update(update, config, ctl);
    }

    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
        self.manager.resolver_error(error, ctl);
    }

    fn subchannel_update(
        &mut self,
        subchannel: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        self.manager.subchannel_update(subchannel, state, ctl);
    }

    fn exit_idle(&mut self, ctl: &mut dyn Controller) {
        self.manager.exit_idle(ctl);
    }

    fn work(&mut self, ctl: &mut dyn Controller) {
        self.manager.work(ctl);
    }
}

/// One endpoint's calls in flight. Padded so that two endpoints' counters
/// (and the reference counts next to them) never share a cache line.
#[derive(Debug)]
struct Load {
    in_flight: AtomicUsize,
    total: Option<Arc<AtomicUsize>>,
    _pad: [u8; 112],
}

impl Load {
    fn new(total: Option<Arc<AtomicUsize>>) -> Self {
        Load {
            in_flight: AtomicUsize::new(0),
            total,
            _pad: [0; 112],
        }
    }

    fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(total) = &self.total {
            total.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(total) = &self.total {
            total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A call that ended is no longer in flight.
impl CallObserver for Load {
    fn done(&self, _: &DoneInfo<'_>) {
        self.leave();
    }
}

/// Builds least_request pickers, keeping each READY endpoint's counter
/// from one picker to the next.
struct LeastRequestPickers {
    choice_count: Arc<AtomicU32>,
    loads: HashMap<Box<str>, Arc<Load>>,
    total: Option<Arc<AtomicUsize>>,
}

impl ChildPickers for LeastRequestPickers {
    fn build(&mut self, ready: &[ReadyChild<'_>]) -> Arc<dyn Picker> {
        let mut loads = HashMap::with_capacity(ready.len());
        let children = ready
            .iter()
            .map(|child| {
                let key = endpoint_key(child.endpoint);
                let load = self
                    .loads
                    .remove(&key)
                    .unwrap_or_else(|| Arc::new(Load::new(self.total.clone())));
                loads.insert(key, load.clone());
                ReadyEndpoint {
                    picker: child.picker.clone(),
                    observer: load.clone(),
                    load,
                }
            })
            .collect();
        self.loads = loads;
        let choice_count = self.choice_count.load(Ordering::Relaxed) as usize;
        Arc::new(LeastRequestPicker {
            children,
            choice_count,
        })
    }
}

/// A READY endpoint: its child's picker and its counter (also as the
/// observer each pick clones).
struct ReadyEndpoint {
    picker: Arc<dyn Picker>,
    load: Arc<Load>,
    observer: Arc<dyn CallObserver>,
}

/// Picks the least loaded of `choice_count` random READY endpoints.
struct LeastRequestPicker {
    children: Box<[ReadyEndpoint]>,
    choice_count: usize,
}

thread_local! {
    /// Each picking thread's own random numbers, seeded once from the OS.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

impl LeastRequestPicker {
    /// A48's sampling: `choice_count` draws with replacement; the first
    /// of the least loaded wins.
    fn choose(&self) -> Option<&ReadyEndpoint> {
        let n = self.children.len();
        if n == 0 {
            return None;
        }
        RNG.with(|rng| {
            let mut rng = rng.borrow_mut();
            let mut best = &self.children[rng.random_range(0..n)];
            let mut best_load = best.load.in_flight.load(Ordering::Relaxed);
            for _ in 1..self.choice_count {
                let sampled = &self.children[rng.random_range(0..n)];
                let load = sampled.load.in_flight.load(Ordering::Relaxed);
                if load < best_load {
                    (best, best_load) = (sampled, load);
                }
            }
            Some(best)
        })
    }
}

impl Picker for LeastRequestPicker {
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        let Some(chosen) = self.choose() else {
            return PickResult::Queue;
        };
        match chosen.picker.pick(info) {
            PickResult::Pick(pick) => {
                chosen.load.enter();
                PickResult::Pick(pick.with_observer(chosen.observer.clone()))
            }
            other => other,
        }
    }
}

impl std::fmt::Debug for LeastRequestPicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeastRequestPicker")
            .field("children", &self.children.len())
            .field("choice_count", &self.choice_count)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::{Event, FakeController};
    use crate::picker::{Pick, QueuePicker};
    use crate::{Address, ConnectivityState, Endpoint};
    use serde_json::json;

    #[test]
    fn choice_count_follows_a48_default_2_at_least_2_at_most_10() {
        let count = |v: serde_json::Value| LeastRequestConfig::parse(&v).map(|c| c.choice_count);
        assert_eq!(count(json!({})).unwrap(), 2);
        assert_eq!(count(json!({"choiceCount": 2})).unwrap(), 2);
        assert_eq!(count(json!({"choiceCount": 7})).unwrap(), 7);
        assert_eq!(count(json!({"choiceCount": 11})).unwrap(), 10);
        assert_eq!(count(json!({"choiceCount": u64::MAX})).unwrap(), 10);
        for bad in [json!({"choiceCount": 1}), json!({"choiceCount": 0})] {
            let err = count(bad).unwrap_err();
            assert!(err.is_config(), "{err}");
            assert!(err.to_string().contains("at least 2"), "{err}");
        }
        let err = count(json!({"choiceCount": "3"})).unwrap_err();
        assert!(err.to_string().contains("must be an integer"), "{err}");
    }

    #[test]
    fn config_errors_name_the_policy_as_the_config_wrote_it() {
        let bad = json!({"choiceCount": 1});
        for (builder, name) in [
            (LeastRequestBuilder::new(), "least_request_experimental"),
            (LeastRequestBuilder::short_name(), "least_request"),
        ] {
            let err = builder.parse_config(&bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{name}: \"choiceCount\"")),
                "{err}"
            );
        }
    }

    /// Always lends its subchannel (a READY pick_first child).
    struct Always(Subchannel);

    impl Picker for Always {
        fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
            PickResult::Pick(Pick::borrowed(&self.0))
        }
    }

    fn child(id: u64, addr: &str) -> (Endpoint, Arc<dyn Picker>) {
        let address = Address::new(addr);
        let picker: Arc<dyn Picker> = Arc::new(Always(Subchannel::detached(id, address.clone())));
        (Endpoint::new(vec![address]), picker)
    }

    fn pickers(choice_count: u32) -> LeastRequestPickers {
        LeastRequestPickers {
            choice_count: Arc::new(AtomicU32::new(choice_count)),
            loads: HashMap::new(),
            total: None,
        }
    }

    fn build(
        p: &mut LeastRequestPickers,
        children: &[(Endpoint, Arc<dyn Picker>)],
    ) -> Arc<dyn Picker> {
        let ready: Vec<ReadyChild<'_>> = children
            .iter()
            .map(|(endpoint, picker)| ReadyChild { endpoint, picker })
            .collect();
        p.build(&ready)
    }

    fn in_flight(p: &LeastRequestPickers, addr: &str) -> usize {
        p.loads[addr].in_flight.load(Ordering::Relaxed)
    }

    fn pick(picker: &dyn Picker) -> Pick<'static> {
        let headers = http::HeaderMap::new();
        match picker.pick(&PickInfo::new("/s/m", &headers)).into_owned() {
            PickResult::Pick(pick) => pick,
            other => panic!("expected a pick, got {other:?}"),
        }
    }

    #[test]
    fn calls_go_to_the_endpoint_with_fewer_in_flight_and_counts_return_to_zero() {
        let mut p = pickers(10);
        let children = [child(1, "a:1"), child(2, "b:1")];
        let picker = build(&mut p, &children);
        // Held calls: each goes to the less loaded endpoint, so the two
        // stay level (random choice would drift by about sqrt(n)).
        let held: Vec<Pick<'static>> = (0..40).map(|_| pick(&*picker)).collect();
        let (a, b) = (in_flight(&p, "a:1"), in_flight(&p, "b:1"));
        assert_eq!(a + b, 40);
        assert!(a.abs_diff(b) <= 2, "a {a}, b {b}");
        let to_a = held
            .iter()
            .filter(|pick| pick.subchannel().address().addr() == "a:1")
            .count();
        assert_eq!(to_a, a, "the counter follows the picks");
        drop(held);
        assert_eq!((in_flight(&p, "a:1"), in_flight(&p, "b:1")), (0, 0));
    }

    #[test]
    fn a_loaded_endpoint_is_avoided_while_its_calls_are_in_flight() {
        let mut p = pickers(10);
        let children = [child(1, "a:1"), child(2, "b:1")];
        let picker = build(&mut p, &children);
        p.loads["a:1"].in_flight.store(1000, Ordering::Relaxed);
        let to_a = (0..200)
            .map(|_| pick(&*picker))
            .filter(|pick| pick.subchannel().address().addr() == "a:1")
            .count();
        // Only when all 10 samples are a:1 (one pick in 512).
        assert!(to_a <= 5, "{to_a} of 200 went to the loaded endpoint");
    }

    #[test]
    fn a_child_that_does_not_pick_is_not_counted() {
        let mut p = pickers(2);
        let endpoint = Endpoint::new(vec![Address::new("a:1")]);
        let queue: Arc<dyn Picker> = Arc::new(QueuePicker);
        let picker = build(&mut p, &[(endpoint, queue)]);
        let headers = http::HeaderMap::new();
        let result = picker.pick(&PickInfo::new("/s/m", &headers));
        assert!(matches!(result, PickResult::Queue), "{result:?}");
        assert_eq!(in_flight(&p, "a:1"), 0);
    }

    #[test]
    fn counters_of_endpoints_still_ready_survive_a_new_picker() {
        let mut p = pickers(2);
        let first = build(&mut p, &[child(1, "a:1")]);
        let call = pick(&*first);
        let second = build(&mut p, &[child(1, "a:1"), child(3, "c:1")]);
        assert_eq!(in_flight(&p, "a:1"), 1, "a:1's call is still counted");
        assert_eq!(in_flight(&p, "c:1"), 0);
        drop(call);
        assert_eq!(in_flight(&p, "a:1"), 0);
        drop((first, second));
    }

    #[test]
    fn a_total_counter_follows_every_call() {
        let total = Arc::new(AtomicUsize::new(0));
        let mut p = pickers(2);
        p.total = Some(total.clone());
        let picker = build(&mut p, &[child(1, "a:1"), child(2, "b:1")]);
        let calls: Vec<_> = (0..3).map(|_| pick(&*picker)).collect();
        assert_eq!(total.load(Ordering::Relaxed), 3);
        drop(calls);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_new_choice_count_reaches_the_running_policy_and_its_picker() {
        let builder = LeastRequestBuilder::new();
        let options = BuildOptions::new("static:///a:1".parse().unwrap(), 1);
        let mut policy = builder.build(&options);
        let mut ctl = FakeController::new();
        let update = ResolverUpdate::new(vec!["a:1".into(), "b:1".into()]);
        let config = |n: u32| builder.parse_config(&json!({ "choiceCount": n })).unwrap();
        policy.resolver_update(&update, &config(2), &mut ctl);
        ctl.deliver(&mut *policy, "a:1", ConnectivityState::Ready);
        ctl.deliver(&mut *policy, "b:1", ConnectivityState::Ready);
        assert!(ctl.pick_addr().is_some());
        let pickers = |ctl: &FakeController| {
            ctl.events()
                .iter()
                .filter(|e| matches!(e, Event::UpdatePicker(ConnectivityState::Ready)))
                .count()
        };
        let before = pickers(&ctl);
        // The same config: the same picker.
        policy.resolver_update(&update, &config(2), &mut ctl);
        assert_eq!(pickers(&ctl), before);
        policy.resolver_update(&update, &config(5), &mut ctl);
        assert_eq!(pickers(&ctl), before + 1, "a new picker for the new count");
    }

    #[test]
    fn both_names_are_registered() {
        let registry = crate::balancer::BalancerRegistry::new();
        for name in [LEAST_REQUEST_EXPERIMENTAL, LEAST_REQUEST] {
            let builder = registry.get(name).expect(name);
            assert_eq!(builder.name(), name);
        }
    }
}

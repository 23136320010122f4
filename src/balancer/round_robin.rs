//! `round_robin`: every READY subchannel in turn (grpc-go's semantics).
//!
//! One subchannel per address, all connected at once. Calls rotate over the
//! READY ones from a random start index, so that many clients do not all
//! start on the same backend. A subchannel that goes IDLE (its connection
//! was lost, or its backoff ended) is reconnected at once, and losing a
//! connection asks the resolver to resolve again. A subchannel that failed
//! counts as TRANSIENT_FAILURE until it is READY again (gRFC A61's sticky
//! failure), so a flapping backend does not make the channel CONNECTING.
//! The channel state is [`aggregate_state`](super::aggregate_state) of the
//! subchannels.
//!
//! A new picker is published only when the READY set or the channel state
//! changes, so a steady channel keeps its rotation.
//!
//! **Cost.** A subchannel event costs O(1): the policy keeps how many
//! children are in each state, updates those counts, and asks the channel
//! for [`work`](Balancer::work) after the burst of events it belongs to;
//! `work` rebuilds the READY list and the picker once, and only when the
//! READY set or the state changed. So a channel with thousands of failing
//! addresses pays O(n) per burst of events, not per event. A resolver
//! update costs O(n) and publishes at once.
//!
//! **Threading.** Every thread that makes calls picks from the same picker
//! at once, so the picker writes nothing that two threads share: it keeps
//! 16 rotation counters, each on its own 128-byte block (two cache
//! lines, as adjacent-line prefetchers pair them), and each thread uses one
//! of them, assigned once per thread in thread start order. Each counter
//! starts at its own random index and rotates strictly, so one thread sees
//! strict rotation and every thread spreads its calls evenly; threads
//! beyond the 16th share counters (still even, with some contention).
//! Picks lend the subchannel ([`Pick::borrowed`]), so no reference count
//! is written either.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{dedup, failure_message, Balancer, BalancerBuilder, BuildOptions, Controller};
use crate::picker::{FailPicker, Pick, PickInfo, PickResult, Picker, QueuePicker};
use crate::resolver::ResolverUpdate;
use crate::subchannel::SubchannelState;
use crate::{ConnectivityState, Error, ErrorKind, Subchannel};

/// The name of the round_robin policy.
pub const ROUND_ROBIN: &str = "round_robin";

/// Builds [`round_robin`](self) balancers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobinBuilder;

impl BalancerBuilder for RoundRobinBuilder {
    fn name(&self) -> &str {
        ROUND_ROBIN
    }

    fn build(
        &self,
        _: &serde_json::Value,
        options: &BuildOptions,
    ) -> Result<Box<dyn Balancer>, Error> {
        Ok(Box::new(RoundRobin {
            children: Vec::new(),
            index: HashMap::new(),
            rng: SmallRng::seed_from_u64(options.seed()),
            last_error: None,
            published: None,
            has_addresses: false,
            counts: Counts::default(),
            ready_changed: false,
            work_scheduled: false,
        }))
    }
}

struct Child {
    subchannel: Subchannel,
    /// The state used for aggregation (TRANSIENT_FAILURE is sticky).
    state: ConnectivityState,
}

struct RoundRobin {
    children: Vec<Child>,
    /// Subchannel id -> position in `children`.
    index: HashMap<u64, usize>,
    rng: SmallRng,
    last_error: Option<Error>,
    /// What was last published: the state, the READY subchannel ids and
    /// the failure message.
    published: Option<(ConnectivityState, Vec<u64>, Option<String>)>,
    has_addresses: bool,
    /// How many children are in each (sticky) state.
    counts: Counts,
    /// A child entered or left READY since the last picker was built.
    ready_changed: bool,
    /// `work` was asked for and has not run yet.
    work_scheduled: bool,
}

/// How many children are in each state, kept as events arrive so that the
/// channel state is O(1) to compute.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ready: usize,
    connecting: usize,
    idle: usize,
}

impl Counts {
    fn of<'a>(children: impl IntoIterator<Item = &'a Child>) -> Self {
        let mut counts = Counts::default();
        for child in children {
            counts.add(child.state, 1);
        }
        counts
    }

    /// Adds `n` (1 or -1 as wrapping) children in `state`.
    fn add(&mut self, state: ConnectivityState, n: usize) {
        let count = match state {
            ConnectivityState::Ready => &mut self.ready,
            ConnectivityState::Connecting => &mut self.connecting,
            ConnectivityState::Idle => &mut self.idle,
            ConnectivityState::TransientFailure | ConnectivityState::Shutdown => return,
        };
        *count = count.wrapping_add(n);
    }

    /// [`aggregate_state`](super::aggregate_state) of the children, from
    /// the counts.
    fn aggregate(&self) -> ConnectivityState {
        if self.ready > 0 {
            ConnectivityState::Ready
        } else if self.connecting > 0 {
            ConnectivityState::Connecting
        } else if self.idle > 0 {
            ConnectivityState::Idle
        } else {
            ConnectivityState::TransientFailure
        }
    }
}

/// How many rotation counters a round_robin picker keeps (one per thread
/// up to this many picking threads). 16 blocks of 128 bytes: 2 KiB per
/// published picker.
pub(crate) const SHARDS: usize = 16;

/// One rotation counter on its own cache lines.
#[repr(align(128))]
#[derive(Debug)]
struct Shard(AtomicUsize);

/// Hands out shard indices in thread start order.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard index, or `usize::MAX` before its first pick.
    static THREAD_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The shard index of the calling thread, assigned on its first pick.
pub(crate) fn thread_shard() -> usize {
    THREAD_SHARD.with(|cell| {
        let mut shard = cell.get();
        if shard == usize::MAX {
            shard = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
            cell.set(shard);
        }
        shard
    })
}

/// Rotates over a fixed list of READY subchannels. One atomic increment of
/// the calling thread's own counter per pick, whatever the number of
/// subchannels, and no reference-count traffic.
#[derive(Debug)]
pub(crate) struct RoundRobinPicker {
    subchannels: Box<[Subchannel]>,
    shards: [Shard; SHARDS],
}

impl RoundRobinPicker {
    /// Rotates over `subchannels`; shard `i` starts at index `starts[i]`.
    pub(crate) fn new(subchannels: Vec<Subchannel>, starts: [usize; SHARDS]) -> Self {
        RoundRobinPicker {
            subchannels: subchannels.into_boxed_slice(),
            shards: starts.map(|start| Shard(AtomicUsize::new(start))),
        }
    }
}

impl Picker for RoundRobinPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        let len = self.subchannels.len();
        if len == 0 {
            return PickResult::Queue;
        }
        let shard = &self.shards[thread_shard()];
        let n = shard.0.fetch_add(1, Ordering::Relaxed);
        match self.subchannels.get(n % len) {
            Some(sc) => PickResult::Pick(Pick::borrowed(sc)),
            None => PickResult::Queue,
        }
    }
}

impl RoundRobin {
    /// Publishes a picker if the state, the READY set or the failure
    /// message changed. O(1) unless the READY set changed (then O(n) to
    /// list it).
    fn regenerate(&mut self, ctl: &mut dyn Controller) {
        let state = if self.has_addresses {
            self.counts.aggregate()
        } else {
            ConnectivityState::TransientFailure
        };
        let error = (state == ConnectivityState::TransientFailure)
            .then(|| self.last_error.as_ref().map(failure_message))
            .flatten();
        let same_ready = !std::mem::take(&mut self.ready_changed);
        if let Some((was, _, was_error)) = &self.published {
            if *was == state && *was_error == error && same_ready {
                return;
            }
        }
        let ready: Vec<Subchannel> = if state == ConnectivityState::Ready {
            self.children
                .iter()
                .filter(|c| c.state == ConnectivityState::Ready)
                .map(|c| c.subchannel.clone())
                .collect()
        } else {
            Vec::new()
        };
        let key = (
            state,
            ready.iter().map(Subchannel::id).collect(),
            error.clone(),
        );
        if self.published.as_ref() == Some(&key) {
            return;
        }
        self.published = Some(key);
        let picker: Arc<dyn Picker> = match state {
            ConnectivityState::Ready => {
                let n = ready.len();
                let starts = std::array::from_fn(|_| self.rng.random_range(0..n));
                Arc::new(RoundRobinPicker::new(ready, starts))
            }
            ConnectivityState::TransientFailure => Arc::new(FailPicker::unavailable(
                error.unwrap_or_else(|| "no address could be connected".to_owned()),
            )),
            _ => Arc::new(QueuePicker),
        };
        ctl.update_picker(state, picker);
    }
}

impl Balancer for RoundRobin {
    fn resolver_update(&mut self, update: &ResolverUpdate, ctl: &mut dyn Controller) {
        let addresses = dedup(update.addresses());
        self.has_addresses = !addresses.is_empty();
        // The old children stay alive until the new ones are made, so a kept
        // address keeps its (shared) subchannel and connection.
        let old_children = std::mem::take(&mut self.children);
        let old: HashMap<u64, ConnectivityState> = old_children
            .iter()
            .map(|c| (c.subchannel.id(), c.state))
            .collect();
        for address in &addresses {
            let subchannel = match ctl.new_subchannel(address) {
                Ok(sc) => sc,
                Err(e) => {
                    tracing::warn!(%address, error = %e, "round_robin: skipping address");
                    continue;
                }
            };
            let state = old
                .get(&subchannel.id())
                .copied()
                .unwrap_or_else(|| subchannel.state());
            if subchannel.state() == ConnectivityState::Idle {
                subchannel.connect();
            }
            self.children.push(Child { subchannel, state });
        }
        drop(old_children);
        self.index = (0..self.children.len())
            .map(|i| (self.children[i].subchannel.id(), i))
            .collect();
        self.counts = Counts::of(&self.children);
        self.ready_changed = true;
        if self.children.is_empty() {
            self.last_error = Some(Error::new(
                ErrorKind::Resolver,
                "the resolver returned no usable addresses",
            ));
            ctl.request_resolution();
        }
        self.regenerate(ctl);
    }

    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
        if self.children.is_empty() {
            self.last_error = Some(error.clone());
            self.has_addresses = false;
            self.regenerate(ctl);
        }
    }

    fn subchannel_update(
        &mut self,
        sc: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        let Some(child) = self
            .index
            .get(&sc.id())
            .and_then(|&i| self.children.get_mut(i))
        else {
            return;
        };
        use ConnectivityState::*;
        let was = child.state;
        child.state = match (was, state.connectivity) {
            (TransientFailure, Connecting | Idle) => TransientFailure,
            (_, new) => new,
        };
        self.counts.add(was, usize::MAX);
        self.counts.add(child.state, 1);
        if (was == Ready) != (child.state == Ready) {
            self.ready_changed = true;
        }
        if state.connectivity == Idle {
            sc.connect();
        }
        if (was == Ready && state.connectivity != Ready) || state.connectivity == TransientFailure {
            ctl.request_resolution();
        }
        if let Some(error) = &state.error {
            self.last_error = Some(error.clone());
        }
        // The picker is built once, after the burst this event is part of.
        if !self.work_scheduled {
            self.work_scheduled = true;
            ctl.schedule_work(tokio::time::Instant::now());
        }
    }

    fn work(&mut self, ctl: &mut dyn Controller) {
        self.work_scheduled = false;
        self.regenerate(ctl);
    }

    fn exit_idle(&mut self, _: &mut dyn Controller) {
        for child in &self.children {
            child.subchannel.connect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::FakeController;
    use crate::Address;
    use ConnectivityState::*;

    fn build(seed: u64) -> Box<dyn Balancer> {
        let opts = BuildOptions::new("static:///a:1".parse().unwrap(), seed);
        RoundRobinBuilder
            .build(&serde_json::json!({}), &opts)
            .unwrap()
    }

    fn update(addrs: &[&str]) -> ResolverUpdate {
        ResolverUpdate::new(addrs.iter().map(|a| Address::from(*a)).collect())
    }

    #[test]
    fn connects_every_address_at_once() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1", "b:1", "c:1"]), &mut ctl);
        for a in ["a:1", "b:1", "c:1"] {
            assert_eq!(ctl.connects(a), 1, "{a}");
        }
        assert_eq!(ctl.last_state(), Idle);
        ctl.deliver(&mut *rr, "a:1", Connecting);
        assert_eq!(ctl.last_state(), Connecting);
    }

    #[test]
    fn rotates_over_ready_subchannels_only() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1", "b:1", "c:1"]), &mut ctl);
        ctl.deliver(&mut *rr, "a:1", Ready);
        ctl.deliver(&mut *rr, "c:1", Ready);
        ctl.deliver_error(&mut *rr, "b:1", TransientFailure, "refused");
        assert_eq!(ctl.last_state(), Ready);
        let picks: Vec<String> = (0..6).filter_map(|_| ctl.pick_addr()).collect();
        assert_eq!(picks.iter().filter(|a| *a == "a:1").count(), 3);
        assert_eq!(picks.iter().filter(|a| *a == "c:1").count(), 3);
        assert!(
            picks.windows(2).all(|w| w[0] != w[1]),
            "alternates: {picks:?}"
        );
    }

    #[test]
    fn start_index_depends_on_the_seed() {
        let firsts: std::collections::HashSet<String> = (0..16)
            .map(|seed| {
                let (mut rr, mut ctl) = (build(seed), FakeController::new());
                rr.resolver_update(&update(&["a:1", "b:1", "c:1"]), &mut ctl);
                for a in ["a:1", "b:1", "c:1"] {
                    ctl.deliver(&mut *rr, a, Ready);
                }
                ctl.pick_addr().unwrap()
            })
            .collect();
        assert!(firsts.len() > 1, "the start index is random: {firsts:?}");
    }

    #[test]
    fn transient_failure_is_sticky_and_needs_every_child_failed() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1", "b:1"]), &mut ctl);
        ctl.deliver_error(&mut *rr, "a:1", TransientFailure, "a:1: refused");
        ctl.deliver(&mut *rr, "b:1", Connecting);
        assert_eq!(ctl.last_state(), Connecting);
        ctl.deliver_error(&mut *rr, "b:1", TransientFailure, "b:1: refused");
        assert_eq!(ctl.last_state(), TransientFailure);
        assert!(ctl
            .pick_status()
            .unwrap()
            .message()
            .contains("b:1: refused"));
        // Retrying after backoff does not leave TRANSIENT_FAILURE...
        ctl.deliver(&mut *rr, "a:1", Idle);
        ctl.deliver(&mut *rr, "a:1", Connecting);
        assert_eq!(ctl.last_state(), TransientFailure);
        assert_eq!(ctl.connects("a:1"), 2, "IDLE after backoff reconnects");
        // ...READY does.
        ctl.deliver(&mut *rr, "a:1", Ready);
        assert_eq!(ctl.last_state(), Ready);
    }

    #[test]
    fn lost_connection_reconnects_and_asks_for_resolution() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1", "b:1"]), &mut ctl);
        ctl.deliver(&mut *rr, "a:1", Ready);
        ctl.deliver(&mut *rr, "b:1", Ready);
        ctl.deliver(&mut *rr, "a:1", Idle);
        assert_eq!(ctl.connects("a:1"), 2);
        assert_eq!(ctl.resolutions, 1);
        let picks: Vec<String> = (0..4).filter_map(|_| ctl.pick_addr()).collect();
        assert!(picks.iter().all(|a| a == "b:1"), "{picks:?}");
    }

    #[test]
    fn removed_addresses_leave_the_rotation_and_kept_ones_keep_state() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1", "b:1"]), &mut ctl);
        ctl.deliver(&mut *rr, "a:1", Ready);
        ctl.deliver(&mut *rr, "b:1", Ready);
        rr.resolver_update(&update(&["b:1", "c:1"]), &mut ctl);
        assert_eq!(ctl.last_state(), Ready);
        let picks: Vec<String> = (0..4).filter_map(|_| ctl.pick_addr()).collect();
        assert!(picks.iter().all(|a| a == "b:1"), "{picks:?}");
        assert_eq!(ctl.connects("b:1"), 1, "kept subchannel is not reconnected");
    }

    #[test]
    fn re_resolution_keeps_subchannels_that_are_not_ready() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1", "b:1"]), &mut ctl);
        ctl.deliver_error(&mut *rr, "a:1", TransientFailure, "a:1: refused");
        ctl.deliver(&mut *rr, "b:1", Connecting);
        let (a, b) = (ctl.subchannel("a:1").id(), ctl.subchannel("b:1").id());
        rr.resolver_update(&update(&["b:1", "a:1"]), &mut ctl);
        assert_eq!(
            (ctl.subchannel("a:1").id(), ctl.subchannel("b:1").id()),
            (a, b)
        );
        assert_eq!(ctl.connects("a:1") + ctl.connects("b:1"), 2, "no reconnect");
    }

    #[test]
    fn steady_state_publishes_no_new_picker() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1"]), &mut ctl);
        ctl.deliver(&mut *rr, "a:1", Ready);
        let n = ctl.pickers.len();
        rr.resolver_update(&update(&["a:1"]), &mut ctl);
        assert_eq!(ctl.pickers.len(), n);
    }

    #[test]
    fn empty_update_fails_calls_and_keeps_nothing() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1"]), &mut ctl);
        ctl.deliver(&mut *rr, "a:1", Ready);
        rr.resolver_update(&update(&[]), &mut ctl);
        assert_eq!(ctl.last_state(), TransientFailure);
        assert!(ctl
            .pick_status()
            .unwrap()
            .message()
            .contains("no usable addresses"));
    }

    #[test]
    fn a_burst_of_subchannel_events_builds_one_picker_after_it() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        let addrs: Vec<String> = (0..100).map(|i| format!("h{i}:1")).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        rr.resolver_update(&update(&refs), &mut ctl);
        let before = ctl.pickers.len();
        // 100 subchannels connect, half become READY, in one burst: the
        // events only update counts and ask for work once.
        for (i, a) in addrs.iter().enumerate() {
            let sc = ctl.subchannel(a);
            for state in [Connecting, if i % 2 == 0 { Ready } else { Idle }] {
                sc.set_state(state);
                let state = SubchannelState {
                    connectivity: state,
                    error: None,
                };
                rr.subchannel_update(&sc, &state, &mut ctl);
            }
        }
        assert_eq!(ctl.pickers.len(), before, "no picker during the burst");
        assert!(ctl.work_at.is_some(), "work asked for");
        assert!(ctl.run_work(&mut *rr));
        assert_eq!(ctl.pickers.len(), before + 1, "one picker for the burst");
        assert_eq!(ctl.last_state(), Ready);
        let picks: std::collections::HashSet<String> =
            (0..50).filter_map(|_| ctl.pick_addr()).collect();
        assert_eq!(picks.len(), 50, "rotates over the 50 READY ones");
        assert!(!ctl.run_work(&mut *rr), "work was asked for once");
    }

    #[test]
    fn a_failing_child_in_a_ready_channel_publishes_nothing() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1", "b:1", "c:1"]), &mut ctl);
        ctl.deliver(&mut *rr, "a:1", Ready);
        let n = ctl.pickers.len();
        for _ in 0..10 {
            ctl.deliver(&mut *rr, "b:1", Connecting);
            ctl.deliver_error(&mut *rr, "b:1", TransientFailure, "b:1: refused");
            ctl.deliver(&mut *rr, "b:1", Idle);
        }
        assert_eq!(
            ctl.pickers.len(),
            n,
            "the READY set and state never changed"
        );
    }

    proptest::proptest! {
        /// Whatever the events, the state kept from counts is the
        /// aggregate of the children's sticky states.
        #[test]
        fn counted_state_is_the_aggregate_of_the_children(
            events in proptest::collection::vec((0usize..4, 0u8..4), 0..200)
        ) {
            let addrs = ["a:1", "b:1", "c:1", "d:1"];
            let (mut rr, mut ctl) = (build(1), FakeController::new());
            rr.resolver_update(&update(&addrs), &mut ctl);
            let mut model = [Idle; 4];
            for (child, s) in events {
                let state = ConnectivityState::from_u8(s);
                model[child] = match (model[child], state) {
                    (TransientFailure, Connecting | Idle) => TransientFailure,
                    (_, new) => new,
                };
                ctl.deliver(&mut *rr, addrs[child], state);
                proptest::prop_assert_eq!(ctl.last_state(), crate::balancer::aggregate_state(model));
            }
        }
    }

    /// Picks `times` times on this thread; the index of each pick.
    fn pick_indices(picker: &dyn Picker, times: usize) -> Vec<usize> {
        let headers = http::HeaderMap::new();
        let info = PickInfo::new("/x/y", &headers);
        (0..times)
            .map(|_| match picker.pick(&info) {
                PickResult::Pick(p) => p.subchannel().id() as usize,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn detached(n: usize) -> Vec<Subchannel> {
        (0..n)
            .map(|i| Subchannel::detached(i as u64, Address::new(format!("h{i}:1"))))
            .collect()
    }

    #[test]
    fn one_thread_sees_strict_rotation_hitting_each_subchannel_k_times() {
        let (mut rr, mut ctl) = (build(3), FakeController::new());
        let addrs = ["a:1", "b:1", "c:1", "d:1", "e:1"];
        rr.resolver_update(&update(&addrs), &mut ctl);
        for a in addrs {
            ctl.deliver(&mut *rr, a, Ready);
        }
        let (n, k) = (addrs.len(), 20);
        let picks: Vec<usize> = (0..n * k)
            .map(|_| {
                let a = ctl.pick_addr().unwrap();
                addrs.iter().position(|x| *x == a).unwrap()
            })
            .collect();
        for w in picks.windows(2) {
            assert_eq!(w[1], (w[0] + 1) % n, "strict rotation: {picks:?}");
        }
        for i in 0..n {
            assert_eq!(picks.iter().filter(|&&p| p == i).count(), k, "{i}");
        }
    }

    #[test]
    fn two_threads_picking_at_once_spread_picks_evenly() {
        let (n, k) = (7, 2_000);
        let starts = std::array::from_fn(|i| i * 3);
        let picker = RoundRobinPicker::new(detached(n), starts);
        let barrier = std::sync::Barrier::new(2);
        let per_thread: Vec<(usize, Vec<usize>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let mut counts = vec![0; n];
                        for i in pick_indices(&picker, n * k) {
                            counts[i] += 1;
                        }
                        (thread_shard(), counts)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // n * k picks in a row from one counter hit each subchannel k times,
        // whatever the interleaving: so 2k in all, and exactly k per thread
        // when the two threads have their own counters (as the first 16
        // picking threads do).
        for i in 0..n {
            let total: usize = per_thread.iter().map(|(_, c)| c[i]).sum();
            assert_eq!(total, 2 * k, "subchannel {i}: {per_thread:?}");
        }
        if per_thread[0].0 != per_thread[1].0 {
            for (shard, counts) in &per_thread {
                assert!(counts.iter().all(|&c| c == k), "shard {shard}: {counts:?}");
            }
        }
    }

    #[test]
    fn a_thread_keeps_the_counter_it_was_given() {
        let shards: Vec<(usize, usize)> = (0..2)
            .map(|_| std::thread::spawn(|| (thread_shard(), thread_shard())))
            .map(|h| h.join().unwrap())
            .collect();
        assert!(shards.iter().all(|(a, b)| a == b && *a < SHARDS));
    }

    #[test]
    fn picker_is_flat_over_many_subchannels() {
        let subchannels: Vec<Subchannel> = (0..1000)
            .map(|i| Subchannel::detached(i, Address::new(format!("h{i}:1"))))
            .collect();
        let picker = RoundRobinPicker::new(subchannels, [0; SHARDS]);
        let headers = http::HeaderMap::new();
        let info = PickInfo::new("/x/y", &headers);
        for i in 0..2000u64 {
            match picker.pick(&info) {
                PickResult::Pick(p) => assert_eq!(p.subchannel().id(), i % 1000),
                other => panic!("{other:?}"),
            }
        }
    }
}

//! `round_robin`: every READY endpoint in turn (grpc-go's semantics).
//!
//! A [`ChildManager`](super::child_manager) with a `pick_first` child per
//! endpoint, as grpc-go builds it: every endpoint is connected at once
//! (each child runs its own happy-eyeballs pass over the endpoint's
//! addresses), and calls rotate over the READY children from a random
//! start index, so that many clients do not all start on the same
//! backend. A child whose connection is lost goes IDLE and is asked to
//! reconnect at once (and asks the resolver to resolve again); a child
//! whose pass failed stays TRANSIENT_FAILURE (gRFC A62's sticky failure)
//! while its subchannels retry on their backoff, reconnecting as soon as
//! they leave it, so a flapping backend does not make the channel
//! CONNECTING. The channel state is
//! [`aggregate_state`](super::aggregate_state) of the children.
//!
//! A new picker is published only when the READY set or the channel state
//! changes, so a steady channel keeps its rotation.
//!
//! **Cost.** A subchannel event costs O(1): it is routed to the child that
//! owns the subchannel, whose state is counted, and the channel is asked
//! for [`work`](Balancer::work) after the burst of events it belongs to;
//! `work` builds the READY list and the picker once, and only when the
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
//!
//! So the rotation is strict per thread, not per channel: on a
//! multi-thread runtime one task's sequential calls can hit the same
//! backend twice in a row (a task resumed on another worker thread picks
//! from that thread's counter), while the totals stay even. grpc-go's
//! picker rotates one counter shared by every goroutine, starting at a
//! random index: strict rotation channel-wide, at the cost of one atomic
//! increment on a shared cache line per pick. On a `current_thread`
//! runtime there is one counter, and the rotation is strict as in
//! grpc-go.
//! The chosen child's pick_first picker lends its subchannel
//! ([`Pick::borrowed`](crate::picker::Pick::borrowed)), so no reference
//! count is written either.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::child_manager::{ChildManager, RoundRobinPickers};
use super::{Balancer, BalancerBuilder, BuildOptions, LbPolicy, PickFirstBuilder};

/// The name of the round_robin policy.
pub const ROUND_ROBIN: &str = "round_robin";

/// Builds [`round_robin`](self) balancers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobinBuilder;

impl BalancerBuilder for RoundRobinBuilder {
    fn name(&self) -> &str {
        ROUND_ROBIN
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        let pick_first = LbPolicy::new(Arc::new(PickFirstBuilder), Default::default());
        Box::new(ChildManager::new(
            pick_first,
            options.clone(),
            Box::new(RoundRobinPickers::new(options.seed())),
        ))
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

/// The rotation of a round-robin picker: one counter per picking thread
/// (up to [`SHARDS`]), each from its own start. One atomic increment of
/// the calling thread's own counter per pick, whatever the number of
/// items.
#[derive(Debug)]
pub(crate) struct Rotation {
    shards: [Shard; SHARDS],
}

impl Rotation {
    /// Shard `i` starts at index `starts[i]`.
    pub(crate) fn new(starts: [usize; SHARDS]) -> Self {
        Rotation {
            shards: starts.map(|start| Shard(AtomicUsize::new(start))),
        }
    }

    /// The next index in `0..len` for the calling thread (0 for `len` 0).
    #[inline]
    pub(crate) fn next(&self, len: usize) -> usize {
        let shard = &self.shards[thread_shard()];
        shard
            .0
            .fetch_add(1, Ordering::Relaxed)
            .checked_rem(len)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::{Event, FakeController};
    use crate::balancer::LbConfig;
    use crate::picker::{PickInfo, PickResult};
    use crate::resolver::ResolverUpdate;
    use crate::subchannel::SubchannelState;
    use crate::{Address, ConnectivityState};
    use ConnectivityState::*;

    fn build(seed: u64) -> Box<dyn Balancer> {
        let opts = BuildOptions::new("static:///a:1".parse().unwrap(), seed);
        RoundRobinBuilder.build(&opts)
    }

    fn update(addrs: &[&str]) -> ResolverUpdate {
        ResolverUpdate::new(addrs.iter().map(|a| Address::from(*a)).collect())
    }

    #[test]
    fn connects_every_address_at_once() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(
            &update(&["a:1", "b:1", "c:1"]),
            &LbConfig::empty(),
            &mut ctl,
        );
        for a in ["a:1", "b:1", "c:1"] {
            assert_eq!(ctl.connects(a), 1, "{a}");
        }
        // Each pick_first child is CONNECTING from its first pass (grpc-go).
        assert_eq!(ctl.last_state(), Connecting);
        ctl.deliver(&mut *rr, "a:1", Connecting);
        assert_eq!(ctl.last_state(), Connecting);
        ctl.deliver(&mut *rr, "a:1", Ready);
        assert_eq!(ctl.last_state(), Ready);
    }

    #[test]
    fn rotates_over_ready_subchannels_only() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(
            &update(&["a:1", "b:1", "c:1"]),
            &LbConfig::empty(),
            &mut ctl,
        );
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
                rr.resolver_update(
                    &update(&["a:1", "b:1", "c:1"]),
                    &LbConfig::empty(),
                    &mut ctl,
                );
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
        rr.resolver_update(&update(&["a:1", "b:1"]), &LbConfig::empty(), &mut ctl);
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
        rr.resolver_update(&update(&["a:1", "b:1"]), &LbConfig::empty(), &mut ctl);
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
        rr.resolver_update(&update(&["a:1", "b:1"]), &LbConfig::empty(), &mut ctl);
        ctl.deliver(&mut *rr, "a:1", Ready);
        ctl.deliver(&mut *rr, "b:1", Ready);
        rr.resolver_update(&update(&["b:1", "c:1"]), &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.last_state(), Ready);
        let picks: Vec<String> = (0..4).filter_map(|_| ctl.pick_addr()).collect();
        assert!(picks.iter().all(|a| a == "b:1"), "{picks:?}");
        assert_eq!(ctl.connects("b:1"), 1, "kept subchannel is not reconnected");
    }

    #[test]
    fn re_resolution_keeps_subchannels_that_are_not_ready() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1", "b:1"]), &LbConfig::empty(), &mut ctl);
        ctl.deliver_error(&mut *rr, "a:1", TransientFailure, "a:1: refused");
        ctl.deliver(&mut *rr, "b:1", Connecting);
        let (a, b) = (ctl.subchannel("a:1").id(), ctl.subchannel("b:1").id());
        rr.resolver_update(&update(&["b:1", "a:1"]), &LbConfig::empty(), &mut ctl);
        assert_eq!(
            (ctl.subchannel("a:1").id(), ctl.subchannel("b:1").id()),
            (a, b)
        );
        assert_eq!(ctl.connects("a:1") + ctl.connects("b:1"), 2, "no reconnect");
    }

    #[test]
    fn steady_state_publishes_no_new_picker() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1"]), &LbConfig::empty(), &mut ctl);
        ctl.deliver(&mut *rr, "a:1", Ready);
        let n = ctl.pickers.len();
        rr.resolver_update(&update(&["a:1"]), &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.pickers.len(), n);
    }

    #[test]
    fn empty_update_fails_calls_and_keeps_nothing() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1"]), &LbConfig::empty(), &mut ctl);
        ctl.deliver(&mut *rr, "a:1", Ready);
        rr.resolver_update(&update(&[]), &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.last_state(), TransientFailure);
        assert!(ctl
            .pick_status()
            .unwrap()
            .message()
            .contains("the resolver returned no addresses"));
    }

    #[test]
    fn a_burst_of_subchannel_events_builds_one_picker_after_it() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        let addrs: Vec<String> = (0..100).map(|i| format!("h{i}:1")).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        rr.resolver_update(&update(&refs), &LbConfig::empty(), &mut ctl);
        let before = ctl.pickers.len();
        // 100 subchannels connect, half become READY, in one burst: the
        // events only update counts and ask for work once.
        for (i, a) in addrs.iter().enumerate() {
            let sc = ctl.subchannel(a);
            for state in [Connecting, if i % 2 == 0 { Ready } else { Idle }] {
                sc.set_state(state);
                rr.subchannel_update(&sc, &SubchannelState::new(state), &mut ctl);
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
        rr.resolver_update(
            &update(&["a:1", "b:1", "c:1"]),
            &LbConfig::empty(),
            &mut ctl,
        );
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
            rr.resolver_update(&update(&addrs), &LbConfig::empty(), &mut ctl);
            // Each pick_first child: CONNECTING from its first pass; sticky
            // TRANSIENT_FAILURE until READY; IDLE (a lost connection, or a
            // backoff over) is left at once for a new attempt.
            let mut model = [Connecting; 4];
            for (child, s) in events {
                let state = ConnectivityState::from_u8(s);
                model[child] = match (model[child], state) {
                    (TransientFailure, Connecting | Idle) => TransientFailure,
                    (_, Idle) => Connecting,
                    (_, new) => new,
                };
                ctl.deliver(&mut *rr, addrs[child], state);
                proptest::prop_assert_eq!(ctl.last_state(), crate::balancer::aggregate_state(model));
            }
        }
    }

    #[test]
    fn two_threads_picking_at_once_spread_picks_evenly() {
        let (n, k) = (7, 2_000);
        let rotation = Rotation::new(std::array::from_fn(|i| i * 3));
        let barrier = std::sync::Barrier::new(2);
        let per_thread: Vec<(usize, Vec<usize>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let mut counts = vec![0; n];
                        for _ in 0..n * k {
                            counts[rotation.next(n)] += 1;
                        }
                        (thread_shard(), counts)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // n * k picks in a row from one counter hit each index k times,
        // whatever the interleaving: so 2k in all, and exactly k per thread
        // when the two threads have their own counters (as the first 16
        // picking threads do).
        for i in 0..n {
            let total: usize = per_thread.iter().map(|(_, c)| c[i]).sum();
            assert_eq!(total, 2 * k, "index {i}: {per_thread:?}");
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
    fn picks_rotate_over_a_thousand_ready_children() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        let addrs: Vec<String> = (0..1000).map(|i| format!("h{i}:1")).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        rr.resolver_update(&update(&refs), &LbConfig::empty(), &mut ctl);
        for a in &addrs {
            ctl.deliver_only(&mut *rr, a, SubchannelState::new(Ready));
        }
        assert!(ctl.run_work(&mut *rr));
        let picker = ctl.picker().unwrap();
        let headers = http::HeaderMap::new();
        let info = PickInfo::new("/x/y", &headers);
        let picks: Vec<String> = (0..2000)
            .map(|_| match picker.pick(&info) {
                PickResult::Pick(p) => p.subchannel().address().to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        for i in 0..1000 {
            assert_eq!(picks[i], picks[i + 1000], "strict rotation");
        }
        let distinct: std::collections::HashSet<&String> = picks.iter().collect();
        assert_eq!(distinct.len(), 1000);
    }

    #[test]
    fn each_child_connects_its_endpoint_and_one_picker_follows_the_update() {
        let (mut rr, mut ctl) = (build(1), FakeController::new());
        rr.resolver_update(&update(&["a:1", "b:1"]), &LbConfig::empty(), &mut ctl);
        let events: Vec<Event> = ctl
            .take_events()
            .into_iter()
            .filter(|e| !matches!(e, Event::ScheduleWork(_)))
            .collect();
        assert_eq!(
            events,
            [
                Event::NewSubchannel("a:1".into()),
                Event::Connect("a:1".into()),
                Event::NewSubchannel("b:1".into()),
                Event::Connect("b:1".into()),
                Event::UpdatePicker(Connecting),
            ]
        );
    }
}

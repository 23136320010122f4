//! The child manager: one child policy per endpoint (grpc-go's
//! `balancer/endpointsharding`).
//!
//! A [`ChildManager`] keeps one child policy (pick_first, by default) per
//! endpoint of the resolver's update and hands each child an update with
//! its own endpoint only. Endpoints are the same when they have the same
//! set of addresses; a repeated endpoint is ignored, and a child whose
//! endpoint is unchanged (addresses and attributes) is not sent the update
//! again. Each child sees a controller of its own: the pickers and states
//! it publishes go to the manager, its [`work`](Balancer::work) requests
//! are kept per child (the manager asks its own controller for the
//! earliest and runs each child whose time has come), and the updates of
//! the subchannels it asked for are routed to it (to every child that
//! asked, when endpoints share an address).
//!
//! **State.** The manager's state is [`aggregate_state`](super::aggregate_state)
//! of its children's: READY if any is READY, else CONNECTING, else IDLE,
//! else TRANSIENT_FAILURE (also with no endpoints). A child that reports
//! IDLE is asked to leave it at once (grpc-go's round_robin: a pick_first
//! child whose connection was lost reconnects without waiting for a
//! call), unless the children are lazy (below).
//! In TRANSIENT_FAILURE calls fail with the last connection error (or the
//! resolver's).
//!
//! **Lazy children** (for ring_hash, gRFC A42/A61: grpc-go's
//! endpointsharding with `DisableAutoReconnect` over `lazy` pick_first
//! children). A manager made lazy (`ChildManager::lazy`) starts each new
//! child IDLE without giving it its endpoint, and leaves a child that
//! reports IDLE alone: a child starts (gets its endpoint) or leaves IDLE
//! only when its parent asks for that child. A child not started yet is
//! not sent resolver errors; it gets the latest endpoint when it starts.
//!
//! **Picker.** While READY, calls go to the READY children's pickers: by
//! default in turn ([`RoundRobinPickers`], the round_robin rotation), or
//! through a picker the parent builds from the READY children's endpoints
//! and pickers ([`ChildPickers`]: weighted round robin and least request
//! do). ring_hash reads every child's state and picker instead and
//! publishes its own picker. A new picker is built only when the state,
//! the READY set or a READY child's picker changed.
//!
//! **Cost.** A subchannel event is O(1): one routing lookup, the child's
//! own handling, and a count per state; the picker is built once per burst
//! of events, in [`work`](Balancer::work) (O(n)). A resolver update is
//! O(n).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Weak};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::child::{Asked, Child};
use super::round_robin::Rotation;
use super::{failure_message, Balancer, BuildOptions, Controller, LbConfig, LbPolicy};
use crate::picker::{FailPicker, PickInfo, PickResult, Picker, QueuePicker};
use crate::resolver::ResolverUpdate;
use crate::subchannel::{SubchannelOwner, SubchannelState};
use crate::{ConnectivityState, Endpoint, Error, Subchannel};

/// One READY child as a [`ChildPickers`] sees it.
#[non_exhaustive]
pub struct ReadyChild<'a> {
    /// The child's endpoint (its attributes carry a weight, metadata).
    pub endpoint: &'a Endpoint,
    /// The picker the child published with READY.
    pub picker: &'a Arc<dyn Picker>,
}

impl fmt::Debug for ReadyChild<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyChild")
            .field("endpoint", self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Builds a [`ChildManager`]'s picker from its READY children, in the
/// order of the resolver's endpoints. Called on the control task, in
/// [`work`](Balancer::work), when the READY set or one of their pickers
/// changed; never with an empty list.
pub trait ChildPickers: Send + 'static {
    /// The picker over `ready`.
    fn build(&mut self, ready: &[ReadyChild<'_>]) -> Arc<dyn Picker>;
}

/// The default [`ChildPickers`]: every READY child in turn, each picking
/// thread from its own random start (the round_robin rotation).
#[derive(Debug)]
pub struct RoundRobinPickers {
    rng: SmallRng,
}

impl RoundRobinPickers {
    /// Start indices drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        RoundRobinPickers {
            rng: SmallRng::seed_from_u64(seed),
        }
    }
}

impl ChildPickers for RoundRobinPickers {
    fn build(&mut self, ready: &[ReadyChild<'_>]) -> Arc<dyn Picker> {
        let n = ready.len().max(1);
        let starts = std::array::from_fn(|_| self.rng.random_range(0..n));
        let pickers: Vec<Arc<dyn Picker>> = ready.iter().map(|c| c.picker.clone()).collect();
        Arc::new(ChildRoundRobin {
            children: pickers.into_boxed_slice(),
            rotation: Rotation::new(starts),
        })
    }
}

/// Rotates over the READY children's pickers and lets the chosen one pick.
/// One per-thread counter increment and one more indirect call than
/// picking a subchannel directly; the pick borrows from the child's
/// picker, which this picker holds.
struct ChildRoundRobin {
    children: Box<[Arc<dyn Picker>]>,
    rotation: Rotation,
}

impl Picker for ChildRoundRobin {
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        match self.children.get(self.rotation.next(self.children.len())) {
            Some(child) => child.pick(info),
            None => PickResult::Queue,
        }
    }
}

impl fmt::Debug for ChildRoundRobin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildRoundRobin")
            .field("children", &self.children.len())
            .finish()
    }
}

/// One child policy per endpoint; see the [module docs](self).
pub struct ChildManager {
    child_policy: LbPolicy,
    options: BuildOptions,
    pickers: Box<dyn ChildPickers>,
    /// Children by slot; a slot is kept for a child's life, freed slots
    /// are reused.
    slots: Vec<Option<EndpointChild>>,
    free: Vec<usize>,
    /// Endpoint key (its sorted addresses) -> slot.
    by_key: HashMap<Box<str>, usize>,
    /// Subchannel id -> the slots of the children that asked for it.
    routes: HashMap<u64, Route>,
    /// Slots whose child asked for work.
    waiting: Vec<usize>,
    counts: Counts,
    has_endpoints: bool,
    last_error: Option<Error>,
    /// The state, READY set and failure last published.
    published: Option<Published>,
    /// A child entered or left READY, or a READY child published, since
    /// the last picker was built.
    ready_changed: bool,
    /// Work was asked for to rebuild the picker and has not run yet.
    rebuild_scheduled: bool,
    /// Children start IDLE and leave it only when asked (module docs).
    lazy: bool,
}

struct EndpointChild {
    endpoint: Endpoint,
    child: Child,
    /// The state counted in [`Counts`] for it.
    counted: ConnectivityState,
    /// It is listed in `waiting`.
    waiting: bool,
    /// It was given its endpoint (a lazy manager's children start without).
    started: bool,
}

struct Route {
    subchannel: Weak<SubchannelOwner>,
    slots: Vec<usize>,
}

/// What the published picker was made of, to publish nothing new when
/// nothing changed.
#[derive(PartialEq)]
struct Published {
    state: ConnectivityState,
    /// The READY children's slots and pickers, by address.
    ready: Vec<(usize, usize)>,
    failure: Option<String>,
}

/// How many children are in each state, kept as they publish, so that the
/// aggregate state is O(1).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ready: usize,
    connecting: usize,
    idle: usize,
}

impl Counts {
    fn add(&mut self, state: ConnectivityState, up: bool) {
        let count = match state {
            ConnectivityState::Ready => &mut self.ready,
            ConnectivityState::Connecting => &mut self.connecting,
            ConnectivityState::Idle => &mut self.idle,
            ConnectivityState::TransientFailure | ConnectivityState::Shutdown => return,
        };
        *count = if up {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
    }

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

/// An endpoint's identity: its addresses, sorted.
pub(crate) fn endpoint_key(endpoint: &Endpoint) -> Box<str> {
    let mut addrs: Vec<&str> = endpoint.addresses().iter().map(|a| a.addr()).collect();
    addrs.sort_unstable();
    addrs.join(",").into_boxed_str()
}

impl ChildManager {
    /// A manager of `child_policy` children whose READY pickers are
    /// combined by `pickers`.
    pub fn new(
        child_policy: LbPolicy,
        options: BuildOptions,
        pickers: Box<dyn ChildPickers>,
    ) -> Self {
        ChildManager {
            child_policy,
            options,
            pickers,
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            routes: HashMap::new(),
            waiting: Vec::new(),
            counts: Counts::default(),
            has_endpoints: false,
            last_error: None,
            published: None,
            ready_changed: false,
            rebuild_scheduled: false,
            lazy: false,
        }
    }

    /// Makes the children lazy (see the module docs): each starts IDLE,
    /// without its endpoint, and a child leaves IDLE only through
    /// `exit_idle_child`.
    pub(crate) fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// The state and picker the child of the endpoint whose
    /// `endpoint_key` is `key` last published, if it has one.
    pub(crate) fn child(&self, key: &str) -> Option<(ConnectivityState, &Arc<dyn Picker>)> {
        let slot = *self.by_key.get(key)?;
        let entry = self.slots.get(slot)?.as_ref()?;
        Some((entry.child.state, &entry.child.picker))
    }

    /// Starts the child of the endpoint whose `endpoint_key` is `key`
    /// (gives it its endpoint) if it has not started, or asks it to leave
    /// IDLE if it is IDLE; does nothing otherwise.
    pub(crate) fn exit_idle_child(&mut self, key: &str, ctl: &mut dyn Controller) {
        if let Some(&slot) = self.by_key.get(key) {
            self.exit_idle_slot(slot, ctl);
        }
    }

    fn exit_idle_slot(&mut self, slot: usize, ctl: &mut dyn Controller) {
        let Some(entry) = self.slots.get(slot).and_then(Option::as_ref) else {
            return;
        };
        if !entry.started {
            self.start_child(slot, ctl);
        } else if entry.child.state == ConnectivityState::Idle {
            self.call(slot, ctl, |child, ctl| {
                child.call(ctl, |b, ctl| b.exit_idle(ctl))
            });
        }
    }

    /// Gives the child in `slot` its endpoint, with the child policy's
    /// config.
    fn start_child(&mut self, slot: usize, ctl: &mut dyn Controller) {
        let Some(entry) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        entry.started = true;
        let update = ResolverUpdate::from_endpoints(vec![entry.endpoint.clone()]);
        let config = self.child_policy.config().clone();
        self.call(slot, ctl, |child, ctl| {
            child.call(ctl, |b, ctl| b.resolver_update(&update, &config, ctl))
        });
    }

    /// How many children there are.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True with no children.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Builds and publishes a new picker at the next rebuild even if the
    /// READY set did not change (the parent's picker config changed).
    pub fn invalidate_picker(&mut self) {
        self.published = None;
    }

    /// Calls `f` on the child in `slot` and acts on what it asked for.
    fn call(
        &mut self,
        slot: usize,
        ctl: &mut dyn Controller,
        f: impl FnOnce(&mut Child, &mut dyn Controller) -> Asked,
    ) {
        let Some(entry) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let asked = f(&mut entry.child, ctl);
        if entry.child.work_at.is_some() && !entry.waiting {
            entry.waiting = true;
            self.waiting.push(slot);
        }
        for subchannel in asked.made {
            let route = self.routes.entry(subchannel.id()).or_insert_with(|| Route {
                subchannel: subchannel.downgrade(),
                slots: Vec::new(),
            });
            if !route.slots.contains(&slot) {
                route.slots.push(slot);
            }
        }
        if asked.published {
            self.child_published(slot, ctl);
        }
    }

    /// Counts the child's new state; an IDLE child is asked to leave it.
    fn child_published(&mut self, slot: usize, ctl: &mut dyn Controller) {
        let Some(entry) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let (was, now) = (entry.counted, entry.child.state);
        entry.counted = now;
        self.counts.add(was, false);
        self.counts.add(now, true);
        if was == ConnectivityState::Ready || now == ConnectivityState::Ready {
            self.ready_changed = true;
        }
        self.schedule_rebuild(ctl);
        if now == ConnectivityState::Idle && was != ConnectivityState::Idle && !self.lazy {
            self.call(slot, ctl, |child, ctl| {
                child.call(ctl, |b, ctl| b.exit_idle(ctl))
            });
        }
    }

    /// The picker is built once, after the burst this event is part of.
    fn schedule_rebuild(&mut self, ctl: &mut dyn Controller) {
        if !self.rebuild_scheduled {
            self.rebuild_scheduled = true;
            ctl.schedule_work(Instant::now());
        }
    }

    /// Publishes a picker if the state, the READY set or the failure
    /// changed. O(n).
    fn rebuild(&mut self, ctl: &mut dyn Controller) {
        let state = if self.has_endpoints {
            self.counts.aggregate()
        } else {
            ConnectivityState::TransientFailure
        };
        let failure = (state == ConnectivityState::TransientFailure)
            .then(|| self.last_error.as_ref().map(failure_message))
            .flatten();
        let ready_changed = std::mem::take(&mut self.ready_changed);
        if let Some(published) = &self.published {
            if published.state == state && published.failure == failure && !ready_changed {
                return;
            }
        }
        let ready: Vec<(usize, &EndpointChild)> = if state == ConnectivityState::Ready {
            self.slots
                .iter()
                .enumerate()
                .filter_map(|(slot, e)| e.as_ref().map(|e| (slot, e)))
                .filter(|(_, e)| e.child.state == ConnectivityState::Ready)
                .collect()
        } else {
            Vec::new()
        };
        let key = Published {
            state,
            ready: ready
                .iter()
                .map(|(slot, e)| (*slot, Arc::as_ptr(&e.child.picker) as *const () as usize))
                .collect(),
            failure: failure.clone(),
        };
        if self.published.as_ref() == Some(&key) {
            return;
        }
        let picker: Arc<dyn Picker> = match state {
            ConnectivityState::Ready => {
                let ready: Vec<ReadyChild<'_>> = ready
                    .iter()
                    .map(|(_, e)| ReadyChild {
                        endpoint: &e.endpoint,
                        picker: &e.child.picker,
                    })
                    .collect();
                self.pickers.build(&ready)
            }
            ConnectivityState::TransientFailure => Arc::new(FailPicker::unavailable(
                failure.unwrap_or_else(|| "no address could be connected".to_owned()),
            )),
            _ => Arc::new(QueuePicker),
        };
        self.published = Some(key);
        ctl.update_picker(state, picker);
    }

    /// Removes the children whose endpoints are gone (returned, to be
    /// dropped once the new children hold their subchannels) and makes
    /// the new ones; returns the slots to update.
    fn sync_children(&mut self, endpoints: &[Endpoint]) -> (Vec<usize>, Vec<EndpointChild>) {
        let mut wanted: HashMap<Box<str>, &Endpoint> = HashMap::with_capacity(endpoints.len());
        let mut order = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints.iter().filter(|e| !e.addresses().is_empty()) {
            let key = endpoint_key(endpoint);
            if !wanted.contains_key(&key) {
                wanted.insert(key.clone(), endpoint);
                order.push(key);
            }
        }
        let mut removed = Vec::new();
        let mut freed = HashSet::new();
        self.by_key.retain(|key, slot| {
            if wanted.contains_key(key) {
                return true;
            }
            if let Some(entry) = self.slots[*slot].take() {
                self.counts.add(entry.counted, false);
                if entry.counted == ConnectivityState::Ready {
                    self.ready_changed = true;
                }
                removed.push(entry);
            }
            freed.insert(*slot);
            self.free.push(*slot);
            false
        });
        if !freed.is_empty() {
            self.routes.retain(|_, route| {
                route.slots.retain(|slot| !freed.contains(slot));
                !route.slots.is_empty()
            });
            self.waiting.retain(|slot| !freed.contains(slot));
        }
        self.routes
            .retain(|_, route| route.subchannel.strong_count() > 0);
        let mut changed = Vec::new();
        for key in order {
            let endpoint = wanted[&key];
            match self.by_key.get(&key) {
                Some(&slot) => {
                    if let Some(entry) = self.slots[slot].as_mut() {
                        if entry.endpoint != *endpoint {
                            entry.endpoint = endpoint.clone();
                            changed.push(slot);
                        }
                    }
                }
                None => {
                    let slot = self.new_child(endpoint.clone());
                    self.by_key.insert(key, slot);
                    changed.push(slot);
                }
            }
        }
        (changed, removed)
    }

    fn new_child(&mut self, endpoint: Endpoint) -> usize {
        let balancer = self.child_policy.builder().build(&self.options);
        let mut child = Child::new(balancer);
        if self.lazy {
            child.state = ConnectivityState::Idle;
        }
        let entry = EndpointChild {
            endpoint,
            counted: child.state,
            child,
            waiting: false,
            started: !self.lazy,
        };
        self.counts.add(entry.counted, true);
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        }
    }
}

impl Balancer for ChildManager {
    /// `config` is the manager's own (unused); each child gets its
    /// endpoint with the child policy's config.
    fn resolver_update(&mut self, update: &ResolverUpdate, _: &LbConfig, ctl: &mut dyn Controller) {
        let (changed, removed) = self.sync_children(update.endpoints());
        self.has_endpoints = !self.by_key.is_empty();
        let config = self.child_policy.config().clone();
        for slot in changed {
            let started = self.slots[slot].as_ref().filter(|e| e.started);
            let Some(endpoint) = started.map(|e| e.endpoint.clone()) else {
                continue;
            };
            let child_update = ResolverUpdate::from_endpoints(vec![endpoint]);
            self.call(slot, ctl, |child, ctl| {
                child.call(ctl, |b, ctl| b.resolver_update(&child_update, &config, ctl))
            });
        }
        // The removed children go only now: the new ones hold the
        // subchannels they share with them.
        drop(removed);
        if !self.has_endpoints {
            self.last_error = Some(super::no_addresses());
            ctl.request_resolution();
        }
        self.ready_changed = true;
        self.rebuild_scheduled = false;
        self.rebuild(ctl);
    }

    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
        if self.by_key.is_empty() {
            self.last_error = Some(error.clone());
            self.has_endpoints = false;
            self.rebuild(ctl);
            return;
        }
        for slot in 0..self.slots.len() {
            if self.slots[slot].as_ref().is_some_and(|e| e.started) {
                self.call(slot, ctl, |child, ctl| {
                    child.call(ctl, |b, ctl| b.resolver_error(error, ctl))
                });
            }
        }
    }

    fn subchannel_update(
        &mut self,
        subchannel: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        if let Some(error) = &state.error {
            self.last_error = Some(error.clone());
            if self.counts.aggregate() == ConnectivityState::TransientFailure {
                // The failure message changes.
                self.schedule_rebuild(ctl);
            }
        }
        // Usually one child asked for it: no allocation then.
        let (first, others) = match self.routes.get(&subchannel.id()) {
            Some(route) => match route.slots.split_first() {
                Some((&first, [])) => (first, Vec::new()),
                Some((&first, others)) => (first, others.to_vec()),
                None => return,
            },
            None => return,
        };
        for slot in std::iter::once(first).chain(others) {
            self.call(slot, ctl, |child, ctl| {
                child.call(ctl, |b, ctl| b.subchannel_update(subchannel, state, ctl))
            });
        }
    }

    /// Asks every IDLE child to leave IDLE (starts a lazy manager's
    /// children that have not started).
    fn exit_idle(&mut self, ctl: &mut dyn Controller) {
        for slot in 0..self.slots.len() {
            self.exit_idle_slot(slot, ctl);
        }
    }

    /// Runs the children whose work is due, then builds the picker if
    /// anything changed, then asks again for the earliest child work left.
    fn work(&mut self, ctl: &mut dyn Controller) {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        for slot in std::mem::take(&mut self.waiting) {
            if let Some(entry) = self.slots.get_mut(slot).and_then(Option::as_mut) {
                entry.waiting = false;
            }
            self.call(slot, ctl, |child, ctl| child.work_if_due(now, ctl));
        }
        for &slot in &self.waiting {
            if let Some(at) = self.slots[slot].as_ref().and_then(|e| e.child.work_at) {
                earliest = Some(earliest.map_or(at, |t| t.min(at)));
            }
        }
        if std::mem::take(&mut self.rebuild_scheduled) {
            self.rebuild(ctl);
        }
        if let Some(at) = earliest {
            ctl.schedule_work(at);
        }
    }
}

impl fmt::Debug for ChildManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildManager")
            .field("child_policy", &self.child_policy)
            .field("children", &self.by_key.len())
            .field("state", &self.counts.aggregate())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balancer::testing::FakeController;
    use crate::balancer::PickFirstBuilder;
    use crate::{Address, Attributes};
    use ConnectivityState::*;

    /// Always the READY child with the highest weight.
    struct Heaviest;

    impl ChildPickers for Heaviest {
        fn build(&mut self, ready: &[ReadyChild<'_>]) -> Arc<dyn Picker> {
            let heaviest = ready
                .iter()
                .max_by_key(|c| c.endpoint.attributes().weight().unwrap_or(1))
                .map(|c| c.picker.clone());
            heaviest.unwrap_or_else(|| Arc::new(QueuePicker))
        }
    }

    fn manager(pickers: Box<dyn ChildPickers>) -> ChildManager {
        let pick_first = LbPolicy::new(Arc::new(PickFirstBuilder), LbConfig::empty());
        let options = BuildOptions::new("static:///a:1".parse().unwrap(), 1);
        ChildManager::new(pick_first, options, pickers)
    }

    fn weighted(addrs: &[&str], weight: u32) -> Endpoint {
        let mut attributes = Attributes::default();
        attributes.set_weight(Some(weight));
        Endpoint::new(addrs.iter().map(|a| Address::from(*a)).collect()).with_attributes(attributes)
    }

    #[test]
    fn a_parent_builds_its_picker_from_the_ready_childrens_endpoints() {
        let (mut m, mut ctl) = (manager(Box::new(Heaviest)), FakeController::new());
        let update =
            ResolverUpdate::from_endpoints(vec![weighted(&["a:1"], 1), weighted(&["b:1"], 5)]);
        m.resolver_update(&update, &LbConfig::empty(), &mut ctl);
        ctl.deliver(&mut m, "a:1", Ready);
        assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
        ctl.deliver(&mut m, "b:1", Ready);
        assert_eq!(
            ctl.pick_addr().as_deref(),
            Some("b:1"),
            "the weight 5 endpoint"
        );
        assert_eq!(m.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dual_stack_endpoint_is_one_child_with_its_own_happy_eyeballs_timer() {
        let (mut m, mut ctl) = (
            manager(Box::new(RoundRobinPickers::new(1))),
            FakeController::new(),
        );
        let update = ResolverUpdate::from_endpoints(vec![
            Endpoint::new(vec!["[::1]:1".into(), "127.0.0.1:1".into()]),
            Endpoint::new(vec!["10.0.0.1:1".into()]),
        ]);
        m.resolver_update(&update, &LbConfig::empty(), &mut ctl);
        assert_eq!(m.len(), 2);
        assert_eq!(ctl.connected_addrs(), ["[::1]:1", "10.0.0.1:1"]);
        ctl.deliver(&mut m, "[::1]:1", Connecting);
        // The first child's 250 ms timer goes through the manager.
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(ctl.run_due_work(&mut m));
        assert_eq!(ctl.connects("127.0.0.1:1"), 1, "the child's second address");
        ctl.deliver(&mut m, "127.0.0.1:1", Ready);
        assert_eq!(ctl.last_state(), Ready);
        assert_eq!(ctl.pick_addr().as_deref(), Some("127.0.0.1:1"));
    }

    #[test]
    fn endpoints_sharing_an_address_both_see_its_updates() {
        let (mut m, mut ctl) = (
            manager(Box::new(RoundRobinPickers::new(1))),
            FakeController::new(),
        );
        let update = ResolverUpdate::from_endpoints(vec![
            Endpoint::new(vec!["a:1".into(), "s:1".into()]),
            Endpoint::new(vec!["s:1".into(), "b:1".into()]),
        ]);
        m.resolver_update(&update, &LbConfig::empty(), &mut ctl);
        // The first child starts a:1, the second s:1; a:1 fails, so the
        // first child tries s:1 too, the subchannel the second one has.
        ctl.deliver_error(&mut m, "a:1", TransientFailure, "a:1: refused");
        ctl.deliver(&mut m, "s:1", Ready);
        assert_eq!(ctl.last_state(), Ready);
        let picks: Vec<String> = (0..4).filter_map(|_| ctl.pick_addr()).collect();
        assert_eq!(picks, ["s:1"; 4], "both children selected s:1");
    }

    #[test]
    fn lazy_children_start_idle_and_leave_it_only_when_asked() {
        let (mut m, mut ctl) = (
            manager(Box::new(RoundRobinPickers::new(1))).lazy(),
            FakeController::new(),
        );
        let update = ResolverUpdate::from_endpoints(vec![
            Endpoint::new(vec!["a:1".into(), "a:2".into()]),
            Endpoint::new(vec!["b:1".into()]),
        ]);
        m.resolver_update(&update, &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.last_state(), Idle);
        assert!(ctl.connected_addrs().is_empty(), "nothing connects");
        m.resolver_error(&Error::new(crate::ErrorKind::Resolver, "down"), &mut ctl);
        assert_eq!(m.child("b:1").map(|c| c.0), Some(Idle), "not started");
        m.exit_idle_child("a:1,a:2", &mut ctl);
        assert_eq!(ctl.connected_addrs(), ["a:1"], "started: its first address");
        ctl.deliver(&mut m, "a:1", Ready);
        assert_eq!(ctl.last_state(), Ready);
        ctl.deliver(&mut m, "a:1", Idle);
        assert_eq!(m.child("a:1,a:2").map(|c| c.0), Some(Idle));
        assert_eq!(ctl.connects("a:1"), 1, "an IDLE child is left alone");
        m.exit_idle_child("a:1,a:2", &mut ctl);
        assert_eq!(ctl.connects("a:1"), 2, "until asked");
    }

    #[test]
    fn repeated_and_empty_endpoints_are_ignored_and_an_unchanged_child_is_left_alone() {
        let (mut m, mut ctl) = (
            manager(Box::new(RoundRobinPickers::new(1))),
            FakeController::new(),
        );
        let update = ResolverUpdate::from_endpoints(vec![
            Endpoint::new(vec!["a:1".into(), "b:1".into()]),
            Endpoint::new(vec!["b:1".into(), "a:1".into()]),
            Endpoint::new(vec![]),
        ]);
        m.resolver_update(&update, &LbConfig::empty(), &mut ctl);
        assert_eq!(m.len(), 1);
        ctl.deliver_error(&mut m, "a:1", TransientFailure, "a:1: refused");
        assert_eq!(ctl.connects("b:1"), 1);
        ctl.take_events();
        m.resolver_update(&update, &LbConfig::empty(), &mut ctl);
        assert!(ctl.take_events().is_empty(), "nothing asked again");
    }
}

//! The control task: one per channel, it serialises everything that is not
//! the request path.
//!
//! It owns the resolver, the balancer and the table of subchannels. Events
//! reach it as messages (resolver updates and errors, subchannel state
//! changes, requests to leave IDLE) and it hands them to the balancer one at
//! a time, so a balancer never needs a lock. When the last channel handle is
//! dropped its request channel closes and the task ends, dropping the
//! balancer (and with it every subchannel) and the resolver.
//!
//! **Bounded by construction.** The resolver's sink holds one snapshot
//! (`resolver::UpdateSink`), each subchannel queues at most one connection
//! attempt's events (see `subchannel`), and a burst of events publishes
//! one picker and asks the resolver once. Whatever the number of failing
//! addresses, nothing between the tasks grows without bound.
//!
//! **Failure reason.** From the events it delivers, the task knows the
//! resolver's last error and the last connection error; it publishes the
//! one that explains the state (`resolver error: ...` while the resolver
//! gave no addresses, else `last connection error: ...`) with every
//! picker, and keeps it current between pickers, so messages such as
//! `wait_until_ready`'s never pick to find out.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::MethodCell;
use crate::balancer::outlier_detection::OutlierDetectionConfig;
use crate::balancer::{
    failure_message, Balancer, BalancerRegistry, Controller, GracefulSwitch, LbPolicy, PICK_FIRST,
};
use crate::picker::{FailPicker, PickerCell};
use crate::resolver::{Resolver, ResolverEvents, ResolverUpdate, UpdateReceiver};
use crate::service_config::MethodTable;
use crate::stats::{ChannelSnapshot, ResolverSnapshot};
use crate::subchannel::{ConnectConfig, StateEvent, SubchannelOwner, SubchannelState};
use crate::{Address, ConnectivityState, Error, Picker, Subchannel, Target};

/// What channel handles ask of the control task.
#[derive(Debug)]
pub(crate) enum ControlRequest {
    /// A call found the channel IDLE.
    ExitIdle,
    /// `BalancedChannel::snapshot`.
    Snapshot(oneshot::Sender<ChannelSnapshot>),
    /// What the CONNECTING subchannels wait for (`wait_until_ready`'s
    /// error).
    Connecting(oneshot::Sender<Vec<String>>),
}

pub(crate) struct Control {
    pub(crate) target: Target,
    pub(crate) resolver: Box<dyn Resolver>,
    pub(crate) resolver_rx: UpdateReceiver,
    pub(crate) requests: mpsc::UnboundedReceiver<ControlRequest>,
    /// Runs the selected policy, switching gracefully when the service
    /// config selects another.
    pub(crate) balancer: GracefulSwitch,
    /// The policy last handed to the balancer.
    pub(crate) policy: Option<LbPolicy>,
    /// The channel builder's policy, used when the resolver gives no
    /// service config (or one that selects no policy).
    pub(crate) default_policy: LbPolicy,
    /// The health service name of the builder's service config, used when
    /// the resolver gives no service config.
    pub(crate) default_health: Option<Arc<str>>,
    /// The method configs of the builder's service config, used when the
    /// resolver gives no service config.
    pub(crate) default_methods: Arc<MethodTable>,
    /// The method configs calls apply (shared with every call).
    pub(crate) methods: Arc<MethodCell>,
    pub(crate) balancers: BalancerRegistry,
    pub(crate) table: SubchannelTable,
    pub(crate) events_rx: mpsc::UnboundedReceiver<StateEvent>,
    pub(crate) picker: Arc<PickerCell>,
    pub(crate) effects: Effects,
    pub(crate) failure: Failure,
    /// The channel's state for `BalancedChannel::state_changes`: sent
    /// whenever a published picker changes it.
    pub(crate) states: Arc<watch::Sender<ConnectivityState>>,
    /// The resolver's last update, for snapshots.
    pub(crate) resolved: ResolverSnapshot,
}

/// Why the channel may not be READY, as the events delivered to the
/// balancer tell it: published with every picker (see
/// `picker::Snapshot::failure`), so nobody picks to build a message.
#[derive(Default)]
pub(crate) struct Failure {
    /// The resolver's last error, or its last update being empty; cleared
    /// by an update with addresses.
    resolver: Option<Error>,
    /// Whether the last update had addresses.
    has_addresses: bool,
    /// The last error a subchannel reported.
    connection: Option<Error>,
    /// The last error that says more than "unreachable"
    /// ([`Error::is_unreachable`]: e.g. a TLS failure) and its address,
    /// until that address reports again or leaves the resolver's list: it
    /// wins over `connection`, so a refusal on another address does not
    /// hide it.
    telling: Option<(Arc<str>, Error)>,
    /// Changed since it was last published.
    changed: bool,
}

impl Failure {
    /// `resolver error: ...` while the resolver gave no addresses, else
    /// `last connection error: ...` (or the resolver's error if no
    /// connection failed yet).
    fn message(&self) -> Option<Arc<Error>> {
        let error = if self.has_addresses {
            let telling = self.telling.as_ref().map(|(_, e)| e);
            telling
                .or(self.connection.as_ref())
                .or(self.resolver.as_ref())
        } else {
            self.resolver.as_ref()
        };
        error.map(|e| Arc::new(Error::new(e.kind(), failure_message(e))))
    }

    fn resolved(&mut self, update: &ResolverUpdate) {
        if let Some((address, _)) = &self.telling {
            if !update.addresses().iter().any(|a| a.addr() == &**address) {
                self.telling = None;
            }
        }
        self.has_addresses = !update.addresses().is_empty();
        self.resolver = (!self.has_addresses).then(crate::balancer::no_addresses);
        self.changed = true;
    }

    fn resolver_failed(&mut self, error: &Error) {
        self.resolver = Some(error.clone());
        self.changed = true;
    }

    /// `address` reported `state`.
    fn subchannel_state(&mut self, address: &str, state: &SubchannelState) {
        let error = state.error.as_ref();
        let news = error.is_some() || state.connectivity == ConnectivityState::Ready;
        if news && self.telling.as_ref().is_some_and(|(a, _)| &**a == address) {
            self.telling = None;
            self.changed = true;
        }
        let Some(error) = error else {
            return;
        };
        if !error.is_unreachable() {
            self.telling = Some((address.into(), error.clone()));
        }
        self.connection = Some(error.clone());
        self.changed = true;
    }
}

/// One subchannel per address, shared by whoever holds it: the channel's
/// table, also behind the public test controller
/// (`balancer::testing::FakeController`), whose subchannels are detached
/// (no connection task).
pub(crate) struct SubchannelTable {
    by_addr: HashMap<Arc<str>, Weak<SubchannelOwner>>,
    by_id: HashMap<u64, Weak<SubchannelOwner>>,
    next_id: u64,
    /// How many entries there were after dead ones were last forgotten.
    kept: usize,
    /// Where connection tasks report, and how they connect; `None` for
    /// detached subchannels.
    spawn: Option<(mpsc::UnboundedSender<StateEvent>, Arc<ConnectConfig>)>,
}

impl SubchannelTable {
    pub(crate) fn new(
        config: Arc<ConnectConfig>,
        events_tx: mpsc::UnboundedSender<StateEvent>,
    ) -> Self {
        SubchannelTable {
            spawn: Some((events_tx, config)),
            ..SubchannelTable::detached()
        }
    }

    /// A table of subchannels that never connect (for balancer tests).
    pub(crate) fn detached() -> Self {
        SubchannelTable {
            by_addr: HashMap::new(),
            by_id: HashMap::new(),
            next_id: 0,
            kept: 0,
            spawn: None,
        }
    }

    /// Turns client-side health checking of every subchannel on (for the
    /// service `name`) or off (`None`).
    pub(crate) fn set_health_service(&self, name: Option<Arc<str>>) {
        if let Some((_, config)) = &self.spawn {
            config.health.set(name);
        }
    }

    /// The live subchannel for `addr`, if any.
    pub(crate) fn live(&self, addr: &str) -> Option<Subchannel> {
        self.by_addr.get(addr).and_then(Subchannel::upgrade)
    }

    /// The live subchannel with this id, if any.
    fn by_id(&self, id: u64) -> Option<Subchannel> {
        self.by_id.get(&id).and_then(Subchannel::upgrade)
    }

    /// Every live subchannel, oldest first.
    pub(crate) fn all_live(&self) -> Vec<Subchannel> {
        let mut live: Vec<Subchannel> = self
            .by_id
            .values()
            .filter_map(Subchannel::upgrade)
            .collect();
        live.sort_unstable_by_key(Subchannel::id);
        live
    }

    /// The live subchannel for `address`, or a new one (true).
    pub(crate) fn get_or_make(&mut self, address: &Address) -> Result<(Subchannel, bool), Error> {
        if let Some(sc) = self.live(address.addr()) {
            return Ok((sc, false));
        }
        self.next_id += 1;
        let id = self.next_id;
        let sc = match &self.spawn {
            Some((events_tx, config)) => {
                Subchannel::spawn(id, address.clone(), config.clone(), events_tx.clone())?
            }
            None => Subchannel::detached(id, address.clone()),
        };
        self.by_addr.insert(address.addr().into(), sc.downgrade());
        self.by_id.insert(id, sc.downgrade());
        // Amortised O(1): dead entries go once they are half the table.
        if self.by_id.len() >= 2 * self.kept + 64 {
            self.forget_dead();
        }
        Ok((sc, true))
    }

    fn forget_dead(&mut self) {
        self.by_addr.retain(|_, w| w.strong_count() > 0);
        self.by_id.retain(|_, w| w.strong_count() > 0);
        self.kept = self.by_id.len();
    }
}

/// The [`Controller`] a balancer sees during one call: the channel's
/// subchannel table and what the burst asked for.
struct ChannelController<'a> {
    table: &'a mut SubchannelTable,
    effects: &'a mut Effects,
}

/// What balancer calls asked for during one burst of events, applied when
/// the burst ends.
#[derive(Default)]
pub(crate) struct Effects {
    /// The last picker handed over; only it is published.
    picker: Option<(ConnectivityState, Arc<dyn Picker>)>,
    /// A re-resolution was asked for (several requests make one) and not
    /// yet passed on to the resolver.
    resolve_now: bool,
    /// When the resolver was last asked to resolve again.
    resolved_at: Option<Instant>,
    /// When to call the balancer's `work` (the earliest request).
    work_at: Option<Instant>,
    /// A subchannel became READY during the burst: queued calls must look
    /// again even if the policy's picker did not change (a connection that
    /// was lost and replaced within one burst leaves the READY set as it
    /// was, but the calls that found the old connection gone wait for a
    /// new snapshot).
    wake_queued: bool,
}

impl Controller for ChannelController<'_> {
    fn new_subchannel(
        &mut self,
        address: &Address,
    ) -> Result<(Subchannel, SubchannelState), Error> {
        let (sc, _) = self.table.get_or_make(address)?;
        let state = SubchannelState::new(sc.state());
        Ok((sc, state))
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.effects.picker = Some((state, picker));
    }

    fn request_resolution(&mut self) {
        self.effects.resolve_now = true;
    }

    fn schedule_work(&mut self, at: Instant) {
        self.effects.work_at = Some(self.effects.work_at.map_or(at, |t| t.min(at)));
    }
}

/// How many queued events one burst takes before the channel publishes and
/// looks at its timer again.
const MAX_BURST: usize = 4096;

/// The least time between two re-resolutions the channel asks of its
/// resolver (gRPC's initial backoff). Requests within it are merged into
/// one at its end, so a resolver that answers at once (with no addresses,
/// an error, or a list whose every address is in backoff) cannot make the
/// policy and the resolver spin.
pub(crate) const MIN_RESOLVE_NOW_INTERVAL: Duration = Duration::from_secs(1);

impl Effects {
    /// When a merged re-resolution request is due (`now` at the
    /// earliest), if one waits.
    fn resolve_due(&self, now: Instant) -> Option<Instant> {
        if !self.resolve_now {
            return None;
        }
        let due = self
            .resolved_at
            .map_or(now, |at| at + MIN_RESOLVE_NOW_INTERVAL);
        Some(due.max(now))
    }

    /// The next time the loop must wake without an event.
    fn next_wake(&self) -> Option<Instant> {
        match (self.work_at, self.resolve_due(Instant::now())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Control {
    /// The event loop: wait for something, take everything else already
    /// queued with it (a burst), run the balancer's due work, then apply
    /// what the burst asked for: one resolve-now, one published picker.
    pub(crate) async fn run(mut self) {
        loop {
            let wake_at = self.effects.next_wake();
            tokio::select! {
                biased;
                request = self.requests.recv() => match request {
                    Some(request) => self.on_request(request),
                    None => break,
                },
                Some(event) = self.events_rx.recv() => self.on_subchannel_event(event),
                Some(events) = self.resolver_rx.recv() => self.on_resolver_events(events),
                () = sleep_until(wake_at), if wake_at.is_some() => {}
            }
            self.take_burst();
            self.run_due_work();
            self.apply_effects();
            // Never hog the runtime, whatever keeps arriving.
            tokio::task::coop::consume_budget().await;
        }
        tracing::debug!("channel closed; control task stops");
        self.methods.set_if_unresolved(&self.default_methods);
        let closed = FailPicker::unavailable(format!("channel to {} is shut down", self.target));
        self.publish(ConnectivityState::Shutdown, Arc::new(closed), None);
    }

    /// Publishes a picker; a new state also goes to `state_changes`.
    fn publish(
        &self,
        state: ConnectivityState,
        picker: Arc<dyn Picker>,
        failure: Option<Arc<Error>>,
    ) {
        self.picker.publish(state, picker, failure);
        self.states.send_if_modified(|current| {
            if *current == state {
                return false;
            }
            tracing::debug!(from = %current, to = %state, "channel state changed");
            *current = state;
            true
        });
    }

    /// Delivers the events already queued, at most [`MAX_BURST`], and
    /// the resolver's newest update with them even when subchannel events
    /// fill the burst (so a flood of those never holds a new address set
    /// back).
    fn take_burst(&mut self) {
        for _ in 0..MAX_BURST {
            if let Ok(request) = self.requests.try_recv() {
                self.on_request(request);
            } else if let Ok(event) = self.events_rx.try_recv() {
                self.on_subchannel_event(event);
            } else if let Some(events) = self.resolver_rx.try_recv() {
                self.on_resolver_events(events);
            } else {
                return;
            }
        }
        if let Some(events) = self.resolver_rx.try_recv() {
            self.on_resolver_events(events);
        }
    }

    fn run_due_work(&mut self) {
        if let Some(at) = self.effects.work_at {
            if at <= Instant::now() {
                self.effects.work_at = None;
                self.drive(|b, ctl| b.work(ctl));
            }
        }
    }

    fn apply_effects(&mut self) {
        let now = Instant::now();
        if self.effects.resolve_due(now).is_some_and(|due| due <= now) {
            self.effects.resolve_now = false;
            self.effects.resolved_at = Some(now);
            self.resolver.resolve_now();
        }
        let failure = std::mem::take(&mut self.failure.changed).then(|| self.failure.message());
        let wake_queued = std::mem::take(&mut self.effects.wake_queued);
        if let Some((state, picker)) = self.effects.picker.take() {
            let failure = failure.unwrap_or_else(|| self.picker.load().failure());
            self.publish(state, picker, failure);
        } else if wake_queued {
            // The same picker again, as a new snapshot: queued calls wake.
            let current = self.picker.load_full();
            let failure = failure.unwrap_or_else(|| current.failure());
            self.publish(current.state, current.picker.clone(), failure);
        } else if let Some(failure) = failure {
            self.picker.load().set_failure(failure);
        }
    }

    fn on_request(&mut self, request: ControlRequest) {
        match request {
            ControlRequest::ExitIdle => self.drive(|b, ctl| b.exit_idle(ctl)),
            ControlRequest::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            ControlRequest::Connecting(reply) => {
                let connecting = self
                    .table
                    .all_live()
                    .iter()
                    .filter(|sc| sc.state() == ConnectivityState::Connecting)
                    .filter_map(Subchannel::connecting)
                    .collect();
                let _ = reply.send(connecting);
            }
        }
    }

    /// The channel as it stands between two events.
    fn snapshot(&self) -> ChannelSnapshot {
        let policy = self.policy.as_ref().unwrap_or(&self.default_policy);
        let subchannels = self
            .table
            .all_live()
            .iter()
            .map(|sc| sc.stats().snapshot(sc.address(), sc.state()))
            .collect();
        ChannelSnapshot {
            target: self.target.to_string(),
            policy: policy.name().to_owned(),
            state: self.picker.load().state,
            resolver: self.resolved.clone(),
            subchannels,
        }
    }

    /// Runs one balancer call; what it asks for is applied after the burst.
    fn drive(&mut self, f: impl FnOnce(&mut dyn Balancer, &mut dyn Controller)) {
        let mut ctl = ChannelController {
            table: &mut self.table,
            effects: &mut self.effects,
        };
        f(&mut self.balancer, &mut ctl);
    }

    fn on_subchannel_event(&mut self, event: StateEvent) {
        let Some(sc) = self.table.by_id(event.id) else {
            return;
        };
        sc.set_state(event.state.connectivity);
        match &event.state.error {
            Some(error) => {
                tracing::debug!(address = %sc.address(), state = %event.state.connectivity, %error, "subchannel state")
            }
            None => {
                tracing::debug!(address = %sc.address(), state = %event.state.connectivity, "subchannel state")
            }
        }
        sc.stats()
            .state_delivered(event.state.connectivity, event.state.error.as_ref());
        self.failure
            .subchannel_state(sc.address().addr(), &event.state);
        if event.state.connectivity == ConnectivityState::Ready {
            self.effects.wake_queued = true;
        }
        self.drive(|b, ctl| b.subchannel_update(&sc, &event.state, ctl));
    }

    /// The newest update, then an error reported after it (the sink keeps
    /// no older ones: updates are full snapshots).
    fn on_resolver_events(&mut self, events: ResolverEvents) {
        if let Some(update) = events.update {
            self.failure.resolved(&update);
            self.resolved.updated(update.endpoints().len());
            tracing::debug!(endpoints = update.endpoints().len(), "resolver update");
            let (policy, accepted) = self.select_policy(&update);
            match update.service_config() {
                Some(config) if accepted => self.methods.set(config.methods()),
                // A rejected config changes no call either (the first
                // one leaves the builder's, so calls stop waiting).
                Some(_) => self.methods.set_if_unresolved(&self.default_methods),
                None => self.methods.set(&self.default_methods),
            }
            let health = match update.service_config() {
                Some(config) if accepted => Some(config.health_check_service_name().map(Arc::from)),
                // A rejected config keeps the health checking in use.
                Some(_) => None,
                None => Some(self.default_health.clone()),
            };
            if let Some(health) = health {
                self.table
                    .set_health_service(health_service(health, &policy));
            }
            let running = self.policy.as_ref().unwrap_or(&self.default_policy);
            if running.name() != policy.name() {
                tracing::Span::current().record("policy", policy.name());
            }
            let config = GracefulSwitch::config(policy.clone());
            self.picker.set_policy(policy.name());
            self.policy = Some(policy);
            self.drive(|b, ctl| b.resolver_update(&update, &config, ctl));
        }
        if let Some(error) = events.error {
            tracing::warn!(%error, "resolver error; keeping known addresses");
            self.failure.resolver_failed(&error);
            self.resolved.failed(&error);
            // Calls waiting for the first resolution go on with the
            // builder's method configs.
            self.methods.set_if_unresolved(&self.default_methods);
            if self.policy.is_none() {
                // No update yet: the default policy reports the error.
                let policy = self.default_policy.clone();
                self.balancer.switch_to(&policy);
                self.picker.set_policy(policy.name());
                self.policy = Some(policy);
            }
            self.drive(|b, ctl| b.resolver_error(&error, ctl));
        }
    }

    /// The policy for `update`: its service config's (the balancer
    /// registry selects it), else the channel's default. A service config
    /// that cannot be used is logged and the policy in use is kept (gRPC:
    /// a bad config from the resolver never breaks a working channel).
    /// The flag is false when the update's config was rejected so (its
    /// method configs are not applied either).
    fn select_policy(&self, update: &ResolverUpdate) -> (LbPolicy, bool) {
        let Some(config) = update.service_config() else {
            return (self.default_policy.clone(), true);
        };
        match self.balancers.select(config) {
            Ok(Some(policy)) => (policy, true),
            Ok(None) => (self.default_policy.clone(), true),
            Err(error) => {
                tracing::warn!(%error, "ignoring the resolver's service config");
                let running = self
                    .policy
                    .clone()
                    .unwrap_or_else(|| self.default_policy.clone());
                (running, false)
            }
        }
    }
}

/// The health service the subchannels check under `policy`: `name`, unless
/// the policy is `pick_first` at the top (or under outlier detection only),
/// which does no health checking in gRPC (gRFC A17; as a child of a policy
/// such as round_robin it does).
pub(crate) fn health_service(name: Option<Arc<str>>, policy: &LbPolicy) -> Option<Arc<str>> {
    let mut top = policy;
    while let Some(od) = top.config().get::<OutlierDetectionConfig>() {
        top = &od.child_policy;
    }
    name.filter(|_| top.name() != PICK_FIRST)
}

/// Sleeps until `at`; never completes for `None` (the caller guards it).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::balancer::{BalancerBuilder, BuildOptions, LbConfig};
    use crate::picker::QueuePicker;
    use crate::resolver::UpdateSink;
    use crate::service_config::ServiceConfig;
    use crate::subchannel::SubchannelState;

    /// What the stub balancer saw, in order.
    type Log = Arc<Mutex<Vec<String>>>;

    /// Publishes a picker on every event and asks for work on each
    /// subchannel update (as a policy that builds its picker once per
    /// burst would), or at a fixed delay after a resolver update.
    struct Stub {
        log: Log,
        configs: Arc<Mutex<Vec<serde_json::Value>>>,
        made: Arc<Mutex<Vec<Weak<SubchannelOwner>>>>,
        subchannels: Vec<Subchannel>,
        work_delay: Option<Duration>,
        /// Publishes nothing on subchannel updates.
        quiet: bool,
    }

    impl Balancer for Stub {
        fn resolver_update(
            &mut self,
            update: &ResolverUpdate,
            config: &LbConfig,
            ctl: &mut dyn Controller,
        ) {
            self.log.lock().unwrap().push("resolver_update".into());
            self.configs.lock().unwrap().push(config.json().clone());
            self.subchannels = update
                .addresses()
                .iter()
                .map(|a| ctl.new_subchannel(a).unwrap().0)
                .collect();
            let mut made = self.made.lock().unwrap();
            made.extend(self.subchannels.iter().map(Subchannel::downgrade));
            ctl.update_picker(ConnectivityState::Connecting, Arc::new(QueuePicker));
            if let Some(delay) = self.work_delay {
                ctl.schedule_work(Instant::now() + delay);
            }
        }

        fn resolver_error(&mut self, _: &Error, _: &mut dyn Controller) {}

        fn subchannel_update(
            &mut self,
            _: &Subchannel,
            state: &SubchannelState,
            ctl: &mut dyn Controller,
        ) {
            self.log
                .lock()
                .unwrap()
                .push(format!("update {}", state.connectivity));
            if self.quiet {
                return;
            }
            ctl.update_picker(state.connectivity, Arc::new(QueuePicker));
            ctl.request_resolution();
            ctl.schedule_work(Instant::now());
        }

        fn exit_idle(&mut self, _: &mut dyn Controller) {
            self.log.lock().unwrap().push("exit_idle".into());
        }

        fn work(&mut self, ctl: &mut dyn Controller) {
            self.log.lock().unwrap().push("work".into());
            ctl.update_picker(ConnectivityState::Ready, Arc::new(QueuePicker));
        }
    }

    struct CountingResolver(Arc<Mutex<usize>>);

    impl Resolver for CountingResolver {
        fn resolve_now(&mut self) {
            *self.0.lock().unwrap() += 1;
        }
    }

    /// Builds [`Stub`]s that share the harness's log.
    #[derive(Clone)]
    struct StubBuilder {
        log: Log,
        /// The configs its balancers were handed, and how many it built.
        configs: Arc<Mutex<Vec<serde_json::Value>>>,
        builds: Arc<Mutex<usize>>,
        made: Arc<Mutex<Vec<Weak<SubchannelOwner>>>>,
        work_delay: Option<Duration>,
        quiet: bool,
    }

    impl BalancerBuilder for StubBuilder {
        fn name(&self) -> &str {
            "stub"
        }

        fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
            *self.builds.lock().unwrap() += 1;
            Box::new(Stub {
                log: self.log.clone(),
                configs: self.configs.clone(),
                made: self.made.clone(),
                subchannels: Vec::new(),
                work_delay: self.work_delay,
                quiet: self.quiet,
            })
        }
    }

    /// A control task for `target` running `policy` (with `registry` for
    /// service configs).
    #[allow(clippy::too_many_arguments)]
    fn control(
        target: Target,
        resolver: Box<dyn Resolver>,
        resolver_rx: UpdateReceiver,
        requests: mpsc::UnboundedReceiver<ControlRequest>,
        policy: LbPolicy,
        balancers: BalancerRegistry,
        table: SubchannelTable,
        events_rx: mpsc::UnboundedReceiver<StateEvent>,
        picker: Arc<PickerCell>,
    ) -> Control {
        Control {
            balancer: GracefulSwitch::new(BuildOptions::new(target.clone(), 1)),
            target,
            resolver,
            resolver_rx,
            requests,
            policy: None,
            default_policy: policy,
            default_health: None,
            default_methods: Arc::default(),
            methods: Arc::new(MethodCell::new(Arc::default())),
            balancers,
            table,
            events_rx,
            picker,
            effects: Effects::default(),
            failure: Failure::default(),
            states: Arc::new(watch::channel(ConnectivityState::Connecting).0),
            resolved: ResolverSnapshot::default(),
        }
    }

    struct Harness {
        log: Log,
        stub: StubBuilder,
        made: Arc<Mutex<Vec<Weak<SubchannelOwner>>>>,
        resolutions: Arc<Mutex<usize>>,
        picker: Arc<PickerCell>,
        sink: UpdateSink,
        events_tx: mpsc::UnboundedSender<StateEvent>,
        requests_tx: mpsc::UnboundedSender<ControlRequest>,
        control: Option<Control>,
    }

    fn harness(work_delay: Option<Duration>) -> Harness {
        harness_with(work_delay, false)
    }

    fn harness_with(work_delay: Option<Duration>, quiet: bool) -> Harness {
        let log = Log::default();
        let made = Arc::default();
        let resolutions = Arc::new(Mutex::new(0));
        let (sink, resolver_rx) = UpdateSink::channel();
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let picker = Arc::new(PickerCell::new(
            ConnectivityState::Connecting,
            Arc::new(QueuePicker),
        ));
        let stub = StubBuilder {
            log: log.clone(),
            configs: Arc::default(),
            builds: Arc::default(),
            made: Arc::clone(&made),
            work_delay,
            quiet,
        };
        let stub_copy = stub.clone();
        let mut balancers = BalancerRegistry::new();
        balancers.register(Arc::new(stub.clone()));
        let control = control(
            "static:///a:1".parse().unwrap(),
            Box::new(CountingResolver(resolutions.clone())),
            resolver_rx,
            requests,
            LbPolicy::new(Arc::new(stub), LbConfig::empty()),
            balancers,
            // Subchannels that never connect: the test plays their events.
            SubchannelTable::detached(),
            events_rx,
            picker.clone(),
        );
        Harness {
            log,
            stub: stub_copy,
            made,
            resolutions,
            picker,
            sink,
            events_tx,
            requests_tx,
            control: Some(control),
        }
    }

    fn event(id: u64, connectivity: ConnectivityState) -> StateEvent {
        StateEvent {
            id,
            state: SubchannelState::new(connectivity),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_publishes_one_picker_and_resolves_once() {
        let mut h = harness(None);
        let addrs: Vec<Address> = (0..3).map(|i| Address::new(format!("a{i}:1"))).collect();
        h.sink.update(ResolverUpdate::new(addrs));
        let task = tokio::spawn(h.control.take().unwrap().run());
        tokio::task::yield_now().await;
        assert_eq!(h.picker.load().generation, 1, "the first update's picker");
        // 300 state changes queued at once: one burst.
        for i in 0..300u64 {
            let state = [ConnectivityState::Connecting, ConnectivityState::Idle][i as usize % 2];
            h.events_tx.send(event(i % 3 + 1, state)).unwrap();
        }
        tokio::task::yield_now().await;
        let snapshot = h.picker.load();
        assert_eq!(snapshot.generation, 2, "one picker for the burst");
        assert_eq!(snapshot.state, ConnectivityState::Ready, "work's picker");
        assert_eq!(*h.resolutions.lock().unwrap(), 1, "one resolve-now");
        let log = h.log.lock().unwrap().clone();
        assert_eq!(log.len(), 1 + 300 + 1, "{log:?}");
        assert_eq!(log.last().map(String::as_str), Some("work"));
        assert_eq!(log.iter().filter(|l| *l == "work").count(), 1);
        drop(h.requests_tx);
        task.await.unwrap();
        assert_eq!(h.picker.load().state, ConnectivityState::Shutdown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resolver_update_is_not_held_back_by_a_flood_of_subchannel_events() {
        let mut h = harness(None);
        h.sink
            .update(ResolverUpdate::new(vec![Address::new("a:1")]));
        for _ in 0..3 * MAX_BURST {
            h.events_tx
                .send(event(1, ConnectivityState::Connecting))
                .unwrap();
        }
        h.sink
            .update(ResolverUpdate::new(vec![Address::new("b:1")]));
        let task = tokio::spawn(h.control.take().unwrap().run());
        tokio::time::sleep(Duration::from_millis(1)).await;
        let log = h.log.lock().unwrap().clone();
        // The first burst took one event from the wait and MAX_BURST more
        // (for no known subchannel yet: not logged), then the newest update
        // (the first one was replaced, unread); the rest of the flood came
        // after it, for the subchannel it made.
        assert_eq!(log.first().map(String::as_str), Some("resolver_update"));
        let updates = log.iter().filter(|l| l.starts_with("update")).count();
        assert_eq!(updates, 3 * MAX_BURST - (1 + MAX_BURST));
        drop(h.requests_tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn re_resolution_is_asked_of_the_resolver_at_most_once_a_second() {
        let mut h = harness(None);
        let addrs: Vec<Address> = (0..2).map(|i| Address::new(format!("a{i}:1"))).collect();
        h.sink.update(ResolverUpdate::new(addrs));
        let task = tokio::spawn(h.control.take().unwrap().run());
        tokio::task::yield_now().await;
        let start = Instant::now();
        // Nine bursts, 100 ms apart, each asking for a re-resolution.
        for i in 0..9u64 {
            h.events_tx
                .send(event(i % 2 + 1, ConnectivityState::Connecting))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // At once for the first, then merged into one at the end of the
        // second.
        assert_eq!(*h.resolutions.lock().unwrap(), 1);
        tokio::time::sleep_until(start + Duration::from_millis(1001)).await;
        assert_eq!(*h.resolutions.lock().unwrap(), 2);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(*h.resolutions.lock().unwrap(), 2, "nothing more was asked");
        drop(h.requests_tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_subchannel_ready_again_wakes_queued_calls_even_with_the_same_picker() {
        let mut h = harness_with(None, true);
        h.sink
            .update(ResolverUpdate::new(vec![Address::new("a:1")]));
        let task = tokio::spawn(h.control.take().unwrap().run());
        tokio::task::yield_now().await;
        let generation = h.picker.load().generation;
        // Lost and replaced within one burst: the policy publishes nothing.
        for state in [
            ConnectivityState::Idle,
            ConnectivityState::Connecting,
            ConnectivityState::Ready,
        ] {
            h.events_tx.send(event(1, state)).unwrap();
        }
        let waiter = {
            let picker = h.picker.clone();
            tokio::spawn(async move { picker.changed_since(generation).await })
        };
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the queued call wakes")
            .unwrap();
        assert_eq!(h.picker.load().generation, generation + 1);
        // A burst with no READY in it wakes nobody.
        h.events_tx
            .send(event(1, ConnectivityState::Connecting))
            .unwrap();
        tokio::task::yield_now().await;
        assert_eq!(h.picker.load().generation, generation + 1);
        drop(h.requests_tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_work_runs_at_its_time_on_the_paused_clock() {
        let mut h = harness(Some(Duration::from_millis(250)));
        h.sink
            .update(ResolverUpdate::new(vec![Address::new("a:1")]));
        let start = Instant::now();
        let task = tokio::spawn(h.control.take().unwrap().run());
        tokio::task::yield_now().await;
        assert_eq!(*h.log.lock().unwrap(), ["resolver_update"]);
        tokio::time::sleep(Duration::from_millis(249)).await;
        assert_eq!(h.log.lock().unwrap().len(), 1, "not yet");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(*h.log.lock().unwrap(), ["resolver_update", "work"]);
        assert!(Instant::now() - start >= Duration::from_millis(250));
        assert_eq!(h.picker.load().state, ConnectivityState::Ready);
        drop(h.requests_tx);
        task.await.unwrap();
    }

    fn stub_config(json: &str) -> ServiceConfig {
        ServiceConfig::from_json(&format!(r#"{{"loadBalancingConfig":[{{"stub":{json}}}]}}"#))
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_config_change_of_the_same_policy_reaches_the_running_balancer() {
        let mut h = harness(None);
        let task = tokio::spawn(h.control.take().unwrap().run());
        for n in 1..=3 {
            let update = ResolverUpdate::new(vec![Address::new("a:1")])
                .with_service_config(stub_config(&format!(r#"{{"n":{n}}}"#)));
            h.sink.update(update);
            tokio::task::yield_now().await;
        }
        assert_eq!(*h.stub.builds.lock().unwrap(), 1, "never rebuilt");
        let configs = h.stub.configs.lock().unwrap().clone();
        let ns: Vec<i64> = configs.iter().map(|c| c["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, [1, 2, 3]);
        drop(h.requests_tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_service_config_keeps_the_running_policy_and_its_config() {
        let mut h = harness(None);
        let task = tokio::spawn(h.control.take().unwrap().run());
        let update = |config: ServiceConfig| {
            ResolverUpdate::new(vec![Address::new("a:1")]).with_service_config(config)
        };
        h.sink.update(update(stub_config(r#"{"n":1}"#)));
        tokio::task::yield_now().await;
        let unknown = ServiceConfig::from_json(r#"{"loadBalancingConfig":[{"nope":{}}]}"#).unwrap();
        h.sink.update(update(unknown));
        tokio::task::yield_now().await;
        assert_eq!(*h.stub.builds.lock().unwrap(), 1);
        let configs = h.stub.configs.lock().unwrap().clone();
        assert_eq!(configs.len(), 2, "the update still reached the policy");
        assert_eq!(configs[1]["n"], 1, "with the config it had");
        drop(h.requests_tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_policy_switch_keeps_publishing_the_old_policys_picker_until_the_new_one_is_ready() {
        let mut h = harness(None);
        h.sink
            .update(ResolverUpdate::new(vec![Address::new("a:1")]));
        let task = tokio::spawn(h.control.take().unwrap().run());
        tokio::task::yield_now().await;
        h.events_tx
            .send(event(1, ConnectivityState::Ready))
            .unwrap();
        tokio::task::yield_now().await;
        assert_eq!(h.picker.load().state, ConnectivityState::Ready);
        let generation = h.picker.load().generation;
        // round_robin to an address that is only CONNECTING: the stub's
        // READY picker stays.
        let round_robin =
            ServiceConfig::from_json(r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#).unwrap();
        h.sink.update(
            ResolverUpdate::new(vec![Address::new("b:1")]).with_service_config(round_robin),
        );
        tokio::task::yield_now().await;
        assert_eq!(h.picker.load().generation, generation, "nothing published");
        assert_eq!(h.picker.load().state, ConnectivityState::Ready);
        // b:1 READY: round_robin takes over, and the stub is dropped with
        // its subchannel a:1.
        h.events_tx
            .send(event(2, ConnectivityState::Ready))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let snapshot = h.picker.load();
        assert_eq!(snapshot.state, ConnectivityState::Ready);
        assert!(snapshot.generation > generation);
        let made = h.made.lock().unwrap().clone();
        assert!(Subchannel::upgrade(&made[0]).is_none(), "a:1 released");
        drop(h.requests_tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_on_an_idle_channel_reaches_the_balancers_exit_idle() {
        let mut h = harness(None);
        h.sink
            .update(ResolverUpdate::new(vec![Address::new("a:1")]));
        let task = tokio::spawn(h.control.take().unwrap().run());
        tokio::task::yield_now().await;
        h.requests_tx.send(ControlRequest::ExitIdle).unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            h.log.lock().unwrap().last().map(String::as_str),
            Some("exit_idle")
        );
        drop(h.requests_tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn subchannels_a_new_update_leaves_out_are_shut_down() {
        let mut h = harness(None);
        h.sink.update(ResolverUpdate::new(vec![
            Address::new("a:1"),
            Address::new("b:1"),
        ]));
        let task = tokio::spawn(h.control.take().unwrap().run());
        tokio::task::yield_now().await;
        h.sink
            .update(ResolverUpdate::new(vec![Address::new("b:1")]));
        tokio::task::yield_now().await;
        let made = h.made.lock().unwrap().clone();
        assert_eq!(made.len(), 3, "a:1 and b:1, then b:1 again");
        assert!(Subchannel::upgrade(&made[0]).is_none(), "a:1 shut down");
        let (b1, b2) = (Subchannel::upgrade(&made[1]), Subchannel::upgrade(&made[2]));
        assert!(b1.is_some() && b1 == b2, "b:1 kept, the same subchannel");
        drop(h.requests_tx);
        task.await.unwrap();
    }

    /// What the policy under test was handed.
    #[derive(Default)]
    struct Seen {
        resolver_updates: usize,
        subchannel_updates: usize,
    }

    /// A real policy, counting the events it is handed.
    struct Counting {
        inner: Box<dyn Balancer>,
        seen: Arc<Mutex<Seen>>,
    }

    impl Balancer for Counting {
        fn resolver_update(
            &mut self,
            update: &ResolverUpdate,
            config: &LbConfig,
            ctl: &mut dyn Controller,
        ) {
            self.seen.lock().unwrap().resolver_updates += 1;
            self.inner.resolver_update(update, config, ctl);
        }

        fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
            self.inner.resolver_error(error, ctl);
        }

        fn subchannel_update(
            &mut self,
            sc: &Subchannel,
            state: &SubchannelState,
            ctl: &mut dyn Controller,
        ) {
            self.seen.lock().unwrap().subchannel_updates += 1;
            self.inner.subchannel_update(sc, state, ctl);
        }

        fn work(&mut self, ctl: &mut dyn Controller) {
            self.inner.work(ctl);
        }
    }

    /// Builds round_robin balancers that count what they are handed.
    struct CountingBuilder(Arc<Mutex<Seen>>);

    impl BalancerBuilder for CountingBuilder {
        fn name(&self) -> &str {
            "counting_round_robin"
        }

        fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
            use crate::balancer::RoundRobinBuilder;
            Box::new(Counting {
                inner: RoundRobinBuilder.build(options),
                seen: self.0.clone(),
            })
        }
    }

    /// A real resolver, counting re-resolution requests.
    struct CountingWrapper(Box<dyn Resolver>, Arc<Mutex<usize>>);

    impl Resolver for CountingWrapper {
        fn resolve_now(&mut self) {
            *self.1.lock().unwrap() += 1;
            self.0.resolve_now();
        }
    }

    /// An HTTP/2 server on 127.0.0.1 that accepts every connection.
    async fn h2_backend() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut connection) = h2::server::handshake(socket).await {
                        while let Some(Ok(_)) = connection.accept().await {}
                    }
                });
            }
        });
        addr
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_failing_addresses_cost_one_resolver_update_and_few_pickers() {
        use crate::resolver::{ResolverBuilder, StaticResolverBuilder};
        const FAILING: usize = 10_000;
        let live = h2_backend().await;
        // 127.0.0.0/8 is loopback and nothing listens on port 1: every
        // connection is refused at once, and retried on its backoff.
        let mut addrs: Vec<String> = (0..FAILING)
            .map(|i| format!("127.0.{}.{}:1", 1 + i / 250, 1 + i % 250))
            .collect();
        addrs.push(live.to_string());
        let target: Target = format!("static:///{}", addrs.join(",")).parse().unwrap();
        let (sink, resolver_rx) = UpdateSink::channel();
        let resolver = StaticResolverBuilder.build(&target, sink.clone()).unwrap();
        let resolutions = Arc::new(Mutex::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let picker = Arc::new(PickerCell::new(
            ConnectivityState::Connecting,
            Arc::new(QueuePicker),
        ));
        let config = Arc::new(ConnectConfig {
            rng_seed: 1,
            ..ConnectConfig::default()
        });
        let control = control(
            target,
            Box::new(CountingWrapper(resolver, resolutions.clone())),
            resolver_rx,
            requests,
            LbPolicy::new(Arc::new(CountingBuilder(seen.clone())), LbConfig::empty()),
            BalancerRegistry::new(),
            SubchannelTable::new(config, events_tx),
            events_rx,
            picker.clone(),
        );
        let task = tokio::spawn(control.run());
        tokio::time::sleep(Duration::from_secs(30)).await;

        let snapshot = picker.load();
        assert_eq!(snapshot.state, ConnectivityState::Ready);
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        let resolutions = *resolutions.lock().unwrap();
        assert!(resolutions >= 1, "failures asked for re-resolution");
        // The static list was sent once and applied once, however often
        // re-resolution was asked for.
        assert_eq!(sink.updates_sent(), 1, "{resolutions} resolve_now calls");
        assert_eq!(seen.resolver_updates, 1);
        // IDLE, CONNECTING, READY: the failures never changed the READY
        // set, so no further picker was built.
        assert!(snapshot.generation <= 4, "{} pickers", snapshot.generation);
        // At most one attempt's 3 events per subchannel per backoff step:
        // 8 attempts fit in 30 s with 20 % jitter.
        let bound = 3 * 8 * (FAILING + 1);
        assert!(
            seen.subchannel_updates > 2 * FAILING && seen.subchannel_updates <= bound,
            "{} events",
            seen.subchannel_updates
        );
        let why = snapshot.failure().expect("connections failed").to_string();
        assert!(why.starts_with("last connection error: 127.0."), "{why}");
        drop(requests_tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_last_handle_stops_the_task_resolver_and_subchannels() {
        let mut h = harness(None);
        h.sink
            .update(ResolverUpdate::new(vec![Address::new("a:1")]));
        let task = tokio::spawn(h.control.take().unwrap().run());
        tokio::task::yield_now().await;
        let made = h.made.lock().unwrap().clone();
        assert_eq!(made.len(), 1);
        assert!(
            Subchannel::upgrade(&made[0]).is_some(),
            "held by the balancer"
        );
        drop(h.requests_tx);
        task.await.unwrap();
        assert!(h.sink.is_closed(), "the resolver's receiver is gone");
        assert!(
            Subchannel::upgrade(&made[0]).is_none(),
            "subchannel shut down"
        );
    }

    #[test]
    fn health_checking_is_off_for_pick_first_at_the_top_also_under_outlier_detection() {
        use crate::balancer::OutlierDetectionBuilder;
        let registry = BalancerRegistry::new();
        let empty = serde_json::json!({});
        let name: Option<Arc<str>> = Some("s".into());
        let pick_first = registry.policy("pick_first", &empty).unwrap();
        let round_robin = registry.policy("round_robin", &empty).unwrap();
        let over = |child: &str| {
            let json = serde_json::json!({ "childPolicy": [{ child: {} }] });
            LbPolicy::parse(Arc::new(OutlierDetectionBuilder), &json).unwrap()
        };
        assert_eq!(health_service(name.clone(), &pick_first), None);
        assert_eq!(health_service(name.clone(), &over("pick_first")), None);
        assert_eq!(health_service(name.clone(), &round_robin), name);
        assert_eq!(health_service(name.clone(), &over("round_robin")), name);
        assert_eq!(health_service(None, &round_robin), None);
    }
}

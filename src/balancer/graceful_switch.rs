//! Graceful switch: changing a channel's policy without a gap in service
//! (grpc-go's `internal/balancer/gracefulswitch`).
//!
//! [`GracefulSwitch`] is a policy whose config is another policy
//! ([`LbPolicy`]: a builder and its parsed config). While the configured
//! policy's name stays the same, updates (and config changes) go to the
//! running policy: it is never rebuilt, and keeps its state. When the name
//! changes, the new policy is built as *pending* and gets the update; the
//! *current* one keeps serving calls with its picker until
//!
//! - the pending policy reports anything but CONNECTING, or
//! - the current policy leaves READY (or was not READY to begin with, as
//!   soon as the pending one publishes),
//!
//! and then the pending policy becomes current, its picker is published and
//! the old policy is dropped (after the new one has taken the subchannels
//! it shares with it: the channel keeps one subchannel per address, so a
//! kept address keeps its connection). A second change while one is
//! pending replaces the pending policy; a change back to the current
//! policy's name drops the pending one.
//!
//! Resolver updates, resolver errors and requests to leave IDLE go to the
//! latest policy (the pending one if there is one), as in grpc-go.
//! Subchannel updates go to each policy that asked for that subchannel
//! (both, when they share it). Each policy's
//! [`work`](Balancer::work) requests are kept apart and run when due.
//!
//! The channel's control task runs one of these at the top of every
//! channel, configured with the policy the service config (or the channel
//! builder) selects.

use std::collections::HashMap;
use std::sync::Weak;

use tokio::time::Instant;

use super::child::{Asked, Child};
use super::{Balancer, BuildOptions, Controller, LbConfig, LbPolicy};
use crate::resolver::ResolverUpdate;
use crate::subchannel::{SubchannelOwner, SubchannelState};
use crate::{ConnectivityState, Error, Subchannel};

/// Switches between policies without a gap; see the [module docs](self).
///
/// ```
/// use std::sync::Arc;
/// use tonic_balance::balancer::testing::FakeController;
/// use tonic_balance::balancer::{
///     BuildOptions, GracefulSwitch, LbPolicy, PickFirstBuilder, RoundRobinBuilder,
/// };
/// use tonic_balance::resolver::ResolverUpdate;
/// use tonic_balance::balancer::Balancer;
/// use tonic_balance::ConnectivityState;
///
/// let options = BuildOptions::new("static:///a:1".parse().unwrap(), 1);
/// let mut switch = GracefulSwitch::new(options);
/// let mut ctl = FakeController::new();
/// let update = ResolverUpdate::new(vec!["a:1".into()]);
/// let pick_first = LbPolicy::parse(Arc::new(PickFirstBuilder), &serde_json::json!({})).unwrap();
/// switch.resolver_update(&update, &GracefulSwitch::config(pick_first), &mut ctl);
/// ctl.deliver(&mut switch, "a:1", ConnectivityState::Ready);
/// assert_eq!(switch.current_policy(), Some("pick_first"));
///
/// // round_robin (to a new address) is pending while it connects:
/// // pick_first keeps serving...
/// let round_robin = LbPolicy::parse(Arc::new(RoundRobinBuilder), &serde_json::json!({})).unwrap();
/// let update = ResolverUpdate::new(vec!["b:1".into()]);
/// switch.resolver_update(&update, &GracefulSwitch::config(round_robin), &mut ctl);
/// assert_eq!(switch.pending_policy(), Some("round_robin"));
/// assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
///
/// // ...until round_robin is READY.
/// ctl.deliver(&mut switch, "b:1", ConnectivityState::Ready);
/// assert_eq!(switch.current_policy(), Some("round_robin"));
/// assert_eq!(ctl.pick_addr().as_deref(), Some("b:1"));
/// ```
pub struct GracefulSwitch {
    options: BuildOptions,
    current: Option<Policy>,
    pending: Option<Policy>,
    /// How many times a pending policy became current.
    swaps: u64,
}

/// A running policy, its name and the subchannels it asked for.
struct Policy {
    name: String,
    child: Child,
    /// Subchannel id -> the subchannel, for routing its updates (dead
    /// ones are forgotten at each resolver update).
    subchannels: HashMap<u64, Weak<SubchannelOwner>>,
}

impl GracefulSwitch {
    /// A switch with no policy yet: the first resolver update builds one.
    pub fn new(options: BuildOptions) -> Self {
        GracefulSwitch {
            options,
            current: None,
            pending: None,
            swaps: 0,
        }
    }

    /// The config that runs `policy`.
    pub fn config(policy: LbPolicy) -> LbConfig {
        let json = serde_json::json!([{ policy.name(): policy.config().json().clone() }]);
        LbConfig::new(policy, json)
    }

    /// The name of the policy serving calls, if there is one.
    pub fn current_policy(&self) -> Option<&str> {
        self.current.as_ref().map(|p| p.name.as_str())
    }

    /// The name of the policy waiting to take over, if there is one.
    pub fn pending_policy(&self) -> Option<&str> {
        self.pending.as_ref().map(|p| p.name.as_str())
    }

    /// The policy that gets resolver updates: the pending one if any.
    fn latest(&mut self) -> Option<&mut Policy> {
        self.pending.as_mut().or(self.current.as_mut())
    }

    /// Makes `policy`'s the latest policy, building it if needed (pending
    /// while another one serves). [`resolver_update`](Balancer::resolver_update)
    /// does this with the policy of its config; a channel calls it to have
    /// a policy to report a resolver error before any update came.
    pub fn switch_to(&mut self, policy: &LbPolicy) {
        let name = policy.name();
        if self.pending.as_ref().is_some_and(|p| p.name == name) {
            return;
        }
        if self.current.as_ref().is_some_and(|p| p.name == name) {
            // Back to the current policy: the pending one is not needed.
            self.pending = None;
            return;
        }
        tracing::debug!(target = %self.options.target(), policy = name, "switching policy");
        let new = Policy {
            name: name.to_owned(),
            child: Child::new(policy.builder().build(&self.options)),
            subchannels: HashMap::new(),
        };
        match self.current {
            None => self.current = Some(new),
            Some(_) => self.pending = Some(new),
        }
    }

    /// Acts on what a call into the current (`pending` false) or pending
    /// policy asked for: publishes, swaps.
    fn after(&mut self, pending: bool, asked: Asked, ctl: &mut dyn Controller) {
        let policy = if pending {
            self.pending.as_mut()
        } else {
            self.current.as_mut()
        };
        let Some(policy) = policy else {
            return;
        };
        for subchannel in asked.made {
            policy
                .subchannels
                .insert(subchannel.id(), subchannel.downgrade());
        }
        if !asked.published {
            return;
        }
        let current_ready = self
            .current
            .as_ref()
            .is_some_and(|c| c.child.state == ConnectivityState::Ready);
        match (&self.pending, pending) {
            (None, _) => self.publish_current(ctl),
            (Some(p), true) if p.child.state != ConnectivityState::Connecting || !current_ready => {
                self.swap(ctl)
            }
            (Some(_), true) => {}
            (Some(_), false) if !current_ready => self.swap(ctl),
            (Some(_), false) => self.publish_current(ctl),
        }
    }

    fn publish_current(&mut self, ctl: &mut dyn Controller) {
        if let Some(current) = &self.current {
            ctl.update_picker(current.child.state, current.child.picker.clone());
        }
    }

    /// The pending policy becomes current; the old one is dropped.
    fn swap(&mut self, ctl: &mut dyn Controller) {
        if let Some(pending) = self.pending.take() {
            tracing::debug!(target = %self.options.target(), policy = %pending.name, "switched policy");
            self.swaps += 1;
            let old = self.current.replace(pending);
            self.publish_current(ctl);
            drop(old);
        }
    }

    /// Calls `f` on the latest policy.
    fn on_latest(
        &mut self,
        ctl: &mut dyn Controller,
        f: impl FnOnce(&mut dyn Balancer, &mut dyn Controller),
    ) {
        let pending = self.pending.is_some();
        if let Some(policy) = self.latest() {
            let asked = policy.child.call(ctl, f);
            self.after(pending, asked, ctl);
        }
    }

    /// Calls `f` on the pending policy (if `targets[0]`), then on the
    /// current one (if `targets[1]`) unless the first call made the pending
    /// policy current (then the old one is gone, and the new current one
    /// has had its call).
    fn each(
        &mut self,
        targets: [bool; 2],
        ctl: &mut dyn Controller,
        mut f: impl FnMut(&mut Child, &mut dyn Controller) -> Asked,
    ) {
        let swaps = self.swaps;
        if targets[0] {
            if let Some(pending) = self.pending.as_mut() {
                let asked = f(&mut pending.child, ctl);
                self.after(true, asked, ctl);
            }
        }
        if targets[1] && self.swaps == swaps {
            if let Some(current) = self.current.as_mut() {
                let asked = f(&mut current.child, ctl);
                self.after(false, asked, ctl);
            }
        }
    }

    /// Asks the channel again for the earliest work still wanted.
    fn reschedule(&self, ctl: &mut dyn Controller) {
        let earliest = [&self.current, &self.pending]
            .into_iter()
            .flatten()
            .filter_map(|p| p.child.work_at)
            .min();
        if let Some(at) = earliest {
            ctl.schedule_work(at);
        }
    }
}

impl Balancer for GracefulSwitch {
    /// `config` must be [`GracefulSwitch::config`]'s; any other is logged
    /// and the update goes to the running policy with an empty config.
    fn resolver_update(
        &mut self,
        update: &ResolverUpdate,
        config: &LbConfig,
        ctl: &mut dyn Controller,
    ) {
        let child_config = match config.get::<LbPolicy>() {
            Some(policy) => {
                self.switch_to(policy);
                policy.config().clone()
            }
            None => {
                tracing::warn!(config = ?config, "graceful switch: not a policy config; keeping the policy");
                LbConfig::empty()
            }
        };
        for policy in [&mut self.current, &mut self.pending].into_iter().flatten() {
            policy.subchannels.retain(|_, s| s.strong_count() > 0);
        }
        self.on_latest(ctl, |b, ctl| b.resolver_update(update, &child_config, ctl));
    }

    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
        self.on_latest(ctl, |b, ctl| b.resolver_error(error, ctl));
    }

    fn subchannel_update(
        &mut self,
        subchannel: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        let id = subchannel.id();
        let owns = |p: &Option<Policy>| p.as_ref().is_some_and(|p| p.subchannels.contains_key(&id));
        let targets = [owns(&self.pending), owns(&self.current)];
        self.each(targets, ctl, |child, ctl| {
            child.call(ctl, |b, ctl| b.subchannel_update(subchannel, state, ctl))
        });
    }

    fn exit_idle(&mut self, ctl: &mut dyn Controller) {
        self.on_latest(ctl, |b, ctl| b.exit_idle(ctl));
    }

    fn work(&mut self, ctl: &mut dyn Controller) {
        let now = Instant::now();
        self.each([true, true], ctl, |child, ctl| child.work_if_due(now, ctl));
        self.reschedule(ctl);
    }
}

impl std::fmt::Debug for GracefulSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GracefulSwitch")
            .field("current", &self.current_policy())
            .field("pending", &self.pending_policy())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::balancer::testing::FakeController;
    use crate::balancer::{BalancerBuilder, PickFirstBuilder, RoundRobinBuilder};
    use crate::picker::QueuePicker;
    use crate::Address;
    use ConnectivityState::*;

    fn switch() -> GracefulSwitch {
        GracefulSwitch::new(BuildOptions::new("static:///a:1".parse().unwrap(), 1))
    }

    fn config(builder: impl BalancerBuilder, json: serde_json::Value) -> LbConfig {
        GracefulSwitch::config(LbPolicy::parse(Arc::new(builder), &json).unwrap())
    }

    fn update(addrs: &[&str]) -> ResolverUpdate {
        ResolverUpdate::new(addrs.iter().map(|a| Address::from(*a)).collect())
    }

    /// Counts builds and records the configs it is handed.
    #[derive(Clone, Default)]
    struct Recording {
        builds: Arc<Mutex<usize>>,
        configs: Arc<Mutex<Vec<serde_json::Value>>>,
    }

    struct RecordingBalancer(Recording);

    impl BalancerBuilder for Recording {
        fn name(&self) -> &str {
            "recording"
        }

        fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
            *self.builds.lock().unwrap() += 1;
            Box::new(RecordingBalancer(self.clone()))
        }
    }

    impl Balancer for RecordingBalancer {
        fn resolver_update(
            &mut self,
            _: &ResolverUpdate,
            config: &LbConfig,
            ctl: &mut dyn Controller,
        ) {
            self.0.configs.lock().unwrap().push(config.json().clone());
            ctl.update_picker(Connecting, Arc::new(QueuePicker));
        }

        fn resolver_error(&mut self, _: &Error, _: &mut dyn Controller) {}

        fn subchannel_update(
            &mut self,
            _: &Subchannel,
            _: &SubchannelState,
            _: &mut dyn Controller,
        ) {
        }
    }

    #[test]
    fn a_config_change_of_the_same_policy_reaches_the_running_policy() {
        let (mut gs, mut ctl) = (switch(), FakeController::new());
        let recording = Recording::default();
        for n in 1..=3 {
            let json = serde_json::json!({ "n": n });
            gs.resolver_update(
                &update(&["a:1"]),
                &config(recording.clone(), json),
                &mut ctl,
            );
        }
        assert_eq!(*recording.builds.lock().unwrap(), 1, "built once");
        let seen: Vec<i64> = recording
            .configs
            .lock()
            .unwrap()
            .iter()
            .map(|c| c["n"].as_i64().unwrap())
            .collect();
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(gs.pending_policy(), None);
    }

    #[test]
    fn the_old_policy_serves_until_the_new_one_is_ready() {
        let (mut gs, mut ctl) = (switch(), FakeController::new());
        gs.resolver_update(
            &update(&["a:1"]),
            &config(PickFirstBuilder, serde_json::json!({})),
            &mut ctl,
        );
        ctl.deliver(&mut gs, "a:1", Ready);
        let published = ctl.pickers.len();
        gs.resolver_update(
            &update(&["b:1", "c:1"]),
            &config(RoundRobinBuilder, serde_json::json!({})),
            &mut ctl,
        );
        ctl.deliver(&mut gs, "b:1", Connecting);
        assert_eq!(gs.current_policy(), Some("pick_first"));
        assert_eq!(gs.pending_policy(), Some("round_robin"));
        assert_eq!(
            ctl.pickers.len(),
            published,
            "the pending policy's CONNECTING is not published"
        );
        assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
        ctl.deliver(&mut gs, "c:1", Ready);
        assert_eq!(
            (gs.current_policy(), gs.pending_policy()),
            (Some("round_robin"), None)
        );
        assert_eq!(ctl.last_state(), Ready);
        assert_eq!(ctl.pick_addr().as_deref(), Some("c:1"));
        // pick_first is gone, and with it (once the fake's copies of its
        // pickers go) its subchannel.
        ctl.pickers.clear();
        assert_eq!(ctl.connects("a:1"), 0);
    }

    #[test]
    fn the_new_policy_takes_over_when_the_old_one_leaves_ready() {
        let (mut gs, mut ctl) = (switch(), FakeController::new());
        gs.resolver_update(
            &update(&["a:1"]),
            &config(PickFirstBuilder, serde_json::json!({})),
            &mut ctl,
        );
        ctl.deliver(&mut gs, "a:1", Ready);
        gs.resolver_update(
            &update(&["b:1"]),
            &config(RoundRobinBuilder, serde_json::json!({})),
            &mut ctl,
        );
        assert_eq!(gs.pending_policy(), Some("round_robin"));
        ctl.deliver(&mut gs, "a:1", Idle);
        assert_eq!(
            (gs.current_policy(), gs.pending_policy()),
            (Some("round_robin"), None)
        );
        assert_eq!(
            ctl.last_state(),
            Connecting,
            "round_robin's state is published"
        );
    }

    #[test]
    fn a_shared_subchannel_updates_both_policies() {
        let (mut gs, mut ctl) = (switch(), FakeController::new());
        gs.resolver_update(
            &update(&["a:1", "b:1"]),
            &config(RoundRobinBuilder, serde_json::json!({})),
            &mut ctl,
        );
        ctl.deliver(&mut gs, "a:1", Ready);
        gs.resolver_update(
            &update(&["b:1"]),
            &config(PickFirstBuilder, serde_json::json!({})),
            &mut ctl,
        );
        assert_eq!(
            gs.pending_policy(),
            Some("pick_first"),
            "b:1 is still CONNECTING"
        );
        // b:1 READY: round_robin adds it to its rotation, pick_first
        // selects it and takes over.
        ctl.deliver(&mut gs, "b:1", Ready);
        assert_eq!(gs.current_policy(), Some("pick_first"));
        let picks: Vec<String> = (0..4).filter_map(|_| ctl.pick_addr()).collect();
        assert!(picks.iter().all(|a| a == "b:1"), "{picks:?}");
    }

    #[test]
    fn switching_back_drops_the_pending_policy() {
        let (mut gs, mut ctl) = (switch(), FakeController::new());
        let pick_first = || config(PickFirstBuilder, serde_json::json!({}));
        gs.resolver_update(&update(&["a:1"]), &pick_first(), &mut ctl);
        ctl.deliver(&mut gs, "a:1", Ready);
        gs.resolver_update(
            &update(&["b:1"]),
            &config(RoundRobinBuilder, serde_json::json!({})),
            &mut ctl,
        );
        gs.resolver_update(&update(&["a:1"]), &pick_first(), &mut ctl);
        assert_eq!(
            (gs.current_policy(), gs.pending_policy()),
            (Some("pick_first"), None)
        );
        assert_eq!(
            ctl.connects("b:1"),
            0,
            "round_robin and its subchannel are gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_pending_policys_timer_runs_while_the_old_one_serves() {
        let (mut gs, mut ctl) = (switch(), FakeController::new());
        gs.resolver_update(
            &update(&["a:1"]),
            &config(RoundRobinBuilder, serde_json::json!({})),
            &mut ctl,
        );
        ctl.deliver(&mut gs, "a:1", Ready);
        // pick_first's happy eyeballs: b:1 gets 250 ms, then c:1 starts.
        gs.resolver_update(
            &update(&["b:1", "c:1"]),
            &config(PickFirstBuilder, serde_json::json!({})),
            &mut ctl,
        );
        assert_eq!(gs.pending_policy(), Some("pick_first"));
        assert_eq!((ctl.connects("b:1"), ctl.connects("c:1")), (1, 0));
        tokio::time::advance(std::time::Duration::from_millis(250)).await;
        assert!(ctl.run_due_work(&mut gs));
        assert_eq!(ctl.connects("c:1"), 1, "the timer fired");
        assert_eq!(
            ctl.pick_addr().as_deref(),
            Some("a:1"),
            "round_robin still serves"
        );
    }
}

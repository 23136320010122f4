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
use crate::subchannel::{Inner, SubchannelState};
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
    subchannels: HashMap<u64, Weak<Inner>>,
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

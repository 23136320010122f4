//! The control task: one per channel, it serialises everything that is not
//! the request path.
//!
//! It owns the resolver, the balancer and the table of subchannels. Events
//! reach it as messages (resolver updates and errors, subchannel state
//! changes, requests to leave IDLE) and it hands them to the balancer one at
//! a time, so a balancer never needs a lock. When the last channel handle is
//! dropped its request channel closes and the task ends, dropping the
//! balancer (and with it every subchannel) and the resolver.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::balancer::{Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, Controller};
use crate::picker::{FailPicker, PickerCell};
use crate::resolver::{Resolver, ResolverEvent, ResolverUpdate};
use crate::subchannel::{ConnectConfig, Inner, StateEvent};
use crate::{Address, ConnectivityState, Error, Picker, Subchannel, Target};

/// What channel handles ask of the control task.
#[derive(Debug)]
pub(crate) enum ControlRequest {
    /// A call found the channel IDLE.
    ExitIdle,
}

/// The policy in use: its builder and config.
pub(crate) struct Policy {
    pub(crate) builder: Arc<dyn BalancerBuilder>,
    pub(crate) config: Value,
}

pub(crate) struct Control {
    pub(crate) target: Target,
    pub(crate) resolver: Box<dyn Resolver>,
    pub(crate) resolver_rx: mpsc::UnboundedReceiver<ResolverEvent>,
    pub(crate) requests: mpsc::UnboundedReceiver<ControlRequest>,
    pub(crate) balancer: Box<dyn Balancer>,
    pub(crate) policy: Policy,
    pub(crate) default_policy: Arc<Policy>,
    pub(crate) balancers: BalancerRegistry,
    pub(crate) table: SubchannelTable,
    pub(crate) events_rx: mpsc::UnboundedReceiver<StateEvent>,
    pub(crate) picker: Arc<PickerCell>,
    pub(crate) seed: u64,
}

/// One subchannel per address, shared by whoever holds it.
pub(crate) struct SubchannelTable {
    by_addr: HashMap<Arc<str>, Weak<Inner>>,
    by_id: HashMap<u64, Weak<Inner>>,
    next_id: u64,
    events_tx: mpsc::UnboundedSender<StateEvent>,
    config: Arc<ConnectConfig>,
}

impl SubchannelTable {
    pub(crate) fn new(
        config: Arc<ConnectConfig>,
        events_tx: mpsc::UnboundedSender<StateEvent>,
    ) -> Self {
        SubchannelTable {
            by_addr: HashMap::new(),
            by_id: HashMap::new(),
            next_id: 0,
            events_tx,
            config,
        }
    }

    fn forget_dead(&mut self) {
        self.by_addr.retain(|_, w| w.strong_count() > 0);
        self.by_id.retain(|_, w| w.strong_count() > 0);
    }
}

/// The [`Controller`] a balancer sees during one call.
struct Ctl<'a> {
    table: &'a mut SubchannelTable,
    picker: &'a PickerCell,
    resolve_now: bool,
}

impl Controller for Ctl<'_> {
    fn new_subchannel(&mut self, address: &Address) -> Result<Subchannel, Error> {
        if let Some(sc) = self
            .table
            .by_addr
            .get(address.addr())
            .and_then(Subchannel::upgrade)
        {
            return Ok(sc);
        }
        self.table.next_id += 1;
        let id = self.table.next_id;
        let sc = Subchannel::spawn(
            id,
            address.clone(),
            self.table.config.clone(),
            self.table.events_tx.clone(),
        )?;
        self.table
            .by_addr
            .insert(address.addr().into(), sc.downgrade());
        self.table.by_id.insert(id, sc.downgrade());
        Ok(sc)
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.picker.publish(state, picker);
    }

    fn request_resolution(&mut self) {
        self.resolve_now = true;
    }
}

impl Control {
    /// The event loop.
    pub(crate) async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                request = self.requests.recv() => match request {
                    Some(ControlRequest::ExitIdle) => self.drive(|b, ctl| b.exit_idle(ctl)),
                    None => break,
                },
                Some(event) = self.events_rx.recv() => self.on_subchannel_event(event),
                Some(event) = self.resolver_rx.recv() => {
                    let event = latest(event, &mut self.resolver_rx);
                    self.on_resolver_event(event);
                }
            }
        }
        tracing::debug!(target = %self.target, "channel closed; control task stops");
        let closed = FailPicker::unavailable(format!("channel to {} is shut down", self.target));
        self.picker
            .publish(ConnectivityState::Shutdown, Arc::new(closed));
    }

    /// Runs one balancer call, then whatever it asked for afterwards.
    fn drive(&mut self, f: impl FnOnce(&mut dyn Balancer, &mut dyn Controller)) {
        let mut ctl = Ctl {
            table: &mut self.table,
            picker: &self.picker,
            resolve_now: false,
        };
        f(&mut *self.balancer, &mut ctl);
        if ctl.resolve_now {
            self.resolver.resolve_now();
        }
    }

    fn on_subchannel_event(&mut self, event: StateEvent) {
        let Some(sc) = self
            .table
            .by_id
            .get(&event.id)
            .and_then(Subchannel::upgrade)
        else {
            return;
        };
        sc.set_state(event.state.connectivity);
        self.drive(|b, ctl| b.subchannel_update(&sc, &event.state, ctl));
    }

    fn on_resolver_event(&mut self, event: ResolverEvent) {
        match event {
            Ok(update) => {
                if !self.switch_policy(&update) {
                    self.drive(|b, ctl| b.resolver_update(&update, ctl));
                }
                self.table.forget_dead();
            }
            Err(error) => {
                tracing::warn!(target = %self.target, %error, "resolver error; keeping known addresses");
                self.drive(|b, ctl| b.resolver_error(&error, ctl));
            }
        }
    }

    /// Changes policy if the update's service config asks for another one;
    /// true if it did (and the new balancer has seen the update).
    fn switch_policy(&mut self, update: &ResolverUpdate) -> bool {
        let wanted = match update.service_config().map(|sc| sc.select(&self.balancers)) {
            Some(Ok(Some((builder, config)))) => Policy { builder, config },
            Some(Err(error)) => {
                tracing::warn!(target = %self.target, %error, "ignoring the resolver's service config");
                return false;
            }
            _ => Policy {
                builder: self.default_policy.builder.clone(),
                config: self.default_policy.config.clone(),
            },
        };
        if wanted.builder.name() == self.policy.builder.name()
            && wanted.config == self.policy.config
        {
            return false;
        }
        let options = BuildOptions::new(self.target.clone(), self.seed);
        match wanted.builder.build(&wanted.config, &options) {
            Ok(balancer) => {
                tracing::debug!(target = %self.target, policy = wanted.builder.name(), "switching policy");
                // The old balancer is dropped after the new one has taken
                // what it needs, so shared subchannels stay connected.
                let old = std::mem::replace(&mut self.balancer, balancer);
                self.policy = wanted;
                self.drive(|b, ctl| b.resolver_update(update, ctl));
                drop(old);
                true
            }
            Err(error) => {
                tracing::warn!(target = %self.target, %error, "cannot build the service config's policy");
                false
            }
        }
    }
}

/// Resolver updates are full snapshots: of a burst, only the newest matters.
/// An error that follows an update in the same burst is dropped: balancers
/// keep known addresses on errors anyway.
fn latest(first: ResolverEvent, rx: &mut mpsc::UnboundedReceiver<ResolverEvent>) -> ResolverEvent {
    let mut event = first;
    while let Ok(next) = rx.try_recv() {
        if next.is_ok() || event.is_err() {
            event = next;
        }
    }
    event
}

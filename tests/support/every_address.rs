//! A test policy written through the public API: a subchannel for every
//! resolved address, each asked to connect (and again whenever it goes
//! IDLE), and a picker the test makes over all of them, connected or not
//! (the request path must re-pick a call that lands on one that is not).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tonic_balance::balancer::{Balancer, BalancerBuilder, BuildOptions, Controller, LbConfig};
use tonic_balance::picker::{CallObserver, Pick, PickInfo, PickResult, Picker, QueuePicker};
use tonic_balance::resolver::ResolverUpdate;
use tonic_balance::subchannel::SubchannelState;
use tonic_balance::{ConnectivityState, Error, Subchannel};

/// Makes the picker over the policy's subchannels.
type MakePicker = Arc<dyn Fn(&[Subchannel]) -> Arc<dyn Picker> + Send + Sync>;

/// When the policy publishes its picker.
#[derive(Clone, Copy)]
pub enum Publish {
    /// At each resolver update, as READY.
    AtOnce,
    /// CONNECTING (calls queue) until a subchannel is READY, then a new
    /// picker at every READY, so calls that found their backend not yet
    /// connected pick again.
    AtEachReady,
}

/// The policy's builder, by the name a service config gives it.
#[derive(Clone)]
pub struct EveryAddress {
    name: &'static str,
    publish: Publish,
    make: MakePicker,
}

impl EveryAddress {
    pub fn new(
        name: &'static str,
        publish: Publish,
        make: impl Fn(&[Subchannel]) -> Arc<dyn Picker> + Send + Sync + 'static,
    ) -> Self {
        EveryAddress {
            name,
            publish,
            make: Arc::new(make),
        }
    }
}

impl BalancerBuilder for EveryAddress {
    fn name(&self) -> &str {
        self.name
    }

    fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(EveryAddressBalancer {
            policy: self.clone(),
            subchannels: Vec::new(),
        })
    }
}

struct EveryAddressBalancer {
    policy: EveryAddress,
    subchannels: Vec<Subchannel>,
}

impl EveryAddressBalancer {
    fn publish(&self, ctl: &mut dyn Controller) {
        let picker = (self.policy.make)(&self.subchannels);
        ctl.update_picker(ConnectivityState::Ready, picker);
    }
}

impl Balancer for EveryAddressBalancer {
    fn resolver_update(&mut self, update: &ResolverUpdate, _: &LbConfig, ctl: &mut dyn Controller) {
        self.subchannels = update
            .addresses()
            .iter()
            .filter_map(|a| ctl.new_subchannel(a).ok().map(|(sc, _)| sc))
            .collect();
        for sc in &self.subchannels {
            sc.connect();
        }
        match self.policy.publish {
            Publish::AtOnce => self.publish(ctl),
            Publish::AtEachReady => {
                ctl.update_picker(ConnectivityState::Connecting, Arc::new(QueuePicker))
            }
        }
    }

    fn resolver_error(&mut self, _: &Error, _: &mut dyn Controller) {}

    fn subchannel_update(
        &mut self,
        sc: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        match (state.connectivity, self.policy.publish) {
            (ConnectivityState::Idle, _) => sc.connect(),
            (ConnectivityState::Ready, Publish::AtEachReady) => self.publish(ctl),
            _ => {}
        }
    }
}

/// Rotates over its subchannels; each pick runs `on_pick` and carries
/// `observer`.
pub struct Rotation {
    subchannels: Vec<Subchannel>,
    next: AtomicUsize,
    observer: Arc<dyn CallObserver>,
    on_pick: Box<dyn Fn() + Send + Sync>,
}

impl Rotation {
    pub fn new(
        subchannels: &[Subchannel],
        observer: Arc<dyn CallObserver>,
        on_pick: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Rotation {
            subchannels: subchannels.to_vec(),
            next: AtomicUsize::new(0),
            observer,
            on_pick: Box::new(on_pick),
        }
    }
}

impl Picker for Rotation {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.subchannels.len();
        (self.on_pick)();
        PickResult::Pick(Pick::borrowed(&self.subchannels[i]).with_observer(self.observer.clone()))
    }
}

//! A wrapper around any policy that tells an observer what the policy
//! does (resolver updates, pickers, re-resolution requests), through the
//! public API. Tests use [`CountingPicks`], which counts the picks made on
//! the pickers a policy publishes, to check that something (an error
//! message) was built without picking; `examples/many_endpoints.rs`
//! (which includes this file by `#[path]`) counts what a policy was asked
//! and did.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tonic_balance::balancer::{
    Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, Controller, LbConfig,
};
use tonic_balance::picker::{PickInfo, PickResult, Picker};
use tonic_balance::resolver::ResolverUpdate;
use tonic_balance::subchannel::SubchannelState;
use tonic_balance::{Address, ConnectivityState, Error, Subchannel};

/// Hears what an [`Observed`] policy does; each method does nothing by
/// default.
pub trait PolicyObserver: Send + Sync + 'static {
    /// The policy got a resolver update.
    fn resolver_update(&self) {}

    /// The policy hands the channel `picker`; returns the picker the
    /// channel gets (the same, or a wrapper of it).
    fn picker(&self, picker: Arc<dyn Picker>) -> Arc<dyn Picker> {
        picker
    }

    /// The policy asked the channel to resolve again.
    fn resolution_requested(&self) {}
}

/// Builds `inner`'s policy with `observer` hearing what it does.
pub struct Observed<O> {
    inner: Arc<dyn BalancerBuilder>,
    observer: Arc<O>,
}

impl<O> Clone for Observed<O> {
    fn clone(&self) -> Self {
        Observed {
            inner: self.inner.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<O: PolicyObserver> Observed<O> {
    pub fn wrap(inner: Arc<dyn BalancerBuilder>, observer: Arc<O>) -> Self {
        Observed { inner, observer }
    }
}

impl<O: PolicyObserver> BalancerBuilder for Observed<O> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(ObservedBalancer {
            inner: self.inner.build(options),
            observer: self.observer.clone(),
        })
    }

    fn parse_config(&self, json: &serde_json::Value) -> Result<LbConfig, Error> {
        self.inner.parse_config(json)
    }
}

struct ObservedBalancer<O> {
    inner: Box<dyn Balancer>,
    observer: Arc<O>,
}

/// The channel's controller, with the observer in between.
struct ObservedController<'a, O> {
    inner: &'a mut dyn Controller,
    observer: &'a O,
}

impl<O: PolicyObserver> Controller for ObservedController<'_, O> {
    fn new_subchannel(
        &mut self,
        address: &Address,
    ) -> Result<(Subchannel, SubchannelState), Error> {
        self.inner.new_subchannel(address)
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        let picker = self.observer.picker(picker);
        self.inner.update_picker(state, picker);
    }

    fn request_resolution(&mut self) {
        self.observer.resolution_requested();
        self.inner.request_resolution();
    }

    fn schedule_work(&mut self, at: tokio::time::Instant) {
        self.inner.schedule_work(at);
    }
}

impl<O: PolicyObserver> ObservedBalancer<O> {
    fn with(
        &mut self,
        ctl: &mut dyn Controller,
        f: impl FnOnce(&mut dyn Balancer, &mut dyn Controller),
    ) {
        let mut ctl = ObservedController {
            inner: ctl,
            observer: &*self.observer,
        };
        f(&mut *self.inner, &mut ctl);
    }
}

impl<O: PolicyObserver> Balancer for ObservedBalancer<O> {
    fn resolver_update(
        &mut self,
        update: &ResolverUpdate,
        config: &LbConfig,
        ctl: &mut dyn Controller,
    ) {
        self.observer.resolver_update();
        self.with(ctl, |b, ctl| b.resolver_update(update, config, ctl));
    }

    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
        self.with(ctl, |b, ctl| b.resolver_error(error, ctl));
    }

    fn subchannel_update(
        &mut self,
        subchannel: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        self.with(ctl, |b, ctl| b.subchannel_update(subchannel, state, ctl));
    }

    fn exit_idle(&mut self, ctl: &mut dyn Controller) {
        self.with(ctl, |b, ctl| b.exit_idle(ctl));
    }

    fn work(&mut self, ctl: &mut dyn Controller) {
        self.with(ctl, |b, ctl| b.work(ctl));
    }
}

/// Counts the picks made on every picker it sees.
#[derive(Default)]
pub struct PickCounter(Arc<AtomicUsize>);

impl PolicyObserver for PickCounter {
    fn picker(&self, picker: Arc<dyn Picker>) -> Arc<dyn Picker> {
        Arc::new(CountingPicker {
            inner: picker,
            picks: self.0.clone(),
        })
    }
}

struct CountingPicker {
    inner: Arc<dyn Picker>,
    picks: Arc<AtomicUsize>,
}

impl Picker for CountingPicker {
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        self.picks.fetch_add(1, Ordering::SeqCst);
        self.inner.pick(info)
    }
}

/// The named built-in policy; every picker it publishes counts its picks.
pub type CountingPicks = Observed<PickCounter>;

impl Observed<PickCounter> {
    pub fn new(policy: &str) -> Self {
        let inner = BalancerRegistry::global()
            .get(policy)
            .expect("a built-in policy");
        Observed::wrap(inner, Arc::default())
    }

    pub fn picks(&self) -> usize {
        self.observer.0.load(Ordering::SeqCst)
    }
}

//! A wrapper around any policy that counts the picks made on the pickers
//! it publishes, so a test can check that something (an error message)
//! was built without picking.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tonic_balance::balancer::{
    Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, Controller, LbConfig,
};
use tonic_balance::picker::{PickInfo, PickResult, Picker};
use tonic_balance::resolver::ResolverUpdate;
use tonic_balance::subchannel::SubchannelState;
use tonic_balance::{Address, ConnectivityState, Error, Subchannel};

/// Builds the named built-in policy; every picker it publishes counts its
/// picks in `picks`.
#[derive(Clone)]
pub struct CountingPicks {
    inner: Arc<dyn BalancerBuilder>,
    pub picks: Arc<AtomicUsize>,
}

impl CountingPicks {
    pub fn new(policy: &str) -> Self {
        CountingPicks {
            inner: BalancerRegistry::global()
                .get(policy)
                .expect("a built-in policy"),
            picks: Arc::default(),
        }
    }

    pub fn picks(&self) -> usize {
        self.picks.load(Ordering::SeqCst)
    }
}

impl BalancerBuilder for CountingPicks {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(Wrapped {
            inner: self.inner.build(options),
            picks: self.picks.clone(),
        })
    }

    fn parse_config(&self, json: &serde_json::Value) -> Result<LbConfig, Error> {
        self.inner.parse_config(json)
    }
}

struct Wrapped {
    inner: Box<dyn Balancer>,
    picks: Arc<AtomicUsize>,
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

/// The channel's controller; wraps every picker handed over.
struct Ctl<'a> {
    inner: &'a mut dyn Controller,
    picks: &'a Arc<AtomicUsize>,
}

impl Controller for Ctl<'_> {
    fn new_subchannel(
        &mut self,
        address: &Address,
    ) -> Result<(Subchannel, SubchannelState), Error> {
        self.inner.new_subchannel(address)
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        let picks = self.picks.clone();
        let picker = Arc::new(CountingPicker {
            inner: picker,
            picks,
        });
        self.inner.update_picker(state, picker);
    }

    fn request_resolution(&mut self) {
        self.inner.request_resolution();
    }

    fn schedule_work(&mut self, at: tokio::time::Instant) {
        self.inner.schedule_work(at);
    }
}

impl Wrapped {
    fn with(
        &mut self,
        ctl: &mut dyn Controller,
        f: impl FnOnce(&mut dyn Balancer, &mut dyn Controller),
    ) {
        let mut ctl = Ctl {
            inner: ctl,
            picks: &self.picks,
        };
        f(&mut *self.inner, &mut ctl);
    }
}

impl Balancer for Wrapped {
    fn resolver_update(
        &mut self,
        update: &ResolverUpdate,
        config: &LbConfig,
        ctl: &mut dyn Controller,
    ) {
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

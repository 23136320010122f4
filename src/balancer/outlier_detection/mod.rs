//! `outlier_detection_experimental`: a parent policy that ejects backends
//! whose calls fail more than their peers' (gRFC A50).
//!
//! ```json
//! {"loadBalancingConfig": [{"outlier_detection_experimental": {
//!     "interval": "10s", "baseEjectionTime": "30s", "maxEjectionTime": "300s",
//!     "maxEjectionPercent": 10,
//!     "successRateEjection": {"stdevFactor": 1900, "enforcementPercentage": 100,
//!                             "minimumHosts": 5, "requestVolume": 100},
//!     "failurePercentageEjection": {"threshold": 85, "enforcementPercentage": 100,
//!                                   "minimumHosts": 5, "requestVolume": 50},
//!     "childPolicy": [{"round_robin": {}}]}}]}
//! ```
//!
//! (the values shown are A50's defaults; [`OutlierDetectionConfig`]).
//!
//! **How.** The policy runs its `childPolicy` and stands between it and
//! the channel. Each endpoint (gRFC A61: one backend, with one or more
//! addresses; its identity is its set of addresses) has a lock-free call
//! counter (one atomic: successes and failures of the current interval),
//! shared by the subchannels of all its addresses, so its counts survive
//! a change of the address that serves it. Every `interval`
//! (its timer is [`Controller::schedule_work`]) it takes the counts and
//! runs A50's algorithms over the endpoints: success rate (an endpoint
//! whose success rate is
//! more than `stdevFactor / 1000` standard deviations below the mean of
//! those with at least `requestVolume` calls, if there are `minimumHosts`
//! of them) and failure percentage (failures above `threshold` percent).
//! An outlier is ejected with probability `enforcementPercentage`, and only
//! while fewer than `maxEjectionPercent` of the endpoints are ejected
//! (checked before each ejection, as in gRPC: one endpoint can always be).
//!
//! **What the child sees.** An ejected endpoint is ejected as a whole: the
//! subchannels of every one of its addresses (also those made while it is
//! ejected) are shown to the child as TRANSIENT_FAILURE, with the error
//! `<address>: ejected by outlier detection (gRFC A50)`; their real state
//! changes are kept, not passed on, until the ejection ends. An ejection
//! lasts `baseEjectionTime` times the number of times the endpoint was
//! ejected (one less for each
//! interval it was not), at most `max(baseEjectionTime, maxEjectionTime)`;
//! then the child gets the real state again. Without either algorithm the
//! policy only passes everything through.
//!
//! **Call outcomes.** The policy wraps its child's picker: each pick of a
//! counted subchannel carries its endpoint's counter as its
//! [`CallObserver`](crate::picker::CallObserver), which hears the call's
//! [`DoneInfo`](crate::picker::DoneInfo): status OK is a success, any other
//! status a failure, and an attempt that never reached the server
//! (nothing sent, picked again) is not counted. No lock and no allocation
//! per call (an `Arc` clone and one atomic add).
//!
//! **Threading.** Like every policy it runs on the channel's control task
//! (see [the contract](super)); only the counters are touched by calls.

mod config;
mod eject;

pub use config::{FailurePercentageEjection, OutlierDetectionConfig, SuccessRateEjection};

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::time::Instant;

use self::eject::{run_interval, CallCounter, Ejection};
use super::child_manager::endpoint_key;
use super::{Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, Controller, LbConfig};
use crate::picker::{PickInfo, PickResult, Picker};
use crate::resolver::ResolverUpdate;
use crate::subchannel::{SubchannelOwner, SubchannelState};
use crate::{Address, ConnectivityState, Error, ErrorKind, Subchannel};

/// The name of the outlier detection policy (gRFC A50).
pub const OUTLIER_DETECTION: &str = "outlier_detection_experimental";

/// Builds [`outlier_detection_experimental`](self) balancers.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutlierDetectionBuilder;

impl BalancerBuilder for OutlierDetectionBuilder {
    fn name(&self) -> &str {
        OUTLIER_DETECTION
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(OutlierDetection::new(options))
    }

    /// A50's config; `childPolicy` is chosen from the process-wide
    /// registry.
    fn parse_config(&self, json: &serde_json::Value) -> Result<LbConfig, Error> {
        let config = OutlierDetectionConfig::from_json(json, &BalancerRegistry::global())?;
        Ok(LbConfig::new(config, json.clone()))
    }
}

struct OutlierDetection {
    options: BuildOptions,
    rng: SmallRng,
    /// The child policy and its name.
    child: Option<(String, Box<dyn Balancer>)>,
    /// When the child asked for its `work`.
    child_work_at: Option<Instant>,
    config: Option<OutlierDetectionConfig>,
    /// Every endpoint of the last update, with its counter and ejection.
    endpoints: Endpoints,
    /// The subchannels the child made, by id.
    watched: HashMap<u64, Watched>,
    /// When the next interval ends.
    timer: Option<Instant>,
}

#[derive(Default)]
struct Tracked {
    counter: Arc<CallCounter>,
    ejection: Ejection,
}

/// The endpoints of the last update, by their key (sorted addresses), and
/// which endpoint each address belongs to.
#[derive(Default)]
struct Endpoints {
    tracked: HashMap<Arc<str>, Tracked>,
    /// Address -> its endpoint's key (the first endpoint, if a resolver
    /// lists an address twice).
    by_address: HashMap<Arc<str>, Arc<str>>,
}

impl Endpoints {
    /// The endpoint `address` belongs to.
    fn of(&self, address: &str) -> Option<&Tracked> {
        self.tracked.get(self.by_address.get(address)?)
    }

    fn is_ejected(&self, address: &str) -> bool {
        self.of(address)
            .is_some_and(|t| t.ejection.ejected_at.is_some())
    }

    /// Keeps the endpoints of `update` (new ones start with no calls and
    /// no ejection).
    fn sync(&mut self, update: &ResolverUpdate) {
        let mut kept = HashMap::with_capacity(update.endpoints().len());
        self.by_address.clear();
        for endpoint in update.endpoints() {
            let key: Arc<str> = endpoint_key(endpoint).into();
            for address in endpoint.addresses() {
                let addr: Arc<str> = address.addr().into();
                self.by_address.entry(addr).or_insert_with(|| key.clone());
            }
            if let Entry::Vacant(slot) = kept.entry(key) {
                let tracked = self.tracked.remove(slot.key()).unwrap_or_default();
                slot.insert(tracked);
            }
        }
        self.tracked = kept;
    }
}

struct Watched {
    subchannel: Weak<SubchannelOwner>,
    address: Arc<str>,
    /// Its real state, as the channel last said.
    real: SubchannelState,
}

impl OutlierDetection {
    fn new(options: &BuildOptions) -> Self {
        OutlierDetection {
            rng: SmallRng::seed_from_u64(options.seed()),
            options: options.clone(),
            child: None,
            child_work_at: None,
            config: None,
            endpoints: Endpoints::default(),
            watched: HashMap::new(),
            timer: None,
        }
    }

    /// Runs a call into the child with the policy's view of `ctl`.
    fn with_child(
        &mut self,
        ctl: &mut dyn Controller,
        f: impl FnOnce(&mut dyn Balancer, &mut dyn Controller),
    ) {
        let Some((_, child)) = &mut self.child else {
            return;
        };
        let mut view = ChildView {
            parent: ctl,
            endpoints: &self.endpoints,
            watched: &mut self.watched,
            work_at: &mut self.child_work_at,
        };
        f(&mut **child, &mut view);
    }

    /// Ends one interval: counts, ejects, un-ejects, and shows the child
    /// the changes.
    fn end_interval(&mut self, ctl: &mut dyn Controller) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let now = Instant::now();
        let keys: Vec<Arc<str>> = self.endpoints.tracked.keys().cloned().collect();
        let mut ejections: Vec<Ejection> = keys
            .iter()
            .map(|k| {
                let tracked = &self.endpoints.tracked[k];
                Ejection {
                    calls: tracked.counter.take(),
                    ..tracked.ejection
                }
            })
            .collect();
        let (ejected, unejected) = run_interval(&mut ejections, &config, now, &mut self.rng);
        for (key, ejection) in keys.iter().zip(&ejections) {
            if let Some(tracked) = self.endpoints.tracked.get_mut(key) {
                tracked.ejection = *ejection;
            }
        }
        for &i in ejected.iter().chain(&unejected) {
            tracing::info!(endpoint = %keys[i], ejected = ejected.contains(&i), "outlier detection");
            self.show(&keys[i], ctl);
        }
        self.timer = Some(now + config.interval);
        ctl.schedule_work(now + config.interval);
    }

    /// Shows the child the state of every subchannel of the endpoint
    /// `key` (all its addresses): the ejected state, or the real one.
    fn show(&mut self, key: &Arc<str>, ctl: &mut dyn Controller) {
        let of_endpoint = |w: &&Watched| self.endpoints.by_address.get(&w.address) == Some(key);
        let subchannels: Vec<(Subchannel, SubchannelState)> = self
            .watched
            .values()
            .filter(of_endpoint)
            .filter_map(|w| Subchannel::upgrade(&w.subchannel).map(|s| (s, w.real.clone())))
            .collect();
        let ejected = self
            .endpoints
            .tracked
            .get(key)
            .is_some_and(|t| t.ejection.ejected_at.is_some());
        for (subchannel, real) in subchannels {
            let state = if ejected {
                ejected_state(subchannel.address(), &real)
            } else {
                real
            };
            self.with_child(ctl, |b, view| {
                b.subchannel_update(&subchannel, &state, view)
            });
        }
    }

    /// Keeps the endpoints of `update` and forgets dead subchannels. A
    /// subchannel shown ejected whose address now belongs to an endpoint
    /// that is not (the endpoint changed its addresses, so it is a new
    /// one) is shown its real state again.
    fn sync_endpoints(&mut self, update: &ResolverUpdate, ctl: &mut dyn Controller) {
        self.watched.retain(|_, w| w.subchannel.strong_count() > 0);
        let shown_ejected: Vec<u64> = self
            .watched
            .iter()
            .filter(|(_, w)| self.endpoints.is_ejected(&w.address))
            .map(|(id, _)| *id)
            .collect();
        self.endpoints.sync(update);
        for id in shown_ejected {
            let Some(w) = self.watched.get(&id) else {
                continue;
            };
            if self.endpoints.is_ejected(&w.address) {
                continue;
            }
            let real = w.real.clone();
            if let Some(subchannel) = Subchannel::upgrade(&w.subchannel) {
                self.with_child(ctl, |b, view| b.subchannel_update(&subchannel, &real, view));
            }
        }
    }

    /// Applies a new config: the timer starts (or stops, un-ejecting every
    /// endpoint, when no algorithm is configured).
    fn configure(&mut self, config: OutlierDetectionConfig, ctl: &mut dyn Controller) {
        let ejects = config.ejects();
        let interval = config.interval;
        self.config = Some(config);
        if !ejects {
            self.timer = None;
            let ejected: Vec<Arc<str>> = self
                .endpoints
                .tracked
                .iter_mut()
                .filter_map(|(k, t)| t.ejection.ejected_at.take().map(|_| k.clone()))
                .collect();
            for key in &ejected {
                self.show(key, ctl);
            }
        } else if self.timer.is_none() {
            let at = Instant::now() + interval;
            self.timer = Some(at);
            ctl.schedule_work(at);
        }
    }

    /// The counter of `address`'s endpoint, for tests that play the calls.
    #[cfg(test)]
    fn counter(&self, address: &str) -> Arc<CallCounter> {
        self.endpoints
            .of(address)
            .expect("a known address")
            .counter
            .clone()
    }
}

/// TRANSIENT_FAILURE with the ejection as the error, keeping the
/// connection's own state (`real`'s): a pick_first child keeps a connected
/// subchannel selected and only shows it failed, so the connection
/// survives the ejection.
fn ejected_state(address: &Address, real: &SubchannelState) -> SubchannelState {
    let error = Error::new(
        ErrorKind::Health,
        format!("{address}: ejected by outlier detection (gRFC A50)"),
    );
    real.shown_as(ConnectivityState::TransientFailure, error)
}

impl Balancer for OutlierDetection {
    fn resolver_update(
        &mut self,
        update: &ResolverUpdate,
        config: &LbConfig,
        ctl: &mut dyn Controller,
    ) {
        let parsed = match config.get::<OutlierDetectionConfig>() {
            Some(parsed) => Ok(parsed.clone()),
            None => OutlierDetectionConfig::from_json(config.json(), &BalancerRegistry::global()),
        };
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::warn!(%error, "outlier detection: keeping the last config");
                return;
            }
        };
        self.sync_endpoints(update, ctl);
        let child_policy = parsed.child_policy.clone();
        if self.child.as_ref().map(|(name, _)| name.as_str()) != Some(child_policy.name()) {
            let child = child_policy.builder().build(&self.options);
            self.child = Some((child_policy.name().to_owned(), child));
            self.child_work_at = None;
        }
        self.configure(parsed, ctl);
        self.with_child(ctl, |b, view| {
            b.resolver_update(update, child_policy.config(), view)
        });
    }

    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
        self.with_child(ctl, |b, view| b.resolver_error(error, view));
    }

    fn subchannel_update(
        &mut self,
        subchannel: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        if let Some(watched) = self.watched.get_mut(&subchannel.id()) {
            watched.real = state.clone();
            if self.endpoints.is_ejected(subchannel.address().addr()) {
                return;
            }
        }
        self.with_child(ctl, |b, view| b.subchannel_update(subchannel, state, view));
    }

    fn exit_idle(&mut self, ctl: &mut dyn Controller) {
        self.with_child(ctl, |b, view| b.exit_idle(view));
    }

    fn work(&mut self, ctl: &mut dyn Controller) {
        let now = Instant::now();
        if self.timer.is_some_and(|at| at <= now) {
            self.end_interval(ctl);
        } else if let Some(at) = self.timer {
            ctl.schedule_work(at);
        }
        if self.child_work_at.is_some_and(|at| at <= now) {
            self.child_work_at = None;
            self.with_child(ctl, |b, view| b.work(view));
        }
    }
}

/// The controller the child sees: subchannels of ejected endpoints come
/// out TRANSIENT_FAILURE, and its pickers are wrapped to count calls.
struct ChildView<'a> {
    parent: &'a mut dyn Controller,
    endpoints: &'a Endpoints,
    watched: &'a mut HashMap<u64, Watched>,
    work_at: &'a mut Option<Instant>,
}

impl Controller for ChildView<'_> {
    fn new_subchannel(
        &mut self,
        address: &Address,
    ) -> Result<(Subchannel, SubchannelState), Error> {
        let (subchannel, state) = self.parent.new_subchannel(address)?;
        let key: Arc<str> = address.addr().into();
        let ejected = self.endpoints.is_ejected(&key);
        self.watched.insert(
            subchannel.id(),
            Watched {
                subchannel: subchannel.downgrade(),
                address: key,
                real: state.clone(),
            },
        );
        let shown = if ejected {
            ejected_state(address, &state)
        } else {
            state
        };
        Ok((subchannel, shown))
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        let counters = self
            .watched
            .iter()
            .filter_map(|(id, w)| Some((*id, self.endpoints.of(&w.address)?.counter.clone())))
            .collect();
        let picker = Arc::new(CountingPicker {
            child: picker,
            counters,
        });
        self.parent.update_picker(state, picker);
    }

    fn request_resolution(&mut self) {
        self.parent.request_resolution();
    }

    fn schedule_work(&mut self, at: Instant) {
        *self.work_at = Some(self.work_at.map_or(at, |t| t.min(at)));
        self.parent.schedule_work(at);
    }
}

/// The child's picker, with each subchannel's call counter at hand.
struct CountingPicker {
    child: Arc<dyn Picker>,
    /// By subchannel id.
    counters: HashMap<u64, Arc<CallCounter>>,
}

impl Picker for CountingPicker {
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        match self.child.pick(info) {
            PickResult::Pick(pick) => match self.counters.get(&pick.subchannel().id()) {
                // An Arc clone: no allocation, no lock.
                Some(counter) => PickResult::Pick(pick.with_observer(counter.clone())),
                None => PickResult::Pick(pick),
            },
            other => other,
        }
    }
}

impl std::fmt::Debug for CountingPicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingPicker")
            .field("subchannels", &self.counters.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;

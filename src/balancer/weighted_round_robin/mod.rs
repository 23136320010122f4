//! `weighted_round_robin`: calls in proportion to each backend's weight,
//! from the backends' own load reports or from the resolver (gRFC A58).
//!
//! **Where a weight comes from.** A backend that attaches an ORCA load
//! report to its responses (the `endpoint-load-metrics-bin` trailer, an
//! `xds.data.orca.v3.OrcaLoadReport`; see [`crate::orca`] for the server
//! side) gets the weight `qps / (utilization + eps/qps ·
//! errorUtilizationPenalty)` from its latest report (A58: the
//! application utilization when reported, else the CPU utilization; a
//! report without qps or utilization is ignored). A weight is used once
//! the backend has reported for `blackoutPeriod` and until it has not
//! reported for `weightExpirationPeriod`; a backend without a valid weight
//! gets the mean of the others'. **When no backend has a valid weight
//! from its reports, the weights are the resolver's**: each endpoint's
//! `weight` attribute (etcd's `Metadata.weight`, a static target's
//! `;weight=N`, a manual resolver's), 1 without one. So reports win as
//! soon as any backend has a valid one; static weights are the fallback
//! (the classic etcd weighted demo uses only them).
//!
//! **Scheduling.** A58's static stride scheduler: weights scaled so the
//! largest is 65535; a pick takes the next number of the calling thread's
//! sequence (one atomic add on the thread's own counter, as round_robin)
//! and accepts backend `seq mod n` in proportion to its weight, so a pick
//! costs the same for 1 or 10,000 backends and takes no lock. The
//! scheduler is rebuilt from the current weights every
//! `weightUpdatePeriod` (1 s, at least 100 ms) on the channel's control
//! task, and swapped atomically into the published picker. With fewer
//! than two weights, or all equal, it is plain round robin. Each pick
//! carries its endpoint's observer (one reference count written per call),
//! which reads the report in the call's trailers when it ends.
//!
//! **Children.** A [`ChildManager`] with a
//! pick_first child per endpoint, as round_robin: every endpoint is
//! connected, the state is the children's aggregate, a lost connection
//! reconnects at once. A backend that (re)enters READY starts a new
//! blackout.
//!
//! **Config** (`{"weighted_round_robin": {...}}`, JSON names as gRPC's,
//! durations as gRPC JSON durations, seconds with an `s`: `"10s"` or
//! `"0.5s"`, not `"100ms"`): `enableOobLoadReport`
//! (false), `oobReportingPeriod` (10 s), `blackoutPeriod` (10 s),
//! `weightExpirationPeriod` (3 min), `weightUpdatePeriod` (1 s, raised to
//! 100 ms if below, `"0s"` too), `errorUtilizationPenalty` (1.0, not negative).
//!
//! **Out-of-band reports** (`enableOobLoadReport: true`): every READY
//! subchannel streams its server's reports on ORCA's
//! `OpenRcaService/StreamCoreMetrics` (gRFC A51; see
//! [`crate::orca::register_oob_listener`]), asking for one every
//! `oobReportingPeriod`, on its own connection. They feed the same weights
//! as per-call reports would, and per-call reports are then ignored (A58).
//! A stream that fails is reopened on the subchannel's backoff; a server
//! without the ORCA service (UNIMPLEMENTED) is not asked again on that
//! connection (a warning is logged once) and still gets calls: with the
//! mean weight, or the resolver's weights when no backend reports.
//!
//! ```
//! # use std::time::Duration;
//! # use tonic_balance::balancer::BalancerBuilder;
//! use tonic_balance::balancer::weighted_round_robin::{WeightedRoundRobinBuilder, WrrConfig};
//! let json = serde_json::json!({"blackoutPeriod": "0s", "weightUpdatePeriod": "0.05s"});
//! let config = WeightedRoundRobinBuilder.parse_config(&json).unwrap();
//! let parsed = config.get::<WrrConfig>().unwrap();
//! assert_eq!(parsed.blackout_period(), Duration::ZERO);
//! assert_eq!(parsed.weight_update_period(), Duration::from_millis(100), "the minimum");
//! ```

mod config;
mod oob;
mod scheduler;
mod weight;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::child_manager::{ChildManager, ChildPickers, ReadyChild};
use super::metrics::WrrMetrics;
use super::round_robin::Rotation;
use super::{Balancer, BalancerBuilder, BuildOptions, Controller, LbConfig, LbPolicy};
use crate::picker::{CallObserver, DoneInfo, PickInfo, PickResult, Picker};
use crate::resolver::ResolverUpdate;
use crate::subchannel::SubchannelState;
use crate::{Endpoint, Error, Subchannel};
pub use config::WrrConfig;
use oob::{OobListeners, WeightsByAddress};
use scheduler::Scheduler;
use weight::{EndpointWeight, Load};

/// The name of the weighted_round_robin policy.
pub const WEIGHTED_ROUND_ROBIN: &str = "weighted_round_robin";

/// Builds [`weighted_round_robin`](self) balancers.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRoundRobinBuilder;

impl BalancerBuilder for WeightedRoundRobinBuilder {
    fn name(&self) -> &str {
        WEIGHTED_ROUND_ROBIN
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(WeightedRoundRobin::new(options))
    }

    /// Errors name the field: a duration that is not a `"<seconds>s"`
    /// string, a negative penalty, a non-boolean `enableOobLoadReport`.
    fn parse_config(&self, json: &serde_json::Value) -> Result<LbConfig, Error> {
        Ok(LbConfig::new(WrrConfig::parse(json)?, json.clone()))
    }
}

/// What the current picker is made of: the READY endpoints' weights, and
/// the scheduler the update timer swaps in.
struct Table {
    weights: Box<[Arc<EndpointWeight>]>,
    /// The resolver's weights, used while no report gives a valid one.
    statics: Box<[f64]>,
    scheduler: ArcSwap<Scheduler>,
    /// gRFC A78's instruments (empty without `otel`).
    metrics: WrrMetrics,
}

impl Table {
    /// gRFC A78's `grpc.lb.wrr.*` for a scheduler update at `now`.
    fn record(&self, now: Instant, config: &WrrConfig) {
        if self.metrics.on() {
            let states = self.weights.iter().map(|w| w.state(now, config));
            self.metrics.scheduler_update(states);
        }
    }

    /// A58's weights at `now` if any is valid, else the static ones.
    fn scheduler(&self, now: Instant, config: &WrrConfig) -> Scheduler {
        self.record(now, config);
        let reported: Vec<f64> = self.weights.iter().map(|w| w.weight(now, config)).collect();
        if reported.iter().any(|&w| w > 0.0) {
            Scheduler::new(&reported)
        } else {
            Scheduler::new(&self.statics)
        }
    }
}

/// Builds the picker over the READY children, keeping each endpoint's
/// weight while it stays READY.
struct WrrPickers {
    rng: SmallRng,
    base: Instant,
    config: Arc<ArcSwap<WrrConfig>>,
    weights: HashMap<Box<str>, Arc<EndpointWeight>>,
    /// The same weights by each address, for out-of-band reports.
    by_address: WeightsByAddress,
    latest: Arc<ArcSwapOption<Table>>,
    metrics: WrrMetrics,
}

/// An endpoint's identity: its addresses, sorted.
fn endpoint_key(endpoint: &Endpoint) -> Box<str> {
    let mut addrs: Vec<&str> = endpoint.addresses().iter().map(|a| a.addr()).collect();
    addrs.sort_unstable();
    addrs.join(",").into_boxed_str()
}

impl ChildPickers for WrrPickers {
    fn build(&mut self, ready: &[ReadyChild<'_>]) -> Arc<dyn Picker> {
        let mut kept = HashMap::with_capacity(ready.len());
        let mut weights = Vec::with_capacity(ready.len());
        for child in ready {
            let key = endpoint_key(child.endpoint);
            let weight = (self.weights.remove(&key))
                .unwrap_or_else(|| Arc::new(EndpointWeight::new(self.base)));
            weights.push(weight.clone());
            kept.insert(key, weight);
        }
        // Endpoints that left READY lose their weight: back in READY,
        // they start a new blackout (A58).
        self.weights = kept;
        let by_address = ready
            .iter()
            .zip(&weights)
            .flat_map(|(child, weight)| {
                let addrs = child.endpoint.addresses().iter();
                addrs.map(|a| (Box::from(a.addr()), weight.clone()))
            })
            .collect();
        self.by_address.store(Arc::new(by_address));
        let statics = ready
            .iter()
            .map(|c| f64::from(c.endpoint.attributes().weight().unwrap_or(1).max(1)))
            .collect();
        let table = Table {
            weights: weights.into_boxed_slice(),
            statics,
            scheduler: ArcSwap::from_pointee(Scheduler::new(&[])),
            metrics: self.metrics.clone(),
        };
        table.scheduler.store(Arc::new(
            table.scheduler(Instant::now(), &self.config.load()),
        ));
        let table = Arc::new(table);
        self.latest.store(Some(table.clone()));
        let starts = std::array::from_fn(|_| self.rng.random_range(0..ready.len().max(1)));
        let observers = (table.weights.iter())
            .map(|weight| {
                Arc::new(ReportReader {
                    weight: weight.clone(),
                    config: self.config.clone(),
                }) as Arc<dyn CallObserver>
            })
            .collect();
        Arc::new(WrrPicker {
            children: ready.iter().map(|c| c.picker.clone()).collect(),
            observers,
            table,
            rotation: Rotation::new(starts),
        })
    }
}

/// Reads the ORCA report in a call's trailers into its endpoint's weight.
struct ReportReader {
    weight: Arc<EndpointWeight>,
    config: Arc<ArcSwap<WrrConfig>>,
}

impl CallObserver for ReportReader {
    /// Ignores the call's report while out-of-band reports are on (A58).
    fn done(&self, info: &DoneInfo<'_>) {
        let config = self.config.load();
        if config.enable_oob_load_report {
            return;
        }
        if let Some(report) = crate::orca::from_trailers(info.trailers()) {
            let penalty = config.error_utilization_penalty;
            (self.weight).on_report(Load::from(&report), Instant::now(), penalty);
        }
    }
}

/// Picks a READY child by the scheduler and lets its picker pick; the
/// pick's end goes to the endpoint's [`ReportReader`].
struct WrrPicker {
    children: Box<[Arc<dyn Picker>]>,
    observers: Box<[Arc<dyn CallObserver>]>,
    table: Arc<Table>,
    rotation: Rotation,
}

impl Picker for WrrPicker {
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        let scheduler = self.table.scheduler.load();
        let index = scheduler.next(&self.rotation);
        let (Some(child), Some(observer)) = (self.children.get(index), self.observers.get(index))
        else {
            return PickResult::Queue;
        };
        match child.pick(info) {
            PickResult::Pick(pick) => PickResult::Pick(pick.with_observer(observer.clone())),
            other => other,
        }
    }
}

impl fmt::Debug for WrrPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrrPicker")
            .field("children", &self.children.len())
            .finish_non_exhaustive()
    }
}

/// The weighted_round_robin policy; see the [module docs](self).
struct WeightedRoundRobin {
    manager: ChildManager,
    config: Arc<ArcSwap<WrrConfig>>,
    latest: Arc<ArcSwapOption<Table>>,
    oob: OobListeners,
    /// When the scheduler is rebuilt next.
    next_update: Option<Instant>,
}

impl WeightedRoundRobin {
    fn new(options: &BuildOptions) -> Self {
        let config = Arc::new(ArcSwap::from_pointee(WrrConfig::default()));
        let latest = Arc::new(ArcSwapOption::empty());
        let by_address: WeightsByAddress = Arc::default();
        let pickers = WrrPickers {
            rng: SmallRng::seed_from_u64(options.seed()),
            base: Instant::now(),
            config: config.clone(),
            weights: HashMap::new(),
            by_address: by_address.clone(),
            latest: latest.clone(),
            metrics: WrrMetrics::new(options),
        };
        let pick_first = LbPolicy::new(Arc::new(super::PickFirstBuilder), LbConfig::empty());
        WeightedRoundRobin {
            manager: ChildManager::new(pick_first, options.clone(), Box::new(pickers)),
            oob: OobListeners::new(by_address, config.clone()),
            config,
            latest,
            next_update: None,
        }
    }

    /// Rebuilds the published picker's scheduler from the weights now.
    fn update_weights(&self) {
        if let Some(table) = self.latest.load_full() {
            let scheduler = table.scheduler(Instant::now(), &self.config.load());
            table.scheduler.store(Arc::new(scheduler));
        }
    }

    fn schedule_update(&mut self, ctl: &mut dyn Controller) {
        let at = Instant::now() + self.config.load().weight_update_period;
        self.next_update = Some(at);
        ctl.schedule_work(at);
    }
}

impl Balancer for WeightedRoundRobin {
    fn resolver_update(
        &mut self,
        update: &ResolverUpdate,
        config: &LbConfig,
        ctl: &mut dyn Controller,
    ) {
        let new = config.get::<WrrConfig>().cloned().unwrap_or_default();
        let period_changed = new.weight_update_period != self.config.load().weight_update_period;
        self.config.store(Arc::new(new));
        self.manager
            .resolver_update(update, &LbConfig::empty(), ctl);
        self.oob.update();
        if self.next_update.is_none() || period_changed {
            self.schedule_update(ctl);
        }
    }

    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
        self.manager.resolver_error(error, ctl);
    }

    fn subchannel_update(
        &mut self,
        subchannel: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        self.manager.subchannel_update(subchannel, state, ctl);
        self.oob.subchannel_update(subchannel, state);
    }

    fn exit_idle(&mut self, ctl: &mut dyn Controller) {
        self.manager.exit_idle(ctl);
    }

    /// The children's work, and the weight update timer.
    fn work(&mut self, ctl: &mut dyn Controller) {
        self.manager.work(ctl);
        match self.next_update {
            Some(at) if at <= Instant::now() => {
                self.update_weights();
                self.schedule_update(ctl);
            }
            // Ask again: the manager's request may have replaced ours.
            Some(at) => ctl.schedule_work(at),
            None => {}
        }
    }
}

impl fmt::Debug for WeightedRoundRobin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightedRoundRobin")
            .field("manager", &self.manager)
            .field("config", &self.config.load())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;

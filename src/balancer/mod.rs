//! Balancers: load-balancing policies as synchronous state machines.
//!
//! A [`Balancer`] owns the [`Subchannel`]s it wants and decides which of them
//! calls go to. It never does I/O, never spawns and never locks: it receives
//! events and tells its [`Controller`] what it wants (a subchannel for an
//! address, a new picker, a re-resolution, a timer). This is gRPC's LB
//! policy API (grpc-go's `balancer.Balancer`, gRFC A61/A62 for
//! `pick_first`).
//!
//! **The contract.**
//! - *Config.* [`BalancerBuilder::parse_config`] parses and checks the
//!   policy's JSON object from the service config before anything changes
//!   (a bad one is rejected with its error, and the channel keeps what it
//!   had); the parsed [`LbConfig`] arrives with every
//!   [`resolver_update`](Balancer::resolver_update). A changed config of
//!   the same policy goes to the running policy: it is not rebuilt.
//! - *Endpoints.* An update carries [`Endpoint`](crate::Endpoint)s, each
//!   one or more addresses (a dual-stack host) with attributes (a weight,
//!   metadata, a server name).
//! - *State only through the contract.* [`Controller::new_subchannel`]
//!   returns a subchannel with its current state; later states arrive only
//!   through [`subchannel_update`](Balancer::subchannel_update). So a
//!   parent policy (outlier detection, health checking) can show its
//!   children a filtered state.
//! - *Timers.* [`Controller::schedule_work`] asks for a call of
//!   [`work`](Balancer::work) at a tokio time (a paused test clock drives
//!   it). It is a policy's only timer.
//!
//! **Threading guarantee.** Every method of a balancer is called from the
//! channel's one control task, one at a time, in the order events happened:
//! resolver updates and errors, subchannel state changes, requests to
//! leave IDLE, and the [`work`](Balancer::work) it scheduled. The request
//! path never touches a balancer; it reads the [`Picker`] the balancer last
//! published.
//!
//! **Bursts.** The channel delivers every event already queued before it
//! publishes: of the pickers a balancer hands to
//! [`update_picker`](Controller::update_picker) during one burst, only the
//! last reaches calls. A policy whose picker costs O(n) to build can go
//! further and build it once per burst: mark itself dirty on each event,
//! [`schedule_work`](Controller::schedule_work) for now, and build the
//! picker in [`work`](Balancer::work), which runs after the burst.
//!
//! **Policies.** [`pick_first`](PICK_FIRST) (the default, as in gRPC),
//! [`round_robin`](ROUND_ROBIN), [`least_request`] (gRFC A48's
//! `least_request_experimental`, also named `least_request`),
//! [`weighted_round_robin`](WEIGHTED_ROUND_ROBIN) (gRFC A58) and
//! [`ring_hash`](RING_HASH) (consistent hashing, gRFC A42/A76) are built
//! in. A policy is chosen by name on
//! the channel builder or by a service config
//! (`{"loadBalancingConfig":[{"round_robin":{}}]}`, see
//! [`ServiceConfig`](crate::ServiceConfig) and
//! [`BalancerRegistry::select`]). Users add policies with [`register`]
//! (process-wide, like grpc-go's `balancer.Register`) or hand a
//! [`BalancerBuilder`] to one channel.
//!
//! **Composition.** A policy can run others as children:
//! [`ChildManager`] keeps one child per endpoint (grpc-go's
//! `endpointsharding`; round_robin is a pick_first child per endpoint),
//! and [`GracefulSwitch`] switches policies without a gap (the channel
//! runs one at its top, so a service config that changes the policy keeps
//! the old one serving until the new one is ready).
//!
//! **Aggregation.** A policy that balances over several children reports
//! the channel state [`aggregate_state`] computes: READY if any is READY,
//! else CONNECTING if any is CONNECTING, else IDLE if any is IDLE, else
//! TRANSIENT_FAILURE.
//!
//! **Call outcomes.** A picker hears how each call it picked ended by
//! attaching a [`CallObserver`](crate::picker::CallObserver) to its pick
//! ([`Pick::with_observer`](crate::picker::Pick::with_observer)): a
//! [`DoneInfo`](crate::picker::DoneInfo) with the gRPC code, whether any
//! byte reached the server and the trailers, exactly once per pick
//! (least request counts calls in flight with it; outlier detection
//! counts failures; ORCA reads load reports from the trailers). The
//! observer runs on the call's task, not the control task: it shares
//! atomics with the balancer, which reads them in its own events (e.g.
//! its timer's [`work`](Balancer::work)).
//!
//! # Your own policy
//!
//! `rotating_pin` sends every call to one READY backend. Every
//! `intervalMs` (its parsed config, a timer) it looks at how the calls to
//! that backend ended (the call outcome): if any failed, the pin moves to
//! the next READY backend. (A dropped pick, like the test's `pick_addr`
//! below, reports CANCELLED, which is not the backend's failure.)
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use tokio::time::Instant;
//! use tonic_balance::balancer::{Balancer, BalancerBuilder, BuildOptions, Controller, LbConfig};
//! use tonic_balance::picker::{CallObserver, DoneInfo, Pick, PickInfo, PickResult, Picker, QueuePicker};
//! use tonic_balance::resolver::ResolverUpdate;
//! use tonic_balance::subchannel::SubchannelState;
//! use tonic_balance::{ConnectivityState, Error, ErrorKind, Subchannel};
//!
//! /// The parsed config, `{"intervalMs": 500}`.
//! struct PinConfig {
//!     interval: Duration,
//! }
//!
//! struct RotatingPinBuilder;
//!
//! impl BalancerBuilder for RotatingPinBuilder {
//!     fn name(&self) -> &str {
//!         "rotating_pin"
//!     }
//!
//!     fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
//!         Box::new(RotatingPin::default())
//!     }
//!
//!     /// Checked before anything changes: a bad config is an error here.
//!     fn parse_config(&self, json: &serde_json::Value) -> Result<LbConfig, Error> {
//!         let ms = match json.get("intervalMs") {
//!             None => 1000,
//!             Some(v) => v.as_u64().filter(|&ms| ms > 0).ok_or_else(|| {
//!                 let why = format!("rotating_pin: \"intervalMs\" must be a positive integer, not {v}");
//!                 Error::new(ErrorKind::Config, why)
//!             })?,
//!         };
//!         let interval = Duration::from_millis(ms);
//!         Ok(LbConfig::new(PinConfig { interval }, json.clone()))
//!     }
//! }
//!
//! /// Counts the pinned backend's failed calls (any code but OK, and
//! /// CANCELLED, the caller's own choice): the picker clones it into every
//! /// pick, and it hears each call's outcome once.
//! #[derive(Default)]
//! struct Failures(AtomicUsize);
//!
//! impl CallObserver for Failures {
//!     fn done(&self, info: &DoneInfo<'_>) {
//!         if !matches!(info.code(), tonic::Code::Ok | tonic::Code::Cancelled) {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! #[derive(Default)]
//! struct RotatingPin {
//!     /// Each subchannel with the state the contract last reported.
//!     subchannels: Vec<(Subchannel, ConnectivityState)>,
//!     interval: Duration,
//!     pinned: Option<usize>,
//!     /// The failures of calls to the pinned backend (a new count per pin).
//!     failures: Arc<Failures>,
//!     timer: Option<Instant>,
//! }
//!
//! impl RotatingPin {
//!     /// Pins the first READY subchannel from `from` on, or queues calls.
//!     fn pin(&mut self, from: usize, ctl: &mut dyn Controller) {
//!         let n = self.subchannels.len();
//!         self.pinned = (0..n)
//!             .map(|i| (from + i) % n)
//!             .find(|&i| self.subchannels[i].1 == ConnectivityState::Ready);
//!         self.failures = Arc::default();
//!         match self.pinned {
//!             Some(i) => {
//!                 let observer: Arc<dyn CallObserver> = self.failures.clone();
//!                 let picker = Arc::new(Pinned(self.subchannels[i].0.clone(), observer));
//!                 ctl.update_picker(ConnectivityState::Ready, picker);
//!             }
//!             None => ctl.update_picker(ConnectivityState::Connecting, Arc::new(QueuePicker)),
//!         }
//!     }
//!
//!     fn start_timer(&mut self, ctl: &mut dyn Controller) {
//!         let at = Instant::now() + self.interval;
//!         self.timer = Some(at);
//!         ctl.schedule_work(at);
//!     }
//! }
//!
//! impl Balancer for RotatingPin {
//!     fn resolver_update(&mut self, update: &ResolverUpdate, config: &LbConfig, ctl: &mut dyn Controller) {
//!         self.interval = config.get::<PinConfig>().map_or(Duration::from_secs(1), |c| c.interval);
//!         self.subchannels = update
//!             .addresses()
//!             .iter()
//!             .filter_map(|address| ctl.new_subchannel(address).ok())
//!             .map(|(subchannel, state)| {
//!                 subchannel.connect();
//!                 (subchannel, state.connectivity)
//!             })
//!             .collect();
//!         self.pin(0, ctl);
//!         if self.timer.is_none() {
//!             self.start_timer(ctl);
//!         }
//!     }
//!
//!     fn resolver_error(&mut self, _: &Error, _: &mut dyn Controller) {}
//!
//!     fn subchannel_update(&mut self, sc: &Subchannel, state: &SubchannelState, ctl: &mut dyn Controller) {
//!         let Some(i) = self.subchannels.iter().position(|(s, _)| s == sc) else {
//!             return;
//!         };
//!         self.subchannels[i].1 = state.connectivity;
//!         if state.connectivity == ConnectivityState::Idle {
//!             sc.connect();
//!         }
//!         let pinned_left = self.pinned == Some(i) && state.connectivity != ConnectivityState::Ready;
//!         if self.pinned.is_none() || pinned_left {
//!             self.pin(i, ctl);
//!         }
//!     }
//!
//!     /// The timer: move the pin if calls to it failed, and look again later.
//!     fn work(&mut self, ctl: &mut dyn Controller) {
//!         if self.timer.is_some_and(|at| at <= Instant::now()) {
//!             if self.failures.0.load(Ordering::Relaxed) > 0 {
//!                 self.pin(self.pinned.map_or(0, |i| i + 1), ctl);
//!             }
//!             self.start_timer(ctl);
//!         }
//!     }
//! }
//!
//! /// Lends the pinned subchannel to every call (no reference count written
//! /// but the observer's).
//! struct Pinned(Subchannel, Arc<dyn CallObserver>);
//!
//! impl Picker for Pinned {
//!     fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
//!         PickResult::Pick(Pick::borrowed(&self.0).with_observer(self.1.clone()))
//!     }
//! }
//!
//! // On a channel: register it (or pass it to one channel's builder) and
//! // select it by service config:
//! //   let mut registry = tonic_balance::balancer::BalancerRegistry::new();
//! //   registry.register(Arc::new(RotatingPinBuilder));
//! //   BalancedChannel::builder(target).balancer_registry(registry)
//! //       .service_config(r#"{"loadBalancingConfig":[{"rotating_pin":{"intervalMs":500}}]}"#)
//! //
//! // In a unit test, with the fake controller (`test-util` feature) and
//! // tokio's paused clock:
//! use tonic_balance::balancer::testing::FakeController;
//! use ConnectivityState::Ready;
//!
//! let runtime = tokio::runtime::Builder::new_current_thread()
//!     .enable_time()
//!     .start_paused(true)
//!     .build()
//!     .unwrap();
//! runtime.block_on(async {
//!     let config = RotatingPinBuilder.parse_config(&serde_json::json!({"intervalMs": 500})).unwrap();
//!     assert!(RotatingPinBuilder.parse_config(&serde_json::json!({"intervalMs": 0})).is_err());
//!     let mut policy = RotatingPinBuilder.build(&BuildOptions::new("static:///a:1".parse().unwrap(), 1));
//!     let mut ctl = FakeController::new();
//!     let update = ResolverUpdate::new(vec!["a:1".into(), "b:1".into()]);
//!     policy.resolver_update(&update, &config, &mut ctl);
//!     ctl.deliver(&mut *policy, "a:1", Ready);
//!     ctl.deliver(&mut *policy, "b:1", Ready);
//!     assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
//!     // Calls that succeed keep the pin.
//!     tokio::time::advance(Duration::from_millis(500)).await;
//!     assert!(ctl.run_due_work(&mut *policy));
//!     assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
//!     // A call to a:1 fails (the channel reports it; here the test does):
//!     let PickResult::Pick(pick) = ctl.pick() else { panic!("a pick") };
//!     let trailers = http::HeaderMap::new();
//!     pick.complete(&DoneInfo::new(tonic::Code::Unavailable, true, true, &trailers));
//!     // ... and at the next tick the pin moves.
//!     tokio::time::advance(Duration::from_millis(500)).await;
//!     assert!(ctl.run_due_work(&mut *policy));
//!     assert_eq!(ctl.pick_addr().as_deref(), Some("b:1"));
//! });
//! ```

mod child;
pub mod child_manager;
mod config;
pub mod graceful_switch;
pub mod least_request;
mod metrics;
pub mod outlier_detection;
pub mod pick_first;
mod registry;
pub mod ring_hash;
pub mod round_robin;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod weighted_round_robin;
pub use child_manager::{ChildManager, ChildPickers, ReadyChild, RoundRobinPickers};
pub use config::{LbConfig, LbPolicy};
pub use graceful_switch::GracefulSwitch;
pub use least_request::{
    LeastRequestBuilder, LeastRequestConfig, LEAST_REQUEST, LEAST_REQUEST_EXPERIMENTAL,
};
pub use outlier_detection::{OutlierDetectionBuilder, OUTLIER_DETECTION};
pub use pick_first::{PickFirstBuilder, PickFirstConfig, PICK_FIRST};
pub use registry::{register, BalancerRegistry};
pub use ring_hash::{RingHashBuilder, RING_HASH};
pub use round_robin::{RoundRobinBuilder, ROUND_ROBIN};
pub use weighted_round_robin::{WeightedRoundRobinBuilder, WEIGHTED_ROUND_ROBIN};

use std::sync::Arc;

use crate::resolver::ResolverUpdate;
use crate::subchannel::SubchannelState;
use crate::{Address, ConnectivityState, Error, Picker, Subchannel, Target};

/// A load-balancing policy. See the [module docs](self) for the contract.
pub trait Balancer: Send + 'static {
    /// The resolver produced a new full set of endpoints
    /// ([`ResolverUpdate::endpoints`]), with the policy's parsed config
    /// (the same as before, or a new one of the same policy: a running
    /// policy is not rebuilt for a config change).
    fn resolver_update(
        &mut self,
        update: &ResolverUpdate,
        config: &LbConfig,
        ctl: &mut dyn Controller,
    );

    /// The resolver failed. Keep serving known addresses if there are any.
    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller);

    /// One of this balancer's subchannels changed state. This is the only
    /// way a policy learns a subchannel's state after
    /// [`Controller::new_subchannel`] returned its first one, so a parent
    /// policy can show its children a filtered state.
    fn subchannel_update(
        &mut self,
        subchannel: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    );

    /// A call arrived while the balancer reported IDLE: start connecting.
    fn exit_idle(&mut self, ctl: &mut dyn Controller) {
        let _ = ctl;
    }

    /// The time asked for with [`Controller::schedule_work`] has come. The
    /// channel calls this once per request, after the events that were
    /// already queued at that time have been delivered, so a policy can
    /// defer work that several events share (rebuilding its picker after a
    /// burst of subchannel updates) or run a timer (a connection-attempt
    /// delay, a weight refresh). The default does nothing.
    fn work(&mut self, ctl: &mut dyn Controller) {
        let _ = ctl;
    }
}

/// What a balancer can ask of its channel (or of its parent policy, which
/// hands its children a controller of its own).
pub trait Controller {
    /// A subchannel for `address`, with its current state. The channel
    /// shares one subchannel per address, so asking again for an address
    /// in use returns the same one, which may already be connected (the
    /// state says so). Later changes arrive only through
    /// [`Balancer::subchannel_update`].
    fn new_subchannel(&mut self, address: &Address)
        -> Result<(Subchannel, SubchannelState), Error>;

    /// Publishes a new picker and the channel state that goes with it.
    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>);

    /// Asks the resolver to resolve again (it may rate-limit too). The
    /// channel passes at most one request a second on to its resolver;
    /// requests within that second are merged into one at its end, so a
    /// resolver that answers at once cannot make a policy spin.
    fn request_resolution(&mut self);

    /// Asks the channel to call [`Balancer::work`] at `at` (tokio time, so
    /// a paused test clock controls it), or as soon as the events already
    /// queued are delivered if `at` has passed. One request is kept: an
    /// earlier `at` replaces a later one, and a policy with several timers
    /// asks again from `work` for the next. No spawning, no locks: this is
    /// a policy's only timer.
    fn schedule_work(&mut self, at: tokio::time::Instant);
}

/// Builds balancers of one policy.
pub trait BalancerBuilder: Send + Sync + 'static {
    /// The policy's name, as used in service configs (`round_robin`).
    fn name(&self) -> &str;

    /// Builds a balancer. Its config arrives with every
    /// [`resolver_update`](Balancer::resolver_update).
    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer>;

    /// Parses and checks the policy's JSON object from a service config
    /// (`{}` when none was given), before anything changes: a config this
    /// returns an error for is rejected with that error (name the policy
    /// and the bad field) and the channel keeps what it had. The default
    /// keeps the JSON as is ([`LbConfig::from_json`]).
    fn parse_config(&self, json: &serde_json::Value) -> Result<LbConfig, Error> {
        Ok(LbConfig::from_json(json.clone()))
    }
}

/// What a balancer is built for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuildOptions {
    target: Target,
    seed: u64,
    /// The channel's meter (`BalancedChannelBuilder::meter_provider`).
    #[cfg(feature = "otel")]
    meter: Option<opentelemetry::metrics::Meter>,
}

impl BuildOptions {
    /// Options for a balancer of a channel to `target`, whose randomness
    /// starts from `seed`.
    pub fn new(target: Target, seed: u64) -> Self {
        BuildOptions {
            target,
            seed,
            #[cfg(feature = "otel")]
            meter: None,
        }
    }

    /// The same options with `meter` for the policy's instruments
    /// (feature `otel`); the channel sets its meter provider's
    /// `tonic-balance` meter here.
    #[cfg(feature = "otel")]
    pub fn with_meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// The meter a policy records its instruments with (feature `otel`),
    /// as gRFC A78's policies do (`grpc.lb.pick_first.*`,
    /// `grpc.lb.wrr.*`); `None` when the channel records no metrics.
    /// Label them with `grpc.target` = [`metrics_target`](Self::metrics_target).
    #[cfg(feature = "otel")]
    pub fn meter(&self) -> Option<&opentelemetry::metrics::Meter> {
        self.meter.as_ref()
    }

    /// The `grpc.target` label of the channel's metrics: its target with
    /// its scheme, a bare `host:port` as `dns:///host:port` (gRFC A66).
    pub fn metrics_target(&self) -> String {
        crate::metrics::canonical_target(&self.target)
    }

    /// The channel's target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// A seed for the policy's randomness (fixed by the channel builder's
    /// `rng_seed` in tests, random otherwise).
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// The channel state of a policy over several subchannels, as grpc-go's
/// round_robin computes it: READY if any is READY, else CONNECTING if any is
/// CONNECTING, else IDLE if any is IDLE, else TRANSIENT_FAILURE (also for
/// none at all).
pub fn aggregate_state(states: impl IntoIterator<Item = ConnectivityState>) -> ConnectivityState {
    use ConnectivityState::*;
    let (mut connecting, mut idle) = (false, false);
    for state in states {
        match state {
            Ready => return Ready,
            Connecting => connecting = true,
            Idle => idle = true,
            TransientFailure | Shutdown => {}
        }
    }
    if connecting {
        Connecting
    } else if idle {
        Idle
    } else {
        TransientFailure
    }
}

/// The error of an empty address set (the resolver sent no endpoint with
/// an address), the same under every policy and in the channel's
/// `wait_until_ready`: `the resolver returned no addresses`.
pub(crate) fn no_addresses() -> Error {
    Error::new(
        crate::ErrorKind::Resolver,
        "the resolver returned no addresses",
    )
}

/// The message a failing picker gives calls because of `error`:
/// `resolver error: ...` when the resolver failed or gave no usable
/// addresses ([`ErrorKind::Resolver`](crate::ErrorKind::Resolver)); the
/// error itself when the connection is up but the backend is unfit
/// ([`ErrorKind::Health`](crate::ErrorKind::Health): e.g. `health check:
/// NOT_SERVING from 10.0.0.1:50051, service "s"`); else `last connection
/// error: ...`, so a user can tell a naming problem from a backend
/// problem, and an unhealthy backend from a failed connection.
pub fn failure_message(error: &Error) -> String {
    if error.is_resolver() {
        format!("resolver error: {error}")
    } else if error.is_health() {
        error.to_string()
    } else {
        format!("last connection error: {error}")
    }
}

/// Removes repeated addresses, keeping the first of each.
pub(crate) fn dedup<'a>(addresses: impl IntoIterator<Item = &'a Address>) -> Vec<Address> {
    let mut seen = std::collections::HashSet::new();
    addresses
        .into_iter()
        .filter(|a| seen.insert(a.addr()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectivityState::*;

    #[test]
    fn aggregate_prefers_ready_then_connecting_then_idle() {
        assert_eq!(aggregate_state([TransientFailure, Ready, Idle]), Ready);
        assert_eq!(
            aggregate_state([TransientFailure, Idle, Connecting]),
            Connecting
        );
        assert_eq!(aggregate_state([TransientFailure, Idle]), Idle);
        assert_eq!(
            aggregate_state([TransientFailure, TransientFailure]),
            TransientFailure
        );
        assert_eq!(aggregate_state([]), TransientFailure);
    }

    #[test]
    fn failure_messages_tell_the_resolver_from_connections() {
        let resolver = Error::new(crate::ErrorKind::Resolver, "dns: NXDOMAIN");
        let connect = Error::new(crate::ErrorKind::Connect, "a:1: refused");
        assert_eq!(failure_message(&resolver), "resolver error: dns: NXDOMAIN");
        assert_eq!(
            failure_message(&connect),
            "last connection error: a:1: refused"
        );
    }

    #[test]
    fn an_unhealthy_backend_is_not_reported_as_a_connection_error() {
        let health = Error::new(
            crate::ErrorKind::Health,
            "health check: NOT_SERVING from a:1, service \"s\"",
        );
        assert_eq!(
            failure_message(&health),
            "health check: NOT_SERVING from a:1, service \"s\""
        );
    }

    #[test]
    fn dedup_keeps_first_occurrence_in_order() {
        let list: Vec<Address> = ["a:1", "b:1", "a:1", "c:1"].map(Address::from).into();
        let got: Vec<String> = dedup(&list).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["a:1", "b:1", "c:1"]);
    }
}

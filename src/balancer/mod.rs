//! Balancers: load-balancing policies as synchronous state machines.
//!
//! A [`Balancer`] owns the [`Subchannel`]s it wants and decides which of them
//! calls go to. It never does I/O, never spawns and never locks: it receives
//! events and tells its [`Controller`] what it wants (a subchannel for an
//! address, a new picker, a re-resolution). This is gRPC's LB policy API
//! (grpc-go's `balancer.Balancer`, gRFC A61/A62 for `pick_first`).
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
//! **Policies.** [`pick_first`](PICK_FIRST) (the default, as in gRPC) and
//! [`round_robin`](ROUND_ROBIN) are built in. A policy is chosen by name on
//! the channel builder or by the resolver's service config
//! (`{"loadBalancingConfig":[{"round_robin":{}}]}`, see
//! [`ServiceConfig`](crate::ServiceConfig)).
//! Users add policies with [`register`] (process-wide, like grpc-go's
//! `balancer.Register`) or hand a [`BalancerBuilder`] to one channel.
//!
//! **Aggregation.** A policy that balances over several subchannels reports
//! the channel state [`aggregate_state`] computes: READY if any is READY,
//! else CONNECTING if any is CONNECTING, else IDLE if any is IDLE, else
//! TRANSIENT_FAILURE.

mod child;
pub mod child_manager;
mod config;
pub mod graceful_switch;
pub mod pick_first;
mod registry;
pub mod round_robin;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(any(test, feature = "test-util"))]
pub use child_manager::{ChildManager, ChildPickers, ReadyChild, RoundRobinPickers};
pub use config::{LbConfig, LbPolicy};
pub use graceful_switch::GracefulSwitch;
pub use pick_first::{PickFirstBuilder, PickFirstConfig, PICK_FIRST};
pub use registry::{register, BalancerRegistry};
pub use round_robin::{RoundRobinBuilder, ROUND_ROBIN};

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
}

impl BuildOptions {
    /// Options for a balancer of a channel to `target`, whose randomness
    /// starts from `seed`.
    pub fn new(target: Target, seed: u64) -> Self {
        BuildOptions { target, seed }
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

/// The message a failing picker gives calls because of `error`:
/// `resolver error: ...` when the resolver failed or gave no usable
/// addresses ([`ErrorKind::Resolver`](crate::ErrorKind::Resolver)), else
/// `last connection error: ...`, so a user can tell a naming problem from a
/// backend problem.
pub fn failure_message(error: &Error) -> String {
    if error.is_resolver() {
        format!("resolver error: {error}")
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
    fn dedup_keeps_first_occurrence_in_order() {
        let list: Vec<Address> = ["a:1", "b:1", "a:1", "c:1"].map(Address::from).into();
        let got: Vec<String> = dedup(&list).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["a:1", "b:1", "c:1"]);
    }
}

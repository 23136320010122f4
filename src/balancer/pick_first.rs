//! `pick_first`: every call to one backend, found with happy eyeballs
//! (gRFC A61, with A62's sticky TRANSIENT_FAILURE and address shuffling).
//!
//! **The list.** A pass goes down the resolver's list, shuffled on each
//! update if configured (`{"shuffleAddressList": true}`), with repeats
//! removed (the first of each stays) and the address families interleaved
//! as RFC 8305 §4 says: the family of the first IP literal first, then one
//! of the other family, and so on (`[v6a, v6b, v4a]` becomes
//! `[v6a, v4a, v6b]`); IPv4-mapped IPv6 addresses count as IPv4. Addresses
//! that are not IP literals (`unix:` paths, host names, whose family is
//! unknown) stay in the first family's run at their place among its
//! members, so a list without IP literals, or with one family only, keeps
//! its order. (grpc-go makes them a third family in the rotation instead.)
//!
//! **The pass** (A61's happy eyeballs). The policy starts an attempt on the
//! first address. If it fails, the next one starts at once; if it is still
//! CONNECTING after the 250 ms connection attempt delay (RFC 8305 §5, A61's
//! fixed default), the next one starts too while the first keeps trying,
//! and so on down the list; the last address gets no timer. An address
//! whose subchannel is already CONNECTING counts as started, one in
//! TRANSIENT_FAILURE (backoff from an earlier attempt) as failed. The first
//! subchannel to report READY is selected, the timer is cancelled and every
//! other subchannel of the pass is released (dropped, so the channel shuts
//! its attempt down). The channel reports CONNECTING meanwhile.
//!
//! **After a failed pass.** Once every address has been started and every
//! one has failed, the channel goes TRANSIENT_FAILURE with the pass's
//! most telling connection error (the last one, except that "refused" or
//! "unreachable" never hides a TLS or HTTP/2 failure of another address
//! in the same pass or the retries after it) and the policy asks for
//! re-resolution (unless no attempt
//! failed during the pass: every address was still in backoff from the
//! last one, so the resolver's answer would only end the next pass at once
//! and ask again, in a loop). It stays
//! TRANSIENT_FAILURE ("sticky", A62) until a subchannel is READY, also
//! through new passes after resolver updates: each subchannel retries on
//! its own backoff, reconnected whenever it reports IDLE, in no order. The
//! policy counts the failures it sees; when the count reaches the number of
//! subchannels it asks for re-resolution again and starts counting anew.
//!
//! **Selected.** A resolver update that still lists the selected address
//! keeps it; any other update starts a new pass over the new list (and an
//! empty one is TRANSIENT_FAILURE with a resolver error). A READY connection
//! that is lost sends the policy IDLE and asks for re-resolution; the next
//! call starts a new pass from the top of the latest list, so calls move to
//! the next backend when one is killed.
//!
//! ```text
//!  phase (channel state)          event                          next
//!  PASS (CONNECTING)              a subchannel READY             SELECTED
//!                                 attempt i failed               PASS: i+1 starts now
//!                                 250 ms, i still CONNECTING     PASS: i+1 starts too
//!                                 all started, all failed        RETRYING
//!  RETRYING (TRANSIENT_FAILURE)   a subchannel IDLE              RETRYING: reconnect it
//!                                 a subchannel READY             SELECTED
//!  SELECTED (READY)               its connection lost            IDLE
//!  IDLE (IDLE)                    a call                         PASS
//!  PASS, RETRYING, SELECTED       a list without the selected    PASS (a TRANSIENT_FAILURE
//!                                 address                        is kept: sticky)
//!  any                            an empty list                  TRANSIENT_FAILURE, no
//!                                                                subchannels
//! ```
//!
//! **Health checking** (gRFC A17) is off for a top-level pick_first, as
//! in gRPC. As a child (round_robin's leaves) it sees the health state of
//! a connected subchannel ([`SubchannelState::connection_state`] READY):
//! such a subchannel is selected whatever its health, as grpc-go's leaf
//! does, and the policy shows its health (READY, CONNECTING until the
//! first answer, TRANSIENT_FAILURE with the health error) without
//! dropping the connection.
//!
//! **The timer** is the channel's: the policy asks for
//! [`work`](Balancer::work) at the attempt's start + 250 ms with
//! [`Controller::schedule_work`]. A timer that fires after the pass moved
//! on (an attempt failed, a new pass started, a subchannel became READY)
//! does nothing; one that fires before the current attempt's time asks
//! again for that time.
//!
//! **Threading.** Like every policy it runs on the channel's control task,
//! one event at a time (see [the contract](super)); it never spawns, sleeps
//! or locks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokio::time::Instant;

use super::metrics::PickFirstMetrics;
use super::{
    dedup, failure_message, Balancer, BalancerBuilder, BuildOptions, Controller, LbConfig,
};
use crate::picker::{FailPicker, Pick, PickInfo, PickResult, Picker, QueuePicker};
use crate::resolver::ResolverUpdate;
use crate::subchannel::SubchannelState;
use crate::{Address, ConnectivityState, Endpoint, Error, ErrorKind, Subchannel};

/// The name of the pick_first policy.
pub const PICK_FIRST: &str = "pick_first";

/// How long an attempt may stay CONNECTING before the pass starts the next
/// address too: RFC 8305 §5's Connection Attempt Delay, 250 ms as gRFC A61
/// sets it by default.
const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Builds [`pick_first`](self) balancers.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickFirstBuilder;

/// pick_first's parsed config (gRFC A62): `{"shuffleAddressList": bool}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PickFirstConfig {
    /// Shuffle the endpoints of each resolver update before the pass.
    pub shuffle_address_list: bool,
}

impl PickFirstConfig {
    /// Parses `{"shuffleAddressList": bool}` (`{}` or `null`: no shuffle).
    pub fn from_json(json: &serde_json::Value) -> Result<Self, Error> {
        let shuffle_address_list = match json.get("shuffleAddressList") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("pick_first: \"shuffleAddressList\" must be a boolean, not {v}"),
                )
            })?,
        };
        Ok(PickFirstConfig {
            shuffle_address_list,
        })
    }

    /// The parsed config in `config`, or one parsed from its JSON (a parent
    /// policy may hand over an unparsed one); a bad one shuffles nothing.
    fn of(config: &LbConfig) -> Self {
        config
            .get::<PickFirstConfig>()
            .copied()
            .or_else(|| PickFirstConfig::from_json(config.json()).ok())
            .unwrap_or_default()
    }
}

impl BalancerBuilder for PickFirstBuilder {
    fn name(&self) -> &str {
        PICK_FIRST
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(PickFirst {
            rng: SmallRng::seed_from_u64(options.seed()),
            addresses: Vec::new(),
            phase: Phase::Waiting,
            state: ConnectivityState::Connecting,
            last_error: None,
            error_in_pass: false,
            timer: None,
            work_requested: None,
            metrics: PickFirstMetrics::new(options),
        })
    }

    fn parse_config(&self, json: &serde_json::Value) -> Result<LbConfig, Error> {
        Ok(LbConfig::new(
            PickFirstConfig::from_json(json)?,
            json.clone(),
        ))
    }
}

struct PickFirst {
    rng: SmallRng,
    /// The resolver's list, shuffled if configured and de-duplicated. A
    /// pass interleaves it (only then: an update that keeps the selected
    /// address does not pay for parsing every address).
    addresses: Vec<Address>,
    phase: Phase,
    /// The state last published.
    state: ConnectivityState,
    last_error: Option<Error>,
    /// Whether `last_error` came from the current pass (or the retries
    /// after it): then a refusal does not replace a more telling error
    /// ([`Error::is_unreachable`]).
    error_in_pass: bool,
    /// When the pass's current attempt has waited long enough to start the
    /// next address too; `None` when no such timer runs.
    timer: Option<Instant>,
    /// The earliest [`Controller::schedule_work`] time asked for and not yet
    /// answered by [`Balancer::work`]: the channel keeps that one request,
    /// so the next `work` call is the answer to it.
    work_requested: Option<Instant>,
    /// gRFC A78's `grpc.lb.pick_first.*` (empty without `otel`).
    metrics: PickFirstMetrics,
}

/// What the policy is doing, with the subchannels it holds for it.
enum Phase {
    /// No subchannels: no addresses yet, or an empty list.
    Waiting,
    /// IDLE after the selected connection was lost: the next call starts a
    /// pass. The lost subchannel is kept until then, so the pass takes it
    /// back with its reconnect backoff: a server that drops every
    /// connection at once is retried on the backoff schedule, not by a new
    /// subchannel (with a fresh backoff) per call.
    Lost(#[allow(dead_code)] Subchannel),
    /// The happy-eyeballs pass over the list.
    Pass(Pass),
    /// The pass failed: every subchannel reconnects on its own backoff.
    Retrying(Retrying),
    /// This subchannel is READY and takes every call.
    Selected(Subchannel),
}

struct Pass {
    /// One per address, in list order.
    attempts: Vec<Attempt>,
    /// The address started last; `attempts.len()` once every one has been.
    index: usize,
    /// An attempt reported TRANSIENT_FAILURE during this pass (rather than
    /// every address being still in backoff from before it).
    saw_failure: bool,
}

struct Attempt {
    subchannel: Subchannel,
    /// Its state, as `new_subchannel` and then `subchannel_update` said.
    state: ConnectivityState,
    /// Reported TRANSIENT_FAILURE (or was in it when the pass reached it)
    /// during this pass.
    failed: bool,
}

struct Retrying {
    subchannels: Vec<Subchannel>,
    /// Failures seen since re-resolution was last asked for.
    failures: usize,
}

/// Sends every call to one subchannel.
#[derive(Debug)]
struct OnePicker(Subchannel);

impl Picker for OnePicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Pick(Pick::borrowed(&self.0))
    }
}

impl PickFirst {
    fn publish(
        &mut self,
        state: ConnectivityState,
        picker: Arc<dyn Picker>,
        ctl: &mut dyn Controller,
    ) {
        self.state = state;
        ctl.update_picker(state, picker);
    }

    /// Keeps `error` as the one calls see, unless this pass already saw a
    /// more telling one (a TLS failure on 127.0.0.1 is not hidden by a
    /// refusal on [::1] that came after it).
    fn keep_error(&mut self, error: &Error) {
        let hides_more = error.is_unreachable()
            && self.error_in_pass
            && self
                .last_error
                .as_ref()
                .is_some_and(|e| !e.is_unreachable());
        if !hides_more {
            self.last_error = Some(error.clone());
        }
        self.error_in_pass = true;
    }

    /// TRANSIENT_FAILURE: calls fail with `error`'s message.
    fn publish_failure(&mut self, error: Error, ctl: &mut dyn Controller) {
        let picker = FailPicker::unavailable(failure_message(&error));
        self.last_error = Some(error);
        self.publish(ConnectivityState::TransientFailure, Arc::new(picker), ctl);
    }

    /// Starts a pass over the addresses from the top. `sticky`: stay in
    /// TRANSIENT_FAILURE (A62) instead of reporting CONNECTING.
    fn start_pass(&mut self, sticky: bool, ctl: &mut dyn Controller) {
        let order = interleave(self.addresses.clone());
        self.error_in_pass = false;
        let mut attempts = Vec::with_capacity(order.len());
        for address in &order {
            match ctl.new_subchannel(address) {
                Ok((subchannel, state)) => attempts.push(Attempt {
                    subchannel,
                    state: state.connectivity,
                    failed: false,
                }),
                Err(error) => {
                    tracing::warn!(%address, %error, "pick_first: skipping address");
                    self.last_error = Some(error);
                }
            }
        }
        // The old phase's subchannels are dropped only now, after the new
        // pass has taken those it shares with them.
        self.phase = Phase::Pass(Pass {
            attempts,
            index: 0,
            saw_failure: false,
        });
        if !sticky {
            self.publish(ConnectivityState::Connecting, Arc::new(QueuePicker), ctl);
        }
        self.attempt(ctl);
    }

    /// Acts on the address the pass is at: starts it (and the timer for the
    /// next one), moves past it if it is in backoff, selects it if READY,
    /// or ends the pass when every address has been started.
    fn attempt(&mut self, ctl: &mut dyn Controller) {
        let Phase::Pass(pass) = &mut self.phase else {
            return;
        };
        while let Some(attempt) = pass.attempts.get_mut(pass.index) {
            match attempt.state {
                ConnectivityState::Ready => {
                    let subchannel = attempt.subchannel.clone();
                    return self.select(subchannel, ctl);
                }
                ConnectivityState::Idle => {
                    attempt.subchannel.connect();
                    break;
                }
                ConnectivityState::Connecting => break,
                ConnectivityState::TransientFailure | ConnectivityState::Shutdown => {
                    attempt.failed = true;
                    pass.index += 1;
                }
            }
        }
        let (index, len) = (pass.index, pass.attempts.len());
        self.timer = None;
        if index + 1 < len {
            self.start_timer(ctl);
        } else if index >= len {
            self.end_pass_if_failed(ctl);
        }
    }

    fn start_timer(&mut self, ctl: &mut dyn Controller) {
        let at = Instant::now() + CONNECTION_ATTEMPT_DELAY;
        self.timer = Some(at);
        self.request_work(at, ctl);
    }

    fn request_work(&mut self, at: Instant, ctl: &mut dyn Controller) {
        self.work_requested = Some(self.work_requested.map_or(at, |t| t.min(at)));
        ctl.schedule_work(at);
    }

    /// Ends the pass if every address has been started and has failed:
    /// TRANSIENT_FAILURE, re-resolution, and every subchannel reconnects.
    ///
    /// A pass that ends at once because every subchannel is still in
    /// backoff (a new list from a resolver that answers at once) learned
    /// nothing new and does not ask for re-resolution: asking would bring
    /// the same list back, end the next pass at once, and so spin. The
    /// failure count asks once every subchannel has failed again.
    fn end_pass_if_failed(&mut self, ctl: &mut dyn Controller) {
        let Phase::Pass(pass) = &self.phase else {
            return;
        };
        if pass.index < pass.attempts.len() || pass.attempts.iter().any(|a| !a.failed) {
            return;
        }
        let subchannels: Vec<Subchannel> =
            pass.attempts.iter().map(|a| a.subchannel.clone()).collect();
        let resolve = pass.saw_failure;
        self.timer = None;
        let error = self
            .last_error
            .clone()
            .unwrap_or_else(|| Error::new(ErrorKind::Connect, "no address could be connected"));
        self.publish_failure(error, ctl);
        if resolve {
            ctl.request_resolution();
        }
        for subchannel in &subchannels {
            subchannel.connect();
        }
        self.phase = Phase::Retrying(Retrying {
            subchannels,
            failures: 0,
        });
    }

    /// Selects a READY subchannel and releases every other one.
    fn select(&mut self, subchannel: Subchannel, ctl: &mut dyn Controller) {
        self.timer = None;
        self.phase = Phase::Selected(subchannel.clone());
        self.publish(
            ConnectivityState::Ready,
            Arc::new(OnePicker(subchannel)),
            ctl,
        );
    }

    fn pass_update(&mut self, position: usize, state: &SubchannelState, ctl: &mut dyn Controller) {
        let Phase::Pass(pass) = &mut self.phase else {
            return;
        };
        let subchannel = pass.attempts[position].subchannel.clone();
        pass.attempts[position].state = state.connectivity;
        match state.connectivity {
            ConnectivityState::Ready => self.select(subchannel, ctl),
            ConnectivityState::TransientFailure => {
                self.metrics.attempt_failed();
                pass.attempts[position].failed = true;
                pass.saw_failure = true;
                if position == pass.index {
                    // Failed: the next address starts now, not at the timer.
                    pass.index += 1;
                    self.attempt(ctl);
                } else {
                    self.end_pass_if_failed(ctl);
                }
            }
            ConnectivityState::Idle if position == pass.index => subchannel.connect(),
            // Earlier attempts back from backoff wait for the pass to end.
            _ => {}
        }
    }

    fn retry_update(
        &mut self,
        subchannel: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        let Phase::Retrying(retrying) = &mut self.phase else {
            return;
        };
        match state.connectivity {
            ConnectivityState::Ready => self.select(subchannel.clone(), ctl),
            ConnectivityState::TransientFailure => {
                self.metrics.attempt_failed();
                retrying.failures += 1;
                let resolve = retrying.failures >= retrying.subchannels.len();
                if resolve {
                    retrying.failures = 0;
                    ctl.request_resolution();
                }
                if let Some(error) = state.error.as_ref().and(self.last_error.clone()) {
                    self.publish_failure(error, ctl);
                }
            }
            ConnectivityState::Idle => subchannel.connect(),
            ConnectivityState::Connecting | ConnectivityState::Shutdown => {}
        }
    }

    /// The selected subchannel's connection is up and health checking
    /// (gRFC A17) says `state`: READY takes calls, CONNECTING (no answer
    /// yet) queues them, TRANSIENT_FAILURE fails them with the health
    /// error. The subchannel stays selected.
    fn show_health(&mut self, state: &SubchannelState, ctl: &mut dyn Controller) {
        let Phase::Selected(subchannel) = &self.phase else {
            return;
        };
        match state.connectivity {
            ConnectivityState::Ready => {
                let picker = Arc::new(OnePicker(subchannel.clone()));
                self.publish(ConnectivityState::Ready, picker, ctl);
            }
            ConnectivityState::TransientFailure => {
                let error = state
                    .error
                    .clone()
                    .unwrap_or_else(|| Error::new(ErrorKind::Health, "the backend is not healthy"));
                self.publish_failure(error, ctl);
            }
            _ => self.publish(ConnectivityState::Connecting, Arc::new(QueuePicker), ctl),
        }
    }

    /// The selected connection is gone: IDLE until the next call.
    fn lost(&mut self, ctl: &mut dyn Controller) {
        self.metrics.disconnected();
        let phase = std::mem::replace(&mut self.phase, Phase::Waiting);
        if let Phase::Selected(subchannel) = phase {
            self.phase = Phase::Lost(subchannel);
        }
        self.publish(ConnectivityState::Idle, Arc::new(QueuePicker), ctl);
        ctl.request_resolution();
    }
}

impl Balancer for PickFirst {
    fn resolver_update(
        &mut self,
        update: &ResolverUpdate,
        config: &LbConfig,
        ctl: &mut dyn Controller,
    ) {
        let had_addresses = !self.addresses.is_empty();
        self.addresses = if PickFirstConfig::of(config).shuffle_address_list {
            // A61's order: shuffle the endpoints, flatten, remove repeats
            // (then interleave).
            let mut endpoints: Vec<&Endpoint> = update.endpoints().iter().collect();
            endpoints.shuffle(&mut self.rng);
            dedup(endpoints.iter().flat_map(|e| e.addresses()))
        } else {
            dedup(update.addresses())
        };
        if self.addresses.is_empty() {
            self.timer = None;
            self.phase = Phase::Waiting;
            let error = super::no_addresses();
            self.publish_failure(error, ctl);
            return ctl.request_resolution();
        }
        if let Phase::Selected(subchannel) = &self.phase {
            if self.addresses.contains(subchannel.address()) {
                return;
            }
        }
        if self.state == ConnectivityState::Idle {
            // IDLE after a lost connection: the next call connects, to the
            // new list (gRFC A62).
            return;
        }
        // Sticky only when the failure came from connecting, not from an
        // empty list or a resolver error before any address was known.
        let sticky = self.state == ConnectivityState::TransientFailure && had_addresses;
        self.start_pass(sticky, ctl);
    }

    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
        if self.addresses.is_empty() || self.state == ConnectivityState::TransientFailure {
            self.publish_failure(error.clone(), ctl);
            ctl.request_resolution();
        }
    }

    fn subchannel_update(
        &mut self,
        subchannel: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        let position = match &self.phase {
            Phase::Selected(selected) if selected == subchannel => {
                if state.connection_state() == ConnectivityState::Ready {
                    self.show_health(state, ctl);
                } else if state.connectivity != ConnectivityState::Ready {
                    self.lost(ctl);
                }
                return;
            }
            Phase::Pass(pass) => pass
                .attempts
                .iter()
                .position(|a| a.subchannel == *subchannel),
            Phase::Retrying(retrying) => retrying.subchannels.iter().position(|s| s == subchannel),
            _ => None,
        };
        // Not ours (any more): a stale update.
        let Some(position) = position else {
            return;
        };
        if let Some(error) = &state.error {
            self.keep_error(error);
        }
        if state.connection_state() == ConnectivityState::Ready {
            // Connected: selected even while health checking does not show
            // it READY, as grpc-go's pick_first leaf does.
            self.metrics.connected();
            self.select(subchannel.clone(), ctl);
            return self.show_health(state, ctl);
        }
        if matches!(self.phase, Phase::Pass(_)) {
            self.pass_update(position, state, ctl);
        } else {
            self.retry_update(subchannel, state, ctl);
        }
    }

    fn exit_idle(&mut self, ctl: &mut dyn Controller) {
        if self.state == ConnectivityState::Idle && !self.addresses.is_empty() {
            self.start_pass(false, ctl);
        }
    }

    /// The connection attempt delay is over: start the next address too,
    /// unless the timer is stale.
    fn work(&mut self, ctl: &mut dyn Controller) {
        let answered = self.work_requested.take();
        let Some(due) = self.timer else {
            return;
        };
        if answered.is_some_and(|at| at >= due) {
            self.timer = None;
            if let Phase::Pass(pass) = &mut self.phase {
                pass.index += 1;
            }
            self.attempt(ctl);
        } else {
            // An earlier, stale timer fired: wait for the current one.
            self.request_work(due, ctl);
        }
    }
}

/// An IP literal's address family (RFC 8305 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// The family of `address`, if it is an IP literal (`1.2.3.4:5`,
/// `[::1]:5`); IPv4-mapped IPv6 counts as IPv4.
fn family(address: &Address) -> Option<Family> {
    match address.addr().parse::<SocketAddr>().ok()? {
        SocketAddr::V4(_) => Some(Family::V4),
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => Some(Family::V4),
        SocketAddr::V6(_) => Some(Family::V6),
    }
}

/// Interleaves the address families (RFC 8305 §4, First Address Family
/// Count 1), starting with the family of the first IP literal. Addresses
/// that are not IP literals stay in that family's run, at their place.
fn interleave(addresses: Vec<Address>) -> Vec<Address> {
    let Some(first) = addresses.iter().find_map(family) else {
        return addresses;
    };
    let len = addresses.len();
    let (mut leading, mut other): (Vec<Address>, Vec<Address>) = (Vec::new(), Vec::new());
    for address in addresses {
        match family(&address) {
            Some(f) if f != first => other.push(address),
            _ => leading.push(address),
        }
    }
    let (mut leading, mut other) = (leading.into_iter(), other.into_iter());
    let mut interleaved = Vec::with_capacity(len);
    while interleaved.len() < len {
        interleaved.extend(leading.next());
        interleaved.extend(other.next());
    }
    interleaved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::FakeController;
    use tokio::time::advance;
    use ConnectivityState::*;

    const DELAY: Duration = CONNECTION_ATTEMPT_DELAY;

    fn build() -> Box<dyn Balancer> {
        let opts = BuildOptions::new("static:///a:1".parse().unwrap(), 1);
        PickFirstBuilder.build(&opts)
    }

    /// A pick_first that got `addrs` as its first update, and its
    /// controller.
    fn started(addrs: &[&str]) -> (Box<dyn Balancer>, FakeController) {
        let (mut pf, mut ctl) = (build(), FakeController::new());
        pf.resolver_update(&update(addrs), &LbConfig::empty(), &mut ctl);
        (pf, ctl)
    }

    fn update(addrs: &[&str]) -> ResolverUpdate {
        ResolverUpdate::new(addrs.iter().map(|a| Address::from(*a)).collect())
    }

    #[test]
    fn connects_to_the_first_address_only() {
        let (_pf, ctl) = started(&["a:1", "b:1"]);
        assert_eq!(ctl.last_state(), Connecting);
        assert_eq!(ctl.connects("a:1"), 1);
        assert_eq!(ctl.connects("b:1"), 0);
    }

    #[test]
    fn fails_over_down_the_list_and_picks_the_first_ready() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        ctl.deliver(&mut *pf, "a:1", Connecting);
        ctl.deliver_error(&mut *pf, "a:1", TransientFailure, "a:1: refused");
        assert_eq!(ctl.connects("b:1"), 1);
        assert_eq!(ctl.last_state(), Connecting);
        ctl.deliver(&mut *pf, "b:1", Connecting);
        ctl.deliver(&mut *pf, "b:1", Ready);
        assert_eq!(ctl.last_state(), Ready);
        assert_eq!(ctl.pick_addr().as_deref(), Some("b:1"));
    }

    #[test]
    fn whole_pass_failing_is_sticky_transient_failure_with_the_error() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        ctl.deliver_error(&mut *pf, "a:1", TransientFailure, "a:1: refused");
        ctl.deliver_error(&mut *pf, "b:1", TransientFailure, "b:1: refused");
        assert_eq!(ctl.last_state(), TransientFailure);
        let status = ctl.pick_status().unwrap();
        assert!(status.message().contains("b:1: refused"), "{status:?}");
        assert!(ctl.resolutions > 0);
        // Still TRANSIENT_FAILURE while retrying; a subchannel back from
        // backoff is reconnected.
        let before = ctl.connects("a:1");
        ctl.deliver(&mut *pf, "a:1", Idle);
        assert_eq!(ctl.connects("a:1"), before + 1);
        ctl.deliver(&mut *pf, "a:1", Connecting);
        assert_eq!(ctl.last_state(), TransientFailure);
        ctl.deliver(&mut *pf, "a:1", Ready);
        assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
    }

    #[test]
    fn losing_the_ready_connection_goes_idle_and_exit_idle_starts_over() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        ctl.deliver(&mut *pf, "a:1", Ready);
        ctl.deliver(&mut *pf, "a:1", Idle);
        assert_eq!(ctl.last_state(), Idle);
        pf.exit_idle(&mut ctl);
        assert_eq!(ctl.last_state(), Connecting);
        assert_eq!(ctl.connects("a:1"), 2);
    }

    #[test]
    fn a_lost_connection_is_retried_on_the_same_subchannel_keeping_its_backoff() {
        // A server that sends its preface and drops the connection: the
        // next call must reconnect the subchannel that holds the backoff,
        // not a fresh one that would connect at once (a reconnect storm).
        let (mut pf, mut ctl) = started(&["a:1"]);
        ctl.deliver(&mut *pf, "a:1", Ready);
        let id = ctl.subchannel("a:1").id();
        ctl.deliver(&mut *pf, "a:1", Idle);
        // The channel holds only the newest picker; the fake keeps them all.
        ctl.pickers.clear();
        pf.exit_idle(&mut ctl);
        assert_eq!(ctl.subchannel("a:1").id(), id, "the same subchannel");
        assert_eq!(ctl.connects("a:1"), 2);
    }

    #[test]
    fn an_update_while_idle_waits_for_the_next_call() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        ctl.deliver(&mut *pf, "a:1", Ready);
        ctl.deliver(&mut *pf, "a:1", Idle);
        let published = ctl.pickers.len();
        pf.resolver_update(&update(&["b:1", "a:1"]), &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.pickers.len(), published, "stays IDLE");
        pf.exit_idle(&mut ctl);
        assert_eq!(ctl.last_state(), Connecting);
        assert_eq!(ctl.connects("b:1"), 1, "the new order is used");
    }

    #[test]
    fn keeps_the_selected_address_when_it_stays_listed() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        ctl.deliver(&mut *pf, "a:1", Ready);
        let published = ctl.pickers.len();
        pf.resolver_update(&update(&["c:1", "a:1"]), &LbConfig::empty(), &mut ctl);
        assert_eq!(
            ctl.pickers.len(),
            published,
            "no new picker while the selection stays"
        );
        pf.resolver_update(&update(&["c:1"]), &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.last_state(), Connecting);
        assert_eq!(ctl.connects("c:1"), 1);
    }

    #[test]
    fn empty_update_is_transient_failure_and_asks_for_resolution() {
        let (_pf, ctl) = started(&[]);
        assert_eq!(ctl.last_state(), TransientFailure);
        assert!(ctl
            .pick_status()
            .unwrap()
            .message()
            .contains("no addresses"));
        assert_eq!(ctl.resolutions, 1);
    }

    #[test]
    fn resolver_error_does_not_disturb_a_working_channel() {
        let (mut pf, mut ctl) = started(&["a:1"]);
        ctl.deliver(&mut *pf, "a:1", Ready);
        let err = Error::new(ErrorKind::Resolver, "lookup failed");
        pf.resolver_error(&err, &mut ctl);
        assert_eq!(ctl.last_state(), Ready);

        let (mut fresh, mut ctl2) = (build(), FakeController::new());
        fresh.resolver_error(&err, &mut ctl2);
        assert_eq!(ctl2.last_state(), TransientFailure);
        assert!(ctl2
            .pick_status()
            .unwrap()
            .message()
            .contains("lookup failed"));
    }

    #[test]
    fn shuffle_is_deterministic_for_a_seed_and_validated() {
        let list: Vec<String> = (0..20).map(|i| format!("h{i}:1")).collect();
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        let first = |seed| {
            let opts = BuildOptions::new("static:///a:1".parse().unwrap(), seed);
            let mut pf = PickFirstBuilder.build(&opts);
            let config = PickFirstBuilder
                .parse_config(&serde_json::json!({"shuffleAddressList": true}))
                .unwrap();
            let mut ctl = FakeController::new();
            pf.resolver_update(&update(&refs), &config, &mut ctl);
            ctl.connected_addrs()
        };
        assert_eq!(first(3), first(3));
        let err = PickFirstBuilder
            .parse_config(&serde_json::json!({"shuffleAddressList": "yes"}))
            .unwrap_err();
        assert!(err.is_config());
        assert!(err
            .to_string()
            .contains("\"shuffleAddressList\" must be a boolean"));
    }

    fn addresses(list: &[&str]) -> Vec<Address> {
        list.iter().map(|a| Address::from(*a)).collect()
    }

    fn strings(list: &[Address]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_asks_for_the_timer_250ms_after_it_starts() {
        let t0 = Instant::now();
        let (_pf, ctl) = started(&["a:1", "b:1", "c:1"]);
        assert_eq!(ctl.work_at, Some(t0 + Duration::from_millis(250)));
        assert_eq!(ctl.connected_addrs(), ["a:1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_starts_the_next_address_while_the_first_keeps_connecting() {
        let t0 = Instant::now();
        let (mut pf, mut ctl) = started(&["a:1", "b:1", "c:1"]);
        ctl.deliver(&mut *pf, "a:1", Connecting);
        advance(DELAY).await;
        assert!(ctl.run_work(&mut *pf));
        assert_eq!(ctl.connects("b:1"), 1);
        assert_eq!(ctl.connects("c:1"), 0);
        assert_eq!(ctl.subchannel("a:1").state(), Connecting, "a keeps going");
        assert_eq!(ctl.last_state(), Connecting);
        assert_eq!(ctl.work_at, Some(t0 + 2 * DELAY), "b's timer");

        ctl.deliver(&mut *pf, "b:1", Connecting);
        advance(DELAY).await;
        assert!(ctl.run_work(&mut *pf));
        assert_eq!(ctl.connected_addrs(), ["a:1", "b:1", "c:1"]);
        assert_eq!(ctl.work_at, None, "the last address gets no timer");
        // The first of the three to be READY wins.
        ctl.deliver(&mut *pf, "a:1", Ready);
        assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_address_at_once() {
        let t0 = Instant::now();
        let (mut pf, mut ctl) = started(&["a:1", "b:1", "c:1"]);
        ctl.deliver(&mut *pf, "a:1", Connecting);
        advance(Duration::from_millis(100)).await;
        ctl.deliver_error(&mut *pf, "a:1", TransientFailure, "a:1: refused");
        assert_eq!(ctl.connects("b:1"), 1, "no waiting for the timer");
        assert_eq!(ctl.connects("c:1"), 0);
        assert_eq!(ctl.last_state(), Connecting, "the pass goes on");
        // The channel keeps the earliest request: a's, now stale.
        assert_eq!(ctl.work_at, Some(t0 + DELAY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_timer_does_nothing_and_asks_again_for_the_current_one() {
        let t0 = Instant::now();
        let (mut pf, mut ctl) = started(&["a:1", "b:1", "c:1"]);
        advance(Duration::from_millis(100)).await;
        ctl.deliver_error(&mut *pf, "a:1", TransientFailure, "a:1: refused");
        advance(Duration::from_millis(150)).await;
        assert!(ctl.run_work(&mut *pf), "a's timer fires at t0 + 250 ms");
        assert_eq!(ctl.connects("c:1"), 0, "stale: c does not start");
        assert_eq!(ctl.work_at, Some(t0 + Duration::from_millis(350)), "b's");
        advance(Duration::from_millis(100)).await;
        assert!(ctl.run_work(&mut *pf));
        assert_eq!(ctl.connects("c:1"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_after_ready_or_a_new_pass_does_nothing() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        ctl.deliver(&mut *pf, "a:1", Ready);
        let published = ctl.pickers.len();
        advance(DELAY).await;
        assert!(ctl.run_work(&mut *pf));
        assert_eq!(ctl.connects("b:1"), 0);
        assert_eq!(ctl.pickers.len(), published);
        assert_eq!(ctl.work_at, None);

        // A new list starts a new pass: the old pass's timer is stale.
        let t0 = Instant::now();
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        advance(Duration::from_millis(100)).await;
        pf.resolver_update(&update(&["c:1", "d:1"]), &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.connected_addrs(), ["c:1"], "a was released");
        advance(Duration::from_millis(150)).await;
        assert!(ctl.run_work(&mut *pf));
        assert_eq!(ctl.connects("d:1"), 0);
        assert_eq!(ctl.work_at, Some(t0 + Duration::from_millis(350)));
    }

    #[test]
    fn the_first_ready_wins_and_every_other_attempt_is_released() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1", "c:1"]);
        ctl.deliver(&mut *pf, "a:1", Connecting);
        assert!(ctl.run_work(&mut *pf));
        ctl.deliver(&mut *pf, "b:1", Connecting);
        assert!(ctl.run_work(&mut *pf));
        ctl.deliver(&mut *pf, "c:1", Connecting);
        ctl.deliver(&mut *pf, "b:1", Ready);
        assert_eq!(ctl.last_state(), Ready);
        assert_eq!(ctl.pick_addr().as_deref(), Some("b:1"));
        assert_eq!(
            ctl.connected_addrs(),
            ["b:1"],
            "a and c are dropped: the channel shuts them down"
        );
        assert_eq!(ctl.work_at, None);
    }

    #[test]
    fn the_pass_fails_only_once_every_address_has_failed() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        ctl.deliver(&mut *pf, "a:1", Connecting);
        assert!(ctl.run_work(&mut *pf));
        ctl.deliver_error(&mut *pf, "b:1", TransientFailure, "b:1: refused");
        assert_eq!(ctl.last_state(), Connecting, "a is still connecting");
        assert_eq!(ctl.resolutions, 0);
        // b back from backoff waits for the pass to end.
        ctl.deliver(&mut *pf, "b:1", Idle);
        assert_eq!(ctl.connects("b:1"), 1);
        ctl.deliver_error(&mut *pf, "a:1", TransientFailure, "a:1: timed out");
        assert_eq!(ctl.last_state(), TransientFailure);
        let status = ctl.pick_status().unwrap();
        assert!(status.message().contains("a:1: timed out"), "{status:?}");
        assert_eq!(ctl.resolutions, 1);
        assert_eq!(ctl.connects("b:1"), 2, "IDLE ones reconnect at the end");
    }

    #[test]
    fn after_the_pass_resolution_is_asked_again_once_failures_reach_the_subchannel_count() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1", "c:1"]);
        for addr in ["a:1", "b:1", "c:1"] {
            ctl.deliver_error(
                &mut *pf,
                addr,
                TransientFailure,
                &format!("{addr}: refused"),
            );
        }
        assert_eq!(ctl.resolutions, 1, "at the end of the pass");
        // a fails twice, b once: three failures for three subchannels.
        for _ in 0..2 {
            let before = ctl.connects("a:1");
            ctl.deliver(&mut *pf, "a:1", Idle);
            assert_eq!(ctl.connects("a:1"), before + 1, "reconnected on IDLE");
            ctl.deliver_error(&mut *pf, "a:1", TransientFailure, "a:1: refused again");
        }
        assert_eq!(ctl.resolutions, 1);
        assert_eq!(ctl.last_state(), TransientFailure);
        assert!(ctl
            .pick_status()
            .unwrap()
            .message()
            .contains("a:1: refused again"));
        ctl.deliver_error(&mut *pf, "b:1", TransientFailure, "b:1: refused");
        assert_eq!(ctl.resolutions, 2);
        for _ in 0..2 {
            ctl.deliver_error(&mut *pf, "c:1", TransientFailure, "c:1: refused");
        }
        assert_eq!(ctl.resolutions, 2, "the count starts anew");
        ctl.deliver(&mut *pf, "c:1", Ready);
        assert_eq!(ctl.pick_addr().as_deref(), Some("c:1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_pass_skips_addresses_in_backoff_and_counts_connecting_ones_as_started() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1", "c:1"]);
        ctl.deliver_error(&mut *pf, "a:1", TransientFailure, "a:1: refused");
        ctl.deliver(&mut *pf, "b:1", Connecting);
        // The same subchannels in a new list: a is in backoff, b connecting.
        pf.resolver_update(
            &update(&["a:1", "b:1", "c:1"]),
            &LbConfig::empty(),
            &mut ctl,
        );
        assert_eq!(ctl.connects("a:1"), 1, "a is not asked again");
        assert_eq!(ctl.connects("b:1"), 1, "b's attempt counts as started");
        assert_eq!(ctl.connects("c:1"), 0, "and c waits for its timer");
        advance(DELAY).await;
        assert!(ctl.run_work(&mut *pf));
        assert_eq!(ctl.connects("c:1"), 1);
    }

    #[test]
    fn a_pass_that_ends_at_once_in_backoff_does_not_ask_for_resolution_again() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        ctl.deliver_error(&mut *pf, "a:1", TransientFailure, "a:1: refused");
        ctl.deliver_error(&mut *pf, "b:1", TransientFailure, "b:1: refused");
        assert_eq!(ctl.resolutions, 1);
        // The resolver answers with the same list while both are in backoff.
        pf.resolver_update(&update(&["a:1", "b:1"]), &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.last_state(), TransientFailure);
        assert_eq!(ctl.resolutions, 1, "no new failure, no new request");
        // New failures of every subchannel ask again.
        for addr in ["a:1", "b:1"] {
            ctl.deliver(&mut *pf, addr, Idle);
            ctl.deliver_error(&mut *pf, addr, TransientFailure, "refused again");
        }
        assert_eq!(ctl.resolutions, 2);
    }

    #[test]
    fn a_list_after_an_empty_one_reports_connecting_not_the_old_failure() {
        let (mut pf, mut ctl) = started(&[]);
        assert_eq!(ctl.last_state(), TransientFailure);
        pf.resolver_update(&update(&["a:1"]), &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.last_state(), Connecting);
        assert_eq!(ctl.connects("a:1"), 1);
    }

    #[test]
    fn a_new_list_after_a_failed_pass_stays_transient_failure() {
        let (mut pf, mut ctl) = started(&["a:1"]);
        ctl.deliver_error(&mut *pf, "a:1", TransientFailure, "a:1: refused");
        let published = ctl.pickers.len();
        pf.resolver_update(&update(&["b:1"]), &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.pickers.len(), published, "sticky (gRFC A62)");
        assert_eq!(ctl.connects("b:1"), 1);
        ctl.deliver(&mut *pf, "b:1", Ready);
        assert_eq!(ctl.last_state(), Ready);
    }

    #[test]
    fn interleaving_alternates_families_from_the_first_ip_literal() {
        let got = |list: &[&str]| strings(&interleave(addresses(list)));
        assert_eq!(
            got(&["[::1]:1", "[::2]:1", "10.0.0.1:1", "10.0.0.2:1"]),
            ["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1"]
        );
        assert_eq!(
            got(&["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1", "[::1]:1"]),
            ["10.0.0.1:1", "[::1]:1", "10.0.0.2:1", "10.0.0.3:1"]
        );
        // IPv4-mapped IPv6 is IPv4.
        assert_eq!(
            got(&["[::1]:1", "[::ffff:10.0.0.1]:1", "[::2]:1"]),
            ["[::1]:1", "[::ffff:10.0.0.1]:1", "[::2]:1"]
        );
        assert_eq!(
            got(&["[::1]:1", "[::2]:1", "[::ffff:10.0.0.1]:1"]),
            ["[::1]:1", "[::ffff:10.0.0.1]:1", "[::2]:1"]
        );
    }

    #[test]
    fn interleaving_keeps_names_and_unix_paths_in_the_first_familys_run() {
        let got = |list: &[&str]| strings(&interleave(addresses(list)));
        assert_eq!(
            got(&["unix:/a", "10.0.0.1:1", "[::1]:1", "b.example:1", "[::2]:1"]),
            ["unix:/a", "[::1]:1", "10.0.0.1:1", "[::2]:1", "b.example:1"]
        );
        let no_ip = ["unix:/a", "b.example:1", "c.example:1"];
        assert_eq!(got(&no_ip), no_ip);
        let one_family = ["10.0.0.1:1", "a.example:1", "10.0.0.2:1"];
        assert_eq!(got(&one_family), one_family);
    }

    #[test]
    fn the_pass_follows_the_interleaved_order_after_dedup() {
        let (mut pf, mut ctl) = (build(), FakeController::new());
        let list = ["[::1]:1", "[::1]:1", "[::2]:1", "10.0.0.1:1", "[::1]:1"];
        pf.resolver_update(&update(&list), &LbConfig::empty(), &mut ctl);
        assert_eq!(ctl.connected_addrs(), ["[::1]:1"]);
        ctl.deliver_error(&mut *pf, "[::1]:1", TransientFailure, "[::1]:1: refused");
        assert_eq!(ctl.connects("10.0.0.1:1"), 1, "IPv4 second");
        assert_eq!(ctl.connects("[::2]:1"), 0);
        ctl.deliver_error(&mut *pf, "10.0.0.1:1", TransientFailure, "refused");
        assert_eq!(ctl.connects("[::2]:1"), 1);
    }

    #[test]
    fn a_refusal_does_not_hide_a_tls_failure_of_the_same_pass() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        let failed = |error: Error| SubchannelState::new(TransientFailure).with_error(error);
        let tls = Error::new(ErrorKind::Connect, "a:1: TLS handshake failed: corrupt");
        let refused = Error::with_source(
            ErrorKind::Connect,
            "b:1",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        ctl.deliver_only(&mut *pf, "a:1", failed(tls));
        ctl.deliver_only(&mut *pf, "b:1", failed(refused.clone()));
        assert_eq!(ctl.last_state(), TransientFailure);
        let status = ctl.pick_status().unwrap();
        assert!(status.message().contains("TLS handshake"), "{status:?}");
        // Retries: b is refused again; a's TLS error still tells more.
        ctl.deliver_only(&mut *pf, "b:1", SubchannelState::new(Idle));
        ctl.deliver_only(&mut *pf, "b:1", failed(refused));
        let status = ctl.pick_status().unwrap();
        assert!(status.message().contains("TLS handshake"), "{status:?}");
        // A new pass starts afresh: its refusal is all there is to say.
        pf.resolver_update(&update(&["c:1"]), &LbConfig::empty(), &mut ctl);
        let refused = Error::with_source(
            ErrorKind::Connect,
            "c:1",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        ctl.deliver_only(&mut *pf, "c:1", failed(refused));
        let status = ctl.pick_status().unwrap();
        assert!(status.message().contains("c:1"), "{status:?}");
    }

    #[test]
    fn an_unhealthy_selected_connection_stays_selected_and_fails_calls_with_the_health_error() {
        let (mut pf, mut ctl) = started(&["a:1", "b:1"]);
        // Connected; the health service has not answered yet: selected,
        // calls wait.
        ctl.deliver_only(&mut *pf, "a:1", SubchannelState::health(Connecting));
        assert_eq!(ctl.last_state(), Connecting);
        ctl.deliver_only(&mut *pf, "a:1", SubchannelState::health(Ready));
        assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
        let error = Error::new(
            ErrorKind::Health,
            "health check: NOT_SERVING from a:1, service \"s\"",
        );
        let unhealthy = SubchannelState::health(TransientFailure).with_error(error);
        ctl.deliver_only(&mut *pf, "a:1", unhealthy);
        assert_eq!(ctl.last_state(), TransientFailure);
        let status = ctl.pick_status().unwrap();
        assert!(status.message().contains("NOT_SERVING"), "{status:?}");
        // The connection was kept: SERVING again takes calls, no reconnect,
        // and the next address was never tried.
        ctl.deliver_only(&mut *pf, "a:1", SubchannelState::health(Ready));
        assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
        assert_eq!((ctl.connects("a:1"), ctl.connects("b:1")), (1, 0));
        assert_eq!(ctl.resolutions, 0);
    }
}

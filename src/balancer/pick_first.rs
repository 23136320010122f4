//! `pick_first`: one connection at a time, in address order (gRFC A62).
//!
//! On a resolver update the policy keeps its READY subchannel if that address
//! is still listed; otherwise it makes a pass down the list, connecting to
//! one address at a time and moving on when an attempt fails. The first one
//! to become READY takes every call, and the others are released. When the
//! whole pass fails the channel goes TRANSIENT_FAILURE and stays there
//! ("sticky") until a subchannel becomes READY: each subchannel retries on
//! its own backoff. A READY connection that is lost sends the policy to IDLE;
//! the next call starts a new pass from the top, so calls move to the next
//! backend when one is killed.
//!
//! Config: `{"shuffleAddressList": true}` shuffles the list on each update
//! (so that clients spread over backends).

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{dedup, failure_message, Balancer, BalancerBuilder, BuildOptions, Controller};
use crate::picker::{FailPicker, Pick, PickInfo, PickResult, Picker, QueuePicker};
use crate::resolver::ResolverUpdate;
use crate::subchannel::SubchannelState;
use crate::{Address, ConnectivityState, Error, ErrorKind, Subchannel};

/// The name of the pick_first policy.
pub const PICK_FIRST: &str = "pick_first";

/// Builds [`pick_first`](self) balancers.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickFirstBuilder;

impl BalancerBuilder for PickFirstBuilder {
    fn name(&self) -> &str {
        PICK_FIRST
    }

    fn build(
        &self,
        config: &serde_json::Value,
        options: &BuildOptions,
    ) -> Result<Box<dyn Balancer>, Error> {
        let shuffle = match config.get("shuffleAddressList") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    "pick_first: \"shuffleAddressList\" must be a boolean",
                )
            })?,
        };
        Ok(Box::new(PickFirst {
            shuffle,
            rng: SmallRng::seed_from_u64(options.seed()),
            addresses: Vec::new(),
            pass: Vec::new(),
            index: 0,
            selected: None,
            state: ConnectivityState::Connecting,
            last_error: None,
        }))
    }
}

struct PickFirst {
    shuffle: bool,
    rng: SmallRng,
    addresses: Vec<Address>,
    /// The subchannels of the current pass, in address order.
    pass: Vec<Subchannel>,
    /// The subchannel the pass is trying; `pass.len()` once it has failed.
    index: usize,
    selected: Option<Subchannel>,
    state: ConnectivityState,
    last_error: Option<Error>,
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

    fn fail(&mut self, error: Error, ctl: &mut dyn Controller) {
        let picker = FailPicker::unavailable(failure_message(&error));
        self.last_error = Some(error);
        self.publish(ConnectivityState::TransientFailure, Arc::new(picker), ctl);
        ctl.request_resolution();
    }

    /// Starts a pass over the addresses from the top.
    fn start_pass(&mut self, ctl: &mut dyn Controller) {
        self.selected = None;
        self.pass = self
            .addresses
            .iter()
            .filter_map(|a| match ctl.new_subchannel(a) {
                Ok(sc) => Some(sc),
                Err(e) => {
                    tracing::warn!(address = %a, error = %e, "pick_first: skipping address");
                    None
                }
            })
            .collect();
        self.index = 0;
        if self.state != ConnectivityState::TransientFailure {
            self.publish(ConnectivityState::Connecting, Arc::new(QueuePicker), ctl);
        }
        self.try_current(ctl);
    }

    /// Acts on the subchannel the pass is at: select, wait, or move on.
    fn try_current(&mut self, ctl: &mut dyn Controller) {
        while let Some(sc) = self.pass.get(self.index).cloned() {
            match sc.state() {
                ConnectivityState::Ready => return self.select(sc, ctl),
                ConnectivityState::Idle => return sc.connect(),
                ConnectivityState::Connecting => return,
                ConnectivityState::TransientFailure | ConnectivityState::Shutdown => {
                    self.index += 1
                }
            }
        }
        // The pass is over and nothing connected: sticky TRANSIENT_FAILURE.
        let error = self
            .last_error
            .clone()
            .unwrap_or_else(|| Error::new(ErrorKind::Connect, "no address could be connected"));
        self.fail(error, ctl);
        for sc in &self.pass {
            sc.connect();
        }
    }

    fn select(&mut self, sc: Subchannel, ctl: &mut dyn Controller) {
        self.pass.clear();
        self.index = 0;
        self.selected = Some(sc.clone());
        self.publish(ConnectivityState::Ready, Arc::new(OnePicker(sc)), ctl);
    }

    fn pass_failed(&self) -> bool {
        self.index >= self.pass.len()
    }
}

impl Balancer for PickFirst {
    fn resolver_update(&mut self, update: &ResolverUpdate, ctl: &mut dyn Controller) {
        let mut addresses = dedup(update.addresses());
        if self.shuffle {
            addresses.shuffle(&mut self.rng);
        }
        self.addresses = addresses;
        if self.addresses.is_empty() {
            self.selected = None;
            self.pass.clear();
            let error = Error::new(ErrorKind::Resolver, "the resolver returned no addresses");
            return self.fail(error, ctl);
        }
        if let Some(sc) = &self.selected {
            if self.addresses.contains(sc.address()) {
                return;
            }
        }
        if self.state == ConnectivityState::Idle {
            // IDLE after a lost connection: the next call connects, to the
            // new list (gRFC A62).
            return;
        }
        self.start_pass(ctl);
    }

    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
        if self.addresses.is_empty() || self.state == ConnectivityState::TransientFailure {
            self.fail(error.clone(), ctl);
        }
    }

    fn subchannel_update(
        &mut self,
        sc: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        if self.selected.as_ref() == Some(sc) {
            if state.connectivity != ConnectivityState::Ready {
                // Connection lost: go IDLE; the next call starts a new pass.
                self.selected = None;
                self.publish(ConnectivityState::Idle, Arc::new(QueuePicker), ctl);
                ctl.request_resolution();
            }
            return;
        }
        let Some(position) = self.pass.iter().position(|s| s == sc) else {
            return;
        };
        if let Some(error) = &state.error {
            self.last_error = Some(error.clone());
        }
        match state.connectivity {
            ConnectivityState::Ready => self.select(sc.clone(), ctl),
            ConnectivityState::TransientFailure if position == self.index => {
                self.index += 1;
                self.try_current(ctl);
            }
            ConnectivityState::TransientFailure if self.pass_failed() => {
                if let Some(error) = state.error.clone() {
                    self.fail(error, ctl);
                }
            }
            // After the pass failed, every subchannel retries on its own
            // backoff until one is READY.
            ConnectivityState::Idle if self.pass_failed() || position == self.index => sc.connect(),
            _ => {}
        }
    }

    fn exit_idle(&mut self, ctl: &mut dyn Controller) {
        if self.state == ConnectivityState::Idle && !self.addresses.is_empty() {
            self.start_pass(ctl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::FakeController;
    use ConnectivityState::*;

    fn build(config: serde_json::Value) -> Box<dyn Balancer> {
        let opts = BuildOptions::new("static:///a:1".parse().unwrap(), 1);
        PickFirstBuilder.build(&config, &opts).unwrap()
    }

    fn update(addrs: &[&str]) -> ResolverUpdate {
        ResolverUpdate::new(addrs.iter().map(|a| Address::from(*a)).collect())
    }

    #[test]
    fn connects_to_the_first_address_only() {
        let (mut pf, mut ctl) = (build(serde_json::json!({})), FakeController::new());
        pf.resolver_update(&update(&["a:1", "b:1"]), &mut ctl);
        assert_eq!(ctl.last_state(), Connecting);
        assert_eq!(ctl.connects("a:1"), 1);
        assert_eq!(ctl.connects("b:1"), 0);
    }

    #[test]
    fn fails_over_down_the_list_and_picks_the_first_ready() {
        let (mut pf, mut ctl) = (build(serde_json::json!({})), FakeController::new());
        pf.resolver_update(&update(&["a:1", "b:1"]), &mut ctl);
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
        let (mut pf, mut ctl) = (build(serde_json::json!({})), FakeController::new());
        pf.resolver_update(&update(&["a:1", "b:1"]), &mut ctl);
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
        let (mut pf, mut ctl) = (build(serde_json::json!({})), FakeController::new());
        pf.resolver_update(&update(&["a:1", "b:1"]), &mut ctl);
        ctl.deliver(&mut *pf, "a:1", Ready);
        ctl.deliver(&mut *pf, "a:1", Idle);
        assert_eq!(ctl.last_state(), Idle);
        pf.exit_idle(&mut ctl);
        assert_eq!(ctl.last_state(), Connecting);
        assert_eq!(ctl.connects("a:1"), 2);
    }

    #[test]
    fn an_update_while_idle_waits_for_the_next_call() {
        let (mut pf, mut ctl) = (build(serde_json::json!({})), FakeController::new());
        pf.resolver_update(&update(&["a:1", "b:1"]), &mut ctl);
        ctl.deliver(&mut *pf, "a:1", Ready);
        ctl.deliver(&mut *pf, "a:1", Idle);
        let published = ctl.pickers.len();
        pf.resolver_update(&update(&["b:1", "a:1"]), &mut ctl);
        assert_eq!(ctl.pickers.len(), published, "stays IDLE");
        pf.exit_idle(&mut ctl);
        assert_eq!(ctl.last_state(), Connecting);
        assert_eq!(ctl.connects("b:1"), 1, "the new order is used");
    }

    #[test]
    fn keeps_the_selected_address_when_it_stays_listed() {
        let (mut pf, mut ctl) = (build(serde_json::json!({})), FakeController::new());
        pf.resolver_update(&update(&["a:1", "b:1"]), &mut ctl);
        ctl.deliver(&mut *pf, "a:1", Ready);
        let published = ctl.pickers.len();
        pf.resolver_update(&update(&["c:1", "a:1"]), &mut ctl);
        assert_eq!(
            ctl.pickers.len(),
            published,
            "no new picker while the selection stays"
        );
        pf.resolver_update(&update(&["c:1"]), &mut ctl);
        assert_eq!(ctl.last_state(), Connecting);
        assert_eq!(ctl.connects("c:1"), 1);
    }

    #[test]
    fn empty_update_is_transient_failure_and_asks_for_resolution() {
        let (mut pf, mut ctl) = (build(serde_json::json!({})), FakeController::new());
        pf.resolver_update(&update(&[]), &mut ctl);
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
        let (mut pf, mut ctl) = (build(serde_json::json!({})), FakeController::new());
        pf.resolver_update(&update(&["a:1"]), &mut ctl);
        ctl.deliver(&mut *pf, "a:1", Ready);
        let err = Error::new(ErrorKind::Resolver, "lookup failed");
        pf.resolver_error(&err, &mut ctl);
        assert_eq!(ctl.last_state(), Ready);

        let (mut fresh, mut ctl2) = (build(serde_json::json!({})), FakeController::new());
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
            let mut pf = PickFirstBuilder
                .build(&serde_json::json!({"shuffleAddressList": true}), &opts)
                .unwrap();
            let mut ctl = FakeController::new();
            pf.resolver_update(&update(&refs), &mut ctl);
            ctl.connected_addrs()
        };
        assert_eq!(first(3), first(3));
        let opts = BuildOptions::new("static:///a:1".parse().unwrap(), 1);
        let err = PickFirstBuilder
            .build(&serde_json::json!({"shuffleAddressList": "yes"}), &opts)
            .err()
            .unwrap();
        assert!(err.is_config());
    }
}

//! A fake [`Controller`] for testing balancers (yours or the built-in ones)
//! without a runtime, a network or a channel.
//!
//! It records the pickers a balancer publishes and the re-resolutions it
//! asks for, and hands out subchannels that never connect; a test plays the
//! connection task by [`deliver`](FakeController::deliver)ing state changes.
//! Like a real channel it keeps only weak references: a subchannel lives as
//! long as the balancer (or a published picker) holds it, and asking again
//! for a live address returns the same subchannel.
//!
//! ```
//! use tonic_balance::balancer::testing::FakeController;
//! use tonic_balance::balancer::{BalancerBuilder, BuildOptions, RoundRobinBuilder};
//! use tonic_balance::resolver::ResolverUpdate;
//! use tonic_balance::ConnectivityState;
//!
//! let options = BuildOptions::new("static:///a:1".parse().unwrap(), 7);
//! let mut rr = RoundRobinBuilder.build(&serde_json::json!({}), &options).unwrap();
//! let mut ctl = FakeController::new();
//! rr.resolver_update(&ResolverUpdate::new(vec!["a:1".into(), "b:1".into()]), &mut ctl);
//! ctl.deliver(&mut *rr, "a:1", ConnectivityState::Ready);
//! assert_eq!(ctl.last_state(), ConnectivityState::Ready);
//! assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::{Balancer, Controller};
use crate::picker::{PickInfo, PickResult, Picker};
use crate::subchannel::{Inner, SubchannelState};
use crate::{Address, ConnectivityState, Error, ErrorKind, Subchannel};

/// Records what a balancer asks of its channel.
pub struct FakeController {
    subchannels: HashMap<String, Weak<Inner>>,
    next_id: u64,
    /// Every picker published, oldest first, with its state.
    pub pickers: Vec<(ConnectivityState, Arc<dyn Picker>)>,
    /// How many re-resolutions were asked for.
    pub resolutions: usize,
    /// When the balancer asked for [`Balancer::work`] (the earliest
    /// pending request), if it did.
    pub work_at: Option<tokio::time::Instant>,
}

impl FakeController {
    /// A controller with no subchannels.
    pub fn new() -> Self {
        FakeController {
            subchannels: HashMap::new(),
            next_id: 0,
            pickers: Vec::new(),
            resolutions: 0,
            work_at: None,
        }
    }

    fn live(&self, addr: &str) -> Option<Subchannel> {
        self.subchannels.get(addr).and_then(Subchannel::upgrade)
    }

    /// The live subchannel for `addr`. Panics if there is none (a test
    /// asking for one the balancer never made, or dropped, is failing).
    pub fn subchannel(&self, addr: &str) -> Subchannel {
        self.live(addr)
            .unwrap_or_else(|| panic!("no live subchannel for {addr}"))
    }

    /// How many times the balancer asked `addr` to connect.
    pub fn connects(&self, addr: &str) -> u32 {
        self.live(addr).map_or(0, |s| s.connect_requests())
    }

    /// The addresses asked to connect, in creation order.
    pub fn connected_addrs(&self) -> Vec<String> {
        let mut all: Vec<Subchannel> = self
            .subchannels
            .values()
            .filter_map(Subchannel::upgrade)
            .collect();
        all.sort_by_key(|s| s.id());
        all.iter()
            .filter(|s| s.connect_requests() > 0)
            .map(|s| s.address().to_string())
            .collect()
    }

    /// Plays the connection task: `addr`'s subchannel is now `state`. Then
    /// runs the work the balancer asked for now, as the channel does after
    /// a burst (this is a burst of one event).
    pub fn deliver(&mut self, b: &mut dyn Balancer, addr: &str, state: ConnectivityState) {
        self.deliver_state(b, addr, state, None);
    }

    /// Like [`deliver`](Self::deliver), with an error.
    pub fn deliver_error(
        &mut self,
        b: &mut dyn Balancer,
        addr: &str,
        state: ConnectivityState,
        error: &str,
    ) {
        self.deliver_state(b, addr, state, Some(Error::new(ErrorKind::Connect, error)));
    }

    fn deliver_state(
        &mut self,
        b: &mut dyn Balancer,
        addr: &str,
        connectivity: ConnectivityState,
        error: Option<Error>,
    ) {
        let sc = self.subchannel(addr);
        sc.set_state(connectivity);
        b.subchannel_update(
            &sc,
            &SubchannelState {
                connectivity,
                error,
            },
            self,
        );
        self.run_due_work(b);
    }

    /// Plays the end of a burst: if the balancer asked for
    /// [`Balancer::work`] at or before now (tokio time), clears the request
    /// and runs it, as the channel does after delivering the events
    /// already queued. Work asked for later is left for
    /// [`run_work`](Self::run_work). [`deliver`](Self::deliver) calls this
    /// after each event (a burst of one). Returns whether work ran.
    pub fn run_due_work(&mut self, b: &mut dyn Balancer) -> bool {
        match self.work_at {
            Some(at) if at <= tokio::time::Instant::now() => self.run_work(b),
            _ => false,
        }
    }

    /// The state of the last published picker.
    pub fn last_state(&self) -> ConnectivityState {
        self.pickers.last().expect("a picker was published").0
    }

    /// Picks once with the last published picker (the pick may borrow
    /// from that picker, which the controller keeps).
    pub fn pick(&self) -> PickResult<'_> {
        let headers = http::HeaderMap::new();
        let (_, picker) = self.pickers.last().expect("a picker was published");
        picker.pick(&PickInfo::new("/proto.Simple/Route", &headers))
    }

    /// The address the last picker picks, if it picks.
    pub fn pick_addr(&self) -> Option<String> {
        match self.pick() {
            PickResult::Pick(p) => Some(p.subchannel().address().to_string()),
            _ => None,
        }
    }

    /// The status the last picker fails with, if it fails.
    pub fn pick_status(&self) -> Option<tonic::Status> {
        match self.pick() {
            PickResult::Fail(s) | PickResult::Drop(s) => Some(s),
            _ => None,
        }
    }
}

impl Default for FakeController {
    fn default() -> Self {
        FakeController::new()
    }
}

impl std::fmt::Debug for FakeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeController")
            .field("subchannels", &self.subchannels.len())
            .field("pickers", &self.pickers.len())
            .field("resolutions", &self.resolutions)
            .finish()
    }
}

impl FakeController {
    /// The last published picker.
    pub fn picker(&self) -> Option<Arc<dyn Picker>> {
        self.pickers.last().map(|(_, p)| p.clone())
    }
}

impl Controller for FakeController {
    fn new_subchannel(&mut self, address: &Address) -> Result<Subchannel, Error> {
        if let Some(sc) = self.live(address.addr()) {
            return Ok(sc);
        }
        self.next_id += 1;
        let sc = Subchannel::detached(self.next_id, address.clone());
        self.subchannels
            .insert(address.addr().to_owned(), sc.downgrade());
        Ok(sc)
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.pickers.push((state, picker));
    }

    fn request_resolution(&mut self) {
        self.resolutions += 1;
    }

    fn schedule_work(&mut self, at: tokio::time::Instant) {
        self.work_at = Some(self.work_at.map_or(at, |t| t.min(at)));
    }
}

impl FakeController {
    /// Plays the channel's timer: if the balancer asked for work, clears
    /// the request and calls [`Balancer::work`] (whatever the time; a test
    /// reads [`work_at`](Self::work_at) to check when it was due). Returns
    /// whether work ran.
    pub fn run_work(&mut self, b: &mut dyn Balancer) -> bool {
        if self.work_at.take().is_none() {
            return false;
        }
        b.work(self);
        true
    }
}

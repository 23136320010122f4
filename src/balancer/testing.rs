//! A fake [`Controller`] for testing balancers (yours or the built-in ones)
//! without a runtime, a network or a channel. Behind the `test-util` cargo
//! feature.
//!
//! It records, in order, what a balancer asks of its channel
//! ([`events`](FakeController::events): subchannels made, pickers
//! published, re-resolutions, connection requests, work scheduled), keeps
//! the pickers, and hands out subchannels that never connect; a test plays
//! the connection task by [`deliver`](FakeController::deliver)ing state
//! changes. Like a real channel it keeps one subchannel per address in the
//! channel's own table and only weak references to them: a subchannel lives
//! as long as the balancer (or a published picker) holds it, and asking
//! again for a live address returns the same subchannel with its state.
//!
//! ```
//! use tonic_balance::balancer::testing::{Event, FakeController};
//! use tonic_balance::balancer::{BalancerBuilder, BuildOptions, LbConfig, RoundRobinBuilder};
//! use tonic_balance::resolver::ResolverUpdate;
//! use tonic_balance::ConnectivityState;
//!
//! let options = BuildOptions::new("static:///a:1".parse().unwrap(), 7);
//! let mut rr = RoundRobinBuilder.build(&options);
//! let mut ctl = FakeController::new();
//! let update = ResolverUpdate::new(vec!["a:1".into(), "b:1".into()]);
//! rr.resolver_update(&update, &LbConfig::empty(), &mut ctl);
//! assert_eq!(ctl.events()[..2], [Event::NewSubchannel("a:1".into()), Event::Connect("a:1".into())]);
//! ctl.deliver(&mut *rr, "a:1", ConnectivityState::Ready);
//! assert_eq!(ctl.last_state(), ConnectivityState::Ready);
//! assert_eq!(ctl.pick_addr().as_deref(), Some("a:1"));
//! ```
//!
//! Connection requests are recorded from the thread the controller was
//! made on (a balancer test runs on one thread).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::{Balancer, Controller};
use crate::channel::SubchannelTable;
use crate::picker::{PickInfo, PickResult, Picker};
use crate::subchannel::{SubchannelOwner, SubchannelState};
use crate::{Address, ConnectivityState, Error, ErrorKind, Subchannel};

/// One thing a balancer asked of the [`FakeController`], in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// `new_subchannel` for this address (also for one already made).
    NewSubchannel(String),
    /// A picker was published with this state.
    UpdatePicker(ConnectivityState),
    /// `request_resolution`.
    RequestResolution,
    /// A subchannel of this address was asked to connect while IDLE (a
    /// second request before its next state is the same request and is
    /// not recorded).
    Connect(String),
    /// `schedule_work` for this time.
    ScheduleWork(tokio::time::Instant),
}

type Log = Arc<Mutex<Vec<Event>>>;

/// A subchannel (to tell it from a later one at the same address in
/// memory) and the log of the controller that made it.
type Owner = (Weak<SubchannelOwner>, Weak<Mutex<Vec<Event>>>);

thread_local! {
    /// Which log records a subchannel's connection requests: the
    /// controller that made it, by its handle's address.
    static CONNECT_LOGS: RefCell<HashMap<usize, Owner>> = RefCell::new(HashMap::new());
}

/// Records a connection request of a subchannel a [`FakeController`] made
/// (called by `Subchannel::connect`).
pub(crate) fn record_connect(subchannel: &Subchannel) {
    let weak = subchannel.downgrade();
    let log = CONNECT_LOGS.with(|logs| {
        let logs = logs.borrow();
        let (owner, log) = logs.get(&(weak.as_ptr() as usize))?;
        owner.ptr_eq(&weak).then(|| log.upgrade()).flatten()
    });
    if let Some(log) = log {
        lock(&log).push(Event::Connect(subchannel.address().to_string()));
    }
}

fn lock(log: &Mutex<Vec<Event>>) -> std::sync::MutexGuard<'_, Vec<Event>> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records what a balancer asks of its channel.
pub struct FakeController {
    table: SubchannelTable,
    log: Log,
    /// Whether [`events`](Self::events) are recorded.
    recording: bool,
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
            table: SubchannelTable::detached(),
            log: Arc::default(),
            recording: true,
            pickers: Vec::new(),
            resolutions: 0,
            work_at: None,
        }
    }

    /// Everything the balancer asked for so far, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.log).clone()
    }

    /// Stops (`false`) or resumes recording [`events`](Self::events); a
    /// benchmark turns it off so the log does not grow with its
    /// iterations (and connection requests are then not recorded for
    /// subchannels made meanwhile).
    pub fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }

    /// [`events`](Self::events), clearing the log.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut *lock(&self.log))
    }

    /// The live subchannel for `addr`. Panics if there is none (a test
    /// asking for one the balancer never made, or dropped, is failing).
    pub fn subchannel(&self, addr: &str) -> Subchannel {
        self.table
            .live(addr)
            .unwrap_or_else(|| panic!("no live subchannel for {addr}"))
    }

    /// How many times the balancer asked `addr` to connect.
    pub fn connects(&self, addr: &str) -> u32 {
        self.table.live(addr).map_or(0, |s| s.connect_requests())
    }

    /// The addresses asked to connect, in creation order.
    pub fn connected_addrs(&self) -> Vec<String> {
        let mut all = self.table.all_live();
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
        self.deliver_state(b, addr, SubchannelState::new(state));
    }

    /// Like [`deliver`](Self::deliver), with an error.
    pub fn deliver_error(
        &mut self,
        b: &mut dyn Balancer,
        addr: &str,
        state: ConnectivityState,
        error: &str,
    ) {
        let error = Error::new(ErrorKind::Connect, error);
        self.deliver_state(b, addr, SubchannelState::new(state).with_error(error));
    }

    /// Like [`deliver`](Self::deliver), without running the work the
    /// balancer asks for (several events of one burst; then
    /// [`run_due_work`](Self::run_due_work)).
    pub fn deliver_only(&mut self, b: &mut dyn Balancer, addr: &str, state: SubchannelState) {
        let sc = self.subchannel(addr);
        sc.set_state(state.connectivity);
        b.subchannel_update(&sc, &state, self);
    }

    fn deliver_state(&mut self, b: &mut dyn Balancer, addr: &str, state: SubchannelState) {
        self.deliver_only(b, addr, state);
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

    /// The state of the last published picker.
    pub fn last_state(&self) -> ConnectivityState {
        self.pickers.last().expect("a picker was published").0
    }

    /// The last published picker.
    pub fn picker(&self) -> Option<Arc<dyn Picker>> {
        self.pickers.last().map(|(_, p)| p.clone())
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

    fn record(&self, event: Event) {
        if self.recording {
            lock(&self.log).push(event);
        }
    }
}

impl Default for FakeController {
    fn default() -> Self {
        FakeController::new()
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        let mine = Arc::downgrade(&self.log);
        let _ = CONNECT_LOGS.try_with(|logs| {
            logs.borrow_mut()
                .retain(|_, (owner, log)| owner.strong_count() > 0 && !log.ptr_eq(&mine))
        });
    }
}

impl std::fmt::Debug for FakeController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeController")
            .field("subchannels", &self.table.all_live().len())
            .field("pickers", &self.pickers.len())
            .field("resolutions", &self.resolutions)
            .finish()
    }
}

impl Controller for FakeController {
    fn new_subchannel(
        &mut self,
        address: &Address,
    ) -> Result<(Subchannel, SubchannelState), Error> {
        self.record(Event::NewSubchannel(address.to_string()));
        let (subchannel, fresh) = self.table.get_or_make(address)?;
        if fresh && self.recording {
            let weak = subchannel.downgrade();
            let key = weak.as_ptr() as usize;
            let log = Arc::downgrade(&self.log);
            CONNECT_LOGS.with(|logs| logs.borrow_mut().insert(key, (weak, log)));
        }
        let state = SubchannelState::new(subchannel.state());
        Ok((subchannel, state))
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.record(Event::UpdatePicker(state));
        self.pickers.push((state, picker));
    }

    fn request_resolution(&mut self) {
        self.record(Event::RequestResolution);
        self.resolutions += 1;
    }

    fn schedule_work(&mut self, at: tokio::time::Instant) {
        self.record(Event::ScheduleWork(at));
        self.work_at = Some(self.work_at.map_or(at, |t| t.min(at)));
    }
}

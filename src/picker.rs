//! Pickers: the request path's only contact with the balancer.
//!
//! A [`Picker`] is an immutable snapshot a balancer publishes through its
//! [`Controller`](crate::balancer::Controller). For every call the channel
//! loads the current snapshot with one atomic load (no lock) and asks it to
//! [`pick`](Picker::pick). A picker never blocks and never does I/O: to wait,
//! it answers [`PickResult::Queue`] and the call waits for the next snapshot.
//!
//! Failures follow gRPC's wait-for-ready rules: a [`PickResult::Fail`] with
//! `UNAVAILABLE` fails a fail-fast call at once and makes a wait-for-ready
//! call wait; [`PickResult::Drop`] fails every call (for policies that shed
//! load on purpose).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::{ConnectivityState, Subchannel};

/// Chooses a subchannel for one call. Must not block.
pub trait Picker: Send + Sync + 'static {
    /// Picks a subchannel for the call described by `info`.
    fn pick(&self, info: &PickInfo<'_>) -> PickResult;
}

/// What a picker may look at: the call's method path and headers.
#[derive(Debug)]
pub struct PickInfo<'a> {
    path: &'a str,
    headers: &'a http::HeaderMap,
}

impl<'a> PickInfo<'a> {
    /// Describes a call to `path` (`/package.Service/Method`) with `headers`.
    pub fn new(path: &'a str, headers: &'a http::HeaderMap) -> Self {
        PickInfo { path, headers }
    }

    /// The full method path, `/package.Service/Method`.
    pub fn path(&self) -> &str {
        self.path
    }

    /// The call's request headers (gRPC metadata).
    pub fn headers(&self) -> &http::HeaderMap {
        self.headers
    }
}

/// The outcome of a pick.
pub enum PickResult {
    /// Send the call on this subchannel.
    Pick(Pick),
    /// No decision yet: wait for the next picker.
    Queue,
    /// Fail the call; `UNAVAILABLE` waits instead for wait-for-ready calls.
    Fail(tonic::Status),
    /// Fail the call even if it is wait-for-ready.
    Drop(tonic::Status),
}

/// A chosen subchannel and an optional callback run when the call ends.
pub struct Pick {
    subchannel: Subchannel,
    on_done: Option<OnDone>,
}

/// Called once when a picked call ends (its response stream finished or was
/// dropped, or it failed). Load-aware policies count in-flight calls with it.
pub type OnDone = Box<dyn FnOnce() + Send + Sync + 'static>;

impl Pick {
    /// Picks `subchannel`.
    pub fn new(subchannel: Subchannel) -> Self {
        Pick {
            subchannel,
            on_done: None,
        }
    }

    /// Runs `on_done` when the call ends.
    pub fn with_on_done(mut self, on_done: OnDone) -> Self {
        self.on_done = Some(on_done);
        self
    }

    /// The chosen subchannel.
    pub fn subchannel(&self) -> &Subchannel {
        &self.subchannel
    }

    /// The callback to run when the call ends, if any.
    pub(crate) fn into_on_done(self) -> Option<OnDone> {
        self.on_done
    }
}

impl fmt::Debug for PickResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickResult::Pick(p) => f.debug_tuple("Pick").field(&p.subchannel).finish(),
            PickResult::Queue => f.write_str("Queue"),
            PickResult::Fail(s) => f.debug_tuple("Fail").field(s).finish(),
            PickResult::Drop(s) => f.debug_tuple("Drop").field(s).finish(),
        }
    }
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("subchannel", &self.subchannel)
            .field("on_done", &self.on_done.is_some())
            .finish()
    }
}

/// A picker that queues every call (while connecting or idle).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueuePicker;

impl Picker for QueuePicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult {
        PickResult::Queue
    }
}

/// A picker that fails every call with one status (TRANSIENT_FAILURE).
#[derive(Debug, Clone)]
pub struct FailPicker {
    status: tonic::Status,
}

impl FailPicker {
    /// Fails every call with `status`.
    pub fn new(status: tonic::Status) -> Self {
        FailPicker { status }
    }

    /// Fails every call with `UNAVAILABLE` and `message`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        FailPicker::new(tonic::Status::unavailable(message))
    }
}

impl Picker for FailPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult {
        PickResult::Fail(self.status.clone())
    }
}

/// One published picker with the channel state it came with.
pub(crate) struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) state: ConnectivityState,
    pub(crate) picker: Arc<dyn Picker>,
    /// Set by the first call that asks an IDLE channel to connect, so that
    /// one snapshot sends at most one such request.
    pub(crate) idle_kicked: AtomicBool,
}

/// Where the control task publishes pickers and calls read them.
pub(crate) struct PickerCell {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    changed: Notify,
}

impl PickerCell {
    pub(crate) fn new(state: ConnectivityState, picker: Arc<dyn Picker>) -> Self {
        PickerCell {
            current: ArcSwap::from_pointee(Snapshot::new(0, state, picker)),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Publishes a new picker and wakes every queued call.
    pub(crate) fn publish(&self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.current
            .store(Arc::new(Snapshot::new(generation, state, picker)));
        self.changed.notify_waiters();
    }

    /// Waits until a snapshot newer than `generation` is published.
    pub(crate) async fn changed_since(&self, generation: u64) {
        let notified = self.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.current.load().generation != generation {
            return;
        }
        notified.await;
    }
}

impl Snapshot {
    fn new(generation: u64, state: ConnectivityState, picker: Arc<dyn Picker>) -> Self {
        Snapshot {
            generation,
            state,
            picker,
            idle_kicked: AtomicBool::new(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_pick(p: &dyn Picker) -> PickResult {
        let headers = http::HeaderMap::new();
        p.pick(&PickInfo::new("/proto.Simple/Route", &headers))
    }

    #[test]
    fn fixed_pickers_queue_or_fail() {
        assert!(matches!(info_pick(&QueuePicker), PickResult::Queue));
        match info_pick(&FailPicker::unavailable("down")) {
            PickResult::Fail(s) => assert_eq!(s.code(), tonic::Code::Unavailable),
            other => panic!("expected Fail, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn publishing_wakes_waiters_and_bumps_generation() {
        let cell = Arc::new(PickerCell::new(
            ConnectivityState::Connecting,
            Arc::new(QueuePicker),
        ));
        let waiter = {
            let cell = cell.clone();
            tokio::spawn(async move { cell.changed_since(0).await })
        };
        tokio::task::yield_now().await;
        cell.publish(ConnectivityState::Ready, Arc::new(QueuePicker));
        waiter.await.unwrap();
        assert_eq!(cell.load().generation, 1);
        assert_eq!(cell.load().state, ConnectivityState::Ready);
        // Already newer: returns at once.
        cell.changed_since(0).await;
    }
}

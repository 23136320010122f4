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
//!
//! **Picks borrow.** A [`Pick`] usually borrows its subchannel from the
//! picker ([`Pick::borrowed`]): the channel holds the picker snapshot while
//! it reads the pick, so no handle has to be cloned. Cloning a
//! [`Subchannel`] writes its reference count, and when several threads
//! pick the same subchannel that write moves the count's cache line from
//! core to core on every call; a borrowed pick writes nothing shared. A
//! picker that makes its handles on the fly returns an owned one with
//! [`Pick::new`]; [`PickResult::into_owned`] turns any result into one that
//! outlives the picker (at the cost of that clone).
//!
//! **Call outcomes.** A pick may carry a [`CallObserver`]
//! ([`Pick::with_observer`]) that hears, exactly once, how the call ended:
//! a [`DoneInfo`] with the gRPC status code, whether any byte reached the
//! server and the response trailers (grpc-go's `DoneInfo`). The channel
//! holds it in a completion handle that reports on drop, so every pick is
//! completed whatever happens to its call: response, error, deadline,
//! cancellation, or the re-pick of an attempt that never left the client.
//! Streaming calls end when the response stream ends (its trailers) or is
//! dropped.
//!
//! **Per-call attributes.** [`PickInfo::extensions`] lends the request's
//! `http::Extensions`, so a caller can hand a policy a hash key or a
//! routing hint (`request.extensions_mut().insert(MyKey(..))`).
//!
//! Threading: [`Picker::pick`] is called from any number of threads at once
//! on the same picker, so a picker keeps only atomics or immutable data.

mod done;

pub(crate) use done::Completion;
pub use done::{CallObserver, DoneInfo};

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;

use crate::{ConnectivityState, Error, Subchannel};

/// Chooses a subchannel for one call. Must not block.
///
/// ```
/// use tonic_balance::picker::{Pick, PickInfo, PickResult, Picker};
/// use tonic_balance::Subchannel;
///
/// /// Always the same subchannel, lent to the call without a clone.
/// #[derive(Debug)]
/// struct Always(Subchannel);
///
/// impl Picker for Always {
///     fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
///         PickResult::Pick(Pick::borrowed(&self.0))
///     }
/// }
/// ```
pub trait Picker: Send + Sync + 'static {
    /// Picks a subchannel for the call described by `info`. The result may
    /// borrow from the picker (see [`Pick::borrowed`]).
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_>;
}

/// What a picker may look at: the call's method path, headers and
/// extensions.
#[derive(Debug)]
pub struct PickInfo<'a> {
    path: &'a str,
    headers: &'a http::HeaderMap,
    extensions: &'a http::Extensions,
}

/// The extensions of a [`PickInfo`] made without any.
static NO_EXTENSIONS: LazyLock<http::Extensions> = LazyLock::new(http::Extensions::new);

impl<'a> PickInfo<'a> {
    /// Describes a call to `path` (`/package.Service/Method`) with `headers`
    /// and no extensions.
    pub fn new(path: &'a str, headers: &'a http::HeaderMap) -> Self {
        PickInfo {
            path,
            headers,
            extensions: &NO_EXTENSIONS,
        }
    }

    /// The same call, with the request's `extensions`.
    pub fn with_extensions(mut self, extensions: &'a http::Extensions) -> Self {
        self.extensions = extensions;
        self
    }

    /// The request's extensions (`tonic::Request::extensions_mut` on the
    /// caller's side): how a caller hands a policy a hash key or a routing
    /// hint. Empty when the caller put none there.
    pub fn extensions(&self) -> &http::Extensions {
        self.extensions
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

/// The outcome of a pick; `'a` is the picker it may borrow from.
pub enum PickResult<'a> {
    /// Send the call on this subchannel.
    Pick(Pick<'a>),
    /// No decision yet: wait for the next picker.
    Queue,
    /// Fail the call; `UNAVAILABLE` waits instead for wait-for-ready calls.
    Fail(tonic::Status),
    /// Fail the call even if it is wait-for-ready.
    Drop(tonic::Status),
}

impl PickResult<'_> {
    /// The same result, owning its subchannel handle (one clone if the pick
    /// was borrowed), so that it outlives the picker.
    pub fn into_owned(self) -> PickResult<'static> {
        match self {
            PickResult::Pick(pick) => PickResult::Pick(pick.into_owned()),
            PickResult::Queue => PickResult::Queue,
            PickResult::Fail(status) => PickResult::Fail(status),
            PickResult::Drop(status) => PickResult::Drop(status),
        }
    }
}

/// A chosen subchannel, borrowed from the picker or owned, and the
/// observers (if any) that hear how the call ends.
///
/// A pick reports to its observers exactly once: the channel reports how
/// the call ended, and a pick dropped without being used (a parent policy
/// that discards a child's pick) reports `CANCELLED` with nothing sent.
pub struct Pick<'a> {
    subchannel: PickedSubchannel<'a>,
    completion: Completion,
}

/// The picked subchannel: lent by the picker, or a handle of its own.
enum PickedSubchannel<'a> {
    Borrowed(&'a Subchannel),
    Owned(Subchannel),
}

impl Pick<'static> {
    /// Picks `subchannel`, owning the handle (for pickers that make handles
    /// on the fly; a picker that keeps its subchannels should lend them with
    /// [`borrowed`](Pick::borrowed)).
    pub fn new(subchannel: Subchannel) -> Self {
        Pick {
            subchannel: PickedSubchannel::Owned(subchannel),
            completion: Completion::NONE,
        }
    }
}

impl<'a> Pick<'a> {
    /// Picks `subchannel`, lent by the picker: no reference count is
    /// written, so picks from many threads share no written cache line.
    pub fn borrowed(subchannel: &'a Subchannel) -> Self {
        Pick {
            subchannel: PickedSubchannel::Borrowed(subchannel),
            completion: Completion::NONE,
        }
    }

    /// Tells `observer` how the call ends, once (see [`DoneInfo`]). Clone
    /// an `Arc` the picker keeps into each pick: no allocation per call.
    /// A parent policy may add its own observer to a child's pick; both
    /// hear the outcome, the child's first (this costs one allocation per
    /// call, only for picks with two observers).
    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.completion.add(observer);
        self
    }

    /// Ends the picked call as `info` says, without sending it: its
    /// observers hear `info` now. The channel does this for every call; a
    /// test of a picker (or a parent policy that discards a child's pick
    /// for a reason of its own) may too. Dropping a pick reports
    /// `CANCELLED`.
    pub fn complete(mut self, info: &DoneInfo<'_>) {
        self.completion.set_bytes_sent(info.bytes_sent());
        if info.bytes_received() {
            self.completion.set_bytes_received();
        }
        self.completion.finish(info.code(), info.trailers());
    }

    /// The chosen subchannel.
    pub fn subchannel(&self) -> &Subchannel {
        match &self.subchannel {
            PickedSubchannel::Borrowed(subchannel) => subchannel,
            PickedSubchannel::Owned(subchannel) => subchannel,
        }
    }

    /// The same pick, owning its subchannel handle (one clone if it was
    /// borrowed).
    pub fn into_owned(self) -> Pick<'static> {
        let subchannel = match self.subchannel {
            PickedSubchannel::Borrowed(subchannel) => subchannel.clone(),
            PickedSubchannel::Owned(subchannel) => subchannel,
        };
        Pick {
            subchannel: PickedSubchannel::Owned(subchannel),
            completion: self.completion,
        }
    }

    /// The handle that reports how the call ended.
    pub(crate) fn into_completion(self) -> Completion {
        self.completion
    }
}

impl fmt::Debug for PickResult<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickResult::Pick(p) => f.debug_tuple("Pick").field(p.subchannel()).finish(),
            PickResult::Queue => f.write_str("Queue"),
            PickResult::Fail(s) => f.debug_tuple("Fail").field(s).finish(),
            PickResult::Drop(s) => f.debug_tuple("Drop").field(s).finish(),
        }
    }
}

impl fmt::Debug for Pick<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("subchannel", self.subchannel())
            .field(
                "borrowed",
                &matches!(self.subchannel, PickedSubchannel::Borrowed(_)),
            )
            .field("observed", &self.completion.has_observer())
            .finish()
    }
}

/// A picker that queues every call (while connecting or idle).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueuePicker;

impl Picker for QueuePicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
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
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
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
    /// Why the channel may not be READY (`resolver error: ...` or `last
    /// connection error: ...`, of the kind of the error behind it), set at
    /// publish by the control task, which keeps it current while the
    /// picker stays the same. Messages read it instead of picking.
    failure: ArcSwapOption<Error>,
}

/// Where the control task publishes pickers and calls read them.
pub(crate) struct PickerCell {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    changed: Notify,
    /// The name of the policy the control task last selected, for
    /// messages (`wait_until_ready`'s error); empty until it selects one.
    policy: ArcSwap<String>,
}

impl PickerCell {
    pub(crate) fn new(state: ConnectivityState, picker: Arc<dyn Picker>) -> Self {
        PickerCell {
            current: ArcSwap::from_pointee(Snapshot::new(0, state, picker)),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            policy: ArcSwap::from_pointee(String::new()),
        }
    }

    /// Records the name of the channel's policy (allocates only when it
    /// changed).
    pub(crate) fn set_policy(&self, name: &str) {
        if self.policy.load().as_str() != name {
            self.policy.store(Arc::new(name.to_owned()));
        }
    }

    /// The name of the channel's policy, empty before one is selected.
    pub(crate) fn policy(&self) -> Arc<String> {
        self.policy.load_full()
    }

    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot, owned.
    pub(crate) fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes a new picker, with the reason the channel may not be
    /// READY, and wakes every queued call.
    pub(crate) fn publish(
        &self,
        state: ConnectivityState,
        picker: Arc<dyn Picker>,
        failure: Option<Arc<Error>>,
    ) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = Snapshot::new(generation, state, picker);
        snapshot.failure.store(failure);
        self.current.store(Arc::new(snapshot));
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
            failure: ArcSwapOption::empty(),
        }
    }

    /// Why the channel may not be READY, if anything failed yet.
    pub(crate) fn failure(&self) -> Option<Arc<Error>> {
        self.failure.load_full()
    }

    /// Replaces the reason while the picker stays the same (no new
    /// generation: nothing a queued call waits for changed).
    pub(crate) fn set_failure(&self, failure: Option<Arc<Error>>) {
        self.failure.store(failure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_pick(p: &dyn Picker) -> PickResult<'_> {
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

    #[test]
    fn borrowed_pick_lends_the_handle_and_into_owned_keeps_it_alive() {
        let sc = Subchannel::detached(1, crate::Address::new("a:1"));
        let done = Arc::new(AtomicU64::new(0));
        let observer = {
            let done = done.clone();
            move |_: &DoneInfo<'_>| {
                done.fetch_add(1, Ordering::Relaxed);
            }
        };
        let pick = Pick::borrowed(&sc).with_observer(Arc::new(observer));
        assert_eq!(pick.subchannel(), &sc);
        assert!(format!("{pick:?}").contains("borrowed: true"));
        let owned: Pick<'static> = pick.into_owned();
        drop(sc);
        assert_eq!(owned.subchannel().address().addr(), "a:1");
        assert!(format!("{owned:?}").contains("borrowed: false"));
        assert!(format!("{owned:?}").contains("observed: true"));
        drop(owned);
        assert_eq!(
            done.load(Ordering::Relaxed),
            1,
            "the observer survives into_owned"
        );
    }

    #[test]
    fn owned_result_outlives_its_picker() {
        struct Lends(Subchannel);
        impl Picker for Lends {
            fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
                PickResult::Pick(Pick::borrowed(&self.0))
            }
        }
        let picker = Lends(Subchannel::detached(7, crate::Address::new("b:1")));
        let result: PickResult<'static> = info_pick(&picker).into_owned();
        drop(picker);
        match result {
            PickResult::Pick(p) => assert_eq!(p.subchannel().id(), 7),
            other => panic!("expected Pick, got {other:?}"),
        }
        assert!(matches!(
            info_pick(&QueuePicker).into_owned(),
            PickResult::Queue
        ));
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
        cell.publish(ConnectivityState::Ready, Arc::new(QueuePicker), None);
        waiter.await.unwrap();
        assert_eq!(cell.load().generation, 1);
        assert_eq!(cell.load().state, ConnectivityState::Ready);
        // Already newer: returns at once.
        cell.changed_since(0).await;
    }
}

//! Resolvers: turn a [`Target`] into the current set of addresses.
//!
//! A [`ResolverBuilder`] is chosen by the target's scheme (`static`, `dns`,
//! `etcd`, or one of yours) and builds a [`Resolver`] that pushes
//! [`ResolverUpdate`]s into an [`UpdateSink`]. The contract, as in grpc-go:
//!
//! - **Full snapshots.** Every update carries the whole current set of
//!   endpoints (each one or more addresses with attributes such as a
//!   weight) and optionally a [`ServiceConfig`], never a delta, even when
//!   the resolver folds deltas internally (an etcd watch).
//! - **Building never blocks on the network.** `build` checks the target and
//!   starts the work (usually a task); failures arrive later as
//!   [`UpdateSink::error`]. A resolver error never empties a working channel:
//!   balancers keep the last good addresses.
//! - **Dropping closes.** When the channel drops its resolver the resolver
//!   stops; a task can also watch [`UpdateSink::closed`].
//! - **Only the newest counts.** The [`UpdateSink`] keeps the newest update
//!   (and an error reported after it), not a queue: an update the channel
//!   has not read yet is replaced by the next, so a resolver can never make
//!   a channel hold more than one snapshot.
//! - **`resolve_now`** is a hint (a subchannel lost its connection). The
//!   channel merges every request made during one burst of events into one
//!   call; a resolver keeps at most one request pending (the DNS resolver
//!   looks again once, no sooner than its minimum interval) and a resolver
//!   whose answer cannot change (`static`) ignores it.
//!
//! Builders live in a [`ResolverRegistry`]. [`register`] adds one
//! process-wide, like grpc-go's `resolver.Register`; a channel can also be
//! given a builder or a registry of its own, so tests stay isolated.
//! [`ManualResolver`] lets users (and their tests) push updates by hand, and
//! `ResolverDiscover` (feature `discover`) exposes any resolver as a tower
//! `Discover` stream that tonic's own `Channel::balance_channel` accepts.
//!
//! [`Target`]: crate::Target
//! [`ServiceConfig`]: crate::ServiceConfig

#[cfg(feature = "discover")]
mod discover;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "etcd")]
mod etcd;
mod fixed;
mod literal;
mod manual;
mod registry;
mod static_list;

#[cfg(feature = "etcd")]
pub use crate::etcd::EtcdRetryConfig;
#[cfg(feature = "discover")]
pub use discover::ResolverDiscover;
#[cfg(feature = "dns")]
pub use dns::{DnsAnswer, DnsLookup, DnsLookupFuture, DnsResolverBuilder};
#[cfg(feature = "etcd")]
pub use etcd::EtcdResolverBuilder;
pub use literal::{
    Ipv4ResolverBuilder, Ipv6ResolverBuilder, PassthroughResolverBuilder,
    UnixAbstractResolverBuilder, UnixResolverBuilder,
};
pub use manual::ManualResolver;
pub use registry::{register, ResolverRegistry};
pub use static_list::StaticResolverBuilder;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::service_config::ServiceConfig;
use crate::{Address, Endpoint, Error, Target};

/// The full current state a resolver knows: its endpoints (each with one
/// or more addresses and attributes) and optionally a service config.
///
/// ```
/// use tonic_balance::resolver::ResolverUpdate;
/// use tonic_balance::{Address, Endpoint};
///
/// // One endpoint per address, each carrying that address's attributes:
/// let flat = ResolverUpdate::new(vec![Address::new("10.0.0.1:1").with_weight(2)]);
/// assert_eq!(flat.endpoints()[0].attributes().weight(), Some(2));
/// // A dual-stack backend is one endpoint of two addresses:
/// let dual = ResolverUpdate::from_endpoints(vec![Endpoint::new(vec![
///     "[::1]:1".into(),
///     "127.0.0.1:1".into(),
/// ])]);
/// assert_eq!((dual.endpoints().len(), dual.addresses().len()), (1, 2));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ResolverUpdate {
    endpoints: Vec<Endpoint>,
    /// Every endpoint's addresses, in order (kept so that `addresses()`
    /// is a slice).
    addresses: Vec<Address>,
    service_config: Option<ServiceConfig>,
}

impl ResolverUpdate {
    /// An update of one endpoint per address (each endpoint carries its
    /// address's attributes) and no service config.
    pub fn new(addresses: Vec<Address>) -> Self {
        ResolverUpdate {
            endpoints: addresses.iter().cloned().map(Endpoint::from).collect(),
            addresses,
            service_config: None,
        }
    }

    /// An update of these endpoints and no service config.
    pub fn from_endpoints(endpoints: Vec<Endpoint>) -> Self {
        let addresses = endpoints
            .iter()
            .flat_map(|e| e.addresses().iter().cloned())
            .collect();
        ResolverUpdate {
            endpoints,
            addresses,
            service_config: None,
        }
    }

    /// Attaches a service config (it overrides the channel's default policy).
    pub fn with_service_config(mut self, config: ServiceConfig) -> Self {
        self.service_config = Some(config);
        self
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Every endpoint's addresses, endpoint by endpoint.
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// The service config, if the resolver has one.
    pub fn service_config(&self) -> Option<&ServiceConfig> {
        self.service_config.as_ref()
    }
}

/// A running resolver. Dropping it stops it.
pub trait Resolver: Send + 'static {
    /// A hint to resolve again soon (for example because a connection was
    /// lost). Keep at most one request pending, and do not resend an answer
    /// that cannot have changed: the channel applies every update it gets.
    /// The default does nothing.
    fn resolve_now(&mut self) {}
}

/// Builds resolvers for one scheme.
pub trait ResolverBuilder: Send + Sync + 'static {
    /// The scheme this builder handles, lower-case (`static`, `dns`).
    fn scheme(&self) -> &str;

    /// Starts resolving `target`, pushing updates into `sink`. Only a target
    /// this resolver cannot use is an error here; runtime failures go to
    /// [`UpdateSink::error`]. Called inside a tokio runtime.
    fn build(&self, target: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error>;
}

/// Where a resolver sends its updates. Cheap to clone.
///
/// The sink holds the newest update (and an error reported after it), not
/// a queue: updates are full snapshots, so an update the channel has not
/// read yet is replaced by the next one, and a resolver that sends faster
/// than the channel reads costs one snapshot of memory, not one per send.
/// An error replaces nothing: the channel sees the newest update first and
/// then the newest error reported after it.
#[derive(Clone)]
pub struct UpdateSink {
    mailbox: Arc<Mailbox>,
    /// Shared by every clone; when the last clone drops, the receiver
    /// learns that no more updates will come.
    _sender: Arc<SenderGuard>,
    /// Seeds the resolver's randomness (retry jitter).
    #[cfg_attr(not(any(feature = "dns", feature = "etcd")), allow(dead_code))]
    seed: u64,
}

/// The newest update and error a resolver sent, for one receiver.
#[derive(Debug, Default)]
pub(crate) struct ResolverEvents {
    /// The newest full snapshot not yet read.
    pub(crate) update: Option<ResolverUpdate>,
    /// The newest error reported after that update (or after the last
    /// update read).
    pub(crate) error: Option<Error>,
}

#[cfg(test)]
impl ResolverEvents {
    /// The error if there is one, else the update (tests read one event
    /// at a time).
    pub(crate) fn into_result(self) -> Result<ResolverUpdate, Error> {
        match (self.error, self.update) {
            (Some(error), _) => Err(error),
            (None, Some(update)) => Ok(update),
            (None, None) => Err(Error::new(crate::ErrorKind::Resolver, "no event")),
        }
    }
}

/// What the sink and its receiver share.
#[derive(Default)]
struct Mailbox {
    slot: Mutex<Slot>,
    /// The receiver's task, woken when the slot fills or the senders go.
    waker: AtomicWaker,
    receiver_gone: AtomicBool,
    /// Wakes [`UpdateSink::closed`] when the receiver goes.
    closed: Notify,
    /// How many updates were sent, read or not (for tests and stats).
    updates_sent: AtomicU64,
}

#[derive(Default)]
struct Slot {
    pending: ResolverEvents,
    senders_gone: bool,
}

struct SenderGuard(Arc<Mailbox>);

impl Drop for SenderGuard {
    fn drop(&mut self) {
        self.0.lock().senders_gone = true;
        self.0.waker.wake();
    }
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts an event in the slot and wakes the receiver; false once the
    /// receiver is gone.
    fn put(&self, f: impl FnOnce(&mut ResolverEvents)) -> bool {
        if self.receiver_gone.load(Ordering::Acquire) {
            return false;
        }
        f(&mut self.lock().pending);
        self.waker.wake();
        true
    }
}

impl UpdateSink {
    /// A sink and the receiving end of it, with a random seed (the
    /// `Discover` bridge; tests).
    #[cfg(any(test, feature = "discover"))]
    pub(crate) fn channel() -> (UpdateSink, UpdateReceiver) {
        UpdateSink::seeded_channel(rand::random())
    }

    /// A sink whose resolver draws its randomness from `seed` (the channel
    /// builder's `rng_seed`), and the receiving end of it.
    pub(crate) fn seeded_channel(seed: u64) -> (UpdateSink, UpdateReceiver) {
        let mailbox = Arc::new(Mailbox::default());
        let sink = UpdateSink {
            mailbox: mailbox.clone(),
            _sender: Arc::new(SenderGuard(mailbox.clone())),
            seed,
        };
        (sink, UpdateReceiver { mailbox })
    }

    /// The seed for the resolver's randomness: the channel builder's
    /// `rng_seed` when set, random otherwise.
    #[cfg_attr(not(any(feature = "dns", feature = "etcd")), allow(dead_code))]
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Sends a new full set, replacing one the channel has not read yet
    /// (and any error reported before it). Returns false once the channel
    /// is gone.
    pub fn update(&self, update: ResolverUpdate) -> bool {
        self.mailbox.updates_sent.fetch_add(1, Ordering::Relaxed);
        self.mailbox.put(|pending| {
            pending.update = Some(update);
            pending.error = None;
        })
    }

    /// Reports a failure to resolve; the channel keeps its last good set.
    /// Returns false once the channel is gone.
    pub fn error(&self, error: Error) -> bool {
        self.mailbox.put(|pending| pending.error = Some(error))
    }

    /// How many updates were sent through this sink and its clones.
    #[cfg(test)]
    pub(crate) fn updates_sent(&self) -> u64 {
        self.mailbox.updates_sent.load(Ordering::Relaxed)
    }

    /// True once the receiving channel is gone.
    pub fn is_closed(&self) -> bool {
        self.mailbox.receiver_gone.load(Ordering::Acquire)
    }

    /// Completes when the receiving channel is gone: a resolver's task can
    /// select on it to stop.
    pub async fn closed(&self) {
        loop {
            let notified = self.mailbox.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

impl fmt::Debug for UpdateSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateSink")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The channel's end of an [`UpdateSink`]: at most one update and one
/// error are ever held, whatever the resolver sends.
pub(crate) struct UpdateReceiver {
    mailbox: Arc<Mailbox>,
}

impl UpdateReceiver {
    /// Takes what the resolver sent since the last call, if anything.
    pub(crate) fn try_recv(&mut self) -> Option<ResolverEvents> {
        let mut slot = self.mailbox.lock();
        if slot.pending.update.is_none() && slot.pending.error.is_none() {
            return None;
        }
        Some(std::mem::take(&mut slot.pending))
    }

    /// Waits for what the resolver sends next; `None` once every sink is
    /// dropped and nothing is left.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ResolverEvents>> {
        if let Some(events) = self.try_recv() {
            return Poll::Ready(Some(events));
        }
        self.mailbox.waker.register(cx.waker());
        if let Some(events) = self.try_recv() {
            return Poll::Ready(Some(events));
        }
        if self.mailbox.lock().senders_gone {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// [`poll_recv`](Self::poll_recv) as a future.
    pub(crate) async fn recv(&mut self) -> Option<ResolverEvents> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// How many updates the resolver sent, read or replaced.
    #[cfg(test)]
    pub(crate) fn updates_sent(&self) -> u64 {
        self.mailbox.updates_sent.load(Ordering::Relaxed)
    }
}

impl Drop for UpdateReceiver {
    fn drop(&mut self) {
        self.mailbox.receiver_gone.store(true, Ordering::Release);
        self.mailbox.closed.notify_waiters();
    }
}

/// Finds the builder for `target`: `preferred` if its scheme matches, else
/// the registry's.
pub(crate) fn builder_for(
    target: &Target,
    preferred: Option<&Arc<dyn ResolverBuilder>>,
    registry: &ResolverRegistry,
) -> Result<Arc<dyn ResolverBuilder>, Error> {
    if let Some(b) = preferred.filter(|b| b.scheme().eq_ignore_ascii_case(target.scheme())) {
        return Ok(b.clone());
    }
    registry.get(target.scheme()).ok_or_else(|| {
        Error::new(
            crate::ErrorKind::UnknownScheme,
            format!(
                "invalid target {:?}: unknown scheme {:?} (registered: {})",
                target.as_str(),
                target.scheme(),
                registry.schemes().join(", ")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(n: usize) -> ResolverUpdate {
        ResolverUpdate::new((0..n).map(|i| Address::new(format!("a{i}:1"))).collect())
    }

    #[test]
    fn an_unread_update_is_replaced_by_the_next_one() {
        let (sink, mut rx) = UpdateSink::channel();
        for n in 1..=10_000 {
            assert!(sink.update(update(n % 7 + 1)));
        }
        sink.update(update(3));
        let events = rx.try_recv().expect("the newest update");
        assert_eq!(events.update, Some(update(3)));
        assert!(events.error.is_none());
        assert!(rx.try_recv().is_none(), "one snapshot held, not 10,001");
        assert_eq!(rx.updates_sent(), 10_001);
    }

    #[test]
    fn an_error_after_an_update_is_kept_and_an_update_drops_an_older_error() {
        let (sink, mut rx) = UpdateSink::channel();
        let error = |m: &str| Error::new(crate::ErrorKind::Resolver, m);
        sink.update(update(1));
        sink.error(error("first"));
        sink.error(error("second"));
        let events = rx.try_recv().unwrap();
        assert_eq!(events.update, Some(update(1)));
        assert!(events.error.unwrap().to_string().contains("second"));
        sink.error(error("stale"));
        sink.update(update(2));
        let events = rx.try_recv().unwrap();
        assert_eq!(events.update, Some(update(2)));
        assert!(events.error.is_none(), "the update came after the error");
    }

    #[tokio::test]
    async fn each_side_sees_the_other_go() {
        let (sink, mut rx) = UpdateSink::channel();
        let clone = sink.clone();
        sink.update(update(1));
        drop(sink);
        assert_eq!(rx.recv().await.unwrap().update, Some(update(1)));
        let waiting = tokio::spawn(async move { rx.recv().await.is_none() });
        tokio::task::yield_now().await;
        drop(clone);
        assert!(waiting.await.unwrap(), "no sink left: the stream ends");

        let (sink, rx) = UpdateSink::channel();
        let closed = tokio::spawn({
            let sink = sink.clone();
            async move { sink.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!sink.is_closed());
        drop(rx);
        closed.await.unwrap();
        assert!(sink.is_closed());
        assert!(!sink.update(update(1)), "nobody reads it");
    }
}

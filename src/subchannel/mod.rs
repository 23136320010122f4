//! Subchannels: one HTTP/2 connection to one address.
//!
//! A [`Subchannel`] is the handle a balancer holds. Behind it, one task per
//! subchannel runs gRPC's connectivity state machine (see
//! [`ConnectivityState`]) and reports every transition to the channel's
//! control task, which hands it to the balancer. The request path reads only
//! the connection's handle, published lock-free while READY.
//!
//! ```text
//!   IDLE --connect()--> CONNECTING --ok--> READY --connection lost--> IDLE
//!                           |
//!                           +--failed--> TRANSIENT_FAILURE --backoff--> IDLE
//! ```
//!
//! A connection is READY once TCP (or the unix socket) is connected, the
//! HTTP/2 handshake is done and the server's HTTP/2 preface has arrived: a
//! socket that a dying server's kernel still accepts is not READY.
//!
//! **Events are bounded by construction.** The connection task waits in
//! IDLE for a connection request, and a balancer can only ask once the
//! control task has delivered that IDLE (requests made before the next
//! delivery are one request). So at most one attempt's events —
//! CONNECTING, READY or TRANSIENT_FAILURE, IDLE — are ever queued per
//! subchannel, however slowly the control task reads them.
//!
//! **Health checking** (gRFC A17, module `health`): with a
//! `healthCheckConfig` in the service config, a READY connection's state
//! as the balancer sees it follows the server's `grpc.health.v1` answers
//! (READY only while SERVING, TRANSIENT_FAILURE with the health status
//! otherwise, the connection kept); each answer that changes it is one
//! more event. [`SubchannelState::connection_state`] keeps the
//! connection's own state.
//!
//! **ORCA out-of-band reports** (gRFC A51, module `oob`): while policies
//! have listeners registered, a READY connection also streams the
//! server's load reports to each of them, on one stream at the smallest
//! period asked for.
//!
//! **Backoff** follows gRPC's `connection-backoff.md` ([`BackoffConfig`]):
//! a failed attempt waits until its start plus the current delay, which
//! then grows. A connection counts as a success, resetting the delay, only
//! once it has stayed READY for the initial delay (1 s by default): one
//! the server drops sooner (a server that sends its SETTINGS and then
//! GOAWAY at once) is lost IDLE as usual, but the next attempt waits as
//! after a failed one, so a server that drops every connection is tried
//! on the backoff schedule, not in a loop.
//!
//! The connection comes from the crate's transport (`src/transport/`): an
//! `h2` connection driven by one task that also watches it. Connection loss (peer close, reset, a keepalive PING left
//! unanswered) is seen when it happens, not when the next call fails; a
//! GOAWAY (e.g. at the server's maximum connection age) takes the
//! subchannel out of READY at once, while the calls already open on that
//! connection finish.
//!
//! Dropping the last handle shuts the subchannel down: the sender is
//! withdrawn so no new call uses it, calls already sent run to completion,
//! and then the connection closes.
//!
//! Subchannels are shared: the control task keeps one per address for as
//! long as any balancer or picker holds it, so an address that stays in the
//! resolver's set keeps its connection across updates and policy changes.

mod connect;
mod health;
mod oob;
mod pool;
mod stream;

pub use crate::backoff::BackoffConfig;
pub(crate) use connect::{ConnectConfig, StateEvent};
pub(crate) use health::HealthService;
pub use oob::OobRegistration;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::Instrument;

use crate::stats::SubchannelStats;
use crate::transport::{Connection, Origin, Progress};
use crate::{Address, ConnectivityState, Error};

/// A subchannel's connectivity state with the error that caused it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubchannelState {
    /// The new state.
    pub connectivity: ConnectivityState,
    /// Why the subchannel is in TRANSIENT_FAILURE, or why a READY connection
    /// went back to IDLE.
    pub error: Option<Error>,
    /// The connection's own state, before health checking.
    raw: ConnectivityState,
}

/// A handle to one connection to one address. Cheap to clone; equal handles
/// are the same subchannel. Dropping every handle shuts it down.
#[derive(Clone)]
pub struct Subchannel {
    inner: Arc<SubchannelOwner>,
}

/// What the handle owns: dropping it signals the connection task.
pub(crate) struct SubchannelOwner {
    link: Arc<SubchannelShared>,
    _shutdown: oneshot::Sender<()>,
}

/// What the handle and the connection task share.
pub(crate) struct SubchannelShared {
    id: u64,
    address: Address,
    origin: Origin,
    connection: ArcSwapOption<Connection>,
    /// The READY connections of a pool (`connections_per_address(n > 1)`).
    pool: ArcSwapOption<Vec<Connection>>,
    /// The state as the control task last saw it (the balancer's view).
    state: AtomicU8,
    connect: Notify,
    /// A connection was asked for since the control task last delivered a
    /// state: a second request before then is the same request.
    connect_requested: AtomicBool,
    /// How many times a balancer asked for a connection while IDLE.
    connect_requests: AtomicU32,
    /// The server answered a health stream UNIMPLEMENTED (warned once).
    health_unimplemented: AtomicBool,
    /// The ORCA out-of-band listeners (module `oob`).
    oob: oob::OobSlot,
    /// The server answered an ORCA stream UNIMPLEMENTED (warned once).
    oob_unimplemented: AtomicBool,
    /// Calls and connection attempts, for `BalancedChannel::snapshot`.
    stats: Arc<SubchannelStats>,
    /// How far the connection attempt under way has got.
    progress: Progress,
}

impl SubchannelState {
    /// `connectivity` with no error.
    pub fn new(connectivity: ConnectivityState) -> Self {
        SubchannelState {
            connectivity,
            error: None,
            raw: connectivity,
        }
    }

    /// The state health checking (gRFC A17) shows for a READY connection:
    /// READY while the server reports SERVING, CONNECTING until its first
    /// answer, TRANSIENT_FAILURE (with the reason) otherwise; the
    /// connection stays up ([`connection_state`](Self::connection_state)
    /// is READY).
    pub fn health(connectivity: ConnectivityState) -> Self {
        SubchannelState {
            raw: ConnectivityState::Ready,
            ..SubchannelState::new(connectivity)
        }
    }

    /// `connectivity` with `error` shown to a policy in place of this
    /// state, keeping the connection's own state (a parent policy's
    /// filter, such as outlier detection's ejection).
    pub(crate) fn shown_as(&self, connectivity: ConnectivityState, error: Error) -> Self {
        SubchannelState {
            connectivity,
            error: Some(error),
            raw: self.raw,
        }
    }

    /// The connection's own state, before health checking: it differs from
    /// [`connectivity`](Self::connectivity) only when health checking is on
    /// and the connection is READY (then this is READY while
    /// `connectivity` says what the health service reports). A leaf policy
    /// such as `pick_first` keeps a subchannel whose connection is READY,
    /// as grpc-go's does, and only shows its health.
    pub fn connection_state(&self) -> ConnectivityState {
        self.raw
    }

    /// The same state with the error that caused it.
    pub fn with_error(mut self, error: Error) -> Self {
        self.error = Some(error);
        self
    }
}

impl Subchannel {
    /// Creates a subchannel and spawns its connection task. It starts IDLE.
    pub(crate) fn spawn(
        id: u64,
        address: Address,
        config: Arc<ConnectConfig>,
        events: mpsc::UnboundedSender<StateEvent>,
    ) -> Result<Subchannel, Error> {
        let origin = config.transport.origin_for(&address)?;
        // Inside the channel's span (the control task makes subchannels).
        let span = tracing::debug_span!("subchannel", address = %address);
        let (subchannel, link, shutdown) = Subchannel::unspawned(id, address, origin);
        tokio::spawn(connect::run(link, config, events, shutdown).instrument(span));
        Ok(subchannel)
    }

    fn unspawned(
        id: u64,
        address: Address,
        origin: Origin,
    ) -> (Subchannel, Arc<SubchannelShared>, oneshot::Receiver<()>) {
        let link = Arc::new(SubchannelShared {
            id,
            address,
            origin,
            connection: ArcSwapOption::empty(),
            pool: ArcSwapOption::empty(),
            state: AtomicU8::new(ConnectivityState::Idle.to_u8()),
            connect: Notify::new(),
            connect_requested: AtomicBool::new(false),
            connect_requests: AtomicU32::new(0),
            health_unimplemented: AtomicBool::new(false),
            oob: tokio::sync::watch::channel(oob::OobListeners::default()).0,
            oob_unimplemented: AtomicBool::new(false),
            stats: Arc::default(),
            progress: Progress::default(),
        });
        let (tx, rx) = oneshot::channel();
        let inner = Arc::new(SubchannelOwner {
            link: link.clone(),
            _shutdown: tx,
        });
        (Subchannel { inner }, link, rx)
    }

    /// A subchannel with no connection task, for balancer tests.
    pub(crate) fn detached(id: u64, address: Address) -> Subchannel {
        Subchannel::unspawned(id, address, Origin::detached()).0
    }

    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn connect_requests(&self) -> u32 {
        self.inner.link.connect_requests.load(Ordering::Relaxed)
    }

    /// The address this subchannel connects to.
    pub fn address(&self) -> &Address {
        &self.inner.link.address
    }

    /// The state last delivered to the balancer (policies learn it only
    /// through the balancer contract, see `balancer::Controller`).
    pub(crate) fn state(&self) -> ConnectivityState {
        ConnectivityState::from_u8(self.inner.link.state.load(Ordering::Acquire))
    }

    /// Starts connecting if the subchannel is IDLE; does nothing otherwise.
    /// Several calls while the same IDLE is current ask for one attempt.
    pub fn connect(&self) {
        let link = &self.inner.link;
        if self.state() == ConnectivityState::Idle
            && !link.connect_requested.swap(true, Ordering::AcqRel)
        {
            link.connect_requests.fetch_add(1, Ordering::Relaxed);
            link.connect.notify_one();
            #[cfg(any(test, feature = "test-util"))]
            crate::balancer::testing::record_connect(self);
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.link.id
    }

    /// Records the state the control task delivers to the balancer; the
    /// next IDLE may be asked to connect again.
    pub(crate) fn set_state(&self, state: ConnectivityState) {
        let link = &self.inner.link;
        link.state.store(state.to_u8(), Ordering::Release);
        link.connect_requested.store(false, Ordering::Release);
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<SubchannelOwner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn upgrade(weak: &std::sync::Weak<SubchannelOwner>) -> Option<Subchannel> {
        weak.upgrade().map(|inner| Subchannel { inner })
    }

    /// A clone of the READY connection's handle, if there is one; in a
    /// pool, the one with the fewest calls in flight among those below the
    /// server's stream limit (else the least loaded).
    pub(crate) fn connection(&self) -> Option<Connection> {
        self.inner.link.ready_connection()
    }

    /// The scheme, `:authority` and TLS server name of calls to it.
    pub(crate) fn origin(&self) -> &Origin {
        &self.inner.link.origin
    }

    /// What the connection attempt under way still waits for
    /// (`connecting to <address> for 3.2s: no HTTP/2 SETTINGS from the
    /// server yet`); `None` between attempts.
    pub(crate) fn connecting(&self) -> Option<String> {
        let link = &self.inner.link;
        link.progress.describe(&link.address)
    }

    /// Its counters (calls, connection attempts, last change).
    pub(crate) fn stats(&self) -> &Arc<SubchannelStats> {
        &self.inner.link.stats
    }
}

/// What runs on a READY connection until it goes: health checking (its
/// first poll reports READY, or CONNECTING until the health service
/// answers) and ORCA's out-of-band stream.
async fn while_ready(
    link: &SubchannelShared,
    config: &ConnectConfig,
    events: &mpsc::UnboundedSender<StateEvent>,
) -> std::convert::Infallible {
    tokio::select! {
        biased;
        never = health::watch(link, config, events) => never,
        never = oob::watch(link, config) => never,
    }
}

impl SubchannelShared {
    /// See [`Subchannel::connection`].
    fn ready_connection(&self) -> Option<Connection> {
        if let Some(connection) = self.connection.load().as_deref() {
            return Some(connection.clone());
        }
        let pool = self.pool.load();
        let pool = pool.as_deref()?;
        let load = |c: &&Connection| {
            let in_flight = c.in_flight();
            (in_flight >= c.max_concurrent_streams(), in_flight)
        };
        pool.iter().min_by_key(load).cloned()
    }
}

impl PartialEq for Subchannel {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Subchannel {}

impl Hash for Subchannel {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id().hash(state);
    }
}

impl fmt::Debug for Subchannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Subchannel({}, {}, {})",
            self.id(),
            self.address(),
            self.state()
        )
    }
}

//! [`BalancedChannel`]: a tonic channel that balances every call.
//!
//! A channel is a cheap handle (`Clone`) onto three things: the picker its
//! balancer last published (read lock-free by every call), a control task
//! (one per channel, see below) and a few defaults for calls. It is a
//! `tower::Service<http::Request<tonic::body::Body>>`, so any
//! tonic-generated client takes it: `SimpleClient::new(channel)`.
//!
//! **Control plane.** The control task owns the resolver, the balancer and
//! the subchannels, and serialises every event among them, as grpc-go's
//! balancer wrapper does. Discovery is applied when it arrives, not when the
//! next call comes. Dropping the last handle (and letting calls in flight
//! finish) ends the task, the resolver and every connection.
//!
//! **Calls.** Each call loads the current picker and picks. gRPC's rules
//! apply ([gRPC wait-for-ready semantics]):
//! - *fail fast* (the default): while the channel is TRANSIENT_FAILURE a
//!   call fails at once with `UNAVAILABLE`, and the message carries the last
//!   connection error;
//! - *wait for ready* ([`WaitForReady`] on a request, or the builder's
//!   default): the call waits for a READY backend instead;
//! - the service config's method config ([`MethodConfig`]: `methodConfig`
//!   entries, gRPC's `service_config.md`) overrides both with its
//!   `waitForReady` when it has one, as grpc-go does;
//! - while CONNECTING or IDLE (or before the resolver's first answer) every
//!   call waits for the next picker.
//!
//! A waiting call ends at its deadline (the earliest of its `grpc-timeout`,
//! set with `tonic::Request::set_timeout`, the channel's default timeout
//! and its method config's `timeout`) with `DEADLINE_EXCEEDED`; a call without a deadline waits at most the
//! channel's queue timeout (20 s by default) and then fails `UNAVAILABLE`,
//! so nothing waits forever. A call whose connection died between the pick
//! and the send never left the client and is picked again (gRFC A6). The
//! address that served a call is in its response extensions as a [`Peer`].
//!
//! A call reads its method config when it starts, from the service config
//! the channel applied last (the resolver's, else the builder's); one
//! started before the resolver's first update waits for it first (at most
//! its deadline or the queue timeout), as grpc-go's calls do.
//!
//! [gRPC wait-for-ready semantics]: https://github.com/grpc/grpc/blob/master/doc/wait-for-ready.md
//! [`MethodConfig`]: crate::MethodConfig

mod builder;
mod call;
mod checks;
mod control;

pub use builder::BalancedChannelBuilder;
#[cfg(any(test, feature = "test-util"))]
pub(crate) use control::SubchannelTable;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
#[cfg(feature = "channelz")]
use std::sync::Weak;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use crate::picker::PickerCell;
use crate::service_config::{MethodConfig, MethodTable};
use crate::stats::{ChannelSnapshot, ResolverSnapshot};
use crate::{Address, ConnectivityState, Error, ErrorKind, Target};
use control::ControlRequest;

/// A load-balanced gRPC channel. See the [module docs](self).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tonic_balance::BalancedChannel;
///
/// let channel = BalancedChannel::builder("static:///127.0.0.1:50051,127.0.0.1:50052")
///     .balancer("round_robin")
///     .build()?;
/// channel.wait_until_ready(Duration::from_secs(5)).await?;
/// // let mut client = SimpleClient::new(channel.clone());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BalancedChannel {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    target: Target,
    picker: Arc<PickerCell>,
    requests: mpsc::UnboundedSender<ControlRequest>,
    defaults: CallDefaults,
    /// The service config's method configs (`timeout`, `waitForReady`).
    methods: Arc<MethodCell>,
    /// The control task sends every change of the channel's state.
    states: Arc<watch::Sender<ConnectivityState>>,
    /// gRFC A66's per-call instruments (empty without `otel`).
    metrics: crate::metrics::CallMetrics,
    /// The channel's entry in channelz, removed when this drops.
    #[cfg(feature = "channelz")]
    _channelz: Option<crate::channelz::Registration>,
}

#[derive(Debug, Clone)]
pub(crate) struct CallDefaults {
    pub(crate) wait_for_ready: bool,
    pub(crate) queue_timeout: Duration,
    pub(crate) timeout: Option<Duration>,
    /// Sent as `user-agent` by calls that carry none.
    pub(crate) user_agent: http::HeaderValue,
}

/// The method configs of the service config in use, read by every call
/// and replaced by the control task when it applies a resolver update.
///
/// A call pays one load and branch when no method config sets anything;
/// otherwise one lookup by its path, without allocating. Until the
/// resolver's first update (or error) is applied, calls wait for it, as
/// grpc-go's calls wait for the first resolver state before they read
/// their method config.
pub(crate) struct MethodCell {
    /// [`UNRESOLVED`], [`NOTHING`] or [`LOOKUP`]; stored after `table`
    /// (release), so a call that reads it sees that table or a newer one.
    state: AtomicU8,
    table: ArcSwap<MethodTable>,
    /// Wakes the calls waiting for the first resolution.
    resolved: Notify,
}

/// No resolver update applied yet.
const UNRESOLVED: u8 = 0;
/// The config in use sets nothing a call uses.
const NOTHING: u8 = 1;
/// Calls look their method up in `table`.
const LOOKUP: u8 = 2;

/// What [`MethodCell::lookup`] found.
pub(crate) enum MethodLookup {
    /// The method config for the call, if any.
    Resolved(Option<MethodConfig>),
    /// No resolver update yet: wait with [`MethodCell::first_resolution`].
    Unresolved,
}

impl MethodCell {
    /// A cell holding `table` (the builder's), unresolved.
    pub(crate) fn new(table: Arc<MethodTable>) -> Self {
        MethodCell {
            state: AtomicU8::new(UNRESOLVED),
            table: ArcSwap::new(table),
            resolved: Notify::new(),
        }
    }

    /// Applies `table` to the calls that start from now on.
    pub(crate) fn set(&self, table: &Arc<MethodTable>) {
        if !Arc::ptr_eq(&self.table.load(), table) {
            self.table.store(table.clone());
        }
        let state = if table.applies() { LOOKUP } else { NOTHING };
        self.state.store(state, Ordering::Release);
        self.resolved.notify_waiters();
    }

    /// Applies `table` only if nothing was applied yet (a resolver error
    /// before any update, or the channel's end).
    pub(crate) fn set_if_unresolved(&self, table: &Arc<MethodTable>) {
        if self.state.load(Ordering::Acquire) == UNRESOLVED {
            self.set(table);
        }
    }

    /// The method config for a call to `path` (`/service/method`).
    #[inline]
    pub(crate) fn lookup(&self, path: &str) -> MethodLookup {
        match self.state.load(Ordering::Acquire) {
            NOTHING => MethodLookup::Resolved(None),
            LOOKUP => MethodLookup::Resolved(self.table.load().get(path).copied()),
            _ => MethodLookup::Unresolved,
        }
    }

    /// Waits for the first resolution, at most until `deadline`; then the
    /// method config for `path` (`None` if the deadline passed first).
    pub(crate) async fn first_resolution(
        &self,
        path: &str,
        deadline: Instant,
    ) -> Option<MethodConfig> {
        let resolved = async {
            loop {
                let notified = self.resolved.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let MethodLookup::Resolved(config) = self.lookup(path) {
                    return config;
                }
                notified.await;
            }
        };
        tokio::time::timeout_at(deadline, resolved)
            .await
            .ok()
            .flatten()
    }
}

/// Per-call wait-for-ready: insert into a request's extensions
/// (`request.extensions_mut().insert(WaitForReady(true))`) to override the
/// channel's default for that call. A service config's method config with
/// `waitForReady` overrides this in turn (grpc-go's `failFast =
/// !waitForReady`; see [`MethodConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitForReady(pub bool);

/// The backend that served a call, in the response's extensions
/// (`response.extensions().get::<Peer>()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    address: Address,
}

impl Peer {
    pub(crate) fn new(address: Address) -> Self {
        Peer { address }
    }

    /// The backend's address.
    pub fn address(&self) -> &Address {
        &self.address
    }
}

impl BalancedChannel {
    /// A builder for a channel to `target` (see [`Target`]).
    pub fn builder(target: impl Into<String>) -> BalancedChannelBuilder {
        BalancedChannelBuilder::new(target)
    }

    /// A channel to `target` with every default (`pick_first`, fail fast).
    /// Must be called inside a tokio runtime.
    pub fn from_target(target: impl Into<String>) -> Result<Self, Error> {
        Self::builder(target).build()
    }

    /// The channel behind a weak reference (channelz's registry), if it
    /// is still there.
    #[cfg(feature = "channelz")]
    pub(crate) fn upgrade(shared: &Weak<Shared>) -> Option<Self> {
        shared.upgrade().map(|shared| BalancedChannel { shared })
    }

    /// The channel's target.
    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    /// The channel's connectivity state (its balancer's aggregate).
    pub fn state(&self) -> ConnectivityState {
        self.shared.picker.load().state
    }

    /// The channel's connectivity state as it changes (gRPC's
    /// `GetState` / `WaitForStateChange`): the receiver holds the current
    /// state, marked as seen, and `changed()` wakes on each new one, ending
    /// with `SHUTDOWN`. Intermediate states may be skipped if the receiver
    /// reads slower than they change; the latest is always there.
    pub fn state_changes(&self) -> watch::Receiver<ConnectivityState> {
        self.shared.states.subscribe()
    }

    /// What the channel knows now: its target, policy and state, the
    /// resolver's last update, and each subchannel's address, state, last
    /// change and counters (see [`stats`](crate::stats)). Answered by the
    /// channel's control task between two of its events.
    pub async fn snapshot(&self) -> ChannelSnapshot {
        let (reply, answer) = oneshot::channel();
        if self
            .shared
            .requests
            .send(ControlRequest::Snapshot(reply))
            .is_err()
        {
            return self.gone();
        }
        answer.await.unwrap_or_else(|_| self.gone())
    }

    /// The snapshot of a channel whose control task has ended.
    fn gone(&self) -> ChannelSnapshot {
        ChannelSnapshot {
            target: self.shared.target.to_string(),
            policy: String::new(),
            state: ConnectivityState::Shutdown,
            resolver: ResolverSnapshot::default(),
            subchannels: Vec::new(),
        }
    }

    /// Waits until the channel is READY, at most `timeout` (grpc-go's
    /// blocking dial). An IDLE channel is asked to connect (the policy's
    /// `exit_idle`).
    ///
    /// A policy that connects only when calls arrive, `ring_hash` (gRFC
    /// A42; grpc-go's ring_hash `ExitIdle` does nothing either), leaves
    /// the channel IDLE until the first call, so this waits out `timeout`
    /// and fails: with such a policy build the channel with
    /// [`build`](BalancedChannelBuilder::build) and let the first call
    /// connect its backend.
    ///
    /// # Errors
    ///
    /// At the deadline, an error with [`Error::is_timeout`] that names the
    /// state the channel was in and why, as the channel last heard it (the
    /// last connection error, the resolver's error, or, while IDLE, that
    /// the policy did not connect when asked, e.g. `... not READY after
    /// 5s (state IDLE: the policy, ring_hash, did not connect when
    /// asked; ...)`), and while CONNECTING what the attempts under way
    /// still wait for (`connecting to 127.0.0.1:50051 for 3.2s: no
    /// HTTP/2 SETTINGS from the server yet`). When that last failure was a health check's (gRFC
    /// A17: e.g. every backend NOT_SERVING) the error also answers
    /// [`Error::is_health`]. One with [`Error::is_closed`] if the channel
    /// is shut down.
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = crate::backoff::deadline(Instant::now(), timeout);
        loop {
            let generation = {
                let snapshot = self.shared.picker.load();
                match snapshot.state {
                    ConnectivityState::Ready => return Ok(()),
                    ConnectivityState::Shutdown => {
                        return Err(Error::new(ErrorKind::Closed, "the channel is shut down"))
                    }
                    ConnectivityState::Idle => {
                        let _ = self.shared.requests.send(ControlRequest::ExitIdle);
                    }
                    _ => {}
                }
                snapshot.generation
            };
            let changed = self.shared.picker.changed_since(generation);
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(self.not_ready(timeout).await);
            }
        }
    }

    /// wait_until_ready's error: the state and the reason published with
    /// the picker (never a pick: picking has effects a policy counts).
    async fn not_ready(&self, timeout: Duration) -> Error {
        let snapshot = self.shared.picker.load_full();
        let mut reasons = Vec::new();
        if snapshot.state == ConnectivityState::Idle {
            reasons.push(still_idle(&self.shared.picker.policy()));
        }
        let failure = snapshot.failure();
        reasons.extend(failure.as_ref().map(|reason| reason.to_string()));
        if snapshot.state == ConnectivityState::Connecting {
            reasons.extend(self.connecting().await);
        }
        let why = if reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", reasons.join("; "))
        };
        let message = format!(
            "{}: not READY after {timeout:?} (state {}{why})",
            self.shared.target, snapshot.state
        );
        // A health check's verdict as the last failure: the timeout says
        // so through `is_health` too.
        match failure.filter(|f| f.is_health()) {
            Some(_) => Error::timeout_from_health(message),
            None => Error::new(ErrorKind::Timeout, message),
        }
    }
}

/// At most this many CONNECTING subchannels are described in an error.
const CONNECTING_SHOWN: usize = 3;

impl BalancedChannel {
    /// What the CONNECTING subchannels still wait for, as the control task
    /// sees them (empty if it is gone); the first [`CONNECTING_SHOWN`] and
    /// how many more.
    async fn connecting(&self) -> Option<String> {
        let (reply, answer) = oneshot::channel();
        let request = ControlRequest::Connecting(reply);
        self.shared.requests.send(request).ok()?;
        let mut connecting = answer.await.ok()?;
        if connecting.is_empty() {
            return None;
        }
        let more = connecting.len().saturating_sub(CONNECTING_SHOWN);
        connecting.truncate(CONNECTING_SHOWN);
        if more > 0 {
            connecting.push(format!("{more} more connecting"));
        }
        Some(connecting.join("; "))
    }
}

/// Why a channel asked to leave IDLE is still IDLE at the deadline: its
/// policy connects only for calls (ring_hash), or it went IDLE again just
/// before the deadline.
fn still_idle(policy: &str) -> String {
    let policy = match policy {
        "" => "the policy".to_owned(),
        name => format!("the policy, {name},"),
    };
    format!(
        "{policy} did not connect when asked; a policy that \
         connects only when calls arrive (ring_hash) stays IDLE until the \
         first call, so build its channel with .build(), not .connect()"
    )
}

impl tower::Service<http::Request<tonic::body::Body>> for BalancedChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::Status;
    type Future = ResponseFuture;

    /// Always ready: calls wait for a backend inside their future, bounded
    /// by their deadline.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        ResponseFuture {
            inner: Box::pin(call::call(self.shared.clone(), request)),
        }
    }
}

/// The future of one call on a [`BalancedChannel`].
pub struct ResponseFuture {
    inner: Pin<
        Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, tonic::Status>> + Send>,
    >,
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<tonic::body::Body>, tonic::Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedChannel")
            .field("target", &self.shared.target.as_str())
            .field("state", &self.state())
            .finish()
    }
}

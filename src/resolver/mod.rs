//! Resolvers: turn a [`Target`] into the current set of addresses.
//!
//! A [`ResolverBuilder`] is chosen by the target's scheme (`static`, `dns`,
//! `etcd`, or one of yours) and builds a [`Resolver`] that pushes
//! [`ResolverUpdate`]s into an [`UpdateSink`]. The contract, as in grpc-go:
//!
//! - **Full snapshots.** Every update carries the whole current set of
//!   addresses (and optionally a [`ServiceConfig`]), never a delta, even when
//!   the resolver folds deltas internally (an etcd watch).
//! - **Building never blocks on the network.** `build` checks the target and
//!   starts the work (usually a task); failures arrive later as
//!   [`UpdateSink::error`]. A resolver error never empties a working channel:
//!   balancers keep the last good addresses.
//! - **Dropping closes.** When the channel drops its resolver the resolver
//!   stops; a task can also watch [`UpdateSink::closed`].
//! - **`resolve_now`** is a hint (a subchannel lost its connection); a
//!   resolver may rate-limit it or ignore it.
//!
//! Builders live in a [`ResolverRegistry`]. [`register`] adds one
//! process-wide, like grpc-go's `resolver.Register`; a channel can also be
//! given a builder or a registry of its own, so tests stay isolated.
//! [`ManualResolver`] lets users (and their tests) push updates by hand, and
//! [`ResolverDiscover`] exposes any resolver as a tower `Discover` stream that
//! tonic's own `Channel::balance_channel` accepts.
//!
//! [`Target`]: crate::Target
//! [`ServiceConfig`]: crate::balancer::ServiceConfig

mod discover;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "etcd")]
pub(crate) mod etcd;
mod manual;
mod registry;
mod static_list;

pub use discover::ResolverDiscover;
#[cfg(feature = "dns")]
pub use dns::{DnsAnswer, DnsLookup, DnsLookupFuture, DnsResolverBuilder};
#[cfg(feature = "etcd")]
pub use etcd::EtcdResolverBuilder;
pub use manual::ManualResolver;
pub use registry::{register, ResolverRegistry};
pub use static_list::StaticResolverBuilder;

use std::fmt;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::balancer::ServiceConfig;
use crate::{Address, Error, Target};

/// The full current state a resolver knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolverUpdate {
    addresses: Vec<Address>,
    service_config: Option<ServiceConfig>,
}

impl ResolverUpdate {
    /// An update with these addresses and no service config.
    pub fn new(addresses: Vec<Address>) -> Self {
        ResolverUpdate {
            addresses,
            service_config: None,
        }
    }

    /// Attaches a service config (it overrides the channel's default policy).
    pub fn with_service_config(mut self, config: ServiceConfig) -> Self {
        self.service_config = Some(config);
        self
    }

    /// Every address.
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
    /// lost). The default does nothing.
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
#[derive(Clone)]
pub struct UpdateSink {
    tx: mpsc::UnboundedSender<ResolverEvent>,
}

pub(crate) type ResolverEvent = Result<ResolverUpdate, Error>;

impl UpdateSink {
    /// A sink and the receiving end of it.
    pub(crate) fn channel() -> (UpdateSink, mpsc::UnboundedReceiver<ResolverEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (UpdateSink { tx }, rx)
    }

    /// Sends a new full set. Returns false once the channel is gone.
    pub fn update(&self, update: ResolverUpdate) -> bool {
        self.tx.send(Ok(update)).is_ok()
    }

    /// Reports a failure to resolve; the channel keeps its last good set.
    /// Returns false once the channel is gone.
    pub fn error(&self, error: Error) -> bool {
        self.tx.send(Err(error)).is_ok()
    }

    /// True once the receiving channel is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Completes when the receiving channel is gone: a resolver's task can
    /// select on it to stop.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl fmt::Debug for UpdateSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateSink")
            .field("closed", &self.is_closed())
            .finish()
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

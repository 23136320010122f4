//! Resolver builders by scheme.

use std::fmt;
use std::sync::Arc;

use super::{
    Ipv4ResolverBuilder, Ipv6ResolverBuilder, PassthroughResolverBuilder, ResolverBuilder,
    StaticResolverBuilder, UnixAbstractResolverBuilder, UnixResolverBuilder,
};
use crate::registry::{Case, Global, Registry};

/// A set of resolver builders by scheme.
///
/// [`ResolverRegistry::new`] has the built-in schemes (see
/// [`ResolverRegistry::new`]). Channels use a copy of the
/// process-wide registry (see [`register`]) unless given their own.
/// Schemes are case-insensitive (RFC 3986 §3.1).
#[derive(Clone)]
pub struct ResolverRegistry {
    builders: Registry<dyn ResolverBuilder>,
}

impl ResolverRegistry {
    /// A registry with the built-in schemes: `static`, `unix`,
    /// `unix-abstract`, `passthrough`, `ipv4`, `ipv6`, and `dns` and `etcd`
    /// with those features.
    pub fn new() -> Self {
        let mut registry = ResolverRegistry::empty();
        registry.register(Arc::new(StaticResolverBuilder));
        registry.register(Arc::new(UnixResolverBuilder));
        registry.register(Arc::new(UnixAbstractResolverBuilder));
        registry.register(Arc::new(PassthroughResolverBuilder));
        registry.register(Arc::new(Ipv4ResolverBuilder));
        registry.register(Arc::new(Ipv6ResolverBuilder));
        #[cfg(feature = "dns")]
        registry.register(Arc::new(crate::resolver::DnsResolverBuilder::default()));
        #[cfg(feature = "etcd")]
        registry.register(Arc::new(crate::resolver::EtcdResolverBuilder::default()));
        registry
    }

    /// A registry with no schemes.
    pub fn empty() -> Self {
        ResolverRegistry {
            builders: Registry::new(Case::Insensitive),
        }
    }

    /// Adds a builder, replacing any for the same scheme.
    pub fn register(&mut self, builder: Arc<dyn ResolverBuilder>) {
        self.builders.insert(builder.scheme(), builder.clone());
    }

    /// The builder for `scheme` (case-insensitive).
    pub fn get(&self, scheme: &str) -> Option<Arc<dyn ResolverBuilder>> {
        self.builders.get(scheme)
    }

    /// The registered schemes, sorted.
    pub fn schemes(&self) -> Vec<String> {
        self.builders.names()
    }

    /// A copy of the process-wide registry.
    pub fn global() -> Self {
        GLOBAL.copy()
    }
}

impl Default for ResolverRegistry {
    fn default() -> Self {
        ResolverRegistry::new()
    }
}

impl fmt::Debug for ResolverRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverRegistry")
            .field("schemes", &self.schemes())
            .finish()
    }
}

static GLOBAL: Global<ResolverRegistry> = Global::new();

/// Registers a resolver builder process-wide, like grpc-go's
/// `resolver.Register`: channels built afterwards resolve its scheme.
pub fn register(builder: Arc<dyn ResolverBuilder>) {
    GLOBAL.update(|registry| registry.register(builder));
}

//! Resolver builders by scheme.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use super::{
    Ipv4ResolverBuilder, Ipv6ResolverBuilder, PassthroughResolverBuilder, ResolverBuilder,
    StaticResolverBuilder, UnixAbstractResolverBuilder, UnixResolverBuilder,
};

/// A set of resolver builders by scheme.
///
/// [`ResolverRegistry::new`] has the built-in schemes (see
/// [`ResolverRegistry::new`]). Channels use a copy of the
/// process-wide registry (see [`register`]) unless given their own.
#[derive(Clone)]
pub struct ResolverRegistry {
    builders: HashMap<String, Arc<dyn ResolverBuilder>>,
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
            builders: HashMap::new(),
        }
    }

    /// Adds a builder, replacing any for the same scheme.
    pub fn register(&mut self, builder: Arc<dyn ResolverBuilder>) {
        self.builders
            .insert(builder.scheme().to_ascii_lowercase(), builder);
    }

    /// The builder for `scheme` (case-insensitive).
    pub fn get(&self, scheme: &str) -> Option<Arc<dyn ResolverBuilder>> {
        self.builders.get(&scheme.to_ascii_lowercase()).cloned()
    }

    /// The registered schemes, sorted.
    pub fn schemes(&self) -> Vec<String> {
        let mut schemes: Vec<String> = self.builders.keys().cloned().collect();
        schemes.sort();
        schemes
    }

    /// A copy of the process-wide registry.
    pub fn global() -> Self {
        global()
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
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

fn global() -> &'static RwLock<ResolverRegistry> {
    static GLOBAL: OnceLock<RwLock<ResolverRegistry>> = OnceLock::new();
    GLOBAL.get_or_init(|| RwLock::new(ResolverRegistry::new()))
}

/// Registers a resolver builder process-wide, like grpc-go's
/// `resolver.Register`: channels built afterwards resolve its scheme.
pub fn register(builder: Arc<dyn ResolverBuilder>) {
    global()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .register(builder);
}

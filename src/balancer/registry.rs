//! Policies by name.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use super::{BalancerBuilder, PickFirstBuilder, RoundRobinBuilder};

/// A set of load-balancing policies by name.
///
/// [`BalancerRegistry::new`] has the built-in policies; channels use a copy
/// of the process-wide registry unless given one of their own, so tests can
/// stay isolated from each other.
#[derive(Clone)]
pub struct BalancerRegistry {
    builders: HashMap<String, Arc<dyn BalancerBuilder>>,
}

impl BalancerRegistry {
    /// A registry with the built-in policies (`pick_first`, `round_robin`).
    pub fn new() -> Self {
        let mut registry = BalancerRegistry::empty();
        registry.register(Arc::new(PickFirstBuilder));
        registry.register(Arc::new(RoundRobinBuilder));
        registry
    }

    /// A registry with no policies.
    pub fn empty() -> Self {
        BalancerRegistry {
            builders: HashMap::new(),
        }
    }

    /// Adds a policy, replacing any of the same name.
    pub fn register(&mut self, builder: Arc<dyn BalancerBuilder>) {
        self.builders.insert(builder.name().to_owned(), builder);
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn BalancerBuilder>> {
        self.builders.get(name).cloned()
    }

    /// The names of the registered policies, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.builders.keys().cloned().collect();
        names.sort();
        names
    }

    /// A copy of the process-wide registry.
    pub fn global() -> Self {
        global()
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Default for BalancerRegistry {
    fn default() -> Self {
        BalancerRegistry::new()
    }
}

impl fmt::Debug for BalancerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancerRegistry")
            .field("policies", &self.names())
            .finish()
    }
}

fn global() -> &'static RwLock<BalancerRegistry> {
    static GLOBAL: OnceLock<RwLock<BalancerRegistry>> = OnceLock::new();
    GLOBAL.get_or_init(|| RwLock::new(BalancerRegistry::new()))
}

/// Registers a policy process-wide, like grpc-go's `balancer.Register`.
/// Channels built afterwards can select it by name or service config.
pub fn register(builder: Arc<dyn BalancerBuilder>) {
    global()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .register(builder);
}

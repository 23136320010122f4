//! The one registry behind [`BalancerRegistry`] and [`ResolverRegistry`]:
//! builders by name, and a process-wide copy that channels start from.
//!
//! The two differ only in how names compare: load-balancing policy names
//! are case-sensitive (as in gRPC's service config), URI schemes are not
//! (RFC 3986 §3.1), so resolver schemes are kept lower-case.
//!
//! [`BalancerRegistry`]: crate::balancer::BalancerRegistry
//! [`ResolverRegistry`]: crate::resolver::ResolverRegistry

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// How a registry compares names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Case {
    /// Names match exactly (policy names).
    Sensitive,
    /// Names match ignoring ASCII case (URI schemes).
    Insensitive,
}

/// Builders of type `B` by name.
pub(crate) struct Registry<B: ?Sized> {
    builders: HashMap<String, Arc<B>>,
    case: Case,
}

impl<B: ?Sized> Clone for Registry<B> {
    fn clone(&self) -> Self {
        Registry {
            builders: self.builders.clone(),
            case: self.case,
        }
    }
}

impl<B: ?Sized> Registry<B> {
    /// An empty registry comparing names as `case` says.
    pub(crate) fn new(case: Case) -> Self {
        Registry {
            builders: HashMap::new(),
            case,
        }
    }

    fn key(&self, name: &str) -> String {
        match self.case {
            Case::Sensitive => name.to_owned(),
            Case::Insensitive => name.to_ascii_lowercase(),
        }
    }

    /// Adds `builder` under `name`, replacing any of the same name.
    pub(crate) fn insert(&mut self, name: &str, builder: Arc<B>) {
        self.builders.insert(self.key(name), builder);
    }

    /// The builder called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<B>> {
        self.builders.get(&self.key(name)).cloned()
    }

    /// The registered names (lower-case when case-insensitive), sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.builders.keys().cloned().collect();
        names.sort();
        names
    }
}

/// A process-wide registry of type `R`, built with `R::default()` on
/// first use.
pub(crate) struct Global<R>(OnceLock<RwLock<R>>);

impl<R: Clone + Default> Global<R> {
    pub(crate) const fn new() -> Self {
        Global(OnceLock::new())
    }

    fn lock(&self) -> &RwLock<R> {
        self.0.get_or_init(|| RwLock::new(R::default()))
    }

    /// A copy of the registry (a panic elsewhere while it was locked does
    /// not poison it: the map is never left half-written).
    pub(crate) fn copy(&self) -> R {
        self.lock()
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Changes the registry.
    pub(crate) fn update(&self, change: impl FnOnce(&mut R)) {
        change(
            &mut self
                .lock()
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_sensitive_names_match_exactly() {
        let mut registry = Registry::<str>::new(Case::Sensitive);
        registry.insert("round_robin", Arc::from("rr"));
        assert!(registry.get("round_robin").is_some());
        assert!(registry.get("Round_Robin").is_none());
    }

    #[test]
    fn case_insensitive_names_are_kept_lower_case() {
        let mut registry = Registry::<str>::new(Case::Insensitive);
        registry.insert("MyScheme", Arc::from("mine"));
        assert_eq!(registry.get("mYsChEmE").as_deref(), Some("mine"));
        assert_eq!(registry.names(), ["myscheme"]);
    }
}

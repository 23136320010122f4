//! Policies by name.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::{
    BalancerBuilder, LbPolicy, LeastRequestBuilder, OutlierDetectionBuilder, PickFirstBuilder,
    RingHashBuilder, RoundRobinBuilder, WeightedRoundRobinBuilder,
};
use crate::registry::{Case, Global, Registry};
use crate::service_config::ServiceConfig;
use crate::{Error, ErrorKind};

/// A set of load-balancing policies by name.
///
/// [`BalancerRegistry::new`] has the built-in policies; channels use a copy
/// of the process-wide registry unless given one of their own, so tests can
/// stay isolated from each other. Names are case-sensitive.
#[derive(Clone)]
pub struct BalancerRegistry {
    builders: Registry<dyn BalancerBuilder>,
}

impl BalancerRegistry {
    /// A registry with the built-in policies (`pick_first`, `round_robin`,
    /// `outlier_detection_experimental`, `least_request_experimental` and its
    /// short name `least_request`, `weighted_round_robin`, `ring_hash`).
    pub fn new() -> Self {
        let mut registry = BalancerRegistry::empty();
        registry.register(Arc::new(PickFirstBuilder));
        registry.register(Arc::new(RoundRobinBuilder));
        registry.register(Arc::new(OutlierDetectionBuilder));
        registry.register(Arc::new(LeastRequestBuilder::new()));
        registry.register(Arc::new(LeastRequestBuilder::short_name()));
        registry.register(Arc::new(RingHashBuilder));
        registry.register(Arc::new(WeightedRoundRobinBuilder));
        registry
    }

    /// A registry with no policies.
    pub fn empty() -> Self {
        BalancerRegistry {
            builders: Registry::new(Case::Sensitive),
        }
    }

    /// Adds a policy, replacing any of the same name.
    pub fn register(&mut self, builder: Arc<dyn BalancerBuilder>) {
        self.builders.insert(builder.name(), builder.clone());
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn BalancerBuilder>> {
        self.builders.get(name)
    }

    /// The names of the registered policies, sorted.
    pub fn names(&self) -> Vec<String> {
        self.builders.names()
    }

    /// The policy called `name` with `json` as its config, parsed by the
    /// policy. Errors name the unknown policy or the bad config.
    pub fn policy(&self, name: &str, json: &Value) -> Result<LbPolicy, Error> {
        let builder = self.get(name).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "unknown load-balancing policy {name:?} (known: {:?})",
                    self.names()
                ),
            )
        })?;
        LbPolicy::parse(builder, json)
    }

    /// The policy a service config selects, as gRPC does it: the first
    /// entry of `loadBalancingConfig` whose policy is registered, with its
    /// config parsed by that policy. `Ok(None)` when the config names no
    /// policy; an error when it names only unknown ones, or when the
    /// chosen policy rejects its config (the whole service config is then
    /// invalid: gRPC does not fall through to the next entry).
    pub fn select(&self, config: &ServiceConfig) -> Result<Option<LbPolicy>, Error> {
        let policies = config.policies();
        if policies.is_empty() {
            return Ok(None);
        }
        for (name, json) in policies {
            if let Some(builder) = self.get(name) {
                return LbPolicy::parse(builder, json).map(Some);
            }
        }
        let names: Vec<&str> = policies.iter().map(|(n, _)| n.as_str()).collect();
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "no known load-balancing policy in {names:?} (known: {:?})",
                self.names()
            ),
        ))
    }

    /// A copy of the process-wide registry.
    pub fn global() -> Self {
        GLOBAL.copy()
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

static GLOBAL: Global<BalancerRegistry> = Global::new();

/// Registers a policy process-wide, like grpc-go's `balancer.Register`.
/// Channels built afterwards can select it by name or service config.
pub fn register(builder: Arc<dyn BalancerBuilder>) {
    GLOBAL.update(|registry| registry.register(builder));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_known_policy_wins() {
        let sc = ServiceConfig::from_json(
            r#"{"loadBalancingConfig":[{"grpclb":{}},{"round_robin":{}},{"pick_first":{}}]}"#,
        )
        .unwrap();
        let policy = BalancerRegistry::new().select(&sc).unwrap().unwrap();
        assert_eq!(policy.name(), "round_robin");
    }

    #[test]
    fn unknown_policies_are_an_error_naming_them() {
        let sc = ServiceConfig::from_json(r#"{"loadBalancingConfig":[{"nope":{}}]}"#).unwrap();
        let err = BalancerRegistry::new().select(&sc).unwrap_err();
        assert!(err.is_config() && err.to_string().contains("nope"), "{err}");
        let err = BalancerRegistry::new()
            .policy("nope", &Value::Null)
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("unknown load-balancing policy \"nope\""));
    }

    #[test]
    fn a_bad_config_of_the_chosen_policy_invalidates_the_service_config() {
        let sc = ServiceConfig::from_json(
            r#"{"loadBalancingConfig":[{"pick_first":{"shuffleAddressList":"yes"}},{"round_robin":{}}]}"#,
        )
        .unwrap();
        let err = BalancerRegistry::new().select(&sc).unwrap_err();
        assert!(err.to_string().contains("shuffleAddressList"), "{err}");
    }

    #[test]
    fn no_policy_selects_nothing() {
        let sc = ServiceConfig::from_json("{}").unwrap();
        assert!(BalancerRegistry::new().select(&sc).unwrap().is_none());
    }
}

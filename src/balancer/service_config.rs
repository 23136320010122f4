//! gRPC service config, the part that selects a load-balancing policy.

use serde_json::Value;

use super::{BalancerBuilder, BalancerRegistry};
use crate::{Error, ErrorKind};

/// A policy chosen from a service config, with its JSON config.
pub(crate) type Selected = (std::sync::Arc<dyn BalancerBuilder>, Value);

/// The load-balancing part of a gRPC service config.
///
/// Accepts `{"loadBalancingConfig":[{"round_robin":{}}, ...]}` (the first
/// policy the channel knows wins, as in gRPC) and the older
/// `{"loadBalancingPolicy":"round_robin"}`.
///
/// ```
/// use tonic_balance::balancer::ServiceConfig;
///
/// let sc = ServiceConfig::from_json(r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#).unwrap();
/// assert_eq!(sc.policies()[0].0, "round_robin");
/// assert!(ServiceConfig::from_json(r#"{"loadBalancingConfig":{}}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    policies: Vec<(String, Value)>,
}

impl ServiceConfig {
    /// Parses service-config JSON; the error says which part is wrong.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| Error::with_source(ErrorKind::Config, "service config is not JSON", e))?;
        Self::from_value(&value)
    }

    /// Builds from an already parsed JSON value.
    pub fn from_value(value: &Value) -> Result<Self, Error> {
        let obj = value
            .as_object()
            .ok_or_else(|| config_error("service config must be a JSON object"))?;
        let mut policies = Vec::new();
        if let Some(list) = obj.get("loadBalancingConfig") {
            let list = list
                .as_array()
                .ok_or_else(|| config_error("\"loadBalancingConfig\" must be an array"))?;
            for entry in list {
                policies.push(policy_entry(entry)?);
            }
        }
        if let Some(name) = obj.get("loadBalancingPolicy") {
            let name = name
                .as_str()
                .ok_or_else(|| config_error("\"loadBalancingPolicy\" must be a string"))?;
            policies.push((name.to_ascii_lowercase(), Value::Object(Default::default())));
        }
        Ok(ServiceConfig { policies })
    }

    /// A config that selects one policy with an empty policy config.
    pub fn policy(name: &str) -> Self {
        ServiceConfig {
            policies: vec![(name.to_owned(), Value::Object(Default::default()))],
        }
    }

    /// The policies in order of preference, each with its JSON config.
    pub fn policies(&self) -> &[(String, Value)] {
        &self.policies
    }

    /// The first policy `registry` knows, with its config. `Ok(None)` when
    /// the config names no policy at all.
    pub(crate) fn select(&self, registry: &BalancerRegistry) -> Result<Option<Selected>, Error> {
        if self.policies.is_empty() {
            return Ok(None);
        }
        for (name, config) in &self.policies {
            if let Some(builder) = registry.get(name) {
                return Ok(Some((builder, config.clone())));
            }
        }
        let names: Vec<&str> = self.policies.iter().map(|(n, _)| n.as_str()).collect();
        Err(config_error(format!(
            "no known load-balancing policy in {names:?} (known: {:?})",
            registry.names()
        )))
    }
}

fn policy_entry(entry: &Value) -> Result<(String, Value), Error> {
    match entry.as_object().map(|o| (o.len(), o.iter().next())) {
        Some((1, Some((name, config)))) => Ok((name.clone(), config.clone())),
        _ => Err(config_error(format!(
            "loadBalancingConfig entry {entry} must be an object with one policy name"
        ))),
    }
}

fn config_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Config, message)
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
        let (builder, _) = sc.select(&BalancerRegistry::new()).unwrap().unwrap();
        assert_eq!(builder.name(), "round_robin");
    }

    #[test]
    fn legacy_policy_name_is_accepted() {
        let sc = ServiceConfig::from_json(r#"{"loadBalancingPolicy":"ROUND_ROBIN"}"#).unwrap();
        assert_eq!(sc.policies()[0].0, "round_robin");
    }

    #[test]
    fn unknown_policies_are_an_error_naming_them() {
        let sc = ServiceConfig::from_json(r#"{"loadBalancingConfig":[{"nope":{}}]}"#).unwrap();
        let err = sc.select(&BalancerRegistry::new()).err().unwrap();
        assert!(err.is_config() && err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn malformed_configs_say_what_is_wrong() {
        for (json, part) in [
            ("[]", "JSON object"),
            ("not json", "not JSON"),
            (r#"{"loadBalancingConfig":{}}"#, "must be an array"),
            (
                r#"{"loadBalancingConfig":[{"a":{},"b":{}}]}"#,
                "one policy name",
            ),
            (r#"{"loadBalancingPolicy":3}"#, "must be a string"),
        ] {
            let err = ServiceConfig::from_json(json).unwrap_err();
            assert!(err.to_string().contains(part), "{json}: {err}");
        }
    }

    #[test]
    fn no_policy_selects_nothing() {
        let sc = ServiceConfig::from_json("{}").unwrap();
        assert!(sc.select(&BalancerRegistry::new()).unwrap().is_none());
    }
}

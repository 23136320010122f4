//! Parsed policy configs, and a policy with its config.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::BalancerBuilder;
use crate::Error;

/// A policy's parsed config: what [`BalancerBuilder::parse_config`] made of
/// the policy's JSON object in a service config, handed to the running
/// policy with every [`resolver_update`](super::Balancer::resolver_update).
///
/// Opaque and cheap to clone (two reference counts). A policy reads its
/// own type back with [`get`](Self::get); the JSON it came from is kept
/// for `Debug` and for equality (two configs are equal when their JSON
/// is), so the channel can tell a changed config from a repeated one.
///
/// ```
/// use tonic_balance::balancer::LbConfig;
///
/// #[derive(Debug, PartialEq)]
/// struct Shuffle(bool);
///
/// let config = LbConfig::new(Shuffle(true), serde_json::json!({"shuffleAddressList": true}));
/// assert_eq!(config.get::<Shuffle>(), Some(&Shuffle(true)));
/// assert_eq!(config.get::<u32>(), None);
/// ```
#[derive(Clone)]
pub struct LbConfig {
    parsed: Arc<dyn Any + Send + Sync>,
    json: Arc<Value>,
}

impl LbConfig {
    /// `parsed`, which a policy made of `json`.
    pub fn new<T: Any + Send + Sync>(parsed: T, json: Value) -> Self {
        LbConfig {
            parsed: Arc::new(parsed),
            json: Arc::new(json),
        }
    }

    /// The JSON object as is (its parsed form is the same [`Value`]): what
    /// the default [`BalancerBuilder::parse_config`] returns.
    pub fn from_json(json: Value) -> Self {
        let json = Arc::new(json);
        LbConfig {
            parsed: json.clone(),
            json,
        }
    }

    /// An empty JSON object, `{}`.
    pub fn empty() -> Self {
        LbConfig::from_json(Value::Object(Default::default()))
    }

    /// The parsed config, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.parsed.downcast_ref()
    }

    /// The JSON the config was parsed from.
    pub fn json(&self) -> &Value {
        &self.json
    }
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig::empty()
    }
}

impl PartialEq for LbConfig {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.json, &other.json) || self.json == other.json
    }
}

impl fmt::Debug for LbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LbConfig({})", self.json)
    }
}

/// A load-balancing policy with its parsed config: what a service config's
/// `loadBalancingConfig` selects, what the channel builder's policy options
/// make, and what [`GracefulSwitch`](super::GracefulSwitch) is configured
/// with (it switches when the policy's name changes).
#[derive(Clone)]
pub struct LbPolicy {
    builder: Arc<dyn BalancerBuilder>,
    config: LbConfig,
}

impl LbPolicy {
    /// `builder`'s policy with an already parsed `config`.
    pub fn new(builder: Arc<dyn BalancerBuilder>, config: LbConfig) -> Self {
        LbPolicy { builder, config }
    }

    /// `builder`'s policy with `json` parsed by
    /// [`parse_config`](BalancerBuilder::parse_config); its error is
    /// returned as is (it names the policy and the bad field).
    pub fn parse(builder: Arc<dyn BalancerBuilder>, json: &Value) -> Result<Self, Error> {
        let config = builder.parse_config(json)?;
        Ok(LbPolicy { builder, config })
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        self.builder.name()
    }

    /// The policy's builder.
    pub fn builder(&self) -> &Arc<dyn BalancerBuilder> {
        &self.builder
    }

    /// The policy's parsed config.
    pub fn config(&self) -> &LbConfig {
        &self.config
    }
}

impl PartialEq for LbPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name() && self.config == other.config
    }
}

impl fmt::Debug for LbPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LbPolicy({}, {})", self.name(), self.config.json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_equal_when_their_json_is() {
        let a = LbConfig::new(1u8, serde_json::json!({"a": 1}));
        let b = LbConfig::new(2u8, serde_json::json!({"a": 1}));
        assert_eq!(a, b);
        assert_ne!(a, LbConfig::empty());
        assert_eq!(
            LbConfig::empty().get::<Value>(),
            Some(&serde_json::json!({}))
        );
        assert_eq!(format!("{a:?}"), r#"LbConfig({"a":1})"#);
    }
}

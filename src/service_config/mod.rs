//! The gRPC service config (gRPC's `service_config.md`), parsed and checked.
//!
//! A [`ServiceConfig`] comes from a resolver (with its update) or from the
//! channel builder. This module only parses and checks it: which
//! load-balancing policy it selects is the balancer registry's business
//! ([`BalancerRegistry::select`](crate::balancer::BalancerRegistry::select)),
//! so resolvers and balancers both import this module and not each other.
//!
//! Fields kept:
//! - `loadBalancingConfig` (a list of `{"policy_name": {config}}`, the first
//!   policy the channel knows wins) and the older `loadBalancingPolicy`
//!   (a name);
//! - `healthCheckConfig` (`{"serviceName": "..."}`): client-side health
//!   checking (gRFC A17, see [`ServiceConfig::health_check_service_name`]);
//! - `methodConfig`: each entry's `timeout` and `waitForReady` apply to
//!   the calls its `name` list matches (see [`MethodConfig`]); the whole
//!   entries stay available as JSON, and their other fields
//!   (`retryPolicy`, `hedgingPolicy`, `maxRequestMessageBytes`,
//!   `maxResponseMessageBytes`) are kept as data only: they change nothing;
//! - `retryThrottling` as checked JSON (kept as data, changes nothing).
//!
//! Bad input is an [`ErrorKind::Config`] error that names the bad part.

mod method_config;

use std::sync::Arc;

use serde_json::Value;

pub use method_config::MethodConfig;
pub(crate) use method_config::MethodTable;

use crate::{Error, ErrorKind};

/// A parsed gRPC service config.
///
/// ```
/// use tonic_balance::ServiceConfig;
///
/// let sc = ServiceConfig::from_json(r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#).unwrap();
/// assert_eq!(sc.policies()[0].0, "round_robin");
/// assert!(ServiceConfig::from_json(r#"{"loadBalancingConfig":{}}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceConfig {
    policies: Vec<(String, Value)>,
    method_config: Vec<Value>,
    /// `method_config`'s `timeout` and `waitForReady` by method path,
    /// built once when the config is parsed (calls only look it up).
    methods: Arc<MethodTable>,
    health_check_config: Option<Value>,
    retry_throttling: Option<Value>,
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
        let method_config = match obj.get("methodConfig") {
            None => Vec::new(),
            Some(Value::Array(list)) if list.iter().all(Value::is_object) => list.clone(),
            Some(_) => return Err(config_error("\"methodConfig\" must be an array of objects")),
        };
        let methods = Arc::new(MethodTable::parse(&method_config)?);
        Ok(ServiceConfig {
            policies,
            method_config,
            methods,
            health_check_config: health_check_config(obj)?,
            retry_throttling: retry_throttling(obj)?,
        })
    }

    /// A config that selects one policy with an empty policy config.
    pub fn policy(name: &str) -> Self {
        ServiceConfig {
            policies: vec![(name.to_owned(), Value::Object(Default::default()))],
            ..ServiceConfig::default()
        }
    }

    /// The policies in order of preference, each with its JSON config.
    pub fn policies(&self) -> &[(String, Value)] {
        &self.policies
    }

    /// The `methodConfig` entries, as JSON objects. Their `timeout` and
    /// `waitForReady` apply to calls (see [`method_config_for`]); their
    /// other fields are data only.
    ///
    /// [`method_config_for`]: Self::method_config_for
    pub fn method_config(&self) -> &[Value] {
        &self.method_config
    }

    /// The method config that applies to a call to `path`, gRPC's
    /// `/<service>/<method>` (`"/pkg.Svc/Method"`, the HTTP/2 `:path`), as
    /// grpc-go's `GetMethodConfig` finds it: the entry naming the service
    /// and the method, else the one naming the service alone, else the
    /// default entry (`{}` or an empty `service`); `None` when none
    /// matches.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic_balance::ServiceConfig;
    ///
    /// let sc = ServiceConfig::from_json(
    ///     r#"{"methodConfig":[
    ///         {"name":[{"service":"pkg.Svc"}],"timeout":"2s"},
    ///         {"name":[{"service":"pkg.Svc","method":"Slow"}],"timeout":"10.5s"},
    ///         {"name":[{}],"waitForReady":true}]}"#,
    /// )
    /// .unwrap();
    /// let slow = sc.method_config_for("/pkg.Svc/Slow").unwrap();
    /// assert_eq!(slow.timeout(), Some(Duration::from_millis(10_500)));
    /// assert_eq!(slow.wait_for_ready(), None);
    /// let other = sc.method_config_for("/pkg.Svc/Other").unwrap();
    /// assert_eq!(other.timeout(), Some(Duration::from_secs(2)));
    /// assert_eq!(sc.method_config_for("/pkg.Else/M").unwrap().wait_for_ready(), Some(true));
    /// ```
    pub fn method_config_for(&self, path: &str) -> Option<&MethodConfig> {
        self.methods.get(path)
    }

    /// The parsed method configs, shared with the channel's calls.
    pub(crate) fn methods(&self) -> &Arc<MethodTable> {
        &self.methods
    }

    /// The `healthCheckConfig` object (client-side health checking).
    pub fn health_check_config(&self) -> Option<&Value> {
        self.health_check_config.as_ref()
    }

    /// The service name client-side health checking watches (gRFC A17):
    /// `healthCheckConfig.serviceName`, `""` (the whole server) when the
    /// object has none; `None` when there is no `healthCheckConfig` (health
    /// checking off).
    pub fn health_check_service_name(&self) -> Option<&str> {
        let config = self.health_check_config.as_ref()?;
        Some(
            config
                .get("serviceName")
                .and_then(Value::as_str)
                .unwrap_or(""),
        )
    }

    /// The `retryThrottling` object, checked as gRFC A6 says (`maxTokens`
    /// in (0, 1000], `tokenRatio` > 0; not applied yet).
    pub fn retry_throttling(&self) -> Option<&Value> {
        self.retry_throttling.as_ref()
    }
}

fn policy_entry(entry: &Value) -> Result<(String, Value), Error> {
    match entry.as_object().map(|o| (o.len(), o.iter().next())) {
        Some((1, Some((name, config)))) if config.is_object() => Ok((name.clone(), config.clone())),
        Some((1, Some((name, _)))) => Err(config_error(format!(
            "loadBalancingConfig: the config of {name:?} must be a JSON object"
        ))),
        _ => Err(config_error(format!(
            "loadBalancingConfig entry {entry} must be an object with one policy name"
        ))),
    }
}

fn object_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<Value>, Error> {
    match obj.get(name) {
        None => Ok(None),
        Some(value) if value.is_object() => Ok(Some(value.clone())),
        Some(_) => Err(config_error(format!("{name:?} must be a JSON object"))),
    }
}

fn health_check_config(obj: &serde_json::Map<String, Value>) -> Result<Option<Value>, Error> {
    let config = object_field(obj, "healthCheckConfig")?;
    match config.as_ref().and_then(|c| c.get("serviceName")) {
        Some(name) if !name.is_string() => Err(config_error(format!(
            "\"healthCheckConfig\": \"serviceName\" must be a string, not {name}"
        ))),
        _ => Ok(config),
    }
}

fn retry_throttling(obj: &serde_json::Map<String, Value>) -> Result<Option<Value>, Error> {
    let Some(value) = object_field(obj, "retryThrottling")? else {
        return Ok(None);
    };
    let number = |field: &str| value.get(field).and_then(Value::as_f64);
    match (number("maxTokens"), number("tokenRatio")) {
        (Some(max), Some(ratio)) if max > 0.0 && max <= 1000.0 && ratio > 0.0 => Ok(Some(value)),
        _ => Err(config_error(
            "\"retryThrottling\" needs \"maxTokens\" in (0, 1000] and \"tokenRatio\" > 0",
        )),
    }
}

fn config_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// A protobuf JSON duration, `"<seconds>[.<fraction>]s"`: not negative,
/// at most 9 fraction digits and 315,576,000,000 s (protobuf's limit), so
/// adding it to an `Instant` cannot overflow. `None` for anything else.
pub(crate) fn proto_duration(text: &str) -> Option<std::time::Duration> {
    let number = text.strip_suffix('s')?;
    let (whole, fraction) = match number.split_once('.') {
        // A point needs a digit after it: "5.s" is no duration.
        Some((_, "")) => return None,
        Some(parts) => parts,
        None => (number, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 9 {
        return None;
    }
    let seconds: u64 = whole.parse().ok()?;
    if seconds > 315_576_000_000 {
        return None;
    }
    let nanos: u32 = format!("{fraction:0<9}").parse().ok()?;
    Some(std::time::Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_durations_take_protobufs_range_and_need_a_digit_after_a_point() {
        use std::time::Duration;
        assert_eq!(proto_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(proto_duration("0s"), Some(Duration::ZERO));
        assert_eq!(
            proto_duration("315576000000.999999999s"),
            Some(Duration::new(315_576_000_000, 999_999_999))
        );
        for bad in [
            "5.s",
            ".5s",
            "315576000001s",
            "1.0000000001s",
            "1",
            "-1s",
            "1e3s",
        ] {
            assert_eq!(proto_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn legacy_policy_name_is_accepted() {
        let sc = ServiceConfig::from_json(r#"{"loadBalancingPolicy":"ROUND_ROBIN"}"#).unwrap();
        assert_eq!(sc.policies()[0].0, "round_robin");
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
            (
                r#"{"loadBalancingConfig":[{"a":3}]}"#,
                "config of \"a\" must be a JSON object",
            ),
            (r#"{"loadBalancingPolicy":3}"#, "must be a string"),
            (
                r#"{"methodConfig":{}}"#,
                "\"methodConfig\" must be an array",
            ),
            (
                r#"{"healthCheckConfig":[]}"#,
                "\"healthCheckConfig\" must be",
            ),
            (
                r#"{"healthCheckConfig":{"serviceName":3}}"#,
                "\"serviceName\" must be a string",
            ),
            (
                r#"{"retryThrottling":{"maxTokens":0,"tokenRatio":1}}"#,
                "maxTokens",
            ),
        ] {
            let err = ServiceConfig::from_json(json).unwrap_err();
            assert!(err.is_config(), "{json}: {err}");
            assert!(err.to_string().contains(part), "{json}: {err}");
        }
    }

    #[test]
    fn other_fields_are_kept_as_data() {
        let sc = ServiceConfig::from_json(
            r#"{"methodConfig":[{"name":[{"service":"s"}],"timeout":"1s"}],
                "healthCheckConfig":{"serviceName":"s"},
                "retryThrottling":{"maxTokens":10,"tokenRatio":0.1}}"#,
        )
        .unwrap();
        assert!(sc.policies().is_empty());
        assert_eq!(sc.method_config()[0]["timeout"], "1s");
        assert_eq!(sc.health_check_config().unwrap()["serviceName"], "s");
        assert_eq!(sc.health_check_service_name(), Some("s"));
        let whole_server = ServiceConfig::from_json(r#"{"healthCheckConfig":{}}"#).unwrap();
        assert_eq!(whole_server.health_check_service_name(), Some(""));
        assert_eq!(ServiceConfig::default().health_check_service_name(), None);
        assert_eq!(sc.retry_throttling().unwrap()["maxTokens"], 10);
    }
}

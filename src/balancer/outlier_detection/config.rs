//! The config of `outlier_detection_experimental`, as gRFC A50 gives it,
//! with A50's defaults and checks.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::balancer::{BalancerRegistry, LbPolicy};
use crate::{Error, ErrorKind, ServiceConfig};

/// The parsed config (gRFC A50). Durations are protobuf JSON durations
/// (`"10s"`, `"0.5s"`); percentages are 0 to 100.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutlierDetectionConfig {
    /// How often ejection is decided (`interval`, default 10 s).
    pub interval: Duration,
    /// An ejection lasts this times the endpoint's ejection count
    /// (`baseEjectionTime`, default 30 s)...
    pub base_ejection_time: Duration,
    /// ...but at most this, or `base_ejection_time` if larger
    /// (`maxEjectionTime`, default 300 s).
    pub max_ejection_time: Duration,
    /// At most this percentage of endpoints is ejected at once
    /// (`maxEjectionPercent`, default 10).
    pub max_ejection_percent: u32,
    /// The success-rate algorithm, if configured.
    pub success_rate_ejection: Option<SuccessRateEjection>,
    /// The failure-percentage algorithm, if configured.
    pub failure_percentage_ejection: Option<FailurePercentageEjection>,
    /// The policy it wraps (`childPolicy`, required).
    pub child_policy: LbPolicy,
}

/// `successRateEjection`: eject endpoints whose success rate is below the
/// mean by more than `stdev_factor / 1000` standard deviations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SuccessRateEjection {
    /// In thousandths of a standard deviation (`stdevFactor`, default 1900).
    pub stdev_factor: u32,
    /// The chance, in percent, that an outlier is ejected
    /// (`enforcementPercentage`, default 100).
    pub enforcement_percentage: u32,
    /// Endpoints with enough calls needed to decide (`minimumHosts`,
    /// default 5).
    pub minimum_hosts: u32,
    /// Calls in the interval an endpoint needs to count (`requestVolume`,
    /// default 100).
    pub request_volume: u32,
}

/// `failurePercentageEjection`: eject endpoints whose share of failed calls
/// is above `threshold` percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailurePercentageEjection {
    /// Failure percentage above which an endpoint is an outlier
    /// (`threshold`, default 85).
    pub threshold: u32,
    /// The chance, in percent, that an outlier is ejected
    /// (`enforcementPercentage`, default 100).
    pub enforcement_percentage: u32,
    /// Endpoints with enough calls needed to decide (`minimumHosts`,
    /// default 5).
    pub minimum_hosts: u32,
    /// Calls in the interval an endpoint needs to count (`requestVolume`,
    /// default 50).
    pub request_volume: u32,
}

impl Default for SuccessRateEjection {
    fn default() -> Self {
        SuccessRateEjection {
            stdev_factor: 1900,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

impl Default for FailurePercentageEjection {
    fn default() -> Self {
        FailurePercentageEjection {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

impl OutlierDetectionConfig {
    /// Parses A50's JSON; `childPolicy` is chosen from `registry` as a
    /// `loadBalancingConfig` list is. Errors name the bad field.
    pub fn from_json(json: &Value, registry: &BalancerRegistry) -> Result<Self, Error> {
        let obj = json
            .as_object()
            .ok_or_else(|| bad("the config must be a JSON object"))?;
        let config = OutlierDetectionConfig {
            interval: duration(obj, "interval", Duration::from_secs(10))?,
            base_ejection_time: duration(obj, "baseEjectionTime", Duration::from_secs(30))?,
            max_ejection_time: duration(obj, "maxEjectionTime", Duration::from_secs(300))?,
            max_ejection_percent: percent(obj, "maxEjectionPercent", 10)?,
            success_rate_ejection: success_rate(obj)?,
            failure_percentage_ejection: failure_percentage(obj)?,
            child_policy: child_policy(obj, registry)?,
        };
        if config.interval.is_zero() {
            return Err(bad("\"interval\" must be more than 0s"));
        }
        Ok(config)
    }

    /// Whether either ejection algorithm is on (if not, the policy only
    /// passes everything to its child, as A50 says).
    pub fn ejects(&self) -> bool {
        self.success_rate_ejection.is_some() || self.failure_percentage_ejection.is_some()
    }
}

fn success_rate(obj: &Map<String, Value>) -> Result<Option<SuccessRateEjection>, Error> {
    let Some(sr) = section(obj, "successRateEjection")? else {
        return Ok(None);
    };
    let d = SuccessRateEjection::default();
    Ok(Some(SuccessRateEjection {
        stdev_factor: uint(sr, "stdevFactor", d.stdev_factor)?,
        enforcement_percentage: percent(sr, "enforcementPercentage", d.enforcement_percentage)?,
        minimum_hosts: uint(sr, "minimumHosts", d.minimum_hosts)?,
        request_volume: uint(sr, "requestVolume", d.request_volume)?,
    }))
}

fn failure_percentage(
    obj: &Map<String, Value>,
) -> Result<Option<FailurePercentageEjection>, Error> {
    let Some(fp) = section(obj, "failurePercentageEjection")? else {
        return Ok(None);
    };
    let d = FailurePercentageEjection::default();
    Ok(Some(FailurePercentageEjection {
        threshold: percent(fp, "threshold", d.threshold)?,
        enforcement_percentage: percent(fp, "enforcementPercentage", d.enforcement_percentage)?,
        minimum_hosts: uint(fp, "minimumHosts", d.minimum_hosts)?,
        request_volume: uint(fp, "requestVolume", d.request_volume)?,
    }))
}

fn child_policy(obj: &Map<String, Value>, registry: &BalancerRegistry) -> Result<LbPolicy, Error> {
    let list = obj
        .get("childPolicy")
        .ok_or_else(|| bad("\"childPolicy\" is required"))?;
    let wrapped = ServiceConfig::from_value(&json!({ "loadBalancingConfig": list }))
        .map_err(|e| bad(format!("\"childPolicy\": {}", e.message())))?;
    registry
        .select(&wrapped)
        .map_err(|e| bad(format!("\"childPolicy\": {}", e.message())))?
        .ok_or_else(|| bad("\"childPolicy\" names no policy"))
}

fn section<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, Error> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(section)) => Ok(Some(section)),
        Some(other) => Err(bad(format!("{name:?} must be an object, not {other}"))),
    }
}

fn uint(obj: &Map<String, Value>, name: &str, default: u32) -> Result<u32, Error> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                bad(format!(
                    "{name:?} must be an unsigned 32-bit integer, not {v}"
                ))
            }),
    }
}

fn percent(obj: &Map<String, Value>, name: &str, default: u32) -> Result<u32, Error> {
    let value = uint(obj, name, default)?;
    if value > 100 {
        return Err(bad(format!("{name:?} must be at most 100, not {value}")));
    }
    Ok(value)
}

/// A protobuf JSON duration: `"<seconds>[.<fraction>]s"`, not negative,
/// at most 315,576,000,000 s (protobuf's limit).
fn duration(obj: &Map<String, Value>, name: &str, default: Duration) -> Result<Duration, Error> {
    let Some(value) = obj.get(name).filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    let invalid = || {
        bad(format!(
            "{name:?} must be a duration such as \"10s\" or \"0.5s\", not {value}"
        ))
    };
    value
        .as_str()
        .and_then(crate::service_config::proto_duration)
        .ok_or_else(invalid)
}

fn bad(message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("outlier_detection_experimental: {message}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: Value) -> Result<OutlierDetectionConfig, Error> {
        OutlierDetectionConfig::from_json(&json, &BalancerRegistry::new())
    }

    #[test]
    fn an_empty_config_with_a_child_has_a50s_defaults_and_no_algorithm() {
        let c = parse(json!({"childPolicy": [{"round_robin": {}}]})).unwrap();
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.base_ejection_time, Duration::from_secs(30));
        assert_eq!(c.max_ejection_time, Duration::from_secs(300));
        assert_eq!(c.max_ejection_percent, 10);
        assert!(!c.ejects());
        assert_eq!(c.child_policy.name(), "round_robin");
    }

    #[test]
    fn empty_algorithm_objects_take_their_defaults() {
        let c = parse(json!({
            "interval": "0.25s",
            "successRateEjection": {},
            "failurePercentageEjection": {"threshold": 50},
            "childPolicy": [{"unknown": {}}, {"pick_first": {}}]
        }))
        .unwrap();
        assert_eq!(c.interval, Duration::from_millis(250));
        assert_eq!(
            c.success_rate_ejection,
            Some(SuccessRateEjection::default())
        );
        let fp = c.failure_percentage_ejection.unwrap();
        assert_eq!(
            (fp.threshold, fp.request_volume, fp.minimum_hosts),
            (50, 50, 5)
        );
        assert_eq!(c.child_policy.name(), "pick_first");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let child = json!([{"round_robin": {}}]);
        for (json, part) in [
            (json!([]), "must be a JSON object"),
            (json!({}), "\"childPolicy\" is required"),
            (json!({"childPolicy": [{"nope": {}}]}), "childPolicy"),
            (json!({"childPolicy": []}), "names no policy"),
            (
                json!({"interval": "10", "childPolicy": child}),
                "\"interval\" must be a duration",
            ),
            (
                json!({"interval": "-1s", "childPolicy": child}),
                "\"interval\"",
            ),
            (
                json!({"interval": "0s", "childPolicy": child}),
                "more than 0s",
            ),
            (
                json!({"baseEjectionTime": 30, "childPolicy": child}),
                "\"baseEjectionTime\"",
            ),
            (
                json!({"maxEjectionPercent": 101, "childPolicy": child}),
                "at most 100",
            ),
            (
                json!({"failurePercentageEjection": {"threshold": 200}, "childPolicy": child}),
                "\"threshold\" must be at most 100",
            ),
            (
                json!({"successRateEjection": {"enforcementPercentage": 101}, "childPolicy": child}),
                "\"enforcementPercentage\"",
            ),
            (
                json!({"successRateEjection": {"stdevFactor": -1}, "childPolicy": child}),
                "\"stdevFactor\" must be an unsigned",
            ),
            (
                json!({"successRateEjection": 3, "childPolicy": child}),
                "must be an object",
            ),
        ] {
            let err = parse(json.clone()).unwrap_err();
            assert!(err.is_config(), "{json}: {err}");
            assert!(err.to_string().contains(part), "{json}: {err}");
            assert!(
                err.to_string()
                    .starts_with("outlier_detection_experimental: "),
                "{err}"
            );
        }
    }
}

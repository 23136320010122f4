//! `weighted_round_robin`'s config, with gRPC's JSON names and defaults.

use std::time::Duration;

use serde_json::Value;

use crate::{Error, ErrorKind};

/// The shortest weight update period (A58).
const MIN_UPDATE_PERIOD: Duration = Duration::from_millis(100);

/// `weighted_round_robin`'s parsed config (see the [module docs](super)).
#[derive(Debug, Clone, PartialEq)]
pub struct WrrConfig {
    pub(crate) enable_oob_load_report: bool,
    pub(crate) oob_reporting_period: Duration,
    pub(crate) blackout_period: Duration,
    pub(crate) weight_expiration_period: Duration,
    pub(crate) weight_update_period: Duration,
    pub(crate) error_utilization_penalty: f64,
}

impl Default for WrrConfig {
    fn default() -> Self {
        WrrConfig {
            enable_oob_load_report: false,
            oob_reporting_period: Duration::from_secs(10),
            blackout_period: Duration::from_secs(10),
            weight_expiration_period: Duration::from_secs(180),
            weight_update_period: Duration::from_secs(1),
            error_utilization_penalty: 1.0,
        }
    }
}

fn error(why: String) -> Error {
    Error::new(ErrorKind::Config, format!("weighted_round_robin: {why}"))
}

/// A gRPC JSON duration: `"<seconds>s"`, seconds a non-negative decimal.
fn duration(json: &Value, field: &str, default: Duration) -> Result<Duration, Error> {
    let Some(value) = json.get(field) else {
        return Ok(default);
    };
    value
        .as_str()
        .and_then(crate::service_config::proto_duration)
        .ok_or_else(|| {
            error(format!(
                "\"{field}\" must be a duration like \"10s\" or \"0.5s\", not {value}"
            ))
        })
}

impl WrrConfig {
    pub(crate) fn parse(json: &Value) -> Result<WrrConfig, Error> {
        if !json.is_object() && !json.is_null() {
            return Err(error(format!("the config must be an object, not {json}")));
        }
        let d = WrrConfig::default();
        let enable_oob_load_report = match json.get("enableOobLoadReport") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                error(format!(
                    "\"enableOobLoadReport\" must be true or false, not {v}"
                ))
            })?,
        };
        let error_utilization_penalty = match json.get("errorUtilizationPenalty") {
            None => d.error_utilization_penalty,
            Some(v) => v
                .as_f64()
                .filter(|p| *p >= 0.0 && p.is_finite())
                .ok_or_else(|| {
                    error(format!(
                        "\"errorUtilizationPenalty\" must be a number of at least 0, not {v}"
                    ))
                })?,
        };
        let update = duration(json, "weightUpdatePeriod", d.weight_update_period)?;
        Ok(WrrConfig {
            enable_oob_load_report,
            oob_reporting_period: duration(json, "oobReportingPeriod", d.oob_reporting_period)?,
            blackout_period: duration(json, "blackoutPeriod", d.blackout_period)?,
            weight_expiration_period: duration(
                json,
                "weightExpirationPeriod",
                d.weight_expiration_period,
            )?,
            weight_update_period: update.max(MIN_UPDATE_PERIOD),
            error_utilization_penalty,
        })
    }

    /// `enableOobLoadReport`: read the reports from ORCA's out-of-band
    /// stream (gRFC A51) instead of the calls' trailers, see the
    /// [module docs](super).
    pub fn enable_oob_load_report(&self) -> bool {
        self.enable_oob_load_report
    }

    /// `oobReportingPeriod`.
    pub fn oob_reporting_period(&self) -> Duration {
        self.oob_reporting_period
    }

    /// `blackoutPeriod`: how long a backend reports before its weight is
    /// used.
    pub fn blackout_period(&self) -> Duration {
        self.blackout_period
    }

    /// `weightExpirationPeriod`: how long a weight lasts without reports.
    pub fn weight_expiration_period(&self) -> Duration {
        self.weight_expiration_period
    }

    /// `weightUpdatePeriod`: how often the scheduler is rebuilt; a
    /// configured value under 100 ms (`"0s"` too) is raised to 100 ms (A58).
    pub fn weight_update_period(&self) -> Duration {
        self.weight_update_period
    }

    /// `errorUtilizationPenalty`: how much errors per second count as
    /// utilization.
    pub fn error_utilization_penalty(&self) -> f64 {
        self.error_utilization_penalty
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_grpcs() {
        let config = WrrConfig::parse(&json!({})).unwrap();
        assert_eq!(config, WrrConfig::default());
        assert_eq!(config.weight_expiration_period(), Duration::from_secs(180));
        assert!(!config.enable_oob_load_report());
    }

    #[test]
    fn every_field_parses_and_the_update_period_has_a_floor() {
        let config = WrrConfig::parse(&json!({
            "enableOobLoadReport": true,
            "oobReportingPeriod": "2.5s",
            "blackoutPeriod": "0s",
            "weightExpirationPeriod": "60s",
            "weightUpdatePeriod": "0.01s",
            "errorUtilizationPenalty": 0.5,
        }))
        .unwrap();
        assert!(config.enable_oob_load_report());
        assert_eq!(config.oob_reporting_period(), Duration::from_millis(2500));
        assert_eq!(config.blackout_period(), Duration::ZERO);
        assert_eq!(config.weight_expiration_period(), Duration::from_secs(60));
        assert_eq!(config.weight_update_period(), MIN_UPDATE_PERIOD);
        assert_eq!(config.error_utilization_penalty(), 0.5);
    }

    #[test]
    fn a_zero_weight_update_period_is_raised_to_100ms() {
        let config = WrrConfig::parse(&json!({"weightUpdatePeriod": "0s"})).unwrap();
        assert_eq!(config.weight_update_period(), Duration::from_millis(100));
    }

    #[test]
    fn bad_fields_are_errors_naming_them() {
        for (json, field) in [
            (json!({"blackoutPeriod": 10}), "blackoutPeriod"),
            (json!({"weightUpdatePeriod": "1m"}), "weightUpdatePeriod"),
            (json!({"weightUpdatePeriod": "100ms"}), "weightUpdatePeriod"),
            (
                json!({"weightExpirationPeriod": "-1s"}),
                "weightExpirationPeriod",
            ),
            (
                json!({"errorUtilizationPenalty": -1}),
                "errorUtilizationPenalty",
            ),
            (json!({"enableOobLoadReport": "yes"}), "enableOobLoadReport"),
            // Past protobuf's limit: it once overflowed `Instant + period`
            // in the update timer and panicked the control task.
            (json!({"weightUpdatePeriod": "1e19s"}), "weightUpdatePeriod"),
            (
                json!({"weightUpdatePeriod": "315576000001s"}),
                "weightUpdatePeriod",
            ),
            (json!({"blackoutPeriod": "1e1s"}), "blackoutPeriod"),
            (json!([]), "object"),
        ] {
            let err = WrrConfig::parse(&json).unwrap_err();
            let message = err.to_string();
            assert!(err.is_config(), "{message}");
            assert!(
                message.contains("weighted_round_robin") && message.contains(field),
                "{message}"
            );
        }
    }
}

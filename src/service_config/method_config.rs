//! `methodConfig`: what each entry applies to the calls its `name` list
//! covers (gRPC's `service_config.md`, "Method configuration"; gRFC A2),
//! matched as grpc-go's `getMethodConfig` does: the exact method, else the
//! service, else the default entry.
//!
//! Parsed once per service config into a [`MethodTable`]; a call looks
//! its path up in it without allocating (see `src/channel/`).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::{config_error, proto_duration};
use crate::Error;

/// What one `methodConfig` entry applies to the calls it names (gRPC's
/// service config doc, "Method configuration"; grpc-go's
/// `MethodConfig`).
///
/// - `timeout` (a protobuf JSON duration, `"1.5s"`): the call's deadline
///   becomes the earlier of its own (`grpc-timeout`,
///   `tonic::Request::set_timeout`, the channel's default timeout) and
///   the call's start plus this timeout; the call then fails with
///   `DEADLINE_EXCEEDED` as for its own deadline. When this timeout is
///   the shortest, the call's `grpc-timeout` header is set to it, so the
///   server learns the deadline, as in gRPC.
/// - `waitForReady` (a bool): overrides the call's own wait-for-ready
///   ([`WaitForReady`](crate::WaitForReady) or the channel's default), as
///   grpc-go does (`failFast = !waitForReady`): `true` makes a call wait
///   for a READY backend (until its deadline), `false` makes it fail fast
///   with `UNAVAILABLE` while the channel is TRANSIENT_FAILURE, even if
///   the call asked to wait.
///
/// Either may be absent; an entry that sets neither still matches, so a
/// more specific empty entry hides a broader one (as in grpc-go).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodConfig {
    timeout: Option<Duration>,
    wait_for_ready: Option<bool>,
}

impl MethodConfig {
    /// The entry's `timeout`, if it has one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The entry's `waitForReady`, if it has one.
    pub fn wait_for_ready(&self) -> Option<bool> {
        self.wait_for_ready
    }
}

/// The method configs of one service config, by service and then by
/// method, the default apart: a call's path is split once at its last
/// `/`, its service looked up once and its method only when that service
/// has method entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct MethodTable {
    services: HashMap<Box<str>, ServiceEntry, Fnv>,
    default: Option<MethodConfig>,
    /// Whether any entry sets a field calls use: when not, calls skip the
    /// lookup.
    applies: bool,
}

/// One service's method configs: by method name, and service-wide.
#[derive(Debug, Clone, PartialEq, Default)]
struct ServiceEntry {
    methods: HashMap<Box<str>, MethodConfig, Fnv>,
    all: Option<MethodConfig>,
}

impl MethodTable {
    /// Builds the table from the `methodConfig` entries (each already a
    /// JSON object). Errors name the entry (by index) and what is wrong.
    pub(super) fn parse(entries: &[Value]) -> Result<Self, Error> {
        let mut table = MethodTable::default();
        let mut named = false;
        for (index, entry) in entries.iter().enumerate() {
            let config = method_entry(index, entry)?;
            table.applies |= config.timeout.is_some() || config.wait_for_ready.is_some();
            // As grpc-go: an entry without `name` applies to nothing.
            let Some(names) = entry.get("name") else {
                continue;
            };
            let names = names.as_array().ok_or_else(|| {
                config_error(format!(
                    "methodConfig[{index}]: \"name\" must be an array of objects"
                ))
            })?;
            for name in names {
                named = true;
                let slot = match method_name(index, name)? {
                    None => &mut table.default,
                    Some((service, method)) => {
                        let entry = table.services.entry(service.into()).or_default();
                        match method {
                            None => &mut entry.all,
                            Some(method) => match entry.methods.entry(method.into()) {
                                std::collections::hash_map::Entry::Vacant(vacant) => {
                                    vacant.insert(config);
                                    continue;
                                }
                                std::collections::hash_map::Entry::Occupied(_) => {
                                    return Err(named_twice(index, name))
                                }
                            },
                        }
                    }
                };
                if slot.replace(config).is_some() {
                    return Err(named_twice(index, name));
                }
            }
        }
        table.applies &= named;
        Ok(table)
    }

    /// Whether calls need to look anything up.
    pub(crate) fn applies(&self) -> bool {
        self.applies
    }

    /// The entry for `path` (`/s/m`): exact, then service-wide, then the
    /// default, as grpc-go's `getMethodConfig`. No allocation.
    pub(crate) fn get(&self, path: &str) -> Option<&MethodConfig> {
        let found = path
            .strip_prefix('/')
            .and_then(|rest| rest.rsplit_once('/'))
            .and_then(|(service, method)| {
                let entry = self.services.get(service)?;
                // A service-wide entry alone: no second hash.
                if entry.methods.is_empty() {
                    return entry.all.as_ref();
                }
                entry.methods.get(method).or(entry.all.as_ref())
            });
        found.or(self.default.as_ref())
    }
}

fn named_twice(index: usize, name: &Value) -> Error {
    config_error(format!(
        "methodConfig[{index}]: the name {name} is named twice in the service config"
    ))
}

/// FNV-1a, 64-bit: method-config keys are short names from the service
/// config, and a call hashes its service (and maybe method) name once;
/// SipHash's DoS resistance buys nothing here and costs more per call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Fnv;

struct FnvHasher(u64);

impl std::hash::BuildHasher for Fnv {
    type Hasher = FnvHasher;

    fn build_hasher(&self) -> FnvHasher {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for FnvHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// An entry's `timeout` and `waitForReady`.
fn method_entry(index: usize, entry: &Value) -> Result<MethodConfig, Error> {
    let timeout = match entry.get("timeout") {
        None => None,
        Some(Value::String(text)) => Some(proto_duration(text).ok_or_else(|| {
            let why = if text.starts_with('-') {
                "a timeout must not be negative"
            } else {
                "it must be a duration like \"1.5s\": whole seconds, up to 9 fraction \
                 digits, an \"s\", at most 315576000000s"
            };
            config_error(format!(
                "methodConfig[{index}]: \"timeout\" {text:?} is not valid: {why}"
            ))
        })?),
        Some(other) => {
            return Err(config_error(format!(
                "methodConfig[{index}]: \"timeout\" must be a duration string like \"1.5s\", \
                 not {other}"
            )))
        }
    };
    let wait_for_ready = match entry.get("waitForReady") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(config_error(format!(
                "methodConfig[{index}]: \"waitForReady\" must be true or false, not {other}"
            )))
        }
    };
    Ok(MethodConfig {
        timeout,
        wait_for_ready,
    })
}

/// What one `name` entry names: `(service, Some(method))`,
/// `(service, None)` for every method of the service, or `None` for the
/// default (no or empty `service` and no `method`). A method without a
/// service is an error, as in grpc-go.
fn method_name(index: usize, name: &Value) -> Result<Option<(&str, Option<&str>)>, Error> {
    let bad = |why: &str| config_error(format!("methodConfig[{index}]: name {name}: {why}"));
    let obj = name.as_object().ok_or_else(|| bad("must be an object"))?;
    let field = |key: &str| match obj.get(key) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(bad(&format!("\"{key}\" must be a string"))),
    };
    let (service, method) = (field("service")?, field("method")?);
    match (service, method) {
        ("", "") => Ok(None),
        ("", _) => Err(bad("a \"method\" needs a \"service\"")),
        (service, "") => Ok(Some((service, None))),
        (service, method) => Ok(Some((service, Some(method)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceConfig;

    #[test]
    fn method_configs_match_exact_then_service_then_default() {
        let sc = ServiceConfig::from_json(
            r#"{"methodConfig":[
                {"name":[{"service":"s","method":"m"}],"timeout":"0.25s"},
                {"name":[{"service":"s"},{"service":"t","method":""}],"timeout":"2s"},
                {"name":[{"service":""}],"waitForReady":true,"timeout":"30s"},
                {"timeout":"9s"}]}"#,
        )
        .unwrap();
        let timeout = |path| sc.method_config_for(path).and_then(MethodConfig::timeout);
        assert_eq!(timeout("/s/m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("/s/other"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("/t/m"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("/u/m"), Some(Duration::from_secs(30)));
        assert_eq!(timeout("/s.x/m"), Some(Duration::from_secs(30)));
        assert_eq!(timeout("nonsense"), Some(Duration::from_secs(30)));
        let exact = sc.method_config_for("/s/m").unwrap();
        assert_eq!(exact.wait_for_ready(), None, "the most specific wins whole");
        assert!(sc.methods().applies());

        let no_default = ServiceConfig::from_json(
            r#"{"methodConfig":[{"name":[{"service":"s"}],"waitForReady":false}]}"#,
        )
        .unwrap();
        assert_eq!(no_default.method_config_for("/u/m"), None);
        assert_eq!(
            no_default
                .method_config_for("/s/m")
                .unwrap()
                .wait_for_ready(),
            Some(false)
        );
        // Entries that set nothing calls use: calls skip the lookup.
        for json in [
            "{}",
            r#"{"methodConfig":[]}"#,
            r#"{"methodConfig":[{"name":[{"service":"s"}],"retryPolicy":{}}]}"#,
            r#"{"methodConfig":[{"timeout":"1s"}]}"#,
        ] {
            let sc = ServiceConfig::from_json(json).unwrap();
            assert!(!sc.methods().applies(), "{json}");
        }
    }

    #[test]
    fn bad_method_configs_say_what_is_wrong() {
        let entry =
            |fields: &str| format!(r#"{{"methodConfig":[{{"name":[{{}}]}},{{{fields}}}]}}"#);
        for (json, part) in [
            (entry(r#""timeout":"1""#), "methodConfig[1]: \"timeout\" \"1\" is not valid"),
            (entry(r#""timeout":"abc""#), "duration like"),
            (entry(r#""timeout":"1.5""#), "duration like"),
            (entry(r#""timeout":"-1s""#), "must not be negative"),
            (entry(r#""timeout":"1.0000000001s""#), "up to 9 fraction digits"),
            (entry(r#""timeout":"315576000001s""#), "at most 315576000000s"),
            (entry(r#""timeout":1"#), "must be a duration string"),
            (entry(r#""waitForReady":"yes""#), "\"waitForReady\" must be true or false"),
            (entry(r#""name":{}"#), "\"name\" must be an array"),
            (entry(r#""name":["s"]"#), "must be an object"),
            (entry(r#""name":[{"service":1}]"#), "\"service\" must be a string"),
            (entry(r#""name":[{"method":"m"}]"#), "a \"method\" needs a \"service\""),
            (entry(r#""name":[{"service":""}]"#), "named twice"),
            (
                r#"{"methodConfig":[{"name":[{"service":"s","method":"m"},{"service":"s","method":"m"}]}]}"#
                    .to_owned(),
                "methodConfig[0]: the name {\"method\":\"m\",\"service\":\"s\"} is named twice",
            ),
        ] {
            let err = ServiceConfig::from_json(&json).unwrap_err();
            assert!(err.is_config(), "{json}: {err}");
            assert!(err.to_string().contains(part), "{json}: {err}");
        }
        let ok = ServiceConfig::from_json(&entry(r#""name":[{"service":"s"}],"timeout":"0s""#));
        assert_eq!(
            ok.unwrap().method_config_for("/s/m").unwrap().timeout(),
            Some(Duration::ZERO)
        );
    }
}

//! Reading etcd values and folding watch events into the full address set.
//!
//! A value is either etcd's Go naming JSON, `{"Op":0,"Addr":"10.0.0.1:50051",
//! "Metadata":...}` (the `naming/endpoints` package writes the same object
//! without `Op`; keys are matched case-insensitively, as Go's
//! `encoding/json` does), or a plain `host:port` string (the classic
//! `/grpclb/<service>/<addr>` layout). `Op` 0 (or absent) adds the address,
//! `Op` 1 removes the key's entry, as grpc-go's old naming watcher did. A
//! numeric `weight` in an object `Metadata` becomes the address's weight; the
//! whole `Metadata` is kept as the address's metadata.
//!
//! [`EndpointSet`] is pure state: a map from key to address. A value that is
//! neither form is skipped with a warning naming the key, and the key keeps
//! whatever it had before, so junk never empties or poisons the set.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::host_port::validate_host_port;
use crate::{Address, Attributes};

/// What one etcd value says about its key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Entry {
    /// The key names this address.
    Add(Address),
    /// Go naming `Op: 1`: the key no longer names an address.
    Delete,
}

/// Parses one value; the error says why it is neither accepted form.
pub(crate) fn parse_value(value: &[u8]) -> Result<Entry, String> {
    let text = std::str::from_utf8(value).map_err(|_| "the value is not UTF-8".to_owned())?;
    let text = text.trim();
    if text.starts_with('{') {
        let json: Value =
            serde_json::from_str(text).map_err(|e| format!("the value is not valid JSON: {e}"))?;
        match json {
            Value::Object(object) => parse_object(&object),
            _ => Err("the JSON value is not an object".to_owned()),
        }
    } else if text.is_empty() {
        Err("the value is empty (want host:port or Go naming JSON)".to_owned())
    } else {
        validate_host_port(text)?;
        Ok(Entry::Add(Address::new(text)))
    }
}

/// `Map::get` ignoring ASCII case, as Go's `encoding/json` matches fields.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn parse_object(object: &Map<String, Value>) -> Result<Entry, String> {
    match field(object, "Op") {
        None | Some(Value::Null) => {}
        Some(op) if op.as_u64() == Some(0) => {}
        Some(op) if op.as_u64() == Some(1) => return Ok(Entry::Delete),
        Some(op) => {
            return Err(format!(
                "unknown \"Op\" {op} (want 0 to add or 1 to delete)"
            ))
        }
    }
    let addr = match field(object, "Addr") {
        Some(Value::String(addr)) => addr.trim(),
        Some(other) => return Err(format!("\"Addr\" is not a string: {other}")),
        None => return Err("the JSON object has no \"Addr\"".to_owned()),
    };
    validate_host_port(addr)?;
    let metadata = field(object, "Metadata").filter(|m| !m.is_null());
    let mut attributes = Attributes::default();
    attributes.set_weight(metadata.and_then(weight_of));
    attributes.set_metadata(metadata.cloned());
    Ok(Entry::Add(Address::new(addr).with_attributes(attributes)))
}

/// A positive `weight` (number or numeric string) in an object `Metadata`.
/// Anything else is no weight: the address still counts.
fn weight_of(metadata: &Value) -> Option<u32> {
    let weight = match metadata {
        Value::Object(object) => field(object, "weight")?,
        _ => return None,
    };
    let parsed = match weight {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let valid = parsed
        .and_then(|w| u32::try_from(w).ok())
        .filter(|w| *w > 0);
    if valid.is_none() {
        tracing::warn!(%weight, "etcd: ignoring a weight that is not an integer in 1..=2^32-1");
    }
    valid
}

/// The addresses under a prefix, by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EndpointSet {
    by_key: BTreeMap<Vec<u8>, Address>,
}

impl EndpointSet {
    /// The set a snapshot of `(key, value)` pairs describes.
    pub(crate) fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut set = EndpointSet::default();
        for (key, value) in pairs {
            set.put(key, value);
        }
        set
    }

    /// Applies a PUT of `value` at `key`; true if the set changed. A value
    /// that cannot be read is skipped (with a warning naming the key) and the
    /// key keeps its previous address.
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) -> bool {
        match parse_value(value) {
            Ok(Entry::Add(address)) => {
                let same = self
                    .by_key
                    .get(key)
                    .is_some_and(|old| old == &address && old.attributes() == address.attributes());
                if !same {
                    self.by_key.insert(key.to_vec(), address);
                }
                !same
            }
            Ok(Entry::Delete) => self.delete(key),
            Err(why) => {
                let key = String::from_utf8_lossy(key);
                tracing::warn!(%key, "etcd: skipping a value that is not an address: {why}");
                false
            }
        }
    }

    /// Applies a DELETE of `key`; true if the set changed.
    pub(crate) fn delete(&mut self, key: &[u8]) -> bool {
        self.by_key.remove(key).is_some()
    }

    /// Every address, sorted, each once (two keys may name one address; the
    /// first key's attributes win).
    pub(crate) fn addresses(&self) -> Vec<Address> {
        let mut addresses: Vec<Address> = self.by_key.values().cloned().collect();
        addresses.sort();
        addresses.dedup();
        addresses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr_of(value: &str) -> Address {
        match parse_value(value.as_bytes()) {
            Ok(Entry::Add(a)) => a,
            other => panic!("{value}: {other:?}"),
        }
    }

    fn strings(set: &EndpointSet) -> Vec<String> {
        set.addresses().iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn reads_plain_host_port_values() {
        assert_eq!(addr_of("127.0.0.1:8000").addr(), "127.0.0.1:8000");
        assert_eq!(addr_of(" [::1]:8000\n").addr(), "[::1]:8000");
        assert_eq!(addr_of("svc.local:443").addr(), "svc.local:443");
    }

    #[test]
    fn reads_go_naming_json_with_metadata_and_weight() {
        let a = addr_of(r#"{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"weight":3,"zone":"a"}}"#);
        assert_eq!(a.addr(), "10.0.0.1:50051");
        assert_eq!(a.attributes().weight(), Some(3));
        assert_eq!(a.attributes().metadata().unwrap()["zone"], "a");
        // naming/endpoints form: no Op, null metadata, lower-case keys.
        let b = addr_of(r#"{"addr":"10.0.0.2:1","metadata":null}"#);
        assert_eq!(
            (b.addr(), b.attributes()),
            ("10.0.0.2:1", &Attributes::default())
        );
        let c = addr_of(r#"{"Addr":"h:1","Metadata":{"Weight":"7"}}"#);
        assert_eq!(c.attributes().weight(), Some(7));
    }

    #[test]
    fn a_bad_weight_is_ignored_but_the_address_kept() {
        for meta in [
            r#"{"weight":0}"#,
            r#"{"weight":-1}"#,
            r#"{"weight":"x"}"#,
            "5",
        ] {
            let a = addr_of(&format!(r#"{{"Addr":"h:1","Metadata":{meta}}}"#));
            assert_eq!(a.attributes().weight(), None, "{meta}");
        }
    }

    #[test]
    fn op_one_deletes_and_unknown_ops_are_junk() {
        assert_eq!(parse_value(br#"{"Op":1,"Addr":"h:1"}"#), Ok(Entry::Delete));
        let err = parse_value(br#"{"Op":7,"Addr":"h:1"}"#).unwrap_err();
        assert!(err.contains("unknown \"Op\" 7"), "{err}");
    }

    #[test]
    fn junk_values_say_what_is_wrong() {
        let cases = [
            (&b""[..], "empty"),
            (b"not an address", "the host \"not an address\" has ' '"),
            (b"h", "no port"),
            (b"127.0.0.1:0", "bad port"),
            (b"{\"Addr\":", "not valid JSON"),
            (b"{\"Metadata\":1}", "no \"Addr\""),
            (b"{\"Addr\":5}", "not a string"),
            (b"\xff\xfe", "not UTF-8"),
        ];
        for (value, want) in cases {
            let err = parse_value(value).unwrap_err();
            assert!(err.contains(want), "{value:?}: {err}");
        }
    }

    #[test]
    fn folding_puts_and_deletes_gives_the_full_set() {
        let mut set = EndpointSet::from_pairs([(&b"p/a"[..], &b"h:1"[..]), (b"p/b", b"h:2")]);
        assert_eq!(strings(&set), ["h:1", "h:2"]);
        assert!(set.put(b"p/c", br#"{"Addr":"h:3"}"#));
        assert!(
            !set.put(b"p/c", br#"{"Addr":"h:3"}"#),
            "same value: no change"
        );
        assert!(set.put(b"p/c", br#"{"Addr":"h:3","Metadata":{"weight":2}}"#));
        assert!(set.delete(b"p/a"));
        assert!(!set.delete(b"p/a"));
        assert!(set.put(b"p/b", br#"{"Op":1}"#));
        assert_eq!(strings(&set), ["h:3"]);
    }

    #[test]
    fn junk_keeps_what_the_key_had() {
        let mut set = EndpointSet::from_pairs([(&b"p/a"[..], &b"h:1"[..]), (b"p/j", b"junk")]);
        assert_eq!(strings(&set), ["h:1"]);
        assert!(!set.put(b"p/a", b"{broken"));
        assert_eq!(strings(&set), ["h:1"]);
    }

    #[test]
    fn two_keys_naming_one_address_count_once() {
        let set = EndpointSet::from_pairs([(&b"p/a"[..], &b"h:1"[..]), (b"p/b", b"h:1")]);
        assert_eq!(strings(&set), ["h:1"]);
    }

    proptest! {
        #[test]
        fn junk_never_panics_and_never_removes_good_entries(
            good in proptest::collection::btree_map("[a-z]{1,6}", 1u16..=65535, 1..8),
            junk in proptest::collection::vec(
                ("[a-z]{1,6}", prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..40),
                    "\\PC{0,40}".prop_map(String::into_bytes),
                    "\\{\"(Op|Addr|Metadata)\":[^}]{0,20}\\}?".prop_map(String::into_bytes),
                ]),
                0..20),
        ) {
            let pairs: Vec<(String, String)> =
                good.iter().map(|(k, port)| (format!("good/{k}"), format!("h:{port}"))).collect();
            let mut set = EndpointSet::from_pairs(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
            let before = set.addresses();
            for (key, value) in &junk {
                // Junk at good keys and at new keys alike.
                let good_key = format!("good/{key}");
                if parse_value(value).is_err() {
                    set.put(good_key.as_bytes(), value);
                }
                set.put(format!("junk/{key}").as_bytes(), value);
            }
            let after = set.addresses();
            for address in &before {
                prop_assert!(after.contains(address), "{address} lost");
            }
        }
    }
}

//! Addresses that resolvers produce and balancers connect to.
//!
//! An [`Address`] is one place a backend listens (`host:port`, `[v6]:port`
//! or `unix:/path`) plus [`Attributes`] a policy may use (a weight, metadata
//! from the naming service). Two addresses are the same backend when their
//! [`addr`](Address::addr) strings are equal: attributes never change which
//! connection is used, so a weight change does not reconnect.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// One network address of a backend, with attributes.
#[derive(Clone)]
pub struct Address {
    addr: Arc<str>,
    attributes: Attributes,
}

/// What a resolver knows about an address beyond where it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes {
    weight: Option<u32>,
    metadata: Option<Arc<serde_json::Value>>,
    server_name: Option<Arc<str>>,
}

impl Address {
    /// An address with no attributes. `addr` is `host:port`, `[v6]:port` or
    /// `unix:/path`; it is not validated here (resolvers validate what they
    /// read, connecting reports what still fails).
    pub fn new(addr: impl Into<Arc<str>>) -> Self {
        Address {
            addr: addr.into(),
            attributes: Attributes::default(),
        }
    }

    /// The `host:port` (or `unix:` path) string.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The attributes a resolver attached.
    pub fn attributes(&self) -> &Attributes {
        &self.attributes
    }

    /// Replaces the attributes.
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes;
        self
    }

    /// Sets the weight attribute (for weighted policies).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.attributes.weight = Some(weight);
        self
    }
}

impl Attributes {
    /// The weight a naming service gave this address, if any.
    pub fn weight(&self) -> Option<u32> {
        self.weight
    }

    /// Free-form metadata from the naming service (e.g. etcd's `Metadata`).
    pub fn metadata(&self) -> Option<&serde_json::Value> {
        self.metadata.as_deref()
    }

    /// The host name to verify this address's TLS certificate against
    /// (and to send as SNI), when a resolver knows it better than the
    /// channel's target does; it wins over the target's host.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Sets the TLS server name.
    pub fn set_server_name(&mut self, name: Option<&str>) {
        self.server_name = name.map(Arc::from);
    }

    /// Sets the weight.
    pub fn set_weight(&mut self, weight: Option<u32>) {
        self.weight = weight;
    }

    /// Sets the metadata.
    pub fn set_metadata(&mut self, metadata: Option<serde_json::Value>) {
        self.metadata = metadata.map(Arc::new);
    }
}

impl PartialEq for Address {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
    }
}

impl Eq for Address {}

impl Hash for Address {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
    }
}

impl PartialOrd for Address {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Address {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.addr.cmp(&other.addr)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attributes == Attributes::default() {
            write!(f, "Address({})", self.addr)
        } else {
            f.debug_struct("Address")
                .field("addr", &&*self.addr)
                .field("attributes", &self.attributes)
                .finish()
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

impl From<&str> for Address {
    fn from(addr: &str) -> Self {
        Address::new(addr)
    }
}

impl From<String> for Address {
    fn from(addr: String) -> Self {
        Address::new(addr)
    }
}

impl From<std::net::SocketAddr> for Address {
    fn from(addr: std::net::SocketAddr) -> Self {
        Address::new(addr.to_string())
    }
}

/// Checks that `s` is `host:port` with a non-empty host and a port in
/// 1..=65535 (`[v6]:port` for IPv6). Returns a message naming the bad part.
pub(crate) fn validate_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("address {s:?} has no port (want host:port)"))?;
    if host.is_empty() {
        return Err(format!("address {s:?} has an empty host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "address {s:?}: IPv6 hosts go in brackets, as [::1]:port"
        ));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("address {s:?} has a bad port {port:?}")),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_ignores_attributes() {
        let a = Address::new("127.0.0.1:1").with_weight(3);
        let b = Address::new("127.0.0.1:1");
        assert_eq!(a, b);
        assert_eq!(a.attributes().weight(), Some(3));
    }

    #[test]
    fn host_port_validation_names_the_bad_part() {
        assert!(validate_host_port("127.0.0.1:50051").is_ok());
        assert!(validate_host_port("[::1]:50051").is_ok());
        assert!(validate_host_port("svc.local:443").is_ok());
        assert!(validate_host_port("127.0.0.1")
            .unwrap_err()
            .contains("no port"));
        assert!(validate_host_port("127.0.0.1:99999")
            .unwrap_err()
            .contains("bad port"));
        assert!(validate_host_port("127.0.0.1:0")
            .unwrap_err()
            .contains("bad port"));
        assert!(validate_host_port(":80")
            .unwrap_err()
            .contains("empty host"));
        assert!(validate_host_port("::1:80")
            .unwrap_err()
            .contains("brackets"));
    }
}

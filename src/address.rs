//! Addresses that resolvers produce and balancers connect to.
//!
//! An [`Address`] is one place a backend listens (`host:port`, `[v6]:port`
//! or `unix:/path`) plus [`Attributes`] a policy may use (a weight, metadata
//! from the naming service). Two addresses are the same backend when their
//! [`addr`](Address::addr) strings are equal: attributes never change which
//! connection is used, so a weight change does not reconnect.
//!
//! An [`Endpoint`] is one backend: one or more addresses (a dual-stack host
//! has an IPv4 and an IPv6 one) with the endpoint's own attributes (its
//! weight, metadata, a TLS server name). Resolvers send endpoints
//! (gRFC A61); policies that balance over backends (`round_robin`) keep one
//! child per endpoint, and pick_first tries an endpoint's addresses in
//! order.

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// One backend: its addresses, tried in order by pick_first, and its
/// attributes (a weight for weighted policies, metadata, a server name).
///
/// ```
/// use tonic_balance::{Address, Attributes, Endpoint};
///
/// let mut attributes = Attributes::default();
/// attributes.set_weight(Some(3));
/// let dual_stack = Endpoint::new(vec!["[::1]:50051".into(), "127.0.0.1:50051".into()])
///     .with_attributes(attributes);
/// assert_eq!(dual_stack.addresses().len(), 2);
/// assert_eq!(dual_stack.attributes().weight(), Some(3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    addresses: Vec<Address>,
    attributes: Attributes,
}

impl Endpoint {
    /// An endpoint with these addresses and no attributes.
    pub fn new(addresses: Vec<Address>) -> Self {
        Endpoint {
            addresses,
            attributes: Attributes::default(),
        }
    }

    /// Replaces the endpoint's attributes.
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes;
        self
    }

    /// The endpoint's addresses, in the order to try them.
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// The endpoint's attributes.
    pub fn attributes(&self) -> &Attributes {
        &self.attributes
    }
}

impl From<Address> for Endpoint {
    /// An endpoint of one address, carrying that address's attributes.
    fn from(address: Address) -> Self {
        let attributes = address.attributes.clone();
        Endpoint {
            addresses: vec![address],
            attributes,
        }
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
    match split_host_port(s) {
        Err(why) => Err(format!("address {why}")),
        Ok((host, None)) if host.contains(':') && !s.starts_with('[') => Err(format!(
            "address {s:?}: IPv6 hosts go in brackets, as [::1]:port"
        )),
        Ok((_, None)) => Err(format!("address {s:?} has no port (want host:port)")),
        Ok((_, Some(port))) => parse_port(port)
            .map(|_| ())
            .map_err(|why| format!("address {s:?} has a {why}")),
    }
}

/// Splits `host:port`, `[v6]:port`, `[v6]`, a bare IPv6 literal or `host`
/// into the host (without brackets) and the port text, if any. The one
/// host:port parser of the crate: the static list, the DNS and literal
/// resolvers, etcd values and registration all use it, so every one of
/// them says the same thing about the same mistake.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?} has no closing ']'"))?;
        if host.is_empty() {
            return Err(format!("{s:?} has an empty host"));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("{s:?}: unexpected {after:?} after ']'")),
            },
        };
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((s, None));
    }
    match s.rsplit_once(':') {
        None => Ok((s, None)),
        Some((host, _)) if host.contains(':') => Err(format!(
            "{s:?}: IPv6 addresses with a port go in brackets, as [::1]:50051"
        )),
        Some(("", _)) => Err(format!("{s:?} has an empty host")),
        Some((host, port)) => Ok((host, Some(port))),
    }
}

/// A port number in 1..=65535; the message names what is wrong.
pub(crate) fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) if port.is_empty() => Err("the port after ':' is missing".into()),
        Ok(0) | Err(_) => Err(format!("bad port {port:?} (want 1-65535)")),
        Ok(port) => Ok(port),
    }
}

/// `host` as `host:port`, in brackets if it is an IPv6 literal.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A host name: labels of letters, digits, '-' and '_', at most 253 bytes.
#[cfg_attr(not(feature = "dns"), allow(dead_code))]
pub(crate) fn check_host_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{host:?} is not a valid host name"));
    }
    Ok(())
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
        assert!(validate_host_port("[::1]").unwrap_err().contains("no port"));
        assert!(validate_host_port("[]:80")
            .unwrap_err()
            .contains("empty host"));
    }

    #[test]
    fn split_host_port_takes_every_form() {
        assert_eq!(split_host_port("a.test:1"), Ok(("a.test", Some("1"))));
        assert_eq!(split_host_port("a.test"), Ok(("a.test", None)));
        assert_eq!(split_host_port("[::1]:2"), Ok(("::1", Some("2"))));
        assert_eq!(split_host_port("[::1]"), Ok(("::1", None)));
        assert_eq!(split_host_port("::1"), Ok(("::1", None)));
        assert!(split_host_port("[::1").unwrap_err().contains("no closing"));
        assert!(split_host_port("[::1]x")
            .unwrap_err()
            .contains("unexpected"));
        assert_eq!(join_host_port("::1", 3), "[::1]:3");
        assert_eq!(join_host_port("10.0.0.1", 3), "10.0.0.1:3");
        assert!(parse_port("").unwrap_err().contains("is missing"));
        assert!(check_host_name("a..b").is_err());
        assert!(check_host_name("svc-1.local.").is_ok());
    }
}

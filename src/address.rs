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
}

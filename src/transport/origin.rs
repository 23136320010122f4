//! Who the calls on an address are for: their `:scheme` and `:authority`,
//! and the name its TLS certificate is verified for.
//!
//! Plaintext: `:authority` is the channel's override, else the address
//! (`localhost` for a unix socket), scheme `http`.
//!
//! TLS: scheme `https`; the server name (SNI, and the name the certificate
//! must be valid for) is, first that is set: the TLS config's
//! `server_name`, the address's `server_name` attribute (a resolver's), the
//! target's host when the target names one host (`dns:///api.example.com:443`,
//! `static:///api.example.com:443`), else the address's host. So every IP
//! that `api.example.com` resolves to is verified for `api.example.com`,
//! never for the IP. `:authority` is the channel's override, else that
//! attribute with the address's port, else the target's `host:port`
//! (port 443 if the target has none), else the address.

use std::sync::Arc;

use http::uri::{Authority, Scheme};

use crate::host_port::{join_host_port, HostPort};
use crate::{Address, Error, ErrorKind, Target};

/// The port of a target that names a host but no port, as in gRPC.
const DEFAULT_PORT: u16 = 443;

/// The scheme, `:authority` and TLS server name of calls to one address.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// The name to verify the certificate for (TLS only).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) server_name: Option<Arc<str>>,
}

impl Origin {
    /// An origin for tests that never connect.
    pub(crate) fn detached() -> Origin {
        Origin {
            scheme: Scheme::HTTP,
            authority: Authority::from_static("test.invalid"),
            server_name: None,
        }
    }
}

/// The one host a target names, with its port (443 if none), if it names
/// exactly one: `dns:///api.example.com:443`, `static:///10.0.0.1:50051`.
/// Not for lists (`a:1,b:2`), paths (`etcd://…/prefix`) or unix sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetHost {
    host: String,
    port: u16,
}

impl TargetHost {
    pub(crate) fn from_target(target: &Target) -> Option<TargetHost> {
        if matches!(target.scheme(), "unix" | "unix-abstract") {
            return None;
        }
        // A list (`a:1,b:2`), a path (`etcd://…/prefix`) or anything else
        // that is not one host[:port] names no host.
        let named = HostPort::parse(target.endpoint()).ok()?;
        Some(TargetHost {
            host: named.host().to_owned(),
            port: named.port_or(DEFAULT_PORT),
        })
    }
}

fn is_unix(addr: &str) -> bool {
    addr.starts_with("unix:") || addr.starts_with("unix-abstract:")
}

/// The origin of calls to `address` (see the [module docs](self)).
pub(crate) fn origin_for(
    address: &Address,
    authority: Option<&Authority>,
    target_host: Option<&TargetHost>,
    tls_server_name: Option<Option<&str>>,
) -> Result<Origin, Error> {
    let addr = address.addr();
    let own = if is_unix(addr) { "localhost" } else { addr };
    let Some(tls_override) = tls_server_name else {
        return Ok(Origin {
            scheme: Scheme::HTTP,
            authority: match authority {
                Some(a) => a.clone(),
                None => parse_authority(own, address)?,
            },
            server_name: None,
        });
    };
    let (own_host, own_port) = match HostPort::parse(own) {
        Ok(named) => (named.host(), named.port()),
        Err(_) => (own, None),
    };
    let attribute = address.attributes().server_name();
    let server_name = tls_override
        .or(attribute)
        .or(target_host.map(|t| t.host.as_str()))
        .unwrap_or(own_host);
    let authority = match (authority, attribute, target_host) {
        (Some(a), _, _) => a.clone(),
        (None, Some(name), _) => match own_port {
            Some(port) => parse_authority(&join_host_port(name, port), address)?,
            None => parse_authority(name, address)?,
        },
        (None, None, Some(t)) => parse_authority(&join_host_port(&t.host, t.port), address)?,
        (None, None, None) => parse_authority(own, address)?,
    };
    Ok(Origin {
        scheme: Scheme::HTTPS,
        authority,
        server_name: Some(Arc::from(server_name)),
    })
}

fn parse_authority(text: &str, address: &Address) -> Result<Authority, Error> {
    text.parse().map_err(|e| {
        Error::with_source(
            ErrorKind::Connect,
            format!("{address}: {text:?} is not a valid authority"),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(target: &str) -> Option<TargetHost> {
        TargetHost::from_target(&Target::parse(target).unwrap())
    }

    #[test]
    fn a_target_names_one_host_or_none() {
        let named = |h: &str, port| {
            Some(TargetHost {
                host: h.into(),
                port,
            })
        };
        assert_eq!(
            host("dns:///api.example.com:8443"),
            named("api.example.com", 8443)
        );
        assert_eq!(
            host("dns:///api.example.com"),
            named("api.example.com", 443)
        );
        assert_eq!(
            host("api.example.com:50051"),
            named("api.example.com", 50051)
        );
        assert_eq!(host("static:///[::1]:5"), named("::1", 5));
        assert_eq!(host("dns:///[::1]"), named("::1", 443));
        assert_eq!(host("dns:///::1"), named("::1", 443));
        assert_eq!(host("static:///a:1,b:2"), None);
        assert_eq!(host("static:///a:1;weight=2"), None);
        assert_eq!(host("etcd://127.0.0.1:2379/foo/bar"), None);
        assert_eq!(host("dns:///a.test:0"), None);
        assert_eq!(host("unix:///tmp/a.sock"), None);
    }

    #[test]
    fn tls_names_the_targets_host_for_every_resolved_ip() {
        let target = host("dns:///api.example.com:443");
        for ip in ["10.0.0.1:443", "10.0.0.2:443"] {
            let origin = origin_for(&Address::new(ip), None, target.as_ref(), Some(None)).unwrap();
            assert_eq!(origin.server_name.as_deref(), Some("api.example.com"));
            assert_eq!(origin.authority, "api.example.com:443");
            assert_eq!(origin.scheme, Scheme::HTTPS);
        }
    }

    #[test]
    fn the_address_attribute_wins_over_the_target_and_the_config_over_both() {
        let target = host("dns:///api.example.com:443");
        let mut address = Address::new("10.0.0.1:8443");
        let mut attributes = address.attributes().clone();
        attributes.set_server_name(Some("shard-1.example.com"));
        address = address.with_attributes(attributes);
        let origin = origin_for(&address, None, target.as_ref(), Some(None)).unwrap();
        assert_eq!(origin.server_name.as_deref(), Some("shard-1.example.com"));
        assert_eq!(origin.authority, "shard-1.example.com:8443");
        let forced = Some(Some("forced.example.com"));
        let origin = origin_for(&address, None, target.as_ref(), forced).unwrap();
        assert_eq!(origin.server_name.as_deref(), Some("forced.example.com"));
    }

    #[test]
    fn without_a_named_host_the_address_is_the_name() {
        let origin = origin_for(&Address::new("127.0.0.1:5"), None, None, Some(None)).unwrap();
        assert_eq!(origin.server_name.as_deref(), Some("127.0.0.1"));
        assert_eq!(origin.authority, "127.0.0.1:5");
        let unix = origin_for(&Address::new("unix:/tmp/s"), None, None, Some(None)).unwrap();
        assert_eq!(unix.server_name.as_deref(), Some("localhost"));
        assert_eq!(unix.authority, "localhost");
    }

    #[test]
    fn plaintext_keeps_the_address_as_authority() {
        let target = host("dns:///api.example.com:443");
        let origin =
            origin_for(&Address::new("10.0.0.1:443"), None, target.as_ref(), None).unwrap();
        assert_eq!(origin.authority, "10.0.0.1:443");
        assert_eq!(origin.scheme, Scheme::HTTP);
        assert!(origin.server_name.is_none());
        let abstract_ = origin_for(&Address::new("unix-abstract:x"), None, None, None).unwrap();
        assert_eq!(abstract_.authority, "localhost");
    }
}

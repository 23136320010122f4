//! Targets that spell out their addresses, with the names gRPC's naming
//! document gives them (`doc/naming.md`): nothing is looked up, the one
//! answer is sent when the resolver is built, and `resolve_now` does
//! nothing.
//!
//! | target | addresses |
//! | --- | --- |
//! | `unix:path`, `unix:///absolute/path` | `unix:path` (a relative path is relative to the working directory) |
//! | `unix-abstract:name` | `unix-abstract:name`, a Linux abstract socket |
//! | `passthrough:///host:port` | `host:port` as given: the name is resolved by the OS when connecting (grpc-go's old default) |
//! | `ipv4:10.0.0.1[:port][,10.0.0.2[:port]...]` | each IPv4 address, port 443 if absent |
//! | `ipv6:[::1]:port,...` or `ipv6:::1` | each IPv6 address (brackets around one with a port), port 443 if absent |
//!
//! Calls to a unix address carry `:authority localhost`. Errors name the
//! bad part of the target, e.g. `invalid target "ipv4:10.0.0.1:x":
//! "10.0.0.1:x" has a bad port "x" (want 1-65535)`. IPv6 zone ids
//! (`[fe80::1%eth0]`) are refused with an error that says so.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::fixed::fixed;
use super::{Resolver, ResolverBuilder, UpdateSink};
use crate::host_port::{join_host_port, validate_host_port, HostPort};
use crate::{Address, Error, Target};

/// The port of an `ipv4:` or `ipv6:` entry without one, as gRPC has it.
const DEFAULT_PORT: u16 = 443;

/// Builds resolvers for `unix:path` and `unix:///absolute/path`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixResolverBuilder;

/// Builds resolvers for `unix-abstract:name` (Linux abstract sockets).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixAbstractResolverBuilder;

/// Builds resolvers for `passthrough:///host:port`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassthroughResolverBuilder;

/// Builds resolvers for `ipv4:` address lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ipv4ResolverBuilder;

/// Builds resolvers for `ipv6:` address lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ipv6ResolverBuilder;

/// Whether the target was written `scheme://authority/endpoint`.
fn hierarchical(target: &Target) -> bool {
    let raw = target.as_str();
    raw.get(target.scheme().len()..)
        .is_some_and(|rest| rest.starts_with("://"))
}

fn invalid(target: &Target, why: impl std::fmt::Display) -> Error {
    Error::invalid_target(target.as_str(), why)
}

impl UnixResolverBuilder {
    /// The socket path of a `unix:` target.
    pub fn parse(target: &Target) -> Result<Address, Error> {
        let path = if hierarchical(target) {
            if !target.authority().is_empty() {
                return Err(invalid(
                    target,
                    "unix:// takes an absolute path, as unix:///path/to/socket (three slashes)",
                ));
            }
            format!("/{}", target.endpoint())
        } else {
            target.endpoint().to_owned()
        };
        if path.is_empty() || path == "/" {
            return Err(invalid(target, "the socket path is empty"));
        }
        Ok(Address::new(format!("unix:{path}")))
    }
}

impl ResolverBuilder for UnixResolverBuilder {
    fn scheme(&self) -> &str {
        "unix"
    }

    fn build(&self, target: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        Ok(fixed(sink, vec![Self::parse(target)?]))
    }
}

impl UnixAbstractResolverBuilder {
    /// The abstract socket name of a `unix-abstract:` target.
    pub fn parse(target: &Target) -> Result<Address, Error> {
        if hierarchical(target) {
            return Err(invalid(
                target,
                "write unix-abstract:name (no //): the name is not a path",
            ));
        }
        if target.endpoint().is_empty() {
            return Err(invalid(target, "the abstract socket name is empty"));
        }
        Ok(Address::new(format!("unix-abstract:{}", target.endpoint())))
    }
}

impl ResolverBuilder for UnixAbstractResolverBuilder {
    fn scheme(&self) -> &str {
        "unix-abstract"
    }

    fn build(&self, target: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        Ok(fixed(sink, vec![Self::parse(target)?]))
    }
}

impl PassthroughResolverBuilder {
    /// The `host:port` of a `passthrough:` target.
    pub fn parse(target: &Target) -> Result<Address, Error> {
        let endpoint = target.endpoint();
        validate_host_port(endpoint).map_err(|why| invalid(target, why))?;
        Ok(Address::new(endpoint))
    }
}

impl ResolverBuilder for PassthroughResolverBuilder {
    fn scheme(&self) -> &str {
        "passthrough"
    }

    fn build(&self, target: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        Ok(fixed(sink, vec![Self::parse(target)?]))
    }
}

/// Parses a comma-separated list of IP literals of one family.
fn ip_list<F: Fn(&str) -> bool>(
    target: &Target,
    family: &str,
    is_family: F,
) -> Result<Vec<Address>, Error> {
    let list = target.endpoint();
    if list.is_empty() {
        return Err(invalid(
            target,
            format!("the address list is empty (want {family}:address[:port][,...])"),
        ));
    }
    let whose = format!("an {}: target", target.scheme());
    list.split(',')
        .map(|entry| {
            let bad = |why: String| invalid(target, why);
            let named = HostPort::parse(entry).map_err(bad)?;
            named.refuse_zone(&whose).map_err(bad)?;
            if !is_family(named.host()) {
                return Err(bad(format!("{entry:?} is not an {family} address")));
            }
            let port = named.port_or(DEFAULT_PORT);
            Ok(Address::new(join_host_port(named.host(), port)))
        })
        .collect()
}

impl Ipv4ResolverBuilder {
    /// The addresses of an `ipv4:` target.
    pub fn parse(target: &Target) -> Result<Vec<Address>, Error> {
        ip_list(target, "IPv4", |h| h.parse::<Ipv4Addr>().is_ok())
    }
}

impl ResolverBuilder for Ipv4ResolverBuilder {
    fn scheme(&self) -> &str {
        "ipv4"
    }

    fn build(&self, target: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        Ok(fixed(sink, Self::parse(target)?))
    }
}

impl Ipv6ResolverBuilder {
    /// The addresses of an `ipv6:` target.
    pub fn parse(target: &Target) -> Result<Vec<Address>, Error> {
        ip_list(target, "IPv6", |h| h.parse::<Ipv6Addr>().is_ok())
    }
}

impl ResolverBuilder for Ipv6ResolverBuilder {
    fn scheme(&self) -> &str {
        "ipv6"
    }

    fn build(&self, target: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        Ok(fixed(sink, Self::parse(target)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Target {
        s.parse().unwrap()
    }

    fn addrs(list: Result<Vec<Address>, Error>) -> Result<Vec<String>, String> {
        list.map(|l| l.iter().map(ToString::to_string).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn unix_targets_in_both_forms() {
        let unix = |s| UnixResolverBuilder::parse(&target(s)).map(|a| a.to_string());
        assert_eq!(unix("unix:/tmp/a.sock").unwrap(), "unix:/tmp/a.sock");
        assert_eq!(unix("unix:rel/a.sock").unwrap(), "unix:rel/a.sock");
        assert_eq!(unix("unix:///tmp/a.sock").unwrap(), "unix:/tmp/a.sock");
        let err = unix("unix://tmp/a.sock").unwrap_err();
        assert!(err.is_invalid_target() && err.to_string().contains("three slashes"));
        assert!(unix("unix:///").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn unix_abstract_names() {
        let parse = |s| UnixAbstractResolverBuilder::parse(&target(s)).map(|a| a.to_string());
        assert_eq!(parse("unix-abstract:svc").unwrap(), "unix-abstract:svc");
        assert!(parse("unix-abstract:///svc")
            .unwrap_err()
            .to_string()
            .contains("not a path"));
    }

    #[test]
    fn passthrough_keeps_the_name() {
        let parse = |s| PassthroughResolverBuilder::parse(&target(s)).map(|a| a.to_string());
        assert_eq!(
            parse("passthrough:///svc.test:50051").unwrap(),
            "svc.test:50051"
        );
        assert_eq!(parse("passthrough:///[::1]:5").unwrap(), "[::1]:5");
        assert!(parse("passthrough:///svc.test")
            .unwrap_err()
            .to_string()
            .contains("no port"));
    }

    #[test]
    fn ipv4_and_ipv6_lists_with_default_port_443() {
        let v4 = |s| addrs(Ipv4ResolverBuilder::parse(&target(s)));
        let v6 = |s| addrs(Ipv6ResolverBuilder::parse(&target(s)));
        assert_eq!(
            v4("ipv4:10.0.0.1:80,10.0.0.2").unwrap(),
            ["10.0.0.1:80", "10.0.0.2:443"]
        );
        assert_eq!(v6("ipv6:[::1]:80,::2").unwrap(), ["[::1]:80", "[::2]:443"]);
        assert_eq!(v6("ipv6:::1").unwrap(), ["[::1]:443"]);
        assert!(v4("ipv4:10.0.0.1:x")
            .unwrap_err()
            .contains("bad port \"x\""));
        assert!(v4("ipv4:svc.test:1").unwrap_err().contains("not an IPv4"));
        assert!(v4("ipv4:[::1]:1").unwrap_err().contains("not an IPv4"));
        assert!(v6("ipv6:10.0.0.1").unwrap_err().contains("not an IPv6"));
        assert!(v4("ipv4:///").unwrap_err().contains("empty"));
        assert!(v4("ipv4:10.0.0.1,").unwrap_err().contains("empty host"));
        assert!(v6("ipv6:[fe80::1%eth0]:1")
            .unwrap_err()
            .contains("an ipv6: target cannot use the IPv6 zone id \"eth0\""));
    }

    #[tokio::test]
    async fn the_answer_is_sent_once_and_resolve_now_sends_nothing() {
        let (sink, mut rx) = UpdateSink::channel();
        let mut resolver = Ipv4ResolverBuilder
            .build(&target("ipv4:127.0.0.1:1,127.0.0.2:1"), sink)
            .unwrap();
        let first = rx.recv().await.unwrap().update.unwrap();
        assert_eq!(first.addresses().len(), 2);
        resolver.resolve_now();
        assert!(rx.try_recv().is_none(), "nothing more");
    }
}

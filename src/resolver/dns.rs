//! The `dns` resolver: A and AAAA records of a host name, kept fresh.
//!
//! Targets follow gRPC's naming document: `dns:///host:port`,
//! `dns:host:port`, a bare `host:port` (no scheme means DNS), and
//! `dns://SERVER[:PORT]/host:port` to ask that DNS server (an IP address,
//! port 53 by default) instead of the system's. The port defaults to 443.
//! IP literals (`10.0.0.1:50051`, `[::1]:50051`) and `localhost`
//! (127.0.0.1 and ::1) resolve without a query.
//!
//! Each resolver runs one tokio task (see the diagram in `task.rs`):
//!
//! - every A and AAAA address becomes an [`Address`](crate::Address), in the
//!   server's order; the full set is sent whenever it changes;
//! - it looks up again every refresh interval (30 s), or, if asked to
//!   follow TTLs, when the records' TTL runs out, clamped to given bounds;
//! - [`Resolver::resolve_now`] (a balancer saw a connection fail) starts a
//!   lookup early, but never sooner than the minimum re-resolution interval
//!   (30 s, as grpc-go) after the previous one;
//! - a failed lookup is reported with [`UpdateSink::error`] (a name that
//!   does not exist says so, naming the host) and retried with gRPC's
//!   exponential backoff; the channel keeps the last good set meanwhile.
//!
//! The task stops when the resolver is dropped or the channel goes away.
//! Lookups go through the [`DnsLookup`] trait (hickory-resolver by
//! default), so the timing is testable on a paused clock.

mod lookup;
mod task;

pub use lookup::{DnsAnswer, DnsLookup, DnsLookupFuture};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::fixed::fixed;
use super::{Resolver, ResolverBuilder, UpdateSink};
use crate::host_port::{check_host_name, HostPort};
use crate::subchannel::BackoffConfig;
use crate::{Error, ErrorKind, Target};
use lookup::HickoryLookup;
use task::{Task, Timing, Wake};

/// The port of a `dns` target that names none, as in gRPC.
const DEFAULT_PORT: u16 = 443;
const DEFAULT_DNS_SERVER_PORT: u16 = 53;

/// Builds resolvers for `dns` targets. The default has gRPC's settings;
/// register a configured one, or give it to one channel:
///
/// ```no_run
/// # async fn run() -> Result<(), tonic_balance::Error> {
/// use std::time::Duration;
/// use tonic_balance::resolver::DnsResolverBuilder;
/// use tonic_balance::BalancedChannel;
///
/// let dns = DnsResolverBuilder::default()
///     .refresh_interval(Duration::from_secs(10))
///     .min_resolve_interval(Duration::from_secs(1));
/// let channel = BalancedChannel::builder("dns:///svc.example.internal:50051")
///     .resolver_builder(dns)
///     .balancer("round_robin")
///     .build()?;
/// # drop(channel); Ok(()) }
/// ```
#[derive(Clone)]
pub struct DnsResolverBuilder {
    timing: Timing,
    lookup: Option<Arc<dyn DnsLookup>>,
}

impl Default for DnsResolverBuilder {
    fn default() -> Self {
        DnsResolverBuilder {
            timing: Timing {
                refresh: Duration::from_secs(30),
                min_resolve_interval: Duration::from_secs(30),
                ttl_bounds: None,
                backoff: BackoffConfig::default(),
                lookup_timeout: Duration::from_secs(10),
            },
            lookup: None,
        }
    }
}

impl DnsResolverBuilder {
    /// How often to look up again while nothing asks (default 30 s; at
    /// least 1 ms).
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.timing.refresh = interval.max(Duration::from_millis(1));
        self
    }

    /// The least time between the start of one lookup and a lookup asked
    /// for by [`Resolver::resolve_now`] (default 30 s, as grpc-go). Small
    /// values suit tests and fast-moving fleets.
    pub fn min_resolve_interval(mut self, interval: Duration) -> Self {
        self.timing.min_resolve_interval = interval;
        self
    }

    /// Looks up again when the records' TTL runs out, kept between `min`
    /// and `max` (at least 1 ms), instead of every refresh interval. The
    /// refresh interval still applies to answers without a TTL.
    pub fn follow_ttl(mut self, min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        self.timing.ttl_bounds = Some((min, max.max(min)));
        self
    }

    /// The backoff between failed lookups (default gRPC's: 1 s, x1.6,
    /// jitter 0.2, at most 120 s; `min_connect_timeout` is not used).
    /// Building the resolver fails with [`ErrorKind::Config`] for a
    /// config outside [`BackoffConfig`]'s ranges.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.timing.backoff = backoff;
        self
    }

    /// How long one lookup may take before it counts as failed (default
    /// 10 s).
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.timing.lookup_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Resolves names with `lookup` instead of hickory-resolver. It is used
    /// for every target, whatever DNS server the target names.
    pub fn lookup(mut self, lookup: impl DnsLookup) -> Self {
        self.lookup = Some(Arc::new(lookup));
        self
    }
}

impl ResolverBuilder for DnsResolverBuilder {
    fn scheme(&self) -> &str {
        "dns"
    }

    fn build(&self, target: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        self.timing.backoff.check("dns resolver backoff")?;
        let (host, port) = parse_endpoint(target)?;
        let server = parse_authority(target)?;
        if let Some(ips) = without_query(&host) {
            return Ok(fixed(sink, task::addresses(&ips, port)));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::with_source(
                ErrorKind::Resolver,
                format!("dns: cannot resolve {target}: not inside a tokio runtime"),
                e,
            )
        })?;
        let lookup = self
            .lookup
            .clone()
            .unwrap_or_else(|| Arc::new(HickoryLookup::new(server, self.timing.lookup_timeout)));
        let wake = Arc::new(Wake::default());
        // Retry jitter from the channel's `rng_seed` (reproducible in tests).
        let seed = sink.seed();
        let task = Task {
            target: target.as_str().to_owned(),
            host,
            port,
            lookup,
            timing: self.timing,
            sink,
            wake: wake.clone(),
            backoff: crate::backoff::Backoff::new(self.timing.backoff, seed),
        };
        let handle = runtime.spawn(task.run());
        Ok(Box::new(DnsResolver { wake, handle }))
    }
}

impl fmt::Debug for DnsResolverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsResolverBuilder")
            .field("timing", &self.timing)
            .field("custom_lookup", &self.lookup.is_some())
            .finish()
    }
}

/// The handle of a running DNS resolver; dropping it stops the task.
struct DnsResolver {
    wake: Arc<Wake>,
    handle: JoinHandle<()>,
}

impl Resolver for DnsResolver {
    fn resolve_now(&mut self) {
        self.wake.request();
    }
}

impl Drop for DnsResolver {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The addresses of an IP literal or of `localhost`.
fn without_query(host: &str) -> Option<Vec<IpAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(vec![ip]);
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    name.eq_ignore_ascii_case("localhost")
        .then(|| vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()])
}

/// `host[:port]`, `[v6][:port]` or a bare IPv6 literal; port 443 if absent.
fn parse_endpoint(target: &Target) -> Result<(String, u16), Error> {
    let bad = |why: String| Error::invalid_target(target.as_str(), why);
    let endpoint = target.endpoint();
    if endpoint.is_empty() {
        return Err(bad("no host name (want dns:///host[:port])".into()));
    }
    let named = HostPort::parse(endpoint).map_err(bad)?;
    named.refuse_zone("a dns: target").map_err(bad)?;
    let host = named.host();
    if host.parse::<IpAddr>().is_err() {
        check_host_name(host).map_err(bad)?;
    }
    Ok((host.to_owned(), named.port_or(DEFAULT_PORT)))
}

/// The DNS server a `dns://SERVER[:PORT]/...` target names, if any.
fn parse_authority(target: &Target) -> Result<Option<SocketAddr>, Error> {
    let authority = target.authority();
    if authority.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| Error::invalid_target(target.as_str(), why);
    let server = HostPort::parse(authority).map_err(bad)?;
    server.refuse_zone("the DNS server").map_err(bad)?;
    let ip: IpAddr = server.host().parse().map_err(|_| {
        bad(format!(
            "the DNS server {authority:?} must be an IP address (as dns://8.8.8.8:53/host:port)"
        ))
    })?;
    Ok(Some(SocketAddr::new(
        ip,
        server.port_or(DEFAULT_DNS_SERVER_PORT),
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn endpoint(s: &str) -> Result<(String, u16), String> {
        let target: Target = s.parse().map_err(|e: Error| e.to_string())?;
        parse_endpoint(&target).map_err(|e| e.to_string())
    }

    fn authority(s: &str) -> Result<Option<String>, String> {
        let target: Target = s.parse().map_err(|e: Error| e.to_string())?;
        parse_authority(&target)
            .map(|a| a.map(|a| a.to_string()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_grpc_target_form_gives_host_and_port_443_by_default() {
        let want = |h: &str, p| Ok((h.to_owned(), p));
        assert_eq!(endpoint("dns:///svc.test:50051"), want("svc.test", 50051));
        assert_eq!(endpoint("dns:svc.test:50051"), want("svc.test", 50051));
        assert_eq!(endpoint("dns://10.0.0.53/svc.test:1"), want("svc.test", 1));
        assert_eq!(endpoint("svc.test:50051"), want("svc.test", 50051));
        assert_eq!(endpoint("dns:///svc.test"), want("svc.test", 443));
        assert_eq!(endpoint("svc.test"), want("svc.test", 443));
        assert_eq!(endpoint("[::1]:50051"), want("::1", 50051));
        assert_eq!(endpoint("dns:///[::1]"), want("::1", 443));
        assert_eq!(endpoint("dns:///::1"), want("::1", 443));
        assert_eq!(
            endpoint("dns:///_grpc.svc-1.test."),
            want("_grpc.svc-1.test.", 443)
        );
    }

    #[test]
    fn bad_endpoints_are_invalid_targets_that_say_why() {
        for (target, why) in [
            ("dns:///", "no host name"),
            ("dns:///svc.test:", "no port after ':'"),
            ("dns:///svc.test:99999", "bad port \"99999\""),
            ("dns:///svc.test:0", "bad port \"0\""),
            ("dns:///:50051", "empty host"),
            ("dns:///fe80::1:x", "goes in brackets"),
            ("dns:///[::1", "no closing ']'"),
            ("dns:///[::1]x", "unexpected \"x\""),
            ("dns:///a..b:1", "\"a..b\" is not a valid host name"),
            ("dns:///a/b:1", "the host \"a/b\" has '/'"),
            (
                "dns:///[fe80::1%eth0]:1",
                "cannot use the IPv6 zone id \"eth0\"",
            ),
        ] {
            let err = endpoint(target).unwrap_err();
            assert!(
                err.contains(why) && err.contains("invalid target"),
                "{target}: {err}"
            );
        }
    }

    #[test]
    fn the_authority_names_a_dns_server_by_ip_with_port_53_by_default() {
        assert_eq!(authority("dns:///svc.test:1"), Ok(None));
        assert_eq!(
            authority("dns://127.0.0.1:5353/svc.test:1"),
            Ok(Some("127.0.0.1:5353".into()))
        );
        assert_eq!(
            authority("dns://8.8.8.8/svc.test:1"),
            Ok(Some("8.8.8.8:53".into()))
        );
        assert_eq!(
            authority("dns://[::1]:54/svc.test:1"),
            Ok(Some("[::1]:54".into()))
        );
        let name = authority("dns://ns.example:53/svc.test:1").unwrap_err();
        assert!(name.contains("must be an IP address"), "{name}");
        let port = authority("dns://127.0.0.1:x/svc.test:1").unwrap_err();
        assert!(port.contains("bad port \"x\""), "{port}");
    }

    #[tokio::test]
    async fn ip_literals_and_localhost_resolve_without_a_query() {
        let lookups = Arc::new(AtomicUsize::new(0));
        let counter = lookups.clone();
        let builder = DnsResolverBuilder::default().lookup(move |_: &str| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(DnsAnswer::default()) }
        });
        for (target, want) in [
            ("10.0.0.1:50051", vec!["10.0.0.1:50051"]),
            ("dns:///[2001:db8::1]:8080", vec!["[2001:db8::1]:8080"]),
            (
                "dns://127.0.0.1:5353/localhost:50051",
                vec!["127.0.0.1:50051", "[::1]:50051"],
            ),
            ("LOCALHOST.", vec!["127.0.0.1:443", "[::1]:443"]),
        ] {
            let (sink, mut rx) = UpdateSink::channel();
            let mut resolver = builder.build(&target.parse().unwrap(), sink).unwrap();
            let update = rx.recv().await.unwrap().into_result().unwrap();
            let got: Vec<String> = update.addresses().iter().map(|a| a.to_string()).collect();
            assert_eq!(got, want, "{target}");
            resolver.resolve_now();
            assert!(rx.try_recv().is_none(), "{target}: nothing to resend");
        }
        assert_eq!(lookups.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let (sink, _rx) = UpdateSink::channel();
        let target: Target = "dns:///svc.test:1".parse().unwrap();
        let err = DnsResolverBuilder::default()
            .build(&target, sink)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("not inside a tokio runtime"),
            "{err}"
        );
    }
}

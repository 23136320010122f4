//! The lookup behind the DNS resolver: a small trait, so the refresh logic
//! can be tested without a network, and its hickory-resolver implementation.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::{Error, ErrorKind};

/// What one lookup of a host found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsAnswer {
    /// Every A and AAAA address, in the order the server gave them.
    pub ips: Vec<IpAddr>,
    /// The smallest TTL among those records, if known.
    pub ttl: Option<Duration>,
}

impl DnsAnswer {
    /// An answer with these addresses and no TTL.
    pub fn new(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        DnsAnswer {
            ips: ips.into_iter().collect(),
            ttl: None,
        }
    }

    /// Sets the TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// The future a [`DnsLookup`] returns.
pub type DnsLookupFuture = Pin<Box<dyn Future<Output = Result<DnsAnswer, Error>> + Send>>;

/// Looks up the A and AAAA records of a host.
///
/// The DNS resolver calls it from its own task, one lookup at a time. The
/// built-in implementation uses hickory-resolver; give
/// [`DnsResolverBuilder::lookup`](super::DnsResolverBuilder::lookup) your own
/// to resolve names another way or to test without a network. Any
/// `Fn(&str) -> impl Future<Output = Result<DnsAnswer, Error>>` is one.
///
/// An error's message should name the host; a name that does not exist
/// should say so.
pub trait DnsLookup: Send + Sync + 'static {
    /// Looks up `host` (a name, never an IP literal).
    fn lookup(&self, host: &str) -> DnsLookupFuture;
}

impl<F, Fut> DnsLookup for F
where
    F: Fn(&str) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<DnsAnswer, Error>> + Send + 'static,
{
    fn lookup(&self, host: &str) -> DnsLookupFuture {
        Box::pin(self(host))
    }
}

/// hickory-resolver, asking either the system's name servers
/// (`/etc/resolv.conf`, with `/etc/hosts` first) or one given server.
pub(super) struct HickoryLookup {
    server: Option<SocketAddr>,
    timeout: Duration,
    /// Built on first use, so building a channel never reads files or fails
    /// on the system's configuration; a failure is retried next lookup.
    resolver: Mutex<Option<TokioResolver>>,
}

impl HickoryLookup {
    pub(super) fn new(server: Option<SocketAddr>, timeout: Duration) -> Self {
        HickoryLookup {
            server,
            timeout,
            resolver: Mutex::new(None),
        }
    }

    fn resolver(&self) -> Result<TokioResolver, Error> {
        let mut slot = self
            .resolver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(resolver) = slot.as_ref() {
            return Ok(resolver.clone());
        }
        let resolver = self.build()?;
        *slot = Some(resolver.clone());
        Ok(resolver)
    }

    fn build(&self) -> Result<TokioResolver, Error> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match self.server {
            Some(server) => {
                let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut name_server.connections {
                    connection.port = server.port();
                }
                let config = ResolverConfig::from_parts(None, vec![], vec![name_server]);
                let mut builder = TokioResolver::builder_with_config(config, provider);
                *builder.options_mut() = ResolverOpts::default();
                builder.options_mut().use_hosts_file = ResolveHosts::Never;
                builder
            }
            None => TokioResolver::builder(provider).map_err(|e| {
                Error::with_source(
                    ErrorKind::Resolver,
                    "cannot read the system's DNS configuration",
                    e,
                )
            })?,
        };
        let options = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = self.timeout;
        // The resolver decides when to ask again; hickory's cache would
        // hide changes until the records' TTL ran out.
        options.cache_size = 0;
        builder.build().map_err(|e| {
            Error::with_source(ErrorKind::Resolver, "cannot start the DNS resolver", e)
        })
    }

    fn server_name(&self) -> String {
        match self.server {
            Some(server) => format!("DNS server {server}"),
            None => "the system's DNS servers".to_owned(),
        }
    }
}

impl DnsLookup for HickoryLookup {
    fn lookup(&self, host: &str) -> DnsLookupFuture {
        let host = host.to_owned();
        let resolver = self.resolver();
        let server = self.server_name();
        Box::pin(async move {
            let resolver = resolver?;
            resolver.clear_cache();
            let lookup = resolver
                .lookup_ip(host.as_str())
                .await
                .map_err(|e| lookup_error(&host, &server, e))?;
            let mut answer = DnsAnswer::default();
            for record in lookup.as_lookup().answers() {
                let ip = match &record.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                    _ => continue,
                };
                let ttl = Duration::from_secs(record.ttl.into());
                answer.ttl = Some(answer.ttl.map_or(ttl, |t| t.min(ttl)));
                if !answer.ips.contains(&ip) {
                    answer.ips.push(ip);
                }
            }
            Ok(answer)
        })
    }
}

fn lookup_error(host: &str, server: &str, error: NetError) -> Error {
    if error.is_nx_domain() {
        let message = format!("{host:?} does not exist (NXDOMAIN from {server})");
        return Error::new(ErrorKind::Resolver, message);
    }
    if error.is_no_records_found() {
        let message = format!("{host:?} has no A or AAAA records (asked {server})");
        return Error::new(ErrorKind::Resolver, message);
    }
    // hickory's errors repeat their cause in their own message, so the
    // message alone tells the whole story.
    let message = format!("looking up {host:?} with {server} failed: {error}");
    Error::new(ErrorKind::Resolver, message)
}

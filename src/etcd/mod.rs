//! The etcd client plumbing shared by the [`etcd` resolver] and
//! [registration]: which etcd to talk to, connecting with the options
//! discovery needs, bounded calls and retry delays.
//!
//! Crate-private: users see etcd only through the resolver's and
//! registration's builders.
//!
//! [`etcd` resolver]: crate::resolver::EtcdResolverBuilder
//! [registration]: crate::registration

mod retry;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

pub use self::retry::EtcdRetryConfig;
pub(crate) use self::retry::Retry;

use crate::host_port::validate_host_port;
use crate::{Error, ErrorKind};

/// The etcd a target with an empty authority and no client talks to.
pub(crate) const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// HTTP/2 keepalive interval towards etcd: a connection that died silently
/// (a partitioned member) is noticed within interval + timeout. Above
/// etcd's default `--grpc-keepalive-min-time` of 5 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Where an etcd client comes from: one the user built, or endpoints to
/// connect to.
#[derive(Clone)]
pub(crate) enum EtcdSource {
    Client(Box<Client>),
    Endpoints(Vec<String>),
}

impl EtcdSource {
    /// A target's authority (`host:port[,host:port...]`); empty means the
    /// given client, else [`DEFAULT_ENDPOINT`].
    pub(crate) fn from_authority(authority: &str, given: Option<&Client>) -> Result<Self, String> {
        match (authority.is_empty(), given) {
            (true, Some(client)) => Ok(EtcdSource::Client(Box::new(client.clone()))),
            (true, None) => Ok(EtcdSource::Endpoints(vec![DEFAULT_ENDPOINT.to_owned()])),
            (false, _) => parse_endpoints(authority).map(EtcdSource::Endpoints),
        }
    }

    /// A client: the given one, or a new one for the endpoints. Connecting
    /// does not touch the network (the channel connects lazily).
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Client, etcd_client::Error> {
        match self {
            EtcdSource::Client(client) => Ok((**client).clone()),
            EtcdSource::Endpoints(endpoints) => {
                let options = ConnectOptions::new()
                    .with_require_leader(true)
                    .with_connect_timeout(timeout)
                    .with_keep_alive(KEEPALIVE_INTERVAL, timeout);
                Client::connect(endpoints, Some(options)).await
            }
        }
    }

    /// The endpoints joined with `,`; empty for a given client.
    pub(crate) fn authority(&self) -> String {
        match self {
            EtcdSource::Client(_) => String::new(),
            EtcdSource::Endpoints(endpoints) => endpoints.join(","),
        }
    }
}

impl fmt::Display for EtcdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdSource::Client(_) => f.write_str("the given etcd client"),
            EtcdSource::Endpoints(endpoints) => write!(f, "etcd at {}", endpoints.join(",")),
        }
    }
}

impl fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses `host:port[,host:port...]` (an `http://` in front of each is
/// accepted and dropped); the error names the bad entry.
pub(crate) fn parse_endpoints(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(|entry| {
            let entry = entry.trim();
            let entry = entry.strip_prefix("http://").unwrap_or(entry);
            validate_host_port(entry)
                .map(|()| entry.to_owned())
                .map_err(|why| format!("bad etcd endpoint: {why}"))
        })
        .collect()
}

/// Runs one etcd request with a time limit; errors say `what` failed.
pub(crate) async fn call<T>(
    kind: ErrorKind,
    limit: Duration,
    what: impl FnOnce() -> String,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Error::with_source(kind, what(), e)),
        Err(_) => Err(Error::new(
            kind,
            format!("{}: etcd did not answer within {limit:?}", what()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_errors_name_the_entry() {
        assert_eq!(
            parse_endpoints("127.0.0.1:2379,http://10.0.0.1:2379").unwrap(),
            ["127.0.0.1:2379", "10.0.0.1:2379"]
        );
        let err = parse_endpoints("127.0.0.1:2379,nope").unwrap_err();
        assert!(err.contains("\"nope\""), "{err}");
    }

    #[test]
    fn an_empty_authority_means_the_given_client_or_the_default_endpoint() {
        let source = EtcdSource::from_authority("", None).unwrap();
        assert_eq!(source.authority(), DEFAULT_ENDPOINT);
        let source = EtcdSource::from_authority("h:1,h:2", None).unwrap();
        assert_eq!(source.to_string(), "etcd at h:1,h:2");
    }
}

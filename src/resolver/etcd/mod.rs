//! The `etcd` resolver: addresses kept under a key prefix in etcd, followed
//! with a watch.
//!
//! # Targets
//!
//! Target semantics follow grpc-go's etcd resolver: the endpoint is the path
//! without its first `/`, and the key prefix is the endpoint plus `/`.
//!
//! | target | keys watched |
//! |---|---|
//! | `etcd://127.0.0.1:2379/foo/bar/svc` | `foo/bar/svc/...` (etcd's Go naming layout) |
//! | `etcd://127.0.0.1:2379//grpclb/simple_grpc` | `/grpclb/simple_grpc/...` (the classic layout) |
//!
//! The authority lists etcd endpoints, `host:port[,host:port...]`. An empty
//! authority (`etcd:///foo/bar/svc`) uses the client given to
//! [`EtcdResolverBuilder::with_client`], else `127.0.0.1:2379`.
//!
//! # Values
//!
//! Each key under the prefix holds one address: etcd's Go naming JSON,
//! `{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"weight":2}}` (missing
//! fields allowed; `Metadata.weight` becomes the address's weight and
//! `Metadata` its metadata), or a plain `host:port`. A value that is
//! neither is skipped with a warning naming the key; it never empties or
//! poisons the set.
//!
//! # State machine
//!
//! One task per resolver, stopped when the resolver is dropped or the
//! channel goes away:
//!
//! ```text
//! SNAPSHOT: GET prefix ─▶ push the full set (an empty set too) ─▶ WATCH
//! WATCH from revision+1: each event folds into the set ─▶ push the full set
//!   broken stream, no leader, etcd down ─▶ report the error, back off ─▶ WATCH
//!                                          (resume from the last revision seen)
//!   canceled: compacted past our revision ─▶ SNAPSHOT (replaces the set)
//!   the store's revision went back (etcd's data was reset) ─▶ SNAPSHOT
//! ```
//!
//! While etcd is unreachable the channel keeps serving the last set it got
//! (errors never empty it). Clients this resolver connects itself require a
//! leader (`hasleader` metadata), so a member cut off from its cluster
//! fails the watch and the next attempt can reach a healthy member; a client
//! given with [`with_client`](EtcdResolverBuilder::with_client) should be
//! connected with `ConnectOptions::with_require_leader(true)` for the same
//! effect. `resolve_now` is ignored: the watch is already live.

mod values;
mod watch;

use std::fmt;

use etcd_client::Client;

use super::{Resolver, ResolverBuilder, UpdateSink};
use crate::etcd::{EtcdRetryConfig, EtcdSource};
use crate::{Error, Target};

/// Builds resolvers for `etcd://[host:port,...]/<service>` targets.
///
/// ```no_run
/// # async fn run() -> Result<(), tonic_balance::Error> {
/// use std::time::Duration;
/// use tonic_balance::BalancedChannel;
///
/// // Keys /grpclb/simple_grpc/<addr>, values "host:port" (or Go naming JSON).
/// let channel = BalancedChannel::builder("etcd://127.0.0.1:2379//grpclb/simple_grpc")
///     .balancer("round_robin")
///     .connect(Duration::from_secs(5))
///     .await?;
/// # drop(channel); Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdResolverBuilder {
    client: Option<Client>,
    retry: EtcdRetryConfig,
}

impl EtcdResolverBuilder {
    /// A builder that connects to the target's endpoints (or
    /// `127.0.0.1:2379`), with the default [`EtcdRetryConfig`].
    pub fn new() -> Self {
        EtcdResolverBuilder {
            client: None,
            retry: EtcdRetryConfig::default(),
        }
    }

    /// Uses `client` for targets with an empty authority (`etcd:///svc`).
    pub fn with_client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The time limit of each etcd request (reading the prefix, creating
    /// the watch) and the delays before a broken watch is retried. The
    /// retry jitter is drawn from the channel builder's `rng_seed` when set.
    /// Building the resolver fails with [`ErrorKind::Config`](crate::ErrorKind::Config) for a backoff
    /// outside [`BackoffConfig`](crate::subchannel::BackoffConfig)'s ranges.
    pub fn with_retry(mut self, retry: EtcdRetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// The key prefix a target watches: its endpoint plus `/`.
    ///
    /// ```
    /// use tonic_balance::resolver::EtcdResolverBuilder;
    ///
    /// let classic = "etcd://127.0.0.1:2379//grpclb/simple_grpc".parse().unwrap();
    /// assert_eq!(EtcdResolverBuilder::key_prefix(&classic), "/grpclb/simple_grpc/");
    /// let go = "etcd://127.0.0.1:2379/foo/bar/svc".parse().unwrap();
    /// assert_eq!(EtcdResolverBuilder::key_prefix(&go), "foo/bar/svc/");
    /// ```
    pub fn key_prefix(target: &Target) -> String {
        format!("{}/", target.endpoint())
    }
}

impl Default for EtcdResolverBuilder {
    fn default() -> Self {
        EtcdResolverBuilder::new()
    }
}

impl fmt::Debug for EtcdResolverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdResolverBuilder")
            .field("client", &self.client.as_ref().map(|_| "Client"))
            .field("retry", &self.retry)
            .finish()
    }
}

impl ResolverBuilder for EtcdResolverBuilder {
    fn scheme(&self) -> &str {
        "etcd"
    }

    fn build(&self, target: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        if target.endpoint().trim_matches('/').is_empty() {
            return Err(Error::invalid_target(
                target.as_str(),
                "the service name is empty (want etcd://host:port/service or etcd://host:port//grpclb/service)",
            ));
        }
        self.retry.backoff.check("etcd resolver retry backoff")?;
        let source = EtcdSource::from_authority(target.authority(), self.client.as_ref())
            .map_err(|why| Error::invalid_target(target.as_str(), why))?;
        let task = watch::WatchTask::new(
            target.as_str(),
            Self::key_prefix(target),
            source,
            sink,
            self.retry,
        );
        Ok(Box::new(EtcdResolver {
            task: tokio::spawn(task.run()),
        }))
    }
}

/// The running resolver: dropping it stops the watch.
struct EtcdResolver {
    task: tokio::task::JoinHandle<()>,
}

impl Resolver for EtcdResolver {}

impl Drop for EtcdResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn targets_without_a_service_or_with_bad_endpoints_are_rejected() {
        let builder = EtcdResolverBuilder::default();
        for (target, want) in [
            ("etcd://127.0.0.1:2379/", "service name is empty"),
            ("etcd://127.0.0.1:2379//", "service name is empty"),
            ("etcd://127.0.0.1:x/svc", "bad etcd endpoint"),
        ] {
            let (sink, _rx) = UpdateSink::channel();
            let err = match builder.build(&target.parse().unwrap(), sink) {
                Ok(_) => panic!("{target} accepted"),
                Err(e) => e,
            };
            assert!(err.is_invalid_target(), "{err}");
            assert!(err.to_string().contains(want), "{target}: {err}");
        }
    }
}

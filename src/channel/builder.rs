//! Building a [`BalancedChannel`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::control::{Control, SubchannelTable};
use super::{BalancedChannel, CallDefaults, Shared};
use crate::balancer::{
    BalancerBuilder, BalancerRegistry, BuildOptions, GracefulSwitch, LbPolicy, PICK_FIRST,
};
use crate::picker::{PickerCell, QueuePicker};
use crate::resolver::{builder_for, ResolverBuilder, ResolverRegistry, UpdateSink};
use crate::service_config::ServiceConfig;
use crate::subchannel::{BackoffConfig, ConnectConfig};
use crate::{ConnectivityState, Error, ErrorKind, Target};

/// Options for a [`BalancedChannel`]. Every option has gRPC's default.
///
/// ```no_run
/// # async fn run() -> Result<(), tonic_balance::Error> {
/// use std::time::Duration;
/// use tonic_balance::BalancedChannel;
///
/// let channel = BalancedChannel::builder("static:///127.0.0.1:50051,127.0.0.1:50052")
///     .service_config(r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#)
///     .wait_for_ready(true)
///     .timeout(Duration::from_secs(2))
///     .connect(Duration::from_secs(5)) // build, then wait until READY
///     .await?;
/// # drop(channel); Ok(()) }
/// ```
pub struct BalancedChannelBuilder {
    target: String,
    resolver_builder: Option<Arc<dyn ResolverBuilder>>,
    resolvers: Option<ResolverRegistry>,
    balancers: Option<BalancerRegistry>,
    policy: PolicyChoice,
    defaults: CallDefaults,
    connect: ConnectConfig,
    authority: Option<String>,
    rng_seed: Option<u64>,
}

enum PolicyChoice {
    Default,
    Name(String),
    Builder(Arc<dyn BalancerBuilder>),
    ServiceConfig(String),
}

impl BalancedChannelBuilder {
    pub(crate) fn new(target: impl Into<String>) -> Self {
        BalancedChannelBuilder {
            target: target.into(),
            resolver_builder: None,
            resolvers: None,
            balancers: None,
            policy: PolicyChoice::Default,
            defaults: CallDefaults {
                wait_for_ready: false,
                queue_timeout: Duration::from_secs(20),
                timeout: None,
            },
            connect: ConnectConfig::default(),
            authority: None,
            rng_seed: None,
        }
    }

    /// Resolves the target with this builder when its scheme matches,
    /// whatever the registry says (a per-channel custom scheme).
    pub fn resolver_builder(mut self, builder: impl ResolverBuilder) -> Self {
        self.resolver_builder = Some(Arc::new(builder));
        self
    }

    /// Uses this registry of schemes instead of the process-wide one.
    pub fn resolver_registry(mut self, registry: ResolverRegistry) -> Self {
        self.resolvers = Some(registry);
        self
    }

    /// Uses this registry of policies instead of the process-wide one.
    pub fn balancer_registry(mut self, registry: BalancerRegistry) -> Self {
        self.balancers = Some(registry);
        self
    }

    /// The default policy by name: `pick_first` (the default) or
    /// `round_robin`, or any registered one. A service config from the
    /// resolver overrides it.
    pub fn balancer(mut self, name: impl Into<String>) -> Self {
        self.policy = PolicyChoice::Name(name.into());
        self
    }

    /// The default policy as a builder of your own.
    pub fn balancer_builder(mut self, builder: impl BalancerBuilder) -> Self {
        self.policy = PolicyChoice::Builder(Arc::new(builder));
        self
    }

    /// The default policy from gRPC service-config JSON, e.g.
    /// `{"loadBalancingConfig":[{"round_robin":{}}]}` (any gRPC service
    /// config: its other fields are kept as data). A config that is not
    /// valid JSON, selects no known policy, or whose policy rejects its
    /// config makes [`build`](Self::build) fail with an error saying so.
    pub fn service_config(mut self, json: impl Into<String>) -> Self {
        self.policy = PolicyChoice::ServiceConfig(json.into());
        self
    }

    /// Whether calls wait for a READY backend instead of failing fast while
    /// the channel is TRANSIENT_FAILURE (default false, as in gRPC).
    pub fn wait_for_ready(mut self, enabled: bool) -> Self {
        self.defaults.wait_for_ready = enabled;
        self
    }

    /// How long a call without a deadline may wait for a backend before it
    /// fails `UNAVAILABLE` (default 20 s).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.queue_timeout = timeout;
        self
    }

    /// A deadline for every call; a shorter `grpc-timeout` on a call wins.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.defaults.timeout = Some(timeout);
        self
    }

    /// Reconnect backoff and minimum connect timeout (gRPC's defaults).
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.connect.backoff = backoff;
        self
    }

    /// The minimum time a connection attempt may take (default 20 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect.backoff.min_connect_timeout = timeout;
        self
    }

    /// Sends HTTP/2 pings every `interval` and drops a connection whose
    /// ping is not answered within `timeout`.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.connect.keepalive_interval = Some(interval);
        self.connect.keepalive_timeout = Some(timeout);
        self
    }

    /// Whether keepalive pings are sent while no call is open.
    pub fn keepalive_while_idle(mut self, enabled: bool) -> Self {
        self.connect.keepalive_while_idle = enabled;
        self
    }

    /// The `:authority` of every call (default: the backend's address).
    pub fn authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// Fixes the seed of every random choice (start index, shuffles,
    /// backoff jitter), for reproducible tests.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Builds the channel and starts resolving and connecting. Must be
    /// called inside a tokio runtime; errors name the bad target, scheme or
    /// policy.
    pub fn build(self) -> Result<BalancedChannel, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(
                ErrorKind::Config,
                "BalancedChannel must be built inside a tokio runtime",
            ));
        }
        let target = Target::parse(&self.target)?;
        let resolvers = self
            .resolvers
            .clone()
            .unwrap_or_else(ResolverRegistry::global);
        let resolver_builder = builder_for(&target, self.resolver_builder.as_ref(), &resolvers)?;
        let balancers = self
            .balancers
            .clone()
            .unwrap_or_else(BalancerRegistry::global);
        let default_policy = self.policy(&balancers)?;
        let seed = self.rng_seed.unwrap_or_else(rand::random);
        let balancer = GracefulSwitch::new(BuildOptions::new(target.clone(), seed));
        let mut connect = self.connect.clone();
        connect.rng_seed = seed;
        connect.authority = self.parse_authority()?;

        let (sink, resolver_rx) = UpdateSink::channel();
        let resolver = resolver_builder.build(&target, sink)?;
        let picker = Arc::new(PickerCell::new(
            ConnectivityState::Connecting,
            Arc::new(QueuePicker),
        ));
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let control = Control {
            target: target.clone(),
            resolver,
            resolver_rx,
            requests,
            balancer,
            policy: None,
            default_policy,
            balancers,
            table: SubchannelTable::new(Arc::new(connect), events_tx),
            events_rx,
            picker: picker.clone(),
            effects: Default::default(),
            failure: Default::default(),
        };
        tokio::spawn(control.run());
        Ok(BalancedChannel {
            shared: Arc::new(Shared {
                target,
                picker,
                requests: requests_tx,
                defaults: self.defaults,
            }),
        })
    }

    /// Builds the channel and waits until it is READY, at most `timeout`
    /// (grpc-go's blocking dial).
    pub async fn connect(self, timeout: Duration) -> Result<BalancedChannel, Error> {
        let channel = self.build()?;
        channel.wait_until_ready(timeout).await?;
        Ok(channel)
    }

    /// The default policy, with its config parsed (errors name the
    /// unknown policy or the bad config).
    fn policy(&self, registry: &BalancerRegistry) -> Result<LbPolicy, Error> {
        let empty = Value::Object(Default::default());
        match &self.policy {
            PolicyChoice::Default => registry.policy(PICK_FIRST, &empty),
            PolicyChoice::Name(name) => registry.policy(name, &empty),
            PolicyChoice::Builder(builder) => LbPolicy::parse(builder.clone(), &empty),
            PolicyChoice::ServiceConfig(json) => {
                match registry.select(&ServiceConfig::from_json(json)?)? {
                    Some(policy) => Ok(policy),
                    None => registry.policy(PICK_FIRST, &empty),
                }
            }
        }
    }

    fn parse_authority(&self) -> Result<Option<http::uri::Authority>, Error> {
        self.authority
            .as_deref()
            .map(|a| {
                a.parse().map_err(|e| {
                    Error::with_source(ErrorKind::Config, format!("invalid authority {a:?}"), e)
                })
            })
            .transpose()
    }
}

impl fmt::Debug for BalancedChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedChannelBuilder")
            .field("target", &self.target)
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

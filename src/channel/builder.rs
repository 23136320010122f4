//! Building a [`BalancedChannel`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::control::{health_service, Control, SubchannelTable};
use super::{BalancedChannel, CallDefaults, MethodCell, Shared};
use crate::balancer::{
    BalancerBuilder, BalancerRegistry, BuildOptions, GracefulSwitch, LbPolicy, PICK_FIRST,
};
use crate::picker::{PickerCell, QueuePicker};
use crate::resolver::{builder_for, ResolverBuilder, ResolverRegistry, UpdateSink};
use crate::service_config::{MethodTable, ServiceConfig};
use crate::subchannel::{BackoffConfig, ConnectConfig};
use crate::transport::{Connector, Io, TargetHost};
use crate::{ConnectivityState, Error, ErrorKind, Target};

/// gRFC A8: the shortest keepalive interval a client may use.
const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// What calls send as `user-agent`, after the user's own string.
const USER_AGENT: &str = concat!("grpc-rust-tonic-balance/", env!("CARGO_PKG_VERSION"));

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
    user_agent: Option<String>,
    rng_seed: Option<u64>,
    #[cfg(feature = "tls")]
    tls: Option<crate::transport::ClientTlsConfig>,
    #[cfg(feature = "otel")]
    meter: Option<opentelemetry::metrics::Meter>,
    #[cfg(feature = "otel")]
    methods: Vec<String>,
    #[cfg(feature = "channelz")]
    channelz: bool,
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
                user_agent: http::HeaderValue::from_static(USER_AGENT),
            },
            connect: ConnectConfig::default(),
            authority: None,
            user_agent: None,
            rng_seed: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "otel")]
            meter: None,
            #[cfg(feature = "otel")]
            methods: Vec::new(),
            #[cfg(feature = "channelz")]
            channelz: false,
        }
    }

    /// Lists the channel in gRPC's channelz (feature `channelz`, gRFC A14):
    /// it gets an id when built, [`ChannelzServer`](crate::channelz::ChannelzServer)
    /// shows it and its subchannels, and it leaves channelz when its last
    /// handle (and its last call) is dropped. Off by default.
    #[cfg(feature = "channelz")]
    pub fn channelz(mut self, enabled: bool) -> Self {
        self.channelz = enabled;
        self
    }

    /// Records gRPC's OpenTelemetry metrics (gRFC A66 per call, A94 per
    /// subchannel, A78 for pick_first and weighted_round_robin) with a
    /// meter named `tonic-balance`
    /// from `provider` (feature `otel`). Without it the channel records
    /// nothing. The instruments are listed in the README's
    /// "Observability" section.
    #[cfg(feature = "otel")]
    pub fn meter_provider(mut self, provider: &dyn opentelemetry::metrics::MeterProvider) -> Self {
        self.meter = Some(provider.meter("tonic-balance"));
        self
    }

    /// The methods whose name the per-call metrics record as `grpc.method`
    /// (`/package.Service/Method` or `package.Service/Method`); every other
    /// call is recorded as `other`, as gRFC A66 asks of methods the client
    /// did not register (an unbounded label would explode the metrics).
    #[cfg(feature = "otel")]
    pub fn metrics_methods<I, S>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.methods.extend(methods.into_iter().map(Into::into));
        self
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
    /// fails `UNAVAILABLE` (default 20 s). Any value is accepted; one
    /// longer than 30 years counts as 30 years (as do the channel's
    /// `timeout`, `connect_timeout` and `wait_until_ready`'s).
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.defaults.queue_timeout = timeout;
        self
    }

    /// A deadline for every call, from its start; a shorter `grpc-timeout`
    /// on a call wins. When this is the shorter, the call's `grpc-timeout`
    /// header is set to it, so the server learns the deadline (gRPC over
    /// HTTP/2, `Timeout`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.defaults.timeout = Some(timeout);
        self
    }

    /// Reconnect backoff and minimum connect timeout (default gRPC's, see
    /// [`BackoffConfig`] for the ranges [`build`](Self::build) checks).
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.connect.backoff = backoff;
        self
    }

    /// The least time a connection attempt is allowed before it is given
    /// up (gRPC's MIN_CONNECT_TIMEOUT, `connection-backoff.md`; default
    /// 20 s): each attempt gets the larger of this and the current backoff
    /// delay. Sets [`BackoffConfig::min_connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect.backoff.min_connect_timeout = timeout;
        self
    }

    /// Sends HTTP/2 pings every `interval` and drops a connection whose
    /// ping is not answered within `timeout` (gRFC A8; off by default). An
    /// interval below 10 s is raised to 10 s, with a warning, as gRFC A8
    /// requires. A server that answers with GOAWAY(ENHANCE_YOUR_CALM,
    /// "too_many_pings") doubles the interval of the channel's next
    /// connections.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        if interval < MIN_KEEPALIVE_INTERVAL {
            tracing::warn!(
                ?interval,
                "keepalive interval below gRPC's minimum of 10s: raised to 10s (gRFC A8)"
            );
        }
        self.connect.transport.keepalive_interval = Some(interval.max(MIN_KEEPALIVE_INTERVAL));
        self.connect.transport.keepalive_timeout = Some(timeout);
        self
    }

    /// Test knob: [`keepalive`](Self::keepalive) without gRPC's 10 s
    /// minimum, for tests that need a dead connection found in
    /// milliseconds. Never use it against a real server: gRPC servers
    /// close connections that ping this often.
    #[doc(hidden)]
    pub fn keepalive_without_minimum(mut self, interval: Duration, timeout: Duration) -> Self {
        self.connect.transport.keepalive_interval = Some(interval);
        self.connect.transport.keepalive_timeout = Some(timeout);
        self
    }

    /// Whether keepalive pings are sent while no call is open.
    pub fn keepalive_while_idle(mut self, enabled: bool) -> Self {
        self.connect.transport.keepalive_while_idle = enabled;
        self
    }

    /// The `:authority` of every call (default: the backend's address).
    pub fn authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// Dials every address with `connector` instead of the default one
    /// (TCP for `host:port`, unix sockets for `unix:/path` and
    /// `unix-abstract:name`): a tower `Service<http::Uri>` returning an
    /// `AsyncRead + AsyncWrite` IO, as tonic's
    /// `Endpoint::connect_with_connector` takes (an HTTP CONNECT or SOCKS
    /// proxy, vsock, an in-memory `tokio::io::duplex` in tests). The URI
    /// is `http://host:port` for a `host:port` address,
    /// `unix://localhost/path` for `unix:/path`,
    /// `unix-abstract://localhost/name` for `unix-abstract:name`. TLS, when
    /// set, runs on top of the IO. hyper-util's connectors return hyper's
    /// IO traits: wrap their IO in `hyper_util::rt::TokioIo`. A connector
    /// error fails the attempt like a refused connection (the subchannel
    /// backs off), with the error's text in the message.
    pub fn connector<C>(mut self, connector: C) -> Self
    where
        C: tower::Service<http::Uri> + Clone + Send + Sync + 'static,
        C::Response: Io,
        C::Error: Into<crate::transport::BoxError>,
        C::Future: Send + 'static,
    {
        self.connect.transport.connector = Some(Connector::new(connector));
        self
    }

    /// Connects with TLS (cargo feature `tls`): the certificate is
    /// verified for the target's host name, and calls use scheme `https`
    /// (see [`ClientTlsConfig`](crate::ClientTlsConfig) for the name rule).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: crate::transport::ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// How many HTTP/2 connections each subchannel keeps to its address
    /// (default 1). With n > 1 all n are opened when the subchannel
    /// connects, each reconnects on its own backoff, the subchannel is
    /// READY while any is, and a call takes the one with the fewest calls
    /// in flight that is below the server's SETTINGS_MAX_CONCURRENT_STREAMS.
    /// A lost connection (closed, GOAWAY) is replaced without failing the
    /// calls on the others. Use it for a service behind one virtual IP (a
    /// cloud load balancer, a Kubernetes ClusterIP) so that n connections
    /// reach it, or to spread one backend's calls over several
    /// connections on a many-core client. 0 is taken as 1.
    pub fn connections_per_address(mut self, n: usize) -> Self {
        self.connect.connections_per_address = n.max(1);
        self
    }

    /// The HTTP/2 stream flow-control window (SETTINGS_INITIAL_WINDOW_SIZE),
    /// in bytes; default 2 MiB, as tonic's `Channel` (hyper). BDP-based
    /// window growth (hyper's `http2_adaptive_window`) is not provided:
    /// set the windows for your bandwidth-delay product instead.
    ///
    /// # Errors
    ///
    /// [`build`](Self::build) fails with [`ErrorKind::Config`] naming the
    /// setting, the value and the range unless `bytes` is in
    /// 1..=2,147,483,647 (2^31-1, RFC 9113 §6.5.2 and §6.9.1; 0 would let
    /// the server send no data at all).
    pub fn initial_stream_window_size(mut self, bytes: u32) -> Self {
        self.connect.transport.http2.stream_window = bytes;
        self
    }

    /// The HTTP/2 connection flow-control window, in bytes; default 5 MiB,
    /// as tonic's `Channel` (hyper).
    ///
    /// # Errors
    ///
    /// [`build`](Self::build) fails with [`ErrorKind::Config`] naming the
    /// setting, the value and the range unless `bytes` is in
    /// 65,535..=2,147,483,647: a window never exceeds 2^31-1 (RFC 9113
    /// §6.9.1), and the connection's starts at 65,535 and can only grow
    /// (§6.9.2).
    pub fn initial_connection_window_size(mut self, bytes: u32) -> Self {
        self.connect.transport.http2.connection_window = bytes;
        self
    }

    /// The largest HTTP/2 frame the server may send
    /// (SETTINGS_MAX_FRAME_SIZE), in bytes; default 16 KiB (16,384).
    ///
    /// # Errors
    ///
    /// [`build`](Self::build) fails with [`ErrorKind::Config`] naming the
    /// setting, the value and the range unless `bytes` is in
    /// 16,384..=16,777,215 (RFC 9113 §6.5.2).
    pub fn max_frame_size(mut self, bytes: u32) -> Self {
        self.connect.transport.http2.max_frame_size = bytes;
        self
    }

    /// The largest response header list accepted
    /// (SETTINGS_MAX_HEADER_LIST_SIZE), in bytes as RFC 9113 §6.5.2 counts
    /// them (name + value + 32 per field); default 16 KiB, as tonic's
    /// `Channel` (hyper). A response whose headers or trailers exceed it
    /// fails its call.
    ///
    /// # Errors
    ///
    /// [`build`](Self::build) fails with [`ErrorKind::Config`] naming the
    /// setting, the value and the range when `bytes` is below 102: the
    /// smallest gRPC response headers (`:status: 200` and
    /// `content-type: application/grpc`) count 102 bytes, so a smaller
    /// limit fails every call.
    pub fn max_header_list_size(mut self, bytes: u32) -> Self {
        self.connect.transport.http2.max_header_list_size = bytes;
        self
    }

    /// TCP_NODELAY on every TCP connection (default on, as tonic).
    pub fn tcp_nodelay(mut self, enabled: bool) -> Self {
        self.connect.transport.socket.nodelay = enabled;
        self
    }

    /// TCP keepalive probes after `idle` without traffic (default off, as
    /// tonic).
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.connect.transport.socket.keepalive = idle;
        self
    }

    /// Connects from this local IP address (the port is the system's
    /// choice); only addresses of its family are dialled.
    pub fn local_address(mut self, address: Option<std::net::IpAddr>) -> Self {
        self.connect.transport.socket.local_address = address;
        self
    }

    /// Your own `user-agent` string: calls send
    /// `<yours> grpc-rust-tonic-balance/<version>` (gRPC's user-agent
    /// convention), or only the latter without one (an empty or blank
    /// string counts as none). A request that already
    /// carries a `user-agent` (set by a layer) keeps it.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// Fixes the seed of every random choice (start index, shuffles,
    /// backoff jitter), for reproducible tests.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Builds the channel and starts resolving and connecting. Must be
    /// called inside a tokio runtime; errors name the bad target, scheme,
    /// policy, or the setting out of its range (HTTP/2 sizes, backoff).
    pub fn build(self) -> Result<BalancedChannel, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(
                ErrorKind::Config,
                "BalancedChannel must be built inside a tokio runtime",
            ));
        }
        super::checks::http2(&self.connect.transport.http2)?;
        self.connect.backoff.check("backoff")?;
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
        #[allow(unused_mut)]
        let mut options = BuildOptions::new(target.clone(), seed);
        #[cfg(feature = "otel")]
        if let Some(meter) = &self.meter {
            options = options.with_meter(meter.clone());
        }
        let balancer = GracefulSwitch::new(options);
        let mut defaults = self.defaults.clone();
        if let Some(yours) = self
            .user_agent
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            defaults.user_agent = format!("{yours} {USER_AGENT}").parse().map_err(|e| {
                Error::with_source(
                    ErrorKind::Config,
                    format!("invalid user agent {yours:?}"),
                    e,
                )
            })?;
        }
        let default_health = self.default_health()?;
        let default_methods = self.default_methods()?;
        let methods = Arc::new(MethodCell::new(default_methods.clone()));
        let mut connect = self.connect.clone();
        connect.rng_seed = seed;
        connect.health = Default::default();
        connect
            .health
            .set(health_service(default_health.clone(), &default_policy));
        connect.transport.authority = self.parse_authority()?;
        connect.transport.target_host = TargetHost::from_target(&target);
        #[allow(unused_mut)]
        let mut call_metrics = crate::metrics::CallMetrics::default();
        #[cfg(feature = "otel")]
        if let Some(meter) = &self.meter {
            connect.metrics = crate::metrics::SubchannelMetrics::new(meter, &target);
            call_metrics = crate::metrics::CallMetrics::new(meter, &target, &self.methods);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            connect.transport.tls = Some(tls.build()?);
        }

        let (sink, resolver_rx) = UpdateSink::seeded_channel(seed);
        let resolver = resolver_builder.build(&target, sink)?;
        let picker = Arc::new(PickerCell::new(
            ConnectivityState::Connecting,
            Arc::new(QueuePicker),
        ));
        picker.set_policy(default_policy.name());
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let states = Arc::new(watch::channel(ConnectivityState::Connecting).0);
        let control = Control {
            target: target.clone(),
            resolver,
            resolver_rx,
            requests,
            balancer,
            policy: None,
            default_policy,
            default_health,
            default_methods,
            methods: methods.clone(),
            balancers,
            table: SubchannelTable::new(Arc::new(connect), events_tx),
            events_rx,
            picker: picker.clone(),
            effects: Default::default(),
            failure: Default::default(),
            states: states.clone(),
            resolved: Default::default(),
        };
        // One span per channel: every event of its control task and its
        // subchannels' connection tasks carries the target and the policy.
        let span = tracing::info_span!(
            target: "tonic_balance::channel",
            "channel",
            target = %target,
            policy = control.default_policy.name()
        );
        tokio::spawn(control.run().instrument(span));
        #[cfg(feature = "channelz")]
        let channelz = self.channelz;
        Ok(BalancedChannel {
            shared: Arc::new_cyclic(|_shared| Shared {
                target,
                picker,
                requests: requests_tx,
                defaults,
                methods,
                states,
                metrics: call_metrics,
                #[cfg(feature = "channelz")]
                _channelz: channelz.then(|| crate::channelz::Registration::new(_shared.clone())),
            }),
        })
    }

    /// Builds the channel and waits until it is READY, at most `timeout`
    /// (grpc-go's blocking dial), with
    /// [`wait_until_ready`](BalancedChannel::wait_until_ready).
    ///
    /// Not for a policy that connects only when calls arrive (`ring_hash`,
    /// gRFC A42): it leaves the channel IDLE until the first call, so this
    /// fails at `timeout` (`... (state IDLE: the policy, ring_hash, did
    /// not connect when asked; ...)`). Use
    /// [`build`](Self::build) with it; the first call connects.
    ///
    /// # Errors
    ///
    /// [`build`](Self::build)'s errors, then `wait_until_ready`'s: one
    /// with [`Error::is_timeout`] naming the state and why at the
    /// deadline.
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

    /// The health service name of the builder's service config, if any.
    fn default_health(&self) -> Result<Option<Arc<str>>, Error> {
        let PolicyChoice::ServiceConfig(json) = &self.policy else {
            return Ok(None);
        };
        let config = ServiceConfig::from_json(json)?;
        Ok(config.health_check_service_name().map(Arc::from))
    }

    /// The method configs of the builder's service config (empty
    /// without one): used while the resolver gives no service config.
    fn default_methods(&self) -> Result<Arc<MethodTable>, Error> {
        let PolicyChoice::ServiceConfig(json) = &self.policy else {
            return Ok(Arc::default());
        };
        Ok(ServiceConfig::from_json(json)?.methods().clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keepalive_interval_below_ten_seconds_is_raised_to_ten() {
        let timeout = Duration::from_secs(20);
        let short = BalancedChannelBuilder::new("t").keepalive(Duration::from_secs(1), timeout);
        assert_eq!(
            short.connect.transport.keepalive_interval,
            Some(Duration::from_secs(10))
        );
        let long = BalancedChannelBuilder::new("t").keepalive(Duration::from_secs(60), timeout);
        assert_eq!(
            long.connect.transport.keepalive_interval,
            Some(Duration::from_secs(60))
        );
    }
}

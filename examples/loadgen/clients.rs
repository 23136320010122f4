//! The clients compared, each making unary `proto.Simple/Route` calls.
//!
//! - `tonic-direct`: one `tonic::transport::Channel` to backend 0;
//! - `tonic-balance_list`: `Channel::balance_list` over every backend;
//! - `ours-round_robin` / `ours-pick_first`: a `BalancedChannel` on
//!   `static:///a,b,c`;
//! - `ours-round_robin-pool4` (only when asked for): the same with 4
//!   connections per backend (`connections_per_address(4)`);
//! - `ours-least_request` (only when asked for): a `BalancedChannel` with
//!   `least_request` (gRFC A48, two random choices);
//! - `ours-weighted_round_robin` (only when asked for): a `BalancedChannel`
//!   with `weighted_round_robin` (gRFC A58). The loadgen backends send no
//!   ORCA reports and the static target gives no weights, so every backend
//!   has the mean weight: this measures the policy's own cost (its EDF
//!   scheduler), with round robin's spread;
//! - `ours-ring_hash` (only when asked for): a `BalancedChannel` with
//!   `ring_hash` (gRFC A42) and `requestHashHeader` `x-loadgen-key`
//!   (gRFC A76); every call sends a different key (a counter shared by the
//!   workers), so calls spread over all backends and the cost measured
//!   includes hashing the header and the ring's binary search;
//! - `ours-round_robin-outlier` (only when asked for): `ours-round_robin`
//!   under `outlier_detection_experimental` (gRFC A50) with
//!   failure-percentage ejection: what counting every call's outcome costs;
//! - `ours-pick_first-method_config` (only when asked for): `ours-pick_first`
//!   with a service config whose `methodConfig` matches every call (only
//!   `waitForReady: false`): what the per-call method-config lookup costs;
//! - `ours-round_robin-otel` (only when asked for; build with `--features
//!   otel`): `ours-round_robin` recording gRPC's OpenTelemetry metrics into
//!   an SDK meter provider (in memory, never exported during the run);
//! - `hyper-round_robin`: one raw hyper HTTP/2 connection per backend and a
//!   shared counter that rotates over them: no balancer, no tower, no tonic
//!   codec; the gRPC frame is encoded once with prost. The ceiling for a
//!   client that sends through hyper.
//! - `h2-round_robin`: the same over raw `h2` connections, each call sending
//!   its HEADERS and DATA from its own task: the ceiling for a client with
//!   no dispatch task at all (what `BalancedChannel` does since it moved
//!   from hyper to `h2`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use tonic_balance::{BalancedChannel, BalancedChannelBuilder};

use crate::proto::simple_client::SimpleClient;
use crate::proto::{SimpleRequest, SimpleResponse};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which client to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    TonicDirect,
    TonicBalanceList,
    OursRoundRobin,
    OursPickFirst,
    HyperRoundRobin,
    H2RoundRobin,
    OursPool,
    OursLeastRequest,
    OursWeightedRoundRobin,
    OursRingHash,
    OursOtel,
    OursOutlier,
    OursMethodConfig,
}

/// TLS of a `--tls on` run: a certificate for `localhost` and `127.0.0.1`
/// (self-signed, made at start-up with rcgen) that every client trusts.
pub struct TlsMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Set when the run uses TLS.
pub static TLS: OnceLock<TlsMaterial> = OnceLock::new();

impl TlsMaterial {
    pub fn generate() -> Result<TlsMaterial, BoxError> {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certified = rcgen::generate_simple_self_signed(names)?;
        Ok(TlsMaterial {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    }
}

impl Kind {
    /// The default clients (the first six of [`Kind::EVERY`]), in the
    /// order of a throughput round.
    pub const ALL: &'static [Kind] = Kind::EVERY.split_at(6).0;

    pub fn name(self) -> &'static str {
        match self {
            Kind::TonicDirect => "tonic-direct",
            Kind::TonicBalanceList => "tonic-balance_list",
            Kind::OursRoundRobin => "ours-round_robin",
            Kind::OursPickFirst => "ours-pick_first",
            Kind::HyperRoundRobin => "hyper-round_robin",
            Kind::H2RoundRobin => "h2-round_robin",
            Kind::OursPool => "ours-round_robin-pool4",
            Kind::OursLeastRequest => "ours-least_request",
            Kind::OursWeightedRoundRobin => "ours-weighted_round_robin",
            Kind::OursRingHash => "ours-ring_hash",
            Kind::OursOtel => "ours-round_robin-otel",
            Kind::OursOutlier => "ours-round_robin-outlier",
            Kind::OursMethodConfig => "ours-pick_first-method_config",
        }
    }

    /// Every client `--clients` accepts, `--help` lists and the
    /// unknown-client error names: the default six first.
    pub const EVERY: [Kind; 13] = [
        Kind::TonicDirect,
        Kind::TonicBalanceList,
        Kind::OursRoundRobin,
        Kind::OursPickFirst,
        Kind::HyperRoundRobin,
        Kind::H2RoundRobin,
        Kind::OursPool,
        Kind::OursLeastRequest,
        Kind::OursWeightedRoundRobin,
        Kind::OursRingHash,
        Kind::OursOtel,
        Kind::OursOutlier,
        Kind::OursMethodConfig,
    ];

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::EVERY.into_iter().find(|k| k.name() == name)
    }

    /// The width of the client column: the longest client name.
    pub fn name_width() -> usize {
        Kind::EVERY
            .iter()
            .map(|k| k.name().len())
            .max()
            .unwrap_or(0)
    }
}

/// Records the channel's metrics into an SDK meter provider that keeps
/// them in memory (its reader exports once a minute, to memory).
#[cfg(feature = "otel")]
fn with_metrics(builder: BalancedChannelBuilder) -> Result<BalancedChannelBuilder, BoxError> {
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
    static PROVIDER: OnceLock<SdkMeterProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| {
        let reader = PeriodicReader::builder(InMemoryMetricExporter::default()).build();
        SdkMeterProvider::builder().with_reader(reader).build()
    });
    Ok(builder
        .meter_provider(provider)
        .metrics_methods(["/proto.Simple/Route"]))
}

#[cfg(not(feature = "otel"))]
fn with_metrics(_: BalancedChannelBuilder) -> Result<BalancedChannelBuilder, BoxError> {
    Err("ours-round_robin-otel needs --features otel".into())
}

/// A connected client; clone one per worker.
#[derive(Clone)]
pub enum Client {
    Tonic(SimpleClient<Channel>),
    Ours(SimpleClient<BalancedChannel>),
    /// `ours-ring_hash`: every call carries a new [`RING_HASH_HEADER`].
    OursKeyed(SimpleClient<BalancedChannel>),
    Hyper(Arc<HyperRoundRobin>),
    H2(Arc<H2RoundRobin>),
}

/// What a call reports: the index of the backend that served it.
pub type Outcome = Result<usize, String>;

const DATA: &str = "loadgen";

/// The header `ours-ring_hash` hashes (its `requestHashHeader`).
const RING_HASH_HEADER: &str = "x-loadgen-key";

/// The next call's ring hash key: a counter shared by every worker.
static NEXT_KEY: AtomicUsize = AtomicUsize::new(0);

/// `ours-ring_hash`'s service config.
const RING_HASH_CONFIG: &str =
    r#"{"loadBalancingConfig":[{"ring_hash":{"requestHashHeader":"x-loadgen-key"}}]}"#;

/// `ours-pick_first-method_config`'s service config: a methodConfig that
/// matches every call (service-wide entry) and sets `waitForReady: false`
/// (the channel's default anyway), so the run measures the lookup by path
/// and nothing else (a `timeout` would add a timer per call, as a call's
/// own deadline does).
const METHOD_CONFIG: &str = r#"{"loadBalancingConfig":[{"pick_first":{}}],
    "methodConfig":[{"name":[{"service":"proto.Simple"}],"waitForReady":false}]}"#;

/// `ours-round_robin-outlier`'s policy: A50's failure-percentage ejection
/// (its defaults, every 10 s) over round_robin. The loadgen backends do not
/// fail, so nothing is ejected: the run measures the counting.
const OUTLIER_CONFIG: &str = r#"{"loadBalancingConfig": [{"outlier_detection_experimental": {
    "failurePercentageEjection": {},
    "childPolicy": [{"round_robin": {}}]}}]}"#;

impl Client {
    /// Connects `kind` to the backends at `addrs`, waiting (at most 5 s)
    /// until it can send.
    pub async fn connect(kind: Kind, addrs: &[SocketAddr]) -> Result<Client, BoxError> {
        let tls = TLS.get();
        let endpoint = |a: &SocketAddr| -> Result<Endpoint, BoxError> {
            let Some(tls) = tls else {
                return Ok(Endpoint::from_shared(format!("http://{a}"))?);
            };
            let config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.cert_pem))
                .domain_name("localhost");
            Ok(Endpoint::from_shared(format!("https://{a}"))?.tls_config(config)?)
        };
        let static_target = || {
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            format!("static:///{}", list.join(","))
        };
        let wait = Duration::from_secs(5);
        Ok(match kind {
            Kind::TonicDirect => {
                let first = addrs.first().ok_or("no backend")?;
                Client::Tonic(SimpleClient::new(endpoint(first)?.connect().await?))
            }
            Kind::TonicBalanceList => {
                let list = addrs.iter().map(endpoint).collect::<Result<Vec<_>, _>>()?;
                Client::Tonic(SimpleClient::new(Channel::balance_list(list.into_iter())))
            }
            Kind::OursRoundRobin
            | Kind::OursPickFirst
            | Kind::OursPool
            | Kind::OursLeastRequest
            | Kind::OursWeightedRoundRobin
            | Kind::OursRingHash
            | Kind::OursOtel
            | Kind::OursMethodConfig => {
                let policy = match kind {
                    Kind::OursPickFirst | Kind::OursMethodConfig => "pick_first",
                    Kind::OursLeastRequest => "least_request",
                    Kind::OursWeightedRoundRobin => "weighted_round_robin",
                    _ => "round_robin",
                };
                let pool = if kind == Kind::OursPool { 4 } else { 1 };
                let builder = BalancedChannel::builder(static_target())
                    .balancer(policy)
                    .connections_per_address(pool);
                let builder = match kind {
                    Kind::OursOtel => with_metrics(builder)?,
                    Kind::OursRingHash => builder.service_config(RING_HASH_CONFIG),
                    Kind::OursMethodConfig => builder.service_config(METHOD_CONFIG),
                    _ => builder,
                };
                let builder = with_tls(builder, tls)?;
                if kind == Kind::OursRingHash {
                    // ring_hash stays IDLE until calls arrive (it connects
                    // lazily, gRFC A42): the first calls wait for it.
                    Client::OursKeyed(SimpleClient::new(builder.build()?))
                } else {
                    Client::Ours(SimpleClient::new(builder.connect(wait).await?))
                }
            }
            Kind::OursOutlier => {
                let builder =
                    BalancedChannel::builder(static_target()).service_config(OUTLIER_CONFIG);
                let channel = with_tls(builder, tls)?.connect(wait).await?;
                Client::Ours(SimpleClient::new(channel))
            }
            Kind::HyperRoundRobin | Kind::H2RoundRobin if tls.is_some() => {
                return Err(format!("{} has no TLS", kind.name()).into())
            }
            Kind::HyperRoundRobin => {
                Client::Hyper(Arc::new(HyperRoundRobin::connect(addrs).await?))
            }
            Kind::H2RoundRobin => Client::H2(Arc::new(H2RoundRobin::connect(addrs).await?)),
        })
    }

    /// One `Route` call.
    pub async fn call(&mut self) -> Outcome {
        let request = || SimpleRequest {
            data: DATA.to_owned(),
        };
        let code = match self {
            Client::Tonic(c) => c.route(request()).await.map(|r| r.into_inner().code),
            Client::Ours(c) => c.route(request()).await.map(|r| r.into_inner().code),
            Client::OursKeyed(c) => {
                let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
                let mut call = tonic::Request::new(request());
                let value = tonic::metadata::MetadataValue::from(key);
                call.metadata_mut().insert(RING_HASH_HEADER, value);
                c.route(call).await.map(|r| r.into_inner().code)
            }
            Client::Hyper(h) => return h.call().await,
            Client::H2(h) => return h.call().await,
        };
        match code {
            Ok(code) => usize::try_from(code).map_err(|_| format!("bad backend index {code}")),
            Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// TLS on our channel, trusting the run's certificate.
#[cfg(feature = "tls")]
fn with_tls(
    builder: tonic_balance::BalancedChannelBuilder,
    tls: Option<&TlsMaterial>,
) -> Result<tonic_balance::BalancedChannelBuilder, BoxError> {
    Ok(match tls {
        Some(tls) => {
            builder.tls(tonic_balance::ClientTlsConfig::new().ca_certificate(tls.cert_pem.clone()))
        }
        None => builder,
    })
}

#[cfg(not(feature = "tls"))]
fn with_tls(
    builder: tonic_balance::BalancedChannelBuilder,
    tls: Option<&TlsMaterial>,
) -> Result<tonic_balance::BalancedChannelBuilder, BoxError> {
    match tls {
        Some(_) => Err("--tls on needs the crate's tls feature (--features tls)".into()),
        None => Ok(builder),
    }
}

/// One raw HTTP/2 connection per backend (`S` is its sender), strict
/// rotation over them, and the pre-encoded `Route` request.
struct Rotation<S> {
    backends: Vec<(S, http::Uri)>,
    next: AtomicUsize,
    frame: Bytes,
}

impl<S> Rotation<S> {
    /// Connects to every backend with `handshake` (which also spawns the
    /// connection's task).
    async fn connect<F, Fut>(addrs: &[SocketAddr], handshake: F) -> Result<Rotation<S>, BoxError>
    where
        F: Fn(tokio::net::TcpStream) -> Fut,
        Fut: std::future::Future<Output = Result<S, BoxError>>,
    {
        let mut backends = Vec::new();
        for addr in addrs {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let sender = handshake(tcp).await?;
            let uri = format!("http://{addr}/proto.Simple/Route").parse()?;
            backends.push((sender, uri));
        }
        if backends.is_empty() {
            return Err("no backend".into());
        }
        Ok(Rotation {
            backends,
            next: AtomicUsize::new(0),
            frame: request_frame()?,
        })
    }

    /// The next backend's sender and a `Route` request for it.
    fn next<B>(&self, body: B) -> Result<(&S, http::Request<B>), String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        let (sender, uri) = &self.backends[i];
        let request = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(body)
            .map_err(|e| e.to_string())?;
        Ok((sender, request))
    }
}

/// Raw hyper HTTP/2, strict rotation over one connection per backend.
pub struct HyperRoundRobin(Rotation<SendRequest<Full<Bytes>>>);

impl HyperRoundRobin {
    async fn connect(addrs: &[SocketAddr]) -> Result<HyperRoundRobin, BoxError> {
        let rotation = Rotation::connect(addrs, |tcp| async move {
            let (sender, connection) =
                http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
            tokio::spawn(connection);
            Ok(sender)
        })
        .await?;
        Ok(HyperRoundRobin(rotation))
    }

    async fn call(&self) -> Outcome {
        let (sender, request) = self.0.next(Full::new(self.0.frame.clone()))?;
        let response = sender
            .clone()
            .send_request(request)
            .await
            .map_err(|e| format!("hyper: {e}"))?;
        let (parts, body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(format!("HTTP status {}", parts.status));
        }
        let body = body
            .collect()
            .await
            .map_err(|e| format!("hyper body: {e}"))?;
        let status = body
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .map(|v| v.as_bytes().to_vec());
        reply(status, &body.to_bytes())
    }
}

/// The one `Route` request every raw client sends, as a gRPC frame.
fn request_frame() -> Result<Bytes, BoxError> {
    let message = SimpleRequest {
        data: DATA.to_owned(),
    };
    let mut frame = BytesMut::with_capacity(5 + message.encoded_len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.encoded_len())?);
    message.encode(&mut frame)?;
    Ok(frame.freeze())
}

/// The backend index in a raw client's reply, given its `grpc-status`.
fn reply(status: Option<Vec<u8>>, data: &[u8]) -> Outcome {
    if status.as_deref() != Some(b"0") {
        return Err(format!("grpc-status {status:?}"));
    }
    let reply = SimpleResponse::decode(data.get(5..).ok_or("short gRPC frame")?)
        .map_err(|e| format!("decode: {e}"))?;
    usize::try_from(reply.code).map_err(|_| format!("bad backend index {}", reply.code))
}

/// Raw `h2`, strict rotation over one connection per backend; each call
/// opens its stream and sends its one DATA frame from its own task.
pub struct H2RoundRobin(Rotation<h2::client::SendRequest<Bytes>>);

impl H2RoundRobin {
    async fn connect(addrs: &[SocketAddr]) -> Result<H2RoundRobin, BoxError> {
        let rotation = Rotation::connect(addrs, |tcp| async move {
            let (sender, connection) = h2::client::handshake(tcp).await?;
            tokio::spawn(connection);
            Ok(sender)
        })
        .await?;
        Ok(H2RoundRobin(rotation))
    }

    async fn call(&self) -> Outcome {
        let (sender, request) = self.0.next(())?;
        let h2_error = |e: h2::Error| format!("h2: {e}");
        let mut sender = sender.clone().ready().await.map_err(h2_error)?;
        let (response, mut stream) = sender.send_request(request, false).map_err(h2_error)?;
        stream
            .send_data(self.0.frame.clone(), true)
            .map_err(h2_error)?;
        let (parts, mut body) = response.await.map_err(h2_error)?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(format!("HTTP status {}", parts.status));
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2_error)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(h2_error)?;
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .map(|v| v.as_bytes().to_vec());
        reply(status, &data)
    }
}

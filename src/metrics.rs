//! OpenTelemetry metrics with gRPC's instrument names (cargo feature
//! `otel`), so dashboards built for grpc-go and grpc-java work unchanged.
//!
//! A channel records only when given a meter provider
//! (`BalancedChannelBuilder::meter_provider`); without one, or without the
//! feature, every hook below is an empty inline function on an empty
//! struct and the request path does not change.
//!
//! **Subchannel instruments** (gRFC A94), recorded by the subchannels'
//! connection tasks, once per HTTP/2 connection (a pool of n connections
//! counts n):
//!
//! | instrument | kind | unit | labels |
//! |---|---|---|---|
//! | `grpc.subchannel.connection_attempts_succeeded` | counter | `{attempt}` | `grpc.target`, `grpc.lb.backend_service`, `grpc.lb.locality` |
//! | `grpc.subchannel.connection_attempts_failed` | counter | `{attempt}` | same |
//! | `grpc.subchannel.disconnections` | counter | `{disconnection}` | same, and `grpc.disconnect_error` |
//! | `grpc.subchannel.open_connections` | up-down counter | `{connection}` | same as the first |
//!
//! `grpc.lb.backend_service` and `grpc.lb.locality` are empty: this crate
//! has no xDS clusters or localities. `grpc.disconnect_error` is one of
//! A94's values: `GOAWAY <CODE>` (`GOAWAY NO_ERROR`, `GOAWAY
//! ENHANCE_YOUR_CALM`, ...), `subchannel shutdown` (the balancer let the
//! subchannel go, or the channel was dropped), `connection reset`,
//! `connection timed out` (also a keepalive PING left unanswered, gRFC
//! A8), `connection aborted`, `socket error`, `unknown`. Attempts abandoned
//! while connecting (happy eyeballs' losers, gRFC A61) are not recorded, as
//! A94 asks.
//!
//! **Per-call instruments** (gRFC A66), recorded through the pick's
//! completion (see `stats::Tally`):
//!
//! | instrument | kind | unit | labels |
//! |---|---|---|---|
//! | `grpc.client.attempt.started` | counter | `{attempt}` | `grpc.method`, `grpc.target` |
//! | `grpc.client.attempt.duration` | histogram (A66's latency buckets) | `s` | `grpc.method`, `grpc.target`, `grpc.status` |
//! | `grpc.client.call.duration` | histogram (same buckets) | `s` | same |
//! | `grpc.client.attempt.sent_total_compressed_message_size` | histogram (A66's size buckets) | `By` | `grpc.method`, `grpc.target`, `grpc.status` |
//! | `grpc.client.attempt.rcvd_total_compressed_message_size` | histogram (same buckets) | `By` | same |
//!
//! An attempt starts when it is sent on a connection and ends with the
//! call's status; a call's duration covers its picks, waits and retries.
//! `grpc.method` is the method's name for those the channel was given
//! (`metrics_methods`), else `other`, as A66 asks of methods a client did
//! not register.
//!
//! The sizes are the bytes of the attempt's gRPC messages as they were
//! sent or received (compressed if the call compresses), without the
//! 5-byte message prefix, HTTP/2 framing or metadata, as A66 defines them
//! and grpc-go counts them (`stats.OutPayload.CompressedLength`). A
//! request body sent again on a new attempt counts again on that attempt.
//!
//! `grpc.target` is the channel's target with its scheme (a bare
//! `host:port` is `dns:///host:port`), as gRFC A66 defines it.
//!
//! **Policy instruments** (gRFC A78, `grpc.lb.pick_first.*` and
//! `grpc.lb.wrr.*`) are the policies' own, recorded with the meter they
//! find in their `BuildOptions` (see `balancer::metrics`).

use crate::transport::Lost;
use crate::Target;

#[cfg(feature = "otel")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "otel")]
use std::sync::Arc;

#[cfg(feature = "otel")]
use opentelemetry::metrics::{Counter, Histogram, Meter, UpDownCounter};
#[cfg(feature = "otel")]
use opentelemetry::KeyValue;

/// The subchannel instruments of one channel; empty (and free) without a
/// meter provider or the `otel` feature.
#[derive(Clone, Default)]
pub(crate) struct SubchannelMetrics {
    #[cfg(feature = "otel")]
    otel: Option<Arc<Instruments>>,
}

#[cfg(feature = "otel")]
struct Instruments {
    succeeded: Counter<u64>,
    failed: Counter<u64>,
    disconnections: Counter<u64>,
    open: UpDownCounter<i64>,
    /// `grpc.target`, `grpc.lb.backend_service`, `grpc.lb.locality`.
    labels: Vec<KeyValue>,
}

/// An open connection, counted in `grpc.subchannel.open_connections` until
/// it is [`lost`](OpenConnection::lost) or dropped (`subchannel shutdown`).
pub(crate) struct OpenConnection {
    #[cfg(feature = "otel")]
    otel: Option<Arc<Instruments>>,
}

impl SubchannelMetrics {
    /// Instruments from `meter` for the channel to `target`.
    #[cfg(feature = "otel")]
    pub(crate) fn new(meter: &Meter, target: &Target) -> Self {
        let labels = vec![
            KeyValue::new("grpc.target", canonical_target(target)),
            KeyValue::new("grpc.lb.backend_service", ""),
            KeyValue::new("grpc.lb.locality", ""),
        ];
        let instruments = Instruments {
            succeeded: meter
                .u64_counter("grpc.subchannel.connection_attempts_succeeded")
                .with_unit("{attempt}")
                .with_description("Number of successful connection attempts.")
                .build(),
            failed: meter
                .u64_counter("grpc.subchannel.connection_attempts_failed")
                .with_unit("{attempt}")
                .with_description("Number of failed connection attempts.")
                .build(),
            disconnections: meter
                .u64_counter("grpc.subchannel.disconnections")
                .with_unit("{disconnection}")
                .with_description("Number of times the selected subchannel becomes disconnected.")
                .build(),
            open: meter
                .i64_up_down_counter("grpc.subchannel.open_connections")
                .with_unit("{connection}")
                .with_description("Number of open connections.")
                .build(),
            labels,
        };
        SubchannelMetrics {
            otel: Some(Arc::new(instruments)),
        }
    }

    /// A connection attempt failed.
    #[inline]
    pub(crate) fn attempt_failed(&self) {
        #[cfg(feature = "otel")]
        if let Some(m) = &self.otel {
            m.failed.add(1, &m.labels);
        }
    }

    /// A connection attempt succeeded: the connection is open.
    #[inline]
    pub(crate) fn connected(&self) -> OpenConnection {
        #[cfg(feature = "otel")]
        if let Some(m) = &self.otel {
            m.succeeded.add(1, &m.labels);
            m.open.add(1, &m.labels);
        }
        OpenConnection {
            #[cfg(feature = "otel")]
            otel: self.otel.clone(),
        }
    }
}

impl OpenConnection {
    /// The connection was lost for `reason` (`None`: closed with no error).
    #[inline]
    pub(crate) fn lost(mut self, reason: Option<&Lost>) {
        #[cfg(feature = "otel")]
        if let Some(m) = self.otel.take() {
            m.disconnected(&disconnect_error(reason));
        }
        #[cfg(not(feature = "otel"))]
        let _ = (&mut self, reason);
    }
}

impl Drop for OpenConnection {
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(m) = self.otel.take() {
            m.disconnected("subchannel shutdown");
        }
    }
}

#[cfg(feature = "otel")]
impl Instruments {
    fn disconnected(&self, why: &str) {
        let mut labels = self.labels.clone();
        labels.push(KeyValue::new("grpc.disconnect_error", why.to_owned()));
        self.disconnections.add(1, &labels);
        self.open.add(-1, &self.labels);
    }
}

/// gRFC A66's latency buckets, in seconds.
#[cfg(feature = "otel")]
const LATENCY_BUCKETS: [f64; 41] = [
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// gRFC A66's size buckets, in bytes.
#[cfg(feature = "otel")]
const SIZE_BUCKETS: [f64; 14] = [
    0.0,
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

/// The per-call instruments of one channel (gRFC A66); empty (and free)
/// without a meter provider or the `otel` feature.
#[derive(Clone, Default)]
pub(crate) struct CallMetrics {
    #[cfg(feature = "otel")]
    otel: Option<Arc<CallInstruments>>,
}

#[cfg(feature = "otel")]
struct CallInstruments {
    attempt_started: Counter<u64>,
    attempt_duration: Histogram<f64>,
    call_duration: Histogram<f64>,
    sent_size: Histogram<u64>,
    rcvd_size: Histogram<u64>,
    target: KeyValue,
    /// Methods recorded by name; every other is `other` (A66).
    methods: std::collections::HashSet<String>,
}

/// A call or attempt being recorded: the instruments, its `grpc.method`
/// and its start (boxed, so a pick that records nothing stays small).
#[cfg(feature = "otel")]
type Running = (Arc<CallInstruments>, KeyValue, tokio::time::Instant);

/// One call being recorded: its method label and start.
pub(crate) struct CallRecord {
    #[cfg(feature = "otel")]
    otel: Option<Box<Running>>,
}

/// One attempt being recorded (gRFC A66 `grpc.client.attempt.*`).
pub(crate) struct AttemptRecord {
    #[cfg(feature = "otel")]
    otel: Option<Box<Attempt>>,
}

/// An attempt being recorded: what a call records, and its message bytes.
#[cfg(feature = "otel")]
struct Attempt {
    running: Running,
    /// Written by the request body's sender ([`SentBytes`]), which may
    /// run on a task of its own.
    sent: Arc<AtomicU64>,
    received: MessageBytes,
}

/// Counts the message bytes of an attempt's request body as it is sent
/// (gRFC A66 `sent_total_compressed_message_size`); empty (and free)
/// without a meter provider or the `otel` feature.
#[derive(Default)]
pub(crate) struct SentBytes {
    #[cfg(feature = "otel")]
    otel: Option<(MessageBytes, Arc<AtomicU64>)>,
}

impl SentBytes {
    /// `data` (a DATA frame of the request body) is being sent.
    #[inline]
    pub(crate) fn add(&mut self, data: &[u8]) {
        #[cfg(feature = "otel")]
        if let Some((count, total)) = &mut self.otel {
            count.add(data);
            total.store(count.total, Ordering::Relaxed);
        }
        #[cfg(not(feature = "otel"))]
        let _ = data;
    }
}

/// The payload bytes of the gRPC messages in a byte stream, without their
/// 5-byte prefixes (a flag byte and a big-endian u32 length), however the
/// stream is split into frames.
#[cfg(feature = "otel")]
#[derive(Debug, Default)]
struct MessageBytes {
    /// Prefix bytes read of the next message (0 to 4).
    prefix_read: u8,
    /// Its length, as read so far.
    length: u32,
    /// Payload bytes of the current message still to come.
    remaining: u64,
    total: u64,
}

#[cfg(feature = "otel")]
impl MessageBytes {
    fn add(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.total += n as u64;
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let (byte, rest) = (data[0], &data[1..]);
            data = rest;
            if self.prefix_read > 0 {
                self.length = self.length << 8 | u32::from(byte);
            }
            self.prefix_read += 1;
            if self.prefix_read == 5 {
                self.remaining = u64::from(std::mem::take(&mut self.length));
                self.prefix_read = 0;
            }
        }
    }
}

impl CallMetrics {
    /// Instruments from `meter` for the channel to `target`; `methods`
    /// (`package.Service/Method`) are recorded by name.
    #[cfg(feature = "otel")]
    pub(crate) fn new(meter: &Meter, target: &Target, methods: &[String]) -> Self {
        let latency = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        let size = |name: &'static str, description: &'static str| {
            meter
                .u64_histogram(name)
                .with_unit("By")
                .with_description(description)
                .with_boundaries(SIZE_BUCKETS.to_vec())
                .build()
        };
        let instruments = CallInstruments {
            attempt_started: meter
                .u64_counter("grpc.client.attempt.started")
                .with_unit("{attempt}")
                .with_description("Number of client call attempts started.")
                .build(),
            attempt_duration: latency(
                "grpc.client.attempt.duration",
                "End-to-end time taken to complete a client call attempt.",
            ),
            call_duration: latency(
                "grpc.client.call.duration",
                "Time taken by gRPC to complete an RPC from application's perspective.",
            ),
            sent_size: size(
                "grpc.client.attempt.sent_total_compressed_message_size",
                "Compressed message bytes sent per client call attempt.",
            ),
            rcvd_size: size(
                "grpc.client.attempt.rcvd_total_compressed_message_size",
                "Compressed message bytes received per call attempt.",
            ),
            target: KeyValue::new("grpc.target", canonical_target(target)),
            methods: methods
                .iter()
                .map(|m| m.trim_start_matches('/').to_owned())
                .collect(),
        };
        CallMetrics {
            otel: Some(Arc::new(instruments)),
        }
    }

    /// A call to `path` (`/package.Service/Method`) starts.
    #[inline]
    pub(crate) fn call(&self, path: &str) -> CallRecord {
        #[cfg(feature = "otel")]
        {
            let otel = self.otel.as_ref().map(|m| {
                let method = path.trim_start_matches('/');
                let method = if m.methods.contains(method) {
                    method.to_owned()
                } else {
                    "other".to_owned()
                };
                let method = KeyValue::new("grpc.method", method);
                Box::new((m.clone(), method, tokio::time::Instant::now()))
            });
            CallRecord { otel }
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = path;
            CallRecord {}
        }
    }
}

impl CallRecord {
    /// An attempt starts sending.
    #[inline]
    pub(crate) fn attempt(&self) -> AttemptRecord {
        #[cfg(feature = "otel")]
        {
            let otel = self.otel.as_deref().map(|(m, method, _)| {
                m.attempt_started
                    .add(1, &[method.clone(), m.target.clone()]);
                Box::new(Attempt {
                    running: (m.clone(), method.clone(), tokio::time::Instant::now()),
                    sent: Arc::default(),
                    received: MessageBytes::default(),
                })
            });
            AttemptRecord { otel }
        }
        #[cfg(not(feature = "otel"))]
        AttemptRecord {}
    }

    /// The call ended with `code`.
    #[inline]
    pub(crate) fn ended(&mut self, code: tonic::Code) {
        #[cfg(feature = "otel")]
        if let Some((m, method, start)) = self.otel.take().map(|b| *b) {
            let labels = [method, m.target.clone(), status(code)];
            m.call_duration
                .record(start.elapsed().as_secs_f64(), &labels);
        }
        #[cfg(not(feature = "otel"))]
        let _ = code;
    }
}

impl CallRecord {
    /// Records nothing.
    pub(crate) const NONE: CallRecord = CallRecord {
        #[cfg(feature = "otel")]
        otel: None,
    };
}

impl AttemptRecord {
    /// Records nothing.
    pub(crate) const NONE: AttemptRecord = AttemptRecord {
        #[cfg(feature = "otel")]
        otel: None,
    };

    /// The counter the attempt's request body sender adds to.
    #[inline]
    pub(crate) fn sent_bytes(&self) -> SentBytes {
        SentBytes {
            #[cfg(feature = "otel")]
            otel: self
                .otel
                .as_ref()
                .map(|a| (MessageBytes::default(), a.sent.clone())),
        }
    }

    /// `data` (a DATA frame of the response body) arrived.
    #[inline]
    pub(crate) fn received(&mut self, data: &[u8]) {
        #[cfg(feature = "otel")]
        if let Some(attempt) = &mut self.otel {
            attempt.received.add(data);
        }
        #[cfg(not(feature = "otel"))]
        let _ = data;
    }

    /// The attempt ended with `code`.
    #[inline]
    pub(crate) fn ended(&mut self, code: tonic::Code) {
        #[cfg(feature = "otel")]
        if let Some(attempt) = self.otel.take() {
            let (m, method, start) = &attempt.running;
            let labels = [method.clone(), m.target.clone(), status(code)];
            m.attempt_duration
                .record(start.elapsed().as_secs_f64(), &labels);
            let sent = attempt.sent.load(Ordering::Relaxed);
            m.sent_size.record(sent, &labels);
            m.rcvd_size.record(attempt.received.total, &labels);
        }
        #[cfg(not(feature = "otel"))]
        let _ = code;
    }
}

/// `grpc.status` as A66 spells it: `OK`, `UNAVAILABLE`, ...
#[cfg(feature = "otel")]
fn status(code: tonic::Code) -> KeyValue {
    use tonic::Code::*;
    let name = match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    };
    KeyValue::new("grpc.status", name)
}

/// gRFC A94's `grpc.disconnect_error` for a lost connection.
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
fn disconnect_error(reason: Option<&Lost>) -> String {
    let error = match reason {
        Some(Lost::Closed(Some(e)) | Lost::Draining(e)) => e,
        Some(Lost::KeepaliveTimeout(_)) => return "connection timed out".into(),
        _ => return "unknown".into(),
    };
    if error.is_go_away() {
        if let Some(reason) = error.reason() {
            return format!("GOAWAY {reason:?}");
        }
    }
    match error.get_io().map(std::io::Error::kind) {
        Some(std::io::ErrorKind::ConnectionReset) => "connection reset".into(),
        Some(std::io::ErrorKind::TimedOut) => "connection timed out".into(),
        Some(std::io::ErrorKind::ConnectionAborted) => "connection aborted".into(),
        Some(_) => "socket error".into(),
        None => "unknown".into(),
    }
}

/// The target with its scheme (gRFC A66's `grpc.target`): a bare
/// `host:port` is `dns:///host:port`.
pub(crate) fn canonical_target(target: &Target) -> String {
    let raw = target.as_str();
    let scheme = target.scheme();
    if raw.len() > scheme.len() && raw.starts_with(scheme) && raw[scheme.len()..].starts_with(':') {
        raw.to_owned()
    } else {
        format!("{scheme}:///{raw}")
    }
}

impl std::fmt::Debug for SubchannelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        #[cfg(feature = "otel")]
        let on = self.otel.is_some();
        #[cfg(not(feature = "otel"))]
        let on = false;
        f.debug_struct("SubchannelMetrics")
            .field("on", &on)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_without_a_scheme_is_dns() {
        let t = |s: &str| canonical_target(&s.parse().unwrap());
        assert_eq!(t("localhost:50051"), "dns:///localhost:50051");
        assert_eq!(t("dns:///localhost:50051"), "dns:///localhost:50051");
        assert_eq!(t("static:///a:1,b:2"), "static:///a:1,b:2");
        assert_eq!(t("unix:/tmp/s"), "unix:/tmp/s");
    }

    #[cfg(feature = "otel")]
    #[test]
    fn message_bytes_count_payloads_without_prefixes_however_framed() {
        // Two messages: 3 payload bytes, then 0, then 2.
        let stream = [0, 0, 0, 0, 3, 7, 8, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 5, 6];
        for split in 0..=stream.len() {
            let mut count = MessageBytes::default();
            count.add(&stream[..split]);
            count.add(&stream[split..]);
            assert_eq!(count.total, 5, "split at {split}");
        }
        let mut count = MessageBytes::default();
        for byte in stream {
            count.add(&[byte]);
        }
        assert_eq!(count.total, 5);
        // A length above 255 reads all four bytes, big-endian.
        let mut count = MessageBytes::default();
        count.add(&[0, 0, 0, 1, 0]);
        count.add(&[1; 256]);
        assert_eq!((count.total, count.remaining), (256, 0));
    }

    #[test]
    fn keepalive_timeouts_and_clean_closes_have_a94_names() {
        let timeout = Lost::KeepaliveTimeout(std::time::Duration::from_secs(1));
        assert_eq!(disconnect_error(Some(&timeout)), "connection timed out");
        assert_eq!(disconnect_error(Some(&Lost::Closed(None))), "unknown");
        assert_eq!(disconnect_error(None), "unknown");
        // A stream-level reason is no socket error and no GOAWAY.
        let reason = h2::Error::from(h2::Reason::INTERNAL_ERROR);
        assert_eq!(
            disconnect_error(Some(&Lost::Closed(Some(reason)))),
            "unknown"
        );
    }
}

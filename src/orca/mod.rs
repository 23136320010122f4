//! ORCA load reports (Open Request Cost Aggregation, gRFC A51), the
//! backend metrics `weighted_round_robin` weighs backends by (gRFC A58).
//!
//! A backend attaches an `xds.data.orca.v3.OrcaLoadReport` to each
//! response in the `endpoint-load-metrics-bin` trailer (binary metadata:
//! the protobuf message, base64 on the wire as every `-bin` header). This
//! module has the message ([`OrcaLoadReport`], from the vendored
//! `proto/xds/data/orca/v3/orca_load_report.proto`), its trailer encoding
//! both ways, and a server-side helper: [`OrcaLayer`], a tower layer for a
//! tonic server that adds the current report of a [`ServerMetricsRecorder`]
//! to every response's trailers, so a Rust server can feed Rust, Go, Java
//! or C++ clients.
//!
//! ```no_run
//! use tonic_balance::orca::{OrcaLayer, ServerMetricsRecorder};
//!
//! let recorder = ServerMetricsRecorder::new();
//! recorder.set_cpu_utilization(0.4);
//! recorder.set_qps(250.0);
//! let server = tonic::transport::Server::builder().layer(OrcaLayer::new(recorder.clone()));
//! // server.add_service(...).serve(addr).await
//! # let _ = server;
//! ```
//!
//! **Out of band** (gRFC A51): [`OrcaOobService`] is ORCA's
//! `xds.service.orca.v3.OpenRcaService`; it streams the same recorder's
//! report to each client that opens a `StreamCoreMetrics` stream, every
//! interval the client asks for (from the vendored
//! `proto/xds/service/orca/v3/orca.proto`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use http_body::{Body, Frame};
use prost::Message;

mod service;

/// The generated `xds.data.orca.v3` messages, and in [`proto::service`]
/// the generated `xds.service.orca.v3` client and server.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    /// The packages, nested as the generated code refers to them.
    pub mod xds {
        /// `xds.data`.
        pub mod data {
            /// `xds.data.orca`.
            pub mod orca {
                /// `xds.data.orca.v3`.
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/xds.data.orca.v3.rs"));
                }
            }
        }
        /// `xds.service`.
        pub mod service {
            /// `xds.service.orca`.
            pub mod orca {
                /// `xds.service.orca.v3`.
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/xds.service.orca.v3.rs"));
                }
            }
        }
    }

    pub use xds::data::orca::v3::*;

    /// `xds.service.orca.v3`: `OpenRcaService` and its request.
    pub mod service {
        pub use super::xds::service::orca::v3::*;
    }
}

pub use crate::subchannel::OobRegistration;
pub use proto::OrcaLoadReport;
pub use service::{OrcaOobService, ReportStream};

/// Receives a subchannel's out-of-band load reports (grpc-go's
/// `orca.OOBListener`). Implemented for every `Fn(&OrcaLoadReport)`.
pub trait OobListener: Send + Sync + 'static {
    /// A report arrived. Runs on the connection's task: must not block.
    fn on_load_report(&self, report: &OrcaLoadReport);
}

impl<F: Fn(&OrcaLoadReport) + Send + Sync + 'static> OobListener for F {
    fn on_load_report(&self, report: &OrcaLoadReport) {
        self(report);
    }
}

/// Asks `subchannel`'s server for a load report every `period` on an
/// `OpenRcaService/StreamCoreMetrics` stream (gRFC A51) on each of its
/// READY connections, and hands the reports to `listener`, until the
/// returned registration is dropped (grpc-go's
/// `orca.RegisterOOBListener`). A subchannel takes any number of
/// listeners, each with its own `period`: one stream per connection asks
/// for the smallest period registered (reopened when that changes), every
/// listener gets every report, and dropping a registration removes only
/// its listener (the stream closes with the last one). A stream that fails is reopened
/// on the subchannel's backoff; a server without the service
/// (UNIMPLEMENTED) is not asked again on that connection, and a warning is
/// logged once. The server may send reports less often than asked (its
/// minimum interval).
pub fn register_oob_listener(
    subchannel: &crate::Subchannel,
    listener: std::sync::Arc<dyn OobListener>,
    period: std::time::Duration,
) -> OobRegistration {
    subchannel.register_oob(listener, period)
}

/// The trailer a per-call load report travels in.
pub const TRAILER: &str = "endpoint-load-metrics-bin";

/// The report in `trailers`, if there is a valid one (a malformed one is
/// ignored, as gRPC does, and logged at debug level).
pub fn from_trailers(trailers: &http::HeaderMap) -> Option<OrcaLoadReport> {
    let value = trailers.get(TRAILER)?;
    // gRPC senders may or may not pad binary metadata.
    let trimmed = value.as_bytes().trim_ascii_end();
    let trimmed = trimmed
        .strip_suffix(b"==")
        .or_else(|| trimmed.strip_suffix(b"="));
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed.unwrap_or(value.as_bytes().trim_ascii_end()));
    let report = bytes
        .map_err(|e| e.to_string())
        .and_then(|b| OrcaLoadReport::decode(b.as_slice()).map_err(|e| e.to_string()));
    match report {
        Ok(report) => Some(report),
        Err(error) => {
            tracing::debug!(%error, "ignoring a malformed {TRAILER} trailer");
            None
        }
    }
}

/// `report` as the value of the [`TRAILER`] header (base64, unpadded).
pub fn to_header_value(report: &OrcaLoadReport) -> http::HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(report.encode_to_vec());
    // Base64 is always a valid header value.
    http::HeaderValue::from_str(&encoded).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// A server's current metrics, shared by the handlers that set them and
/// the [`OrcaLayer`] that reports them (grpc-go's
/// `orca.ServerMetricsRecorder`). Cheap to clone; every setter is one
/// atomic store. A metric that was never set (or is 0) is not reported.
#[derive(Debug, Clone, Default)]
pub struct ServerMetricsRecorder {
    metrics: Arc<[AtomicU64; 5]>,
}

const CPU: usize = 0;
const MEM: usize = 1;
const APP: usize = 2;
const QPS: usize = 3;
const EPS: usize = 4;

impl ServerMetricsRecorder {
    /// A recorder with nothing set.
    pub fn new() -> Self {
        ServerMetricsRecorder::default()
    }

    fn set(&self, metric: usize, value: f64) {
        let value = if value.is_finite() && value > 0.0 {
            value
        } else {
            0.0
        };
        self.metrics[metric].store(value.to_bits(), Ordering::Relaxed);
    }

    fn get(&self, metric: usize) -> f64 {
        f64::from_bits(self.metrics[metric].load(Ordering::Relaxed))
    }

    /// CPU utilization, a fraction of the available CPU (may exceed 1).
    pub fn set_cpu_utilization(&self, value: f64) {
        self.set(CPU, value);
    }

    /// Memory utilization, a fraction of the available memory.
    pub fn set_memory_utilization(&self, value: f64) {
        self.set(MEM, value);
    }

    /// Application utilization (wins over CPU utilization in A58).
    pub fn set_application_utilization(&self, value: f64) {
        self.set(APP, value);
    }

    /// Queries per second the server serves.
    pub fn set_qps(&self, value: f64) {
        self.set(QPS, value);
    }

    /// Errors per second.
    pub fn set_eps(&self, value: f64) {
        self.set(EPS, value);
    }

    /// The report of the current metrics.
    pub fn report(&self) -> OrcaLoadReport {
        OrcaLoadReport {
            cpu_utilization: self.get(CPU),
            mem_utilization: self.get(MEM),
            application_utilization: self.get(APP),
            rps_fractional: self.get(QPS),
            eps: self.get(EPS),
            ..Default::default()
        }
    }
}

/// A tower layer that adds the [`ServerMetricsRecorder`]'s current report
/// to the trailers of every response (`Server::builder().layer(...)`).
/// Nothing is added while no metric is set, nor to responses that end
/// without trailers (a body that stops early).
#[derive(Debug, Clone)]
pub struct OrcaLayer {
    recorder: ServerMetricsRecorder,
}

impl OrcaLayer {
    /// Reports `recorder`'s metrics.
    pub fn new(recorder: ServerMetricsRecorder) -> Self {
        OrcaLayer { recorder }
    }
}

impl<S> tower::Layer<S> for OrcaLayer {
    type Service = OrcaService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OrcaService {
            inner,
            recorder: self.recorder.clone(),
        }
    }
}

/// The service [`OrcaLayer`] makes.
#[derive(Debug, Clone)]
pub struct OrcaService<S> {
    inner: S,
    recorder: ServerMetricsRecorder,
}

impl<S, B, R> tower::Service<http::Request<B>> for OrcaService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<OrcaBody<R>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        let recorder = self.recorder.clone();
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| OrcaBody {
                inner: body,
                recorder,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers get the load report.
    #[derive(Debug)]
    pub struct OrcaBody<B> {
        #[pin]
        inner: B,
        recorder: ServerMetricsRecorder,
    }
}

impl<B: Body> Body for OrcaBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let frame = match frame.into_trailers() {
            Ok(mut trailers) => {
                let report = this.recorder.report();
                if report != OrcaLoadReport::default() {
                    trailers.insert(TRAILER, to_header_value(&report));
                }
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_goes_through_the_trailer_and_back() {
        let recorder = ServerMetricsRecorder::new();
        recorder.set_cpu_utilization(0.5);
        recorder.set_application_utilization(0.25);
        recorder.set_qps(120.0);
        recorder.set_eps(-3.0);
        let mut trailers = http::HeaderMap::new();
        trailers.insert(TRAILER, to_header_value(&recorder.report()));
        let report = from_trailers(&trailers).unwrap();
        assert_eq!(report.cpu_utilization, 0.5);
        assert_eq!(report.application_utilization, 0.25);
        assert_eq!(report.rps_fractional, 120.0);
        assert_eq!(report.eps, 0.0, "a negative value is not reported");
    }

    #[test]
    fn padded_values_are_read_and_malformed_ones_ignored() {
        let report = OrcaLoadReport {
            cpu_utilization: 0.3,
            ..Default::default()
        };
        let padded = base64::engine::general_purpose::STANDARD.encode(report.encode_to_vec());
        let mut trailers = http::HeaderMap::new();
        trailers.insert(TRAILER, padded.parse().unwrap());
        assert_eq!(from_trailers(&trailers), Some(report));
        trailers.insert(TRAILER, "%%%".parse().unwrap());
        assert_eq!(from_trailers(&trailers), None);
        trailers.insert(TRAILER, "////".parse().unwrap());
        assert_eq!(from_trailers(&trailers), None, "not a protobuf message");
        assert_eq!(from_trailers(&http::HeaderMap::new()), None);
    }
}

//! The server side of ORCA's out-of-band reports: `OpenRcaService`.

use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use tonic::{Request, Response, Status};

use super::proto::service::open_rca_service_server::{self, OpenRcaServiceServer};
use super::proto::service::OrcaLoadReportRequest;
use super::{OrcaLoadReport, ServerMetricsRecorder};

/// ORCA's out-of-band load reporting service
/// (`xds.service.orca.v3.OpenRcaService`, gRFC A51): each
/// `StreamCoreMetrics` stream gets the [`ServerMetricsRecorder`]'s current
/// report at once and then every `report_interval` the client asked for,
/// but never more often than the minimum reporting interval (30 s by
/// default, as grpc-go's `orca.ServiceOptions`). Clients with
/// `weighted_round_robin`'s `enableOobLoadReport` read it.
///
/// ```no_run
/// use std::time::Duration;
/// use tonic_balance::orca::{OrcaOobService, ServerMetricsRecorder};
///
/// let recorder = ServerMetricsRecorder::new();
/// recorder.set_cpu_utilization(0.4);
/// recorder.set_qps(250.0);
/// let oob = OrcaOobService::new(recorder).min_reporting_interval(Duration::from_secs(1));
/// let server = tonic::transport::Server::builder().add_service(oob.into_server());
/// // server.add_service(...).serve(addr).await
/// # let _ = server;
/// ```
#[derive(Debug, Clone)]
pub struct OrcaOobService {
    recorder: ServerMetricsRecorder,
    min_interval: Duration,
}

impl OrcaOobService {
    /// The default minimum reporting interval: 30 s.
    pub const DEFAULT_MIN_REPORTING_INTERVAL: Duration = Duration::from_secs(30);

    /// Streams `recorder`'s reports, at most one every
    /// [`DEFAULT_MIN_REPORTING_INTERVAL`](Self::DEFAULT_MIN_REPORTING_INTERVAL)
    /// (30 s) whatever period a client asks for: a client asking for
    /// `oobReportingPeriod: "1s"` gets 30 s unless you lower it with
    /// [`min_reporting_interval`](Self::min_reporting_interval).
    pub fn new(recorder: ServerMetricsRecorder) -> Self {
        OrcaOobService {
            recorder,
            min_interval: Self::DEFAULT_MIN_REPORTING_INTERVAL,
        }
    }

    /// The shortest interval between two reports of a stream: a client
    /// asking for less (or for none) gets this one. Not below 1 ms.
    pub fn min_reporting_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> OpenRcaServiceServer<Self> {
        OpenRcaServiceServer::new(self)
    }

    /// The interval a stream asking for `requested` gets.
    fn interval(&self, requested: Option<prost_types::Duration>) -> Duration {
        let requested = requested.and_then(|d| Duration::try_from(d).ok());
        requested.unwrap_or_default().max(self.min_interval)
    }
}

/// The reports of one `StreamCoreMetrics` stream.
pub type ReportStream = Pin<Box<dyn Stream<Item = Result<OrcaLoadReport, Status>> + Send>>;

#[tonic::async_trait]
impl open_rca_service_server::OpenRcaService for OrcaOobService {
    type StreamCoreMetricsStream = ReportStream;

    async fn stream_core_metrics(
        &self,
        request: Request<OrcaLoadReportRequest>,
    ) -> Result<Response<ReportStream>, Status> {
        let interval = self.interval(request.into_inner().report_interval);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let recorder = self.recorder.clone();
        let reports = futures_util::stream::unfold(ticks, move |mut ticks| {
            let recorder = recorder.clone();
            async move {
                ticks.tick().await;
                Some((Ok(recorder.report()), ticks))
            }
        });
        Ok(Response::new(Box::pin(reports)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_gets_the_interval_it_asks_for_but_not_below_the_minimum() {
        let service = OrcaOobService::new(ServerMetricsRecorder::new())
            .min_reporting_interval(Duration::from_secs(1));
        let ask = |secs| {
            Some(prost_types::Duration {
                seconds: secs,
                nanos: 0,
            })
        };
        assert_eq!(service.interval(ask(5)), Duration::from_secs(5));
        assert_eq!(service.interval(ask(0)), Duration::from_secs(1));
        assert_eq!(service.interval(ask(-3)), Duration::from_secs(1), "invalid");
        assert_eq!(service.interval(None), Duration::from_secs(1));
    }
}

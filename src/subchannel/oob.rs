//! ORCA's out-of-band load reports (gRFC A51, as grpc-go's
//! `orca/producer.go`): the producer of a subchannel.
//!
//! While at least one listener is registered
//! ([`crate::orca::register_oob_listener`]) every READY connection of the
//! subchannel opens one `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`
//! stream on that same connection, asking for a report every period: the
//! smallest period any registered listener asked for. Every report goes to
//! every registered listener as it arrives (on the connection's task: a
//! listener must not block).
//!
//! ```text
//!   connection READY, a listener registered  --> stream opens
//!     each report                              -> every listener's on_load_report
//!     the stream fails or ends                 -> reopened (stream::Restarts)
//!     UNIMPLEMENTED (no ORCA service)          -> no stream on this connection,
//!                                                 a warning logged once
//!   a listener registered or dropped:
//!     the smallest period changes              -> stream reopened with it
//!     it does not                              -> the same stream goes on
//!   the last registration dropped, connection lost -> stream closed
//! ```
//!
//! Several listeners share one subchannel (e.g. the old and the new
//! `weighted_round_robin` while a graceful switch runs over the same
//! subchannels): each gets every report, and dropping one registration
//! removes only that listener.

use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::connect::ConnectConfig;
use super::stream::{self, Ended};
use super::{Subchannel, SubchannelShared};
use crate::orca::proto::service::open_rca_service_client::OpenRcaServiceClient;
use crate::orca::proto::service::OrcaLoadReportRequest;
use crate::orca::OobListener;

/// A registered listener and the interval it asks reports for.
pub(crate) struct OobRequest {
    period: Duration,
    listener: Arc<dyn OobListener>,
}

/// The registered listeners of a subchannel, in the order they came.
#[derive(Clone, Default)]
pub(crate) struct OobListeners(Vec<Arc<OobRequest>>);

impl OobListeners {
    /// The period a stream asks for: the smallest one asked for (`None`:
    /// no listener, no stream).
    fn period(&self) -> Option<Duration> {
        self.0.iter().map(|request| request.period).min()
    }
}

/// The registered listeners of a subchannel, watched by its connections.
pub(crate) type OobSlot = watch::Sender<OobListeners>;

/// Keeps a listener registered on a subchannel; dropping it unregisters
/// that listener (the others stay; the stream closes with the last one).
#[must_use = "dropping the registration unregisters the listener"]
pub struct OobRegistration {
    link: Arc<SubchannelShared>,
    request: Arc<OobRequest>,
}

impl Subchannel {
    /// See [`crate::orca::register_oob_listener`].
    pub(crate) fn register_oob(
        &self,
        listener: Arc<dyn OobListener>,
        period: Duration,
    ) -> OobRegistration {
        let request = Arc::new(OobRequest { period, listener });
        let link = self.inner.link.clone();
        link.oob
            .send_modify(|listeners| listeners.0.push(request.clone()));
        OobRegistration { link, request }
    }

    /// The out-of-band listener registered last, for policy tests.
    #[cfg(test)]
    pub(crate) fn oob_listener(&self) -> Option<(Arc<dyn OobListener>, Duration)> {
        let current = self.inner.link.oob.borrow();
        current.0.last().map(|r| (r.listener.clone(), r.period))
    }
}

impl Drop for OobRegistration {
    fn drop(&mut self) {
        self.link.oob.send_if_modified(|listeners| {
            let before = listeners.0.len();
            listeners.0.retain(|r| !Arc::ptr_eq(r, &self.request));
            listeners.0.len() != before
        });
    }
}

impl fmt::Debug for OobRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OobRegistration")
            .field("address", &self.link.address)
            .field("period", &self.request.period)
            .finish()
    }
}

/// Streams reports to the subchannel's listeners for as long as its
/// connection is READY (the caller drops this future when it goes).
/// Follows registrations as they change: a new smallest period reopens
/// the stream, any other change keeps it.
pub(super) async fn watch(link: &SubchannelShared, config: &ConnectConfig) -> Infallible {
    let serve_at = |period| serve(link, config, period);
    stream::follow(link.oob.subscribe(), OobListeners::period, serve_at).await
}

async fn serve(
    link: &SubchannelShared,
    config: &ConnectConfig,
    period: Option<Duration>,
) -> Infallible {
    if let Some(period) = period {
        let kind = ("ORCA out-of-band", 0x5851_F42D_4C95_7F2D);
        stream::reopen(link, config, kind, || reports(link, period)).await;
        if !link.oob_unimplemented.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                address = %link.address,
                "the server has no ORCA service (OpenRcaService UNIMPLEMENTED): \
                 no out-of-band load reports from this backend (gRFC A51)"
            );
        }
    }
    std::future::pending().await
}

/// Opens one `StreamCoreMetrics` stream asking for a report every
/// `period` and hands each report to every listener registered then.
async fn reports(link: &SubchannelShared, period: Duration) -> Ended {
    let ask = OrcaLoadReportRequest {
        report_interval: prost_types::Duration::try_from(period).ok(),
        request_cost_names: Vec::new(),
    };
    let open = |service| async move {
        let mut client = OpenRcaServiceClient::new(service);
        client.stream_core_metrics(ask).await
    };
    let deliver = |report| {
        // A clone, so a listener may register or drop another.
        let listeners = link.oob.borrow().clone();
        for request in &listeners.0 {
            request.listener.on_load_report(&report);
        }
    };
    stream::read(link, open, deliver).await
}

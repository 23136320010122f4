//! ORCA's out-of-band load reports (gRFC A51, as grpc-go's
//! `orca/producer.go`): the producer of a subchannel.
//!
//! While a listener is registered ([`crate::orca::register_oob_listener`])
//! every READY connection of the subchannel opens one
//! `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics` stream on that
//! same connection, asking for a report every `period`, and hands each
//! report to the listener as it arrives (on the connection's task: a
//! listener must not block).
//!
//! ```text
//!   connection READY, listener registered --> stream opens
//!     each report                            -> listener.on_load_report
//!     the stream fails or ends               -> reopened (stream::Restarts)
//!     UNIMPLEMENTED (no ORCA service)        -> no stream on this connection,
//!                                               a warning logged once
//!   listener replaced                         -> stream reopened with its period
//!   registration dropped, connection lost     -> stream closed
//! ```
//!
//! One listener per subchannel: a new registration replaces the previous
//! one (the policy that owns the subchannel registers; the last one wins).

use std::convert::Infallible;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::Code;

use super::connect::ConnectConfig;
use super::stream::{describe, OnConnection, Restarts};
use super::{Subchannel, SubchannelShared};
use crate::orca::proto::service::open_rca_service_client::OpenRcaServiceClient;
use crate::orca::proto::service::OrcaLoadReportRequest;
use crate::orca::OobListener;

/// A registered listener and the interval it asks reports for.
pub(crate) struct OobRequest {
    period: Duration,
    listener: Arc<dyn OobListener>,
}

/// The registered listener of a subchannel, watched by its connections.
pub(crate) type OobSlot = watch::Sender<Option<Arc<OobRequest>>>;

/// Keeps a listener registered on a subchannel; dropping it unregisters
/// the listener (and closes the stream) unless another one replaced it.
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
        link.oob.send_replace(Some(request.clone()));
        OobRegistration { link, request }
    }

    /// The registered out-of-band listener, for policy tests.
    #[cfg(test)]
    pub(crate) fn oob_listener(&self) -> Option<(Arc<dyn OobListener>, Duration)> {
        let current = self.inner.link.oob.borrow();
        current.as_ref().map(|r| (r.listener.clone(), r.period))
    }
}

impl Drop for OobRegistration {
    fn drop(&mut self) {
        self.link.oob.send_if_modified(|current| {
            let ours = current
                .as_ref()
                .is_some_and(|r| Arc::ptr_eq(r, &self.request));
            if ours {
                *current = None;
            }
            ours
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

/// Streams reports to the subchannel's listener for as long as its
/// connection is READY (the caller drops this future when it goes).
/// Follows registrations as they change.
pub(super) async fn watch(link: &SubchannelShared, config: &ConnectConfig) -> Infallible {
    let mut requests = link.oob.subscribe();
    loop {
        let request = requests.borrow_and_update().clone();
        let serve = serve(link, config, request);
        tokio::pin!(serve);
        tokio::select! {
            changed = requests.changed() => {
                if changed.is_err() {
                    match serve.await {}
                }
            }
            never = &mut serve => match never {},
        }
    }
}

async fn serve(
    link: &SubchannelShared,
    config: &ConnectConfig,
    request: Option<Arc<OobRequest>>,
) -> Infallible {
    let Some(request) = request else {
        return std::future::pending().await;
    };
    let mut restarts = Restarts::new(link, config, 0x5851_F42D_4C95_7F2D);
    loop {
        restarts.wait().await;
        match stream(link, &request).await {
            Ended::Unimplemented => {
                if !link.oob_unimplemented.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        address = %link.address,
                        "the server has no ORCA service (OpenRcaService UNIMPLEMENTED): \
                         no out-of-band load reports from this backend (gRFC A51)"
                    );
                }
                return std::future::pending().await;
            }
            Ended::Failed { why, answered } => {
                tracing::debug!(address = %link.address, %why, "ORCA out-of-band stream ended");
                restarts.ended(answered);
            }
        }
    }
}

/// How one stream ended.
enum Ended {
    /// The server has no ORCA service.
    Unimplemented,
    /// The stream failed or ended; `answered`: after at least one report.
    Failed { why: String, answered: bool },
}

/// Opens one `StreamCoreMetrics` stream and hands each report over.
async fn stream(link: &SubchannelShared, request: &OobRequest) -> Ended {
    let failed = |why: String, answered| Ended::Failed { why, answered };
    let service = match OnConnection::new(link) {
        Ok(service) => service,
        Err(why) => return failed(why, false),
    };
    let ask = OrcaLoadReportRequest {
        report_interval: prost_types::Duration::try_from(request.period).ok(),
        request_cost_names: Vec::new(),
    };
    let mut reports = match OpenRcaServiceClient::new(service)
        .stream_core_metrics(ask)
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => return Ended::Unimplemented,
        Err(status) => return failed(describe(&status), false),
    };
    let mut answered = false;
    loop {
        match reports.message().await {
            Ok(Some(report)) => {
                answered = true;
                request.listener.on_load_report(&report);
            }
            Ok(None) => return failed("the server ended the stream".into(), answered),
            Err(status) if status.code() == Code::Unimplemented && !answered => {
                return Ended::Unimplemented
            }
            Err(status) => return failed(describe(&status), answered),
        }
    }
}

//! Client-side health checking (gRPC's `health-checking.md`, gRFC A17): the
//! health producer of a subchannel.
//!
//! When the channel's service config has a `healthCheckConfig` (and the
//! policy is not a top-level `pick_first`, which does no health checking in
//! gRPC), every READY connection opens one `grpc.health.v1.Health/Watch`
//! stream for the configured `serviceName` on that same connection, and the
//! state the policy sees follows the server's answers:
//!
//! ```text
//!   connection READY --stream opens--> CONNECTING (no answer yet)
//!     SERVING                              -> READY
//!     NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN -> TRANSIENT_FAILURE "health check: NOT_SERVING from ..."
//!     the stream fails or ends              -> TRANSIENT_FAILURE "health check: stream failed: ...",
//!                                              then CONNECTING again after backoff
//!     UNIMPLEMENTED (no health service)     -> READY, a warning logged once
//!   connection lost                         -> IDLE, as without health checking
//! ```
//!
//! The connection stays up whatever the health service says; only the
//! state shown to the policy changes ([`SubchannelState::health`], whose
//! [`connection_state`](SubchannelState::connection_state) stays READY),
//! so no policy needs to know about health checking.
//!
//! **Restarts** use the subchannel's backoff settings (gRPC's connection
//! backoff, [`crate::backoff`]), as every per-connection stream does (see
//! `stream::Restarts`): a stream that received an answer and lasted at
//! least the initial delay counts as a success and is reopened at once;
//! any other is reopened after the next backoff delay. So a server that
//! resets every stream at once is asked on the backoff schedule, not in a
//! loop.
//!
//! **Events.** Health answers are reported as they come, one state change
//! each (repeats of the same state are not sent), on the subchannel's event
//! queue; a server that flips its status faster than the control task reads
//! queues one event per flip.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::connect::{ConnectConfig, StateEvent};
use super::stream::{self, Ended};
use super::{SubchannelShared, SubchannelState};
use crate::{Address, ConnectivityState, Error, ErrorKind};

/// The health service name every subchannel of a channel checks (`None`:
/// health checking off). Set by the control task from the service config;
/// connection tasks follow changes at once.
#[derive(Debug, Clone)]
pub(crate) struct HealthService(Arc<watch::Sender<Option<Arc<str>>>>);

impl Default for HealthService {
    fn default() -> Self {
        HealthService(Arc::new(watch::channel(None).0))
    }
}

impl HealthService {
    /// Turns health checking on for `name`, or off for `None`.
    pub(crate) fn set(&self, name: Option<Arc<str>>) {
        self.0.send_if_modified(|current| {
            let changed = *current != name;
            *current = name;
            changed
        });
    }

    fn subscribe(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.0.subscribe()
    }
}

/// Sends the states health checking shows, skipping repeats.
struct Reporter<'a> {
    link: &'a SubchannelShared,
    events: &'a mpsc::UnboundedSender<StateEvent>,
    /// The last state sent, shared by the streams of one connection.
    last: Mutex<Option<(ConnectivityState, Option<String>)>>,
}

impl Reporter<'_> {
    fn send(&self, connectivity: ConnectivityState, error: Option<Error>) {
        let key = (connectivity, error.as_ref().map(Error::to_string));
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.as_ref() == Some(&key) {
                return;
            }
            *last = Some(key);
        }
        let state = SubchannelState {
            error,
            ..SubchannelState::health(connectivity)
        };
        let _ = self.events.send(StateEvent {
            id: self.link.id,
            state,
        });
    }
}

/// Reports the state of the subchannel's READY connection for as long as
/// it is READY (the caller drops this future when the connection goes):
/// READY at once without health checking, else what the health service
/// says. Follows changes of the channel's health service name.
pub(super) async fn watch(
    link: &SubchannelShared,
    config: &ConnectConfig,
    events: &mpsc::UnboundedSender<StateEvent>,
) -> Infallible {
    let reporter = Reporter {
        link,
        events,
        last: Mutex::new(None),
    };
    let reporter = &reporter;
    let serve_name = |name| serve(link, config, name, reporter);
    stream::follow(config.health.subscribe(), Clone::clone, serve_name).await
}

async fn serve(
    link: &SubchannelShared,
    config: &ConnectConfig,
    name: Option<Arc<str>>,
    reporter: &Reporter<'_>,
) -> Infallible {
    if let Some(name) = name {
        let kind = ("health", 0xA24B_AED4_963E_E407);
        stream::reopen(link, config, kind, || answers(link, &name, reporter)).await;
        if !link.health_unimplemented.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                address = %link.address,
                service = %name,
                "the server has no health service (UNIMPLEMENTED): \
                 health checking is off for this backend (gRFC A17)"
            );
        }
    }
    reporter.send(ConnectivityState::Ready, None);
    std::future::pending().await
}

/// Opens one `Watch` stream for `name` and reports CONNECTING, then each
/// answer, then TRANSIENT_FAILURE if it fails.
async fn answers(link: &SubchannelShared, name: &str, reporter: &Reporter<'_>) -> Ended {
    reporter.send(ConnectivityState::Connecting, None);
    let request = HealthCheckRequest {
        service: name.to_owned(),
    };
    let open = |service| async move { HealthClient::new(service).watch(request).await };
    let report = |answer: HealthCheckResponse| match answer.status() {
        ServingStatus::Serving => reporter.send(ConnectivityState::Ready, None),
        other => {
            let error = health_error(&link.address, name, other.as_str_name());
            reporter.send(ConnectivityState::TransientFailure, Some(error));
        }
    };
    let ended = stream::read(link, open, report).await;
    if let Ended::Failed { why, .. } = &ended {
        let error = health_error(&link.address, name, why);
        reporter.send(ConnectivityState::TransientFailure, Some(error));
    }
    ended
}

fn health_error(address: &Address, name: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::Health,
        format!("health check: {why} from {address}, service {name:?}"),
    )
}

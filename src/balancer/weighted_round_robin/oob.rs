//! Out-of-band load reports for weighted_round_robin
//! (`enableOobLoadReport`, gRFC A58 over gRFC A51's ORCA stream): a
//! listener on every READY subchannel, writing into the same endpoint
//! weights as per-call reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::weight::{EndpointWeight, Load};
use super::WrrConfig;
use crate::orca::{self, OobListener, OobRegistration, OrcaLoadReport};
use crate::subchannel::SubchannelState;
use crate::{ConnectivityState, Subchannel};

/// Each READY endpoint's weight by each of its addresses, as the latest
/// picker has them.
pub(super) type WeightsByAddress = Arc<ArcSwap<HashMap<Box<str>, Arc<EndpointWeight>>>>;

/// The READY subchannels and, while out-of-band reports are on, their
/// registered listeners.
pub(super) struct OobListeners {
    weights: WeightsByAddress,
    config: Arc<ArcSwap<WrrConfig>>,
    ready: HashMap<Subchannel, Option<OobRegistration>>,
    /// The period the listeners are registered with (`None`: off).
    period: Option<Duration>,
}

impl OobListeners {
    pub(super) fn new(weights: WeightsByAddress, config: Arc<ArcSwap<WrrConfig>>) -> Self {
        OobListeners {
            weights,
            config,
            ready: HashMap::new(),
            period: None,
        }
    }

    fn register(&self, subchannel: &Subchannel) -> Option<OobRegistration> {
        let period = self.period?;
        let writer = WeightWriter {
            address: subchannel.address().addr().into(),
            weights: self.weights.clone(),
            config: self.config.clone(),
        };
        Some(orca::register_oob_listener(
            subchannel,
            Arc::new(writer),
            period,
        ))
    }

    /// A READY subchannel gets a listener; one that leaves READY loses it.
    pub(super) fn subchannel_update(&mut self, subchannel: &Subchannel, state: &SubchannelState) {
        if state.connectivity != ConnectivityState::Ready {
            self.ready.remove(subchannel);
        } else if !self.ready.contains_key(subchannel) {
            let registration = self.register(subchannel);
            self.ready.insert(subchannel.clone(), registration);
        }
    }

    /// Follows the config (on, off, a new period) and forgets subchannels
    /// whose endpoints are gone.
    pub(super) fn update(&mut self) {
        let weights = self.weights.load();
        (self.ready).retain(|subchannel, _| weights.contains_key(subchannel.address().addr()));
        let config = self.config.load();
        let period = (config.enable_oob_load_report).then_some(config.oob_reporting_period);
        if period != self.period {
            self.period = period;
            let subchannels: Vec<Subchannel> = self.ready.keys().cloned().collect();
            for subchannel in subchannels {
                let registration = self.register(&subchannel);
                self.ready.insert(subchannel, registration);
            }
        }
    }
}

/// Writes a subchannel's reports into its endpoint's weight.
struct WeightWriter {
    address: Box<str>,
    weights: WeightsByAddress,
    config: Arc<ArcSwap<WrrConfig>>,
}

impl OobListener for WeightWriter {
    fn on_load_report(&self, report: &OrcaLoadReport) {
        if let Some(weight) = self.weights.load().get(&self.address) {
            let penalty = self.config.load().error_utilization_penalty;
            weight.on_report(Load::from(report), Instant::now(), penalty);
        }
    }
}

//! The built-in policies' instruments (gRFC A78, cargo feature `otel`),
//! made from the meter in [`BuildOptions`]; empty (and free) without a
//! meter or the feature.
//!
//! pick_first (`grpc.target`): `grpc.lb.pick_first.connection_attempts_succeeded`
//! and `grpc.lb.pick_first.connection_attempts_failed` (`{attempt}`),
//! `grpc.lb.pick_first.disconnections` (`{disconnection}`). They count from
//! the policy's view, as A78 asks: a connection the policy selects (once,
//! however many happy-eyeballs attempts raced), each failure it hears of,
//! and each loss of its selected connection. pick_first is also the
//! per-endpoint child of round_robin, least_request and
//! weighted_round_robin, and counts there too, as grpc-go's does.
//!
//! weighted_round_robin (`grpc.target`, `grpc.lb.locality`, empty: no xDS
//! here), on every scheduler update: `grpc.lb.wrr.rr_fallback`
//! (`{update}`), `grpc.lb.wrr.endpoint_weight_not_yet_usable` and
//! `grpc.lb.wrr.endpoint_weight_stale` (`{endpoint}`),
//! `grpc.lb.wrr.endpoint_weights` (histogram, `{weight}`, 0 for an
//! endpoint without a usable weight).

use super::BuildOptions;

#[cfg(feature = "otel")]
use opentelemetry::metrics::{Counter, Histogram};
#[cfg(feature = "otel")]
use opentelemetry::KeyValue;
#[cfg(feature = "otel")]
use std::sync::Arc;

/// A `u64` counter from `meter`.
#[cfg(feature = "otel")]
fn counter(
    meter: &opentelemetry::metrics::Meter,
    name: &'static str,
    unit: &'static str,
    description: &'static str,
) -> Counter<u64> {
    meter
        .u64_counter(name)
        .with_unit(unit)
        .with_description(description)
        .build()
}

/// pick_first's instruments (gRFC A78).
#[derive(Default)]
pub(crate) struct PickFirstMetrics {
    #[cfg(feature = "otel")]
    otel: Option<Box<PickFirstInstruments>>,
}

#[cfg(feature = "otel")]
struct PickFirstInstruments {
    succeeded: Counter<u64>,
    failed: Counter<u64>,
    disconnections: Counter<u64>,
    labels: [KeyValue; 1],
}

impl PickFirstMetrics {
    /// Instruments from `options`' meter, if it has one.
    pub(crate) fn new(options: &BuildOptions) -> Self {
        #[cfg(feature = "otel")]
        if let Some(meter) = options.meter() {
            let counter = |name, unit, description| counter(meter, name, unit, description);
            let instruments = PickFirstInstruments {
                succeeded: counter(
                    "grpc.lb.pick_first.connection_attempts_succeeded",
                    "{attempt}",
                    "Number of successful connection attempts.",
                ),
                failed: counter(
                    "grpc.lb.pick_first.connection_attempts_failed",
                    "{attempt}",
                    "Number of failed connection attempts.",
                ),
                disconnections: counter(
                    "grpc.lb.pick_first.disconnections",
                    "{disconnection}",
                    "Number of times the selected subchannel becomes disconnected.",
                ),
                labels: [KeyValue::new("grpc.target", options.metrics_target())],
            };
            return PickFirstMetrics {
                otel: Some(Box::new(instruments)),
            };
        }
        let _ = options;
        PickFirstMetrics::default()
    }

    /// The policy selected a connected subchannel.
    pub(crate) fn connected(&self) {
        #[cfg(feature = "otel")]
        if let Some(m) = &self.otel {
            m.succeeded.add(1, &m.labels);
        }
    }

    /// A subchannel the policy was connecting failed.
    pub(crate) fn attempt_failed(&self) {
        #[cfg(feature = "otel")]
        if let Some(m) = &self.otel {
            m.failed.add(1, &m.labels);
        }
    }

    /// The selected subchannel's connection was lost.
    pub(crate) fn disconnected(&self) {
        #[cfg(feature = "otel")]
        if let Some(m) = &self.otel {
            m.disconnections.add(1, &m.labels);
        }
    }
}

/// weighted_round_robin's instruments (gRFC A78); clones share them.
#[derive(Clone, Default)]
pub(crate) struct WrrMetrics {
    #[cfg(feature = "otel")]
    otel: Option<Arc<WrrInstruments>>,
}

#[cfg(feature = "otel")]
struct WrrInstruments {
    rr_fallback: Counter<u64>,
    not_yet_usable: Counter<u64>,
    stale: Counter<u64>,
    weights: Histogram<f64>,
    /// `grpc.target`, `grpc.lb.locality`.
    labels: [KeyValue; 2],
}

/// Why an endpoint has a weight or not, at one scheduler update (A58).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum WeightState {
    /// No load report yet, or reports for less than the blackout period.
    NotYetUsable,
    /// The last report is older than the expiration period.
    Stale,
    /// This weight is in use.
    Usable(f64),
}

impl WrrMetrics {
    /// Instruments from `options`' meter, if it has one.
    pub(crate) fn new(options: &BuildOptions) -> Self {
        #[cfg(feature = "otel")]
        if let Some(meter) = options.meter() {
            let counter = |name, unit, description| counter(meter, name, unit, description);
            let instruments = WrrInstruments {
                rr_fallback: counter(
                    "grpc.lb.wrr.rr_fallback",
                    "{update}",
                    "Number of scheduler updates in which there were not enough endpoints \
                     with valid weight, which caused the WRR policy to fall back to RR behavior.",
                ),
                not_yet_usable: counter(
                    "grpc.lb.wrr.endpoint_weight_not_yet_usable",
                    "{endpoint}",
                    "Number of endpoints from each scheduler update that don't yet have \
                     usable weight information.",
                ),
                stale: counter(
                    "grpc.lb.wrr.endpoint_weight_stale",
                    "{endpoint}",
                    "Number of endpoints from each scheduler update whose latest weight is \
                     older than the expiration period.",
                ),
                weights: meter
                    .f64_histogram("grpc.lb.wrr.endpoint_weights")
                    .with_unit("{weight}")
                    .with_description(
                        "Weight of each endpoint, recorded on every scheduler update. \
                         Endpoints without usable weights will be recorded as weight 0.",
                    )
                    .build(),
                labels: [
                    KeyValue::new("grpc.target", options.metrics_target()),
                    KeyValue::new("grpc.lb.locality", ""),
                ],
            };
            return WrrMetrics {
                otel: Some(Arc::new(instruments)),
            };
        }
        let _ = options;
        WrrMetrics::default()
    }

    /// Whether anything is recorded (so callers skip working out what).
    pub(crate) fn on(&self) -> bool {
        #[cfg(feature = "otel")]
        {
            self.otel.is_some()
        }
        #[cfg(not(feature = "otel"))]
        {
            false
        }
    }

    /// One scheduler update over endpoints in these `states`.
    pub(crate) fn scheduler_update(&self, states: impl IntoIterator<Item = WeightState>) {
        #[cfg(feature = "otel")]
        if let Some(m) = &self.otel {
            let mut usable = 0;
            for state in states {
                let weight = match state {
                    WeightState::NotYetUsable => {
                        m.not_yet_usable.add(1, &m.labels);
                        0.0
                    }
                    WeightState::Stale => {
                        m.stale.add(1, &m.labels);
                        0.0
                    }
                    WeightState::Usable(weight) => {
                        usable += 1;
                        weight
                    }
                };
                m.weights.record(weight, &m.labels);
            }
            // A58: fewer than two usable weights is round robin.
            if usable < 2 {
                m.rr_fallback.add(1, &m.labels);
            }
        }
        #[cfg(not(feature = "otel"))]
        let _ = states.into_iter();
    }
}

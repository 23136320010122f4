//! One endpoint's weight from its load reports (gRFC A58), written by
//! calls as they end and read by the weight update timer: atomics only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::WrrConfig;
use crate::balancer::metrics::WeightState;
use crate::orca::OrcaLoadReport;

impl From<&OrcaLoadReport> for Load {
    fn from(report: &OrcaLoadReport) -> Load {
        let utilization = if report.application_utilization > 0.0 {
            report.application_utilization
        } else {
            report.cpu_utilization
        };
        Load {
            qps: report.rps_fractional,
            eps: report.eps,
            utilization,
        }
    }
}

/// What a load report says, as A58 reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Load {
    /// Queries per second the backend served (`rps_fractional`).
    pub(crate) qps: f64,
    /// Errors per second (`eps`).
    pub(crate) eps: f64,
    /// `application_utilization`, else `cpu_utilization`.
    pub(crate) utilization: f64,
}

/// One endpoint's weight. Times are nanoseconds after `base` plus one
/// (0: never).
#[derive(Debug)]
pub(crate) struct EndpointWeight {
    base: Instant,
    weight: AtomicU64,
    last_updated: AtomicU64,
    non_empty_since: AtomicU64,
}

impl EndpointWeight {
    /// A weight with no report yet; `base` is a time before any report.
    pub(crate) fn new(base: Instant) -> Self {
        EndpointWeight {
            base,
            weight: AtomicU64::new(0),
            last_updated: AtomicU64::new(0),
            non_empty_since: AtomicU64::new(0),
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.base).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
    }

    fn since(&self, stamp: u64, now: Instant) -> Duration {
        Duration::from_nanos(self.stamp(now).saturating_sub(stamp))
    }

    /// A report arrived at `now`: weight = qps / (utilization + eps/qps ·
    /// penalty). A report without qps or utilization is ignored (A58).
    pub(crate) fn on_report(&self, load: Load, now: Instant, penalty: f64) {
        if load.qps <= 0.0 || load.utilization <= 0.0 || !load.qps.is_finite() {
            return;
        }
        let penalty = load.eps / load.qps * penalty;
        let weight = load.qps / (load.utilization + penalty);
        if !weight.is_finite() {
            return;
        }
        let stamp = self.stamp(now);
        self.weight.store(weight.to_bits(), Ordering::Relaxed);
        self.last_updated.store(stamp, Ordering::Release);
        let _ =
            (self.non_empty_since).compare_exchange(0, stamp, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// The weight to use at `now`, 0 without a valid one: no report in the
    /// last `weightExpirationPeriod` (then the blackout starts again with
    /// the next report), or reports for less than `blackoutPeriod`.
    pub(crate) fn weight(&self, now: Instant, config: &WrrConfig) -> f64 {
        match self.state(now, config) {
            WeightState::Usable(weight) => weight,
            WeightState::NotYetUsable => 0.0,
            WeightState::Stale => {
                self.non_empty_since.store(0, Ordering::Relaxed);
                0.0
            }
        }
    }

    /// Whether the weight is usable at `now`, and if not why (gRFC A78's
    /// `endpoint_weight_not_yet_usable` and `endpoint_weight_stale`),
    /// changing nothing.
    pub(crate) fn state(&self, now: Instant, config: &WrrConfig) -> WeightState {
        let last = self.last_updated.load(Ordering::Acquire);
        if last == 0 {
            return WeightState::NotYetUsable;
        }
        if self.since(last, now) >= config.weight_expiration_period {
            return WeightState::Stale;
        }
        let since = self.non_empty_since.load(Ordering::Relaxed);
        let blackout = config.blackout_period;
        if !blackout.is_zero() && (since == 0 || self.since(since, now) < blackout) {
            return WeightState::NotYetUsable;
        }
        WeightState::Usable(f64::from_bits(self.weight.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WrrConfig {
        WrrConfig::default()
    }

    fn load(qps: f64, eps: f64, utilization: f64) -> Load {
        Load {
            qps,
            eps,
            utilization,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn weight_is_qps_over_utilization_plus_the_error_penalty_after_the_blackout() {
        let w = EndpointWeight::new(Instant::now());
        w.on_report(load(100.0, 10.0, 0.5), Instant::now(), 1.0);
        assert_eq!(w.weight(Instant::now(), &config()), 0.0, "blackout");
        tokio::time::advance(Duration::from_secs(10)).await;
        w.on_report(load(100.0, 10.0, 0.5), Instant::now(), 1.0);
        // 100 / (0.5 + 10/100 · 1)
        let got = w.weight(Instant::now(), &config());
        assert!((got - 100.0 / 0.6).abs() < 1e-9, "{got}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_weight_is_zero_and_the_blackout_starts_again() {
        let w = EndpointWeight::new(Instant::now());
        w.on_report(load(10.0, 0.0, 0.1), Instant::now(), 1.0);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!((w.weight(Instant::now(), &config()) - 100.0).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(180)).await;
        assert_eq!(w.weight(Instant::now(), &config()), 0.0, "expired");
        w.on_report(load(10.0, 0.0, 0.1), Instant::now(), 1.0);
        assert_eq!(w.weight(Instant::now(), &config()), 0.0, "a new blackout");
    }

    #[tokio::test(start_paused = true)]
    async fn reports_without_qps_or_utilization_are_ignored() {
        let w = EndpointWeight::new(Instant::now());
        w.on_report(load(0.0, 0.0, 0.5), Instant::now(), 1.0);
        w.on_report(load(10.0, 0.0, 0.0), Instant::now(), 1.0);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(w.weight(Instant::now(), &config()), 0.0);
        w.on_report(load(10.0, 0.0, 0.5), Instant::now(), 1.0);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(w.weight(Instant::now(), &config()), 20.0);
    }
}

//! Call counters and gRFC A50's ejection algorithms, as pure functions of
//! the counts, the config, the time and a random source. The units judged
//! ("addresses" below, as A50 says) are endpoints since gRFC A61: the
//! policy gives one [`Ejection`] per endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::picker::{CallObserver, DoneInfo};

use super::config::{FailurePercentageEjection, OutlierDetectionConfig, SuccessRateEjection};

/// One address's calls in the current interval, lock-free: successes in
/// the high 32 bits and failures in the low 32 bits of one atomic, so
/// recording a call is one `fetch_add` (no lock, no allocation) and
/// taking the interval's counts is one `swap` (A50's active and inactive
/// buckets in one word). More than 4 billion failures in one interval
/// would carry into the successes.
#[derive(Debug, Default)]
pub(crate) struct CallCounter(AtomicU64);

/// The calls of one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Calls {
    pub(crate) successes: u32,
    pub(crate) failures: u32,
}

impl CallCounter {
    /// Counts one call that ended.
    pub(crate) fn record(&self, success: bool) {
        let one = if success { 1 << 32 } else { 1 };
        self.0.fetch_add(one, Ordering::Relaxed);
    }

    /// The interval's counts; counting starts again from zero.
    pub(crate) fn take(&self) -> Calls {
        let both = self.0.swap(0, Ordering::Relaxed);
        Calls {
            successes: (both >> 32) as u32,
            failures: both as u32,
        }
    }
}

impl CallObserver for CallCounter {
    /// OK is a success, any other status a failure; an attempt that never
    /// reached the server is not the backend's doing and is not counted.
    fn done(&self, info: &DoneInfo<'_>) {
        if info.bytes_sent() {
            self.record(info.code() == tonic::Code::Ok);
        }
    }
}

impl Calls {
    fn total(&self) -> u64 {
        u64::from(self.successes) + u64::from(self.failures)
    }
}

/// What the algorithms know of one address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ejection {
    /// The calls of the interval that just ended.
    pub(crate) calls: Calls,
    /// When it was ejected, while it is.
    pub(crate) ejected_at: Option<Instant>,
    /// How many ejection times its next ejection lasts: one more on each
    /// ejection, one less on each interval it is not ejected.
    pub(crate) multiplier: u32,
}

impl Ejection {
    fn eject(&mut self, now: Instant) {
        self.ejected_at = Some(now);
        self.multiplier += 1;
    }
}

/// Runs one interval of gRFC A50 over `addresses`: the success-rate
/// algorithm, then the failure-percentage one, then un-ejection of those
/// whose ejection time is over (`base_ejection_time` times the
/// multiplier, at most `max(base_ejection_time, max_ejection_time)`) and
/// the multiplier of the others brought down by one. Returns the indices
/// ejected and those un-ejected.
pub(crate) fn run_interval(
    addresses: &mut [Ejection],
    config: &OutlierDetectionConfig,
    now: Instant,
    rng: &mut impl Rng,
) -> (Vec<usize>, Vec<usize>) {
    let mut ejected = Vec::new();
    let mut pass = Pass {
        addresses: &mut *addresses,
        max_percent: config.max_ejection_percent,
        now,
        rng,
        ejected: &mut ejected,
    };
    if let Some(sr) = &config.success_rate_ejection {
        success_rate(&mut pass, sr);
    }
    if let Some(fp) = &config.failure_percentage_ejection {
        failure_percentage(&mut pass, fp);
    }
    let cap = config.base_ejection_time.max(config.max_ejection_time);
    let mut unejected = Vec::new();
    for (i, address) in addresses.iter_mut().enumerate() {
        match address.ejected_at {
            None => address.multiplier = address.multiplier.saturating_sub(1),
            Some(at) => {
                let time = ejection_time(config.base_ejection_time, address.multiplier, cap);
                if now >= at + time {
                    address.ejected_at = None;
                    unejected.push(i);
                }
            }
        }
    }
    (ejected, unejected)
}

/// `base * multiplier`, at most `cap`.
fn ejection_time(base: Duration, multiplier: u32, cap: Duration) -> Duration {
    base.checked_mul(multiplier).map_or(cap, |t| t.min(cap))
}

/// Whether ejecting one more would be allowed: fewer than `max_percent` of
/// the addresses are ejected (A50: checked before each ejection, so one
/// address can always be ejected while none is).
fn below_max(addresses: &[Ejection], max_percent: u32) -> bool {
    let ejected = addresses.iter().filter(|a| a.ejected_at.is_some()).count();
    (ejected as u64) * 100 < u64::from(max_percent) * addresses.len() as u64
}

/// The addresses with at least `volume` calls in the interval, if there
/// are at least `minimum_hosts` of them (else none: too few to judge).
fn candidates(addresses: &[Ejection], volume: u32, minimum_hosts: u32) -> Vec<usize> {
    let considered: Vec<usize> = (0..addresses.len())
        .filter(|&i| addresses[i].calls.total() >= u64::from(volume))
        .collect();
    if considered.len() < (minimum_hosts as usize).max(1) {
        return Vec::new();
    }
    considered
}

/// One algorithm's ejections: each of `considered` for which `outlier`
/// holds is ejected with probability `enforcement` percent, while fewer
/// than `max_percent` of the addresses are ejected.
struct Pass<'a, R> {
    addresses: &'a mut [Ejection],
    max_percent: u32,
    now: Instant,
    rng: &'a mut R,
    ejected: &'a mut Vec<usize>,
}

impl<R: Rng> Pass<'_, R> {
    fn eject_outliers(
        &mut self,
        considered: &[usize],
        enforcement: u32,
        outlier: impl Fn(usize, Calls) -> bool,
    ) {
        for (n, &i) in considered.iter().enumerate() {
            if !below_max(self.addresses, self.max_percent) {
                return;
            }
            let address = &mut self.addresses[i];
            if address.ejected_at.is_none()
                && outlier(n, address.calls)
                && self.rng.random_range(0..100) < enforcement
            {
                address.eject(self.now);
                self.ejected.push(i);
            }
        }
    }
}

fn success_rate<R: Rng>(pass: &mut Pass<'_, R>, config: &SuccessRateEjection) {
    let considered = candidates(pass.addresses, config.request_volume, config.minimum_hosts);
    if considered.is_empty() {
        return;
    }
    let rate = |calls: Calls| f64::from(calls.successes) / calls.total() as f64;
    let rates: Vec<f64> = considered
        .iter()
        .map(|&i| rate(pass.addresses[i].calls))
        .collect();
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - variance.sqrt() * (f64::from(config.stdev_factor) / 1000.0);
    pass.eject_outliers(&considered, config.enforcement_percentage, |n, _| {
        rates[n] < threshold
    });
}

fn failure_percentage<R: Rng>(pass: &mut Pass<'_, R>, config: &FailurePercentageEjection) {
    let considered = candidates(pass.addresses, config.request_volume, config.minimum_hosts);
    let threshold = f64::from(config.threshold);
    pass.eject_outliers(&considered, config.enforcement_percentage, |_, calls| {
        f64::from(calls.failures) * 100.0 / calls.total() as f64 > threshold
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::BalancerRegistry;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use serde_json::json;

    fn config(json: serde_json::Value) -> OutlierDetectionConfig {
        let mut json = json;
        json["childPolicy"] = json!([{"round_robin": {}}]);
        OutlierDetectionConfig::from_json(&json, &BalancerRegistry::new()).unwrap()
    }

    fn with_calls(calls: &[(u32, u32)]) -> Vec<Ejection> {
        calls
            .iter()
            .map(|&(successes, failures)| Ejection {
                calls: Calls {
                    successes,
                    failures,
                },
                ..Ejection::default()
            })
            .collect()
    }

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    #[test]
    fn a_counter_counts_without_a_lock_and_take_starts_a_new_interval() {
        let counter = CallCounter::default();
        for i in 0..10 {
            counter.record(i % 5 != 0);
        }
        let calls = counter.take();
        assert_eq!((calls.successes, calls.failures), (8, 2));
        assert_eq!(counter.take(), Calls::default());
    }

    #[test]
    fn success_rate_ejects_the_address_more_than_stdev_factor_deviations_below_the_mean() {
        let c = config(
            json!({"maxEjectionPercent": 50, "successRateEjection": {"stdevFactor": 1000, "requestVolume": 10}}),
        );
        let mut a = with_calls(&[(100, 0), (100, 0), (99, 1), (100, 0), (10, 90)]);
        let (ejected, _) = run_interval(&mut a, &c, Instant::now(), &mut rng());
        assert_eq!(ejected, [4]);
        assert_eq!(a[4].multiplier, 1);
    }

    #[test]
    fn stdev_factor_is_in_thousandths() {
        // Rates 1, 1, 1, 1, 0.6: mean 0.92, stdev 0.16; 0.6 is 2 stdev below.
        let calls = [(100, 0), (100, 0), (100, 0), (100, 0), (60, 40)];
        for (factor, want) in [(1900, vec![4]), (2100, vec![])] {
            let c = config(
                json!({"maxEjectionPercent": 50, "successRateEjection": {"stdevFactor": factor}}),
            );
            let mut a = with_calls(&calls);
            let (ejected, _) = run_interval(&mut a, &c, Instant::now(), &mut rng());
            assert_eq!(ejected, want, "stdevFactor {factor}");
        }
    }

    #[test]
    fn too_few_hosts_with_enough_requests_eject_nobody() {
        let c = config(json!({"maxEjectionPercent": 50, "failurePercentageEjection": {}}));
        // Only 4 addresses have the 50 calls failurePercentage needs.
        let mut a = with_calls(&[(50, 0), (50, 0), (50, 0), (0, 50), (0, 49)]);
        let (ejected, _) = run_interval(&mut a, &c, Instant::now(), &mut rng());
        assert!(ejected.is_empty());
    }

    #[test]
    fn failure_percentage_ejects_above_the_threshold() {
        let c = config(
            json!({"maxEjectionPercent": 100, "failurePercentageEjection": {"threshold": 85, "requestVolume": 10}}),
        );
        let mut a = with_calls(&[(10, 90), (15, 85), (100, 0), (100, 0), (1, 9)]);
        let (ejected, _) = run_interval(&mut a, &c, Instant::now(), &mut rng());
        assert_eq!(ejected, [0, 4], "85 % is not above 85");
    }

    #[test]
    fn max_ejection_percent_stops_further_ejections() {
        let c = config(
            json!({"maxEjectionPercent": 20, "failurePercentageEjection": {"requestVolume": 10}}),
        );
        let mut a = with_calls(&[(0, 100), (0, 100), (0, 100), (100, 0), (100, 0)]);
        let (ejected, _) = run_interval(&mut a, &c, Instant::now(), &mut rng());
        assert_eq!(ejected, [0], "one of five is 20 %");
        // The next interval: still at 20 %, nobody more.
        for address in &mut a {
            address.calls = Calls {
                successes: 0,
                failures: 100,
            };
        }
        let (ejected, _) = run_interval(&mut a, &c, Instant::now(), &mut rng());
        assert!(ejected.is_empty());
        assert_eq!(a.iter().filter(|e| e.ejected_at.is_some()).count(), 1);
    }

    #[test]
    fn enforcement_percentage_zero_never_ejects() {
        let c = config(
            json!({"maxEjectionPercent": 100, "failurePercentageEjection": {"enforcementPercentage": 0, "requestVolume": 1}}),
        );
        let mut a = with_calls(&[(0, 100); 5]);
        let (ejected, _) = run_interval(&mut a, &c, Instant::now(), &mut rng());
        assert!(ejected.is_empty());
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_max_ejection_time() {
        let c = config(json!({"baseEjectionTime": "10s", "maxEjectionTime": "25s"}));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut a = vec![Ejection {
            ejected_at: Some(t0),
            multiplier: 1,
            ..Default::default()
        }];
        assert_eq!(
            run_interval(&mut a, &c, at(9), &mut rng()).1,
            Vec::<usize>::new()
        );
        assert_eq!(
            run_interval(&mut a, &c, at(10), &mut rng()).1,
            [0],
            "1 x 10 s"
        );
        a[0] = Ejection {
            ejected_at: Some(t0),
            multiplier: 2,
            ..Default::default()
        };
        assert!(run_interval(&mut a, &c, at(19), &mut rng()).1.is_empty());
        assert_eq!(
            run_interval(&mut a, &c, at(20), &mut rng()).1,
            [0],
            "2 x 10 s"
        );
        a[0] = Ejection {
            ejected_at: Some(t0),
            multiplier: 7,
            ..Default::default()
        };
        assert_eq!(
            run_interval(&mut a, &c, at(25), &mut rng()).1,
            [0],
            "capped at 25 s"
        );
        // Not ejected: the multiplier comes down one per interval.
        assert_eq!(a[0].multiplier, 7);
        run_interval(&mut a, &c, at(26), &mut rng());
        assert_eq!(a[0].multiplier, 6);
    }

    #[test]
    fn a_max_ejection_time_below_the_base_caps_at_the_base() {
        let c = config(json!({"baseEjectionTime": "10s", "maxEjectionTime": "1s"}));
        let t0 = Instant::now();
        let mut a = vec![Ejection {
            ejected_at: Some(t0),
            multiplier: 3,
            ..Default::default()
        }];
        assert!(
            run_interval(&mut a, &c, t0 + Duration::from_secs(9), &mut rng())
                .1
                .is_empty()
        );
        assert_eq!(
            run_interval(&mut a, &c, t0 + Duration::from_secs(10), &mut rng()).1,
            [0]
        );
    }
}

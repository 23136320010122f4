//! Exponential backoff, per gRPC's `connection-backoff.md`: subchannels
//! reconnect on it, and resolvers retry on it.
//!
//! ```text
//! current_backoff = INITIAL_BACKOFF
//! each attempt:  connect timeout = max(MIN_CONNECT_TIMEOUT, current_backoff)
//!                on failure, wait until attempt start + current_backoff (jittered)
//!                current_backoff = min(current_backoff * MULTIPLIER, MAX_BACKOFF)
//! on success:    current_backoff = INITIAL_BACKOFF
//! ```
//!
//! "Success" is a connection that stayed READY for at least
//! INITIAL_BACKOFF; one lost sooner waits until its attempt's start plus
//! the current backoff, as a failed attempt does.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{Error, ErrorKind};

/// The longest delay or connect timeout used, whatever the config says
/// (about 30 years): a longer one (`Duration::MAX`) saturates to it
/// instead of overflowing the clock.
const LONGEST: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// Backoff parameters. The defaults are gRPC's (`connection-backoff.md`):
/// 1 s initial, x1.6, jitter 0.2, 120 s maximum, 20 s minimum connect
/// timeout.
///
/// Where it is used ([`BalancedChannelBuilder::build`](crate::BalancedChannelBuilder::build),
/// the `dns` and `etcd` resolvers, etcd registration) a config is checked
/// and refused with [`ErrorKind::Config`] naming the field unless:
///
/// - `initial` is above zero (a zero delay never grows: the subchannel
///   would reconnect in a tight loop);
/// - `multiplier` is finite and at least 1 (gRPC's delays never shrink);
/// - `jitter` is in 0.0..=1.0 (a fraction of the delay, either way);
/// - `max` is at least `initial`.
///
/// `min_connect_timeout` may be zero: an attempt then gets the current
/// backoff delay (never zero) to connect, as in gRPC's algorithm. Delays
/// and timeouts longer than about 30 years are used as 30 years.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Delay after the first failure (INITIAL_BACKOFF); above zero.
    pub initial: Duration,
    /// Growth factor per failure (MULTIPLIER); finite, at least 1.
    pub multiplier: f64,
    /// Each delay is randomised by up to this fraction either way
    /// (JITTER); 0.0 to 1.0.
    pub jitter: f64,
    /// Upper bound of the (unjittered) delay (MAX_BACKOFF); at least
    /// `initial`.
    pub max: Duration,
    /// The least time a connection attempt is allowed before it is given
    /// up (MIN_CONNECT_TIMEOUT): an attempt gets the larger of this and
    /// the current backoff delay.
    pub min_connect_timeout: Duration,
}

impl BackoffConfig {
    /// Checks the ranges listed on the type; `what` names the config's
    /// owner in the error ("backoff", "dns backoff", ...).
    pub(crate) fn check(&self, what: &str) -> Result<(), Error> {
        let bad = |why: String| Err(Error::new(ErrorKind::Config, format!("{what}: {why}")));
        if self.initial.is_zero() {
            return bad("initial is 0: it must be above zero (a zero delay never grows)".into());
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return bad(format!(
                "multiplier {} must be finite and at least 1",
                self.multiplier
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad(format!("jitter {} must be in 0.0..=1.0", self.jitter));
        }
        if self.max < self.initial {
            return bad(format!(
                "max {:?} is below initial {:?}",
                self.max, self.initial
            ));
        }
        Ok(())
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(120),
            min_connect_timeout: Duration::from_secs(20),
        }
    }
}

/// `start + after`, or [`LONGEST`] after `start` for a longer `after`
/// (`Duration::MAX` overflows an `Instant`): the deadline of a timeout a
/// user gave, which must never panic.
pub(crate) fn deadline(start: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    start + after.min(LONGEST)
}

/// `secs` as a duration, at most [`LONGEST`]; NaN or negative is zero.
fn saturating(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs)
        .unwrap_or(if secs > 0.0 { LONGEST } else { Duration::ZERO })
        .min(LONGEST)
}

/// The backoff state of one subchannel.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    current: Duration,
    rng: SmallRng,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig, seed: u64) -> Self {
        Backoff {
            current: config.initial.min(LONGEST),
            config,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// How long the next connection attempt may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.config
            .min_connect_timeout
            .max(self.current)
            .min(LONGEST)
    }

    /// The (jittered) delay between the start of the failed attempt and the
    /// next one; grows the delay for the attempt after.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.current.as_secs_f64();
        // A multiplier under 1 (or NaN) would shrink the delays, or make them
        // negative: treat it as 1.
        let multiplier = self.config.multiplier.max(1.0);
        let grown = (base * multiplier).min(self.config.max.as_secs_f64());
        self.current = saturating(grown);
        // Checked where configs come in; NaN is taken as 0 here.
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            self.rng.random_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        saturating(base * factor)
    }

    /// How long a connection must stay READY to count as a success that
    /// resets the delay: the initial delay. A connection lost sooner is
    /// treated as a failed attempt, so reconnecting to a server that drops
    /// every connection at once follows this schedule instead of looping.
    pub(crate) fn min_success(&self) -> Duration {
        self.config.initial
    }

    /// Back to the initial delay, after a successful connection.
    pub(crate) fn reset(&mut self) {
        self.current = self.config.initial.min(LONGEST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> BackoffConfig {
        BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        }
    }

    #[test]
    fn grows_by_the_multiplier_up_to_the_maximum() {
        let mut b = Backoff::new(no_jitter(), 1);
        let delays: Vec<f64> = (0..12).map(|_| b.next_delay().as_secs_f64()).collect();
        let want = [1.0, 1.6, 2.56, 4.096, 6.5536, 10.48576];
        for (got, want) in delays.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{delays:?}");
        }
        assert_eq!(delays[11], 120.0);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut b = Backoff::new(BackoffConfig::default(), 7);
        for _ in 0..100 {
            let base = b.current.as_secs_f64();
            let d = b.next_delay().as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "{d} vs {base}"
            );
        }
    }

    #[test]
    fn reset_returns_to_the_initial_delay() {
        let mut b = Backoff::new(no_jitter(), 1);
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn connect_timeout_is_at_least_the_minimum() {
        let mut b = Backoff::new(no_jitter(), 1);
        assert_eq!(b.connect_timeout(), Duration::from_secs(20));
        for _ in 0..12 {
            b.next_delay();
        }
        assert_eq!(b.connect_timeout(), Duration::from_secs(120));
    }

    #[test]
    fn huge_or_nonsense_values_saturate_instead_of_panicking() {
        let huge = BackoffConfig {
            initial: Duration::MAX,
            max: Duration::MAX,
            min_connect_timeout: Duration::MAX,
            jitter: 0.0,
            ..BackoffConfig::default()
        };
        let mut b = Backoff::new(huge, 1);
        for _ in 0..3 {
            assert_eq!(b.next_delay(), LONGEST);
        }
        assert_eq!(b.connect_timeout(), LONGEST);
        let nonsense = BackoffConfig {
            initial: Duration::ZERO,
            multiplier: f64::NAN,
            jitter: f64::NAN,
            max: Duration::ZERO,
            min_connect_timeout: Duration::ZERO,
        };
        let mut b = Backoff::new(nonsense, 1);
        assert_eq!(b.next_delay(), Duration::ZERO);
    }

    #[test]
    fn configs_outside_grpcs_ranges_are_refused_naming_the_field() {
        let d = BackoffConfig::default;
        let cases = [
            (
                BackoffConfig {
                    initial: Duration::ZERO,
                    ..d()
                },
                "backoff: initial is 0",
            ),
            (
                BackoffConfig {
                    multiplier: f64::NAN,
                    ..d()
                },
                "backoff: multiplier NaN must be finite and at least 1",
            ),
            (
                BackoffConfig {
                    multiplier: 0.5,
                    ..d()
                },
                "backoff: multiplier 0.5 must",
            ),
            (
                BackoffConfig {
                    multiplier: f64::INFINITY,
                    ..d()
                },
                "backoff: multiplier inf must",
            ),
            (
                BackoffConfig { jitter: 5.0, ..d() },
                "backoff: jitter 5 must be in 0.0..=1.0",
            ),
            (
                BackoffConfig {
                    jitter: -0.1,
                    ..d()
                },
                "backoff: jitter -0.1 must",
            ),
            (
                BackoffConfig {
                    jitter: f64::NAN,
                    ..d()
                },
                "backoff: jitter NaN must",
            ),
            (
                BackoffConfig {
                    max: Duration::from_millis(999),
                    ..d()
                },
                "backoff: max 999ms is below initial 1s",
            ),
        ];
        for (config, message) in cases {
            let error = config.check("backoff").unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Config);
            assert!(error.to_string().starts_with(message), "{error}");
        }
        for good in [
            d(),
            BackoffConfig {
                multiplier: 1.0,
                jitter: 0.0,
                min_connect_timeout: Duration::ZERO,
                ..d()
            },
            BackoffConfig {
                initial: Duration::MAX,
                max: Duration::MAX,
                jitter: 1.0,
                ..d()
            },
        ] {
            assert!(good.check("backoff").is_ok(), "{good:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let mut a = Backoff::new(BackoffConfig::default(), 42);
        let mut b = Backoff::new(BackoffConfig::default(), 42);
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }
}

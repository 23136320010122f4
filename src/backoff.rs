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

/// Backoff parameters. The defaults are gRPC's: 1 s initial, x1.6, jitter
/// 0.2, 120 s maximum, 20 s minimum connect timeout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Growth factor per failure.
    pub multiplier: f64,
    /// Each delay is randomised by up to this fraction either way.
    pub jitter: f64,
    /// Upper bound of the (unjittered) delay.
    pub max: Duration,
    /// A connection attempt may take at least this long before it fails.
    pub min_connect_timeout: Duration,
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
            current: config.initial,
            config,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// How long the next connection attempt may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.config.min_connect_timeout.max(self.current)
    }

    /// The (jittered) delay between the start of the failed attempt and the
    /// next one; grows the delay for the attempt after.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.current.as_secs_f64();
        // A multiplier under 1 (or NaN) would shrink the delays, or make them
        // negative: treat it as 1.
        let multiplier = self.config.multiplier.max(1.0);
        let grown = (base * multiplier).min(self.config.max.as_secs_f64());
        self.current = Duration::from_secs_f64(grown);
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            self.rng.random_range(1.0 - jitter..=1.0 + jitter)
        } else {
            1.0
        };
        Duration::from_secs_f64(base * factor)
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
        self.current = self.config.initial;
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
    fn the_same_seed_gives_the_same_delays() {
        let mut a = Backoff::new(BackoffConfig::default(), 42);
        let mut b = Backoff::new(BackoffConfig::default(), 42);
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }
}

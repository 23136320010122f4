//! How etcd requests are bounded and retried: a time limit per request and
//! the crate's [`backoff`](crate::backoff) between attempts.

use std::time::Duration;

use crate::backoff::{Backoff, BackoffConfig};

/// How the etcd resolver and registration bound and retry their etcd
/// requests.
///
/// Each request (reading the prefix, creating a watch, granting a lease,
/// putting a key, revoking) may take at most `request_timeout`. After a
/// failure (a broken watch or keep-alive, etcd unreachable) the next
/// attempt waits a delay shaped by `backoff` (gRPC's
/// `connection-backoff.md`: `initial`, growing by `multiplier` up to `max`,
/// each delay randomised by `jitter`); a success resets it.
/// `backoff.min_connect_timeout` is not used here.
///
/// The default: 5 s per request; delays of 100 ms growing x1.6 (jitter
/// 0.2) up to 5 s.
///
/// ```
/// use std::time::Duration;
/// use tonic_balance::resolver::{EtcdResolverBuilder, EtcdRetryConfig};
///
/// let retry = EtcdRetryConfig::default().with_request_timeout(Duration::from_secs(2));
/// let resolver = EtcdResolverBuilder::new().with_retry(retry);
/// # drop(resolver);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct EtcdRetryConfig {
    /// The time limit of each etcd request.
    pub request_timeout: Duration,
    /// The delays between attempts (`min_connect_timeout` is ignored).
    pub backoff: BackoffConfig,
}

impl EtcdRetryConfig {
    /// Sets the time limit of each etcd request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the delays between attempts.
    pub fn with_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }
}

impl Default for EtcdRetryConfig {
    fn default() -> Self {
        EtcdRetryConfig {
            request_timeout: Duration::from_secs(5),
            backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                multiplier: 1.6,
                jitter: 0.2,
                max: Duration::from_secs(5),
                ..BackoffConfig::default()
            },
        }
    }
}

/// The retry state of one etcd task (a watch or a registration).
#[derive(Debug)]
pub(crate) struct Retry {
    backoff: Backoff,
    request_timeout: Duration,
}

impl Retry {
    /// Delays drawn from `seed`, so a fixed seed gives the same delays.
    pub(crate) fn new(config: EtcdRetryConfig, seed: u64) -> Self {
        Retry {
            backoff: Backoff::new(config.backoff, seed),
            request_timeout: config.request_timeout,
        }
    }

    /// How long to wait before the next attempt; grows the one after.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.backoff.next_delay()
    }

    /// Back to the initial delay, after a success.
    pub(crate) fn reset(&mut self) {
        self.backoff.reset();
    }

    /// The time limit of one etcd request.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> EtcdRetryConfig {
        let defaults = EtcdRetryConfig::default();
        defaults.with_backoff(BackoffConfig {
            jitter: 0.0,
            ..defaults.backoff
        })
    }

    #[test]
    fn delays_grow_from_100_ms_to_5_s_and_reset() {
        let mut retry = Retry::new(no_jitter(), 1);
        let delays: Vec<u128> = (0..12).map(|_| retry.next_delay().as_millis()).collect();
        assert_eq!(&delays[..3], [100, 160, 256]);
        assert_eq!(delays[11], 5000);
        retry.reset();
        assert_eq!(retry.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn the_request_timeout_is_its_own_setting_not_the_connect_timeout() {
        let config = EtcdRetryConfig::default().with_backoff(BackoffConfig {
            min_connect_timeout: Duration::from_secs(60),
            ..BackoffConfig::default()
        });
        assert_eq!(
            Retry::new(config, 1).request_timeout(),
            Duration::from_secs(5)
        );
        let config = config.with_request_timeout(Duration::from_millis(250));
        assert_eq!(
            Retry::new(config, 1).request_timeout(),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let (mut a, mut b) = (
            Retry::new(EtcdRetryConfig::default(), 9),
            Retry::new(EtcdRetryConfig::default(), 9),
        );
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }
}

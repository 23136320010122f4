//! The DNS resolver's task: look up, send, wait, repeat.
//!
//! ```text
//!        +--------------------------------------------------------+
//!        v                                                        |
//!   LOOKUP --ok--> send the set (if it changed) --> wait until     |
//!     |                  the refresh time, or a resolve_now ------+
//!     |                  plus the rest of min_resolve_interval
//!     +--error--> sink.error (the channel keeps its addresses)
//!                 --> wait the backoff delay (resolve_now ignored) --+
//! ```
//!
//! Times count from the start of the last lookup, on tokio's clock. The
//! task ends when the channel's receiver closes or the resolver is dropped
//! (its handle aborts the task).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use super::lookup::{DnsAnswer, DnsLookup};
use crate::backoff::Backoff;
use crate::resolver::{ResolverUpdate, UpdateSink};
use crate::subchannel::BackoffConfig;
use crate::{Address, Error, ErrorKind};

/// When to look up again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) refresh: Duration,
    pub(super) min_resolve_interval: Duration,
    pub(super) ttl_bounds: Option<(Duration, Duration)>,
    pub(super) backoff: BackoffConfig,
    pub(super) lookup_timeout: Duration,
}

impl Timing {
    /// The delay after a good lookup: the TTL within bounds if asked to
    /// follow it (and it is known), else the refresh interval.
    fn refresh_after(&self, ttl: Option<Duration>) -> Duration {
        match (self.ttl_bounds, ttl) {
            (Some((min, max)), Some(ttl)) => ttl.clamp(min, max.max(min)),
            _ => self.refresh,
        }
    }
}

/// Requests for an early lookup. Every request made before a lookup starts
/// is answered by that lookup, so a burst costs one lookup.
#[derive(Debug, Default)]
pub(super) struct Wake {
    notify: Notify,
    requested: AtomicBool,
}

impl Wake {
    pub(super) fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Forgets the requests this lookup answers.
    fn clear(&self) {
        self.requested.store(false, Ordering::SeqCst);
    }

    /// Completes at the first request made since the last `clear`.
    async fn requested(&self) {
        while !self.requested.load(Ordering::SeqCst) {
            self.notify.notified().await;
        }
    }
}

/// One resolver's loop.
pub(super) struct Task {
    pub(super) target: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) lookup: Arc<dyn DnsLookup>,
    pub(super) timing: Timing,
    pub(super) sink: UpdateSink,
    pub(super) wake: Arc<Wake>,
    /// gRPC's backoff between failed lookups, seeded from the channel's
    /// `rng_seed`.
    pub(super) backoff: Backoff,
}

impl Task {
    pub(super) async fn run(mut self) {
        let mut failures = 0u32;
        let mut sent: Option<Vec<Address>> = None;
        loop {
            let started = Instant::now();
            self.wake.clear();
            let Some(outcome) = self.lookup_once().await else {
                break;
            };
            let next = match outcome {
                Ok(answer) => {
                    let (addresses, ttl) = (self.addresses(&answer), answer.ttl);
                    let mut sorted = addresses.clone();
                    sorted.sort();
                    // A full snapshot, sent when the set changed or after an
                    // error (so a failing channel hears the good news again).
                    if failures > 0 || sent.as_ref() != Some(&sorted) {
                        tracing::debug!(target = %self.target, ?addresses, "dns: resolved");
                        self.sink.update(ResolverUpdate::new(addresses));
                        sent = Some(sorted);
                    }
                    failures = 0;
                    self.backoff.reset();
                    started + self.timing.refresh_after(ttl)
                }
                Err(error) => {
                    let delay = self.backoff.next_delay();
                    tracing::debug!(target = %self.target, %error, ?delay, "dns: lookup failed; retrying");
                    self.sink.error(error);
                    failures = failures.saturating_add(1);
                    started + delay
                }
            };
            if !self.wait(started, next, failures == 0).await {
                break;
            }
        }
        tracing::debug!(target = %self.target, "dns: resolver stops");
    }

    /// One lookup, bounded by the lookup timeout. `None` once the channel
    /// is gone.
    async fn lookup_once(&self) -> Option<Result<DnsAnswer, Error>> {
        let lookup =
            tokio::time::timeout(self.timing.lookup_timeout, self.lookup.lookup(&self.host));
        let result = tokio::select! {
            biased;
            _ = self.sink.closed() => return None,
            result = lookup => result,
        };
        let result = match result {
            Ok(Ok(answer)) if answer.ips.is_empty() => Err(Error::new(
                ErrorKind::Resolver,
                format!("{:?} has no A or AAAA records", self.host),
            )),
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Resolver,
                format!(
                    "looking up {:?} took longer than {:?}",
                    self.host, self.timing.lookup_timeout
                ),
            )),
        };
        Some(result.map_err(|e| {
            Error::with_source(
                ErrorKind::Resolver,
                format!("dns: cannot resolve {}", self.target),
                e,
            )
        }))
    }

    fn addresses(&self, answer: &DnsAnswer) -> Vec<Address> {
        addresses(&answer.ips, self.port)
    }

    /// Waits until `next`, or after a resolve_now (when `resolve_now`
    /// counts) until `started + min_resolve_interval` if that is sooner.
    /// False once the channel is gone.
    async fn wait(&self, started: Instant, next: Instant, resolve_now: bool) -> bool {
        tokio::select! {
            biased;
            _ = self.sink.closed() => return false,
            _ = sleep_until(next) => return true,
            _ = self.wake.requested(), if resolve_now => {}
        }
        let earliest = (started + self.timing.min_resolve_interval).min(next);
        tokio::select! {
            biased;
            _ = self.sink.closed() => false,
            _ = sleep_until(earliest) => true,
        }
    }
}

/// `ip:port` addresses (`[v6]:port`), without duplicates, in order.
pub(super) fn addresses(ips: &[IpAddr], port: u16) -> Vec<Address> {
    let mut out: Vec<Address> = Vec::with_capacity(ips.len());
    for ip in ips {
        let address = Address::from(SocketAddr::new(*ip, port));
        if !out.contains(&address) {
            out.push(address);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::resolver::dns::DnsResolverBuilder;
    use crate::resolver::{Resolver, ResolverBuilder, UpdateReceiver};
    use crate::Target;

    /// A scripted DNS: the current answer (or error) and when it was asked.
    #[derive(Default)]
    struct Zone {
        answer: Option<Result<DnsAnswer, String>>,
        asked: Vec<Duration>,
        start: Option<Instant>,
        hang: bool,
    }

    #[derive(Clone, Default)]
    struct FakeDns(Arc<Mutex<Zone>>);

    impl FakeDns {
        fn new(ips: &[&str]) -> Self {
            let dns = FakeDns::default();
            dns.set(ips);
            dns.0.lock().unwrap().start = Some(Instant::now());
            dns
        }

        fn set(&self, ips: &[&str]) {
            let ips = ips.iter().map(|ip| ip.parse().unwrap());
            self.0.lock().unwrap().answer = Some(Ok(DnsAnswer::new(ips)));
        }

        fn set_answer(&self, answer: DnsAnswer) {
            self.0.lock().unwrap().answer = Some(Ok(answer));
        }

        fn fail(&self, why: &str) {
            self.0.lock().unwrap().answer = Some(Err(why.to_owned()));
        }

        /// Seconds since the start at which each lookup ran.
        fn asked(&self) -> Vec<f64> {
            let zone = self.0.lock().unwrap();
            zone.asked.iter().map(Duration::as_secs_f64).collect()
        }

        fn lookup(&self) -> impl DnsLookup {
            let zone = self.0.clone();
            move |host: &str| {
                let (answer, hang) = {
                    let mut zone = zone.lock().unwrap();
                    let since = zone.start.map(|s| s.elapsed()).unwrap_or_default();
                    zone.asked.push(since);
                    (zone.answer.clone(), zone.hang)
                };
                let host = host.to_owned();
                async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    match answer {
                        Some(Ok(answer)) => Ok(answer),
                        other => {
                            let why = other.and_then(Result::err).unwrap_or_default();
                            Err(Error::new(ErrorKind::Resolver, format!("{host:?}: {why}")))
                        }
                    }
                }
            }
        }
    }

    fn start(dns: &FakeDns, builder: DnsResolverBuilder) -> (Box<dyn Resolver>, UpdateReceiver) {
        let (sink, rx) = UpdateSink::channel();
        let target: Target = "dns:///svc.test:50051".parse().unwrap();
        let resolver = builder.lookup(dns.lookup()).build(&target, sink).unwrap();
        (resolver, rx)
    }

    async fn next_set(rx: &mut UpdateReceiver) -> Vec<String> {
        let update = rx
            .recv()
            .await
            .unwrap()
            .into_result()
            .expect("an update, not an error");
        update.addresses().iter().map(|a| a.to_string()).collect()
    }

    fn no_jitter(initial: u64, max: u64) -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_secs(initial),
            multiplier: 2.0,
            jitter: 0.0,
            max: Duration::from_secs(max),
            ..BackoffConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_every_interval_and_sends_only_changed_sets() {
        let dns = FakeDns::new(&["10.0.0.1", "10.0.0.2"]);
        let (_resolver, mut rx) = start(&dns, DnsResolverBuilder::default());
        assert_eq!(
            next_set(&mut rx).await,
            ["10.0.0.1:50051", "10.0.0.2:50051"]
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        dns.set(&["10.0.0.2", "10.0.0.3", "::1"]);
        assert_eq!(
            next_set(&mut rx).await,
            ["10.0.0.2:50051", "10.0.0.3:50051", "[::1]:50051"]
        );
        assert_eq!(dns.asked(), [0.0, 30.0]);
        // The same set in another order is no change.
        dns.set(&["::1", "10.0.0.3", "10.0.0.2"]);
        tokio::time::sleep(Duration::from_secs(65)).await;
        assert_eq!(dns.asked(), [0.0, 30.0, 60.0, 90.0]);
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn resolve_now_is_rate_limited_to_the_minimum_interval() {
        let dns = FakeDns::new(&["10.0.0.1"]);
        let builder = DnsResolverBuilder::default().refresh_interval(Duration::from_secs(3600));
        let (mut resolver, mut rx) = start(&dns, builder);
        next_set(&mut rx).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        dns.set(&["10.0.0.2"]);
        for _ in 0..5 {
            resolver.resolve_now();
        }
        assert_eq!(next_set(&mut rx).await, ["10.0.0.2:50051"]);
        assert_eq!(dns.asked(), [0.0, 30.0], "one lookup, 30 s after the last");
        tokio::time::sleep(Duration::from_secs(70)).await;
        resolver.resolve_now();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(dns.asked(), [0.0, 30.0, 100.0], "at once when due");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_minimum_interval_lets_resolve_now_act_quickly() {
        let dns = FakeDns::new(&["10.0.0.1"]);
        let builder = DnsResolverBuilder::default().min_resolve_interval(Duration::from_millis(5));
        let (mut resolver, mut rx) = start(&dns, builder);
        next_set(&mut rx).await;
        dns.set(&["10.0.0.2"]);
        resolver.resolve_now();
        assert_eq!(next_set(&mut rx).await, ["10.0.0.2:50051"]);
        assert_eq!(dns.asked(), [0.0, 0.005]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_is_reported_and_retried_with_backoff() {
        let dns = FakeDns::new(&["10.0.0.1"]);
        let builder = DnsResolverBuilder::default()
            .refresh_interval(Duration::from_secs(100))
            .backoff(no_jitter(1, 4));
        let (mut resolver, mut rx) = start(&dns, builder);
        next_set(&mut rx).await;
        dns.fail("SERVFAIL");
        tokio::time::sleep(Duration::from_secs(101)).await;
        let error = rx.recv().await.unwrap().into_result().unwrap_err();
        assert!(error.is_resolver());
        let text = error.to_string();
        assert!(
            text.contains("dns:///svc.test:50051") && text.contains("SERVFAIL"),
            "{text}"
        );
        // Backoff 1, 2, 4, 4 s; resolve_now does not shorten it, and no
        // empty set is ever sent.
        resolver.resolve_now();
        for _ in 0..4 {
            assert!(rx.recv().await.unwrap().into_result().is_err());
        }
        assert_eq!(dns.asked(), [0.0, 100.0, 101.0, 103.0, 107.0, 111.0]);
        // Recovery resends the (same) set and goes back to the refresh interval.
        dns.set(&["10.0.0.1"]);
        assert_eq!(next_set(&mut rx).await, ["10.0.0.1:50051"]);
        tokio::time::sleep(Duration::from_secs(150)).await;
        assert_eq!(dns.asked()[6..], [115.0, 215.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn following_ttl_keeps_the_delay_within_bounds() {
        let dns = FakeDns::new(&[]);
        let ip = "10.0.0.1".parse().unwrap();
        dns.set_answer(DnsAnswer::new([ip]).with_ttl(Duration::from_secs(2)));
        let builder = DnsResolverBuilder::default()
            .follow_ttl(Duration::from_secs(5), Duration::from_secs(60));
        let (_resolver, mut rx) = start(&dns, builder);
        next_set(&mut rx).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        dns.set_answer(DnsAnswer::new([ip]).with_ttl(Duration::from_secs(20)));
        tokio::time::sleep(Duration::from_secs(10)).await;
        dns.set_answer(DnsAnswer::new([ip]).with_ttl(Duration::from_secs(3000)));
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(dns.asked(), [0.0, 5.0, 25.0, 85.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_answer_or_a_hung_lookup_is_an_error() {
        let dns = FakeDns::new(&[]);
        let builder = DnsResolverBuilder::default().lookup_timeout(Duration::from_secs(2));
        let (_resolver, mut rx) = start(&dns, builder);
        let empty = rx
            .recv()
            .await
            .unwrap()
            .into_result()
            .unwrap_err()
            .to_string();
        assert!(
            empty.contains("\"svc.test\" has no A or AAAA records"),
            "{empty}"
        );
        dns.0.lock().unwrap().hang = true;
        let hung = rx
            .recv()
            .await
            .unwrap()
            .into_result()
            .unwrap_err()
            .to_string();
        assert!(hung.contains("took longer than 2s"), "{hung}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_stops_when_the_resolver_is_dropped_or_the_channel_closes() {
        for drop_resolver in [true, false] {
            let dns = FakeDns::new(&["10.0.0.1"]);
            let (resolver, mut rx) = start(&dns, DnsResolverBuilder::default());
            next_set(&mut rx).await;
            if drop_resolver {
                drop(resolver);
                tokio::time::sleep(Duration::from_secs(100)).await;
                assert_eq!(dns.asked(), [0.0]);
            } else {
                drop(rx);
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(resolver);
            }
            // The task dropped its lookup, and with it the fake's state.
            tokio::task::yield_now().await;
            assert_eq!(Arc::strong_count(&dns.0), 1);
        }
    }

    #[test]
    fn backoff_grows_to_the_maximum_and_jitter_stays_within_bounds() {
        let mut backoff = Backoff::new(no_jitter(1, 120), 3);
        let delays: Vec<u64> = (0..9).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 120, 120]);
        for seed in 0..100 {
            let d = Backoff::new(BackoffConfig::default(), seed)
                .next_delay()
                .as_secs_f64();
            assert!((0.8..=1.2).contains(&d), "{d}");
        }
    }
}

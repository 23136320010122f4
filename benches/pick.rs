//! Request-path and control-path costs of the built-in policies.
//!
//! - `pick/<policy>/1thread/<n>`: one `Picker::pick` (including dropping the
//!   returned `PickResult`, which for the built-in policies borrows its
//!   subchannel, so no handle is cloned or dropped) with `n` READY
//!   subchannels, on one thread.
//! - `pick/<policy>/2threads/<n>`: the same while two threads pick from the
//!   same picker at once; the figure is the time per pick seen by each
//!   thread (the mean of the two threads' elapsed time / picks).
//!   For `least_request` a pick is the whole accounting of a call: the
//!   random choices, the in-flight increment and the observer's `Arc`
//!   clone at pick, and the decrement when the dropped pick reports
//!   (as a call's completion does when it ends).
//!   `weighted_round_robin` has static weights 1, 2, 3, 1, ... (its stride
//!   scheduler, not the plain rotation) and attaches its load-report
//!   observer to each pick (one reference count); `ring_hash` (default
//!   ring of 1024..4096 points) hashes the call's `session-id` header,
//!   the same value every pick, with xxHash64 and searches the ring.
//! - `update/<policy>/10000_addresses_1pct_changed`: one
//!   `Balancer::resolver_update` with 10,000 addresses of which 100 differ
//!   from the previous update: the 9,900 kept subchannels are READY, the
//!   100 removed ones are dropped and 100 new ones are made and asked to
//!   connect (pick_first keeps its selected first address, so for it the
//!   update is a check that the selection is still listed).
//!
//! - `pick_done/<policy>/<threads>/<n>`: one pick and its completion with
//!   status OK (`Pick::complete`, what the channel does when a call ends),
//!   for round_robin alone and under `outlier_detection_experimental`
//!   (failure-percentage ejection on), whose picker adds the address's
//!   call counter to each pick and counts the outcome.
//!
//! - `event/round_robin/<n>`: one subchannel event (a failed child going
//!   IDLE, CONNECTING, failing again) in a READY round_robin channel of `n`
//!   subchannels, with the end-of-burst work the channel runs after it.
//!
//! Balancers run against the public `balancer::testing::FakeController`.
//! Its `new_subchannel` is a `HashMap` lookup by address, where the real
//! channel's control task does a similar lookup in its subchannel table, so
//! the update figure is close to (not exactly) what a channel pays; the
//! fake also keeps every published picker, so the benchmark drops them
//! outside the timed part.
//!
//! Run with `cargo bench --bench pick` (about a minute and a half in all:
//! short warm-up and measurement times keep it usable on a 2-core machine).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tonic_balance::balancer::testing::FakeController;
use tonic_balance::balancer::{
    Balancer, BalancerBuilder, BuildOptions, LbConfig, LeastRequestBuilder,
    OutlierDetectionBuilder, PickFirstBuilder, RingHashBuilder, RoundRobinBuilder,
    WeightedRoundRobinBuilder,
};
use tonic_balance::picker::{DoneInfo, PickInfo};
use tonic_balance::resolver::ResolverUpdate;
use tonic_balance::{Address, ConnectivityState, PickResult, Picker};

const SIZES: [usize; 5] = [1, 10, 100, 1_000, 10_000];

fn build(policy: &dyn BalancerBuilder) -> Box<dyn Balancer> {
    let target = "static:///bench:1".parse().expect("a valid target");
    policy.build(&BuildOptions::new(target, 7))
}

fn addr(i: usize) -> String {
    format!("10.{}.{}.{}:50051", i >> 16, (i >> 8) & 0xff, i & 0xff)
}

fn update(addrs: &[String]) -> ResolverUpdate {
    ResolverUpdate::new(addrs.iter().map(|a| Address::new(a.as_str())).collect())
}

/// The update a policy is benchmarked with: weights 1, 2, 3, 1, ... for
/// weighted_round_robin (so its scheduler is not plain round robin).
fn update_for(policy: &dyn BalancerBuilder, addrs: &[String]) -> ResolverUpdate {
    if policy.name() != "weighted_round_robin" {
        return update(addrs);
    }
    let weighted = (addrs.iter().enumerate())
        .map(|(i, a)| Address::new(a.as_str()).with_weight(1 + (i % 3) as u32))
        .collect();
    ResolverUpdate::new(weighted)
}

/// The config a policy is benchmarked with: ring_hash hashes the
/// `session-id` header.
fn config_for(policy: &dyn BalancerBuilder) -> LbConfig {
    let json = match policy.name() {
        "ring_hash" => serde_json::json!({"requestHashHeader": "session-id"}),
        _ => serde_json::json!({}),
    };
    policy.parse_config(&json).expect("a valid config")
}

/// The call every pick is for: one `session-id` (ring_hash's key).
fn call_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("session-id", http::HeaderValue::from_static("user-42"));
    headers
}

/// A balancer over `addrs` with every subchannel READY, and its controller.
fn ready_balancer(
    policy: &dyn BalancerBuilder,
    addrs: &[String],
) -> (Box<dyn Balancer>, FakeController) {
    ready_balancer_with(policy, addrs, &config_for(policy))
}

fn ready_balancer_with(
    policy: &dyn BalancerBuilder,
    addrs: &[String],
    config: &LbConfig,
) -> (Box<dyn Balancer>, FakeController) {
    let mut balancer = build(policy);
    let mut ctl = FakeController::new();
    ctl.set_recording(false);
    let lazy = policy.name() == "ring_hash";
    balancer.resolver_update(&update_for(policy, addrs), config, &mut ctl);
    for a in addrs {
        // round_robin and least_request connect every address; pick_first only its first,
        // and drops the rest once that one is READY; ring_hash connects on
        // picks (all are made READY here).
        if ctl.connects(a) == 0 && !lazy {
            continue;
        }
        ctl.deliver(&mut *balancer, a, ConnectivityState::Ready);
        // Each READY publishes a picker over every READY subchannel; keep
        // only the newest so 10,000 subchannels do not cost O(n^2) memory.
        let last = ctl.pickers.pop();
        ctl.pickers.clear();
        ctl.pickers.extend(last);
    }
    (balancer, ctl)
}

fn ready_picker(policy: &dyn BalancerBuilder, n: usize) -> Arc<dyn Picker> {
    let addrs: Vec<String> = (0..n).map(addr).collect();
    let (_balancer, ctl) = ready_balancer(policy, &addrs);
    assert_eq!(ctl.last_state(), ConnectivityState::Ready);
    ctl.picker().expect("a READY picker was published")
}

/// One pick, completed with status OK as the channel completes a call.
fn pick_done(picker: &dyn Picker, info: &PickInfo<'_>, headers: &http::HeaderMap) {
    if let PickResult::Pick(pick) = picker.pick(black_box(info)) {
        pick.complete(&DoneInfo::new(tonic::Code::Ok, true, true, headers));
    }
}

fn bench_pick_done(c: &mut Criterion) {
    let od = OutlierDetectionBuilder
        .parse_config(&serde_json::json!({
            "failurePercentageEjection": {},
            "childPolicy": [{"round_robin": {}}]
        }))
        .expect("a valid config");
    let policies: [(&str, &dyn BalancerBuilder, LbConfig); 2] = [
        ("round_robin", &RoundRobinBuilder, LbConfig::empty()),
        (
            "outlier_detection+round_robin",
            &OutlierDetectionBuilder,
            od,
        ),
    ];
    let headers = http::HeaderMap::new();
    let info = PickInfo::new("/proto.Simple/Route", &headers);
    for (name, policy, config) in &policies {
        let mut group = c.benchmark_group(format!("pick_done/{name}"));
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for n in [10, 1_000] {
            let addrs: Vec<String> = (0..n).map(addr).collect();
            let (_balancer, ctl) = ready_balancer_with(*policy, &addrs, config);
            let picker = ctl.picker().expect("a READY picker");
            group.bench_with_input(BenchmarkId::new("1thread", n), &n, |b, _| {
                b.iter(|| pick_done(&*picker, &info, &headers))
            });
            group.bench_with_input(BenchmarkId::new("2threads", n), &n, |b, _| {
                b.iter_custom(|iters| {
                    on_two_threads(iters, |info, headers| pick_done(&*picker, info, headers))
                })
            });
        }
        group.finish();
    }
}

/// Picks `iters` times on each of two threads started together; returns the
/// mean time per thread.
fn two_threads(picker: &Arc<dyn Picker>, iters: u64) -> Duration {
    on_two_threads(iters, |info, _| {
        black_box(picker.pick(black_box(info)));
    })
}

/// Runs `step` `iters` times on each of two threads started together;
/// returns the mean time per thread.
fn on_two_threads(iters: u64, step: impl Fn(&PickInfo<'_>, &http::HeaderMap) + Sync) -> Duration {
    let barrier = Barrier::new(2);
    let elapsed: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let headers = call_headers();
                    let info = PickInfo::new("/proto.Simple/Route", &headers);
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        step(&info, &headers);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a picking thread panicked"))
            .collect()
    });
    elapsed.iter().sum::<Duration>() / 2
}

fn bench_picks(c: &mut Criterion) {
    let least_request = LeastRequestBuilder::new();
    let policies: [(&str, &dyn BalancerBuilder); 5] = [
        ("round_robin", &RoundRobinBuilder),
        ("pick_first", &PickFirstBuilder),
        ("least_request", &least_request),
        ("weighted_round_robin", &WeightedRoundRobinBuilder),
        ("ring_hash", &RingHashBuilder),
    ];
    let headers = call_headers();
    let info = PickInfo::new("/proto.Simple/Route", &headers);
    for (name, policy) in policies {
        let mut group = c.benchmark_group(format!("pick/{name}"));
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for n in SIZES {
            let picker = ready_picker(policy, n);
            group.bench_with_input(BenchmarkId::new("1thread", n), &n, |b, _| {
                b.iter(|| black_box(picker.pick(black_box(&info))))
            });
            group.bench_with_input(BenchmarkId::new("2threads", n), &n, |b, _| {
                b.iter_custom(|iters| two_threads(&picker, iters))
            });
        }
        group.finish();
    }
}

fn bench_update(c: &mut Criterion) {
    const N: usize = 10_000;
    const CHANGED: usize = N / 100;
    let policies: [(&str, &dyn BalancerBuilder); 2] = [
        ("round_robin", &RoundRobinBuilder),
        ("pick_first", &PickFirstBuilder),
    ];
    let mut group = c.benchmark_group("update");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, policy) in policies {
        let a: Vec<String> = (0..N).map(addr).collect();
        // B replaces every 100th address of A (never the first, which
        // pick_first has selected) with a new one.
        let changed = |i: usize| i % (N / CHANGED) == N / CHANGED / 2;
        let b: Vec<String> = (0..N)
            .map(|i| {
                if changed(i) {
                    addr(N + i)
                } else {
                    a[i].clone()
                }
            })
            .collect();
        let (update_a, update_b) = (update(&a), update(&b));
        let (mut balancer, mut ctl) = ready_balancer(policy, &a);
        ctl.pickers.clear();
        // Alternates B, A, B, ...: each update keeps 9,900 READY
        // subchannels, drops 100 and adds 100 new (IDLE, asked to connect).
        let mut flip = true;
        group.bench_function(
            BenchmarkId::new(name, "10000_addresses_1pct_changed"),
            |bench| {
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        flip = !flip;
                        let next = if flip { &update_a } else { &update_b };
                        let start = Instant::now();
                        balancer.resolver_update(black_box(next), &LbConfig::empty(), &mut ctl);
                        total += start.elapsed();
                        ctl.pickers.clear();
                    }
                    total
                })
            },
        );
    }
    group.finish();
}

/// `event/round_robin/<n>`: one subchannel event in a READY round_robin
/// channel of `n` subchannels, the kind a channel with many failing
/// addresses handles all the time: a child that failed (sticky
/// TRANSIENT_FAILURE) goes IDLE after its backoff, CONNECTING, and fails
/// again. Neither the READY set nor the channel state changes, so no
/// picker is built. Each iteration is one `subchannel_update` plus the
/// channel's end-of-burst `work` (`FakeController::deliver` runs both).
fn bench_event(c: &mut Criterion) {
    use ConnectivityState::{Connecting, Idle, TransientFailure};
    let mut group = c.benchmark_group("event/round_robin");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for n in [100, 10_000] {
        let addrs: Vec<String> = (0..n).map(addr).collect();
        let (mut rr, mut ctl) = ready_balancer(&RoundRobinBuilder, &addrs);
        let flapping = addrs[n / 2].as_str();
        ctl.deliver_error(&mut *rr, flapping, TransientFailure, "refused");
        ctl.pickers.clear();
        let mut step = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                step = (step + 1) % 3;
                match [Idle, Connecting, TransientFailure][step] {
                    TransientFailure => {
                        ctl.deliver_error(&mut *rr, flapping, TransientFailure, "refused")
                    }
                    state => ctl.deliver(&mut *rr, flapping, state),
                }
            })
        });
        assert!(ctl.pickers.is_empty(), "nothing changed: no picker");
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_picks,
    bench_pick_done,
    bench_update,
    bench_event
);
criterion_main!(benches);

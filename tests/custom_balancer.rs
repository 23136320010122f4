//! User-written policies through the public API, against real backends:
//!
//! - `rotating_pin`: every call to one READY backend; every `intervalMs`
//!   (a parsed config, and a timer through `Controller::schedule_work`) it
//!   moves to the next one if calls to it failed (the call outcome, heard
//!   through a `CallObserver`), learning subchannel states only through
//!   the balancer contract;
//! - a naive "rotate over everything" picker that also counts calls in
//!   flight with a `CallObserver`, as a least-request policy would.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::every_address::{EveryAddress, Publish, Rotation};
use support::proto::simple_client::SimpleClient;
use support::{eventually, free_port, route, Backend};
use tonic_balance::balancer::{
    Balancer, BalancerBuilder, BalancerRegistry, BuildOptions, Controller, LbConfig,
};
use tonic_balance::picker::{
    CallObserver, DoneInfo, Pick, PickInfo, PickResult, Picker, QueuePicker,
};
use tonic_balance::resolver::ResolverUpdate;
use tonic_balance::subchannel::SubchannelState;
use tonic_balance::{BalancedChannel, ConnectivityState, Error, ErrorKind, Subchannel};

/// `rotating_pin`'s parsed config: `{"intervalMs": 500}`.
#[derive(Debug)]
struct PinConfig {
    interval: Duration,
}

struct RotatingPinBuilder;

impl BalancerBuilder for RotatingPinBuilder {
    fn name(&self) -> &str {
        "rotating_pin"
    }

    fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(RotatingPin::default())
    }

    fn parse_config(&self, json: &serde_json::Value) -> Result<LbConfig, Error> {
        let ms = match json.get("intervalMs") {
            None => 1000,
            Some(v) => v.as_u64().filter(|&ms| ms > 0).ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    format!("rotating_pin: \"intervalMs\" must be a positive integer, not {v}"),
                )
            })?,
        };
        let interval = Duration::from_millis(ms);
        Ok(LbConfig::new(PinConfig { interval }, json.clone()))
    }
}

/// Counts failed calls (any code but OK, and CANCELLED, the caller's own
/// choice) to the pinned backend.
#[derive(Default)]
struct Failures(AtomicUsize);

impl CallObserver for Failures {
    fn done(&self, info: &DoneInfo<'_>) {
        if !matches!(info.code(), tonic::Code::Ok | tonic::Code::Cancelled) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every call to one READY subchannel; the next one at a tick after calls
/// to it failed.
#[derive(Default)]
struct RotatingPin {
    /// Each subchannel with its state as the contract reported it.
    subchannels: Vec<(Subchannel, ConnectivityState)>,
    interval: Duration,
    /// The subchannel calls go to.
    pinned: Option<usize>,
    /// Failed calls to the pinned backend (a new count per pin).
    failures: Arc<Failures>,
    /// When the pin moves next.
    timer: Option<tokio::time::Instant>,
}

impl RotatingPin {
    /// Pins the first READY subchannel after `from`, or queues calls.
    fn pin(&mut self, from: usize, ctl: &mut dyn Controller) {
        let n = self.subchannels.len();
        self.pinned = (0..n)
            .map(|i| (from + i) % n)
            .find(|&i| self.subchannels[i].1 == ConnectivityState::Ready);
        self.failures = Arc::default();
        match self.pinned {
            Some(i) => ctl.update_picker(
                ConnectivityState::Ready,
                Arc::new(Pinned(self.subchannels[i].0.clone(), self.failures.clone())),
            ),
            None => ctl.update_picker(ConnectivityState::Connecting, Arc::new(QueuePicker)),
        }
    }

    fn start_timer(&mut self, ctl: &mut dyn Controller) {
        let at = tokio::time::Instant::now() + self.interval;
        self.timer = Some(at);
        ctl.schedule_work(at);
    }
}

impl Balancer for RotatingPin {
    fn resolver_update(
        &mut self,
        update: &ResolverUpdate,
        config: &LbConfig,
        ctl: &mut dyn Controller,
    ) {
        self.interval = config
            .get::<PinConfig>()
            .map_or(Duration::from_secs(1), |c| c.interval);
        self.subchannels = update
            .addresses()
            .iter()
            .filter_map(|a| ctl.new_subchannel(a).ok())
            .map(|(sc, state)| {
                sc.connect();
                (sc, state.connectivity)
            })
            .collect();
        self.pin(0, ctl);
        if self.timer.is_none() {
            self.start_timer(ctl);
        }
    }

    fn resolver_error(&mut self, _: &Error, _: &mut dyn Controller) {}

    fn subchannel_update(
        &mut self,
        sc: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        let Some(i) = self.subchannels.iter().position(|(s, _)| s == sc) else {
            return;
        };
        self.subchannels[i].1 = state.connectivity;
        if state.connectivity == ConnectivityState::Idle {
            sc.connect();
        }
        let pinned_left = self.pinned == Some(i) && state.connectivity != ConnectivityState::Ready;
        if self.pinned.is_none() || pinned_left {
            self.pin(i, ctl);
        }
    }

    fn work(&mut self, ctl: &mut dyn Controller) {
        if self
            .timer
            .is_some_and(|at| at <= tokio::time::Instant::now())
        {
            if self.failures.0.load(Ordering::Relaxed) > 0 {
                self.pin(self.pinned.map_or(0, |i| i + 1), ctl);
            }
            self.start_timer(ctl);
        }
    }
}

/// Lends the pinned subchannel to every call, observed by the pin's
/// failure count.
struct Pinned(Subchannel, Arc<Failures>);

impl Picker for Pinned {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        PickResult::Pick(Pick::borrowed(&self.0).with_observer(self.1.clone()))
    }
}

fn rotating_pin_channel(target: String, interval_ms: u64) -> Result<BalancedChannel, Error> {
    let mut registry = BalancerRegistry::new();
    registry.register(Arc::new(RotatingPinBuilder));
    BalancedChannel::builder(target)
        .balancer_registry(registry)
        .service_config(format!(
            r#"{{"loadBalancingConfig":[{{"rotating_pin":{{"intervalMs":{interval_ms}}}}}]}}"#
        ))
        .build()
}

async fn peers(client: &mut SimpleClient<BalancedChannel>, n: usize) -> Vec<String> {
    let mut peers = Vec::with_capacity(n);
    for i in 0..n {
        peers.push(route(client, &format!("{i}")).await.expect("a call"));
    }
    peers
}

#[tokio::test]
async fn a_user_policy_with_a_config_a_timer_and_call_outcomes_moves_the_pin_off_failures() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (a, b) = (Backend::start(), Backend::start());
        let target = format!("static:///{},{}", a.addr, b.addr);
        // Calls that succeed keep the pin, tick after tick (100 ms).
        let channel = rotating_pin_channel(target, 100).unwrap();
        let mut client = SimpleClient::new(channel);
        let first = peers(&mut client, 1).await.remove(0);
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let got = peers(&mut client, 5).await;
            assert!(got.iter().all(|p| *p == first), "pinned: {got:?}");
        }
        // A failed call (its outcome, heard by the picker's observer):
        // the next tick moves the pin.
        let status = route(&mut client, "fail:14").await.expect_err("fails");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let mut moved = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if peers(&mut client, 1).await[0] != first {
                moved = true;
                break;
            }
        }
        assert!(moved, "the pin never left {first}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_bad_policy_config_fails_the_build_naming_the_field() {
    let err = rotating_pin_channel("static:///127.0.0.1:1".into(), 0).unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(
        err.to_string()
            .contains("rotating_pin: \"intervalMs\" must be a positive integer, not 0"),
        "{err}"
    );
}

/// Rotates over every subchannel, connected or not (the request path must
/// re-pick when it lands on one that is not), counting calls in flight.
#[derive(Clone, Default)]
struct RotateAll {
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

/// A call that ended is no longer in flight.
impl CallObserver for RotateAll {
    fn done(&self, _: &DoneInfo<'_>) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RotateAll {
    /// The policy, every pick counted in flight.
    fn policy(&self) -> EveryAddress {
        let counters = self.clone();
        EveryAddress::new("rotate_all", Publish::AtOnce, move |subchannels| {
            let observer = Arc::new(counters.clone());
            let counters = counters.clone();
            let on_pick = move || {
                let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
            };
            Arc::new(Rotation::new(subchannels, observer, on_pick))
        })
    }
}

#[tokio::test]
async fn picks_of_unconnected_subchannels_are_repicked_and_the_observer_counts_every_call() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let live = Backend::start();
        let dead = format!("127.0.0.1:{}", free_port());
        let policy = RotateAll::default();
        let channel = BalancedChannel::builder(format!("static:///{dead},{}", live.addr))
            .balancer_builder(policy.policy())
            .build()
            .unwrap();
        assert!(eventually(Duration::from_secs(5), || live.open_connections() == 1).await);
        let mut client = SimpleClient::new(channel.clone());
        for i in 0..20 {
            let peer = route(&mut client, &format!("{i}"))
                .await
                .expect("re-picked onto the live backend");
            assert_eq!(peer, live.addr.to_string());
        }
        assert_eq!(live.calls(), 20);

        let slow: Vec<_> = (0..4)
            .map(|_| {
                let mut client = SimpleClient::new(channel.clone());
                tokio::spawn(async move { route(&mut client, "sleep:300").await })
            })
            .collect();
        for call in slow {
            call.await.unwrap().unwrap();
        }
        assert!(
            policy.max_in_flight.load(Ordering::SeqCst) >= 4,
            "calls were counted while in flight"
        );
        assert!(
            eventually(Duration::from_secs(2), || policy
                .in_flight
                .load(Ordering::SeqCst)
                == 0)
            .await,
            "every pick's observer heard its call end: {} still counted",
            policy.in_flight.load(Ordering::SeqCst)
        );
    })
    .await
    .unwrap();
}

/// The backend a caller asks for, in the request's extensions.
#[derive(Clone, Copy)]
struct RouteTo(usize);

/// Sends each call to the subchannel its `RouteTo` extension names (the
/// first without one): a routing hint from the caller through
/// `PickInfo::extensions`.
struct ByHint;

struct ByHintPicker(Vec<Subchannel>);

impl ByHint {
    /// The policy, with a new picker at every READY so calls that found
    /// their backend not yet connected pick again.
    fn policy() -> EveryAddress {
        EveryAddress::new("by_hint", Publish::AtEachReady, |subchannels| {
            Arc::new(ByHintPicker(subchannels.to_vec()))
        })
    }
}

impl Picker for ByHintPicker {
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        let i = info.extensions().get::<RouteTo>().map_or(0, |r| r.0);
        match self.0.get(i) {
            Some(sc) => PickResult::Pick(Pick::borrowed(sc)),
            None => PickResult::Drop(tonic::Status::invalid_argument(format!("no backend {i}"))),
        }
    }
}

#[tokio::test]
async fn a_picker_reads_a_routing_hint_from_the_request_extensions() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (a, b) = (Backend::start(), Backend::start());
        let channel = BalancedChannel::builder(format!("static:///{},{}", a.addr, b.addr))
            .balancer_builder(ByHint::policy())
            .build()
            .unwrap();
        assert!(
            eventually(Duration::from_secs(5), || {
                a.open_connections() == 1 && b.open_connections() == 1
            })
            .await
        );
        let mut client = SimpleClient::new(channel);
        for (hint, expected) in [
            (Some(1), b.addr),
            (None, a.addr),
            (Some(0), a.addr),
            (Some(1), b.addr),
        ] {
            let mut request =
                tonic::Request::new(support::proto::SimpleRequest { data: "x".into() });
            if let Some(i) = hint {
                request.extensions_mut().insert(RouteTo(i));
            }
            let response = client.route(request).await.expect("a call");
            let peer = response
                .extensions()
                .get::<tonic_balance::Peer>()
                .map(|p| p.address().to_string());
            assert_eq!(peer, Some(expected.to_string()), "hint {hint:?}");
        }
    })
    .await
    .unwrap();
}

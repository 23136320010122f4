//! A user-written policy through the public API, against real backends:
//! a naive "rotate over everything" picker that also counts calls in
//! flight with `on_done`, as a least-request policy would.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::{eventually, free_port, route, Backend};
use tonic_balance::balancer::{Balancer, BalancerBuilder, BuildOptions, Controller, LbConfig};
use tonic_balance::picker::{Pick, PickInfo, PickResult, Picker};
use tonic_balance::resolver::ResolverUpdate;
use tonic_balance::subchannel::SubchannelState;
use tonic_balance::{BalancedChannel, ConnectivityState, Error, Subchannel};

/// Rotates over every subchannel, connected or not (the request path must
/// re-pick when it lands on one that is not), counting calls in flight.
#[derive(Clone, Default)]
struct RotateAll {
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

struct RotateAllBalancer {
    counters: RotateAll,
    subchannels: Vec<Subchannel>,
}

struct RotateAllPicker {
    subchannels: Vec<Subchannel>,
    next: AtomicUsize,
    counters: RotateAll,
}

impl BalancerBuilder for RotateAll {
    fn name(&self) -> &str {
        "rotate_all"
    }

    fn build(&self, _: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(RotateAllBalancer {
            counters: self.clone(),
            subchannels: Vec::new(),
        })
    }
}

impl Balancer for RotateAllBalancer {
    fn resolver_update(&mut self, update: &ResolverUpdate, _: &LbConfig, ctl: &mut dyn Controller) {
        self.subchannels = update
            .addresses()
            .iter()
            .filter_map(|a| ctl.new_subchannel(a).ok().map(|(sc, _)| sc))
            .collect();
        for sc in &self.subchannels {
            sc.connect();
        }
        ctl.update_picker(
            ConnectivityState::Ready,
            Arc::new(RotateAllPicker {
                subchannels: self.subchannels.clone(),
                next: AtomicUsize::new(0),
                counters: self.counters.clone(),
            }),
        );
    }

    fn resolver_error(&mut self, _: &Error, _: &mut dyn Controller) {}

    fn subchannel_update(
        &mut self,
        sc: &Subchannel,
        state: &SubchannelState,
        _: &mut dyn Controller,
    ) {
        if state.connectivity == ConnectivityState::Idle {
            sc.connect();
        }
    }
}

impl Picker for RotateAllPicker {
    fn pick(&self, _: &PickInfo<'_>) -> PickResult<'_> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.subchannels.len();
        let counters = self.counters.clone();
        let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        PickResult::Pick(
            Pick::borrowed(&self.subchannels[i]).with_on_done(Box::new(move || {
                counters.in_flight.fetch_sub(1, Ordering::SeqCst);
            })),
        )
    }
}

#[tokio::test]
async fn picks_of_unconnected_subchannels_are_repicked_and_on_done_counts_every_call() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let live = Backend::start();
        let dead = format!("127.0.0.1:{}", free_port());
        let policy = RotateAll::default();
        let channel = BalancedChannel::builder(format!("static:///{dead},{}", live.addr))
            .balancer_builder(policy.clone())
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
            "on_done ran for every pick: {} still counted",
            policy.in_flight.load(Ordering::SeqCst)
        );
    })
    .await
    .unwrap();
}

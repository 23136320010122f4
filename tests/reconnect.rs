//! Reconnection against servers that drop every connection: the attempts
//! follow gRPC's connection backoff, never a loop.

mod support;

use std::time::Duration;

use support::h2server::{Behaviour, H2Server};
use support::proto::simple_client::SimpleClient;
use support::{route, Backend};
use tonic_balance::subchannel::BackoffConfig;
use tonic_balance::{BalancedChannel, ConnectivityState};

/// Holds tokio's paused clock still while real sockets work: a running
/// blocking task stops the clock from jumping ahead on its own, so the
/// test moves it with [`step`] and real I/O is never raced by a timer.
struct ClockHold(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

fn hold_clock() -> ClockHold {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    tokio::task::spawn_blocking(move || {
        let _ = rx.recv_timeout(Duration::from_secs(120));
    });
    ClockHold(tx)
}

/// Moves the held clock by `by`, then gives real I/O a moment.
async fn step(by: Duration) {
    tokio::time::advance(by).await;
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1)))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn round_robin_retries_a_server_that_sends_goaway_at_once_on_the_backoff_schedule() {
    let healthy = Backend::start();
    let dropper = H2Server::start(Behaviour::SettingsThenGoAway).await;
    let channel = BalancedChannel::builder(format!("static:///{},{}", healthy.addr, dropper.addr))
        .balancer("round_robin")
        .backoff(BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        })
        .build()
        .unwrap();
    let _hold = hold_clock();
    // One minute on the paused clock, in 50 ms steps (at most 1,200: the
    // loop is bounded whatever the channel does).
    for _ in 0..1_200 {
        step(Duration::from_millis(50)).await;
        if dropper.connections() > 50 {
            break;
        }
    }
    // Every connection was READY (the server's SETTINGS arrived) and lost
    // at once: each counts as a failed attempt, so a minute holds gRPC's
    // schedule, attempts at 0, 1, 2.6, 5.16, 9.26, 15.8, 26.3 and 43.1 s.
    let connections = dropper.connections();
    assert!(
        (2..=8).contains(&connections),
        "{connections} connections in a minute"
    );
    assert_eq!(channel.state(), ConnectivityState::Ready);
    let mut client = SimpleClient::new(channel);
    for i in 0..10 {
        let peer = route(&mut client, &format!("call {i}"))
            .await
            .expect("served");
        assert_eq!(peer, healthy.addr.to_string());
    }
}

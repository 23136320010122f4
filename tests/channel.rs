//! The balanced channel against real tonic backends on 127.0.0.1.

mod support;

use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{eventually, fast_backoff, free_port, route, static_target, tally, Backend};
use tonic::Code;
use tonic_balance::resolver::{ManualResolver, ResolverDiscover, ResolverUpdate};
use tonic_balance::{BalancedChannel, ConnectivityState, WaitForReady};

const TEST_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn round_robin_spreads_calls_evenly_over_every_backend() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
        let refs: Vec<&Backend> = backends.iter().collect();
        let channel = BalancedChannel::builder(static_target(&refs))
            .balancer("round_robin")
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        // READY as soon as one is up: wait for all three before counting.
        let mut client = SimpleClient::new(channel);
        assert!(
            eventually(Duration::from_secs(10), || backends
                .iter()
                .all(|b| b.open_connections() == 1))
            .await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let counts = tally(&mut client, 3 * 30).await;
        assert_eq!(counts.len(), 3, "{counts:?}");
        let (max, min) = (
            counts.values().max().unwrap(),
            counts.values().min().unwrap(),
        );
        assert!(max - min <= 1, "uneven: {counts:?}");
        for b in &backends {
            assert_eq!(counts[&b.addr.to_string()], b.calls());
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pick_first_sticks_to_the_first_backend_and_fails_over_when_it_is_killed() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut first = Backend::start();
        let second = Backend::start();
        let channel = BalancedChannel::builder(static_target(&[&first, &second]))
            .backoff(fast_backoff())
            .build()
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        let counts = tally(&mut client, 10).await;
        assert_eq!(counts.get(&first.addr.to_string()), Some(&10), "{counts:?}");
        assert_eq!(
            second.open_connections(),
            0,
            "pick_first connects to one backend only"
        );

        // The loss is seen as soon as the connection task reads the close;
        // a call sent before that (the first one, at most) was already on
        // the wire and fails. The next pass connects to `second`.
        first.kill();
        let mut served = Vec::new();
        for i in 0..10 {
            match route(&mut client, "after").await {
                Ok(peer) => served.push(peer),
                Err(status) => assert!(
                    i == 0 && status.code() == Code::Unavailable,
                    "call {i}: {status:?}"
                ),
            }
        }
        assert!(served.len() >= 9, "{served:?}");
        assert!(
            served.iter().all(|p| *p == second.addr.to_string()),
            "{served:?}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_lost_connection_is_seen_without_any_call() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut pf_backend = Backend::start();
        let mut rr_backend = Backend::start();
        let pick_first = BalancedChannel::builder(static_target(&[&pf_backend]))
            .connect(Duration::from_secs(5))
            .await
            .unwrap();
        let round_robin = BalancedChannel::builder(static_target(&[&rr_backend]))
            .balancer("round_robin")
            .connect(Duration::from_secs(5))
            .await
            .unwrap();
        pf_backend.kill();
        rr_backend.kill();
        // No call is made: the channels learn of the loss from the
        // connections themselves. pick_first goes IDLE until the next call;
        // round_robin reconnects at once, is refused, and fails.
        assert!(
            eventually(Duration::from_secs(5), || pick_first.state()
                == ConnectivityState::Idle)
            .await
        );
        assert!(
            eventually(Duration::from_secs(5), || round_robin.state()
                == ConnectivityState::TransientFailure)
            .await
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn manual_updates_add_and_remove_backends_and_let_calls_in_flight_finish() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = Backend::start();
        let b = Backend::start();
        let manual = ManualResolver::new("manual");
        manual.update([a.addr.to_string()]);
        let channel = BalancedChannel::builder("manual:///backends")
            .resolver_builder(manual.clone())
            .balancer("round_robin")
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        let counts = tally(&mut client, 4).await;
        assert_eq!(counts.len(), 1);

        manual.update([a.addr.to_string(), b.addr.to_string()]);
        assert!(eventually(Duration::from_secs(5), || b.open_connections() == 1).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let counts = tally(&mut client, 10).await;
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            [5, 5],
            "{counts:?}"
        );

        // A slow call is in flight on `a` when `a` is removed.
        let a_before_slow = a.calls();
        let slow = {
            let mut client = SimpleClient::new(channel.clone());
            let a_addr = a.addr.to_string();
            tokio::spawn(async move {
                loop {
                    let peer = route(&mut client, "sleep:400").await.unwrap();
                    if peer == a_addr {
                        return peer;
                    }
                }
            })
        };
        assert!(eventually(Duration::from_secs(5), || a.calls() > a_before_slow).await);
        manual.update([b.addr.to_string()]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let a_before = a.calls();
        let counts = tally(&mut client, 20).await;
        assert_eq!(counts.get(&b.addr.to_string()), Some(&20), "{counts:?}");
        assert_eq!(a.calls(), a_before, "nothing new reaches a removed backend");
        assert_eq!(
            slow.await.unwrap(),
            a.addr.to_string(),
            "the call in flight finished"
        );
        assert!(eventually(Duration::from_secs(5), || a.open_connections() == 0).await);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn all_backends_down_fails_fast_with_the_connection_error() {
    tokio::time::timeout(TEST_LIMIT, async {
        let target = format!(
            "static:///127.0.0.1:{},127.0.0.1:{}",
            free_port(),
            free_port()
        );
        let channel = BalancedChannel::builder(target)
            .balancer("round_robin")
            .build()
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        let started = std::time::Instant::now();
        let status = route(&mut client, "x").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("refused"), "{}", status.message());
        assert!(
            status.message().contains("127.0.0.1:"),
            "{}",
            status.message()
        );
        // Far below the 20 s queue timeout: it failed because the channel
        // was in TRANSIENT_FAILURE, not because it gave up waiting.
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(channel.state(), ConnectivityState::TransientFailure);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn wait_for_ready_call_succeeds_once_a_backend_starts() {
    tokio::time::timeout(TEST_LIMIT, async {
        let port = free_port();
        let channel = BalancedChannel::builder(format!("static:///127.0.0.1:{port}"))
            .backoff(fast_backoff())
            .build()
            .unwrap();
        let mut fail_fast = SimpleClient::new(channel.clone());
        assert!(
            eventually(Duration::from_secs(5), || channel.state()
                == ConnectivityState::TransientFailure)
            .await
        );
        assert_eq!(
            route(&mut fail_fast, "x").await.unwrap_err().code(),
            Code::Unavailable
        );

        let waiting = {
            let mut client = SimpleClient::new(channel.clone());
            tokio::spawn(async move {
                let mut req = tonic::Request::new(SimpleRequest { data: "w".into() });
                req.extensions_mut().insert(WaitForReady(true));
                req.set_timeout(Duration::from_secs(20));
                client.route(req).await.map(|r| r.into_inner().code)
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the call waits while nothing is up");
        let backend = Backend::start_on(format!("127.0.0.1:{port}").parse().unwrap());
        assert_eq!(waiting.await.unwrap().unwrap(), 200);
        assert_eq!(backend.calls(), 1);
    })
    .await
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_empty_set_fails_fast_or_waits_until_the_deadline() {
    let manual = ManualResolver::new("manual");
    manual.update(Vec::<String>::new());
    let channel = BalancedChannel::builder("manual:///nothing")
        .resolver_builder(manual.clone())
        .queue_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut client = SimpleClient::new(channel.clone());

    let status = route(&mut client, "x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("no addresses"),
        "{}",
        status.message()
    );

    let start = tokio::time::Instant::now();
    let mut req = tonic::Request::new(SimpleRequest { data: "x".into() });
    req.extensions_mut().insert(WaitForReady(true));
    req.set_timeout(Duration::from_secs(3));
    let status = client.route(req).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(start.elapsed().as_secs(), 3, "ends at the deadline");

    // Without a deadline the queue timeout bounds the wait: never forever.
    let start = tokio::time::Instant::now();
    let mut req = tonic::Request::new(SimpleRequest { data: "x".into() });
    req.extensions_mut().insert(WaitForReady(true));
    let status = client.route(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("after waiting 30s"),
        "{}",
        status.message()
    );
    assert_eq!(start.elapsed().as_secs(), 30);
}

/// README: an empty set fails fast calls with `resolver error: the
/// resolver returned no addresses`, whichever policy runs.
#[tokio::test(start_paused = true)]
async fn an_empty_set_fails_fast_with_the_same_message_under_every_policy() {
    for policy in [
        "pick_first",
        "round_robin",
        "least_request",
        "weighted_round_robin",
        "ring_hash",
    ] {
        let manual = ManualResolver::new("manual");
        manual.update(Vec::<String>::new());
        let channel = BalancedChannel::builder("manual:///nothing")
            .resolver_builder(manual.clone())
            .balancer(policy)
            .build()
            .unwrap();
        let status = route(&mut SimpleClient::new(channel), "x")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{policy}: {status:?}");
        assert!(
            status
                .message()
                .contains("resolver error: the resolver returned no addresses"),
            "{policy}: {}",
            status.message()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn before_the_first_resolution_calls_wait_for_it() {
    let manual = ManualResolver::new("manual");
    let channel = BalancedChannel::builder("manual:///later")
        .resolver_builder(manual.clone())
        .build()
        .unwrap();
    let mut client = SimpleClient::new(channel.clone());
    let mut req = tonic::Request::new(SimpleRequest { data: "x".into() });
    req.set_timeout(Duration::from_secs(2));
    let status = client.route(req).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "fail-fast calls queue while CONNECTING"
    );
    assert!(
        status.message().contains("manual:///later"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn wait_until_ready_reports_state_and_error_at_its_deadline() {
    tokio::time::timeout(TEST_LIMIT, async {
        let channel = BalancedChannel::builder(format!("static:///127.0.0.1:{}", free_port()))
            .build()
            .unwrap();
        let err = channel
            .wait_until_ready(Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.is_timeout());
        let text = err.to_string();
        assert!(
            text.contains("TRANSIENT_FAILURE") && text.contains("refused"),
            "{text}"
        );

        let backend = Backend::start();
        let ok = BalancedChannel::builder(static_target(&[&backend]))
            .connect(Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ok.state(), ConnectivityState::Ready);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn service_config_from_the_resolver_switches_policy_without_reconnecting() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = Backend::start();
        let b = Backend::start();
        let manual = ManualResolver::new("manual");
        let addrs = vec![a.addr.into(), b.addr.into()];
        manual.update_state(ResolverUpdate::new(addrs));
        let channel = BalancedChannel::builder("manual:///svc")
            .resolver_builder(manual.clone())
            .connect(Duration::from_secs(5))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        assert_eq!(
            tally(&mut client, 6).await.len(),
            1,
            "pick_first by default"
        );

        let config = tonic_balance::ServiceConfig::from_json(
            r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#,
        )
        .unwrap();
        manual.update_state(
            ResolverUpdate::new(vec![a.addr.into(), b.addr.into()]).with_service_config(config),
        );
        assert!(eventually(Duration::from_secs(5), || b.open_connections() == 1).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let counts = tally(&mut client, 10).await;
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            [5, 5],
            "{counts:?}"
        );
        assert_eq!(
            a.stats
                .accepted_connections
                .load(std::sync::atomic::Ordering::SeqCst),
            1,
            "kept its connection"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_policy_switch_keeps_serving_with_the_old_policy_until_the_new_one_is_ready() {
    use support::h2server::{Behaviour, H2Server};
    tokio::time::timeout(TEST_LIMIT, async {
        let a = Backend::start();
        // Accepts TCP and never answers: round_robin's child stays CONNECTING.
        let silent = H2Server::start(Behaviour::Silent).await;
        let manual = ManualResolver::new("manual");
        manual.update_state(ResolverUpdate::new(vec![a.addr.into()]));
        let channel = BalancedChannel::builder("manual:///svc")
            .resolver_builder(manual.clone())
            .timeout(Duration::from_secs(1))
            .connect(Duration::from_secs(5))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        route(&mut client, "before").await.unwrap();

        let config = tonic_balance::ServiceConfig::from_json(
            r#"{"loadBalancingConfig":[{"round_robin":{}}]}"#,
        )
        .unwrap();
        manual.update_state(
            ResolverUpdate::new(vec![silent.addr.into(), a.addr.into()])
                .with_service_config(config.clone()),
        );
        assert!(eventually(Duration::from_secs(5), || silent.connections() == 1).await);
        // round_robin is READY at once through a's shared subchannel: it
        // takes over without a gap.
        for i in 0..5 {
            let peer = route(&mut client, &format!("{i}")).await.unwrap();
            assert_eq!(peer, a.addr.to_string());
        }

        // Back to pick_first on the silent address only: pick_first stays
        // CONNECTING, so round_robin keeps serving with a.
        manual.update_state(ResolverUpdate::new(vec![silent.addr.into()]));
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 0..5 {
            let peer = route(&mut client, &format!("after {i}"))
                .await
                .expect("the old policy still serves");
            assert_eq!(peer, a.addr.to_string());
        }
        assert_eq!(channel.state(), ConnectivityState::Ready);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn killing_a_backend_fails_at_most_the_calls_in_flight_on_it() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut a = Backend::start();
        let b = Backend::start();
        let channel = BalancedChannel::builder(static_target(&[&a, &b]))
            .balancer("round_robin")
            .backoff(fast_backoff())
            .connect(Duration::from_secs(5))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel);
        assert!(eventually(Duration::from_secs(5), || b.open_connections() == 1).await);
        tally(&mut client, 10).await;
        a.kill();
        let mut failures = Vec::new();
        for i in 0..50 {
            if let Err(status) = route(&mut client, "after").await {
                failures.push((i, status));
            }
        }
        assert!(
            failures.len() <= 1 && failures.iter().all(|(i, _)| *i == 0),
            "{failures:?}"
        );
        assert!(b.calls() >= 49);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn servers_recycling_connections_with_goaway_fail_no_calls() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = Backend::start_with_max_age(Duration::from_millis(300));
        let b = Backend::start_with_max_age(Duration::from_millis(300));
        let channel = BalancedChannel::builder(static_target(&[&a, &b]))
            .balancer("round_robin")
            .backoff(fast_backoff())
            .connect(Duration::from_secs(5))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel);
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        let (mut ok, mut failed) = (0, Vec::new());
        while tokio::time::Instant::now() < until {
            match route(&mut client, "x").await {
                Ok(_) => ok += 1,
                Err(status) => failed.push(status),
            }
        }
        assert!(failed.is_empty(), "{ok} ok, failed: {failed:?}");
        let accepted = |b: &Backend| {
            b.stats
                .accepted_connections
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        assert!(
            accepted(&a) >= 3 && accepted(&b) >= 3,
            "connections were recycled: {} {}",
            accepted(&a),
            accepted(&b)
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn discover_stream_feeds_tonics_balance_channel() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = Backend::start();
        let b = Backend::start();
        let discover = ResolverDiscover::new(&static_target(&[&a, &b])).unwrap();
        let (channel, tx) = tonic::transport::Channel::balance_channel(16);
        tokio::spawn(discover.feed(tx));
        let mut client = SimpleClient::new(channel);
        for i in 0..40 {
            client
                .route(SimpleRequest {
                    data: format!("{i}"),
                })
                .await
                .unwrap();
        }
        assert_eq!(a.calls() + b.calls(), 40);
        assert!(
            a.calls() > 0 && b.calls() > 0,
            "{} / {}",
            a.calls(),
            b.calls()
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dropping_the_channel_closes_every_connection() {
    tokio::time::timeout(TEST_LIMIT, async {
        let a = Backend::start();
        let b = Backend::start();
        let channel = BalancedChannel::builder(static_target(&[&a, &b]))
            .balancer("round_robin")
            .connect(Duration::from_secs(5))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        // Both backends accept their connection (the channel is READY once
        // the first is).
        assert!(
            eventually(Duration::from_secs(5), || (
                a.open_connections(),
                b.open_connections()
            ) == (1, 1))
            .await
        );
        tally(&mut client, 4).await;
        assert_eq!((a.open_connections(), b.open_connections()), (1, 1));
        drop(client);
        drop(channel);
        assert!(
            eventually(Duration::from_secs(5), || a.open_connections()
                + b.open_connections()
                == 0)
            .await,
            "the servers saw every connection close"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dropping_every_handle_stops_the_control_task_and_the_resolver() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let manual = ManualResolver::new("manual");
        manual.update([backend.addr.to_string()]);
        let channel = BalancedChannel::builder("manual:///svc")
            .resolver_builder(manual.clone())
            .connect(Duration::from_secs(5))
            .await
            .unwrap();
        let copy = channel.clone();
        drop(channel);
        assert!(manual.is_in_use(), "a clone keeps the channel running");
        let mut client = SimpleClient::new(copy);
        route(&mut client, "x").await.unwrap();
        drop(client);
        assert!(eventually(Duration::from_secs(5), || !manual.is_in_use()).await);
        assert!(eventually(Duration::from_secs(5), || backend.open_connections() == 0).await);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_targets_are_clear_errors() {
    for (target, part) in [
        ("", "empty"),
        ("nope:///x", "unknown scheme \"nope\""),
        ("static:///127.0.0.1:99999", "bad port"),
        ("static:///", "address list is empty"),
    ] {
        let err = BalancedChannel::from_target(target).unwrap_err();
        assert!(err.to_string().contains(part), "{target:?}: {err}");
    }
    let err = BalancedChannel::builder("static:///127.0.0.1:1")
        .balancer("no_such_policy")
        .build()
        .unwrap_err();
    assert!(
        err.is_config() && err.to_string().contains("no_such_policy"),
        "{err}"
    );
}

#[tokio::test]
async fn http2_settings_outside_their_ranges_are_refused_by_build() {
    type Set = fn(tonic_balance::BalancedChannelBuilder) -> tonic_balance::BalancedChannelBuilder;
    let cases: [(Set, &str); 5] = [
        (|b| b.max_frame_size(1), "max_frame_size 1 is out of range: allowed 16384..=16777215 bytes"),
        (|b| b.max_frame_size(u32::MAX), "max_frame_size 4294967295 is out of range"),
        (
            |b| b.initial_connection_window_size(u32::MAX),
            "initial_connection_window_size 4294967295 is out of range: allowed 65535..=2147483647 bytes",
        ),
        (
            |b| b.initial_stream_window_size(u32::MAX),
            "initial_stream_window_size 4294967295 is out of range: allowed 1..=2147483647 bytes",
        ),
        (|b| b.max_header_list_size(0), "max_header_list_size 0 is out of range: allowed 102..="),
    ];
    for (set, message) in cases {
        let err = set(BalancedChannel::builder("static:///127.0.0.1:8000"))
            .build()
            .unwrap_err();
        assert!(err.is_config(), "{err}");
        assert!(err.to_string().starts_with(message), "{err}");
    }
}

#[tokio::test]
async fn a_backoff_outside_grpcs_ranges_is_refused_by_build() {
    use tonic_balance::subchannel::BackoffConfig;
    let nonsense = BackoffConfig {
        initial: Duration::ZERO,
        multiplier: f64::NAN,
        jitter: 5.0,
        max: Duration::ZERO,
        min_connect_timeout: Duration::ZERO,
    };
    let err = BalancedChannel::builder("static:///127.0.0.1:8000")
        .backoff(nonsense)
        .build()
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    assert!(
        err.to_string().starts_with("backoff: initial is 0"),
        "{err}"
    );
    let err = BalancedChannel::builder("static:///127.0.0.1:8000")
        .backoff(BackoffConfig {
            multiplier: f64::NAN,
            ..BackoffConfig::default()
        })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("multiplier NaN"), "{err}");
}

#[tokio::test]
async fn http2_settings_at_the_top_of_their_ranges_serve_calls() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let channel = BalancedChannel::builder(static_target(&[&backend]))
            .max_frame_size(16_777_215)
            .initial_stream_window_size((1 << 31) - 1)
            .initial_connection_window_size((1 << 31) - 1)
            .max_header_list_size(u32::MAX)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let mut client = SimpleClient::new(channel);
        route(&mut client, "x").await.unwrap();
    })
    .await
    .unwrap();
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let err = BalancedChannel::from_target("static:///127.0.0.1:1").unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn wait_until_ready_says_what_a_connecting_subchannel_still_waits_for() {
    // A server that accepts TCP and never speaks HTTP/2: CONNECTING for
    // the whole connect timeout (20 s), with no error to report yet.
    let silent = support::h2server::H2Server::start(support::h2server::Behaviour::Silent).await;
    let channel = BalancedChannel::builder(format!("static:///{}", silent.addr))
        .build()
        .unwrap();
    let err = channel
        .wait_until_ready(Duration::from_millis(3200))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let want = format!(
        "(state CONNECTING: connecting to {} for 3.2s: no HTTP/2 SETTINGS from the server yet)",
        silent.addr
    );
    assert!(err.to_string().ends_with(&want), "{err}");
}

#[tokio::test]
async fn wait_until_ready_names_the_last_connection_error_while_still_connecting() {
    tokio::time::timeout(TEST_LIMIT, async {
        // round_robin over an address that refuses and one that accepts
        // but never speaks: CONNECTING (the silent one has 20 s to answer
        // its preface), with a refused connection already known.
        let refused = free_port();
        let silent = support::h2server::H2Server::start(support::h2server::Behaviour::Silent).await;
        let counting = support::counting::CountingPicks::new("round_robin");
        let channel =
            BalancedChannel::builder(format!("static:///127.0.0.1:{refused},{}", silent.addr))
                .balancer_builder(counting.clone())
                .build()
                .unwrap();
        let err = channel
            .wait_until_ready(Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(err.is_timeout() && !err.is_health(), "{err:?}");
        let err = err.to_string();
        let want = format!("(state CONNECTING: last connection error: 127.0.0.1:{refused}");
        assert!(err.contains(&want), "{err}");
        assert_eq!(counting.picks(), 0, "the message came from no pick");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn wait_until_ready_names_the_last_connection_error_when_every_address_refuses() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (a, b) = (free_port(), free_port());
        for policy in ["pick_first", "round_robin"] {
            let counting = support::counting::CountingPicks::new(policy);
            let channel =
                BalancedChannel::builder(format!("static:///127.0.0.1:{a},127.0.0.1:{b}"))
                    .balancer_builder(counting.clone())
                    .build()
                    .unwrap();
            let err = channel
                .wait_until_ready(Duration::from_millis(500))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("(state TRANSIENT_FAILURE: last connection error: 127.0.0.1:"),
                "{policy}: {err}"
            );
            assert!(err.contains("refused"), "{policy}: {err}");
            assert_eq!(counting.picks(), 0, "{policy}: no pick for the message");
        }
    })
    .await
    .unwrap();
}

/// A resolver that answers every `resolve_now` at once with no addresses,
/// counting the requests.
struct EmptyAtOnce(std::sync::Arc<std::sync::atomic::AtomicUsize>);

struct EmptyAtOnceResolver {
    sink: tonic_balance::resolver::UpdateSink,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tonic_balance::resolver::ResolverBuilder for EmptyAtOnce {
    fn scheme(&self) -> &str {
        "empty-at-once"
    }

    fn build(
        &self,
        _: &tonic_balance::Target,
        sink: tonic_balance::resolver::UpdateSink,
    ) -> Result<Box<dyn tonic_balance::resolver::Resolver>, tonic_balance::Error> {
        sink.update(ResolverUpdate::new(Vec::new()));
        Ok(Box::new(EmptyAtOnceResolver {
            sink,
            requests: self.0.clone(),
        }))
    }
}

impl tonic_balance::resolver::Resolver for EmptyAtOnceResolver {
    fn resolve_now(&mut self) {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.sink.update(ResolverUpdate::new(Vec::new()));
    }
}

#[tokio::test(start_paused = true)]
async fn a_resolver_that_answers_at_once_with_no_addresses_is_asked_at_most_once_a_second() {
    for policy in ["pick_first", "round_robin"] {
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let channel = BalancedChannel::builder("empty-at-once:///svc")
            .resolver_builder(EmptyAtOnce(requests.clone()))
            .balancer(policy)
            .build()
            .unwrap();
        // Each empty answer makes the policy ask again: without pacing the
        // control task and the resolver spin, one round per scheduling turn.
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        let asked = requests.load(std::sync::atomic::Ordering::SeqCst);
        assert!(asked <= 1, "{policy}: {asked} re-resolutions at once");
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        let asked = requests.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=11).contains(&asked), "{policy}: {asked} in 10.5 s");
        assert_eq!(channel.state(), ConnectivityState::TransientFailure);
    }
}

//! The service config's `methodConfig`: its `timeout` and `waitForReady`
//! apply to the calls each entry names (gRPC's service config doc; grpc-go
//! `getMethodConfig` and `newClientStreamWithParams`).
//!
//! The backends are real tonic servers in the test's runtime, so once the
//! channel is READY the clock is paused and a slow handler's sleep and the
//! call's deadline both run in virtual time: a call that times out ends
//! exactly at its deadline (to the timer's 1 ms).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::echo::proto::echo_client::EchoClient;
use support::echo::proto::RepeatRequest;
use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic_balance::resolver::{ManualResolver, ResolverUpdate};
use tonic_balance::{Address, BalancedChannel, ServiceConfig, WaitForReady};

/// Bounds every test body (virtual time once the clock is paused).
const TEST_LIMIT: Duration = Duration::from_secs(120);

/// A `Simple` server (`proto.Simple/Route`; `"sleep:<ms>"` sleeps) on a
/// free port, in this runtime.
async fn simple_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("bound");
    support::serve_incoming(TcpListenerStream::new(listener));
    addr
}

fn config(json: &str) -> ServiceConfig {
    ServiceConfig::from_json(json).expect("a valid service config")
}

/// Sends `update` through `manual` and waits until the channel's control
/// task has applied it (the snapshot's resolver time changes).
async fn apply(manual: &ManualResolver, channel: &BalancedChannel, update: ResolverUpdate) {
    let before = channel.snapshot().await.resolver.updated;
    manual.update_state(update);
    for _ in 0..1000 {
        if channel.snapshot().await.resolver.updated != before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the channel never applied the resolver update");
}

fn update_to(addr: Option<SocketAddr>, sc: ServiceConfig) -> ResolverUpdate {
    let addresses: Vec<Address> = addr
        .into_iter()
        .map(|a| Address::new(a.to_string()))
        .collect();
    ResolverUpdate::new(addresses).with_service_config(sc)
}

fn route_request(data: &str, timeout: Option<Duration>) -> tonic::Request<SimpleRequest> {
    let mut request = tonic::Request::new(SimpleRequest {
        data: data.to_owned(),
    });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// Runs one `Route` call; returns its status code (OK on success) and how
/// long it took on the (paused) clock.
async fn timed_route(
    client: &mut SimpleClient<BalancedChannel>,
    request: tonic::Request<SimpleRequest>,
) -> (Code, Duration, String) {
    let start = Instant::now();
    let outcome = client.route(request).await;
    let elapsed = start.elapsed();
    match outcome {
        Ok(_) => (Code::Ok, elapsed, String::new()),
        Err(status) => (status.code(), elapsed, status.message().to_owned()),
    }
}

/// Runs one `Route` call that must end with DEADLINE_EXCEEDED at `at`
/// (see [`assert_at`]); returns its message.
async fn deadline_exceeded_at(
    client: &mut SimpleClient<BalancedChannel>,
    request: tonic::Request<SimpleRequest>,
    at: Duration,
) -> String {
    let (code, elapsed, message) = timed_route(client, request).await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert_at(elapsed, at);
    message
}

/// On the paused clock a call that times out ends when its timer fires:
/// at the deadline, rounded up to the timer's 1 ms.
fn assert_at(elapsed: Duration, deadline: Duration) {
    assert!(
        elapsed >= deadline && elapsed <= deadline + Duration::from_millis(1),
        "ended after {elapsed:?}, expected at {deadline:?}"
    );
}

/// A channel to one in-runtime `Simple` server through a manual resolver
/// whose first update carries `sc`; READY, with the clock paused.
async fn ready_channel(sc: ServiceConfig) -> (ManualResolver, BalancedChannel, SocketAddr) {
    let addr = simple_server().await;
    let manual = ManualResolver::new("manual");
    manual.update_state(update_to(Some(addr), sc));
    let channel = BalancedChannel::builder("manual:///simple")
        .resolver_builder(manual.clone())
        .connect(Duration::from_secs(10))
        .await
        .expect("READY");
    tokio::time::pause();
    (manual, channel, addr)
}

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test]
async fn a_method_timeout_shorter_than_the_handler_ends_the_call_at_the_method_timeout() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (_manual, channel, _) = ready_channel(config(
            r#"{"methodConfig":[{"name":[{"service":"proto.Simple","method":"Route"}],
                "timeout":"1.5s"}]}"#,
        ))
        .await;
        let mut client = SimpleClient::new(channel);

        // No deadline of its own: the method's 1.5 s applies.
        let message = deadline_exceeded_at(
            &mut client,
            route_request("sleep:10000", None),
            Duration::from_millis(1500),
        )
        .await;
        assert!(message.contains("deadline of 1.5s exceeded"), "{message}");

        // A longer deadline of its own: the method's still wins.
        deadline_exceeded_at(
            &mut client,
            route_request("sleep:10000", Some(SECS(5))),
            Duration::from_millis(1500),
        )
        .await;

        // The call's own shorter deadline wins over the method's.
        deadline_exceeded_at(
            &mut client,
            route_request("sleep:10000", Some(Duration::from_millis(300))),
            Duration::from_millis(300),
        )
        .await;

        // A call faster than the method timeout succeeds.
        let (code, _, message) = timed_route(&mut client, route_request("sleep:1000", None)).await;
        assert_eq!(code, Code::Ok, "{message}");
    })
    .await
    .expect("the test ends");
}

/// The exact entry, else the service's, else the default; a config update
/// changes the calls started after it.
#[tokio::test]
async fn the_most_specific_entry_applies_and_updates_change_later_calls() {
    tokio::time::timeout(TEST_LIMIT, async {
        let exact_service_default = r#"{"methodConfig":[
            {"name":[{"service":"proto.Simple","method":"Route"}],"timeout":"1s"},
            {"name":[{"service":"proto.Simple"}],"timeout":"2s"},
            {"name":[{}],"timeout":"3s"}]}"#;
        let service_default = r#"{"methodConfig":[
            {"name":[{"service":"proto.Simple","method":"Other"}],"timeout":"1s"},
            {"name":[{"service":"proto.Simple"}],"timeout":"2s"},
            {"name":[{"service":""}],"timeout":"3s"}]}"#;
        let default_only = r#"{"methodConfig":[
            {"name":[{"service":"echo.Echo"}],"timeout":"1s"},
            {"name":[{}],"timeout":"3s"}]}"#;
        let none = r#"{"methodConfig":[{"name":[{"service":"echo.Echo"}],"timeout":"1s"}]}"#;

        let (manual, channel, addr) = ready_channel(config(exact_service_default)).await;
        let mut client = SimpleClient::new(channel.clone());
        for (json, expected) in [
            (exact_service_default, Some(SECS(1))),
            (service_default, Some(SECS(2))),
            (default_only, Some(SECS(3))),
            (none, None),
            (exact_service_default, Some(SECS(1))),
        ] {
            apply(&manual, &channel, update_to(Some(addr), config(json))).await;
            let (code, elapsed, message) =
                timed_route(&mut client, route_request("sleep:5000", None)).await;
            match expected {
                Some(timeout) => {
                    assert_eq!(code, Code::DeadlineExceeded, "{json}: {message}");
                    assert_at(elapsed, timeout);
                }
                None => assert_eq!(code, Code::Ok, "{json}: {message}"),
            }
        }
        // Back to no service config at all: nothing applies.
        apply(
            &manual,
            &channel,
            ResolverUpdate::new(vec![Address::new(addr.to_string())]),
        )
        .await;
        let (code, _, message) = timed_route(&mut client, route_request("sleep:5000", None)).await;
        assert_eq!(code, Code::Ok, "{message}");
    })
    .await
    .expect("the test ends");
}

/// Another service's calls get the default entry: a stream's deadline
/// covers its every message.
#[tokio::test]
async fn the_default_entry_bounds_another_services_stream() {
    tokio::time::timeout(TEST_LIMIT, async {
        let addr = support::echo::start(SECS(1)).await;
        let channel = BalancedChannel::builder(format!("static:///{addr}"))
            .service_config(
                r#"{"methodConfig":[
                    {"name":[{"service":"proto.Simple"}],"timeout":"100s"},
                    {"name":[{}],"timeout":"2.5s"}]}"#,
            )
            .connect(Duration::from_secs(10))
            .await
            .expect("READY");
        tokio::time::pause();
        let mut client = EchoClient::new(channel);
        let start = Instant::now();
        let mut stream = client
            .repeat(RepeatRequest {
                data: b"x".to_vec(),
                count: 10,
            })
            .await
            .expect("the stream opens")
            .into_inner();
        let mut received = 0;
        let status = loop {
            match stream.message().await {
                Ok(Some(_)) => received += 1,
                Ok(None) => panic!("the stream ended after {received} messages"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_at(start.elapsed(), Duration::from_millis(2500));
        // One message a second is sent; how many arrive before the clock
        // jumps depends on the loopback's timing, not on the deadline.
        assert!(received <= 2, "{received} messages before 2.5 s");
    })
    .await
    .expect("the test ends");
}

/// With no backend (the resolver gave none: TRANSIENT_FAILURE) a fail-fast
/// call fails at once; the method config's `waitForReady: true` makes it
/// wait until its deadline, and `false` makes even a call that asked to
/// wait fail fast (grpc-go: the method config overrides the call).
#[tokio::test(start_paused = true)]
async fn wait_for_ready_from_the_method_config_overrides_the_call() {
    let manual = ManualResolver::new("manual");
    manual.update_state(update_to(
        None,
        config(r#"{"methodConfig":[{"name":[{"service":"proto.Simple"}],"waitForReady":true}]}"#),
    ));
    let channel = BalancedChannel::builder("manual:///nothing")
        .resolver_builder(manual.clone())
        .queue_timeout(SECS(30))
        .build()
        .expect("a channel");
    let mut client = SimpleClient::new(channel.clone());

    // waitForReady true: waits until the call's deadline.
    let message =
        deadline_exceeded_at(&mut client, route_request("x", Some(SECS(3))), SECS(3)).await;
    assert!(message.contains("no addresses"), "{message}");
    // Even a call that asked to fail fast waits.
    let mut request = route_request("x", Some(SECS(2)));
    request.extensions_mut().insert(WaitForReady(false));
    deadline_exceeded_at(&mut client, request, SECS(2)).await;

    // waitForReady true and a timeout: the method timeout bounds the wait.
    apply(
        &manual,
        &channel,
        update_to(
            None,
            config(
                r#"{"methodConfig":[{"name":[{"service":"proto.Simple"}],
                    "waitForReady":true,"timeout":"4s"}]}"#,
            ),
        ),
    )
    .await;
    deadline_exceeded_at(&mut client, route_request("x", None), SECS(4)).await;

    // waitForReady false: fails fast, even when the call asked to wait.
    apply(
        &manual,
        &channel,
        update_to(
            None,
            config(r#"{"methodConfig":[{"name":[{}],"waitForReady":false}]}"#),
        ),
    )
    .await;
    let mut request = route_request("x", Some(SECS(3)));
    request.extensions_mut().insert(WaitForReady(true));
    let (code, elapsed, message) = timed_route(&mut client, request).await;
    assert_eq!(code, Code::Unavailable, "{message}");
    assert_eq!(elapsed, Duration::ZERO, "fails at once");
    assert!(message.contains("no addresses"), "{message}");

    // No waitForReady in the entry: the call's own choice stands.
    apply(
        &manual,
        &channel,
        update_to(
            None,
            config(r#"{"methodConfig":[{"name":[{}],"timeout":"100s"}]}"#),
        ),
    )
    .await;
    let mut request = route_request("x", Some(SECS(3)));
    request.extensions_mut().insert(WaitForReady(true));
    deadline_exceeded_at(&mut client, request, SECS(3)).await;
    let (code, elapsed, _) = timed_route(&mut client, route_request("x", Some(SECS(3)))).await;
    assert_eq!(code, Code::Unavailable);
    assert_eq!(elapsed, Duration::ZERO);
}

/// The builder's service config applies while the resolver gives none;
/// one from the resolver replaces it; a bad method config is an error at
/// build time, naming the entry.
#[tokio::test]
async fn the_builders_service_config_is_the_default_and_bad_ones_are_errors() {
    tokio::time::timeout(TEST_LIMIT, async {
        let addr = simple_server().await;
        let manual = ManualResolver::new("manual");
        manual.update([addr.to_string()]);
        let channel = BalancedChannel::builder("manual:///simple")
            .resolver_builder(manual.clone())
            .service_config(r#"{"methodConfig":[{"name":[{}],"timeout":"1s"}]}"#)
            .connect(Duration::from_secs(10))
            .await
            .expect("READY");
        tokio::time::pause();
        let mut client = SimpleClient::new(channel.clone());
        deadline_exceeded_at(&mut client, route_request("sleep:5000", None), SECS(1)).await;

        let two = config(r#"{"methodConfig":[{"name":[{}],"timeout":"2s"}]}"#);
        apply(&manual, &channel, update_to(Some(addr), two)).await;
        deadline_exceeded_at(&mut client, route_request("sleep:5000", None), SECS(2)).await;

        for (json, part) in [
            (
                r#"{"methodConfig":[{"name":[{}],"timeout":"soon"}]}"#,
                "methodConfig[0]: \"timeout\" \"soon\" is not valid",
            ),
            (
                r#"{"methodConfig":[{"name":[{}],"waitForReady":1}]}"#,
                "\"waitForReady\" must be true or false",
            ),
            (
                r#"{"methodConfig":[{"name":[{"service":"s"}]},{"name":[{"service":"s"}]}]}"#,
                "named twice",
            ),
        ] {
            let err = BalancedChannel::builder("manual:///simple")
                .resolver_builder(manual.clone())
                .service_config(json)
                .build()
                .expect_err("a bad method config");
            assert!(err.is_config(), "{err}");
            assert!(err.to_string().contains(part), "{err}");
        }
    })
    .await
    .expect("the test ends");
}

/// A service config the channel rejects (no policy it knows) changes no
/// call either: the method configs in use stay, as the policy does.
#[tokio::test]
async fn a_rejected_service_config_keeps_the_method_configs_in_use() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (manual, channel, addr) = ready_channel(config(
            r#"{"methodConfig":[{"name":[{"service":"proto.Simple"}],"timeout":"1s"}]}"#,
        ))
        .await;
        let mut client = SimpleClient::new(channel.clone());
        let rejected = config(
            r#"{"loadBalancingConfig":[{"no_such_policy":{}}],
                "methodConfig":[{"name":[{"service":"proto.Simple"}],"timeout":"3s"}]}"#,
        );
        apply(&manual, &channel, update_to(Some(addr), rejected)).await;
        deadline_exceeded_at(&mut client, route_request("sleep:5000", None), SECS(1)).await;
    })
    .await
    .expect("the test ends");
}

/// When the resolver's first service config is rejected, calls go on with
/// the builder's method configs at once (they do not wait for a config
/// that never comes).
#[tokio::test]
async fn a_rejected_first_service_config_leaves_the_builders_method_configs() {
    tokio::time::timeout(TEST_LIMIT, async {
        let addr = simple_server().await;
        let manual = ManualResolver::new("manual");
        manual.update_state(update_to(
            Some(addr),
            config(
                r#"{"loadBalancingConfig":[{"no_such_policy":{}}],
                    "methodConfig":[{"name":[{}],"timeout":"3s"}]}"#,
            ),
        ));
        let channel = BalancedChannel::builder("manual:///simple")
            .resolver_builder(manual.clone())
            .service_config(r#"{"methodConfig":[{"name":[{}],"timeout":"1s"}]}"#)
            .queue_timeout(SECS(30))
            .connect(Duration::from_secs(10))
            .await
            .expect("READY");
        tokio::time::pause();
        let mut client = SimpleClient::new(channel);
        deadline_exceeded_at(&mut client, route_request("sleep:5000", None), SECS(1)).await;
    })
    .await
    .expect("the test ends");
}

/// The server learns the call's deadline whichever way it was set: the
/// call's own `grpc-timeout` is sent as it is, the channel's `timeout(d)`
/// and a method config's `timeout`, when shorter, replace it (gRPC sends
/// every call's deadline; grpc-go's `grpc-timeout` encoding, in the finest
/// unit that fits, rounded up).
#[tokio::test]
async fn the_server_receives_the_deadline_of_the_channel_and_of_the_method_config() {
    tokio::time::timeout(TEST_LIMIT, async {
        let addr = simple_server().await;
        let target = format!("static:///{addr}");
        let received = |channel: &BalancedChannel, timeout: Option<Duration>| {
            let mut client = SimpleClient::new(channel.clone());
            async move {
                client
                    .route(route_request("grpc-timeout", timeout))
                    .await
                    .expect("the call succeeds")
                    .into_inner()
                    .value
            }
        };

        // No deadline anywhere: nothing is sent.
        let plain = BalancedChannel::builder(&target)
            .connect(SECS(10))
            .await
            .expect("READY");
        assert_eq!(received(&plain, None).await, "");
        // The call's own timeout, as tonic encodes it.
        let own = received(&plain, Some(Duration::from_millis(1500))).await;
        assert!(own.ends_with('u') || own.ends_with('m'), "{own}");

        // The channel's timeout(d).
        let with_default = BalancedChannel::builder(&target)
            .timeout(SECS(30))
            .connect(SECS(10))
            .await
            .expect("READY");
        assert_eq!(received(&with_default, None).await, "30000000u");
        // A call's shorter timeout is kept; a longer one is capped.
        assert_eq!(
            received(&with_default, Some(SECS(3))).await,
            received(&plain, Some(SECS(3))).await
        );
        assert_eq!(received(&with_default, Some(SECS(60))).await, "30000000u");

        // A method config's timeout.
        let with_method = BalancedChannel::builder(&target)
            .service_config(
                r#"{"methodConfig":[{"name":[{"service":"proto.Simple"}],"timeout":"1.5s"}]}"#,
            )
            .connect(SECS(10))
            .await
            .expect("READY");
        assert_eq!(received(&with_method, None).await, "1500000u");
        assert_eq!(received(&with_method, Some(SECS(10))).await, "1500000u");
    })
    .await
    .expect("the test finished within its limit");
}

/// The longest timeouts a user can give (`Duration::MAX`) end no call
/// early and panic nowhere: the channel's `timeout` and `queue_timeout`,
/// and `wait_until_ready`'s.
#[tokio::test]
async fn timeouts_of_duration_max_neither_panic_nor_end_calls() {
    tokio::time::timeout(TEST_LIMIT, async {
        let addr = simple_server().await;
        let channel = BalancedChannel::builder(format!("static:///{addr}"))
            .timeout(Duration::MAX)
            .queue_timeout(Duration::MAX)
            .build()
            .expect("a channel");
        channel
            .wait_until_ready(Duration::MAX)
            .await
            .expect("READY");
        let mut client = SimpleClient::new(channel.clone());
        let (code, _, message) = timed_route(&mut client, route_request("", None)).await;
        assert_eq!(code, Code::Ok, "{message}");

        // No deadline at all: the queue timeout bounds the wait for a
        // backend.
        let queued = BalancedChannel::builder(format!("static:///{addr}"))
            .queue_timeout(Duration::MAX)
            .build()
            .expect("a channel");
        let mut client = SimpleClient::new(queued);
        let (code, _, message) = timed_route(&mut client, route_request("", None)).await;
        assert_eq!(code, Code::Ok, "{message}");
    })
    .await
    .expect("the test finished within its limit");
}

/// tonic's server answers a call whose `grpc-timeout` ran out with
/// CANCELLED ("Timeout expired"), and that answer can reach the client
/// before its own timer fires (a busy client runtime); the call still ends
/// with DEADLINE_EXCEEDED, as gRPC defines, however its deadline was set
/// (the call's own, the channel's, a method config's: all are sent to the
/// server). The server runs on a runtime of its own; the client's runtime
/// is blocked past the deadline, so the server's answers and the client's
/// timers are ready together when it resumes. Only codes are checked.
#[tokio::test]
async fn a_servers_timeout_answer_after_the_deadline_is_deadline_exceeded() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a server runtime");
            runtime.block_on(async {
                let addr = simple_server().await;
                let _ = tx.send(addr);
                std::future::pending::<()>().await;
            });
        });
        let addr = rx.recv().expect("the server's address");
        let target = format!("static:///{addr}");
        let deadline = Duration::from_millis(40);
        let own = BalancedChannel::builder(&target)
            .connect(SECS(10))
            .await
            .expect("READY");
        let by_channel = BalancedChannel::builder(&target)
            .timeout(deadline)
            .connect(SECS(10))
            .await
            .expect("READY");
        let by_method = BalancedChannel::builder(&target)
            .service_config(r#"{"methodConfig":[{"name":[{}],"timeout":"0.04s"}]}"#)
            .connect(SECS(10))
            .await
            .expect("READY");
        for (name, channel, timeout) in [
            ("the call's own", &own, Some(deadline)),
            ("the channel's", &by_channel, None),
            ("the method config's", &by_method, None),
        ] {
            // One call at a time: with several in flight the connection's
            // task lets the calls run before it reads (write coalescing),
            // and their timers win.
            for _ in 0..3 {
                let mut client = SimpleClient::new(channel.clone());
                let call = tokio::spawn(async move {
                    timed_route(&mut client, route_request("sleep:2000", timeout)).await
                });
                // Let the call leave, then keep this runtime busy until the
                // server's timeout has answered.
                tokio::time::sleep(Duration::from_millis(5)).await;
                std::thread::sleep(Duration::from_millis(200));
                let (code, _, message) = call.await.expect("the call's task");
                assert_eq!(code, Code::DeadlineExceeded, "{name} deadline: {message}");
                assert!(
                    message.starts_with("deadline of 40ms exceeded")
                        && message.ends_with("the server answered CANCELLED: Timeout expired"),
                    "{message}"
                );
            }
        }
    })
    .await
    .expect("the test finished within its limit");
}

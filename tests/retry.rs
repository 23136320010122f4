//! Transparent retry (gRFC A6) of calls the server never processed.
//!
//! A call that reached a server's HTTP/2 layer but provably not its
//! application (RST_STREAM(REFUSED_STREAM), or a stream above a GOAWAY's
//! last_stream_id) is picked again once, on whatever the picker chooses
//! then; a call that cannot be retried fails UNAVAILABLE with the reason,
//! never INTERNAL. Against real servers: tonic backends, the raw HTTP/2
//! servers of `support::h2server`, and gRPC's C-core (`support::grpcio`).

mod support;

use std::time::Duration;

use support::grpcio::GrpcioServer;
use support::h2server::{Behaviour, H2Server};
use support::proto::simple_client::SimpleClient;
use support::{eventually, fast_backoff, route, Backend};
use tonic::Code;
use tonic_balance::BalancedChannel;

mod echo {
    tonic::include_proto!("echo");
}

use echo::echo_client::EchoClient;
use echo::EchoMessage;

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// A connection these servers drop before it served a call does not reset
/// the backoff (see `tests/reconnect.rs`): keep the delays tiny, so that the
/// misbehaving backend is READY again within milliseconds and keeps
/// receiving calls to turn away.
fn tiny_backoff() -> tonic_balance::subchannel::BackoffConfig {
    tonic_balance::subchannel::BackoffConfig {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(10),
        ..fast_backoff()
    }
}

async fn round_robin(addrs: &[std::net::SocketAddr]) -> BalancedChannel {
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    BalancedChannel::builder(format!("static:///{}", list.join(",")))
        .balancer("round_robin")
        .backoff(tiny_backoff())
        .connect(Duration::from_secs(10))
        .await
        .expect("READY")
}

/// Waits until round_robin has both backends READY: the raw server was
/// connected to (it speaks first) and the tonic backend has its connection
/// and has had time to send its preface.
async fn both_ready(raw: &H2Server, healthy: &Backend) {
    assert!(eventually(Duration::from_secs(5), || raw.connections() == 1).await);
    assert!(eventually(Duration::from_secs(5), || healthy.open_connections() == 1).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Runs `calls` calls from `callers` concurrent callers; returns the
/// failures.
async fn run_calls(channel: &BalancedChannel, callers: usize, calls: usize) -> Vec<tonic::Status> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut client = SimpleClient::new(channel.clone());
            let next = next.clone();
            tokio::spawn(async move {
                let mut failed = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < calls {
                    if let Err(status) = route(&mut client, "x").await {
                        failed.push(status);
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for task in tasks {
        failed.extend(task.await.expect("caller"));
    }
    failed
}

#[tokio::test]
async fn refused_streams_are_retried_on_the_healthy_backend() {
    tokio::time::timeout(TEST_LIMIT, async {
        let refuser = H2Server::start(Behaviour::RefuseEveryStream).await;
        let healthy = Backend::start();
        let channel = round_robin(&[refuser.addr, healthy.addr]).await;
        both_ready(&refuser, &healthy).await;
        let mut client = SimpleClient::new(channel);
        for i in 0..20 {
            let served_by = route(&mut client, "x")
                .await
                .unwrap_or_else(|status| panic!("call {i}: {status:?}"));
            assert_eq!(served_by, healthy.addr.to_string());
        }
        assert_eq!(healthy.calls(), 20);
        assert!(
            refuser.streams() >= 5,
            "round_robin sent calls to the refuser too"
        );
    })
    .await
    .expect("bounded");
}

/// gRPC C-core counts a stream against its SETTINGS_MAX_CONCURRENT_STREAMS
/// until its application has released the call, a little after the client
/// saw the stream end: `h2` keeps to the limit (streams beyond it wait in
/// its queue) and the server still refuses some. Each refused call is
/// retried; a call refused twice in a row (the retry landing in the same
/// window) fails, as gRFC A6 allows one transparent retry only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_core_server_refusing_streams_over_its_limit_fails_no_call_refused_once() {
    tokio::time::timeout(TEST_LIMIT, async {
        let server = GrpcioServer::start(&["--max-concurrent-streams", "2"]);
        let channel = round_robin(&[server.addr]).await;
        let calls = 600;
        let failed = run_calls(&channel, 16, calls).await;
        for status in &failed {
            assert!(
                status.code() == Code::Unavailable && status.message().contains("retried once"),
                "a call failed without its retry: {status:?}"
            );
        }
        // Before the retry, about one call in seven failed (29 of 200); a
        // call refused twice in a row is rarer (0 to 3 % here, more under
        // load), and A6 allows no second transparent retry.
        assert!(
            failed.len() * 20 <= calls,
            "{} of {calls} failed",
            failed.len()
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn streams_above_a_goaways_last_stream_id_are_retried_on_the_healthy_backend() {
    tokio::time::timeout(TEST_LIMIT, async {
        let goaway = H2Server::start(Behaviour::GoAwayOnFirstHeaders).await;
        let healthy = Backend::start();
        let channel = round_robin(&[goaway.addr, healthy.addr]).await;
        both_ready(&goaway, &healthy).await;
        let mut client = SimpleClient::new(channel.clone());
        for i in 0..50 {
            route(&mut client, "x")
                .await
                .unwrap_or_else(|status| panic!("call {i}: {status:?}"));
        }
        let failed = run_calls(&channel, 4, 200).await;
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            failed.first()
        );
        assert!(goaway.streams() >= 5, "round_robin sent calls to it too");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_backend_that_processes_nothing_fails_calls_unavailable_not_internal() {
    tokio::time::timeout(TEST_LIMIT, async {
        let goaway = H2Server::start(Behaviour::GoAwayOnFirstHeaders).await;
        let channel = round_robin(&[goaway.addr]).await;
        let failed = run_calls(&channel, 16, 2000).await;
        eprintln!(
            "{:?}",
            failed
                .iter()
                .map(|s| format!("{:?} {}", s.code(), s.message()))
                .collect::<std::collections::BTreeSet<_>>()
        );
        assert!(!failed.is_empty());
        for status in &failed {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_refused_call_is_retried_once_then_fails_unavailable_with_the_reason() {
    tokio::time::timeout(TEST_LIMIT, async {
        let refuser = H2Server::start(Behaviour::RefuseEveryStream).await;
        let channel = round_robin(&[refuser.addr]).await;
        let mut client = SimpleClient::new(channel);
        let status = route(&mut client, "x").await.expect_err("refused twice");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let message = status.message();
        assert!(
            message.contains(&refuser.addr.to_string()) && message.contains("refused"),
            "{message}"
        );
        assert!(message.contains("retried once"), "{message}");
        assert_eq!(refuser.streams(), 2, "the first attempt and one retry");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_call_whose_body_outgrew_the_replay_buffer_is_not_retried() {
    tokio::time::timeout(TEST_LIMIT, async {
        // Refuses each stream after reading 512 KiB of its body.
        let refuser = H2Server::start(Behaviour::RefuseAfterReading(512 << 10)).await;
        let channel = round_robin(&[refuser.addr]).await;
        let mut client = EchoClient::new(channel);
        let chunk = EchoMessage {
            data: vec![7; 64 << 10],
        };
        let big = tokio_stream::iter(std::iter::repeat_n(chunk.clone(), 16));
        let status = client.collect(big).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("replay buffer"),
            "{}",
            status.message()
        );
        assert_eq!(refuser.streams(), 1, "not retried");

        // A small body is replayed: the refuser reads it all, refuses, and
        // sees it once more.
        let small = tokio_stream::iter(std::iter::repeat_n(chunk, 2));
        let status = client.collect(small).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(refuser.streams(), 3, "retried once");
    })
    .await
    .expect("bounded");
}

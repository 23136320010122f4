//! Every pick's completion (its `CallObserver`) hears exactly once how its
//! call ended, with the right `DoneInfo`, however the call ends: served
//! (the trailers lent), failed by the server (a trailers-only answer),
//! re-picked because its subchannel was not connected, transparently
//! retried after a refusal, past its deadline while waiting for the
//! response headers or the body, streamed to its end, or cancelled by a
//! caller that drops it. And the channel never picks on its own account
//! (e.g. to build an error message): every pick belongs to a call attempt.
//!
//! The policy is written here, through the public API: it rotates over
//! every subchannel, connected or not, and counts picks and completions.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::every_address::{EveryAddress, Publish, Rotation};
use support::h2server::{Behaviour, H2Server};
use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{eventually, fast_backoff, route, Backend, ClosedPort};
use tonic::Code;
use tonic_balance::picker::{CallObserver, DoneInfo};
use tonic_balance::{BalancedChannel, WaitForReady};

mod echo {
    tonic::include_proto!("echo");
}

use echo::echo_client::EchoClient;
use echo::RepeatRequest;

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// How one call ended, as its pick heard it.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    code: Code,
    bytes_sent: bool,
    bytes_received: bool,
    /// The trailers' `grpc-status` and `x-failed-by`, if any.
    grpc_status: Option<String>,
    failed_by: Option<String>,
}

impl Outcome {
    fn of(code: Code, bytes_sent: bool, bytes_received: bool) -> Outcome {
        Outcome {
            code,
            bytes_sent,
            bytes_received,
            grpc_status: None,
            failed_by: None,
        }
    }
}

/// Counts picks and completions, and records every outcome.
#[derive(Clone, Default)]
struct Counting {
    picks: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
}

impl Counting {
    fn picks(&self) -> usize {
        self.picks.load(Ordering::SeqCst)
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }
}

impl CallObserver for Counting {
    fn done(&self, info: &DoneInfo<'_>) {
        let header = |name: &str| {
            let value = info.trailers().get(name)?;
            value.to_str().ok().map(str::to_owned)
        };
        self.outcomes.lock().unwrap().push(Outcome {
            code: info.code(),
            bytes_sent: info.bytes_sent(),
            bytes_received: info.bytes_received(),
            grpc_status: header("grpc-status"),
            failed_by: header("x-failed-by"),
        });
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

async fn counting_channel(addrs: &[String]) -> (BalancedChannel, Counting) {
    let counters = Counting::default();
    let observer = counters.clone();
    let policy = EveryAddress::new("counting", Publish::AtEachReady, move |subchannels| {
        let picks = observer.picks.clone();
        let on_pick = move || _ = picks.fetch_add(1, Ordering::SeqCst);
        Arc::new(Rotation::new(
            subchannels,
            Arc::new(observer.clone()),
            on_pick,
        ))
    });
    let channel = BalancedChannel::builder(format!("static:///{}", addrs.join(",")))
        .balancer_builder(policy)
        .backoff(fast_backoff())
        .build()
        .expect("channel");
    (channel, counters)
}

/// [`counting_channel`], once READY.
async fn ready_counting_channel(addrs: &[String]) -> (BalancedChannel, Counting) {
    let (channel, counters) = counting_channel(addrs).await;
    channel
        .wait_until_ready(Duration::from_secs(10))
        .await
        .expect("READY");
    (channel, counters)
}

/// A request for `count` echoes of "m".
fn repeat_m(count: u32) -> RepeatRequest {
    RepeatRequest {
        data: b"m".to_vec(),
        count,
    }
}

fn addr(a: SocketAddr) -> String {
    a.to_string()
}

fn request(data: &str, timeout: Duration) -> tonic::Request<SimpleRequest> {
    let mut request = tonic::Request::new(SimpleRequest { data: data.into() });
    request.set_timeout(timeout);
    request
}

#[tokio::test]
async fn re_picks_and_transparent_retries_complete_every_pick_once() {
    tokio::time::timeout(TEST_LIMIT, async {
        let healthy = Backend::start();
        let refuser = H2Server::start(Behaviour::RefuseEveryStream).await;
        let dead = ClosedPort::new();
        let (channel, counters) =
            counting_channel(&[addr(dead.addr), addr(refuser.addr), addr(healthy.addr)]).await;
        assert!(eventually(Duration::from_secs(5), || healthy.open_connections() == 1).await);
        assert!(eventually(Duration::from_secs(5), || refuser.connections() == 1).await);
        let mut client = SimpleClient::new(channel);
        for i in 0..12 {
            let served_by = route(&mut client, "x")
                .await
                .unwrap_or_else(|status| panic!("call {i}: {status:?}"));
            assert_eq!(served_by, addr(healthy.addr));
        }
        // Each call went through the rotation until the healthy backend:
        // the dead one is re-picked, the refusal retried.
        assert!(counters.picks() > 12, "{} picks", counters.picks());
        assert!(refuser.streams() >= 1);
        assert_eq!(counters.done(), counters.picks());
        // Each outcome says how far its attempt went.
        let outcomes = counters.outcomes();
        let served = Outcome {
            grpc_status: Some("0".into()),
            ..Outcome::of(Code::Ok, true, true)
        };
        let never_sent = Outcome::of(Code::Unavailable, false, false);
        let refused = Outcome::of(Code::Unavailable, true, false);
        assert_eq!(outcomes.iter().filter(|o| **o == served).count(), 12);
        assert!(outcomes.contains(&never_sent), "{outcomes:?}");
        assert!(outcomes.contains(&refused), "{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| *o == served || *o == never_sent || *o == refused),
            "{outcomes:?}"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_call_past_its_deadline_waiting_for_headers_completes_its_one_pick() {
    let slow = Backend::start();
    let (channel, counters) = ready_counting_channel(&[addr(slow.addr)]).await;
    let mut client = SimpleClient::new(channel);
    tokio::time::pause();
    let status = tokio::time::timeout(
        TEST_LIMIT,
        client.route(request("sleep:30000", Duration::from_millis(300))),
    )
    .await
    .expect("bounded")
    .expect_err("the backend answers after 30 s");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains(&addr(slow.addr)),
        "says where the call waited: {}",
        status.message()
    );
    assert_eq!((counters.picks(), counters.done()), (1, 1));
    assert_eq!(
        counters.outcomes(),
        [Outcome::of(Code::DeadlineExceeded, true, false)]
    );
}

#[tokio::test]
async fn a_call_past_its_deadline_in_the_body_completes_its_pick_when_it_ends() {
    let server = H2Server::start(Behaviour::HeadersThenSilence).await;
    let (channel, counters) = ready_counting_channel(&[addr(server.addr)]).await;
    let mut client = EchoClient::new(channel);
    tokio::time::pause();
    tokio::time::timeout(TEST_LIMIT, async {
        let mut request = tonic::Request::new(repeat_m(1));
        request.set_timeout(Duration::from_secs(1));
        let mut stream = client.repeat(request).await.expect("headers").into_inner();
        assert_eq!(counters.done(), 0, "in flight");
        let status = stream.message().await.expect_err("silence");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        // Counted when the call ended, while the caller still holds it.
        assert_eq!((counters.picks(), counters.done()), (1, 1));
        drop(stream);
        assert_eq!(counters.done(), 1, "not again on drop");
        assert_eq!(
            counters.outcomes(),
            [Outcome::of(Code::DeadlineExceeded, true, true)]
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_call_the_caller_drops_completes_its_pick() {
    tokio::time::timeout(TEST_LIMIT, async {
        let slow = Backend::start();
        let stall = H2Server::start(Behaviour::StallAfterMessages(1)).await;
        let (channel, counters) = ready_counting_channel(&[addr(slow.addr)]).await;
        // Dropped while waiting for the response headers.
        let mut client = SimpleClient::new(channel);
        let call = tokio::spawn(async move {
            client
                .route(request("sleep:30000", Duration::from_secs(60)))
                .await
        });
        assert!(eventually(Duration::from_secs(10), || slow.calls() == 1).await);
        call.abort();
        let _ = call.await;
        assert_eq!((counters.picks(), counters.done()), (1, 1));
        assert_eq!(
            counters.outcomes(),
            [Outcome::of(Code::Cancelled, true, false)]
        );

        // Dropped mid-stream.
        let (channel, counters) = ready_counting_channel(&[addr(stall.addr)]).await;
        let mut client = EchoClient::new(channel);
        let request = repeat_m(5);
        let mut stream = client.repeat(request).await.expect("headers").into_inner();
        assert!(stream.message().await.expect("a message").is_some());
        assert_eq!(counters.done(), 0, "in flight");
        drop(stream);
        assert_eq!((counters.picks(), counters.done()), (1, 1));
        assert_eq!(
            counters.outcomes(),
            [Outcome::of(Code::Cancelled, true, true)]
        );
        assert!(eventually(Duration::from_secs(5), || stall.cancelled() == 1).await);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_wait_for_ready_call_past_its_deadline_reports_the_last_pick_failure() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dead = ClosedPort::new();
        let channel = BalancedChannel::builder(format!("static:///{}", dead.addr))
            .balancer("round_robin")
            .backoff(fast_backoff())
            .build()
            .expect("channel");
        let err = channel
            .wait_until_ready(Duration::from_millis(500))
            .await
            .expect_err("nothing listens");
        assert!(err.to_string().contains("TRANSIENT_FAILURE"), "{err}");
        let mut client = SimpleClient::new(channel);
        let mut request = request("x", Duration::from_millis(500));
        request.extensions_mut().insert(WaitForReady(true));
        let status = client.route(request).await.expect_err("nothing listens");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        let message = status.message();
        assert!(
            message.contains("TRANSIENT_FAILURE") && message.contains(&addr(dead.addr)),
            "{message}"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_server_failure_reaches_the_pick_with_its_code_and_trailers() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let (channel, counters) = ready_counting_channel(&[addr(backend.addr)]).await;
        let mut client = SimpleClient::new(channel);
        // FAILED_PRECONDITION, answered trailers-only: its headers are the
        // trailers the pick reads.
        let status = route(&mut client, "fail:9").await.expect_err("fails");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(
            counters.outcomes(),
            [Outcome {
                grpc_status: Some("9".into()),
                failed_by: Some(addr(backend.addr)),
                ..Outcome::of(Code::FailedPrecondition, true, true)
            }]
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_stream_completes_its_pick_when_its_trailers_arrive() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = support::echo::start(Duration::ZERO).await;
        let (channel, counters) = ready_counting_channel(&[addr(backend)]).await;
        let mut client = EchoClient::new(channel);
        let request = repeat_m(3);
        let mut stream = client.repeat(request).await.expect("headers").into_inner();
        for _ in 0..3 {
            assert!(stream.message().await.expect("a message").is_some());
        }
        assert_eq!(counters.done(), 0, "in flight until the trailers");
        assert!(stream.message().await.expect("the end").is_none());
        assert_eq!(
            counters.outcomes(),
            [Outcome {
                grpc_status: Some("0".into()),
                ..Outcome::of(Code::Ok, true, true)
            }]
        );
        drop(stream);
        assert_eq!(counters.done(), 1, "not again on drop");
    })
    .await
    .expect("bounded");
}

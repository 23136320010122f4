//! A call's deadline covers the whole call (gRPC's deadline semantics):
//! the pick, the response headers, the response body and trailers, and a
//! stream's every message. When it passes, the call ends with
//! DEADLINE_EXCEEDED and the stream is reset with RST_STREAM(CANCEL).
//!
//! The servers misbehave on purpose: the raw HTTP/2 servers of
//! `support::h2server` answer the response headers and then go silent, and
//! gRPC's C-core (`support::grpcio`) stalls in its handler or is frozen
//! with SIGSTOP after sending headers, like a hung host. Tests against
//! servers in this runtime pause the clock once the channel is READY, so the
//! deadline passes in virtual time; tests against a real process use real
//! time with wide bounds and assert outcomes, not durations.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::eventually;
use support::grpcio::GrpcioServer;
use support::h2server::{Behaviour, H2Server};
use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_balance::BalancedChannel;

mod echo {
    tonic::include_proto!("echo");
}

use echo::echo_client::EchoClient;
use echo::{EchoMessage, RepeatRequest};

/// Bounds every test body (virtual time where the clock is paused).
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn channel_to(addr: std::net::SocketAddr) -> BalancedChannel {
    BalancedChannel::builder(format!("static:///{addr}"))
        .connect(Duration::from_secs(10))
        .await
        .expect("READY")
}

/// On the paused clock the call ends when its timer fires: at the deadline,
/// rounded up to the timer's 1 ms resolution.
fn assert_at_deadline(start: Instant, timeout: Duration) {
    let elapsed = start.elapsed();
    assert!(
        elapsed >= timeout && elapsed <= timeout + Duration::from_millis(1),
        "ended after {elapsed:?}, the deadline was {timeout:?}"
    );
}

fn request(timeout: Option<Duration>) -> tonic::Request<SimpleRequest> {
    let mut request = tonic::Request::new(SimpleRequest {
        data: "x".to_owned(),
    });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

#[tokio::test]
async fn a_unary_call_whose_server_goes_silent_after_the_headers_ends_at_its_deadline() {
    let server = H2Server::start(Behaviour::HeadersThenSilence).await;
    let mut client = SimpleClient::new(channel_to(server.addr).await);
    tokio::time::pause();
    let start = Instant::now();
    let outcome = tokio::time::timeout(
        TEST_LIMIT,
        client.route(request(Some(Duration::from_secs(1)))),
    )
    .await
    .expect("the call ends");
    let status = outcome.expect_err("no response ever comes");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains(&server.addr.to_string()),
        "names the backend: {}",
        status.message()
    );
    assert_at_deadline(start, Duration::from_secs(1));
    assert!(
        eventually(Duration::from_secs(5), || server.cancelled() == 1).await,
        "the server saw RST_STREAM(CANCEL): {} of {} streams",
        server.cancelled(),
        server.streams()
    );
}

#[tokio::test]
async fn the_channels_default_timeout_bounds_the_response_body_too() {
    let server = H2Server::start(Behaviour::HeadersThenSilence).await;
    let channel = BalancedChannel::builder(format!("static:///{}", server.addr))
        .timeout(Duration::from_millis(1500))
        .connect(Duration::from_secs(10))
        .await
        .expect("READY");
    let mut client = SimpleClient::new(channel);
    tokio::time::pause();
    let start = Instant::now();
    let status = tokio::time::timeout(TEST_LIMIT, client.route(request(None)))
        .await
        .expect("the call ends")
        .expect_err("no response ever comes");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_at_deadline(start, Duration::from_millis(1500));
    assert!(eventually(Duration::from_secs(5), || server.cancelled() == 1).await);
}

#[tokio::test]
async fn a_server_stream_stalled_mid_stream_ends_at_its_deadline() {
    let server = H2Server::start(Behaviour::StallAfterMessages(2)).await;
    let mut client = EchoClient::new(channel_to(server.addr).await);
    tokio::time::pause();
    tokio::time::timeout(TEST_LIMIT, async {
        let start = Instant::now();
        let mut request = tonic::Request::new(RepeatRequest {
            data: b"m".to_vec(),
            count: 10,
        });
        request.set_timeout(Duration::from_secs(2));
        let mut stream = client.repeat(request).await.expect("headers").into_inner();
        for _ in 0..2 {
            let message = stream.message().await.expect("a message");
            assert_eq!(message.map(|m| m.data), Some(b"m".to_vec()));
        }
        let status = stream.message().await.expect_err("the stream stalls");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_at_deadline(start, Duration::from_secs(2));
        assert!(
            stream.message().await.unwrap_or(None).is_none(),
            "nothing after the error"
        );
        assert!(eventually(Duration::from_secs(5), || server.cancelled() == 1).await);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_bidi_stream_past_its_deadline_stops_sending_and_is_cancelled() {
    let server = H2Server::start(Behaviour::HeadersThenSilence).await;
    let mut client = EchoClient::new(channel_to(server.addr).await);
    tokio::time::pause();
    tokio::time::timeout(TEST_LIMIT, async {
        // The request stream stays open: the caller keeps its sender.
        let (tx, rx) = mpsc::channel::<EchoMessage>(1);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.set_timeout(Duration::from_secs(1));
        let mut replies = client.chat(request).await.expect("headers").into_inner();
        let status = replies.message().await.expect_err("no reply ever comes");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        // The request body's pipe stopped and let go of the caller's stream.
        tx.closed().await;
        assert!(eventually(Duration::from_secs(5), || server.cancelled() == 1).await);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_stalled_grpc_core_server_call_ends_at_the_channels_deadline() {
    // The channel's default timeout is the client's own: the server is not
    // told (no grpc-timeout), so only the client can end the call.
    let server = GrpcioServer::start(&["--stall"]);
    let channel = BalancedChannel::builder(format!("static:///{}", server.addr))
        .timeout(Duration::from_secs(1))
        .connect(Duration::from_secs(10))
        .await
        .expect("READY");
    let mut client = SimpleClient::new(channel);
    let status = tokio::time::timeout(Duration::from_secs(20), client.route(request(None)))
        .await
        .expect("the call ends")
        .expect_err("the handler never returns");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains(&server.addr.to_string()),
        "{}",
        status.message()
    );
}

/// `SimpleRequest { data }` as a gRPC message frame.
fn simple_request_frame(data: &str) -> Bytes {
    let mut message = vec![0x0a, data.len() as u8];
    message.extend_from_slice(data.as_bytes());
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

#[tokio::test]
async fn a_server_frozen_after_sending_headers_ends_the_call_at_its_deadline() {
    let server = GrpcioServer::start(&["--stall"]);
    let channel = channel_to(server.addr).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        // A raw call, to see the response headers arrive before the freeze.
        let request = http::Request::builder()
            .method("POST")
            .uri("/proto.Simple/Route")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "2000m")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                simple_request_frame("x"),
            )))
            .unwrap();
        let response = tower::ServiceExt::oneshot(channel, request)
            .await
            .expect("response headers");
        assert_eq!(response.status(), 200);
        server.freeze();
        let mut body = response.into_body();
        let status = loop {
            match body.frame().await {
                Some(Ok(frame)) if frame.is_data() => continue,
                Some(Ok(frame)) => panic!("unexpected trailers: {frame:?}"),
                Some(Err(status)) => break status,
                None => panic!("the body ended without a status"),
            }
        };
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(
            status.message().contains(&server.addr.to_string()),
            "{}",
            status.message()
        );
    })
    .await
    .expect("the call ends");
}

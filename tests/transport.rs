//! The transport against real servers on 127.0.0.1: what goes on the wire
//! (headers), how connections are made (unix sockets, the user's own
//! connector) and how they are run (settings, pools).

mod support;

use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{static_target, Backend};
use tokio_stream::StreamExt;
use tonic_balance::BalancedChannel;

const TEST_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn connection_specific_headers_from_a_tower_layer_are_stripped_before_sending() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let channel = BalancedChannel::builder(static_target(&[&backend]))
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        // HTTP/1 headers a tower layer or interceptor might add; HTTP/2
        // forbids each of them (RFC 9113, 8.2.2), and `h2` refuses the
        // request unless they are removed.
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
        ] {
            let layered = tower::ServiceBuilder::new()
                .map_request(move |mut request: http::Request<tonic::body::Body>| {
                    request
                        .headers_mut()
                        .insert(name, http::HeaderValue::from_static(value));
                    request
                })
                .service(channel.clone());
            let mut client = SimpleClient::new(layered);
            let reply = client
                .route(SimpleRequest {
                    data: name.to_owned(),
                })
                .await;
            assert!(reply.is_ok(), "{name}: {value}: {reply:?}");
        }
        assert_eq!(backend.calls(), 6);
    })
    .await
    .expect("bounded");
}

async fn call(channel: &BalancedChannel, data: &str) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(SimpleRequest { data: data.into() });
    request.set_timeout(Duration::from_secs(10));
    let reply = SimpleClient::new(channel.clone()).route(request).await?;
    Ok(reply.into_inner().value)
}

#[tokio::test]
async fn an_in_memory_connector_serves_calls_with_no_socket_at_all() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (to_server, accepted) = tokio::sync::mpsc::channel::<support::Piped>(16);
        let incoming = tokio_stream::wrappers::ReceiverStream::new(accepted).map(Ok);
        let stats = support::serve_incoming(incoming);
        let dialled = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = dialled.clone();
        let connector = tower::service_fn(move |uri: http::Uri| {
            let to_server = to_server.clone();
            seen.lock().unwrap().push(uri.to_string());
            async move {
                let (client, server) = tokio::io::duplex(64 * 1024);
                to_server
                    .send(support::Piped(server))
                    .await
                    .map_err(|_| std::io::Error::other("the in-memory server is gone"))?;
                Ok::<_, std::io::Error>(client)
            }
        });
        // Addresses no socket could reach: only the connector knows them.
        let channel = BalancedChannel::builder("static:///memory-a:1,memory-b:2")
            .balancer("round_robin")
            .connector(connector)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        for i in 0..4 {
            call(&channel, &format!("{i}")).await.unwrap();
        }
        assert_eq!(stats.calls.load(std::sync::atomic::Ordering::SeqCst), 4);
        let mut dialled = dialled.lock().unwrap().clone();
        dialled.sort();
        dialled.dedup();
        assert_eq!(dialled, ["http://memory-a:1/", "http://memory-b:2/"]);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_failing_connector_is_unavailable_with_its_error() {
    tokio::time::timeout(TEST_LIMIT, async {
        let connector = tower::service_fn(|_: http::Uri| async {
            Err::<tokio::io::DuplexStream, _>(std::io::Error::other("proxy said 403"))
        });
        let channel = BalancedChannel::builder("static:///10.255.255.1:1")
            .connector(connector)
            .build()
            .unwrap();
        let status = call(&channel, "x").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let message = status.message();
        assert!(message.contains("10.255.255.1:1"), "{message}");
        assert!(message.contains("proxy said 403"), "{message}");
    })
    .await
    .expect("bounded");
}

#[cfg(unix)]
#[tokio::test]
async fn unix_socket_addresses_are_served() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("simple.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let stats =
            support::serve_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener));
        let resolver = tonic_balance::resolver::ManualResolver::new("manual");
        resolver.update([tonic_balance::Address::new(format!(
            "unix:{}",
            path.display()
        ))]);
        let channel = BalancedChannel::builder("manual:///unix")
            .resolver_builder(resolver)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        call(&channel, "unix").await.unwrap();
        assert_eq!(stats.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    })
    .await
    .expect("bounded");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn linux_abstract_socket_addresses_are_served() {
    use std::os::linux::net::SocketAddrExt;
    tokio::time::timeout(TEST_LIMIT, async {
        let name = format!("tonic-balance-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let std_listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::UnixListener::from_std(std_listener).unwrap();
        let stats =
            support::serve_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener));
        let channel = tonic_balance::resolver::ManualResolver::new("manual");
        channel.update([tonic_balance::Address::new(format!("unix-abstract:{name}"))]);
        let balanced = BalancedChannel::builder("manual:///abstract")
            .resolver_builder(channel)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        call(&balanced, "abstract").await.unwrap();
        assert_eq!(stats.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    })
    .await
    .expect("bounded");
}

/// A tonic backend on 127.0.0.1 recording each call's headers.
async fn recording_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<http::HeaderMap>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<_>| {
        record.lock().unwrap().push(req.headers().clone());
        req
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(support::simple_server(addr))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, seen)
}

#[tokio::test]
async fn calls_send_the_users_agent_then_ours() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (addr, seen) = recording_backend().await;
        let plain = BalancedChannel::builder(format!("static:///{addr}"))
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        call(&plain, "plain").await.unwrap();
        let named = BalancedChannel::builder(format!("static:///{addr}"))
            .user_agent("inventory-service/2.1")
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        call(&named, "named").await.unwrap();
        let agents: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|h| h["user-agent"].to_str().unwrap().to_owned())
            .collect();
        let ours = format!("grpc-rust-tonic-balance/{}", env!("CARGO_PKG_VERSION"));
        assert_eq!(
            agents,
            [ours.clone(), format!("inventory-service/2.1 {ours}")]
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn connections_leave_from_the_local_address_asked_for() {
    tokio::time::timeout(TEST_LIMIT, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let local: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let _channel = BalancedChannel::builder(format!("static:///{addr}"))
            .local_address(Some(local))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .build()
            .unwrap();
        _channel
            .wait_until_ready(Duration::from_millis(1))
            .await
            .ok();
        let (_socket, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), local);
    })
    .await
    .expect("bounded");
}

/// A TCP server that answers every connection with `reply` (after reading
/// what the client sent first) and closes it; returns its address and a
/// count of the connections it accepted.
async fn not_http2_server(
    reply: &'static [u8],
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(reply).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_peer_that_is_not_an_http2_server_fails_calls_with_what_it_said_on_the_backoff_schedule()
{
    tokio::time::timeout(TEST_LIMIT, async {
        // A TLS server reached without TLS (it answers with an alert), and
        // an HTTP/1 server.
        let cases: [(&'static [u8], &str); 2] = [
            (
                &[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46],
                "answered with TLS",
            ),
            (
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
                "HTTP/1",
            ),
        ];
        for (reply, said) in cases {
            let (addr, accepted) = not_http2_server(reply).await;
            let channel = BalancedChannel::builder(format!("static:///{addr}"))
                .build()
                .unwrap();
            // 20 fail-fast calls well within the first backoff delay (1 s):
            // each fails at once with what the server said, and the
            // connection is not retried in a loop.
            for _ in 0..20 {
                let status = call(&channel, "x").await.unwrap_err();
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(status.message().contains(said), "{status:?}");
            }
            let seen = accepted.load(std::sync::atomic::Ordering::Relaxed);
            assert!(
                seen <= 2,
                "{seen} connections to a server that is not HTTP/2"
            );
        }
    })
    .await
    .expect("bounded");
}

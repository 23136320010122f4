//! TLS against real servers on loopback with certificates made at test time
//! (rcgen): a private CA, the target's host name verified on every IP a
//! DNS name resolves to, mutual TLS, and each way a handshake can fail
//! giving a clear `UNAVAILABLE`.

#![cfg(feature = "tls")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::tls::{backend, Ca, Leaf};
use tonic::Code;
use tonic_balance::{BalancedChannel, ClientTlsConfig};

const TEST_LIMIT: Duration = Duration::from_secs(60);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn call(channel: &BalancedChannel, data: &str) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(SimpleRequest { data: data.into() });
    request.set_timeout(Duration::from_secs(10));
    let reply = SimpleClient::new(channel.clone()).route(request).await?;
    Ok(reply.into_inner().value)
}

/// The status of the first call on a channel whose connections fail.
async fn failure(target: String, tls: ClientTlsConfig) -> tonic::Status {
    let channel = BalancedChannel::builder(target).tls(tls).build().unwrap();
    let status = call(&channel, "x").await.expect_err("the call fails");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    status
}

#[tokio::test]
async fn tls_with_a_private_ca_serves_calls_with_scheme_https() {
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        let (addr, seen) = backend(any_port(), &ca.leaf(&["127.0.0.1"]), None).await;
        let channel = BalancedChannel::builder(format!("static:///{addr}"))
            .tls(ClientTlsConfig::new().ca_certificate(ca.pem.clone()))
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        let reply = call(&channel, "a").await.unwrap();
        assert!(reply.starts_with("hello a"), "{reply}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, [("https".to_owned(), addr.to_string())]);
    })
    .await
    .expect("bounded");
}

#[cfg(feature = "dns")]
#[tokio::test]
async fn every_ip_of_a_dns_name_is_verified_for_the_name_not_the_ip() {
    use support::dns::DnsServer;
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        // The certificate names only the host, never an IP.
        let leaf = ca.leaf(&["api.test"]);
        let port = support::free_port();
        let mut seen = Vec::new();
        for ip in ["127.0.0.1", "127.0.0.2"] {
            let addr = format!("{ip}:{port}").parse().unwrap();
            seen.push(backend(addr, &leaf, None).await.1);
        }
        let mut dns = DnsServer::start().await;
        dns.set("api.test", &["127.0.0.1", "127.0.0.2"]).await;
        let channel = BalancedChannel::builder(dns.target(&format!("api.test:{port}")))
            .balancer("round_robin")
            .tls(ClientTlsConfig::new().ca_certificate(ca.pem.clone()))
            .build()
            .unwrap();
        // Both connections READY: round_robin then serves from both.
        let both = support::eventually(Duration::from_secs(20), || {
            seen.iter().all(|s| !s.lock().unwrap().is_empty())
        });
        let calls = async {
            for i in 0..40 {
                call(&channel, &format!("{i}")).await.unwrap();
                if seen.iter().all(|s| !s.lock().unwrap().is_empty()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let (_, served_by_both) = tokio::join!(calls, both);
        assert!(served_by_both, "both IPs served calls");
        let authority = format!("api.test:{port}");
        for s in &seen {
            for (scheme, got) in s.lock().unwrap().iter() {
                assert_eq!(
                    (scheme.as_str(), got.as_str()),
                    ("https", authority.as_str())
                );
            }
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn mutual_tls_presents_the_client_identity() {
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        let clients = Ca::new("client CA");
        let server = ca.leaf(&["127.0.0.1"]);
        let (addr, _) = backend(any_port(), &server, Some(&clients.pem)).await;
        let client: Leaf = clients.leaf(&["client.test"]);
        let tls = ClientTlsConfig::new()
            .ca_certificate(ca.pem.clone())
            .identity(client.cert, client.key);
        let channel = BalancedChannel::builder(format!("static:///{addr}"))
            .tls(tls)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        call(&channel, "mtls").await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_missing_client_certificate_is_unavailable_and_says_so() {
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        let clients = Ca::new("client CA");
        let (addr, _) = backend(any_port(), &ca.leaf(&["127.0.0.1"]), Some(&clients.pem)).await;
        let tls = ClientTlsConfig::new().ca_certificate(ca.pem.clone());
        let status = failure(format!("static:///{addr}"), tls).await;
        let message = status.message();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("client certificate"), "{message}");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_tls_failure_is_not_hidden_by_a_refusal_from_an_address_tried_after_it() {
    tokio::time::timeout(TEST_LIMIT, async {
        // The first address speaks plaintext HTTP/2 (TLS fails there); the
        // second refuses connections, and is tried after the first.
        let plaintext = support::Backend::start();
        let refused = support::ClosedPort::new();
        let target = format!("static:///{},{}", plaintext.addr, refused.addr);
        let tls = ClientTlsConfig::new().ca_certificate(Ca::new("test CA").pem);
        let channel = BalancedChannel::builder(target)
            .tls(tls)
            .backoff(support::fast_backoff())
            .build()
            .unwrap();
        let tls_error = format!("{}: TLS handshake", plaintext.addr);
        // The first pass, then retries of both addresses (each refusal
        // comes after a TLS failure).
        for _ in 0..5 {
            let status = call(&channel, "x").await.expect_err("the call fails");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(status.message().contains(&tls_error), "{status:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let waited = channel
            .wait_until_ready(Duration::from_millis(300))
            .await
            .expect_err("never ready")
            .to_string();
        assert!(waited.contains(&tls_error), "{waited}");
    })
    .await
    .expect("bounded");
}

/// A TLS server (certificate `leaf`, any client) that resets each
/// connection right after the handshake, before any HTTP/2: what a client
/// sees of a server that requires a client certificate when the socket is
/// closed before the client reads the server's alert.
async fn resets_after_the_handshake(leaf: &Leaf) -> SocketAddr {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let (tcp, _) = tls.into_inner();
                tcp.set_zero_linger().ok();
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_server_closing_tls_after_the_handshake_is_said_to_want_a_client_certificate() {
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        let addr = resets_after_the_handshake(&ca.leaf(&["127.0.0.1"])).await;
        let tls = ClientTlsConfig::new().ca_certificate(ca.pem.clone());
        let status = failure(format!("static:///{addr}"), tls).await;
        let message = status.message();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(
            message.contains("the server closed the TLS connection right after the handshake"),
            "{message}"
        );
        assert!(
            message.contains("requires a client certificate"),
            "{message}"
        );
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_unavailable_and_says_so() {
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        let other = Ca::new("another CA");
        let (addr, _) = backend(any_port(), &ca.leaf(&["127.0.0.1"]), None).await;
        let tls = ClientTlsConfig::new().ca_certificate(other.pem.clone());
        let status = failure(format!("static:///{addr}"), tls).await;
        let message = status.message();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("unknown CA"), "{message}");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_unavailable_and_says_so() {
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        let (addr, _) = backend(any_port(), &ca.leaf(&["other.test"]), None).await;
        let tls = ClientTlsConfig::new().ca_certificate(ca.pem.clone());
        let status = failure(format!("static:///{addr}"), tls).await;
        let message = status.message();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("not valid for this name"), "{message}");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn the_server_name_option_verifies_for_that_name() {
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        let (addr, _) = backend(any_port(), &ca.leaf(&["other.test"]), None).await;
        let tls = ClientTlsConfig::new()
            .ca_certificate(ca.pem.clone())
            .server_name("other.test");
        let channel = BalancedChannel::builder(format!("static:///{addr}"))
            .tls(tls)
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        call(&channel, "named").await.unwrap();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn an_expired_certificate_is_unavailable_and_says_so() {
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        let (addr, _) = backend(any_port(), &ca.expired_leaf(&["127.0.0.1"]), None).await;
        let tls = ClientTlsConfig::new().ca_certificate(ca.pem.clone());
        let status = failure(format!("static:///{addr}"), tls).await;
        let message = status.message();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("expired"), "{message}");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_server_that_does_not_select_h2_by_alpn_is_unavailable_and_says_so() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        let leaf = ca.leaf(&["127.0.0.1"]);
        let certs = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // A TLS server with no ALPN at all (an HTTP/1.1 server, say).
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _tls = acceptor.accept(socket).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        let tls = ClientTlsConfig::new().ca_certificate(ca.pem.clone());
        let status = failure(format!("static:///{addr}"), tls).await;
        let message = status.message();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("did not select h2"), "{message}");
    })
    .await
    .expect("bounded");
}

#[test]
fn bad_pem_is_an_error_at_build_that_names_it() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let error = BalancedChannel::builder("static:///127.0.0.1:1")
            .tls(ClientTlsConfig::new().ca_certificate("not a certificate"))
            .build()
            .expect_err("bad PEM");
        assert!(error.to_string().contains("CA certificate"), "{error}");
    });
}

#[tokio::test]
async fn tls_runs_on_top_of_the_users_connector() {
    use tokio_stream::StreamExt;
    tokio::time::timeout(TEST_LIMIT, async {
        let ca = Ca::new("test CA");
        let leaf = ca.leaf(&["memory.test"]);
        let (to_server, accepted) = tokio::sync::mpsc::channel::<support::Piped>(16);
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&leaf.cert, &leaf.key));
        let incoming =
            tokio_stream::wrappers::ReceiverStream::new(accepted).map(Ok::<_, std::io::Error>);
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(support::simple_server(any_port()))
                .serve_with_incoming(incoming),
        );
        let connector = tower::service_fn(move |_: http::Uri| {
            let to_server = to_server.clone();
            async move {
                let (client, server) = tokio::io::duplex(64 * 1024);
                to_server
                    .send(support::Piped(server))
                    .await
                    .map_err(|_| std::io::Error::other("the in-memory server is gone"))?;
                Ok::<_, std::io::Error>(client)
            }
        });
        // The name comes from the target; the bytes go through memory.
        let channel = BalancedChannel::builder("static:///memory.test:443")
            .connector(connector)
            .tls(ClientTlsConfig::new().ca_certificate(ca.pem.clone()))
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        call(&channel, "in memory").await.unwrap();
    })
    .await
    .expect("bounded");
}

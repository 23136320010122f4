//! Every shape of gRPC call through the balanced channel's own HTTP/2
//! request path, against a real tonic server on 127.0.0.1: unary, client
//! streaming, server streaming, bidirectional streaming, messages larger
//! than HTTP/2's flow-control windows, and cancellation of a stream the
//! client drops.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tonic_balance::BalancedChannel;

mod echo {
    tonic::include_proto!("echo");
}

use echo::echo_client::EchoClient;
use echo::echo_server::{Echo, EchoServer};
use echo::{EchoMessage, RepeatRequest};

const MAX_MESSAGE: usize = 16 << 20;

#[derive(Clone, Default)]
struct EchoService {
    /// Notified when a server stream's client went away.
    cancelled: Arc<Notify>,
}

type EchoStream = Pin<Box<dyn Stream<Item = Result<EchoMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Ok(Response::new(req.into_inner()))
    }

    async fn collect(
        &self,
        req: Request<Streaming<EchoMessage>>,
    ) -> Result<Response<EchoMessage>, Status> {
        let mut stream = req.into_inner();
        let mut data = Vec::new();
        while let Some(message) = stream.next().await {
            data.extend_from_slice(&message?.data);
        }
        Ok(Response::new(EchoMessage { data }))
    }

    type RepeatStream = EchoStream;

    async fn repeat(
        &self,
        req: Request<RepeatRequest>,
    ) -> Result<Response<Self::RepeatStream>, Status> {
        let RepeatRequest { data, count } = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let cancelled = self.cancelled.clone();
        tokio::spawn(async move {
            for _ in 0..count {
                let message = EchoMessage { data: data.clone() };
                if tx.send(Ok(message)).await.is_err() {
                    cancelled.notify_one();
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ChatStream = EchoStream;

    async fn chat(
        &self,
        req: Request<Streaming<EchoMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(message) = incoming.next().await {
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn start_server(service: EchoService) -> SocketAddr {
    start_server_seeing_authorities(service, Arc::default()).await
}

/// Starts an `Echo` server that records each call's `:authority`.
async fn start_server_seeing_authorities(
    service: EchoService,
    seen: Arc<Mutex<Vec<String>>>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = EchoServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let record = tower::util::MapRequestLayer::new(move |req: http::Request<_>| {
        let authority = req.uri().authority().map(ToString::to_string);
        seen.lock().unwrap().push(authority.unwrap_or_default());
        req
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(record)
            .add_service(server)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

async fn client_for(addr: SocketAddr) -> EchoClient<BalancedChannel> {
    let channel = BalancedChannel::builder(format!("static:///{addr}"))
        .balancer("round_robin")
        .connect(Duration::from_secs(10))
        .await
        .unwrap();
    EchoClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

fn message(data: &[u8]) -> EchoMessage {
    EchoMessage {
        data: data.to_vec(),
    }
}

#[tokio::test]
async fn every_call_shape_works() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let addr = start_server(EchoService::default()).await;
        let mut client = client_for(addr).await;

        let reply = client.unary(message(b"one")).await.unwrap();
        assert_eq!(reply.into_inner().data, b"one");

        let parts: Vec<_> = (0..100u8).map(|i| message(&[i])).collect();
        let reply = client.collect(tokio_stream::iter(parts)).await.unwrap();
        assert_eq!(reply.into_inner().data, (0..100u8).collect::<Vec<_>>());

        let request = RepeatRequest {
            data: b"again".to_vec(),
            count: 100,
        };
        let mut stream = client.repeat(request).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(m) = stream.message().await.unwrap() {
            assert_eq!(m.data, b"again");
            n += 1;
        }
        assert_eq!(n, 100);

        // Bidirectional: each reply arrives before the next message is sent,
        // so the request stream is still open while the response streams.
        let (tx, rx) = mpsc::channel(1);
        let mut replies = client
            .chat(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        for i in 0..20u8 {
            tx.send(message(&[i])).await.unwrap();
            let reply = replies.message().await.unwrap().expect("a reply");
            assert_eq!(reply.data, [i]);
        }
        drop(tx);
        assert!(replies.message().await.unwrap().is_none());
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn messages_larger_than_the_flow_control_windows_arrive_whole() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let addr = start_server(EchoService::default()).await;
        let mut client = client_for(addr).await;
        // 3 MiB each way: more than a stream's window (the server's default
        // is 1 MiB, ours 2 MiB), so both sides wait for WINDOW_UPDATEs.
        let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let reply = client.unary(message(&big)).await.unwrap().into_inner();
        assert!(reply.data == big, "the echo differs");
        // 12 MiB streamed up in 1 MiB messages: more than the connection's
        // window too.
        let chunk: Vec<u8> = big[..1 << 20].to_vec();
        let parts: Vec<_> = (0..12).map(|_| message(&chunk)).collect();
        let reply = client.collect(tokio_stream::iter(parts)).await.unwrap();
        assert_eq!(reply.into_inner().data.len(), 12 << 20);
        // Several large calls at once on the one connection.
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let mut client = client.clone();
                let big = big.clone();
                tokio::spawn(async move {
                    client
                        .unary(message(&big))
                        .await
                        .map(|r| r.into_inner().data.len())
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), 3 << 20);
        }
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn dropping_a_response_stream_cancels_it_on_the_server() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let service = EchoService::default();
        let cancelled = service.cancelled.clone();
        let addr = start_server(service).await;
        let mut client = client_for(addr).await;
        let request = RepeatRequest {
            data: vec![7; 1024],
            count: u32::MAX,
        };
        let mut stream = client.repeat(request).await.unwrap().into_inner();
        for _ in 0..3 {
            assert!(stream.message().await.unwrap().is_some());
        }
        let notified = cancelled.notified();
        drop(stream);
        // The server's producer sees its receiver gone: the stream was reset.
        notified.await;
        // The connection still serves calls.
        let reply = client.unary(message(b"after")).await.unwrap();
        assert_eq!(reply.into_inner().data, b"after");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn calls_carry_the_backend_address_or_the_configured_authority() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = start_server_seeing_authorities(EchoService::default(), seen.clone()).await;
        let mut client = client_for(addr).await;
        client.unary(message(b"a")).await.unwrap();
        let channel = BalancedChannel::builder(format!("static:///{addr}"))
            .authority("echo.example.test:443")
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        EchoClient::new(channel).unary(message(b"b")).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, [addr.to_string(), "echo.example.test:443".to_owned()]);
    })
    .await
    .expect("bounded");
}

//! A real tonic `Echo` backend for streaming calls: `repeat` sends `count`
//! copies of its data (each after `delay`), then its trailers; `collect`
//! answers with every message's data, concatenated.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

pub mod proto {
    tonic::include_proto!("echo");
}

use proto::echo_server::{Echo, EchoServer};
use proto::{EchoMessage, RepeatRequest};

type EchoStream = Pin<Box<dyn Stream<Item = Result<EchoMessage, Status>> + Send>>;

#[derive(Clone)]
struct Service {
    delay: Duration,
}

#[tonic::async_trait]
impl Echo for Service {
    async fn unary(&self, req: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        Ok(Response::new(req.into_inner()))
    }

    async fn collect(
        &self,
        req: Request<Streaming<EchoMessage>>,
    ) -> Result<Response<EchoMessage>, Status> {
        let mut stream = req.into_inner();
        let mut data = Vec::new();
        while let Some(message) = stream.message().await? {
            data.extend_from_slice(&message.data);
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
        let delay = self.delay;
        tokio::spawn(async move {
            for _ in 0..count {
                tokio::time::sleep(delay).await;
                let message = EchoMessage { data: data.clone() };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ChatStream = EchoStream;

    async fn chat(
        &self,
        _: Request<Streaming<EchoMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        Err(Status::unimplemented("chat"))
    }
}

/// Starts an `Echo` server on a free port of 127.0.0.1, on the current
/// runtime, whose `repeat` waits `delay` before each message.
pub async fn start(delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(Service { delay }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

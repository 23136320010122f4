//! Pieces the examples share: the `Simple` service, in-process backends and
//! a small flag parser (so the examples need no CLI crate).
#![allow(dead_code)]

use std::net::SocketAddr;

use tonic::{Request, Response, Status};

pub mod proto {
    tonic::include_proto!("proto");
}

use proto::simple_server::{Simple, SimpleServer};
use proto::{SimpleRequest, SimpleResponse};

/// The `Simple` service: replies code 200 and `hello <data>`.
#[derive(Debug, Clone)]
pub struct Greeter {
    pub addr: SocketAddr,
    pub log: bool,
}

#[tonic::async_trait]
impl Simple for Greeter {
    async fn route(&self, req: Request<SimpleRequest>) -> Result<Response<SimpleResponse>, Status> {
        let data = req.into_inner().data;
        if self.log {
            println!("{}: Route({data:?})", self.addr);
        }
        Ok(Response::new(SimpleResponse {
            code: 200,
            value: format!("hello {data}"),
        }))
    }
}

/// Binds `addr` (port 0 for any free one) and serves `Simple` there in the
/// background; returns the bound address.
pub async fn spawn_backend(
    addr: &str,
    log: bool,
) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let service = SimpleServer::new(Greeter { addr, log });
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            eprintln!("backend {addr} stopped: {e}");
        }
    });
    Ok(addr)
}

/// `--name value` and `--switch` flags, checked for leftovers at the end.
pub struct Args {
    args: Vec<String>,
}

impl Args {
    pub fn from_env() -> Args {
        Args {
            args: std::env::args().skip(1).collect(),
        }
    }

    /// The value of `--name VALUE` (or `--name=VALUE`), removed from the list.
    pub fn value(&mut self, name: &str) -> Result<Option<String>, String> {
        let eq = format!("{name}=");
        if let Some(i) = self.args.iter().position(|a| a.starts_with(&eq)) {
            return Ok(Some(self.args.remove(i)[eq.len()..].to_owned()));
        }
        let Some(i) = self.args.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.args.len() {
            return Err(format!("{name} needs a value"));
        }
        self.args.remove(i);
        Ok(Some(self.args.remove(i)))
    }

    /// A parsed `--name VALUE`, or `default`.
    pub fn parsed<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.value(name)? {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("{name} {v:?}: {e}")),
        }
    }

    /// Whether `--name` was given.
    pub fn flag(&mut self, name: &str) -> bool {
        match self.args.iter().position(|a| a == name) {
            Some(i) => {
                self.args.remove(i);
                true
            }
            None => false,
        }
    }

    /// Fails on anything not consumed.
    pub fn finish(self) -> Result<(), String> {
        match self.args.first() {
            None => Ok(()),
            Some(a) => Err(format!("unexpected argument {a:?} (try --help)")),
        }
    }
}

//! Certificates made at test time (rcgen): a private CA and leaf
//! certificates it signs, and a TLS tonic `Simple` backend on 127.0.0.x
//! that records each call's scheme and `:authority`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use super::proto::simple_server::{Simple, SimpleServer};
use super::proto::{SimpleRequest, SimpleResponse};

/// A private certificate authority.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |_| {})
    }

    /// A certificate that expired in 2001.
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, |params| {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    fn leaf_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// What a TLS backend saw of each call: (scheme, authority).
pub type Seen = Arc<Mutex<Vec<(String, String)>>>;

#[derive(Clone)]
struct Service {
    addr: SocketAddr,
}

#[tonic::async_trait]
impl Simple for Service {
    async fn route(&self, req: Request<SimpleRequest>) -> Result<Response<SimpleResponse>, Status> {
        Ok(Response::new(SimpleResponse {
            code: 200,
            value: format!("hello {} from {}", req.into_inner().data, self.addr),
        }))
    }
}

/// A tonic backend with TLS (`leaf`), requiring a client certificate
/// signed by `client_ca` if given, on `addr` (port 0: a free one).
pub async fn backend(addr: SocketAddr, leaf: &Leaf, client_ca: Option<&str>) -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(&leaf.cert, &leaf.key));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<_>| {
        let uri = req.uri();
        let scheme = uri.scheme_str().unwrap_or_default().to_owned();
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        record.lock().unwrap().push((scheme, authority));
        req
    });
    tokio::spawn(async move {
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .layer(layer)
            .add_service(SimpleServer::new(Service { addr }))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .ok();
    });
    (addr, seen)
}

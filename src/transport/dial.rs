//! Dialling an address: the default connector (TCP, unix sockets, Linux
//! abstract sockets) and the user's own ([`Connector`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::Uri;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::{Address, Error, ErrorKind};

/// The error type a user's connector may return: anything that is an
/// error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An IO a connector returns: a byte stream both ways.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed IO from a user's connector.
pub(crate) type BoxedIo = Box<dyn Io>;

/// A user's connector, boxed: a tower `Service<http::Uri>` returning an IO.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: BoxCloneSyncService<Uri, BoxedIo, BoxError>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl Connector {
    pub(crate) fn new<C>(connector: C) -> Connector
    where
        C: Service<Uri> + Clone + Send + Sync + 'static,
        C::Response: Io,
        C::Error: Into<BoxError>,
        C::Future: Send + 'static,
    {
        let inner = connector
            .map_response(|io| Box::new(io) as BoxedIo)
            .map_err(Into::into);
        Connector {
            inner: BoxCloneSyncService::new(inner),
        }
    }

    /// Dials `address` through the user's connector.
    pub(crate) async fn connect(&self, address: &Address) -> Result<BoxedIo, Error> {
        let uri = uri_for(address)?;
        let failed = |e: BoxError| {
            Error::new(
                ErrorKind::Connect,
                format!("{address}: the connector failed: {e}"),
            )
        };
        self.inner.clone().oneshot(uri).await.map_err(failed)
    }
}

/// The URI a user's connector gets for `address`: `http://host:port` for a
/// `host:port` address, `unix://localhost/path` for `unix:/path`,
/// `unix-abstract://localhost/name` for `unix-abstract:name`, and
/// `http://<address>` for anything else that makes a valid URI.
pub(crate) fn uri_for(address: &Address) -> Result<Uri, Error> {
    let addr = address.addr();
    let text = if let Some(path) = addr.strip_prefix("unix:") {
        format!("unix://localhost/{}", path.trim_start_matches('/'))
    } else if let Some(name) = addr.strip_prefix("unix-abstract:") {
        format!("unix-abstract://localhost/{name}")
    } else {
        format!("http://{addr}")
    };
    text.parse().map_err(|e| {
        Error::with_source(
            ErrorKind::Connect,
            format!("{address}: cannot be given to a connector as a URI"),
            e,
        )
    })
}

/// Socket options of the default TCP connector.
#[derive(Debug, Clone)]
pub(crate) struct SocketOptions {
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) local_address: Option<std::net::IpAddr>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            nodelay: true,
            keepalive: None,
            local_address: None,
        }
    }
}

/// What the default connector connected.
pub(crate) enum Dialled {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// Dials `address` with the default connector: `host:port` over TCP,
/// `unix:/path` and (on Linux) `unix-abstract:name` over unix sockets.
pub(crate) async fn dial(address: &Address, options: &SocketOptions) -> Result<Dialled, Error> {
    let addr = address.addr();
    let fail = |e: std::io::Error| Error::with_source(ErrorKind::Connect, addr.to_owned(), e);
    #[cfg(unix)]
    if let Some(path) = addr.strip_prefix("unix:") {
        let io = tokio::net::UnixStream::connect(path).await.map_err(fail)?;
        return Ok(Dialled::Unix(io));
    }
    #[cfg(unix)]
    if let Some(name) = addr.strip_prefix("unix-abstract:") {
        return abstract_socket(name).await.map(Dialled::Unix).map_err(fail);
    }
    let tcp = match options.local_address {
        None => TcpStream::connect(addr).await.map_err(fail)?,
        Some(local) => connect_from(addr, local).await.map_err(fail)?,
    };
    tcp.set_nodelay(options.nodelay).map_err(fail)?;
    if let Some(time) = options.keepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(time);
        socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&keepalive)
            .map_err(fail)?;
    }
    Ok(Dialled::Tcp(tcp))
}

/// Connects from `local` (port chosen by the system) to the first of
/// `addr`'s resolved addresses of the same family.
async fn connect_from(addr: &str, local: std::net::IpAddr) -> std::io::Result<TcpStream> {
    let mut last = None;
    for remote in tokio::net::lookup_host(addr).await? {
        if remote.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = match remote {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        match socket.connect(remote).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no address of the local address {local}'s family"),
        )
    }))
}

/// A Linux abstract unix socket (`unix-abstract:name`: the name without
/// the leading NUL byte).
#[cfg(target_os = "linux")]
fn abstract_socket(
    name: &str,
) -> Pin<Box<dyn Future<Output = std::io::Result<tokio::net::UnixStream>> + Send>> {
    use std::os::linux::net::SocketAddrExt;
    let name = name.as_bytes().to_vec();
    Box::pin(async move {
        // A unix connect does not wait on the network; it may wait for
        // room in the listener's backlog, so it runs off the runtime.
        let std = tokio::task::spawn_blocking(move || {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name)?;
            let std = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            std.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(std)
        })
        .await
        .map_err(std::io::Error::other)??;
        tokio::net::UnixStream::from_std(std)
    })
}

#[cfg(all(unix, not(target_os = "linux")))]
fn abstract_socket(
    _name: &str,
) -> Pin<Box<dyn Future<Output = std::io::Result<tokio::net::UnixStream>> + Send>> {
    Box::pin(async {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "abstract unix sockets exist only on Linux",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connectors_get_a_uri_for_every_form_of_address() {
        for (addr, uri) in [
            ("10.0.0.1:50051", "http://10.0.0.1:50051/"),
            ("[::1]:50051", "http://[::1]:50051/"),
            ("api.example.com:443", "http://api.example.com:443/"),
            ("unix:/tmp/grpc.sock", "unix://localhost/tmp/grpc.sock"),
            ("unix-abstract:grpc", "unix-abstract://localhost/grpc"),
        ] {
            let got = uri_for(&Address::new(addr)).unwrap();
            assert_eq!(got.to_string(), uri, "{addr}");
        }
        let error = uri_for(&Address::new("not a uri")).unwrap_err();
        assert!(error.to_string().contains("not a uri"), "{error}");
    }
}

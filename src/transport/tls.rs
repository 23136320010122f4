//! TLS on rustls: [`ClientTlsConfig`] (what the user gives) and the
//! connector built from it (what every connection of the channel uses).

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::{Address, Error, ErrorKind};

/// ALPN protocol id of HTTP/2, always offered; a server must select it.
const ALPN_H2: &[u8] = b"h2";

/// TLS for a [`BalancedChannel`](crate::BalancedChannel) (cargo feature
/// `tls`), given to
/// [`BalancedChannelBuilder::tls`](crate::BalancedChannelBuilder::tls).
///
/// Trust: the CA certificates given with [`ca_certificate`], else the
/// roots the `tls-native-roots` (the system's store) and
/// `tls-webpki-roots` (Mozilla's, compiled in) features bring, or a whole
/// `rustls::ClientConfig` of your own ([`rustls_client_config`]). ALPN
/// `h2` is always offered and must be selected by the server.
///
/// The certificate is verified for, and SNI names, the target's logical
/// host, not the dialled IP (see the crate's README, "TLS and
/// transport"): in order, [`server_name`] if set, the address's
/// [`Attributes::server_name`](crate::Attributes::server_name) (set by a
/// resolver), the host of a target that names one host
/// (`dns:///api.example.com:443` -> `api.example.com`), else the
/// address's own host (`localhost` for a unix socket).
///
/// [`ca_certificate`]: ClientTlsConfig::ca_certificate
/// [`server_name`]: ClientTlsConfig::server_name
/// [`rustls_client_config`]: ClientTlsConfig::rustls_client_config
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tonic_balance::{BalancedChannel, ClientTlsConfig};
///
/// let ca = std::fs::read("ca.pem")?;
/// let channel = BalancedChannel::builder("dns:///api.example.com:443")
///     .tls(ClientTlsConfig::new().ca_certificate(ca))
///     .connect(Duration::from_secs(5))
///     .await?;
/// # drop(channel); Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct ClientTlsConfig {
    ca_pems: Vec<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    server_name: Option<String>,
    rustls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("ca_certificates", &self.ca_pems.len())
            .field("identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .field("rustls_client_config", &self.rustls.is_some())
            .finish()
    }
}

impl ClientTlsConfig {
    /// TLS with the trust roots of the enabled `tls-*-roots` features.
    pub fn new() -> Self {
        ClientTlsConfig::default()
    }

    /// Trusts the CA certificate(s) in `pem` (one or more PEM
    /// `CERTIFICATE` blocks), instead of the features' roots.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// Presents this client certificate chain and private key (PEM) to
    /// servers that ask for one (mutual TLS).
    pub fn identity(
        mut self,
        cert_chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_chain_pem.into(), key_pem.into()));
        self
    }

    /// Verifies every server's certificate for `name` (and sends it as
    /// SNI), whatever the target and the addresses say.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Uses your own rustls configuration (trust, client identity,
    /// versions, verifier); the other options except
    /// [`server_name`](Self::server_name) are ignored. ALPN is set to
    /// `h2`.
    pub fn rustls_client_config(mut self, config: rustls::ClientConfig) -> Self {
        self.rustls = Some(Arc::new(config));
        self
    }

    /// The connector every connection of a channel uses; errors name the
    /// bad PEM or the missing trust store.
    pub(crate) fn build(&self) -> Result<TlsConnector, Error> {
        let mut config = match &self.rustls {
            Some(config) => (**config).clone(),
            None => self.build_config()?,
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(TlsConnector {
            inner: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: self.server_name.clone(),
            no_identity: self.rustls.is_none() && self.identity.is_none(),
        })
    }

    fn build_config(&self) -> Result<rustls::ClientConfig, Error> {
        let roots = self.roots()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("TLS protocol versions", e))?
            .with_root_certificates(roots);
        match &self.identity {
            None => Ok(builder.with_no_client_auth()),
            Some((chain, key)) => {
                let chain = certificates(chain, "client certificate chain")?;
                let key = PrivateKeyDer::from_pem_reader(&mut Cursor::new(key))
                    .map_err(|e| config_error("client private key (PEM)", e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| config_error("client identity", e))
            }
        }
    }

    fn roots(&self) -> Result<rustls::RootCertStore, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for pem in &self.ca_pems {
            for cert in certificates(pem, "CA certificate")? {
                roots
                    .add(cert)
                    .map_err(|e| config_error("CA certificate", e))?;
            }
        }
        if roots.is_empty() {
            add_feature_roots(&mut roots);
        }
        if roots.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "TLS: no trust anchors: give a CA with ClientTlsConfig::ca_certificate, \
                 or enable the tls-native-roots or tls-webpki-roots feature",
            ));
        }
        Ok(roots)
    }
}

#[allow(unused_variables)]
fn add_feature_roots(roots: &mut rustls::RootCertStore) {
    #[cfg(feature = "tls-native-roots")]
    {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "TLS: cannot load a native root certificate");
        }
        roots.add_parsable_certificates(found.certs);
    }
    #[cfg(feature = "tls-webpki-roots")]
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_reader_iter(&mut Cursor::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(&format!("{what} (PEM)"), e))?;
    if certs.is_empty() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("TLS: {what}: no PEM CERTIFICATE block found"),
        ));
    }
    Ok(certs)
}

fn config_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::with_source(ErrorKind::Config, format!("TLS: bad {what}"), e)
}

/// The TLS side of connecting, shared by every connection of a channel.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    inner: tokio_rustls::TlsConnector,
    server_name: Option<String>,
    /// No client certificate is configured (known only when the channel
    /// built the rustls config).
    no_identity: bool,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// The configured server name, which wins over every other.
    pub(crate) fn server_name_override(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Why a connection that completed its TLS handshake ended before the
    /// server's HTTP/2 preface (`e`: `h2`'s error, if it had one). A
    /// server that requires a client certificate sends an alert after the
    /// client's TLS 1.3 handshake is done; when it closes the socket
    /// before the client reads the alert, the client sees only "broken
    /// pipe" or "connection reset": say what that most likely means.
    /// `None` when `e` is not the server closing the connection.
    pub(crate) fn describe_closed(&self, e: Option<&h2::Error>) -> Option<String> {
        if let Some(reason) = e.and_then(describe_ended) {
            return Some(reason);
        }
        use std::io::ErrorKind as Io;
        let closed = e.is_none_or(|e| {
            e.get_io().is_some_and(|io| {
                matches!(
                    io.kind(),
                    Io::BrokenPipe
                        | Io::ConnectionReset
                        | Io::ConnectionAborted
                        | Io::UnexpectedEof
                )
            })
        });
        if !closed {
            return None;
        }
        let seen = e.map_or_else(|| "no reason given".to_owned(), ToString::to_string);
        let guess = if self.no_identity {
            "it probably requires a client certificate, and none is configured \
             (ClientTlsConfig::identity)"
        } else {
            "it may have rejected the client certificate"
        };
        Some(format!(
            "TLS: the server closed the TLS connection right after the handshake; {guess} ({seen})"
        ))
    }

    /// The TLS handshake on `io` for `name`; then the server must have
    /// selected `h2` by ALPN. Errors name the address and the reason.
    pub(crate) async fn connect<IO>(
        &self,
        io: IO,
        name: &str,
        address: &Address,
    ) -> Result<TlsStream<IO>, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| {
            Error::with_source(
                ErrorKind::Connect,
                format!("{address}: TLS: {name:?} is not a valid server name"),
                e,
            )
        })?;
        let stream = self.inner.connect(server_name, io).await.map_err(|e| {
            let reason = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map_or_else(|| e.to_string(), describe);
            Error::new(
                ErrorKind::Connect,
                format!("{address}: TLS handshake with {name:?} failed: {reason}"),
            )
        })?;
        if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(Error::new(
                ErrorKind::Connect,
                format!("{address}: TLS: the server did not select h2 by ALPN (gRPC needs HTTP/2)"),
            ));
        }
        Ok(stream)
    }
}

/// TLS's reason for a connection that ended with `e`, if TLS ended it: a
/// server that requires a client certificate says so in an alert after
/// the client's TLS 1.3 handshake is done, on the first read. (`h2` keeps
/// only the text of an IO error, so the alert is recognised by its text.)
pub(crate) fn describe_ended(e: &h2::Error) -> Option<String> {
    let text = e.to_string();
    let alert = text.split("received fatal alert: ").nth(1)?;
    let plain = match alert.trim() {
        "CertificateRequired" => "the server requires a client certificate",
        "BadCertificate" | "UnknownCA" | "CertificateUnknown" => {
            "the server rejected the client certificate"
        }
        _ => "the server ended TLS",
    };
    Some(format!("TLS: {plain} ({text})"))
}

/// rustls's reason, in words a user searches for.
fn describe(e: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError};
    let plain = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "certificate signed by an unknown CA",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "certificate not valid for this name"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired"
            }
            _ => "invalid certificate",
        },
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate"
        }
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            "the server does not offer h2 by ALPN (gRPC needs HTTP/2)"
        }
        _ => return e.to_string(),
    };
    format!("{plain} ({e})")
}

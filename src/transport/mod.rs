//! The transport: how a subchannel's connection is made and run.
//!
//! One connection per subchannel (see [`crate::subchannel`]) is made in
//! this order, as gRPC's transports do:
//!
//! ```text
//!   dial: TCP for host:port, a unix socket for unix:/path or (Linux)
//!         unix-abstract:name, or your own connector (.connector(c))
//!     -> TLS, when the channel has it (.tls(ClientTlsConfig), feature `tls`)
//!       -> preface watch: READY only once the server's HTTP/2 preface came
//!         -> HTTP/2 handshake (h2), one task per connection drives it
//! ```
//!
//! The preface watch wraps the TLS stream, not the socket: a TLS
//! ServerHello is not an HTTP/2 preface. A failure at any step (refused,
//! TLS handshake, no `h2` selected by ALPN, closed before the preface, the
//! connect timeout) is a failed attempt: the subchannel goes
//! TRANSIENT_FAILURE and backs off, and fail-fast calls get `UNAVAILABLE`
//! with the address and the reason.
//!
//! **Names** (`ClientTlsConfig`, with the `tls` feature). Plaintext calls
//! carry `:authority` = the channel's `authority(..)`, else the address
//! (`localhost` for unix sockets). With TLS the certificate is verified
//! for, and SNI names, the target's logical host, not the dialled IP:
//! the TLS config's `server_name`, else the address's
//! [`Attributes::server_name`](crate::Attributes::server_name), else the
//! host of a target that names one host (`dns:///api.example.com:443`),
//! else the address's host; calls then carry scheme `https` and
//! `:authority` `api.example.com:443`.
//!
//! **Inside** (not public): the request path (`channel::call`) and the
//! subchannel's connection task talk only to a narrow interface here:
//! `establish` a connection; a `Connection` handle that opens streams and
//! counts the calls in flight; `Established::lost` for when it stops
//! taking calls. `h2`'s types stay in this module: `http2` (handshake
//! settings, the drive task watching GOAWAY and keepalive and pacing the
//! resets of cancelled calls), `stream` (one call's stream, the
//! transparent-retry bookkeeping), `preface`, `dial`, `tls`, `origin`.

mod connect;
mod dial;
mod http2;
mod origin;
mod preface;
mod progress;
mod stream;
#[cfg(feature = "tls")]
mod tls;

pub(crate) use connect::{establish, Settings};
pub(crate) use dial::Connector;
pub use dial::{BoxError, Io};
pub(crate) use http2::{Http2Settings, Lost};
pub(crate) use origin::{Origin, TargetHost};
pub(crate) use progress::Progress;
pub(crate) use stream::{Deadline, Opened, Outgoing, SendError, REPLAY_LIMIT};
#[cfg(feature = "tls")]
pub use tls::ClientTlsConfig;

use crate::Address;

/// A READY connection's handle for calls: cheap to clone, one clone per
/// call. Opening a stream and sending on it happen on the caller's task.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    sender: http2::Sender,
}

impl Connection {
    /// Sends `outgoing` (whose URI already names the server) on a new
    /// stream and waits for the response headers, sending the request
    /// body meanwhile.
    pub(crate) async fn send(
        self,
        outgoing: &mut Outgoing,
        address: &Address,
    ) -> Result<Opened, SendError> {
        stream::send(self.sender, outgoing, address).await
    }

    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS, as `h2` applies it.
    pub(crate) fn max_concurrent_streams(&self) -> usize {
        self.sender.max_concurrent_streams()
    }

    /// The calls in flight on this connection (streams opened whose call
    /// has not ended), counted by this crate.
    pub(crate) fn in_flight(&self) -> usize {
        self.sender.in_flight()
    }
}

//! The HTTP/2 client: everything between a subchannel's address and the
//! bytes on the wire, behind one narrow interface.
//!
//! ```text
//!   establish(address, settings)
//!     dial (TCP, unix socket, or the user's connector)
//!       -> TLS (if configured)
//!         -> preface watch (READY only once the server's HTTP/2 preface came)
//!           -> h2 handshake, and one drive task per connection
//!   = Established { Connection (cloneable handle), lost, release }
//!
//!   Connection::send(request)  -> Opened { response headers, request pipe }
//!   Opened::into_response(..)  -> http::Response<tonic Body>, ends at the deadline
//! ```
//!
//! The request path (`channel::call`) and the subchannel's connection task
//! talk only to this interface: [`establish`] a connection, [`Connection`]
//! to open streams and count the ones in flight, [`Established::lost`] to
//! learn when it stops taking calls. `h2`'s types stay in this module.
//!
//! - `http2`: the connection (handshake settings, the drive task that
//!   watches GOAWAY, keepalive, and paces the resets of cancelled calls);
//! - `stream`: one call's stream (send the request, read the response,
//!   transparent-retry bookkeeping);
//! - `preface`: READY only after the server spoke.

mod connect;
mod http2;
mod preface;
mod stream;

pub(crate) use connect::{establish, Settings};
pub(crate) use http2::Lost;
pub(crate) use stream::{Completion, Deadline, Opened, Outgoing, SendError, REPLAY_LIMIT};

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

    /// The calls in flight on this connection (streams opened whose call
    /// has not ended), counted by this crate.
    #[allow(dead_code)] // used by pools
    pub(crate) fn in_flight(&self) -> usize {
        self.sender.in_flight()
    }
}

//! What the per-connection streams of a READY subchannel share (health
//! checking's `Watch`, ORCA's out-of-band `StreamCoreMetrics`): a gRPC
//! transport on the subchannel's own connection, reading one stream to its
//! end, the restart schedule of a stream that keeps failing, and following
//! the setting a stream is opened for.
//!
//! ```text
//!   follow: setting changes --> serve(new setting) replaces the old one
//!     reopen: wait for the backoff (Restarts) --> open: read each message
//!       UNIMPLEMENTED before any message  --> reopen returns (no such service)
//!       failed or ended                   --> again
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::{Code, Status};

use super::connect::ConnectConfig;
use super::SubchannelShared;
use crate::backoff::Backoff;
use crate::picker::Completion;
use crate::transport::{Connection, Outgoing, SendError};
use crate::Address;

/// The `user-agent` of these streams.
const USER_AGENT: &str = concat!("grpc-rust-tonic-balance/", env!("CARGO_PKG_VERSION"));

/// A gRPC client transport that sends on one connection: the subchannel's
/// own, so a stream about a backend shares the connection it is about.
#[derive(Clone)]
pub(super) struct OnConnection {
    connection: Connection,
    address: Address,
    origin: (http::uri::Scheme, http::uri::Authority),
}

impl OnConnection {
    /// The link's READY connection, or why there is none.
    pub(super) fn new(link: &SubchannelShared) -> Result<OnConnection, String> {
        let connection = link
            .ready_connection()
            .ok_or_else(|| "no READY connection".to_owned())?;
        Ok(OnConnection {
            connection,
            address: link.address.clone(),
            origin: (link.origin.scheme.clone(), link.origin.authority.clone()),
        })
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Status>> + Send>>;

impl tower::Service<http::Request<Body>> for OnConnection {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> ResponseFuture {
        let this = self.clone();
        Box::pin(async move {
            let mut parts = request.uri().clone().into_parts();
            parts.scheme = Some(this.origin.0);
            parts.authority = Some(this.origin.1);
            *request.uri_mut() = http::Uri::from_parts(parts)
                .map_err(|e| Status::internal(format!("{}: stream URI: {e}", this.address)))?;
            let user_agent = http::HeaderValue::from_static(USER_AGENT);
            let mut outgoing = Outgoing::new(request, &user_agent);
            match this.connection.send(&mut outgoing, &this.address).await {
                Ok(opened) => Ok(opened.into_response(this.address, Completion::NONE, None)),
                Err(SendError::Unsent) => Err(Status::unavailable(format!(
                    "{}: the connection stopped taking streams",
                    this.address
                ))),
                Err(SendError::Unprocessed(status) | SendError::Failed(status)) => Err(status),
            }
        })
    }
}

/// `status` as the reason a stream ended.
fn describe(status: &Status) -> String {
    format!("stream failed: {:?}: {}", status.code(), status.message())
}

/// How one stream ended.
pub(super) enum Ended {
    /// The server has no such service (UNIMPLEMENTED before any message).
    Unimplemented,
    /// The stream failed or ended; `answered`: after at least one message.
    Failed { why: String, answered: bool },
}

/// Opens a stream on `link`'s READY connection with `open` and hands each
/// message to `on_message` until the stream ends.
pub(super) async fn read<M, F>(
    link: &SubchannelShared,
    open: impl FnOnce(OnConnection) -> F,
    mut on_message: impl FnMut(M),
) -> Ended
where
    F: Future<Output = Result<tonic::Response<Streaming<M>>, Status>>,
{
    let failed = |why: String, answered| Ended::Failed { why, answered };
    let service = match OnConnection::new(link) {
        Ok(service) => service,
        Err(why) => return failed(why, false),
    };
    let mut messages = match open(service).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => return Ended::Unimplemented,
        Err(status) => return failed(describe(&status), false),
    };
    let mut answered = false;
    loop {
        match messages.message().await {
            Ok(Some(message)) => {
                answered = true;
                on_message(message);
            }
            Ok(None) => return failed("the server ended the stream".into(), answered),
            Err(status) if status.code() == Code::Unimplemented && !answered => {
                return Ended::Unimplemented
            }
            Err(status) => return failed(describe(&status), answered),
        }
    }
}

/// Opens a stream with `open` again each time it ends, on the restart
/// schedule (`Restarts`, `salt` telling kinds of streams apart), until
/// the server answers that it has no such service: then returns. `kind`
/// names the stream in the debug log.
pub(super) async fn reopen<F: Future<Output = Ended>>(
    link: &SubchannelShared,
    config: &ConnectConfig,
    (kind, salt): (&str, u64),
    mut open: impl FnMut() -> F,
) {
    let mut restarts = Restarts::new(link, config, salt);
    loop {
        restarts.wait().await;
        match open().await {
            Ended::Unimplemented => return,
            Ended::Failed { why, answered } => {
                tracing::debug!(address = %link.address, %why, "{kind} stream ended");
                restarts.ended(answered);
            }
        }
    }
}

/// Runs `serve` for `setting`'s current key for as long as the caller
/// polls this (a READY connection's life), starting it again for the new
/// key whenever the key changes; a change that keeps the key keeps it
/// running.
pub(super) async fn follow<T, K: PartialEq + Clone, F>(
    mut setting: watch::Receiver<T>,
    key: impl Fn(&T) -> K,
    mut serve: impl FnMut(K) -> F,
) -> Infallible
where
    F: Future<Output = Infallible>,
{
    loop {
        let current = key(&setting.borrow_and_update());
        let served = serve(current.clone());
        tokio::pin!(served);
        loop {
            tokio::select! {
                changed = setting.changed() => {
                    if changed.is_err() {
                        // The channel is gone; the task is about to stop.
                        match served.await {}
                    }
                    if key(&setting.borrow()) != current {
                        break;
                    }
                }
                never = &mut served => match never {},
            }
        }
    }
}

/// When a failed stream is opened again, on the subchannel's backoff
/// settings (gRPC's connection backoff): a stream that got an answer and
/// lasted at least the initial delay counts as a success and is reopened
/// at once; any other is reopened after the next backoff delay. So a
/// server that resets every stream at once is asked on the backoff
/// schedule, not in a loop.
struct Restarts {
    backoff: Backoff,
    retry_at: Option<Instant>,
    started: Instant,
}

impl Restarts {
    /// The schedule of one kind of stream (`salt` tells kinds apart in the
    /// jitter's seed) on `link`.
    fn new(link: &SubchannelShared, config: &ConnectConfig, salt: u64) -> Restarts {
        let seed = config.rng_seed ^ link.id.wrapping_mul(salt);
        Restarts {
            backoff: Backoff::new(config.backoff, seed),
            retry_at: None,
            started: Instant::now(),
        }
    }

    /// Waits until the next stream may open, and notes when it opens.
    async fn wait(&mut self) {
        if let Some(at) = self.retry_at.take() {
            tokio::time::sleep_until(at).await;
        }
        self.started = Instant::now();
    }

    /// The stream opened by the last [`wait`](Self::wait) ended;
    /// `answered`: after at least one message.
    fn ended(&mut self, answered: bool) {
        if answered && Instant::now() - self.started >= self.backoff.min_success() {
            self.backoff.reset();
        } else {
            self.retry_at = Some(self.started + self.backoff.next_delay());
        }
    }
}

//! The request path: pick, send, and wait for a better picker when needed.
//!
//! Per call: one atomic load of the current picker, one pick (borrowed from
//! that snapshot), one clone of the chosen connection's handle and of its
//! address (for the response's [`Peer`]), and the send from the caller's
//! own task (see the crate's transport, `src/transport/`): no buffer task
//! and no dispatch task between the call and the connection.
//!
//! **Deadline.** A call's deadline (its `grpc-timeout`, capped by the
//! channel's default timeout) covers the whole call, as gRPC's does: one
//! timer bounds the pick, the wait for response headers and then, moved
//! into the response body, the body and trailers (or every message of a
//! stream). When it passes the call ends with `DEADLINE_EXCEEDED` and its
//! stream is reset with CANCEL. A call without a deadline waits for a
//! picker at most the channel's queue timeout.
//!
//! **Attempts** (gRFC A6 transparent retry). A call whose stream never
//! opened (its connection was gone) is picked again, any number of times;
//! one the server provably did not process (REFUSED_STREAM, or above a
//! GOAWAY's last_stream_id) is picked again once, on whatever the picker
//! chooses then, if its body fits the replay buffer. Every pick's `on_done`
//! runs exactly once: when its attempt fails, or when the call ends.
//!
//! **Messages.** A call that times out says where it was: waiting for a
//! picker (the channel's state and the last pick failure the call itself
//! saw, as grpc-go's `lastPickErr`) or for a backend's response. The
//! channel never picks on its own account.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};

use super::{ControlRequest, Peer, Shared, WaitForReady};
use crate::picker::{PickInfo, PickResult};
use crate::transport::{
    Completion, Connection, Deadline, Opened, Origin, Outgoing, SendError, REPLAY_LIMIT,
};
use crate::{Address, ConnectivityState};

/// How many times a call is re-picked on the same picker when its
/// subchannel turns out not to be connected, before waiting for a new one.
const REPICKS_PER_PICKER: u32 = 2;

pub(crate) async fn call(
    shared: std::sync::Arc<Shared>,
    req: Request<Body>,
) -> Result<Response<Body>, Status> {
    let wait_for_ready = req
        .extensions()
        .get::<WaitForReady>()
        .map_or(shared.defaults.wait_for_ready, |w| w.0);
    let timeout = call_timeout(req.headers(), shared.defaults.timeout);
    let mut progress = Progress::default();
    let Some(timeout) = timeout else {
        let queue_deadline = Instant::now() + shared.defaults.queue_timeout;
        let sent = pick_and_send(
            &shared,
            req,
            wait_for_ready,
            Some(queue_deadline),
            &mut progress,
        );
        return respond(sent.await?, progress, None);
    };
    let mut deadline = Deadline::after(timeout);
    let sent = {
        let send = pick_and_send(&shared, req, wait_for_ready, None, &mut progress);
        tokio::pin!(send);
        std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
            Poll::Ready(sent) => Poll::Ready(Some(sent)),
            Poll::Pending => deadline.poll_expired(cx).map(|()| None),
        })
        .await
    };
    match sent {
        Some(sent) => respond(sent?, progress, Some(deadline)),
        None => Err(deadline_exceeded(&shared, timeout, &progress)),
    }
}

/// What a call has been through, for its error messages.
#[derive(Default)]
struct Progress {
    /// The last failure a pick gave this call (while it waited for ready).
    last_pick_error: Option<Status>,
    /// The backend the call waits on for response headers, once sent.
    sent_to: Option<Address>,
    /// Whether an attempt the server did not process was sent again.
    retried_unprocessed: bool,
}

/// A call whose response headers arrived.
struct Sent {
    opened: Opened,
    completion: Completion,
}

/// Picks and sends until an attempt gets its response headers, waiting for
/// a new picker where the current one cannot serve the call.
async fn pick_and_send(
    shared: &Shared,
    req: Request<Body>,
    wait_for_ready: bool,
    queue_deadline: Option<Instant>,
    progress: &mut Progress,
) -> Result<Sent, Status> {
    let mut outgoing = Outgoing::new(req, &shared.defaults.user_agent);
    let mut repicks = 0;
    loop {
        let (generation, decision) = pick(shared, &mut outgoing)?;
        match decision {
            Decision::Send(ready, completion) => {
                if let Some((connection, address)) = ready {
                    let sent = attempt(connection, address, &mut outgoing, completion, progress);
                    if let Some(sent) = sent.await? {
                        return Ok(sent);
                    }
                }
                repicks += 1;
                if repicks > REPICKS_PER_PICKER {
                    repicks = 0;
                    wait_for_picker(shared, generation, queue_deadline, progress).await?;
                }
            }
            Decision::Queue => {
                wait_for_picker(shared, generation, queue_deadline, progress).await?
            }
            Decision::Fail(status) if wait_for_ready && status.code() == Code::Unavailable => {
                progress.last_pick_error = Some(status);
                wait_for_picker(shared, generation, queue_deadline, progress).await?
            }
            Decision::Fail(status) => {
                return Err(Status::new(
                    status.code(),
                    format!(
                        "no ready endpoint for {}: {}",
                        shared.target,
                        status.message()
                    ),
                ))
            }
            Decision::Drop(status) => return Err(status),
        }
    }
}

/// A pick's outcome, owning what the call needs once the picker snapshot
/// is released.
enum Decision {
    /// The chosen subchannel's connection and address if it is connected.
    Send(Option<(Connection, Address)>, Completion),
    Queue,
    Fail(Status),
    Drop(Status),
}

/// One pick on the current picker, with its generation. A pick's
/// `on_done` from here on runs once, however its attempt ends.
fn pick(shared: &Shared, outgoing: &mut Outgoing) -> Result<(u64, Decision), Status> {
    let snapshot = shared.picker.load();
    if snapshot.state == ConnectivityState::Idle
        && !snapshot
            .idle_kicked
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        let _ = shared.requests.send(ControlRequest::ExitIdle);
    }
    let info = PickInfo::new(outgoing.uri().path(), outgoing.headers());
    // The pick borrows from the snapshot: take what the call needs from the
    // subchannel while the snapshot is held.
    let decision = match snapshot.picker.pick(&info) {
        PickResult::Pick(pick) => {
            let subchannel = pick.subchannel();
            let ready = match subchannel.connection() {
                Some(connection) => set_origin(outgoing.uri_mut(), subchannel.origin())
                    .map(|()| Some((connection, subchannel.address().clone()))),
                None => Ok(None),
            };
            // Even a call that ends here (a bad URI) completes its pick.
            let completion = Completion::new(pick.into_on_done());
            Decision::Send(ready?, completion)
        }
        PickResult::Queue => Decision::Queue,
        PickResult::Fail(status) => Decision::Fail(status),
        PickResult::Drop(status) => Decision::Drop(status),
    };
    Ok((snapshot.generation, decision))
}

/// One attempt on a connected subchannel; `Ok(None)` means pick again.
/// The attempt's pick completes when it fails (or, once sent, when the
/// call ends).
async fn attempt(
    connection: Connection,
    address: Address,
    outgoing: &mut Outgoing,
    completion: Completion,
    progress: &mut Progress,
) -> Result<Option<Sent>, Status> {
    let address = progress.sent_to.insert(address);
    let failure = match connection.send(outgoing, address).await {
        Ok(opened) => return Ok(Some(Sent { opened, completion })),
        Err(failure) => failure,
    };
    progress.sent_to = None;
    drop(completion);
    match failure {
        // Never left the client: pick again, as often as it takes.
        SendError::Unsent => Ok(None),
        // Not processed by the server: once more (gRFC A6).
        SendError::Unprocessed(status) => {
            if progress.retried_unprocessed {
                Err(not_retried(&status, "already retried once"))
            } else if !outgoing.rewind() {
                Err(not_retried(
                    &status,
                    &format!(
                        "not retried: more than {} KiB of its body was sent, \
                         beyond the replay buffer",
                        REPLAY_LIMIT / 1024
                    ),
                ))
            } else {
                progress.retried_unprocessed = true;
                Ok(None)
            }
        }
        SendError::Failed(status) => Err(status),
    }
}

/// An unprocessed call that is not sent again: `UNAVAILABLE` with why.
fn not_retried(status: &Status, why: &str) -> Status {
    Status::unavailable(format!("{} ({why})", status.message()))
}

async fn wait_for_picker(
    shared: &Shared,
    generation: u64,
    queue_deadline: Option<Instant>,
    progress: &Progress,
) -> Result<(), Status> {
    let changed = shared.picker.changed_since(generation);
    let Some(deadline) = queue_deadline else {
        changed.await;
        return Ok(());
    };
    tokio::time::timeout_at(deadline, changed)
        .await
        .map_err(|_| {
            Status::unavailable(format!(
                "no ready endpoint for {} after waiting {:?} ({})",
                shared.target,
                shared.defaults.queue_timeout,
                describe_state(shared, progress)
            ))
        })
}

fn deadline_exceeded(shared: &Shared, timeout: Duration, progress: &Progress) -> Status {
    let target = &shared.target;
    Status::deadline_exceeded(match &progress.sent_to {
        Some(address) => format!(
            "deadline of {timeout:?} exceeded for a call to {target}: \
             no response headers from {address}"
        ),
        None => format!(
            "deadline of {timeout:?} exceeded for a call to {target} ({})",
            describe_state(shared, progress)
        ),
    })
}

/// `state X` plus the last pick failure the call saw, if any.
fn describe_state(shared: &Shared, progress: &Progress) -> String {
    let state = shared.picker.load().state;
    match &progress.last_pick_error {
        Some(status) => format!("state {state}: {}", status.message()),
        None => format!("state {state}"),
    }
}

fn set_origin(uri: &mut Uri, origin: &Origin) -> Result<(), Status> {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(origin.scheme.clone());
    parts.authority = Some(origin.authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *uri = Uri::from_parts(parts)
        .map_err(|e| Status::internal(format!("cannot build the request URI: {e}")))?;
    Ok(())
}

/// The response for a call whose headers arrived: its body ends at the
/// call's deadline and runs the pick's `on_done` when the call ends.
fn respond(
    sent: Sent,
    progress: Progress,
    deadline: Option<Deadline>,
) -> Result<Response<Body>, Status> {
    let Some(address) = progress.sent_to else {
        return Err(Status::internal("a sent call lost track of its backend"));
    };
    let peer = Peer::new(address.clone());
    let mut response = sent
        .opened
        .into_response(address, sent.completion, deadline);
    response.extensions_mut().insert(peer);
    Ok(response)
}

/// The call's timeout: the `grpc-timeout` header, capped by the channel's
/// default timeout.
fn call_timeout(headers: &http::HeaderMap, default: Option<Duration>) -> Option<Duration> {
    let header = headers
        .get("grpc-timeout")
        .and_then(|v| parse_grpc_timeout(v.as_bytes()));
    match (header, default) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses gRPC's `TimeoutValue TimeoutUnit` (at most 8 digits, then one of
/// `H M S m u n`).
fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout(b"9n"), Some(Duration::from_nanos(9)));
        for bad in [&b""[..], b"S", b"123456789S", b"1x", b"-1S", b"1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn channel_timeout_caps_the_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(call_timeout(&h, None), None);
        assert_eq!(
            call_timeout(&h, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
        h.insert("grpc-timeout", http::HeaderValue::from_static("500m"));
        assert_eq!(call_timeout(&h, None), Some(Duration::from_millis(500)));
        assert_eq!(
            call_timeout(&h, Some(Duration::from_millis(100))),
            Some(Duration::from_millis(100))
        );
    }
}

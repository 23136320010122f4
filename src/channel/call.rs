//! The request path: pick, send, and wait for a better picker when needed.
//!
//! Per call: one atomic load of the current picker, one pick (borrowed from
//! that snapshot), one clone of the chosen connection's `h2` sender and of
//! its address (for the response's [`Peer`]), and the send from the
//! caller's own task (see [`stream`](super::stream)): no buffer task and no dispatch
//! task between the call and the connection.

use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};

use super::stream::{self, ResponseBody, SendError, Sender};
use super::{ControlRequest, Peer, Shared, WaitForReady};
use crate::picker::{OnDone, PickInfo, PickResult};
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
    let Some(timeout) = timeout else {
        let queue_deadline = Instant::now() + shared.defaults.queue_timeout;
        return pick_and_send(&shared, req, wait_for_ready, Some(queue_deadline)).await;
    };
    let deadline = Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, pick_and_send(&shared, req, wait_for_ready, None)).await
    {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "deadline of {timeout:?} exceeded for a call to {} ({})",
            shared.target,
            describe_state(&shared)
        ))),
    }
}

async fn pick_and_send(
    shared: &Shared,
    mut req: Request<Body>,
    wait_for_ready: bool,
    queue_deadline: Option<Instant>,
) -> Result<Response<Body>, Status> {
    let mut repicks = 0;
    loop {
        let (generation, decision) = {
            let snapshot = shared.picker.load();
            if snapshot.state == ConnectivityState::Idle
                && !snapshot
                    .idle_kicked
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                let _ = shared.requests.send(ControlRequest::ExitIdle);
            }
            let info = PickInfo::new(req.uri().path(), req.headers());
            // The pick borrows from the snapshot: take what the call needs
            // from the subchannel while the snapshot is held.
            let decision = match snapshot.picker.pick(&info) {
                PickResult::Pick(pick) => {
                    let subchannel = pick.subchannel();
                    let ready = match subchannel.sender() {
                        Some(sender) => set_origin(&mut req, subchannel.authority())
                            .map(|()| Some((sender, subchannel.address().clone()))),
                        None => Ok(None),
                    };
                    let on_done = pick.into_on_done();
                    match ready {
                        Ok(ready) => Decision::Send(ready, on_done),
                        Err(status) => {
                            // The call ends here: the policy hears of it.
                            if let Some(f) = on_done {
                                f();
                            }
                            return Err(status);
                        }
                    }
                }
                PickResult::Queue => Decision::Queue,
                PickResult::Fail(status) => Decision::Fail(status),
                PickResult::Drop(status) => Decision::Drop(status),
            };
            (snapshot.generation, decision)
        };
        match decision {
            Decision::Send(ready, on_done) => {
                if let Some((sender, address)) = ready {
                    match stream::send(sender, req, &address).await {
                        Ok((response, pipe)) => {
                            if let Some(pipe) = pipe {
                                pipe.spawn();
                            }
                            return Ok(respond(response, address, on_done));
                        }
                        Err(failure) => {
                            if let Some(f) = on_done {
                                f();
                            }
                            match failure {
                                // Never left the client (gRFC A6): pick again.
                                SendError::Unsent(unsent) => req = *unsent,
                                SendError::Failed(status) => return Err(status),
                            }
                        }
                    }
                } else if let Some(f) = on_done {
                    f();
                }
                repicks += 1;
                if repicks > REPICKS_PER_PICKER {
                    repicks = 0;
                    wait_for_picker(shared, generation, queue_deadline).await?;
                }
            }
            Decision::Queue => wait_for_picker(shared, generation, queue_deadline).await?,
            Decision::Fail(status) if wait_for_ready && status.code() == Code::Unavailable => {
                wait_for_picker(shared, generation, queue_deadline).await?
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
    /// The chosen subchannel's sender and address if it is connected.
    Send(Option<(Sender, Address)>, Option<OnDone>),
    Queue,
    Fail(Status),
    Drop(Status),
}

async fn wait_for_picker(
    shared: &Shared,
    generation: u64,
    queue_deadline: Option<Instant>,
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
                describe_state(shared)
            ))
        })
}

/// `state X` plus the last error a failing picker reports.
fn describe_state(shared: &Shared) -> String {
    let snapshot = shared.picker.load();
    let headers = http::HeaderMap::new();
    match snapshot.picker.pick(&PickInfo::new("", &headers)) {
        PickResult::Fail(s) | PickResult::Drop(s) => {
            format!("state {}: {}", snapshot.state, s.message())
        }
        _ => format!("state {}", snapshot.state),
    }
}

fn set_origin(req: &mut Request<Body>, authority: &Authority) -> Result<(), Status> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|e| Status::internal(format!("cannot build the request URI: {e}")))?;
    Ok(())
}

fn respond(
    response: Response<h2::RecvStream>,
    address: Address,
    on_done: Option<OnDone>,
) -> Response<Body> {
    let (mut parts, stream) = response.into_parts();
    parts.extensions.insert(Peer::new(address.clone()));
    let body = ResponseBody::new(stream, address, on_done);
    Response::from_parts(parts, Body::new(body))
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

//! The response body of a call, bounded by the call's deadline.
//!
//! gRPC's deadline covers the whole call, not only the wait for response
//! headers: [`ResponseBody`] carries the call's [`Deadline`] (the same
//! timer that bounded the pick and the wait for headers), and when it
//! passes the body yields `DEADLINE_EXCEEDED`, the stream is reset with
//! RST_STREAM(CANCEL) and a request body still streaming stops.
//!
//! The call ends when the body yields its trailers, its end, or an error,
//! or when it is dropped, whichever comes first: then, once, the pick's
//! completion reports how it ended (the trailers' `grpc-status` and the
//! trailers themselves, lent; the error's code; `DEADLINE_EXCEEDED`; or
//! `CANCELLED` when dropped), the request pipe (if any) is told to stop,
//! and the stream is released (`h2` resets it with CANCEL if it is still
//! open).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use http::header::HeaderName;
use http_body::Frame;
use tokio::sync::oneshot;
use tokio::time::Sleep;
use tonic::{Code, Status};

use super::status_from_h2;
use crate::picker::Completion;
use crate::transport::http2::InFlight;
use crate::Address;

/// The status trailer (gRPC over HTTP/2, `Status`). A constant, so that
/// looking it up on every call does not parse the name.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// A call's deadline: one timer for the whole call. It is boxed so that it
/// can move from the call's future into its response body; a call without
/// a deadline has none.
pub(crate) struct Deadline {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl Deadline {
    /// A deadline `timeout` after `start`.
    pub(crate) fn at(start: tokio::time::Instant, timeout: Duration) -> Self {
        Deadline {
            timeout,
            sleep: Box::pin(tokio::time::sleep_until(crate::backoff::deadline(
                start, timeout,
            ))),
        }
    }

    /// The call's timeout, for messages.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the deadline has passed by the clock (its timer may not
    /// have fired yet).
    pub(crate) fn has_passed(&self) -> bool {
        self.sleep.deadline() <= tokio::time::Instant::now()
    }

    /// Ready once the deadline has passed.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }
}

/// Dropping it tells a spawned request pipe to stop (see
/// `RequestPipe::spawn`).
pub(crate) type StopPipe = oneshot::Sender<()>;

/// The response body: the stream's DATA frames, then its trailers.
pub(crate) struct ResponseBody {
    /// `None` once the call ended: releasing it resets an open stream.
    stream: Option<RecvStream>,
    data_done: bool,
    address: Address,
    completion: Completion,
    /// The call's code if the stream ends without trailers (from the
    /// response headers).
    code_without_trailers: Code,
    deadline: Option<Deadline>,
    stop_pipe: Option<StopPipe>,
    /// Counts the call in flight on its connection until the call ends.
    in_flight: Option<InFlight>,
}

impl ResponseBody {
    pub(crate) fn new(
        stream: RecvStream,
        address: Address,
        completion: Completion,
        code_without_trailers: Code,
        deadline: Option<Deadline>,
        stop_pipe: Option<StopPipe>,
        in_flight: InFlight,
    ) -> Self {
        ResponseBody {
            stream: Some(stream),
            data_done: false,
            address,
            completion,
            code_without_trailers,
            deadline,
            stop_pipe,
            in_flight: Some(in_flight),
        }
    }

    /// Ends the call: reports `code` and `trailers` to the pick's
    /// observer, stops the request pipe and releases the stream and the
    /// timer.
    fn finish(&mut self, code: Code, trailers: &http::HeaderMap) {
        self.stream = None;
        self.stop_pipe = None;
        self.deadline = None;
        self.in_flight = None;
        self.completion.finish(code, trailers);
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.finish(status.code(), &http::HeaderMap::new());
        Poll::Ready(Some(Err(status)))
    }

    fn poll_stream(
        stream: &mut RecvStream,
        data_done: &mut bool,
        completion: &mut Completion,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, h2::Error>> {
        if !*data_done {
            match ready!(stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Credit goes back at once: tonic buffers what it reads.
                    let _ = stream.flow_control().release_capacity(data.len());
                    completion.tally.received(&data);
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => *data_done = true,
            }
        }
        stream
            .poll_trailers(cx)
            .map_ok(|trailers| trailers.map(Frame::trailers))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        // The deadline first: a stream that is always ready must not
        // outrun it.
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.poll_expired(cx).is_ready() {
                let status = Status::deadline_exceeded(format!(
                    "deadline of {:?} exceeded while receiving the response from {}",
                    deadline.timeout(),
                    this.address
                ));
                return this.fail(status);
            }
        }
        let polled = Self::poll_stream(stream, &mut this.data_done, &mut this.completion, cx);
        match ready!(polled) {
            Ok(Some(mut frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    let code = grpc_code(trailers, http::StatusCode::OK);
                    let code =
                        deadline_status(code, trailers, this.deadline.as_ref(), &this.address);
                    this.finish(code, trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Ok(None) => {
                this.finish(this.code_without_trailers, &http::HeaderMap::new());
                Poll::Ready(None)
            }
            Err(e) => {
                let status = status_from_h2(&e, &this.address);
                this.fail(status)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.as_ref().is_none_or(RecvStream::is_end_stream)
    }
}

/// The status message trailer (gRPC over HTTP/2, `Status-Message`).
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A server's CANCELLED that arrives once the call's own deadline has
/// passed is the deadline's: tonic's server answers a call whose
/// `grpc-timeout` ran out with `CANCELLED` ("Timeout expired"), where gRPC
/// defines `DEADLINE_EXCEEDED` (and grpc-go's and C-core's servers send
/// it), and its answer can beat the client's own timer by a moment. Such a
/// status, in `headers` (trailers, or a trailers-only response), is
/// rewritten to `DEADLINE_EXCEEDED`, keeping the server's message after
/// ours; the code the call ended with is returned. Only a CANCELLED status
/// of a call with a deadline reads the clock.
pub(crate) fn deadline_status(
    code: Code,
    headers: &mut http::HeaderMap,
    deadline: Option<&Deadline>,
    address: &Address,
) -> Code {
    let Some(deadline) = deadline.filter(|d| code == Code::Cancelled && d.has_passed()) else {
        return code;
    };
    let ours = format!(
        "deadline of {:?} exceeded while receiving the response from {address}; the server answered CANCELLED: ",
        deadline.timeout()
    );
    // grpc-message is percent-encoded (gRPC over HTTP/2): ours is encoded
    // here, the server's is kept as it came.
    let mut message = String::with_capacity(ours.len() + 32);
    for byte in ours.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            message.push(char::from(byte));
        } else {
            message.push_str(&format!("%{byte:02X}"));
        }
    }
    if let Some(theirs) = headers.get(&GRPC_MESSAGE).and_then(|v| v.to_str().ok()) {
        message.push_str(theirs);
    }
    headers.insert(GRPC_STATUS, http::HeaderValue::from_static("4"));
    if let Ok(value) = http::HeaderValue::try_from(message) {
        headers.insert(GRPC_MESSAGE, value);
    }
    Code::DeadlineExceeded
}

/// The gRPC code a response's `headers` (its trailers, or the headers of a
/// trailers-only response) carry: `grpc-status`, else the code gRPC's
/// HTTP-to-gRPC mapping gives a non-200 `status`, else `UNKNOWN`.
pub(crate) fn grpc_code(headers: &http::HeaderMap, status: http::StatusCode) -> Code {
    if let Some(code) = headers.get(&GRPC_STATUS) {
        return Code::from_bytes(code.as_bytes());
    }
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancelled() -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(GRPC_STATUS, http::HeaderValue::from_static("1"));
        headers.insert(
            GRPC_MESSAGE,
            http::HeaderValue::from_static("Timeout%20expired"),
        );
        headers
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_cancelled_status_after_the_deadline_becomes_deadline_exceeded() {
        let address = Address::new("127.0.0.1:1");
        let start = tokio::time::Instant::now();
        let deadline = Deadline::at(start, Duration::from_micros(500));

        // Before the deadline: the server's CANCELLED stands.
        let mut headers = cancelled();
        let code = deadline_status(Code::Cancelled, &mut headers, Some(&deadline), &address);
        assert_eq!(code, Code::Cancelled);
        assert_eq!(headers, cancelled());

        tokio::time::advance(Duration::from_millis(2)).await;
        // After it: other codes, and calls without a deadline, stand.
        let mut headers = cancelled();
        let code = deadline_status(Code::Unavailable, &mut headers, Some(&deadline), &address);
        assert_eq!((code, &headers), (Code::Unavailable, &cancelled()));
        let code = deadline_status(Code::Cancelled, &mut headers, None, &address);
        assert_eq!((code, &headers), (Code::Cancelled, &cancelled()));

        // CANCELLED becomes DEADLINE_EXCEEDED, ours percent-encoded (µ),
        // the server's message kept as it came.
        let code = deadline_status(Code::Cancelled, &mut headers, Some(&deadline), &address);
        assert_eq!(code, Code::DeadlineExceeded);
        assert_eq!(headers[&GRPC_STATUS], "4");
        assert_eq!(
            headers[&GRPC_MESSAGE],
            "deadline of 500%C2%B5s exceeded while receiving the response from 127.0.0.1:1; \
             the server answered CANCELLED: Timeout%20expired"
        );
    }
}

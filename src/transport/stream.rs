//! One call attempt on one HTTP/2 connection: open the stream, send the
//! request body, hand back the response.
//!
//! The call's own task does all of it: it opens the stream with a clone of
//! the connection's `h2` sender, sends the request body while it waits for
//! the response headers (a unary request's HEADERS and DATA, with
//! END_STREAM, are queued in one poll and leave in one write), and returns
//! the response with a body ([`ResponseBody`]) that reads the stream, gives
//! back flow control credit and ends at the call's [`Deadline`]. Only a
//! request body still streaming when the response headers arrive
//! (client or bidirectional streaming) moves to a task of its own, which
//! stops when the call ends.
//!
//! **Stream slots.** A stream beyond the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS waits in `h2`'s queue (`pending_open`)
//! for a slot; it is not sent early. A server may still refuse a stream its
//! own accounting has no room for (gRPC C-core counts a stream a little
//! after the client saw it end), which is what transparent retry is for.
//!
//! **Attempts that may be sent again** (gRFC A6): an attempt whose stream
//! never opened ([`SendError::Unsent`]) comes back whole; one the server's
//! HTTP/2 layer provably kept from its application (RST_STREAM
//! REFUSED_STREAM, or a stream above a GOAWAY's last_stream_id: `h2` fails
//! exactly those with the GOAWAY's error, `is_go_away() && is_remote()`)
//! comes back as [`SendError::Unprocessed`] if its body can be replayed
//! (see [`REPLAY_LIMIT`]). Anything else may have reached the application
//! and is not retried.
//!
//! Errors map to gRPC codes as gRPC's HTTP/2 transport specifies
//! (`PROTOCOL-HTTP2.md`): `REFUSED_STREAM`, a GOAWAY and a lost connection
//! are `UNAVAILABLE`, `CANCEL` is `CANCELLED`, `ENHANCE_YOUR_CALM` is
//! `RESOURCE_EXHAUSTED`, `INADEQUATE_SECURITY` is `PERMISSION_DENIED`, other
//! resets are `INTERNAL`. A request body that could not be sent because its
//! stream was already gone reports the stream's error, not its own.

mod replay;
mod response;

pub(crate) use replay::{Outgoing, REPLAY_LIMIT};
pub(crate) use response::Deadline;
use response::{deadline_status, grpc_code, ResponseBody, StopPipe};

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::Response;
use tokio::sync::oneshot;
use tonic::body::Body;
use tonic::{Code, Status};

use crate::metrics::SentBytes;
use crate::picker::Completion;
use crate::Address;
use replay::BodySource;

use super::http2::{is_stream_id_overflow, InFlight, Sender};

/// Why a call attempt did not get its response headers. The request stays
/// with the caller ([`Outgoing`]) for the next attempt.
pub(crate) enum SendError {
    /// Nothing left the client (the connection was gone, or refused new
    /// streams, before the stream was opened): the request may be sent
    /// anywhere, any number of times (gRFC A6).
    Unsent,
    /// The server's HTTP/2 layer provably did not hand the call to its
    /// application (RST_STREAM(REFUSED_STREAM), or the stream was above a
    /// GOAWAY's last_stream_id): the request may be sent again if its body
    /// can be replayed ([`Outgoing::rewind`]). The status says what
    /// happened.
    Unprocessed(Status),
    /// The call failed.
    Failed(Status),
}

/// A call whose response headers arrived: the response and, if the
/// request body is still streaming, the pipe that must go on sending it.
pub(crate) struct Opened {
    response: Response<RecvStream>,
    pipe: Option<RequestPipe>,
    in_flight: InFlight,
    /// The request's extensions, emptied: the response's extensions map.
    extensions: http::Extensions,
}

impl Opened {
    /// The response's HTTP status.
    #[cfg(test)]
    pub(crate) fn status(&self) -> http::StatusCode {
        self.response.status()
    }

    /// The response for the caller: its body reads the stream, ends at
    /// `deadline` and reports to `completion` when the call ends (a
    /// trailers-only response has ended already: its headers are its
    /// trailers); a request body still streaming goes on from a task of
    /// its own until then.
    pub(crate) fn into_response(
        self,
        address: Address,
        mut completion: Completion,
        deadline: Option<Deadline>,
    ) -> Response<Body> {
        let stop_pipe = self.pipe.map(RequestPipe::spawn);
        let (mut parts, stream) = self.response.into_parts();
        let mut extensions = self.extensions;
        extensions.extend(std::mem::take(&mut parts.extensions));
        parts.extensions = extensions;
        let code = grpc_code(&parts.headers, parts.status);
        let code = deadline_status(code, &mut parts.headers, deadline.as_ref(), &address);
        completion.set_bytes_received();
        if stream.is_end_stream() {
            completion.finish(code, &parts.headers);
        }
        let body = ResponseBody::new(
            stream,
            address,
            completion,
            code,
            deadline,
            stop_pipe,
            self.in_flight,
        );
        Response::from_parts(parts, Body::new(body))
    }
}

/// Sends `outgoing` (whose URI already names the server) on `sender` and
/// waits for the response headers, sending the request body meanwhile.
pub(crate) async fn send(
    mut sender: Sender,
    outgoing: &mut Outgoing,
    address: &Address,
) -> Result<Opened, SendError> {
    if std::future::poll_fn(|cx| sender.poll_ready(cx))
        .await
        .is_err()
    {
        return Err(SendError::Unsent);
    }
    let end_of_stream = outgoing.body_mut().is_end_stream();
    let (mut response, stream, in_flight) =
        match sender.send_request(outgoing.request(), end_of_stream) {
            Ok(opened) => opened,
            // The connection failed or was told to go away before this
            // stream existed: nothing was written for it.
            Err(e) if e.is_go_away() || e.is_io() => return Err(SendError::Unsent),
            // No stream id left on this connection: the call never left;
            // the connection drains and the call is picked again.
            Err(e) if is_stream_id_overflow(&e) => {
                sender.ran_out_of_stream_ids();
                return Err(SendError::Unsent);
            }
            Err(e) => return Err(SendError::Failed(status_from_h2(&e, address))),
        };
    drop(sender);
    outgoing.set_opened();
    let mut pipe = PipeState::new(stream, end_of_stream, outgoing.take_sent_bytes());
    let result = {
        let body = outgoing.body_mut();
        std::future::poll_fn(|cx| {
            pipe.poll_progress(body, cx);
            Pin::new(&mut response).poll(cx)
        })
        .await
    };
    match (result, pipe) {
        (Ok(response), PipeState::Sending(sender)) => {
            let body = outgoing.take_body();
            let pipe = Some(RequestPipe { sender, body });
            Ok(Opened {
                response,
                pipe,
                in_flight,
                extensions: outgoing.take_extensions(),
            })
        }
        (Ok(response), _) => Ok(Opened {
            response,
            pipe: None,
            in_flight,
            extensions: outgoing.take_extensions(),
        }),
        (Err(e), pipe) => Err(pipe.failed(&e, address)),
    }
}

/// The rest of a request body, sent after the response headers arrived
/// (client and bidirectional streaming).
struct RequestPipe {
    sender: BodySender,
    body: BodySource,
}

impl RequestPipe {
    /// Sends the rest of the body from a task of its own. Dropping the
    /// returned handle (the call ended: its response finished, failed,
    /// passed its deadline, or was dropped) stops the task and resets the
    /// stream with CANCEL if the body is still being sent.
    fn spawn(self) -> StopPipe {
        let RequestPipe {
            sender: mut pipe,
            mut body,
        } = self;
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            std::future::poll_fn(|cx| {
                if Pin::new(&mut stopped).poll(cx).is_ready() {
                    pipe.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                pipe.poll_send(&mut body, cx).map(|_| ())
            })
            .await
        });
        stop
    }
}

/// Where the request body is while the call waits for headers.
enum PipeState {
    Sending(BodySender),
    /// The whole body is sent; the stream's send half is released.
    Sent,
    /// The request body itself failed (the stream was reset).
    BodyFailed(Status),
    /// The stream is gone: the response says why.
    StreamGone,
}

impl PipeState {
    fn new(stream: SendStream<Bytes>, end_of_stream: bool, sent_bytes: SentBytes) -> Self {
        if end_of_stream {
            return PipeState::Sent;
        }
        PipeState::Sending(BodySender {
            stream,
            held: None,
            sent_any: false,
            sent_bytes,
        })
    }

    /// Sends what the body has now.
    fn poll_progress(&mut self, body: &mut BodySource, cx: &mut Context<'_>) {
        let PipeState::Sending(sender) = self else {
            return;
        };
        match sender.poll_send(body, cx) {
            Poll::Ready(Ok(())) => *self = PipeState::Sent,
            Poll::Ready(Err(PipeError::Body(status))) => *self = PipeState::BodyFailed(status),
            Poll::Ready(Err(PipeError::Stream)) => *self = PipeState::StreamGone,
            Poll::Pending => {}
        }
    }

    /// Why the attempt failed with `e` on its response.
    fn failed(self, e: &h2::Error, address: &Address) -> SendError {
        // The request body's own error says more than the reset it caused;
        // a send that failed because the stream was gone is not the body's
        // fault: the stream's error is the reason.
        if let PipeState::BodyFailed(status) = self {
            return SendError::Failed(status);
        }
        match unprocessed(e) {
            Some(why) => SendError::Unprocessed(Status::unavailable(format!("{address}: {why}"))),
            None => SendError::Failed(status_from_h2(e, address)),
        }
    }
}

/// Sends a request body on its stream, with HTTP/2 flow control.
struct BodySender {
    stream: SendStream<Bytes>,
    /// A data frame read ahead, sent once it is known whether it is last.
    held: Option<Bytes>,
    /// Whether a DATA frame was sent.
    sent_any: bool,
    /// gRFC A66's count of the message bytes sent (empty without `otel`).
    sent_bytes: SentBytes,
}

impl BodySender {
    /// Ready when the whole body is sent, or sending failed (a failed body
    /// resets the stream).
    fn poll_send(
        &mut self,
        body: &mut BodySource,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), PipeError>> {
        loop {
            // Once a frame is out, each further one waits for send window,
            // so a long stream cannot buffer without bound. A unary request
            // (one frame, then the end) never waits here.
            if self.sent_any {
                self.stream.reserve_capacity(1);
                while self.stream.capacity() == 0 {
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return Poll::Ready(Err(PipeError::Stream)),
                    }
                }
            }
            let frame = match body.poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Nothing more for now: send what was read ahead, and
                    // stop if the server reset the stream meanwhile.
                    if let Some(data) = self.held.take() {
                        self.send_data(data, false)?;
                    }
                    if self.stream.poll_reset(cx).is_ready() {
                        return Poll::Ready(Err(PipeError::Stream));
                    }
                    return Poll::Pending;
                }
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(previous) = self.held.replace(data) {
                            self.send_data(previous, false)?;
                        }
                    }
                    Err(frame) => {
                        if let Some(data) = self.held.take() {
                            self.send_data(data, false)?;
                        }
                        if let Ok(trailers) = frame.into_trailers() {
                            self.stream
                                .send_trailers(trailers)
                                .map_err(|_| PipeError::Stream)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(status)) => {
                    self.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(Err(PipeError::Body(status)));
                }
                None => {
                    let last = self.held.take().unwrap_or_default();
                    self.send_data(last, true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    fn send_data(&mut self, data: Bytes, end_of_stream: bool) -> Result<(), PipeError> {
        self.sent_any = true;
        self.sent_bytes.add(&data);
        self.stream
            .send_data(data, end_of_stream)
            .map_err(|_| PipeError::Stream)
    }
}

/// Why a request body stopped being sent.
enum PipeError {
    /// The body yielded an error.
    Body(Status),
    /// The stream is closed or reset: its response carries the reason.
    Stream,
}

/// Why the server provably did not process a call, if it did not: it
/// refused the stream, or its GOAWAY's last_stream_id is below the
/// stream's (`h2` fails exactly those streams with the GOAWAY's error).
fn unprocessed(e: &h2::Error) -> Option<String> {
    if !e.is_remote() {
        return None;
    }
    let reason = e.reason().unwrap_or(Reason::NO_ERROR);
    if e.is_reset() && reason == Reason::REFUSED_STREAM {
        return Some("the server refused the stream (REFUSED_STREAM) before processing it".into());
    }
    if e.is_go_away() {
        return Some(format!(
            "the server's GOAWAY ({reason:?}) stopped the call before processing it"
        ));
    }
    None
}

/// The gRPC status for an HTTP/2 error on a call to `address`.
pub(crate) fn status_from_h2(e: &h2::Error, address: &Address) -> Status {
    Status::new(code_from_h2(e), format!("{address}: {e}"))
}

fn code_from_h2(e: &h2::Error) -> Code {
    if e.is_io() || e.is_go_away() {
        return Code::Unavailable;
    }
    match e.reason() {
        Some(Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(Reason::CANCEL) => Code::Cancelled,
        Some(Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
        // A local error: the connection is gone, or the request was not valid
        // HTTP/2 (e.g. a connection-specific header).
        None => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_map_to_grpc_codes() {
        let address = Address::new("127.0.0.1:1");
        for (reason, code) in [
            (Reason::REFUSED_STREAM, Code::Unavailable),
            (Reason::CANCEL, Code::Cancelled),
            (Reason::ENHANCE_YOUR_CALM, Code::ResourceExhausted),
            (Reason::INADEQUATE_SECURITY, Code::PermissionDenied),
            (Reason::PROTOCOL_ERROR, Code::Internal),
            (Reason::NO_ERROR, Code::Internal),
        ] {
            let status = status_from_h2(&h2::Error::from(reason), &address);
            assert_eq!(status.code(), code, "{reason:?}");
            assert!(status.message().starts_with("127.0.0.1:1: "), "{status}");
        }
    }
}

//! One call on one HTTP/2 connection: open the stream, send the request
//! body, hand back the response.
//!
//! The call's own task does all of it: it opens the stream with a clone of
//! the connection's `h2` sender, sends the request body while it waits for
//! the response headers (a unary request's HEADERS and DATA, with
//! END_STREAM, are queued in one poll and leave in one write), and returns
//! the response with a body that reads the stream and gives back flow
//! control credit. Only a request body still streaming when the response
//! headers arrive (bidirectional streaming) moves to a task of its own.
//!
//! Errors map to gRPC codes as gRPC's HTTP/2 transport specifies
//! (`PROTOCOL-HTTP2.md`): `REFUSED_STREAM` and a lost or refusing
//! connection are `UNAVAILABLE`, `CANCEL` is `CANCELLED`,
//! `ENHANCE_YOUR_CALM` is `RESOURCE_EXHAUSTED`, `INADEQUATE_SECURITY` is
//! `PERMISSION_DENIED`, other resets are `INTERNAL`.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body as _, Frame};
use tonic::body::Body;
use tonic::{Code, Status};

use crate::picker::OnDone;
use crate::Address;

/// The handle a call opens its stream with.
pub(crate) use crate::subchannel::Sender;

/// Why a call was not sent.
pub(crate) enum SendError {
    /// The connection refused the stream before anything was written: the
    /// request comes back and may be sent elsewhere (gRFC A6).
    Unsent(Box<Request<Body>>),
    /// The call failed.
    Failed(Status),
}

/// Sends `req` (whose URI already names the server) on `sender`.
pub(crate) async fn send(
    mut sender: Sender,
    req: Request<Body>,
    address: &Address,
) -> Result<(Response<RecvStream>, Option<RequestPipe>), SendError> {
    if std::future::poll_fn(|cx| sender.poll_ready(cx))
        .await
        .is_err()
    {
        return Err(SendError::Unsent(Box::new(req)));
    }
    let (parts, body) = req.into_parts();
    let end_of_stream = body.is_end_stream();
    let (response, stream) = sender
        .send_request(Request::from_parts(parts, ()), end_of_stream)
        .map_err(|e| SendError::Failed(status_from_h2(&e, address)))?;
    drop(sender);
    let mut pipe = (!end_of_stream).then(|| RequestPipe::new(body, stream));
    let mut response = response;
    let mut body_error = None;
    let result = std::future::poll_fn(|cx| {
        if let Some(p) = pipe.as_mut() {
            match p.poll_send(cx) {
                Poll::Ready(Ok(())) => pipe = None,
                Poll::Ready(Err(status)) => {
                    pipe = None;
                    body_error = Some(status);
                }
                Poll::Pending => {}
            }
        }
        Pin::new(&mut response).poll(cx)
    })
    .await;
    match result {
        Ok(response) => Ok((response, pipe)),
        // The request body's own error says more than the reset it caused.
        Err(e) => Err(SendError::Failed(
            body_error.unwrap_or_else(|| status_from_h2(&e, address)),
        )),
    }
}

/// Sends a request body on its stream, with HTTP/2 flow control.
pub(crate) struct RequestPipe {
    body: Body,
    stream: SendStream<Bytes>,
    /// A data frame read ahead, sent once it is known whether it is last.
    held: Option<Bytes>,
    /// Whether a DATA frame was sent.
    sent_any: bool,
}

impl RequestPipe {
    fn new(body: Body, stream: SendStream<Bytes>) -> Self {
        RequestPipe {
            body,
            stream,
            held: None,
            sent_any: false,
        }
    }

    /// Sends the rest of the body from a task of its own.
    pub(crate) fn spawn(mut self) {
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| self.poll_send(cx)).await;
        });
    }

    /// Ready when the whole body is sent (or failed, which resets the stream).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        loop {
            // Once a frame is out, each further one waits for send window,
            // so a long stream cannot buffer without bound. A unary request
            // (one frame, then the end) never waits here.
            if self.sent_any {
                self.stream.reserve_capacity(1);
                while self.stream.capacity() == 0 {
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Poll::Ready(Err(stream_gone(Some(e)))),
                        None => return Poll::Ready(Err(stream_gone(None))),
                    }
                }
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    // Nothing more for now: send what was read ahead, and
                    // stop if the server reset the stream meanwhile.
                    if let Some(data) = self.held.take() {
                        self.send_data(data, false)?;
                    }
                    if let Poll::Ready(reset) = self.stream.poll_reset(cx) {
                        return Poll::Ready(Err(match reset {
                            Ok(reason) => stream_gone(Some(h2::Error::from(reason))),
                            Err(e) => stream_gone(Some(e)),
                        }));
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
                                .map_err(|e| stream_gone(Some(e)))?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(status)) => {
                    self.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(Err(status));
                }
                None => {
                    let last = self.held.take().unwrap_or_default();
                    self.send_data(last, true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    fn send_data(&mut self, data: Bytes, end_of_stream: bool) -> Result<(), Status> {
        self.sent_any = true;
        self.stream
            .send_data(data, end_of_stream)
            .map_err(|e| stream_gone(Some(e)))
    }
}

fn stream_gone(e: Option<h2::Error>) -> Status {
    match e {
        Some(e) => Status::new(code_from_h2(&e), format!("sending the request: {e}")),
        None => Status::unavailable("sending the request: the stream was closed"),
    }
}

/// The response body: the stream's DATA frames, then its trailers. Runs the
/// pick's `on_done` when the call ends (the body is read or dropped).
pub(crate) struct ResponseBody {
    stream: RecvStream,
    data_done: bool,
    address: Address,
    on_done: Option<OnDone>,
}

impl ResponseBody {
    pub(crate) fn new(stream: RecvStream, address: Address, on_done: Option<OnDone>) -> Self {
        ResponseBody {
            stream,
            data_done: false,
            address,
            on_done,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            f();
        }
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
        if !this.data_done {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Credit goes back at once: tonic buffers what it reads.
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(status_from_h2(&e, &this.address)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(status_from_h2(&e, &this.address)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
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

//! A request that can be sent again (gRFC A6 transparent retry).
//!
//! A call that reached a server's HTTP/2 layer but not its application may
//! be sent again, but its body is read as it is sent. [`Outgoing`] keeps
//! the request's head and every body frame read so far (cheap `Bytes`
//! clones of what the body yielded, never a copy), so a retry sends those
//! frames again and then goes on reading the body where the first attempt
//! stopped.
//!
//! The frames kept are bounded by [`REPLAY_LIMIT`], gRPC's per-call retry
//! buffer: 256 KiB, as grpc-go (`defaultMaxRetryRPCBufferSize`) and C-core
//! (`grpc.per_rpc_retry_buffer_size`). A body that outgrows it drops what it
//! kept and the call can no longer be retried; memory held for a replay is
//! at most that much per call beyond what `h2` already buffers, whatever
//! the body's size. Once the response headers arrive the call is committed
//! (the server is processing it) and nothing more is kept.
//!
//! **The head.** `h2` takes each attempt's request head by value, so the
//! head is copied once per attempt: the original goes to `h2`, the copy
//! stays for the next attempt. The copy is made into a header map kept
//! from an earlier call (a few per thread, see [`SPARE_MAPS`]), so a call
//! allocates no header map of its own once the thread has served one.
//! The request's extensions, which HTTP/2 does not send, become the
//! response's (see [`Outgoing::take_extensions`]): the map tonic allocated
//! for its own request extension holds the response's [`Peer`] too.
//!
//! [`Peer`]: crate::Peer

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, TE};
use http::request::Parts;
use http::{Extensions, HeaderMap, Request, Uri};
use http_body::{Body as _, Frame};
use tonic::body::Body;
use tonic::Status;

use crate::metrics::SentBytes;

/// The most request-body bytes kept for a replay.
pub(crate) const REPLAY_LIMIT: usize = 256 * 1024;

/// A request on its way: its head, and its body with what was read of it.
pub(crate) struct Outgoing {
    head: Parts,
    body: BodySource,
    /// The last attempt's stream was opened (bytes reached the server).
    opened: bool,
    /// Counts the current attempt's message bytes as they are sent.
    sent_bytes: SentBytes,
}

impl Outgoing {
    /// Takes the call's request, without the connection-specific headers
    /// HTTP/2 forbids (see [`strip_connection_headers`]), with
    /// `user_agent` unless it carries a `user-agent` already.
    pub(crate) fn new(request: Request<Body>, user_agent: &HeaderValue) -> Self {
        let (mut head, body) = request.into_parts();
        strip_connection_headers(&mut head.headers);
        if let http::header::Entry::Vacant(entry) = head.headers.entry(http::header::USER_AGENT) {
            entry.insert(user_agent.clone());
        }
        Outgoing {
            head,
            body: BodySource::new(body),
            opened: false,
            sent_bytes: SentBytes::default(),
        }
    }

    /// The next attempt's bytes go to `sent_bytes`.
    #[inline]
    pub(crate) fn count_sent(&mut self, sent_bytes: SentBytes) {
        self.sent_bytes = sent_bytes;
    }

    /// The current attempt's counter, for its body's sender.
    #[inline]
    pub(crate) fn take_sent_bytes(&mut self) -> SentBytes {
        std::mem::take(&mut self.sent_bytes)
    }

    pub(crate) fn extensions(&self) -> &http::Extensions {
        &self.head.extensions
    }

    /// Records that this attempt's stream was opened.
    pub(crate) fn set_opened(&mut self) {
        self.opened = true;
    }

    /// Whether the attempt's stream was opened, and starts over for the
    /// next attempt.
    pub(crate) fn take_opened(&mut self) -> bool {
        std::mem::take(&mut self.opened)
    }

    pub(crate) fn uri(&self) -> &Uri {
        &self.head.uri
    }

    pub(crate) fn uri_mut(&mut self) -> &mut Uri {
        &mut self.head.uri
    }

    pub(crate) fn headers(&self) -> &HeaderMap {
        &self.head.headers
    }

    /// The head to send for one attempt (`h2` consumes it): the headers
    /// themselves; a copy, in a recycled map, stays for the next attempt.
    pub(crate) fn request(&mut self) -> Request<()> {
        let mut copy = spare_map();
        copy.extend(
            self.head
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        let mut request = Request::new(());
        *request.method_mut() = self.head.method.clone();
        *request.uri_mut() = self.head.uri.clone();
        *request.version_mut() = self.head.version;
        *request.headers_mut() = std::mem::replace(&mut self.head.headers, copy);
        request
    }

    /// The request's extensions, emptied (their allocation kept), for the
    /// response: HTTP/2 does not send them, and the call needs them no
    /// more once its response headers arrived.
    pub(crate) fn take_extensions(&mut self) -> Extensions {
        let mut extensions = std::mem::take(&mut self.head.extensions);
        extensions.clear();
        extensions
    }

    pub(crate) fn body_mut(&mut self) -> &mut BodySource {
        &mut self.body
    }

    /// The rest of the body, once the response headers arrived: the call
    /// is committed, nothing more is kept for a replay.
    pub(crate) fn take_body(&mut self) -> BodySource {
        self.body.commit();
        std::mem::replace(&mut self.body, BodySource::new(Body::empty()))
    }

    /// Starts the body over for another attempt; false if it can no longer
    /// be replayed (it outgrew [`REPLAY_LIMIT`], or was committed).
    pub(crate) fn rewind(&mut self) -> bool {
        self.body.rewind()
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.head.headers));
    }
}

/// How many emptied header maps a thread keeps for the next calls' head
/// copies. A call takes one and gives one back, so a thread needs about
/// as many as it has calls starting at once between two of its calls
/// ending; a thread with none to spare allocates one.
const SPARE_MAPS: usize = 32;
/// A map that grew beyond this many headers is not kept.
const SPARE_MAP_CAPACITY: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty header map, recycled if this thread has one.
fn spare_map() -> HeaderMap {
    SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps `map`'s allocation for a later call on this thread.
fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_CAPACITY {
        return;
    }
    map.clear();
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_MAPS {
            spare.push(map);
        }
    });
}

/// Removes the headers HTTP/2 forbids in a request (RFC 9113, section
/// 8.2.2): `connection`, `keep-alive`, `proxy-connection`,
/// `transfer-encoding`, `upgrade`, and a `te` other than `trailers`, as
/// hyper's HTTP/2 client does. `h2` refuses a request that carries one, and
/// tower layers and interceptors written for HTTP/1 add them. A request
/// without any (every tonic request) is only scanned.
fn strip_connection_headers(headers: &mut HeaderMap) {
    let forbidden = |name: &HeaderName, value: &HeaderValue| match name.as_str() {
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" => true,
        "te" => value != "trailers",
        _ => false,
    };
    if !headers.iter().any(|(name, value)| forbidden(name, value)) {
        return;
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}

/// A request body that records what it yields until it is committed.
pub(crate) struct BodySource {
    body: Body,
    replay: Replay,
    /// The next recorded frame to yield (a replay in progress).
    cursor: usize,
}

/// What was read of a body, for a replay.
#[derive(Default)]
struct Replay {
    /// The first data frame (a unary request's only one): no `Vec` needed.
    first: Option<Bytes>,
    rest: Vec<Bytes>,
    bytes: usize,
    trailers: Option<HeaderMap>,
    /// The body ended: every frame is recorded.
    ended: bool,
    /// Nothing more is recorded (committed, or over the limit).
    stopped: bool,
    /// The body outgrew [`REPLAY_LIMIT`]: it cannot be replayed.
    overflowed: bool,
}

impl BodySource {
    fn new(body: Body) -> Self {
        BodySource {
            body,
            replay: Replay::default(),
            cursor: 0,
        }
    }

    /// Whether there is nothing to send at all.
    pub(crate) fn is_end_stream(&self) -> bool {
        if self.replay.ended {
            self.replay.frames() == 0 && self.replay.trailers.is_none()
        } else {
            self.replay.frames() == 0 && self.body.is_end_stream()
        }
    }

    /// The next frame: a recorded one while replaying, else the body's.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if !self.replay.stopped {
            if let Some(frame) = self.replay.next(&mut self.cursor) {
                return Poll::Ready(frame);
            }
        }
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => self.replay.record(frame, &mut self.cursor),
            Some(Err(_)) => {}
            None => {
                self.replay.ended = true;
                self.cursor = self.replay.frames() + 1;
            }
        }
        Poll::Ready(frame)
    }

    /// The response headers arrived: the server took the call, so nothing
    /// needs to be kept for a replay any more.
    pub(crate) fn commit(&mut self) {
        let ended = self.replay.ended;
        self.replay = Replay {
            ended,
            stopped: true,
            ..Replay::default()
        };
    }

    /// Starts the body over; false if it outgrew the replay buffer.
    fn rewind(&mut self) -> bool {
        self.cursor = 0;
        !self.replay.overflowed && !self.replay.stopped
    }
}

impl Replay {
    fn frames(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn frame(&self, i: usize) -> Option<&Bytes> {
        match i {
            0 => self.first.as_ref(),
            i => self.rest.get(i - 1),
        }
    }

    /// The recorded frame at `cursor`, then (if the body ended) its
    /// trailers and its end; `None` when the body must be read.
    fn next(&self, cursor: &mut usize) -> Option<Option<Result<Frame<Bytes>, Status>>> {
        let n = self.frames();
        if *cursor < n {
            let data = self.frame(*cursor).cloned().unwrap_or_default();
            *cursor += 1;
            return Some(Some(Ok(Frame::data(data))));
        }
        if !self.ended {
            return None;
        }
        if *cursor == n {
            *cursor += 1;
            if let Some(trailers) = &self.trailers {
                return Some(Some(Ok(Frame::trailers(trailers.clone()))));
            }
        }
        Some(None)
    }

    fn record(&mut self, frame: &Frame<Bytes>, cursor: &mut usize) {
        if self.stopped {
            return;
        }
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len();
            if self.bytes > REPLAY_LIMIT {
                *self = Replay {
                    stopped: true,
                    overflowed: true,
                    ..Replay::default()
                };
                return;
            }
            match self.first {
                None => self.first = Some(data.clone()),
                Some(_) => self.rest.push(data.clone()),
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
        }
        *cursor = self.frames();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn body_of(chunks: Vec<Bytes>) -> Body {
        let frames = chunks.into_iter().map(|c| Ok::<_, Status>(Frame::data(c)));
        Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    async fn read_all(source: &mut BodySource) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(frame) = poll_fn(|cx| source.poll_frame(cx)).await {
            if let Ok(data) = frame.expect("frame").into_data() {
                out.push(data);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_replay_yields_the_frames_already_read_then_the_rest_of_the_body() {
        let chunks: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 10])).collect();
        let mut source = BodySource::new(body_of(chunks.clone()));
        // The first attempt reads two frames, then is refused.
        for chunk in &chunks[..2] {
            let frame = poll_fn(|cx| source.poll_frame(cx)).await;
            assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), chunk);
        }
        assert!(source.rewind());
        assert_eq!(read_all(&mut source).await, chunks);
        // A third attempt replays all of it, the body having ended.
        assert!(source.rewind());
        assert!(!source.is_end_stream());
        assert_eq!(read_all(&mut source).await, chunks);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_replayable() {
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        let mut source = BodySource::new(body_of(vec![chunk; 5]));
        assert_eq!(read_all(&mut source).await.len(), 5);
        assert!(source.replay.frames() == 0, "nothing kept past the limit");
        assert!(!source.rewind());
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_replayable() {
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        let mut source = BodySource::new(body_of(vec![chunk; 4]));
        assert_eq!(read_all(&mut source).await.len(), 4);
        assert!(source.rewind());
        assert_eq!(read_all(&mut source).await.len(), 4);
    }

    #[tokio::test]
    async fn a_committed_body_keeps_nothing_and_is_not_replayable() {
        let chunks: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 10])).collect();
        let mut source = BodySource::new(body_of(chunks.clone()));
        let first = poll_fn(|cx| source.poll_frame(cx)).await;
        assert!(first.is_some());
        source.commit();
        assert_eq!(read_all(&mut source).await, chunks[1..]);
        assert_eq!(source.replay.frames(), 0);
        assert!(!source.rewind());
    }

    #[test]
    fn connection_specific_headers_are_stripped_and_te_trailers_kept() {
        let mut request = Request::new(Body::empty());
        let headers = request.headers_mut();
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "application/grpc"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers.insert(TE, HeaderValue::from_static("trailers"));
        let outgoing = Outgoing::new(request, &HeaderValue::from_static("ua"));
        let mut names: Vec<_> = outgoing.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "te", "user-agent"]);

        let mut request = Request::new(Body::empty());
        request
            .headers_mut()
            .insert(TE, HeaderValue::from_static("gzip"));
        let ua = HeaderValue::from_static("ua");
        let stripped = Outgoing::new(request, &ua);
        assert_eq!(
            stripped.headers().keys().collect::<Vec<_>>(),
            ["user-agent"]
        );
    }

    #[test]
    fn every_attempt_sends_the_same_head_and_extensions_go_to_the_response() {
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = Uri::from_static("http://a:1/p.S/M");
        let headers = request.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.append("x-multi", HeaderValue::from_static("1"));
        headers.append("x-multi", HeaderValue::from_static("2"));
        request.extensions_mut().insert(7u32);
        let mut outgoing = Outgoing::new(request, &HeaderValue::from_static("ua"));
        let first = outgoing.request();
        let second = outgoing.request();
        for sent in [&first, &second] {
            assert_eq!(sent.uri(), "http://a:1/p.S/M");
            assert_eq!(sent.headers(), outgoing.headers());
            let multi: Vec<_> = sent.headers().get_all("x-multi").iter().collect();
            assert_eq!(multi, ["1", "2"]);
            assert_eq!(sent.headers()["user-agent"], "ua");
        }
        let extensions = outgoing.take_extensions();
        assert!(extensions.is_empty());
        assert!(outgoing.take_extensions().is_empty());
    }

    #[test]
    fn an_empty_body_has_nothing_to_send() {
        let source = BodySource::new(Body::empty());
        assert!(source.is_end_stream());
    }
}

//! The request path: pick, send, and wait for a better picker when needed.
//!
//! Per call: one atomic load and branch for the service config's method
//! configs (plus one lookup by path when a `methodConfig` sets `timeout`
//! or `waitForReady`), one atomic load of the current picker, one pick (borrowed from
//! that snapshot), one clone of the chosen connection's handle and of its
//! address (for the response's [`Peer`]), and the send from the caller's
//! own task (see the crate's transport, `src/transport/`): no buffer task
//! and no dispatch task between the call and the connection.
//!
//! **Deadline.** A call's deadline (its `grpc-timeout`, capped by the
//! channel's default timeout and by its method config's `timeout`, from
//! the call's start) covers the whole call, as gRPC's does, and is sent to
//! the server as the call's `grpc-timeout` (set when the channel's or the
//! method config's timeout is the shorter; the call's own header is sent as
//! it is otherwise; transparent re-picks send the value of the call's
//! start, a little longer than what is left): one
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
//! chooses then, if its body fits the replay buffer. Every pick's
//! completion reports exactly once (a [`DoneInfo`](crate::picker::DoneInfo)
//! with the code and whether its stream was opened): when its attempt
//! fails, when the call ends (the response body reports the trailers), at
//! the deadline, or with `CANCELLED` when the caller drops the call.
//!
//! **Messages.** A call that times out says where it was: waiting for a
//! picker (the channel's state and the last pick failure the call itself
//! saw, as grpc-go's `lastPickErr`) or for a backend's response. The
//! channel never picks on its own account.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};

use super::{ControlRequest, MethodLookup, Peer, Shared, WaitForReady};
use crate::metrics::CallRecord;
use crate::picker::{Completion, PickInfo, PickResult};
use crate::transport::{Connection, Deadline, Opened, Origin, Outgoing, SendError, REPLAY_LIMIT};
use crate::{Address, ConnectivityState, Target};

/// The call's timeout header (gRPC over HTTP/2, `Timeout`). A constant, so
/// that looking it up on every call does not parse the name.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// How many times a call is re-picked on the same picker when its
/// subchannel turns out not to be connected, before waiting for a new one.
const REPICKS_PER_PICKER: u32 = 2;

pub(crate) async fn call(
    shared: std::sync::Arc<Shared>,
    mut req: Request<Body>,
) -> Result<Response<Body>, Status> {
    let start = Instant::now();
    let header_timeout = header_timeout(req.headers());
    let own_timeout = earlier(header_timeout, shared.defaults.timeout);
    let record = shared.metrics.call(req.uri().path());
    // The service config's method config, if one applies: its
    // waitForReady overrides the call's (as grpc-go), its timeout caps the
    // call's deadline.
    let method = match shared.methods.lookup(req.uri().path()) {
        MethodLookup::Resolved(method) => method,
        MethodLookup::Unresolved => {
            let bound = own_timeout.unwrap_or(shared.defaults.queue_timeout);
            let path = req.uri().path();
            // Boxed: the rare wait does not grow every call's future.
            Box::pin(
                shared
                    .methods
                    .first_resolution(path, crate::backoff::deadline(start, bound)),
            )
            .await
        }
    };
    let wait_for_ready = match method.and_then(|m| m.wait_for_ready()) {
        Some(wait_for_ready) => wait_for_ready,
        None => req
            .extensions()
            .get::<WaitForReady>()
            .map_or(shared.defaults.wait_for_ready, |w| w.0),
    };
    let timeout = earlier(own_timeout, method.and_then(|m| m.timeout()));
    if let Some(timeout) = timeout.filter(|&t| header_timeout.is_none_or(|h| t < h)) {
        // The channel's or the method config's timeout is the deadline:
        // the server learns it, as gRPC sends every call's deadline.
        req.headers_mut()
            .insert(GRPC_TIMEOUT, encode_grpc_timeout(timeout));
    }
    let mut progress = Progress::new(Outgoing::new(req, &shared.defaults.user_agent), record);
    let Some(timeout) = timeout else {
        let queue_deadline = crate::backoff::deadline(start, shared.defaults.queue_timeout);
        let sent =
            pick_and_send(&shared, wait_for_ready, Some(queue_deadline), &mut progress).await;
        let sent = progress.ended_if_err(sent)?;
        return respond(sent, &mut progress, None);
    };
    let mut deadline = Deadline::at(start, timeout);
    let sent = {
        let send = pick_and_send(&shared, wait_for_ready, None, &mut progress);
        tokio::pin!(send);
        std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
            Poll::Ready(sent) => Poll::Ready(Some(sent)),
            Poll::Pending => deadline.poll_expired(cx).map(|()| None),
        })
        .await
    };
    match sent {
        Some(sent) => {
            let sent = progress.ended_if_err(sent)?;
            respond(sent, &mut progress, Some(deadline))
        }
        None => {
            progress.end_attempt(Code::DeadlineExceeded);
            progress.record.ended(Code::DeadlineExceeded);
            Err(deadline_exceeded(&shared, timeout, &progress))
        }
    }
}

/// A call on its way: the request, the completion of its current pick,
/// and what it has been through (for its error messages).
///
/// The current pick's completion reports exactly once: when its attempt
/// fails, when the call ends (the response body takes it over), or, if
/// the call is dropped meanwhile, with `CANCELLED` (see [`Drop`]).
struct Progress {
    outgoing: Outgoing,
    /// The current attempt's pick, until the attempt fails or the
    /// response takes it over.
    completion: Option<Completion>,
    /// The last failure a pick gave this call (while it waited for ready).
    last_pick_error: Option<Status>,
    /// The backend the call waits on for response headers, once sent.
    sent_to: Option<Address>,
    /// Whether an attempt the server did not process was sent again.
    retried_unprocessed: bool,
    /// gRFC A66's record of the call (empty without `otel`).
    record: CallRecord,
}

impl Progress {
    fn new(outgoing: Outgoing, record: CallRecord) -> Self {
        Progress {
            outgoing,
            completion: None,
            last_pick_error: None,
            sent_to: None,
            retried_unprocessed: false,
            record,
        }
    }

    /// A new attempt with the pick's `completion`.
    fn start_attempt(&mut self, completion: Completion) {
        // Every path ends its attempt before picking again; an attempt
        // left over would still be reported, once.
        self.end_attempt(Code::Unavailable);
        self.completion = Some(completion);
    }

    /// Ends the current attempt, if any, with `code`: its pick hears
    /// whether its stream was opened.
    fn end_attempt(&mut self, code: Code) {
        if let Some(mut completion) = self.completion.take() {
            completion.set_bytes_sent(self.outgoing.take_opened());
            completion.finish_with(code);
        }
    }

    /// A failed call ends its attempt with the failure's code.
    fn ended_if_err<T>(&mut self, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.end_attempt(status.code());
            self.record.ended(status.code());
        }
        result
    }
}

impl Drop for Progress {
    /// The caller dropped the call (or the call ended some other way that
    /// did not report): its pick hears `CANCELLED`.
    fn drop(&mut self) {
        self.end_attempt(Code::Cancelled);
        self.record.ended(Code::Cancelled);
    }
}

/// Picks and sends until an attempt gets its response headers, waiting for
/// a new picker where the current one cannot serve the call. What to do
/// after each pick is [`next_step`]'s (synchronous) decision.
async fn pick_and_send(
    shared: &Shared,
    wait_for_ready: bool,
    queue_deadline: Option<Instant>,
    progress: &mut Progress,
) -> Result<Opened, Status> {
    let mut repicks = Repicks::default();
    loop {
        let (generation, outcome) = pick(shared, progress)?;
        let wait = match next_step(outcome, wait_for_ready, &mut repicks, &shared.target) {
            Step::Send((connection, address)) => {
                match attempt(connection, address, progress).await? {
                    Some(opened) => return Ok(opened),
                    None => repicks.unsent(),
                }
            }
            Step::Repick => false,
            Step::Wait => true,
            Step::WaitAfter(status) => {
                progress.last_pick_error = Some(status);
                true
            }
            Step::Fail(status) => return Err(status),
        };
        if wait {
            let last_error = &progress.last_pick_error;
            wait_for_picker(shared, generation, queue_deadline, last_error).await?;
        }
    }
}

/// What one pick gave the call, owning what the call needs once the
/// picker snapshot is released (the pick's completion is in
/// [`Progress`]). `C` is the chosen connection and its address.
enum PickOutcome<C> {
    /// The chosen subchannel's connection if it is connected.
    Send(Option<C>),
    Queue,
    Fail(Status),
    Drop(Status),
}

/// What the call does next.
#[derive(Debug)]
enum Step<C> {
    /// Send on this connection.
    Send(C),
    /// Pick again at once, on the same picker.
    Repick,
    /// Wait for a new picker.
    Wait,
    /// Wait for a new picker, remembering the pick's failure for the
    /// messages (a wait-for-ready call in TRANSIENT_FAILURE).
    WaitAfter(Status),
    /// End the call.
    Fail(Status),
}

/// How many picks in a row chose a subchannel that could not take the
/// call, on one picker.
#[derive(Debug, Default)]
struct Repicks(u32);

impl Repicks {
    /// One more unsent attempt: true when the call should wait for a new
    /// picker (then it starts counting again).
    fn unsent(&mut self) -> bool {
        self.0 += 1;
        if self.0 > REPICKS_PER_PICKER {
            self.0 = 0;
            return true;
        }
        false
    }
}

/// gRPC's pick rules (wait-for-ready semantics, A6's re-pick of calls
/// never sent) as a table: what a call does after a pick.
fn next_step<C>(
    outcome: PickOutcome<C>,
    wait_for_ready: bool,
    repicks: &mut Repicks,
    target: &Target,
) -> Step<C> {
    match outcome {
        PickOutcome::Send(Some(connection)) => Step::Send(connection),
        PickOutcome::Send(None) if repicks.unsent() => Step::Wait,
        PickOutcome::Send(None) => Step::Repick,
        PickOutcome::Queue => Step::Wait,
        PickOutcome::Fail(status) if wait_for_ready && status.code() == Code::Unavailable => {
            Step::WaitAfter(status)
        }
        PickOutcome::Fail(status) => Step::Fail(Status::new(
            status.code(),
            format!("no ready endpoint for {target}: {}", status.message()),
        )),
        PickOutcome::Drop(status) => Step::Fail(status),
    }
}

/// One pick on the current picker, with its generation. A pick's
/// completion from here on reports once, however its attempt ends: one
/// whose subchannel is not connected reports `UNAVAILABLE` (nothing sent)
/// at once.
fn pick(
    shared: &Shared,
    progress: &mut Progress,
) -> Result<(u64, PickOutcome<(Connection, Address)>), Status> {
    let snapshot = shared.picker.load();
    if snapshot.state == ConnectivityState::Idle
        && !snapshot
            .idle_kicked
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        let _ = shared.requests.send(ControlRequest::ExitIdle);
    }
    let outgoing = &mut progress.outgoing;
    let info = PickInfo::new(outgoing.uri().path(), outgoing.headers())
        .with_extensions(outgoing.extensions());
    // The pick borrows from the snapshot: take what the call needs from the
    // subchannel while the snapshot is held.
    let outcome = match snapshot.picker.pick(&info) {
        PickResult::Pick(pick) => {
            let subchannel = pick.subchannel();
            let ready = match subchannel.connection() {
                Some(connection) => set_origin(outgoing.uri_mut(), subchannel.origin())
                    .map(|()| Some((connection, subchannel.address().clone()))),
                None => Ok(None),
            };
            let stats = subchannel.stats().clone();
            // Even a call that ends here (a bad URI) completes its pick.
            let mut completion = pick.into_completion();
            completion.tally.picked(stats);
            progress.start_attempt(completion);
            if !matches!(ready, Ok(Some(_))) {
                progress.end_attempt(Code::Unavailable);
            }
            PickOutcome::Send(ready?)
        }
        PickResult::Queue => PickOutcome::Queue,
        PickResult::Fail(status) => PickOutcome::Fail(status),
        PickResult::Drop(status) => PickOutcome::Drop(status),
    };
    Ok((snapshot.generation, outcome))
}

/// One attempt on a connected subchannel; `Ok(None)` means pick again.
/// The attempt's pick completes when it fails (or, once sent, when the
/// call ends).
async fn attempt(
    connection: Connection,
    address: Address,
    progress: &mut Progress,
) -> Result<Option<Opened>, Status> {
    if let Some(completion) = progress.completion.as_mut() {
        let record = progress.record.attempt();
        progress.outgoing.count_sent(record.sent_bytes());
        completion.tally.sending(record);
    }
    let address = progress.sent_to.insert(address);
    let failure = match connection.send(&mut progress.outgoing, address).await {
        Ok(opened) => return Ok(Some(opened)),
        Err(failure) => failure,
    };
    progress.sent_to = None;
    match failure {
        // Never left the client: pick again, as often as it takes.
        SendError::Unsent => {
            progress.end_attempt(Code::Unavailable);
            Ok(None)
        }
        // Not processed by the server: once more (gRFC A6).
        SendError::Unprocessed(status) => {
            progress.end_attempt(status.code());
            if progress.retried_unprocessed {
                Err(not_retried(&status, "already retried once"))
            } else if !progress.outgoing.rewind() {
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
        SendError::Failed(status) => {
            progress.end_attempt(status.code());
            Err(status)
        }
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
    last_pick_error: &Option<Status>,
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
                describe_state(shared, last_pick_error)
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
            describe_state(shared, &progress.last_pick_error)
        ),
    })
}

/// `state X` plus the last pick failure the call saw, if any.
fn describe_state(shared: &Shared, last_pick_error: &Option<Status>) -> String {
    let state = shared.picker.load().state;
    match last_pick_error {
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
/// call's deadline and reports to the pick's completion when the call
/// ends.
fn respond(
    opened: Opened,
    progress: &mut Progress,
    deadline: Option<Deadline>,
) -> Result<Response<Body>, Status> {
    let (Some(address), Some(completion)) = (progress.sent_to.take(), progress.completion.take())
    else {
        let status = Status::internal("a sent call lost track of its backend");
        progress.end_attempt(status.code());
        progress.record.ended(status.code());
        return Err(status);
    };
    let mut completion = completion;
    let record = std::mem::replace(&mut progress.record, CallRecord::NONE);
    completion.tally.ends_call(record);
    let peer = Peer::new(address.clone());
    let mut response = opened.into_response(address, completion, deadline);
    response.extensions_mut().insert(peer);
    Ok(response)
}

/// The call's own timeout: its `grpc-timeout` header.
fn header_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(&GRPC_TIMEOUT)
        .and_then(|v| parse_grpc_timeout(v.as_bytes()))
}

/// `timeout` as gRPC's `TimeoutValue TimeoutUnit`: at most 8 digits, in
/// the finest unit that fits, rounded up (as grpc-go encodes it), so the
/// server never sees a shorter deadline than the client's.
fn encode_grpc_timeout(timeout: Duration) -> http::HeaderValue {
    const MAX: u128 = 99_999_999;
    const UNITS: [(char, u128); 6] = [
        ('n', 1),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ];
    let nanos = timeout.as_nanos();
    let (value, unit) = UNITS
        .iter()
        .map(|&(unit, per)| (nanos.div_ceil(per), unit))
        .find(|&(value, _)| value <= MAX)
        .unwrap_or((MAX, 'H'));
    http::HeaderValue::try_from(format!("{value}{unit}"))
        .unwrap_or(http::HeaderValue::from_static("99999999H"))
}

/// The shorter of two timeouts, either of which may be absent.
fn earlier(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
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

    fn step(outcome: PickOutcome<&'static str>, wait_for_ready: bool) -> Step<&'static str> {
        let target: Target = "static:///a:1".parse().unwrap();
        next_step(outcome, wait_for_ready, &mut Repicks::default(), &target)
    }

    #[test]
    fn the_pick_decision_table() {
        use PickOutcome as P;
        let unavailable = || Status::unavailable("a:1: refused");
        for wait_for_ready in [false, true] {
            assert!(matches!(
                step(P::Send(Some("c")), wait_for_ready),
                Step::Send("c")
            ));
            assert!(matches!(step(P::Send(None), wait_for_ready), Step::Repick));
            assert!(matches!(step(P::Queue, wait_for_ready), Step::Wait));
            // Drop fails even wait-for-ready calls, with its own status.
            match step(P::Drop(Status::resource_exhausted("shed")), wait_for_ready) {
                Step::Fail(s) => {
                    assert_eq!((s.code(), s.message()), (Code::ResourceExhausted, "shed"))
                }
                other => panic!("{other:?}"),
            }
            // A failure other than UNAVAILABLE fails the call either way.
            match step(P::Fail(Status::internal("bad")), wait_for_ready) {
                Step::Fail(s) => {
                    assert_eq!(s.code(), Code::Internal);
                    assert_eq!(s.message(), "no ready endpoint for static:///a:1: bad");
                }
                other => panic!("{other:?}"),
            }
        }
        // UNAVAILABLE: fail fast, or wait for ready remembering why.
        match step(P::Fail(unavailable()), false) {
            Step::Fail(s) => {
                assert_eq!(s.code(), Code::Unavailable);
                assert_eq!(
                    s.message(),
                    "no ready endpoint for static:///a:1: a:1: refused"
                );
            }
            other => panic!("{other:?}"),
        }
        match step(P::Fail(unavailable()), true) {
            Step::WaitAfter(s) => assert_eq!(s.message(), "a:1: refused"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unconnected_picks_repick_twice_then_wait_for_a_new_picker() {
        let target: Target = "static:///a:1".parse().unwrap();
        let mut repicks = Repicks::default();
        let mut steps = Vec::new();
        for _ in 0..6 {
            let step = next_step(PickOutcome::<()>::Send(None), false, &mut repicks, &target);
            steps.push(matches!(step, Step::Wait));
        }
        assert_eq!(steps, [false, false, true, false, false, true]);
        // Failed attempts count the same way.
        assert_eq!(
            [repicks.unsent(), repicks.unsent(), repicks.unsent()],
            [false, false, true]
        );
    }

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
    fn the_header_timeout_is_read() {
        let mut h = http::HeaderMap::new();
        assert_eq!(header_timeout(&h), None);
        h.insert("grpc-timeout", http::HeaderValue::from_static("500m"));
        assert_eq!(header_timeout(&h), Some(Duration::from_millis(500)));
    }

    #[test]
    fn timeouts_are_encoded_in_the_finest_unit_that_fits_rounded_up() {
        let encode = |d: Duration| encode_grpc_timeout(d).to_str().map(str::to_owned).ok();
        let cases = [
            (Duration::ZERO, "0n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_millis(100), "100000u"),
            (Duration::from_millis(1500), "1500000u"),
            (Duration::from_secs(100), "100000m"),
            (Duration::from_nanos(100_000_000_001), "100001m"),
            (Duration::from_secs(200_000), "200000S"),
            (Duration::from_secs(3600 * 99_999_999), "99999999H"),
            (Duration::MAX, "99999999H"),
        ];
        for (timeout, text) in cases {
            assert_eq!(encode(timeout).as_deref(), Some(text), "{timeout:?}");
            // What is sent reads back as no shorter than the timeout.
            if timeout < Duration::from_secs(3600 * 99_999_999) {
                let back = parse_grpc_timeout(text.as_bytes());
                assert!(back.is_some_and(|b| b >= timeout), "{timeout:?}");
            }
        }
    }

    #[test]
    fn the_earlier_timeout_wins() {
        let ms = Duration::from_millis;
        assert_eq!(earlier(None, None), None);
        assert_eq!(earlier(Some(ms(3)), None), Some(ms(3)));
        assert_eq!(earlier(None, Some(ms(3))), Some(ms(3)));
        assert_eq!(earlier(Some(ms(5)), Some(ms(3))), Some(ms(3)));
        assert_eq!(earlier(Some(ms(2)), Some(ms(3))), Some(ms(2)));
    }
}

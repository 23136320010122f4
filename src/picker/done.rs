//! How a picked call ended, and the handle that reports it exactly once.
//!
//! A picker that wants to hear how its calls end (least request counts
//! calls in flight, outlier detection counts failures, ORCA reads load
//! reports from trailers) attaches a [`CallObserver`] to its
//! [`Pick`](super::Pick) with [`Pick::with_observer`](super::Pick::with_observer).
//! The pick carries it in a [`Completion`], which calls
//! [`CallObserver::done`] once with a [`DoneInfo`] when the call ends, or
//! when the completion is dropped, whichever comes first (tower's
//! `load::completion` handles work the same way): a pick cannot be
//! forgotten, whatever path the call takes (response, error, deadline,
//! cancellation by the caller, the re-pick of an attempt that never left).
//!
//! This is grpc-go's `balancer.PickResult.Done(DoneInfo)`. The observer is
//! an `Arc` the picker keeps and clones into each pick (one reference
//! count written, no allocation per call); the trailers are lent to it,
//! not copied.

use std::fmt;
use std::sync::Arc;

use tonic::Code;

/// How a call ended, as the policy that picked it hears it (grpc-go's
/// `balancer.DoneInfo`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy)]
pub struct DoneInfo<'a> {
    code: Code,
    bytes_sent: bool,
    bytes_received: bool,
    trailers: &'a http::HeaderMap,
}

impl<'a> DoneInfo<'a> {
    /// A call that ended with `code`; `bytes_sent` says whether any byte of
    /// the request reached the server (its stream was opened),
    /// `bytes_received` whether response headers came back, and
    /// `trailers` are the response's trailers (empty if none).
    pub fn new(
        code: Code,
        bytes_sent: bool,
        bytes_received: bool,
        trailers: &'a http::HeaderMap,
    ) -> Self {
        DoneInfo {
            code,
            bytes_sent,
            bytes_received,
            trailers,
        }
    }

    /// The call's gRPC status code: the server's `grpc-status`, or the
    /// client's own verdict (`CANCELLED` when the caller dropped the call,
    /// `DEADLINE_EXCEEDED` at its deadline, `UNAVAILABLE` for an attempt
    /// that never reached the server and was picked again).
    pub fn code(&self) -> Code {
        self.code
    }

    /// Whether any byte of the request reached the server: the attempt's
    /// HTTP/2 stream was opened (gRPC's "bytes sent"). False for an
    /// attempt that never left the client and was picked again.
    pub fn bytes_sent(&self) -> bool {
        self.bytes_sent
    }

    /// Whether the server answered with response headers.
    pub fn bytes_received(&self) -> bool {
        self.bytes_received
    }

    /// The response trailers (or, for a trailers-only response, its
    /// headers), lent without a copy; empty when the call ended without
    /// any. ORCA's per-call load report is `endpoint-load-metrics-bin`.
    pub fn trailers(&self) -> &'a http::HeaderMap {
        self.trailers
    }
}

/// Hears how each call a picker picked ended. Called once per pick, on the
/// call's task (or wherever the call's future or body is dropped): it must
/// be quick and must not block, like a picker.
///
/// Any `Fn(&DoneInfo<'_>) + Send + Sync + 'static` is an observer.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use tonic_balance::picker::{CallObserver, DoneInfo};
///
/// /// Calls in flight on one endpoint.
/// #[derive(Default)]
/// struct InFlight(AtomicUsize);
///
/// impl CallObserver for InFlight {
///     fn done(&self, _: &DoneInfo<'_>) {
///         self.0.fetch_sub(1, Ordering::Relaxed);
///     }
/// }
///
/// let failures = Arc::new(AtomicUsize::new(0));
/// let count_failures = {
///     let failures = failures.clone();
///     move |info: &DoneInfo<'_>| {
///         if info.code() != tonic::Code::Ok {
///             failures.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// };
/// let observer: Arc<dyn CallObserver> = Arc::new(count_failures);
/// observer.done(&DoneInfo::new(tonic::Code::Unavailable, false, false, &http::HeaderMap::new()));
/// assert_eq!(failures.load(Ordering::Relaxed), 1);
/// ```
pub trait CallObserver: Send + Sync + 'static {
    /// The call ended as `info` says.
    fn done(&self, info: &DoneInfo<'_>);
}

impl<F> CallObserver for F
where
    F: Fn(&DoneInfo<'_>) + Send + Sync + 'static,
{
    fn done(&self, info: &DoneInfo<'_>) {
        self(info)
    }
}

/// Two observers of one pick (a parent policy that observes a child's
/// pick): the child's first.
struct Both(Arc<dyn CallObserver>, Arc<dyn CallObserver>);

impl CallObserver for Both {
    fn done(&self, info: &DoneInfo<'_>) {
        self.0.done(info);
        self.1.done(info);
    }
}

/// A pick's observer, run exactly once: when the call (or its attempt)
/// ends ([`finish`](Completion::finish)), or when the completion is
/// dropped (reported as `CANCELLED`).
pub(crate) struct Completion {
    observer: Option<Arc<dyn CallObserver>>,
    bytes_sent: bool,
    bytes_received: bool,
}

impl Completion {
    pub(crate) const NONE: Completion = Completion {
        observer: None,
        bytes_sent: false,
        bytes_received: false,
    };

    pub(crate) fn has_observer(&self) -> bool {
        self.observer.is_some()
    }

    /// Adds `observer`, after any observer already there.
    pub(crate) fn add(&mut self, observer: Arc<dyn CallObserver>) {
        self.observer = Some(match self.observer.take() {
            None => observer,
            Some(first) => Arc::new(Both(first, observer)),
        });
    }

    /// Records whether the attempt's stream was opened.
    pub(crate) fn set_bytes_sent(&mut self, sent: bool) {
        self.bytes_sent = sent;
    }

    /// Records that response headers arrived (the stream was opened too).
    pub(crate) fn set_bytes_received(&mut self) {
        self.bytes_sent = true;
        self.bytes_received = true;
    }

    /// Ends the call with `code` and `trailers`, if it has not ended yet.
    pub(crate) fn finish(&mut self, code: Code, trailers: &http::HeaderMap) {
        if let Some(observer) = self.observer.take() {
            let info = DoneInfo::new(code, self.bytes_sent, self.bytes_received, trailers);
            observer.done(&info);
        }
    }

    /// Ends the call with `code` and no trailers.
    pub(crate) fn finish_with(&mut self, code: Code) {
        if self.observer.is_some() {
            self.finish(code, &http::HeaderMap::new());
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.finish_with(Code::Cancelled);
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("observer", &self.observer.is_some())
            .field("bytes_sent", &self.bytes_sent)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Log = Arc<Mutex<Vec<(Code, bool, bool)>>>;

    fn recording() -> (Log, Arc<dyn CallObserver>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let observer = {
            let log = log.clone();
            move |info: &DoneInfo<'_>| {
                let entry = (info.code(), info.bytes_sent(), info.bytes_received());
                log.lock().unwrap().push(entry);
            }
        };
        (log, Arc::new(observer))
    }

    #[test]
    fn a_dropped_completion_reports_cancelled_once() {
        let (log, observer) = recording();
        let mut completion = Completion::NONE;
        completion.add(observer);
        completion.set_bytes_sent(true);
        drop(completion);
        assert_eq!(*log.lock().unwrap(), vec![(Code::Cancelled, true, false)]);
    }

    #[test]
    fn a_finished_completion_reports_once_and_not_again_on_drop() {
        let (log, observer) = recording();
        let mut completion = Completion::NONE;
        completion.add(observer);
        completion.set_bytes_received();
        completion.finish_with(Code::Ok);
        completion.finish_with(Code::Internal);
        drop(completion);
        assert_eq!(*log.lock().unwrap(), vec![(Code::Ok, true, true)]);
    }

    #[test]
    fn two_observers_both_hear_the_outcome_child_first() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut completion = Completion::NONE;
        for name in ["child", "parent"] {
            let order = order.clone();
            completion.add(Arc::new(move |_: &DoneInfo<'_>| {
                order.lock().unwrap().push(name)
            }));
        }
        completion.finish_with(Code::Unavailable);
        assert_eq!(*order.lock().unwrap(), vec!["child", "parent"]);
    }
}

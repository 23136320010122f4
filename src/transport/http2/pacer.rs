//! Pacing the RST_STREAMs of cancelled calls, so that a cancellation storm
//! never trips the server's rapid-reset guard (CVE-2023-44487).
//!
//! A server on `h2` (tonic, hyper) counts the streams a client resets
//! before the server *accepted* them (took them off its queue of new
//! streams); past 20 (`max_pending_accept_reset_streams`) it ends the
//! connection with GOAWAY(ENHANCE_YOUR_CALM, "too_many_resets"), failing
//! every call on it. A server that falls behind (a busy thread, a paused
//! process) meets a storm of callers dropping their calls a millisecond
//! after sending them with each stream's HEADERS and RST_STREAM in one
//! read. And a tonic server sets no limit on concurrent streams, so a
//! client that resets streams as fast as it opens them can open them far
//! faster than the server reads them.
//!
//! So a call dropped before its response began resets its stream at once
//! only if the server is known to have read it (see [`Wire`]: the server
//! sent HEADERS on that stream or a later one, or acknowledged a PING
//! written after the stream's HEADERS). Otherwise the stream is *held*: a
//! handle keeps `h2` from resetting it. A held stream is reset
//!
//! - as soon as the server is known to have read it: its responses to
//!   other calls tell, and while streams are held the drive task sends a
//!   PING whenever gRPC servers' ping policies allow one
//!   ([`Wire::ping_is_welcome`]);
//! - or when fewer than [`UNCONFIRMED_BUDGET`] resets of streams not known
//!   to be read went out within the last [`CONFIRM_WINDOW`], lowest stream
//!   first, so the server's count stays at most 10, half its limit.
//!
//! While [`MAX_HELD`] streams are held, new calls on the connection wait to
//! open theirs ([`Cancels::poll_room`]): the client opens streams no faster
//! than the server reads them, and a call cancelled while it waits sends
//! nothing at all. The budget frees up every [`CONFIRM_WINDOW`], so held
//! streams always drain and nothing waits forever.
//!
//! The caller that cancels never waits: dropping the call returns at once.
//! The price is on the server: it reads every stream it is sent and, on
//! `h2`, starts the stream's handler before the RST_STREAM reaches it (in
//! the storm of BENCHMARKS.md, section 4, it started handlers for 99.6 to
//! 99.9 % of the calls, against 90 to 98 % with tonic's `Channel`), and a
//! handler runs until the reset arrives, typically one PING round trip
//! later. A response that ends meanwhile needs no RST_STREAM at all. A call
//! cancelled after its response began is reset at once: the server has
//! read it.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use h2::client::PushPromises;
use tokio::time::{Instant, Sleep};

use super::frames::Wire;

/// At most this many resets of streams the server is not known to have
/// read, per [`CONFIRM_WINDOW`]: half of `h2`'s default limit (20).
pub(crate) const UNCONFIRMED_BUDGET: usize = 10;

/// How long a reset of a stream not known to be read counts against the
/// budget.
pub(crate) const CONFIRM_WINDOW: Duration = Duration::from_secs(1);

/// New streams wait while this many cancelled streams are held.
pub(crate) const MAX_HELD: usize = 32;

/// The cancelled streams calls hand over, for the drive task. A stream is
/// handed over as a handle on it (its push-promise stream, which with push
/// disabled never yields anything): while the handle lives `h2` does not
/// reset the stream; dropping it sends RST_STREAM(CANCEL) if the stream is
/// still open.
pub(crate) struct Cancels {
    wire: Arc<Wire>,
    queue: Mutex<Queue>,
    /// The drive task.
    task: AtomicWaker,
    /// Streams held now (handed over and not reset yet).
    held: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    /// The drive task ended: streams are not held any more.
    closed: bool,
    handed_over: Vec<(u32, PushPromises)>,
    /// Calls waiting to open a stream until fewer are held.
    waiters: Vec<Waker>,
}

impl std::fmt::Debug for Cancels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancels")
            .field("held", &self.held.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Cancels {
    pub(crate) fn new(wire: Arc<Wire>) -> Cancels {
        Cancels {
            wire,
            queue: Mutex::new(Queue::default()),
            task: AtomicWaker::new(),
            held: AtomicUsize::new(0),
        }
    }

    /// Wakes the drive task (a call has news for it).
    pub(crate) fn wake_task(&self) {
        self.task.wake();
    }

    /// Ready when a new stream may be opened: fewer than [`MAX_HELD`]
    /// cancelled streams wait for the server.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.held.load(Ordering::Acquire) < MAX_HELD {
            return Poll::Ready(());
        }
        let Ok(mut queue) = self.queue.lock() else {
            return Poll::Ready(());
        };
        if queue.closed || self.held.load(Ordering::Acquire) < MAX_HELD {
            return Poll::Ready(());
        }
        if !queue.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            queue.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// A call drops `response` (stream `id`) before the response began.
    /// Holds the stream unless the server is known to have read it or the
    /// connection is gone; then the stream is reset as `response` drops.
    pub(crate) fn cancel(&self, id: u32, response: &mut h2::client::ResponseFuture) {
        if self.wire.has_read(id) {
            return;
        }
        let handle = response.push_promises();
        let refused = match self.queue.lock() {
            Ok(mut queue) if !queue.closed => {
                queue.handed_over.push((id, handle));
                self.held.fetch_add(1, Ordering::AcqRel);
                None
            }
            _ => Some(handle),
        };
        match refused {
            // Dropped outside the lock: RST_STREAM now.
            Some(handle) => drop(handle),
            None => self.task.wake(),
        }
    }

    fn take(&self) -> Vec<(u32, PushPromises)> {
        match self.queue.lock() {
            Ok(mut queue) => std::mem::take(&mut queue.handed_over),
            Err(_) => Vec::new(),
        }
    }

    /// `n` held streams were reset (or dropped): wakes the calls waiting
    /// for room.
    fn released(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                Some(h.saturating_sub(n))
            })
            .unwrap_or_default();
        if before.saturating_sub(n) >= MAX_HELD {
            return;
        }
        self.wake_waiters(false);
    }

    /// Wakes every call waiting for room; `close` also refuses new streams
    /// from now on and returns those handed over.
    fn wake_waiters(&self, close: bool) -> Vec<(u32, PushPromises)> {
        let (waiters, handed_over) = match self.queue.lock() {
            Ok(mut queue) => {
                queue.closed |= close;
                let handed_over = if close {
                    std::mem::take(&mut queue.handed_over)
                } else {
                    Vec::new()
                };
                (std::mem::take(&mut queue.waiters), handed_over)
            }
            Err(_) => (Vec::new(), Vec::new()),
        };
        waiters.into_iter().for_each(Waker::wake);
        handed_over
    }
}

/// The drive task's side: decides when each held stream is reset.
#[derive(Debug)]
pub(crate) struct Pacer {
    cancels: Arc<Cancels>,
    held: Held<PushPromises>,
    timer: Pin<Box<Sleep>>,
}

impl Pacer {
    pub(crate) fn new(cancels: Arc<Cancels>) -> Pacer {
        Pacer {
            cancels,
            held: Held::default(),
            timer: Box::pin(tokio::time::sleep(CONFIRM_WINDOW)),
        }
    }

    /// Resets every held stream that may be reset now. Returns whether
    /// streams are still held (a PING would tell which the server read).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        self.cancels.task.register(cx.waker());
        // Registered first: a stream handed over after this check wakes
        // the task again.
        if self.held.is_empty() && self.cancels.held.load(Ordering::Acquire) == 0 {
            return false;
        }
        for (id, handle) in self.cancels.take() {
            self.held.insert(id, handle);
        }
        if self.held.is_empty() {
            return false;
        }
        loop {
            let released = self
                .held
                .release(self.cancels.wire.read_up_to(), Instant::now());
            let n = released.len();
            // Dropped outside any lock: `h2` queues a RST_STREAM(CANCEL) for
            // each stream still open and wakes the connection.
            drop(released);
            self.cancels.released(n);
            let Some(next) = self.held.next_release() else {
                return false;
            };
            self.timer.as_mut().reset(next);
            if self.timer.as_mut().poll(cx).is_pending() {
                return true;
            }
        }
    }

    /// Drops every held stream (the connection is gone) and refuses new
    /// ones.
    pub(crate) fn close(&mut self) {
        let handed_over = self.cancels.wake_waiters(true);
        let n = handed_over.len() + self.held.len();
        drop(handed_over);
        self.held = Held::default();
        self.cancels.released(n);
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Held streams (`K`: the handle that keeps one open) and the budget of
/// resets of streams not known to be read.
#[derive(Debug)]
struct Held<K> {
    streams: BTreeMap<u32, K>,
    /// Streams reset while not known to be read, and when.
    unconfirmed: VecDeque<(u32, Instant)>,
}

impl<K> Default for Held<K> {
    fn default() -> Self {
        Held {
            streams: BTreeMap::new(),
            unconfirmed: VecDeque::new(),
        }
    }
}

impl<K> Held<K> {
    fn insert(&mut self, id: u32, handle: K) {
        self.streams.insert(id, handle);
    }

    fn len(&self) -> usize {
        self.streams.len()
    }

    fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The handles of the streams that may be reset now, given that the
    /// server has read every stream up to `read`.
    fn release(&mut self, read: u32, now: Instant) -> Vec<K> {
        let unread = match read.checked_add(1) {
            Some(first) => self.streams.split_off(&first),
            None => BTreeMap::new(),
        };
        let mut out: Vec<K> = std::mem::replace(&mut self.streams, unread)
            .into_values()
            .collect();
        self.unconfirmed
            .retain(|&(id, at)| id > read && now < at + CONFIRM_WINDOW);
        while self.unconfirmed.len() < UNCONFIRMED_BUDGET {
            let Some((id, handle)) = self.streams.pop_first() else {
                break;
            };
            out.push(handle);
            self.unconfirmed.push_back((id, now));
        }
        out
    }

    /// When the budget frees up, if streams are still held.
    fn next_release(&self) -> Option<Instant> {
        if self.streams.is_empty() {
            return None;
        }
        self.unconfirmed
            .iter()
            .map(|&(_, at)| at + CONFIRM_WINDOW)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Flag(AtomicBool);

    impl futures_util::task::ArcWake for Flag {
        fn wake_by_ref(flag: &Arc<Self>) {
            flag.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn new_streams_wait_while_max_held_streams_wait_and_go_when_one_is_reset() {
        let cancels = Cancels::new(Arc::new(Wire::new()));
        let woken = Arc::new(Flag(AtomicBool::new(false)));
        let waker = futures_util::task::waker(woken.clone());
        let mut cx = Context::from_waker(&waker);
        cancels.held.store(MAX_HELD - 1, Ordering::SeqCst);
        assert!(cancels.poll_room(&mut cx).is_ready());
        cancels.held.store(MAX_HELD, Ordering::SeqCst);
        assert!(cancels.poll_room(&mut cx).is_pending());
        cancels.released(1);
        assert!(woken.0.load(Ordering::SeqCst), "the waiting call is woken");
        assert!(cancels.poll_room(&mut cx).is_ready());
        // A closed connection never makes a call wait.
        cancels.held.store(MAX_HELD, Ordering::SeqCst);
        drop(cancels.wake_waiters(true));
        assert!(cancels.poll_room(&mut cx).is_ready());
    }

    fn held(ids: impl IntoIterator<Item = u32>) -> Held<u32> {
        let mut held = Held::default();
        for id in ids {
            held.insert(id, id);
        }
        held
    }

    #[tokio::test(start_paused = true)]
    async fn streams_the_server_has_read_are_reset_at_once_and_cost_no_budget() {
        let mut held = held((1..=99).step_by(2));
        let now = Instant::now();
        let released = held.release(59, now);
        // 1..=59 are read (30 streams), then the budget's 10 lowest.
        let expected: Vec<u32> = (1..=59).step_by(2).chain((61..=79).step_by(2)).collect();
        assert_eq!(released, expected);
        assert_eq!(held.len(), 10);
        assert!(held.release(59, now).is_empty(), "the budget is spent");
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_ten_unread_streams_are_reset_per_window() {
        let mut held = held((1..=61).step_by(2));
        let start = Instant::now();
        assert_eq!(held.release(0, start).len(), UNCONFIRMED_BUDGET);
        assert_eq!(held.next_release(), Some(start + CONFIRM_WINDOW));
        tokio::time::advance(CONFIRM_WINDOW - Duration::from_millis(1)).await;
        assert!(held.release(0, Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(held.release(0, Instant::now()).len(), UNCONFIRMED_BUDGET);
        assert_eq!(held.len(), 31 - 2 * UNCONFIRMED_BUDGET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_stream_the_server_then_reads_frees_its_budget() {
        let mut held = held((1..=41).step_by(2));
        let now = Instant::now();
        assert_eq!(
            held.release(0, now),
            (1..=19).step_by(2).collect::<Vec<_>>()
        );
        // The server read up to 9: five of the ten unread resets are read.
        assert_eq!(
            held.release(9, now),
            (21..=29).step_by(2).collect::<Vec<_>>()
        );
        assert_eq!(held.len(), 6);
        assert_eq!(held.release(u32::MAX, now).len(), 6);
        assert_eq!(held.next_release(), None);
    }
}

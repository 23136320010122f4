//! What a channel knows, as data: [`ChannelSnapshot`] from
//! [`BalancedChannel::snapshot`](crate::BalancedChannel::snapshot).
//!
//! A snapshot is what an operator asks of a running client: which backends
//! it knows, which are connected, which get the calls and why the last
//! connection failed. It holds the channel's target, policy and
//! connectivity state, the resolver's last update and, per subchannel, its
//! state, the time and error of its last change and its counters. The
//! fields follow gRPC's channelz (`grpc.channelz.v1.SubchannelData`:
//! `calls_started`, `calls_succeeded`, `calls_failed`) and connectivity
//! doc (states spelled `READY`, `TRANSIENT_FAILURE`, ...).
//!
//! **Cost.** The control task counts connection attempts and failures and
//! keeps each subchannel's last change as it delivers state changes, off
//! the request path. A call counts once when it is sent and once when it
//! ends, on relaxed atomics of the subchannel it was sent to, through the
//! pick's completion; the pick itself writes nothing shared. Calls in flight are `started -
//! succeeded - failed`, so they cost no write of their own.
//!
//! **Consistency.** The control task builds the snapshot between two of
//! its events, so states, errors and connection counters are one moment's;
//! call counters are read one by one while calls run, and a snapshot taken
//! under load may be a call or two apart between them.
//!
//! With serde, a snapshot is the snake_case JSON the `client` example
//! prints with `--stats`:
//!
//! ```json
//! {"target":"static:///127.0.0.1:8000","policy":"round_robin","state":"READY",
//!  "resolver":{"updated_unix_ms":1764547200000,"endpoints":1,"error":null},
//!  "subchannels":[{"address":"127.0.0.1:8000","state":"READY",
//!    "last_change_unix_ms":1764547200001,"last_error":null,"calls_started":3,
//!    "calls_succeeded":2,"calls_failed":1,"calls_in_flight":0,
//!    "connection_attempts":1,"connection_failures":0}]}
//! ```

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::metrics::{AttemptRecord, CallRecord};
use crate::{Address, ConnectivityState, Error};

/// A channel's state at one moment. See the [module docs](self).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ChannelSnapshot {
    /// The channel's target, as given.
    pub target: String,
    /// The policy in use (`pick_first`, `round_robin`, ...): the one the
    /// last resolver update selected, else the channel's default.
    pub policy: String,
    /// The channel's connectivity state.
    pub state: ConnectivityState,
    /// The resolver's last update.
    pub resolver: ResolverSnapshot,
    /// Every subchannel the balancer holds, in the order they were made.
    pub subchannels: Vec<SubchannelSnapshot>,
}

/// The resolver's last update, as the channel received it.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct ResolverSnapshot {
    /// When the last update or error arrived (`None`: nothing yet);
    /// serialized as `updated_unix_ms`, milliseconds since the Unix epoch.
    #[serde(rename = "updated_unix_ms", serialize_with = "unix_ms")]
    pub updated: Option<SystemTime>,
    /// How many endpoints the last update had.
    pub endpoints: usize,
    /// The resolver's last error, if it reported one after its last update.
    pub error: Option<String>,
}

/// One subchannel's state and counters.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SubchannelSnapshot {
    /// The backend's address.
    pub address: String,
    /// The state last delivered to the balancer.
    pub state: ConnectivityState,
    /// When that state was delivered (`None`: still the first IDLE);
    /// serialized as `last_change_unix_ms`.
    #[serde(rename = "last_change_unix_ms", serialize_with = "unix_ms")]
    pub last_change: Option<SystemTime>,
    /// The error of the last failed attempt or lost connection.
    pub last_error: Option<String>,
    /// The subchannel's id, from the process-wide counter of channelz ids.
    #[serde(skip)]
    #[cfg_attr(not(feature = "channelz"), allow(dead_code))]
    pub(crate) id: i64,
    /// Calls sent on this subchannel: every attempt counts, also one that
    /// was sent again elsewhere because its connection turned out to be
    /// gone or the server refused its stream (it then counts as failed).
    pub calls_started: u64,
    /// Started calls that ended with status `OK`.
    pub calls_succeeded: u64,
    /// Started calls that ended any other way (a status, an error, a
    /// deadline, a cancellation).
    pub calls_failed: u64,
    /// Started calls not yet ended.
    pub calls_in_flight: u64,
    /// Connection attempts (each time the subchannel went CONNECTING).
    pub connection_attempts: u64,
    /// Attempts that failed (each time it went TRANSIENT_FAILURE).
    pub connection_failures: u64,
}

/// The next id of a channel or subchannel: one process-wide counter, as
/// gRPC's channelz has (ids start at 1; 0 asks channelz for the first page).
pub(crate) fn next_id() -> i64 {
    static NEXT: AtomicI64 = AtomicI64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A subchannel's counters, shared by its handle, the control task and
/// the calls sent on it. Relaxed atomics: each is a count on its own.
#[derive(Debug)]
pub(crate) struct SubchannelStats {
    /// Its channelz id ([`next_id`]), given when the subchannel is made.
    id: i64,
    calls_started: AtomicU64,
    calls_succeeded: AtomicU64,
    calls_failed: AtomicU64,
    connection_attempts: AtomicU64,
    connection_failures: AtomicU64,
    /// Written by the control task only.
    last: Mutex<LastChange>,
}

impl Default for SubchannelStats {
    fn default() -> Self {
        SubchannelStats {
            id: next_id(),
            calls_started: AtomicU64::default(),
            calls_succeeded: AtomicU64::default(),
            calls_failed: AtomicU64::default(),
            connection_attempts: AtomicU64::default(),
            connection_failures: AtomicU64::default(),
            last: Mutex::default(),
        }
    }
}

#[derive(Debug, Default)]
struct LastChange {
    at: Option<SystemTime>,
    error: Option<String>,
}

impl SubchannelStats {
    /// A call (attempt) starts sending on this subchannel.
    pub(crate) fn call_started(&self) {
        self.calls_started.fetch_add(1, Ordering::Relaxed);
    }

    /// A started call ended, with status OK or not.
    pub(crate) fn call_ended(&self, ok: bool) {
        let counter = if ok {
            &self.calls_succeeded
        } else {
            &self.calls_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The control task delivered `state` (with the error that caused it).
    pub(crate) fn state_delivered(&self, state: ConnectivityState, error: Option<&Error>) {
        match state {
            ConnectivityState::Connecting => {
                self.connection_attempts.fetch_add(1, Ordering::Relaxed);
            }
            ConnectivityState::TransientFailure => {
                self.connection_failures.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.at = Some(SystemTime::now());
        if let Some(error) = error {
            last.error = Some(error.to_string());
        }
    }

    pub(crate) fn snapshot(
        &self,
        address: &Address,
        state: ConnectivityState,
    ) -> SubchannelSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (succeeded, failed) = (load(&self.calls_succeeded), load(&self.calls_failed));
        // Ended calls first: a call ending between the loads cannot make
        // the in-flight count negative.
        let started = load(&self.calls_started).max(succeeded + failed);
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        SubchannelSnapshot {
            address: address.addr().to_owned(),
            state,
            last_change: last.at,
            last_error: last.error.clone(),
            id: self.id,
            calls_started: started,
            calls_succeeded: succeeded,
            calls_failed: failed,
            calls_in_flight: started - succeeded - failed,
            connection_attempts: load(&self.connection_attempts),
            connection_failures: load(&self.connection_failures),
        }
    }
}

/// What the channel itself counts of one attempt, reported with the
/// pick's completion (`picker::Completion`): the subchannel's call
/// counters and, with `otel`, gRFC A66's attempt and call records.
pub(crate) struct Tally {
    /// The subchannel the attempt was picked on.
    stats: Option<Arc<SubchannelStats>>,
    /// Its stream opened: counted as started, so its end is counted too.
    started: bool,
    attempt: AttemptRecord,
    /// The call's record, once this attempt's response is the call's.
    call: Option<CallRecord>,
}

impl Tally {
    pub(crate) const NONE: Tally = Tally {
        stats: None,
        started: false,
        attempt: AttemptRecord::NONE,
        call: None,
    };

    /// The attempt goes to the subchannel with these counters.
    pub(crate) fn picked(&mut self, stats: Arc<SubchannelStats>) {
        self.stats = Some(stats);
    }

    /// The attempt starts sending on the subchannel's connection: a call
    /// started there, and gRFC A66's `attempt.started`.
    pub(crate) fn sending(&mut self, attempt: AttemptRecord) {
        if let Some(stats) = &self.stats {
            stats.call_started();
            self.started = true;
        }
        self.attempt = attempt;
    }

    /// `data` (a DATA frame of the response body) arrived on the attempt.
    #[inline]
    pub(crate) fn received(&mut self, data: &[u8]) {
        self.attempt.received(data);
    }

    /// The attempt's response is the call's: the call ends with it.
    pub(crate) fn ends_call(&mut self, call: CallRecord) {
        self.call = Some(call);
    }

    /// The attempt (and the call, if it is the call's) ended with `code`.
    /// Later calls do nothing.
    pub(crate) fn ended(&mut self, code: tonic::Code) {
        if let Some(stats) = self.stats.take() {
            if std::mem::take(&mut self.started) {
                stats.call_ended(code == tonic::Code::Ok);
            }
        }
        self.attempt.ended(code);
        if let Some(mut call) = self.call.take() {
            call.ended(code);
        }
    }
}

impl ResolverSnapshot {
    pub(crate) fn updated(&mut self, endpoints: usize) {
        self.updated = Some(SystemTime::now());
        self.endpoints = endpoints;
        self.error = None;
    }

    pub(crate) fn failed(&mut self, error: &Error) {
        self.updated = Some(SystemTime::now());
        self.error = Some(error.to_string());
    }
}

impl Serialize for ConnectivityState {
    /// As gRPC spells it: `READY`, `TRANSIENT_FAILURE`, ...
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `Some(time)` as milliseconds since the Unix epoch, `None` as null.
fn unix_ms<S: Serializer>(time: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
    let ms = time
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    ms.serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_started_minus_ended_and_never_negative() {
        let stats = SubchannelStats::default();
        for _ in 0..3 {
            stats.call_started();
        }
        stats.call_ended(true);
        stats.call_ended(false);
        let s = stats.snapshot(&Address::new("a:1"), ConnectivityState::Ready);
        assert_eq!(
            (s.calls_started, s.calls_succeeded, s.calls_failed),
            (3, 1, 1)
        );
        assert_eq!(s.calls_in_flight, 1);
        // An end counted before its start was read.
        stats.call_ended(true);
        stats.call_ended(true);
        let s = stats.snapshot(&Address::new("a:1"), ConnectivityState::Ready);
        assert_eq!((s.calls_started, s.calls_in_flight), (4, 0));
    }

    #[test]
    fn serializes_to_the_snake_case_shape_with_grpc_state_names() {
        let stats = SubchannelStats::default();
        stats.state_delivered(ConnectivityState::Connecting, None);
        let refused = Error::new(crate::ErrorKind::Connect, "a:1: refused");
        stats.state_delivered(ConnectivityState::TransientFailure, Some(&refused));
        let snapshot = ChannelSnapshot {
            target: "static:///a:1".into(),
            policy: "pick_first".into(),
            state: ConnectivityState::TransientFailure,
            resolver: ResolverSnapshot::default(),
            subchannels: vec![
                stats.snapshot(&Address::new("a:1"), ConnectivityState::TransientFailure)
            ],
        };
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["state"], "TRANSIENT_FAILURE");
        assert_eq!(json["resolver"]["updated_unix_ms"], serde_json::Value::Null);
        let sc = &json["subchannels"][0];
        assert_eq!(sc["address"], "a:1");
        assert_eq!(sc["state"], "TRANSIENT_FAILURE");
        assert_eq!(sc["connection_attempts"], 1);
        assert_eq!(sc["connection_failures"], 1);
        assert!(sc["last_error"].as_str().unwrap().contains("a:1: refused"));
        assert!(sc["last_change_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
        for key in [
            "calls_started",
            "calls_succeeded",
            "calls_failed",
            "calls_in_flight",
        ] {
            assert_eq!(sc[key], 0, "{key}");
        }
    }
}

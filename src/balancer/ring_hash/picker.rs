//! The ring_hash picker: an immutable snapshot of the endpoints' states
//! over the shared ring.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderName;
use xxhash_rust::xxh64::{xxh64, Xxh64};

use super::ring::Ring;
use super::RequestHash;
use crate::picker::{PickInfo, PickResult, Picker};
use crate::{ConnectivityState, Subchannel};

/// One endpoint as the picker sees it: its child's state and picker, and
/// the subchannel of its first address, which a call connects to wake an
/// IDLE child.
pub(crate) struct EndpointSnapshot {
    pub(crate) subchannel: Subchannel,
    pub(crate) state: ConnectivityState,
    pub(crate) picker: Option<Arc<dyn Picker>>,
}

impl EndpointSnapshot {
    /// A READY child's pick.
    fn pick<'a>(&'a self, info: &PickInfo<'_>) -> PickResult<'a> {
        match &self.picker {
            Some(picker) => picker.pick(info),
            None => PickResult::Queue,
        }
    }
}

pub(crate) struct RingPicker {
    ring: Arc<Ring>,
    endpoints: Box<[EndpointSnapshot]>,
    header: Option<HeaderName>,
    any_connecting: bool,
    /// The state of the random hashes (splitmix64), seeded per picker.
    random: AtomicU64,
    failure: String,
}

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl RingPicker {
    pub(crate) fn new(
        ring: Arc<Ring>,
        endpoints: Vec<EndpointSnapshot>,
        header: Option<HeaderName>,
        seed: u64,
        failure: String,
    ) -> Self {
        let any_connecting = endpoints
            .iter()
            .any(|e| e.state == ConnectivityState::Connecting);
        RingPicker {
            ring,
            endpoints: endpoints.into_boxed_slice(),
            header,
            any_connecting,
            random: AtomicU64::new(seed),
            failure,
        }
    }

    fn random_hash(&self) -> u64 {
        mix(self
            .random
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
    }

    /// The call's hash, and whether it is a random one.
    fn hash(&self, info: &PickInfo<'_>) -> (u64, bool) {
        let from_request = match &self.header {
            Some(name) => header_hash(info.headers(), name),
            None => request_hash(info),
        };
        match from_request {
            Some(hash) => (hash, false),
            None => (self.random_hash(), true),
        }
    }

    /// The endpoint at ring point `point`.
    fn endpoint_at(&self, point: usize) -> Option<&EndpointSnapshot> {
        let points = self.ring.points();
        let p = points.get(point % points.len().max(1))?;
        self.endpoints.get(p.endpoint as usize)
    }

    /// A42/A61: the first endpoint from `start` on that is not in
    /// TRANSIENT_FAILURE decides.
    fn pick_keyed(&self, start: usize, info: &PickInfo<'_>) -> PickResult<'_> {
        for i in 0..self.ring.points().len() {
            let Some(endpoint) = self.endpoint_at(start + i) else {
                break;
            };
            match endpoint.state {
                ConnectivityState::Ready => return endpoint.pick(info),
                ConnectivityState::Connecting => return PickResult::Queue,
                ConnectivityState::Idle => {
                    endpoint.subchannel.connect();
                    return PickResult::Queue;
                }
                ConnectivityState::TransientFailure | ConnectivityState::Shutdown => {}
            }
        }
        PickResult::Fail(tonic::Status::unavailable(self.failure.clone()))
    }

    /// A76: the first READY endpoint from `start` on, starting at most one
    /// connection on the way (none if one is CONNECTING already).
    fn pick_random(&self, start: usize, info: &PickInfo<'_>) -> PickResult<'_> {
        let mut requested = self.any_connecting;
        for i in 0..self.ring.points().len() {
            let Some(endpoint) = self.endpoint_at(start + i) else {
                break;
            };
            match endpoint.state {
                ConnectivityState::Ready => return endpoint.pick(info),
                ConnectivityState::Idle if !requested => {
                    endpoint.subchannel.connect();
                    requested = true;
                }
                _ => {}
            }
        }
        if requested {
            PickResult::Queue
        } else {
            PickResult::Fail(tonic::Status::unavailable(self.failure.clone()))
        }
    }
}

/// xxHash64 of the header's values joined with `,`; `None` without it.
fn header_hash(headers: &http::HeaderMap, name: &HeaderName) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(xxh64(first.as_bytes(), 0));
    };
    let mut hasher = Xxh64::new(0);
    hasher.update(first.as_bytes());
    for value in std::iter::once(second).chain(values) {
        hasher.update(b",");
        hasher.update(value.as_bytes());
    }
    Some(hasher.digest())
}

/// The [`RequestHash`] the caller put in the request's extensions.
fn request_hash(info: &PickInfo<'_>) -> Option<u64> {
    info.extensions().get::<RequestHash>().map(|h| h.0)
}

impl Picker for RingPicker {
    fn pick(&self, info: &PickInfo<'_>) -> PickResult<'_> {
        let (hash, random) = self.hash(info);
        let Some(start) = self.ring.find(hash) else {
            return PickResult::Fail(tonic::Status::unavailable(self.failure.clone()));
        };
        if random {
            self.pick_random(start, info)
        } else {
            self.pick_keyed(start, info)
        }
    }
}

impl fmt::Debug for RingPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingPicker")
            .field("points", &self.ring.points().len())
            .field("endpoints", &self.endpoints.len())
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

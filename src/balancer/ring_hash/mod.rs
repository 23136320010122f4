//! `ring_hash`: consistent hashing, so calls with the same key reach the
//! same backend (gRFC A42, with gRFC A76's request-header hash).
//!
//! **The ring.** Every endpoint gets points on a ring of 64-bit hashes:
//! its `i`-th point is xxHash64 (seed 0) of `"{key}_{i}"`, where the key
//! is the endpoint's `hash_key` (a string in its metadata, A76: e.g.
//! etcd's `{"Addr": ..., "Metadata": {"hash_key": "cache-3"}}`) or else
//! its first address (`host:port`). Weights (the endpoint's `weight`
//! attribute, 1 without one) scale the number of points; the ring has at
//! least `minRingSize` points (as many as the lightest endpoint needs for
//! a whole number of points) and at most `maxRingSize`. A call lands on
//! the first point at or after its hash (binary search, wrapping around),
//! so adding or removing one of n endpoints moves about 1/n of the keys
//! and no others.
//!
//! **The call's hash.** With `requestHashHeader` set, xxHash64 of that
//! request header's value (several values joined with `,`); a call without
//! the header gets a random hash (A76). Without it, the hash a caller put
//! in the request's extensions as a [`RequestHash`] (gRPC's xDS "config
//! selector" hash), else a random one.
//!
//! **Endpoints (A61).** Each endpoint is a pick_first child over all its
//! addresses (in a lazy [`ChildManager`], grpc-go's endpointsharding over
//! `lazy` pick_first children): its happy-eyeballs pass tries them in
//! turn, so a dual-stack host, or an endpoint whose first address is
//! down, keeps serving its keys. Its place on the ring is its `hash_key`
//! or first address, so adding addresses to an endpoint moves no key.
//! Endpoints with the same first address after the first are ignored.
//!
//! **Lazy connections (A42, A61).** A child is IDLE, with no
//! connection, until a call lands on it. `exit_idle` does nothing (as
//! grpc-go's ring_hash `ExitIdle`: connections come from picks and from
//! the children's states), so a new channel stays IDLE until its first
//! call: build it with `build()`, not `connect(timeout)`, whose wait for
//! READY would fail at its deadline. The picker cannot call into
//! the policy, so the policy keeps each endpoint's first-address
//! subchannel as its bell: the picker asks it to connect and queues the
//! call; when that subchannel leaves IDLE the policy starts the child,
//! whose pass begins with that same connection attempt. (That
//! subchannel lives as long as its endpoint, also while the child is
//! connected through another address; an attempt of it still running
//! then may finish and leave a spare connection, reused when the child
//! next starts a pass.) A call whose endpoint is in TRANSIENT_FAILURE
//! goes to the next endpoint on the ring that is not (READY: the
//! child's pick; CONNECTING: queued; IDLE: woken and queued); if every
//! endpoint is in TRANSIENT_FAILURE the call fails with the last
//! connection error. A call with a random hash takes the first READY
//! endpoint from its point on, and wakes at most one endpoint on the
//! way (none when one is already CONNECTING). An endpoint's
//! TRANSIENT_FAILURE is sticky (pick_first's, gRFC A62): after a failed
//! pass its addresses retry on their backoffs and it stays in
//! TRANSIENT_FAILURE until one is READY, so its keys stay with their
//! ring successor until it is back. A child whose READY connection is
//! lost goes IDLE and waits for the next call, which starts a new pass
//! from its first address; if that address is still backing off from an
//! earlier failure (not IDLE, so a call could not wake the child), the
//! policy starts the pass at once.
//!
//! **State (A42).** READY if any endpoint is READY; else TRANSIENT_FAILURE
//! if two or more are; else CONNECTING if any is, or if one is in
//! TRANSIENT_FAILURE and there are others; else IDLE if any is; else
//! TRANSIENT_FAILURE. When no endpoint is READY, some are in
//! TRANSIENT_FAILURE and none is CONNECTING, the policy starts the first
//! IDLE one (in key order) itself, so the channel recovers without waiting
//! for calls (as grpc-go does, only while the state is CONNECTING or
//! TRANSIENT_FAILURE). An endpoint started that way, or one a call with a
//! random hash or a failover woke, stays connected when no key lands on
//! it: e.g. with one key (the `client` example's `--metadata`), killing
//! the backend that has it moves the key to its ring successor, and this
//! rule may also connect another backend, which then shows READY with no
//! calls. That is A42's behaviour, not a leak.
//!
//! **Cost.** A pick is one binary search over the ring (log2 of 4096
//! points is 12 steps), reads of an immutable snapshot and the READY
//! child's pick; it takes no lock and writes nothing shared (a random
//! hash writes one atomic counter). A subchannel event goes to the
//! children that asked for it (O(1)) and the picker is rebuilt once per
//! burst of events (O(endpoints), the ring itself is shared); a resolver
//! update rebuilds the ring only when the keys, weights or ring sizes
//! changed (O(ring size · log)), on the channel's control task: every
//! other event of the channel waits for it. A ring of 8,388,608 points
//! (the largest), on a shared 2-core machine: 0.7 to 0.9 s in a release
//! build at a load of 2.5 (half of it sorting the points; 1.2 to 2.5 s
//! before the points were hashed without allocating), and 17 to 23 s in
//! a debug build at a load of 4 (17 s before: there the unoptimized sort
//! and hashing dominate). Keep `maxRingSize` near the default unless the
//! resolution is needed.
//!
//! **Config** (`{"ring_hash": {...}}` in `loadBalancingConfig`):
//! `minRingSize` (1024), `maxRingSize` (4096), both positive, at most
//! 8,388,608, min ≤ max; `requestHashHeader` (none): a header name, not a
//! `-bin` one. An empty `requestHashHeader` (`""`) is the same as none, as
//! in grpc-go (whose config parsing checks the name only when it is not
//! empty, and whose picker then reads the hash from the call's context):
//! the caller's [`RequestHash`], else a random hash (where grpc-go fails
//! a call that carries no hash).
//!
//! ```
//! # use tonic_balance::balancer::{BalancerBuilder, ring_hash::{RingHashBuilder, RingHashConfig}};
//! let config = RingHashBuilder
//!     .parse_config(&serde_json::json!({"requestHashHeader": "session-id"}))
//!     .unwrap();
//! let parsed = config.get::<RingHashConfig>().unwrap();
//! assert_eq!(parsed.request_hash_header().map(|h| h.as_str()), Some("session-id"));
//! assert_eq!((parsed.min_ring_size(), parsed.max_ring_size()), (1024, 4096));
//! ```

mod picker;
mod ring;

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::time::Instant;

use super::child_manager::endpoint_key;
use super::{
    Balancer, BalancerBuilder, BuildOptions, ChildManager, ChildPickers, Controller, LbConfig,
    LbPolicy, PickFirstBuilder, ReadyChild,
};
use crate::picker::{Picker, QueuePicker};
use crate::resolver::ResolverUpdate;
use crate::subchannel::SubchannelState;
use crate::{ConnectivityState, Endpoint, Error, ErrorKind, Subchannel};
use picker::{EndpointSnapshot, RingPicker};
use ring::{Ring, RingInput};

/// The name of the ring_hash policy.
pub const RING_HASH: &str = "ring_hash";

/// The largest ring A42 allows (`minRingSize` and `maxRingSize` bound).
pub const MAX_RING_SIZE: u64 = 8_388_608;

/// A call's hash for `ring_hash` when the policy has no
/// `requestHashHeader`: put it in the request's extensions
/// (`request.extensions_mut().insert(RequestHash::of("user-42"))`). Calls
/// with the same hash go to the same backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHash(pub u64);

impl RequestHash {
    /// xxHash64 (seed 0) of `key`, as the policy hashes a header value.
    pub fn of(key: impl AsRef<[u8]>) -> Self {
        RequestHash(xxhash_rust::xxh64::xxh64(key.as_ref(), 0))
    }
}

/// `ring_hash`'s parsed config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingHashConfig {
    min_ring_size: u64,
    max_ring_size: u64,
    request_hash_header: Option<HeaderName>,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        RingHashConfig {
            min_ring_size: 1024,
            max_ring_size: 4096,
            request_hash_header: None,
        }
    }
}

impl RingHashConfig {
    /// The fewest points on the ring (`minRingSize`, 1024 by default).
    pub fn min_ring_size(&self) -> u64 {
        self.min_ring_size
    }

    /// The most points on the ring (`maxRingSize`, 4096 by default).
    pub fn max_ring_size(&self) -> u64 {
        self.max_ring_size
    }

    /// The header whose value is hashed (`requestHashHeader`), if any.
    pub fn request_hash_header(&self) -> Option<&HeaderName> {
        self.request_hash_header.as_ref()
    }
}

fn config_error(why: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Config, format!("ring_hash: {why}"))
}

fn ring_size(json: &Value, field: &str, default: u64) -> Result<u64, Error> {
    let Some(value) = json.get(field) else {
        return Ok(default);
    };
    match value.as_u64() {
        Some(n) if (1..=MAX_RING_SIZE).contains(&n) => Ok(n),
        _ => Err(config_error(format_args!(
            "\"{field}\" must be an integer in 1..={MAX_RING_SIZE}, not {value}"
        ))),
    }
}

fn hash_header(json: &Value) -> Result<Option<HeaderName>, Error> {
    let value = match json.get("requestHashHeader") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(other) => {
            return Err(config_error(format_args!(
                "\"requestHashHeader\" must be a string, not {other}"
            )))
        }
    };
    if value.ends_with("-bin") {
        return Err(config_error(format_args!(
            "\"requestHashHeader\" {value:?} is a binary header, which cannot be hashed"
        )));
    }
    HeaderName::from_bytes(value.as_bytes())
        .map(Some)
        .map_err(|_| {
            config_error(format_args!(
                "\"requestHashHeader\" {value:?} is not a valid header name"
            ))
        })
}

/// Builds [`ring_hash`](self) balancers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RingHashBuilder;

impl BalancerBuilder for RingHashBuilder {
    fn name(&self) -> &str {
        RING_HASH
    }

    fn build(&self, options: &BuildOptions) -> Box<dyn Balancer> {
        Box::new(RingHash::with_options(options))
    }

    /// Errors name the field: a ring size of 0 or above 8,388,608, a min
    /// above the max, a `requestHashHeader` that is not a header name or
    /// is a `-bin` one (an empty one is no header, as in grpc-go).
    fn parse_config(&self, json: &Value) -> Result<LbConfig, Error> {
        if !json.is_object() && !json.is_null() {
            return Err(config_error(format_args!(
                "the config must be an object, not {json}"
            )));
        }
        let min_ring_size = ring_size(json, "minRingSize", 1024)?;
        let max_ring_size = ring_size(json, "maxRingSize", 4096)?;
        if min_ring_size > max_ring_size {
            return Err(config_error(format_args!(
                "\"minRingSize\" {min_ring_size} is above \"maxRingSize\" {max_ring_size}"
            )));
        }
        let config = RingHashConfig {
            min_ring_size,
            max_ring_size,
            request_hash_header: hash_header(json)?,
        };
        Ok(LbConfig::new(config, json.clone()))
    }
}

/// One endpoint: its ring key and weight, the key of its pick_first child
/// in the [`ChildManager`], the subchannel of its first address (the
/// picker's way to wake the child, see [`RingHash::wake_children`]) and
/// the child's state.
struct EndpointState {
    key: Arc<str>,
    weight: u32,
    /// The child's key in the manager (the endpoint's addresses).
    child: Box<str>,
    /// The endpoint's first address; a call on an IDLE child connects it.
    subchannel: Subchannel,
    /// That subchannel's state as last delivered.
    wake: ConnectivityState,
    /// The child's state as last published (IDLE until it starts).
    state: ConnectivityState,
}

/// The ring_hash policy; see the [module docs](self).
struct RingHash {
    config: RingHashConfig,
    endpoints: Vec<EndpointState>,
    /// First-address subchannel id -> endpoint index.
    by_subchannel: HashMap<u64, usize>,
    /// One lazy pick_first child per endpoint.
    manager: ChildManager,
    ring: Arc<Ring>,
    /// What `ring` was built from: keys, weights, min and max size.
    ring_of: (Vec<(Arc<str>, u32)>, u64, u64),
    rng: SmallRng,
    last_error: Option<Error>,
    /// An event may have changed a state since the last picker.
    dirty: bool,
}

/// The key an endpoint is placed on the ring by: its `hash_key` metadata
/// (A76), else its first address.
fn hash_key(endpoint: &Endpoint) -> Option<&str> {
    let from_metadata = endpoint
        .attributes()
        .metadata()
        .and_then(|m| m.get("hash_key"))
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty());
    from_metadata.or_else(|| endpoint.addresses().first().map(|a| a.addr()))
}

/// The controller the child manager sees: the channel's, except that its
/// pickers are dropped (ring_hash publishes its own from the children's).
struct Children<'a>(&'a mut dyn Controller);

impl Controller for Children<'_> {
    fn new_subchannel(
        &mut self,
        address: &crate::Address,
    ) -> Result<(Subchannel, SubchannelState), Error> {
        self.0.new_subchannel(address)
    }

    fn update_picker(&mut self, _: ConnectivityState, _: Arc<dyn Picker>) {}

    fn request_resolution(&mut self) {
        self.0.request_resolution();
    }

    fn schedule_work(&mut self, at: Instant) {
        self.0.schedule_work(at);
    }
}

/// The manager's own picker is never used.
struct Unused;

impl ChildPickers for Unused {
    fn build(&mut self, _: &[ReadyChild<'_>]) -> Arc<dyn Picker> {
        Arc::new(QueuePicker)
    }
}

impl RingHash {
    fn with_options(options: &BuildOptions) -> Self {
        let pick_first = LbPolicy::new(Arc::new(PickFirstBuilder), LbConfig::empty());
        RingHash {
            config: RingHashConfig::default(),
            endpoints: Vec::new(),
            by_subchannel: HashMap::new(),
            manager: ChildManager::new(pick_first, options.clone(), Box::new(Unused)).lazy(),
            ring: Arc::default(),
            ring_of: (Vec::new(), 0, 0),
            rng: SmallRng::seed_from_u64(options.seed()),
            last_error: None,
            dirty: false,
        }
    }

    /// Keeps the endpoints still there, makes the new ones (their
    /// first-address subchannels, not connected) and hands the manager
    /// the endpoints kept, one child each (lazy: not connected either).
    fn sync_endpoints(&mut self, update: &ResolverUpdate, ctl: &mut dyn Controller) {
        let mut old: HashMap<Box<str>, EndpointState> = self
            .endpoints
            .drain(..)
            .map(|e| (Box::from(e.subchannel.address().addr()), e))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut kept = Vec::new();
        for endpoint in update.endpoints() {
            let (Some(address), Some(key)) = (endpoint.addresses().first(), hash_key(endpoint))
            else {
                continue;
            };
            if !seen.insert(address.addr()) {
                continue;
            }
            let weight = endpoint.attributes().weight().unwrap_or(1).max(1);
            let (key, child) = (Arc::from(key), endpoint_key(endpoint));
            let entry = match old.remove(address.addr()) {
                Some(kept) => EndpointState {
                    key,
                    weight,
                    child,
                    ..kept
                },
                None => match ctl.new_subchannel(address) {
                    Ok((subchannel, state)) => EndpointState {
                        key,
                        weight,
                        child,
                        subchannel,
                        wake: state.connectivity,
                        state: ConnectivityState::Idle,
                    },
                    Err(error) => {
                        self.last_error = Some(error);
                        continue;
                    }
                },
            };
            self.endpoints.push(entry);
            kept.push(endpoint.clone());
        }
        // The ring's points name endpoints by index: a stable order keeps
        // a ring valid for the same endpoints in another order.
        self.endpoints.sort_by(|a, b| {
            (&a.key, a.subchannel.address().addr()).cmp(&(&b.key, b.subchannel.address().addr()))
        });
        self.by_subchannel = (self.endpoints.iter().enumerate())
            .map(|(i, e)| (e.subchannel.id(), i))
            .collect();
        let update = ResolverUpdate::from_endpoints(kept);
        (self.manager).resolver_update(&update, &LbConfig::empty(), &mut Children(ctl));
    }

    /// Rebuilds the ring if its keys, weights or sizes changed (not for
    /// a new order of the same endpoints).
    fn sync_ring(&mut self) {
        let keys: Vec<(Arc<str>, u32)> = (self.endpoints.iter())
            .map(|e| (e.key.clone(), e.weight))
            .collect();
        let of = (keys, self.config.min_ring_size, self.config.max_ring_size);
        if of == self.ring_of {
            return;
        }
        let inputs: Vec<RingInput<'_>> = (self.endpoints.iter())
            .map(|e| RingInput {
                key: &e.key,
                weight: e.weight,
            })
            .collect();
        self.ring = Arc::new(Ring::new(&inputs, of.1, of.2));
        self.ring_of = of;
    }

    /// Reads each endpoint's state from its child.
    fn read_states(&mut self) {
        for e in &mut self.endpoints {
            e.state = self
                .manager
                .child(&e.child)
                .map_or(ConnectivityState::Idle, |c| c.0);
        }
    }

    /// Starts the children that must leave IDLE: one whose first-address
    /// subchannel left IDLE (a call connected it, or it was already busy
    /// when the child went IDLE, so a call could not), and A42's first
    /// IDLE one when none is READY, some failed and none is CONNECTING
    /// (the channel must not wait for calls to recover).
    fn wake_children(&mut self, ctl: &mut dyn Controller) {
        use ConnectivityState::*;
        self.read_states();
        for e in &self.endpoints {
            if e.state == Idle && !matches!(e.wake, Idle | Shutdown) {
                self.manager.exit_idle_child(&e.child, &mut Children(ctl));
            }
        }
        self.read_states();
        let any = |s| self.endpoints.iter().any(|e: &EndpointState| e.state == s);
        if any(TransientFailure) && !any(Connecting) && !any(Ready) {
            if let Some(e) = self.endpoints.iter().find(|e| e.state == Idle) {
                self.manager.exit_idle_child(&e.child, &mut Children(ctl));
                self.read_states();
            }
        }
    }

    /// A42's aggregation (see the module docs).
    fn aggregate(&self) -> ConnectivityState {
        use ConnectivityState::*;
        let count = |s| self.endpoints.iter().filter(|e| e.state == s).count();
        let (failed, connecting) = (count(TransientFailure), count(Connecting));
        if count(Ready) > 0 {
            Ready
        } else if failed >= 2 {
            TransientFailure
        } else if connecting > 0 || (failed == 1 && self.endpoints.len() > 1) {
            Connecting
        } else if count(Idle) > 0 {
            Idle
        } else {
            TransientFailure
        }
    }

    fn publish(&mut self, ctl: &mut dyn Controller) {
        self.dirty = false;
        self.wake_children(ctl);
        let state = if self.endpoints.is_empty() {
            ConnectivityState::TransientFailure
        } else {
            self.aggregate()
        };
        let failure = match &self.last_error {
            Some(error) => super::failure_message(error),
            None => "no endpoint could be connected".to_owned(),
        };
        let manager = &self.manager;
        let endpoints = (self.endpoints.iter())
            .map(|e| EndpointSnapshot {
                subchannel: e.subchannel.clone(),
                state: e.state,
                picker: manager.child(&e.child).map(|c| c.1.clone()),
            })
            .collect();
        let picker = RingPicker::new(
            self.ring.clone(),
            endpoints,
            self.config.request_hash_header.clone(),
            self.rng.random(),
            format!("ring_hash: {failure}"),
        );
        ctl.update_picker(state, Arc::new(picker));
    }

    /// The picker is rebuilt once per burst of events, in `work`.
    fn mark_dirty(&mut self, ctl: &mut dyn Controller) {
        if !self.dirty {
            self.dirty = true;
            ctl.schedule_work(Instant::now());
        }
    }
}

impl Balancer for RingHash {
    fn resolver_update(
        &mut self,
        update: &ResolverUpdate,
        config: &LbConfig,
        ctl: &mut dyn Controller,
    ) {
        if let Some(config) = config.get::<RingHashConfig>() {
            self.config = config.clone();
        }
        self.sync_endpoints(update, ctl);
        self.sync_ring();
        if self.endpoints.is_empty() {
            // The manager asked for re-resolution.
            self.last_error = Some(super::no_addresses());
        }
        self.publish(ctl);
    }

    fn resolver_error(&mut self, error: &Error, ctl: &mut dyn Controller) {
        self.manager.resolver_error(error, &mut Children(ctl));
        if self.endpoints.is_empty() {
            self.last_error = Some(error.clone());
            self.publish(ctl);
        } else {
            self.mark_dirty(ctl);
        }
    }

    /// Goes to the children that asked for `subchannel`; a first-address
    /// subchannel's state is also kept to wake its child.
    fn subchannel_update(
        &mut self,
        subchannel: &Subchannel,
        state: &SubchannelState,
        ctl: &mut dyn Controller,
    ) {
        if let Some(error) = &state.error {
            self.last_error = Some(error.clone());
        }
        (self.manager).subchannel_update(subchannel, state, &mut Children(ctl));
        if let Some(&i) = self.by_subchannel.get(&subchannel.id()) {
            self.endpoints[i].wake = state.connectivity;
        }
        self.mark_dirty(ctl);
    }

    /// Runs the children's timers (pick_first's happy eyeballs), then
    /// builds the picker.
    fn work(&mut self, ctl: &mut dyn Controller) {
        self.manager.work(&mut Children(ctl));
        self.publish(ctl);
    }
}

#[cfg(test)]
impl RingHash {
    fn new(seed: u64) -> Self {
        let target = "static:///a:1".parse().expect("a valid target");
        RingHash::with_options(&BuildOptions::new(target, seed))
    }
}

#[cfg(test)]
mod tests;

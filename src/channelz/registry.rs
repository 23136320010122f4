//! The process-wide registry of channels built with `.channelz(true)`.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError, Weak};

use crate::channel::Shared;
use crate::stats::next_id;
use crate::BalancedChannel;

/// Channel id -> the channel, ascending by id. Weak: channelz never keeps
/// a channel alive; a channel's [`Registration`] removes its entry.
static CHANNELS: Mutex<BTreeMap<i64, Weak<Shared>>> = Mutex::new(BTreeMap::new());

fn channels() -> MutexGuard<'static, BTreeMap<i64, Weak<Shared>>> {
    CHANNELS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A channel's entry in channelz: made when the channel is built, removed
/// when the channel's shared state (its last handle and call) drops.
#[derive(Debug)]
pub(crate) struct Registration {
    id: i64,
}

impl Registration {
    /// Registers `channel` under a new id.
    pub(crate) fn new(channel: Weak<Shared>) -> Self {
        let id = next_id();
        channels().insert(id, channel);
        Registration { id }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        channels().remove(&self.id);
    }
}

/// The registered channels with ids from `start` on (ascending), live ones
/// only, at most `max + 1` of them (one more tells whether a page ends).
/// Channels are upgraded outside the lock: dropping the last handle of
/// one deregisters it, which takes the lock.
pub(crate) fn from(start: i64, max: usize) -> Vec<(i64, BalancedChannel)> {
    let entries: Vec<(i64, Weak<Shared>)> = channels()
        .range(start..)
        .map(|(id, channel)| (*id, channel.clone()))
        .collect();
    entries
        .iter()
        .filter_map(|(id, channel)| Some((*id, BalancedChannel::upgrade(channel)?)))
        .take(max.saturating_add(1))
        .collect()
}

/// The channel registered as `id`, if it is still there.
pub(crate) fn get(id: i64) -> Option<BalancedChannel> {
    let channel = channels().get(&id)?.clone();
    BalancedChannel::upgrade(&channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_registration_removes_its_entry() {
        let registration = Registration::new(Weak::new());
        let id = registration.id;
        assert!(channels().contains_key(&id));
        drop(registration);
        assert!(!channels().contains_key(&id), "entry {id} leaked");
    }
}

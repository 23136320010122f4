//! A resolver that users drive by hand, for tests and for code that learns
//! addresses its own way (grpc-go's `resolver/manual`).

use std::fmt;
use std::sync::{Arc, Mutex};

use super::{Resolver, ResolverBuilder, ResolverUpdate, UpdateSink};
use crate::{Address, Error, Target};

/// A resolver whose updates you push yourself.
///
/// It is its own builder: hand a clone to a channel builder
/// (`BalancedChannel::builder("manual:///x").resolver_builder(...)`), then
/// call [`update`](Self::update) whenever the set changes. Every channel
/// built from it gets every update; a channel built later starts with the
/// last one.
///
/// ```
/// use tonic_balance::resolver::ManualResolver;
///
/// let manual = ManualResolver::new("manual");
/// manual.update(["127.0.0.1:50051", "127.0.0.1:50052"]);
/// assert_eq!(manual.resolve_now_count(), 0);
/// ```
#[derive(Clone)]
pub struct ManualResolver {
    scheme: Arc<str>,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    last: Option<ResolverUpdate>,
    sinks: Vec<UpdateSink>,
    resolve_now: usize,
}

struct Handle {
    shared: Arc<Mutex<Shared>>,
}

impl ManualResolver {
    /// A manual resolver for `scheme`.
    pub fn new(scheme: &str) -> Self {
        ManualResolver {
            scheme: scheme.to_ascii_lowercase().into(),
            shared: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Pushes a full set of addresses.
    pub fn update<A: Into<Address>>(&self, addresses: impl IntoIterator<Item = A>) {
        let update = ResolverUpdate::new(addresses.into_iter().map(Into::into).collect());
        self.update_state(update);
    }

    /// Pushes a full update (addresses and service config).
    pub fn update_state(&self, update: ResolverUpdate) {
        let mut shared = self.lock();
        shared.sinks.retain(|sink| sink.update(update.clone()));
        shared.last = Some(update);
    }

    /// Reports a resolver error to every channel.
    pub fn report_error(&self, error: Error) {
        self.lock().sinks.retain(|sink| sink.error(error.clone()));
    }

    /// Whether any channel built from this resolver is still running (a
    /// channel's resolver closes when its control task ends).
    pub fn is_in_use(&self) -> bool {
        let mut shared = self.lock();
        shared.sinks.retain(|sink| !sink.is_closed());
        !shared.sinks.is_empty()
    }

    /// How many times channels asked for re-resolution.
    pub fn resolve_now_count(&self) -> usize {
        self.lock().resolve_now
    }
}

impl ResolverBuilder for ManualResolver {
    fn scheme(&self) -> &str {
        &self.scheme
    }

    fn build(&self, _: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        let mut shared = self.lock();
        if let Some(last) = &shared.last {
            sink.update(last.clone());
        }
        shared.sinks.push(sink);
        Ok(Box::new(Handle {
            shared: self.shared.clone(),
        }))
    }
}

impl Resolver for Handle {
    fn resolve_now(&mut self) {
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shared.resolve_now += 1;
    }
}

impl fmt::Debug for ManualResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.lock();
        f.debug_struct("ManualResolver")
            .field("scheme", &self.scheme)
            .field("last", &shared.last)
            .field("channels", &shared.sinks.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_builds_get_the_last_update_and_all_get_new_ones() {
        let manual = ManualResolver::new("m");
        manual.update(["a:1"]);
        let target: Target = "m:///x".parse().unwrap();
        let (sink, mut rx) = UpdateSink::channel();
        let mut handle = manual.build(&target, sink).unwrap();
        let first = rx.recv().await.unwrap().update.unwrap();
        assert_eq!(first.addresses().len(), 1);
        manual.update(["a:1", "b:1"]);
        let second = rx.recv().await.unwrap().update.unwrap();
        assert_eq!(second.addresses().len(), 2);
        handle.resolve_now();
        assert_eq!(manual.resolve_now_count(), 1);
        drop(rx);
        manual.update(["c:1"]);
        assert_eq!(
            manual.lock().sinks.len(),
            0,
            "closed channels are forgotten"
        );
    }
}

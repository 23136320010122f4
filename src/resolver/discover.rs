//! Any resolver as a tower `Discover` stream.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;
use tonic::transport::channel::Change as TonicChange;
use tonic::transport::Endpoint;
use tower::discover::Change;

use super::{builder_for, Resolver, ResolverBuilder, ResolverRegistry, UpdateReceiver, UpdateSink};
use crate::{Address, Error, Target};

/// A resolver's updates as a stream of [`Change`]s, keyed by [`Address`],
/// with a [`tonic::transport::Endpoint`] per address.
///
/// It implements tower's `Discover` (through tower's blanket impl for
/// streams of changes), so it feeds `tower::balance`, and
/// [`feed`](Self::feed) forwards it into the sender of tonic's own
/// `Channel::balance_channel`. Full snapshots are diffed into inserts and
/// removes; a resolver error is logged and changes nothing, so known
/// endpoints are never lost.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tonic::transport::Channel;
/// use tonic_balance::resolver::ResolverDiscover;
///
/// let discover = ResolverDiscover::new("static:///127.0.0.1:50051,127.0.0.1:50052")?;
/// let (channel, tx) = Channel::balance_channel(16);
/// tokio::spawn(discover.feed(tx));
/// // `channel` now balances over whatever the resolver finds.
/// # drop(channel); Ok(()) }
/// ```
pub struct ResolverDiscover {
    _resolver: Box<dyn Resolver>,
    rx: UpdateReceiver,
    known: HashSet<Address>,
    pending: VecDeque<Change<Address, Endpoint>>,
    endpoint: Arc<EndpointFn>,
}

type EndpointFn = dyn Fn(&Address) -> Result<Endpoint, Error> + Send + Sync;

impl ResolverDiscover {
    /// Resolves `target` with the process-wide registry. Must be called in
    /// a tokio runtime.
    pub fn new(target: &str) -> Result<Self, Error> {
        Self::with_registry(target, &ResolverRegistry::global())
    }

    /// Resolves `target` with a registry of your own.
    pub fn with_registry(target: &str, registry: &ResolverRegistry) -> Result<Self, Error> {
        let target = Target::parse(target)?;
        let builder = builder_for(&target, None, registry)?;
        Self::with_builder(&target, builder.as_ref())
    }

    /// Resolves `target` with `builder`.
    pub fn with_builder(target: &Target, builder: &dyn ResolverBuilder) -> Result<Self, Error> {
        let (sink, rx) = UpdateSink::channel();
        let resolver = builder.build(target, sink)?;
        Ok(ResolverDiscover {
            _resolver: resolver,
            rx,
            known: HashSet::new(),
            pending: VecDeque::new(),
            endpoint: Arc::new(default_endpoint),
        })
    }

    /// Sets how an address becomes a tonic `Endpoint` (to add timeouts,
    /// TLS, ...). The default is `http://{addr}`.
    pub fn map_endpoint(
        mut self,
        f: impl Fn(&Address) -> Result<Endpoint, Error> + Send + Sync + 'static,
    ) -> Self {
        self.endpoint = Arc::new(f);
        self
    }

    /// Forwards every change into `tx` (from tonic's
    /// `Channel::balance_channel`, which has its own `Change` type) until
    /// the resolver or the receiver ends.
    pub async fn feed(mut self, tx: mpsc::Sender<TonicChange<Address, Endpoint>>) {
        use futures_util::StreamExt;
        while let Some(change) = self.next().await {
            match change {
                Ok(change) => {
                    let change = match change {
                        Change::Insert(k, v) => TonicChange::Insert(k, v),
                        Change::Remove(k) => TonicChange::Remove(k),
                    };
                    if tx.send(change).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "discover: resolver error"),
            }
        }
    }

    fn apply(&mut self, addresses: &[Address]) {
        let next: HashSet<&Address> = addresses.iter().collect();
        let gone: Vec<Address> = self
            .known
            .iter()
            .filter(|a| !next.contains(a))
            .cloned()
            .collect();
        for address in gone {
            self.known.remove(&address);
            self.pending.push_back(Change::Remove(address));
        }
        for address in addresses {
            if self.known.contains(address) {
                continue;
            }
            match (self.endpoint)(address) {
                Ok(endpoint) => {
                    self.known.insert(address.clone());
                    self.pending
                        .push_back(Change::Insert(address.clone(), endpoint));
                }
                Err(e) => tracing::warn!(%address, error = %e, "discover: skipping address"),
            }
        }
    }
}

fn default_endpoint(address: &Address) -> Result<Endpoint, Error> {
    Endpoint::from_shared(format!("http://{}", address.addr())).map_err(|e| {
        Error::with_source(
            crate::ErrorKind::Resolver,
            format!("{address}: not a valid endpoint"),
            e,
        )
    })
}

impl Stream for ResolverDiscover {
    type Item = Result<Change<Address, Endpoint>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(events)) => {
                    if let Some(update) = events.update {
                        self.apply(update.addresses());
                    }
                    if let Some(e) = events.error {
                        tracing::warn!(error = %e, "discover: keeping the last known endpoints");
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl fmt::Debug for ResolverDiscover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverDiscover")
            .field("known", &self.known)
            .field("pending", &self.pending.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::ManualResolver;
    use futures_util::StreamExt;

    fn describe(change: &Change<Address, Endpoint>) -> String {
        match change {
            Change::Insert(a, _) => format!("+{a}"),
            Change::Remove(a) => format!("-{a}"),
        }
    }

    proptest::proptest! {
        /// Whatever the sequence of snapshots, the changes emitted so far
        /// rebuild exactly the latest snapshot.
        #[test]
        fn changes_always_rebuild_the_latest_snapshot(
            snapshots in proptest::collection::vec(proptest::collection::vec(0u16..40, 0..30), 1..12)
        ) {
            let manual = ManualResolver::new("m");
            let target: Target = "m:///x".parse().unwrap();
            let mut d = ResolverDiscover::with_builder(&target, &manual).unwrap();
            let mut rebuilt = HashSet::new();
            for snapshot in snapshots {
                let addresses: Vec<Address> = snapshot.iter().map(|p| Address::new(format!("127.0.0.1:{}", p + 1))).collect();
                d.apply(&addresses);
                for change in d.pending.drain(..) {
                    match change {
                        Change::Insert(a, _) => proptest::prop_assert!(rebuilt.insert(a), "double insert"),
                        Change::Remove(a) => proptest::prop_assert!(rebuilt.remove(&a), "remove of unknown"),
                    }
                }
                let want: HashSet<Address> = addresses.into_iter().collect();
                proptest::prop_assert_eq!(&rebuilt, &want);
            }
        }
    }

    #[tokio::test]
    async fn snapshots_become_inserts_and_removes() {
        let manual = ManualResolver::new("m");
        let target: Target = "m:///x".parse().unwrap();
        let mut d = ResolverDiscover::with_builder(&target, &manual).unwrap();
        manual.update(["a:1", "b:1"]);
        let mut got = vec![];
        for _ in 0..2 {
            got.push(describe(&d.next().await.unwrap().unwrap()));
        }
        assert_eq!(got, ["+a:1", "+b:1"]);
        manual.report_error(Error::new(crate::ErrorKind::Resolver, "down"));
        manual.update(["b:1", "c:1"]);
        let mut got = vec![];
        for _ in 0..2 {
            got.push(describe(&d.next().await.unwrap().unwrap()));
        }
        assert_eq!(got, ["-a:1", "+c:1"], "the error removed nothing");
    }
}

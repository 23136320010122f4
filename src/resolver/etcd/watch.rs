//! The etcd resolver's task: snapshot, then watch from the snapshot's
//! revision + 1, folding events into the full set (see the parent module's
//! state machine).

use std::convert::Infallible;

use etcd_client::{Client, GetOptions, WatchOptions, WatchResponse};

use super::values::EndpointSet;
use crate::etcd::{call, EtcdRetryConfig, EtcdSource, Retry};
use crate::resolver::{ResolverUpdate, UpdateSink};
use crate::{Address, Error, ErrorKind};

pub(super) struct WatchTask {
    target: String,
    prefix: String,
    source: EtcdSource,
    sink: UpdateSink,
    retry: Retry,
    client: Option<Client>,
    set: EndpointSet,
    /// The last revision folded into `set`; `None` means "read a snapshot".
    revision: Option<i64>,
    pushed: Option<Vec<Address>>,
}

/// What a watch response asks the task to do next.
#[derive(Debug, PartialEq)]
enum Next {
    Continue,
    Snapshot,
}

impl WatchTask {
    pub(super) fn new(
        target: &str,
        prefix: String,
        source: EtcdSource,
        sink: UpdateSink,
        retry: EtcdRetryConfig,
    ) -> Self {
        WatchTask {
            target: target.to_owned(),
            prefix,
            source,
            retry: Retry::new(retry, sink.seed()),
            sink,
            client: None,
            set: EndpointSet::default(),
            revision: None,
            pushed: None,
        }
    }

    /// Runs until the channel is gone (or the task is aborted).
    pub(super) async fn run(mut self) {
        let sink = self.sink.clone();
        tokio::select! {
            _ = sink.closed() => {}
            never = self.serve() => match never {},
        }
        tracing::debug!(target = %self.target, "etcd resolver stops");
    }

    async fn serve(&mut self) -> Infallible {
        loop {
            if let Err(error) = self.session().await {
                let delay = self.retry.next_delay();
                tracing::warn!(target = %self.target, %error, ?delay, "etcd resolver: retrying");
                self.sink.error(error);
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// One watch session: read the prefix if needed, then follow the watch.
    /// `Ok` asks for a new snapshot at once; `Err` for a retry after backoff.
    async fn session(&mut self) -> Result<(), Error> {
        let mut client = self.client().await?;
        if self.revision.is_none() {
            self.snapshot(&mut client).await?;
        }
        let from = self.revision.unwrap_or(0) + 1;
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream = call(
            ErrorKind::Resolver,
            self.retry.request_timeout(),
            || self.describe(&format!("watching from revision {from}")),
            client.watch(self.prefix.as_str(), Some(options)),
        )
        .await?;
        loop {
            let response = stream
                .message()
                .await
                .map_err(|e| {
                    Error::with_source(ErrorKind::Resolver, self.describe("the watch broke"), e)
                })?
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Resolver,
                        self.describe("etcd closed the watch stream"),
                    )
                })?;
            if self.on_response(&response)? == Next::Snapshot {
                return Ok(());
            }
        }
    }

    async fn client(&mut self) -> Result<Client, Error> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = self
            .source
            .connect(self.retry.request_timeout())
            .await
            .map_err(|e| Error::with_source(ErrorKind::Resolver, self.describe("connecting"), e))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Reads every key under the prefix and replaces the set with them.
    async fn snapshot(&mut self, client: &mut Client) -> Result<(), Error> {
        let response = call(
            ErrorKind::Resolver,
            self.retry.request_timeout(),
            || self.describe("reading the prefix"),
            client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        self.set = EndpointSet::from_pairs(response.kvs().iter().map(|kv| (kv.key(), kv.value())));
        self.revision = Some(revision);
        tracing::debug!(target = %self.target, revision, "etcd resolver: read the prefix");
        self.push();
        Ok(())
    }

    fn on_response(&mut self, response: &WatchResponse) -> Result<Next, Error> {
        let seen = self.revision.unwrap_or(0);
        if response.canceled() {
            if response.compact_revision() > 0 {
                tracing::info!(
                    target = %self.target,
                    compacted = response.compact_revision(),
                    seen,
                    "etcd compacted past the watch's revision; reading the prefix again"
                );
                self.revision = None;
                return Ok(Next::Snapshot);
            }
            let why = format!("etcd canceled the watch: {}", response.cancel_reason());
            return Err(Error::new(ErrorKind::Resolver, self.describe(&why)));
        }
        if response.created() {
            self.retry.reset();
            let now = response.header().map_or(0, |h| h.revision());
            if now < seen {
                // Watching from a future revision would miss every event
                // until the store caught up.
                tracing::warn!(target = %self.target, now, seen,
                    "etcd's revision went back (its data was reset); reading the prefix again");
                self.revision = None;
                return Ok(Next::Snapshot);
            }
        }
        let mut changed = false;
        for kv in response.events().iter().filter_map(|event| event.kv()) {
            // A deleted key comes back as a tombstone (key and mod_revision
            // only), so version 0 is a DELETE. Reading it this way avoids
            // `Event::event_type`, which panics on an unknown type.
            changed |= if kv.version() == 0 {
                self.set.delete(kv.key())
            } else {
                self.set.put(kv.key(), kv.value())
            };
            self.revision = Some(self.revision.unwrap_or(0).max(kv.mod_revision()));
        }
        if changed {
            self.push();
        }
        Ok(Next::Continue)
    }

    /// Sends the full set if it differs from the last one sent (weights and
    /// metadata included). The first snapshot is always sent, even empty.
    fn push(&mut self) {
        let addresses = self.set.addresses();
        let same = self.pushed.as_ref().is_some_and(|last| {
            last.len() == addresses.len()
                && last
                    .iter()
                    .zip(&addresses)
                    .all(|(a, b)| a == b && a.attributes() == b.attributes())
        });
        if same {
            return;
        }
        tracing::debug!(target = %self.target, addresses = ?addresses, "etcd resolver: new set");
        self.sink.update(ResolverUpdate::new(addresses.clone()));
        self.pushed = Some(addresses);
    }

    fn describe(&self, what: &str) -> String {
        format!(
            "etcd resolver for {}: {what} (prefix {:?}, {})",
            self.target, self.prefix, self.source
        )
    }
}

//! The connection task of a subchannel with a pool of `n` connections
//! (`connections_per_address(n)`, n > 1).
//!
//! ```text
//!   IDLE --connect()--> CONNECTING: n slots connect, each on its own backoff
//!      any slot READY                  -> READY
//!      every slot failed once, none READY -> TRANSIENT_FAILURE --backoff--> IDLE
//!   READY: a slot whose connection is lost (closed, GOAWAY, keepalive)
//!          reconnects on its own backoff; calls on the other slots go on
//!      the last READY slot lost          -> IDLE (slots stop)
//! ```
//!
//! "Up to n": the pool opens all n connections as soon as the subchannel
//! connects (so a virtual IP's load balancer sees n connections to spread),
//! and at any moment the ones being replaced are missing. A call takes the
//! READY connection with the fewest calls in flight among those below the
//! server's SETTINGS_MAX_CONCURRENT_STREAMS, so a saturated connection is
//! skipped while another has room; when all are at their limit the call
//! waits on the least loaded for a free stream, bounded by its deadline
//! (gRFC A105 instead opens connections on demand up to its maximum; here
//! all n are open from the start).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::connect::{connection_lost, within, ConnectConfig, Lost, StateEvent, Unpublish};
use super::SubchannelShared;
use crate::backoff::Backoff;
use crate::transport::{self, Connection};
use crate::Error;

/// What a slot tells the pool.
enum SlotEvent {
    Ready(usize, Connection),
    Lost(usize, Option<transport::Lost>),
    Failed(usize, Error),
}

/// Connects the pool's `n` slots (`seed`: the subchannel's backoff seed)
/// and serves them until the last READY one is lost; fails (`Err`) when
/// every slot failed once before any was READY.
pub(super) async fn connect(
    link: &Arc<SubchannelShared>,
    config: &Arc<ConnectConfig>,
    events: &mpsc::UnboundedSender<StateEvent>,
    seed: u64,
    n: usize,
) -> Result<Lost, Error> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut slots = JoinSet::new();
    for i in 0..n {
        let seed = seed.wrapping_add(i as u64 + 1);
        slots.spawn(slot(link.clone(), config.clone(), i, seed, tx.clone()));
    }
    drop(tx);
    let _unpublish = Unpublish(link);
    let mut ready: Vec<Option<Connection>> = vec![None; n];
    let mut failed = vec![false; n];
    let mut ready_at: Option<Instant> = None;
    // READY as health checking shows it, from the first READY slot on.
    let health = super::while_ready(link, config, events);
    tokio::pin!(health);
    let outcome = loop {
        let event = tokio::select! {
            biased;
            never = &mut health, if ready_at.is_some() => match never {},
            event = rx.recv() => event,
        };
        match event {
            Some(SlotEvent::Ready(i, connection)) => {
                // READY: the other slots' attempts no longer describe it.
                link.progress.end();
                ready[i] = Some(connection);
                publish(link, &ready);
                if ready_at.is_none() {
                    ready_at = Some(Instant::now());
                }
            }
            Some(SlotEvent::Lost(i, reason)) => {
                ready[i] = None;
                publish(link, &ready);
                if ready.iter().all(Option::is_none) {
                    break Some(connection_lost(link, reason));
                }
            }
            Some(SlotEvent::Failed(i, error)) => {
                failed[i] = true;
                if ready_at.is_none() && failed.iter().all(|f| *f) {
                    break Some(error);
                }
            }
            None => break None,
        }
    };
    slots.abort_all();
    let error = outcome.unwrap_or_else(|| connection_lost(link, None));
    match ready_at {
        // Every connection is gone: IDLE, as for one connection.
        Some(ready_at) => Ok(Lost { ready_at, error }),
        None => Err(error),
    }
}

/// Publishes the READY connections for calls.
fn publish(link: &SubchannelShared, ready: &[Option<Connection>]) {
    let list: Vec<Connection> = ready.iter().flatten().cloned().collect();
    if list.is_empty() {
        link.pool.store(None);
    } else {
        link.pool.store(Some(Arc::new(list)));
    }
}

/// One connection of the pool: connects, serves until lost, and connects
/// again, on its own backoff, until the pool stops it (aborts the task).
async fn slot(
    link: Arc<SubchannelShared>,
    config: Arc<ConnectConfig>,
    i: usize,
    seed: u64,
    events: mpsc::UnboundedSender<SlotEvent>,
) {
    let mut backoff = Backoff::new(config.backoff, seed);
    loop {
        let started = Instant::now();
        let attempt = transport::establish(
            &link.address,
            &link.origin,
            &config.transport,
            &link.progress,
        );
        let wake = match within(&link, &config, backoff.connect_timeout(), attempt).await {
            Ok(mut established) => {
                let open = config.metrics.connected();
                let connection = established.connection.clone();
                if events.send(SlotEvent::Ready(i, connection)).is_err() {
                    return;
                }
                let ready_at = Instant::now();
                let reason = established.lost().await;
                drop(established);
                open.lost(reason.as_ref());
                tracing::debug!(address = %link.address, slot = i, "pooled connection lost");
                if events.send(SlotEvent::Lost(i, reason)).is_err() {
                    return;
                }
                if Instant::now() - ready_at >= backoff.min_success() {
                    backoff.reset();
                    continue;
                }
                started + backoff.next_delay()
            }
            Err(error) => {
                if events.send(SlotEvent::Failed(i, error)).is_err() {
                    return;
                }
                started + backoff.next_delay()
            }
        };
        tokio::time::sleep_until(wake).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Address, ConnectivityState, Subchannel};
    use std::time::Duration;

    fn pooled(n: usize) -> Arc<ConnectConfig> {
        Arc::new(ConnectConfig {
            connections_per_address: n,
            ..ConnectConfig::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_whose_every_connection_fails_is_transient_failure_then_idle_after_backoff() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sc = Subchannel::spawn(1, Address::from(addr), pooled(3), tx).unwrap();
        sc.connect();
        let start = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let event = rx.recv().await.unwrap();
            sc.set_state(event.state.connectivity);
            seen.push((
                event.state.connectivity,
                event.state.error.map(|e| e.to_string()),
            ));
        }
        use ConnectivityState::*;
        let states: Vec<_> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(states, [Connecting, TransientFailure, Idle]);
        let error = seen[1].1.clone().unwrap_or_default();
        assert!(error.contains(&addr.to_string()), "{error}");
        assert!(Instant::now() - start >= Duration::from_millis(800));
        assert!(sc.connection().is_none());
    }

    #[tokio::test]
    async fn a_pool_is_ready_and_publishes_its_n_connections() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut connection = h2::server::handshake(socket).await.unwrap();
                        while let Some(Ok(_)) = connection.accept().await {}
                    });
                }
            });
            let (tx, mut rx) = mpsc::unbounded_channel();
            let sc = Subchannel::spawn(1, Address::from(addr), pooled(3), tx).unwrap();
            sc.connect();
            for want in [ConnectivityState::Connecting, ConnectivityState::Ready] {
                assert_eq!(rx.recv().await.unwrap().state.connectivity, want);
            }
            for _ in 0..200 {
                if sc.inner.link.pool.load().as_deref().map_or(0, Vec::len) == 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let pool = sc.inner.link.pool.load_full().expect("READY connections");
            assert_eq!(pool.len(), 3);
            // Every connection idle: the first; none differs in load.
            assert_eq!(sc.connection().unwrap().in_flight(), 0);
        })
        .await
        .expect("bounded");
    }
}

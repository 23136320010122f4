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

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::connect::{connection_lost, timed_out, ConnectConfig, StateEvent};
use super::{SubchannelShared, SubchannelState};
use crate::backoff::Backoff;
use crate::transport::{self, Connection, Lost};
use crate::{ConnectivityState, Error};

/// What a slot tells the pool.
enum SlotEvent {
    Ready(usize, Connection),
    Lost(usize, Option<Lost>),
    Failed(usize, Error),
}

pub(crate) async fn run(
    link: Arc<SubchannelShared>,
    config: Arc<ConnectConfig>,
    events: mpsc::UnboundedSender<StateEvent>,
    mut shutdown: oneshot::Receiver<()>,
    n: usize,
) {
    let report = |connectivity, error| {
        let state = SubchannelState {
            error,
            ..SubchannelState::new(connectivity)
        };
        let _ = events.send(StateEvent { id: link.id, state });
    };
    let seed = config.rng_seed ^ link.id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut backoff = Backoff::new(config.backoff, seed);
    let mut not_before: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = link.connect.notified() => {}
        }
        if let Some(at) = not_before.take() {
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        report(ConnectivityState::Connecting, None);
        let started = Instant::now();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut slots = JoinSet::new();
        for i in 0..n {
            let seed = seed.wrapping_add(i as u64 + 1);
            slots.spawn(slot(link.clone(), config.clone(), i, seed, tx.clone()));
        }
        drop(tx);
        let mut ready: Vec<Option<Connection>> = vec![None; n];
        let mut failed = vec![false; n];
        let mut ready_at: Option<Instant> = None;
        // READY as health checking shows it, from the first READY slot on.
        let health = super::while_ready(&link, &config, &events);
        tokio::pin!(health);
        let outcome = loop {
            let event = tokio::select! {
                biased;
                _ = &mut shutdown => return,
                never = &mut health, if ready_at.is_some() => match never {},
                event = rx.recv() => event,
            };
            match event {
                Some(SlotEvent::Ready(i, connection)) => {
                    ready[i] = Some(connection);
                    publish(&link, &ready);
                    if ready_at.is_none() {
                        ready_at = Some(Instant::now());
                    }
                }
                Some(SlotEvent::Lost(i, reason)) => {
                    ready[i] = None;
                    publish(&link, &ready);
                    if ready.iter().all(Option::is_none) {
                        break Some(connection_lost(&link, reason));
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
        link.pool.store(None);
        let error = outcome.unwrap_or_else(|| connection_lost(&link, None));
        match ready_at {
            Some(at) => {
                // Every connection is gone: IDLE, as for one connection.
                if Instant::now() - at >= backoff.min_success() {
                    backoff.reset();
                } else {
                    not_before = Some(started + backoff.next_delay());
                }
                report(ConnectivityState::Idle, Some(error));
            }
            None => {
                report(ConnectivityState::TransientFailure, Some(error));
                let wake = started + backoff.next_delay();
                tokio::select! {
                    biased;
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep_until(wake) => {}
                }
                report(ConnectivityState::Idle, None);
            }
        }
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
        let timeout = backoff.connect_timeout();
        let attempt = transport::establish(&link.address, &link.origin, &config.transport);
        let wake = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(mut established)) => {
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
            Ok(Err(error)) => {
                config.metrics.attempt_failed();
                if events.send(SlotEvent::Failed(i, error)).is_err() {
                    return;
                }
                started + backoff.next_delay()
            }
            Err(_) => {
                config.metrics.attempt_failed();
                let error = timed_out(&link, timeout);
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
    use crate::{Address, Subchannel};
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

//! How far a subchannel's connection attempt has got, so that a channel
//! still CONNECTING can say what it waits for (`connecting to
//! 127.0.0.1:50051 for 3.2s: no HTTP/2 SETTINGS from the server yet`).
//! Written a few times per attempt, read only for error messages.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::Address;

/// The step of an attempt not done yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// TCP connect, the unix socket, or the user's connector.
    Dialling,
    /// The TLS handshake (feature `tls`).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Tls,
    /// Waiting for the server's HTTP/2 preface (its SETTINGS frame).
    Settings,
}

/// The current attempt's start and phase; `None` between attempts.
#[derive(Debug, Default)]
pub(crate) struct Progress(Mutex<Option<(Instant, Phase)>>);

impl Progress {
    /// An attempt starts now.
    pub(crate) fn start(&self) {
        *self.lock() = Some((Instant::now(), Phase::Dialling));
    }

    /// The attempt under way reached `phase` (nothing between attempts).
    pub(crate) fn reached(&self, phase: Phase) {
        if let Some((_, current)) = self.lock().as_mut() {
            *current = phase;
        }
    }

    /// The attempt ended: READY, or failed.
    pub(crate) fn end(&self) {
        *self.lock() = None;
    }

    /// `connecting to <address> for <time>: <what is missing>`, while an
    /// attempt is under way.
    pub(crate) fn describe(&self, address: &Address) -> Option<String> {
        let (started, phase) = (*self.lock())?;
        let waited = Duration::from_millis(started.elapsed().as_millis() as u64);
        let missing = match phase {
            Phase::Dialling => "not connected yet",
            Phase::Tls => "the TLS handshake is not done yet",
            Phase::Settings => "no HTTP/2 SETTINGS from the server yet",
        };
        Some(format!("connecting to {address} for {waited:?}: {missing}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Phase)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn describes_the_missing_step_and_how_long_it_has_been_waited_for() {
        let progress = Progress::default();
        let address = Address::new("127.0.0.1:1");
        assert_eq!(progress.describe(&address), None);
        progress.reached(Phase::Settings);
        assert_eq!(progress.describe(&address), None, "no attempt under way");
        progress.start();
        tokio::time::advance(Duration::from_millis(3200)).await;
        assert_eq!(
            progress.describe(&address).as_deref(),
            Some("connecting to 127.0.0.1:1 for 3.2s: not connected yet")
        );
        progress.reached(Phase::Settings);
        let text = progress.describe(&address).unwrap_or_default();
        assert!(
            text.ends_with(": no HTTP/2 SETTINGS from the server yet"),
            "{text}"
        );
        progress.end();
        assert_eq!(progress.describe(&address), None);
    }
}

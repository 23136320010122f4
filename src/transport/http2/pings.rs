//! The connection's PINGs: keepalive (gRFC A8) and the [`pacer`]'s
//! question "how far has the server read?" share `h2`'s one user PING.
//!
//! [`pacer`]: super::pacer

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::frames::Wire;
use super::Keepalive;

/// The connection's PINGs. `h2` has one user PING in flight at a time.
pub(super) struct Pings {
    ping_pong: Option<h2::PingPong>,
    /// A PING awaits its ACK.
    in_flight: bool,
    pub(super) keepalive: Option<Keepalive>,
    /// Keepalive: when the next PING is due, or, while `keepalive_waits`,
    /// the deadline of the ACK.
    timer: Pin<Box<Sleep>>,
    keepalive_waits: bool,
}

impl Pings {
    pub(super) fn new(ping_pong: Option<h2::PingPong>, keepalive: Option<Keepalive>) -> Self {
        let first = keepalive.map_or(Duration::from_secs(3600), |k| k.interval);
        Pings {
            ping_pong,
            in_flight: false,
            keepalive,
            timer: Box::pin(tokio::time::sleep(first)),
            keepalive_waits: false,
        }
    }

    /// Takes the ACK of the PING in flight, if it came.
    pub(super) fn poll_ack(&mut self, cx: &mut Context<'_>, wire: &Wire) {
        let Some(ping_pong) = self.ping_pong.as_mut() else {
            return;
        };
        // An error here is the connection's: it surfaces as its end.
        if self.in_flight && matches!(ping_pong.poll_pong(cx), Poll::Ready(Ok(_))) {
            self.acked(wire);
        }
    }

    fn acked(&mut self, wire: &Wire) {
        self.in_flight = false;
        wire.ping_acked();
        if self.keepalive_waits {
            self.keepalive_waits = false;
            if let Some(k) = self.keepalive {
                self.rearm(k.interval);
            }
        }
    }

    /// Sends a PING unless one is in flight; whether one is in flight now.
    pub(super) fn send(&mut self, cx: &mut Context<'_>, wire: &Wire) -> bool {
        if self.in_flight {
            return true;
        }
        let Some(ping_pong) = self.ping_pong.as_mut() else {
            return false;
        };
        if ping_pong.send_ping(h2::Ping::opaque()).is_err() {
            return false;
        }
        self.in_flight = true;
        // Registers interest in the ACK.
        if let Poll::Ready(Ok(_)) = ping_pong.poll_pong(cx) {
            self.acked(wire);
        }
        self.in_flight
    }

    /// Ready when a keepalive PING went unanswered for the timeout.
    pub(super) fn poll_keepalive(
        &mut self,
        cx: &mut Context<'_>,
        active: bool,
        wire: &Wire,
    ) -> Poll<()> {
        let Some(config) = self.keepalive else {
            return Poll::Pending;
        };
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.keepalive_waits {
                return Poll::Ready(());
            }
            if (active || config.while_idle) && self.send(cx, wire) {
                // A PING in flight (this one, or the pacer's) must be
                // answered within the timeout.
                self.keepalive_waits = true;
                self.rearm(config.timeout);
            } else {
                self.rearm(config.interval);
            }
        }
        Poll::Pending
    }

    fn rearm(&mut self, after: Duration) {
        self.timer
            .as_mut()
            .reset(crate::backoff::deadline(Instant::now(), after));
    }
}

//! gRPC connectivity states, per gRPC's `connectivity-semantics-and-api` doc.
//!
//! A subchannel starts IDLE, goes CONNECTING when asked to connect, then READY
//! or TRANSIENT_FAILURE. A READY connection that is lost goes back to IDLE; a
//! failed attempt waits out its backoff in TRANSIENT_FAILURE and then goes
//! IDLE, and the policy decides whether to connect again. SHUTDOWN is final.
//! A channel's state is its balancer's aggregate of its subchannels' states.

use std::fmt;

/// The connectivity state of a subchannel or a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectivityState {
    /// No connection and no attempt under way.
    Idle,
    /// A connection attempt is under way.
    Connecting,
    /// Connected; RPCs can be sent.
    Ready,
    /// The last attempt failed; waiting out the backoff.
    TransientFailure,
    /// Shut down for good.
    Shutdown,
}

impl ConnectivityState {
    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Idle,
            1 => Self::Connecting,
            2 => Self::Ready,
            3 => Self::TransientFailure,
            _ => Self::Shutdown,
        }
    }
}

impl fmt::Display for ConnectivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Idle => "IDLE",
            Self::Connecting => "CONNECTING",
            Self::Ready => "READY",
            Self::TransientFailure => "TRANSIENT_FAILURE",
            Self::Shutdown => "SHUTDOWN",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectivityState::*;
    use super::*;

    #[test]
    fn round_trips_through_u8() {
        for s in [Idle, Connecting, Ready, TransientFailure, Shutdown] {
            assert_eq!(ConnectivityState::from_u8(s.to_u8()), s);
        }
        assert_eq!(TransientFailure.to_string(), "TRANSIENT_FAILURE");
    }
}

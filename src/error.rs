//! The crate's error type.
//!
//! One opaque [`Error`] with a [`kind`](Error::kind) and `is_*()` questions,
//! so the set of failures can grow without breaking callers (the pattern of
//! hyper-util's client error). Every message says what failed and for which
//! target or address; the underlying cause is chained through
//! [`std::error::Error::source`]. `tonic::Status` appears only at the request
//! edge, in [`BalancedChannel`](crate::BalancedChannel)'s responses.

use std::fmt;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, broadly. Use the `is_*()` methods on [`Error`] to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A target URI could not be parsed.
    InvalidTarget,
    /// No resolver is registered for the target's scheme.
    UnknownScheme,
    /// A resolver failed to produce addresses.
    Resolver,
    /// A connection to a backend could not be made or was lost.
    Connect,
    /// A load-balancing policy or service config was invalid or unknown.
    Config,
    /// The channel (or the component asked) has shut down.
    Closed,
    /// A wait ran out of time.
    Timeout,
    /// Registering an address in a naming service failed.
    Registration,
    /// A backend's connection is up but it is not fit for calls: its
    /// health service (gRPC `health-checking.md`, gRFC A17) reports it
    /// unhealthy or the health stream failed, or outlier detection (gRFC
    /// A50) ejected it.
    Health,
}

/// The error type of tonic-balance: a kind, a message naming what failed, and
/// an optional cause. Cheap to clone.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
    /// A timeout whose channel's last failure was a health check's
    /// (see [`Error::is_health`]).
    health: bool,
}

impl Error {
    /// Creates an error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::build(kind, message.into(), None)
    }

    /// Creates an error of `kind` with a message and an underlying cause.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::build(kind, message.into(), Some(source.into()))
    }

    fn build(kind: ErrorKind, message: String, source: Option<BoxError>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message,
                source,
                health: kind == ErrorKind::Health,
            }),
        }
    }

    /// A [`ErrorKind::Timeout`] that [`is_health`](Self::is_health) too:
    /// the wait ended while the channel's last failure was a health check.
    pub(crate) fn timeout_from_health(message: String) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind: ErrorKind::Timeout,
                message,
                source: None,
                health: true,
            }),
        }
    }

    pub(crate) fn invalid_target(target: &str, why: impl fmt::Display) -> Self {
        Self::new(
            ErrorKind::InvalidTarget,
            format!("invalid target {target:?}: {why}"),
        )
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message without the chain of causes.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// True if a target could not be parsed.
    pub fn is_invalid_target(&self) -> bool {
        self.kind() == ErrorKind::InvalidTarget
    }

    /// True if the target's scheme has no registered resolver.
    pub fn is_unknown_scheme(&self) -> bool {
        self.kind() == ErrorKind::UnknownScheme
    }

    /// True if a resolver failed.
    pub fn is_resolver(&self) -> bool {
        self.kind() == ErrorKind::Resolver
    }

    /// True if connecting to a backend failed.
    pub fn is_connect(&self) -> bool {
        self.kind() == ErrorKind::Connect
    }

    /// True if a policy or service config was rejected.
    pub fn is_config(&self) -> bool {
        self.kind() == ErrorKind::Config
    }

    /// True if the component has shut down.
    pub fn is_closed(&self) -> bool {
        self.kind() == ErrorKind::Closed
    }

    /// True if a wait ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// True if registering an address failed.
    pub fn is_registration(&self) -> bool {
        self.kind() == ErrorKind::Registration
    }

    /// True if a backend was found unhealthy by client-side health checking
    /// or ejected by outlier detection ([`ErrorKind::Health`]); also for
    /// the [`ErrorKind::Timeout`] of
    /// [`wait_until_ready`](crate::BalancedChannel::wait_until_ready) (and
    /// so of [`connect`](crate::BalancedChannelBuilder::connect)) when the
    /// channel's last failure was a health check's (gRPC
    /// `health-checking.md`, gRFC A17): every backend answered NOT_SERVING,
    /// say. Such an error is both [`is_timeout`](Self::is_timeout) and
    /// `is_health`; its message names the health check's reason.
    pub fn is_health(&self) -> bool {
        self.inner.health
    }
}

impl Error {
    /// Whether this error says only that no connection could be opened
    /// (refused, unreachable, no such socket) rather than what went wrong
    /// on one that was: a TLS or HTTP/2 failure on one address tells a
    /// user more than a refusal on another, so a policy keeps the former.
    pub(crate) fn is_unreachable(&self) -> bool {
        use std::io::ErrorKind as Io;
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return matches!(
                    io.kind(),
                    Io::ConnectionRefused
                        | Io::NotFound
                        | Io::AddrNotAvailable
                        | Io::HostUnreachable
                        | Io::NetworkUnreachable
                );
            }
            cause = e.source();
        }
        false
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("source", &self.inner.source)
            .finish()
    }
}

/// Displays the message followed by each cause, `: `-separated, so a single
/// line tells the whole story (e.g. `127.0.0.1:1: connect failed: Connection
/// refused (os error 111)`).
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)?;
        let mut source = self
            .inner
            .source
            .as_deref()
            .map(|s| s as &dyn std::error::Error);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_chains_every_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::with_source(ErrorKind::Connect, "127.0.0.1:1: connect failed", io);
        assert_eq!(err.to_string(), "127.0.0.1:1: connect failed: refused");
        assert!(err.is_connect());
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn clones_share_the_same_error() {
        let err = Error::new(ErrorKind::Config, "unknown policy \"x\"");
        let copy = err.clone();
        assert_eq!(copy.message(), err.message());
        assert!(copy.is_config() && !copy.is_connect());
    }
}

//! Registering an address in etcd under a lease (see the parent module for
//! the state machine).

use std::fmt;
use std::time::Duration;

use etcd_client::Client;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use super::keeper::{Keeper, Reply};
use crate::etcd::{parse_endpoints, EtcdRetryConfig, EtcdSource, Retry};
use crate::host_port::validate_host_port;
use crate::{Error, ErrorKind};

/// How the registered value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    /// The bare `host:port` (the classic `/grpclb/<service>/<addr>` layout).
    Plain,
    /// etcd's Go naming JSON, `{"Op":0,"Addr":"host:port","Metadata":...}`,
    /// which Go clients of `naming/endpoints` read too.
    GoJson,
}

/// What the registration's background task is doing.
#[derive(Debug, Clone)]
pub enum RegistrationStatus {
    /// The key is in etcd under this live lease.
    Registered {
        /// The lease the key is attached to.
        lease_id: i64,
    },
    /// Keeping the lease alive or registering again failed; the task is
    /// retrying with backoff. The key may still be there (the lease lives
    /// for its TTL) or not (the lease is gone and a new one is not granted
    /// yet).
    Retrying {
        /// The last failure.
        error: Error,
    },
    /// Shut down: the lease was revoked (or revoking failed and the lease
    /// expires on its own).
    Stopped,
}

/// A registered address. Dropping it revokes the lease in the background;
/// [`shutdown`](Self::shutdown) revokes and reports the outcome.
pub struct Registration {
    key: String,
    target: String,
    status: watch::Receiver<RegistrationStatus>,
    stop: Option<oneshot::Sender<Reply>>,
}

/// Options for a [`Registration`]; see [`Registration::builder`].
pub struct RegistrationBuilder {
    prefix: String,
    addr: String,
    source: Result<EtcdSource, String>,
    ttl: Duration,
    format: Option<ValueFormat>,
    metadata: Option<Value>,
    retry: EtcdRetryConfig,
}

impl Registration {
    /// Registers `addr` (`host:port`) under `prefix` (a `/` is added if it
    /// does not end with one): the key is `<prefix><addr>`. By default it
    /// talks to etcd at `127.0.0.1:2379` with a 10 s TTL.
    pub fn builder(prefix: impl Into<String>, addr: impl Into<String>) -> RegistrationBuilder {
        RegistrationBuilder {
            prefix: prefix.into(),
            addr: addr.into(),
            source: EtcdSource::from_authority("", None),
            ttl: Duration::from_secs(10),
            format: None,
            metadata: None,
            retry: EtcdRetryConfig::default(),
        }
    }

    /// The etcd key this registration owns.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The target a client resolves this service with, e.g.
    /// `etcd://127.0.0.1:2379//grpclb/simple_grpc` (the authority is empty
    /// when registering through a given client).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Follows the background task (registered, retrying with the last
    /// error, stopped).
    pub fn status(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.clone()
    }

    /// Revokes the lease, so the key is deleted and clients stop calling at
    /// once; returns an error if etcd could not be told (the lease then
    /// expires after its TTL).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let (reply, outcome) = oneshot::channel();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(reply);
        }
        outcome.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Closed,
                format!("registration of {}: its task is gone", self.key),
            ))
        })
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl RegistrationBuilder {
    /// The etcd endpoints, `host:port[,host:port...]`.
    pub fn etcd_endpoints(mut self, endpoints: &str) -> Self {
        self.source = parse_endpoints(endpoints).map(EtcdSource::Endpoints);
        self
    }

    /// Uses this etcd client instead of connecting one.
    pub fn etcd_client(mut self, client: Client) -> Self {
        self.source = Ok(EtcdSource::Client(Box::new(client)));
        self
    }

    /// The lease's time to live, whole seconds, at least 1 s (default 10 s;
    /// etcd may raise it to its minimum). The lease is kept alive every
    /// TTL/3, and a server that dies disappears within about one TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The value format. The default is [`ValueFormat::Plain`] for a prefix
    /// starting with `/` (the classic layout) and [`ValueFormat::GoJson`]
    /// otherwise, or when metadata is set.
    pub fn value_format(mut self, format: ValueFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// Metadata for the Go naming JSON value (a `weight` in it becomes the
    /// address's weight in this crate's resolver).
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// The time limit of each etcd request and the delays before a failed
    /// keep-alive or registration is retried (default:
    /// [`EtcdRetryConfig::default`]: 5 s per request; 100 ms growing x1.6 up
    /// to 5 s).
    pub fn retry(mut self, retry: EtcdRetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Grants a lease and puts the key with it, then keeps the lease alive
    /// in a background task (spawned on the current tokio runtime). Any
    /// failure to register is returned here.
    pub async fn register(self) -> Result<Registration, Error> {
        let (mut keeper, target) = self.into_keeper().await?;
        let lease_id = keeper.grant_and_put().await?;
        keeper.lease = Some(lease_id);
        let (status_tx, status) = watch::channel(RegistrationStatus::Registered { lease_id });
        keeper.status = status_tx;
        let (stop, stop_rx) = oneshot::channel();
        let key = keeper.key.clone();
        tracing::info!(%key, lease_id, "registered in etcd");
        tokio::spawn(keeper.run(stop_rx));
        Ok(Registration {
            key,
            target,
            status,
            stop: Some(stop),
        })
    }

    async fn into_keeper(self) -> Result<(Keeper, String), Error> {
        let invalid = |why: String| {
            Error::new(
                ErrorKind::Registration,
                format!(
                    "cannot register {:?} under {:?}: {why}",
                    self.addr, self.prefix
                ),
            )
        };
        validate_host_port(&self.addr).map_err(invalid)?;
        let service = self.prefix.strip_suffix('/').unwrap_or(&self.prefix);
        if service.trim_matches('/').is_empty() {
            return Err(invalid("the prefix names no service".to_owned()));
        }
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        if ttl < 1 {
            return Err(invalid(format!("the TTL {:?} is under 1 s", self.ttl)));
        }
        self.retry
            .backoff
            .check("etcd registration retry backoff")
            .map_err(|e| invalid(e.to_string()))?;
        let source = self.source.clone().map_err(invalid)?;
        let value = self.value().map_err(invalid)?;
        let target = format!("etcd://{}/{service}", source.authority());
        let retry = Retry::new(self.retry, rand::random());
        let key = format!("{service}/{}", self.addr);
        let client = source.connect(retry.request_timeout()).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Registration,
                format!("{key}: connecting to {source}"),
                e,
            )
        })?;
        let (status, _) = watch::channel(RegistrationStatus::Stopped);
        let keeper = Keeper {
            key,
            value,
            ttl,
            client,
            retry,
            lease: None,
            status,
        };
        Ok((keeper, target))
    }

    fn value(&self) -> Result<String, String> {
        let format =
            self.format
                .unwrap_or(if self.metadata.is_none() && self.prefix.starts_with('/') {
                    ValueFormat::Plain
                } else {
                    ValueFormat::GoJson
                });
        match (format, &self.metadata) {
            (ValueFormat::Plain, None) => Ok(self.addr.clone()),
            (ValueFormat::Plain, Some(_)) => {
                Err("metadata needs ValueFormat::GoJson (a plain value has no room for it)".into())
            }
            (ValueFormat::GoJson, metadata) => {
                Ok(json!({"Op": 0, "Addr": self.addr, "Metadata": metadata}).to_string())
            }
        }
    }
}

impl fmt::Debug for RegistrationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationBuilder")
            .field("prefix", &self.prefix)
            .field("addr", &self.addr)
            .field("etcd", &self.source)
            .field("ttl", &self.ttl)
            .field("format", &self.format)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(builder: RegistrationBuilder) -> Result<String, String> {
        builder.value()
    }

    #[test]
    fn the_classic_layout_writes_plain_values_and_the_go_layout_json() {
        let classic = Registration::builder("/grpclb/simple_grpc/", "127.0.0.1:8000");
        assert_eq!(value_of(classic).unwrap(), "127.0.0.1:8000");
        let go = Registration::builder("foo/bar/svc/", "127.0.0.1:8000");
        let json: Value = serde_json::from_str(&value_of(go).unwrap()).unwrap();
        assert_eq!(
            json,
            json!({"Op": 0, "Addr": "127.0.0.1:8000", "Metadata": null})
        );
    }

    #[test]
    fn metadata_goes_into_go_json_and_is_refused_with_plain_values() {
        let meta = Registration::builder("/grpclb/s/", "h:1").metadata(json!({"weight": 2}));
        let json: Value = serde_json::from_str(&value_of(meta).unwrap()).unwrap();
        assert_eq!(json["Metadata"]["weight"], 2);
        let plain = Registration::builder("/grpclb/s/", "h:1")
            .metadata(json!({"weight": 2}))
            .value_format(ValueFormat::Plain);
        assert!(value_of(plain).unwrap_err().contains("GoJson"));
    }

    #[tokio::test]
    async fn bad_input_is_reported_before_touching_etcd() {
        let cases = [
            (Registration::builder("/grpclb/s/", "nope"), "no port"),
            (Registration::builder("/", "h:1"), "names no service"),
            (
                Registration::builder("/grpclb/s/", "h:1").ttl(Duration::from_millis(500)),
                "under 1 s",
            ),
            (
                Registration::builder("/grpclb/s/", "h:1").etcd_endpoints("127.0.0.1:x"),
                "bad etcd endpoint",
            ),
        ];
        for (builder, want) in cases {
            let err = builder.register().await.unwrap_err();
            assert!(err.is_registration(), "{err}");
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }
}

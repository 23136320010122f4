//! The registration's background task: keeps the lease alive every TTL/3,
//! grants a new lease and puts the key again when the lease is lost, and
//! revokes it when told to stop or when the [`Registration`] is dropped
//! (see the parent module's state machine).
//!
//! [`Registration`]: super::Registration

use std::convert::Infallible;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::sync::{oneshot, watch};

use super::etcd::RegistrationStatus;
use crate::etcd::{call, Retry};
use crate::{Error, ErrorKind};

/// Where the outcome of a requested shutdown goes.
pub(super) type Reply = oneshot::Sender<Result<(), Error>>;

/// The background task's state.
pub(super) struct Keeper {
    pub(super) key: String,
    pub(super) value: String,
    pub(super) ttl: i64,
    pub(super) client: Client,
    pub(super) retry: Retry,
    pub(super) lease: Option<i64>,
    pub(super) status: watch::Sender<RegistrationStatus>,
}

/// Why keeping a lease alive stopped.
enum Ended {
    /// etcd no longer knows the lease: register again at once.
    Lost(Error),
    /// etcd could not be reached or the stream broke: retry after backoff.
    Failed(Error),
}

impl Keeper {
    pub(super) async fn run(mut self, stop: oneshot::Receiver<Reply>) {
        let reply = tokio::select! {
            reply = stop => reply.ok(),
            never = self.maintain() => match never {},
        };
        let result = self.revoke().await;
        self.status.send_replace(RegistrationStatus::Stopped);
        match (reply, result) {
            (Some(reply), result) => drop(reply.send(result)),
            (None, Err(error)) => tracing::warn!(%error, "dropped registration: revoke failed"),
            (None, Ok(())) => tracing::info!(key = %self.key, "dropped registration: revoked"),
        }
    }

    async fn maintain(&mut self) -> Infallible {
        loop {
            let error = match self.lease {
                Some(lease) => match self.keep_alive(lease).await {
                    Ended::Lost(error) => {
                        self.lease = None;
                        self.report(error);
                        continue;
                    }
                    Ended::Failed(error) => error,
                },
                None => match self.grant_and_put().await {
                    Ok(lease_id) => {
                        tracing::info!(key = %self.key, lease_id, "registered in etcd again");
                        self.lease = Some(lease_id);
                        self.on_alive(lease_id);
                        continue;
                    }
                    Err(error) => error,
                },
            };
            self.report(error);
            tokio::time::sleep(self.retry.next_delay()).await;
        }
    }

    /// Keeps `lease` alive every TTL/3 until that fails.
    async fn keep_alive(&mut self, lease: i64) -> Ended {
        let limit = self.retry.request_timeout();
        let opened = tokio::time::timeout(limit, self.client.lease_keep_alive(lease)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => pair,
            // The client's answer when the first keep-alive says TTL 0.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) => {
                return Ended::Lost(self.error(&format!("lease {lease:x} is gone ({why})"), None))
            }
            Ok(Err(e)) => return Ended::Failed(self.error("keeping the lease alive", Some(e))),
            Err(_) => return Ended::Failed(self.error("etcd did not answer a keep-alive", None)),
        };
        self.on_alive(lease);
        let interval = Duration::from_secs(self.ttl.unsigned_abs()) / 3;
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = keeper.keep_alive().await {
                return Ended::Failed(self.error("sending a keep-alive", Some(e)));
            }
            match tokio::time::timeout(limit.min(interval), stream.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => self.on_alive(lease),
                Ok(Ok(Some(_))) => {
                    return Ended::Lost(self.error(&format!("lease {lease:x} expired"), None))
                }
                Ok(Ok(None)) => {
                    return Ended::Failed(self.error("etcd closed the keep-alive stream", None))
                }
                Ok(Err(e)) => return Ended::Failed(self.error("keeping the lease alive", Some(e))),
                Err(_) => {
                    return Ended::Failed(self.error("etcd did not answer a keep-alive", None))
                }
            }
        }
    }

    pub(super) async fn grant_and_put(&mut self) -> Result<i64, Error> {
        let limit = self.retry.request_timeout();
        let key = &self.key;
        let grant = self.client.lease_grant(self.ttl, None);
        let granted = call(
            ErrorKind::Registration,
            limit,
            || format!("{key}: granting a lease"),
            grant,
        )
        .await?;
        let lease = granted.id();
        // etcd may raise the TTL to its minimum; keep alive at its pace.
        self.ttl = granted.ttl().max(1);
        let options = PutOptions::new().with_lease(lease);
        let put = self
            .client
            .put(key.as_str(), self.value.as_str(), Some(options));
        call(
            ErrorKind::Registration,
            limit,
            || format!("{key}: putting the key"),
            put,
        )
        .await?;
        Ok(lease)
    }

    async fn revoke(&mut self) -> Result<(), Error> {
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        let limit = self.retry.request_timeout();
        let key = &self.key;
        let revoke = self.client.lease_revoke(lease);
        match tokio::time::timeout(limit, revoke).await {
            Ok(Ok(_)) => Ok(()),
            // Already gone (expired): so is the key.
            Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() == tonic::Code::NotFound => {
                Ok(())
            }
            Ok(Err(e)) => Err(Error::with_source(
                ErrorKind::Registration,
                format!("{key}: revoking lease {lease:x}"),
                e,
            )),
            Err(_) => Err(Error::new(
                ErrorKind::Registration,
                format!("{key}: revoking lease {lease:x}: etcd did not answer within {limit:?}"),
            )),
        }
    }

    fn on_alive(&mut self, lease_id: i64) {
        self.retry.reset();
        let fresh = !matches!(*self.status.borrow(),
            RegistrationStatus::Registered { lease_id: current } if current == lease_id);
        if fresh {
            self.status
                .send_replace(RegistrationStatus::Registered { lease_id });
        }
    }

    fn report(&mut self, error: Error) {
        tracing::warn!(%error, "etcd registration: retrying");
        self.status
            .send_replace(RegistrationStatus::Retrying { error });
    }

    fn error(&self, what: &str, source: Option<etcd_client::Error>) -> Error {
        let message = format!("{}: {what}", self.key);
        match source {
            Some(e) => Error::with_source(ErrorKind::Registration, message, e),
            None => Error::new(ErrorKind::Registration, message),
        }
    }
}

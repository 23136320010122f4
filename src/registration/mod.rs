//! Registration: the server side of discovery.
//!
//! A server announces its address under a key prefix in etcd, where the
//! [`etcd` resolver](crate::resolver::EtcdResolverBuilder) of every client
//! finds it. The key lives on a lease, so a server that dies without a word
//! disappears when the lease expires; a clean shutdown revokes the lease and
//! clients see the server go at once.
//!
//! ```no_run
//! # async fn run() -> Result<(), tonic_balance::Error> {
//! use std::time::Duration;
//! use tonic_balance::registration::Registration;
//!
//! let registration = Registration::builder("/grpclb/simple_grpc/", "127.0.0.1:8000")
//!     .etcd_endpoints("127.0.0.1:2379")
//!     .ttl(Duration::from_secs(10))
//!     .register()
//!     .await?;
//! // Clients: etcd://127.0.0.1:2379//grpclb/simple_grpc
//! assert_eq!(registration.target(), "etcd://127.0.0.1:2379//grpclb/simple_grpc");
//! // ... serve ...
//! registration.shutdown().await?; // revoke: clients stop calling at once
//! # Ok(()) }
//! ```
//!
//! # State machine
//!
//! [`RegistrationBuilder::register`] grants a lease and puts
//! `<prefix><addr>` with it, reporting any failure to the caller. A
//! background task then keeps the lease alive every TTL/3:
//!
//! ```text
//! REGISTERED ──keep-alive fails (etcd down, stream broken)──▶ RETRYING (backoff) ──▶ REGISTERED
//!      │                                                     (same lease while it lives)
//!      └──lease gone (expired during an outage, etcd's data lost)──▶ grant + put again
//! shutdown() / drop ──▶ revoke the lease ──▶ STOPPED
//! ```
//!
//! The task's state is observable through [`Registration::status`], a
//! `tokio::sync::watch` of [`RegistrationStatus`] that carries the last
//! error while retrying. Dropping a [`Registration`] revokes the lease in
//! the background (best effort: the runtime must still be running);
//! [`Registration::shutdown`] revokes and says whether it worked.

mod etcd;
mod keeper;

pub use crate::etcd::EtcdRetryConfig;
pub use etcd::{Registration, RegistrationBuilder, RegistrationStatus, ValueFormat};

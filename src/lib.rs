//! # tonic-balance
//!
//! Client-side load balancing for [tonic] gRPC clients, built the way gRPC
//! itself does it (grpc-go, grpc-java, C-core): a **resolver** turns a
//! target into addresses, a **balancer** keeps subchannels to them and
//! publishes a **picker**, and every call (not every connection) is routed by
//! the current picker to a **subchannel**, one HTTP/2 connection.
//!
//! ```text
//! target ──▶ Resolver ──full snapshots──▶ control task (Balancer, Subchannels)
//!                                               │ publishes
//!                                               ▼
//!                        call ──▶ Picker (atomic load) ──▶ Subchannel ──▶ backend
//! ```
//!
//! Unlike tonic's `Channel::balance_channel`, a [`BalancedChannel`] applies
//! discovery as it arrives, never routes new calls to a dead connection,
//! fails fast with the reason (or waits, if asked) when nothing is up, and
//! lets you choose and write policies and resolvers.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tonic_balance::BalancedChannel;
//!
//! let channel = BalancedChannel::builder("static:///127.0.0.1:50051,127.0.0.1:50052")
//!     .balancer("round_robin")
//!     .connect(Duration::from_secs(5))
//!     .await?;
//! // Any tonic-generated client takes the channel:
//! // let mut client = my_proto::greeter_client::GreeterClient::new(channel);
//! # drop(channel); Ok(()) }
//! ```
//!
//! The modules follow the pipeline: [`target`], [`resolver`], [`balancer`],
//! [`picker`], [`subchannel`], [`channel`]; [`stats`] is what a channel
//! tells about itself ([`BalancedChannel::snapshot`]).
//!
//! [tonic]: https://docs.rs/tonic

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]

mod address;
pub mod backoff;
pub mod balancer;
pub mod channel;
#[cfg(feature = "channelz")]
pub mod channelz;
mod connectivity;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod host_port;
mod metrics;
pub mod orca;
pub mod picker;
#[cfg(feature = "etcd")]
pub mod registration;
mod registry;
pub mod resolver;
pub mod service_config;
pub mod stats;
pub mod subchannel;
pub mod target;
pub mod transport;

pub use address::{Address, Attributes, Endpoint};
pub use channel::{BalancedChannel, BalancedChannelBuilder, Peer, WaitForReady};
pub use connectivity::ConnectivityState;
pub use error::{Error, ErrorKind};
pub use picker::{PickResult, Picker};
pub use service_config::{MethodConfig, ServiceConfig};
pub use stats::ChannelSnapshot;
pub use subchannel::Subchannel;
pub use target::Target;
#[cfg(feature = "tls")]
pub use transport::ClientTlsConfig;

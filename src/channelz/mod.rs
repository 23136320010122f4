//! gRPC's channelz service (gRFC A14), for the channels of this crate
//! (feature `channelz`).
//!
//! channelz answers "what is this process's gRPC doing?" over gRPC: the
//! service `grpc.channelz.v1.Channelz` lists the channels, each one's
//! target, state and call counts, and its subchannels. Tools such as
//! `grpcdebug` and `grpcurl` read it (see the README). A channel shows up
//! when built with
//! [`.channelz(true)`](crate::BalancedChannelBuilder::channelz) and leaves
//! when its last handle (and call) is dropped; you add [`ChannelzServer`]
//! to your own tonic server:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tonic_balance::channelz::{ChannelzServer, ChannelzService};
//! use tonic_balance::BalancedChannel;
//!
//! let channel = BalancedChannel::builder("static:///127.0.0.1:50051")
//!     .channelz(true)
//!     .build()?;
//! tonic::transport::Server::builder()
//!     .add_service(ChannelzServer::new(ChannelzService::default()))
//!     .serve("127.0.0.1:50100".parse()?)
//!     .await?;
//! # drop(channel); Ok(()) }
//! ```
//!
//! **What it shows.** Everything comes from the channel's
//! [snapshot](crate::BalancedChannel::snapshot) (see [`stats`](crate::stats)),
//! taken by the channel's control task when asked; channelz counts nothing
//! of its own and costs nothing until read.
//! - *Ids*: channels and subchannels take their ids from one process-wide
//!   counter, as gRPC's do, starting at 1. A subchannel has its id from
//!   when it is made, whether or not channelz is on.
//! - *Channel* (`GetTopChannels`, `GetChannel`): the target (also the
//!   ref's name), the connectivity state, and its subchannels as refs named
//!   by address. Its `calls_started`/`succeeded`/`failed` are the sums over
//!   its current subchannels: calls sent to a backend, each attempt once;
//!   a call that failed before a pick, or went to a subchannel since
//!   removed, is not in them.
//! - *Subchannel* (`GetSubchannel`): its address (as `target`), state and
//!   call counters.
//! - Not set: traces, `last_call_started_timestamp` (the request path keeps
//!   no clock reading) and sockets.
//!
//! **Servers and sockets.** This crate is a client: it registers no
//! servers and exposes no sockets, so `GetServers` and `GetServerSockets`
//! answer an empty, final page (`end` set), and `GetServer` and `GetSocket`
//! answer `NOT_FOUND`, as gRPC does for ids it does not know.
//!
//! **Errors.** An unknown channel or subchannel id is `NOT_FOUND`, a
//! negative `max_results` is `INVALID_ARGUMENT`; each message names the id
//! or value.
//!
//! Spec: [gRFC A14](https://github.com/grpc/proposal/blob/master/A14-channelz.md),
//! `proto/grpc/channelz/v1/channelz.proto` (vendored from grpc/grpc-proto).

mod registry;
mod service;

pub(crate) use registry::Registration;
pub use service::ChannelzService;

pub use proto::channelz_server::ChannelzServer;

/// The generated `grpc.channelz.v1` messages, client and server (the
/// client without `connect`: give it any channel, e.g.
/// `ChannelzClient::new(tonic_channel)`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/grpc.channelz.v1.rs"));
}

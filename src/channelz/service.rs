//! [`ChannelzService`]: `grpc.channelz.v1.Channelz` over the registry.

use futures_util::future::join_all;
use tonic::{Request, Response, Status};

use super::proto::channel_connectivity_state::State;
use super::proto::channelz_server::Channelz;
use super::proto::{
    Channel, ChannelConnectivityState, ChannelData, ChannelRef, GetChannelRequest,
    GetChannelResponse, GetServerRequest, GetServerResponse, GetServerSocketsRequest,
    GetServerSocketsResponse, GetServersRequest, GetServersResponse, GetSocketRequest,
    GetSocketResponse, GetSubchannelRequest, GetSubchannelResponse, GetTopChannelsRequest,
    GetTopChannelsResponse, Subchannel, SubchannelRef,
};
use super::registry;
use crate::stats::{ChannelSnapshot, SubchannelSnapshot};
use crate::{BalancedChannel, ConnectivityState};

/// The page size when a request's `max_results` is 0, as grpc-go's.
const DEFAULT_PAGE: usize = 100;

/// The `grpc.channelz.v1.Channelz` service over this process's channels:
/// serve it as `ChannelzServer::new(ChannelzService::default())`. See the
/// [module docs](super) for what each method answers.
#[derive(Debug, Clone, Default)]
pub struct ChannelzService {
    _private: (),
}

#[tonic::async_trait]
impl Channelz for ChannelzService {
    async fn get_top_channels(
        &self,
        request: Request<GetTopChannelsRequest>,
    ) -> Result<Response<GetTopChannelsResponse>, Status> {
        let request = request.into_inner();
        let max = page_size(request.max_results)?;
        let mut page = registry::from(request.start_channel_id, max);
        let end = page.len() <= max;
        page.truncate(max);
        let channel = join_all(page.iter().map(|(id, channel)| describe(*id, channel))).await;
        Ok(Response::new(GetTopChannelsResponse { channel, end }))
    }

    async fn get_channel(
        &self,
        request: Request<GetChannelRequest>,
    ) -> Result<Response<GetChannelResponse>, Status> {
        let id = request.into_inner().channel_id;
        let channel = registry::get(id)
            .ok_or_else(|| Status::not_found(format!("channelz: no channel with id {id}")))?;
        Ok(Response::new(GetChannelResponse {
            channel: Some(describe(id, &channel).await),
        }))
    }

    async fn get_subchannel(
        &self,
        request: Request<GetSubchannelRequest>,
    ) -> Result<Response<GetSubchannelResponse>, Status> {
        let id = request.into_inner().subchannel_id;
        // Few channels, read rarely: ask each for its snapshot.
        for (_, channel) in registry::from(0, usize::MAX) {
            let snapshot = channel.snapshot().await;
            if let Some(subchannel) = snapshot.subchannels.iter().find(|s| s.id == id) {
                return Ok(Response::new(GetSubchannelResponse {
                    subchannel: Some(subchannel_message(subchannel)),
                }));
            }
        }
        Err(Status::not_found(format!(
            "channelz: no subchannel with id {id}"
        )))
    }

    async fn get_servers(
        &self,
        request: Request<GetServersRequest>,
    ) -> Result<Response<GetServersResponse>, Status> {
        page_size(request.into_inner().max_results)?;
        Ok(Response::new(GetServersResponse {
            server: Vec::new(),
            end: true,
        }))
    }

    async fn get_server(
        &self,
        request: Request<GetServerRequest>,
    ) -> Result<Response<GetServerResponse>, Status> {
        let id = request.into_inner().server_id;
        Err(Status::not_found(format!(
            "channelz: no server with id {id} (tonic-balance registers channels only)"
        )))
    }

    async fn get_server_sockets(
        &self,
        request: Request<GetServerSocketsRequest>,
    ) -> Result<Response<GetServerSocketsResponse>, Status> {
        page_size(request.into_inner().max_results)?;
        Ok(Response::new(GetServerSocketsResponse {
            socket_ref: Vec::new(),
            end: true,
        }))
    }

    async fn get_socket(
        &self,
        request: Request<GetSocketRequest>,
    ) -> Result<Response<GetSocketResponse>, Status> {
        let id = request.into_inner().socket_id;
        Err(Status::not_found(format!(
            "channelz: no socket with id {id} (tonic-balance exposes no sockets)"
        )))
    }
}

/// `max_results` as a page size: 0 is the default, negative is an error.
fn page_size(max_results: i64) -> Result<usize, Status> {
    match usize::try_from(max_results) {
        Ok(0) => Ok(DEFAULT_PAGE),
        Ok(max) => Ok(max),
        Err(_) => Err(Status::invalid_argument(format!(
            "channelz: max_results must not be negative, got {max_results}"
        ))),
    }
}

/// The channel registered as `id`, from its snapshot.
async fn describe(id: i64, channel: &BalancedChannel) -> Channel {
    channel_message(id, &channel.snapshot().await)
}

fn channel_message(id: i64, snapshot: &ChannelSnapshot) -> Channel {
    let sum = |count: fn(&SubchannelSnapshot) -> u64| {
        count_of(snapshot.subchannels.iter().map(count).sum())
    };
    Channel {
        r#ref: Some(ChannelRef {
            channel_id: id,
            name: snapshot.target.clone(),
        }),
        data: Some(ChannelData {
            state: Some(state_message(snapshot.state)),
            target: snapshot.target.clone(),
            calls_started: sum(|s| s.calls_started),
            calls_succeeded: sum(|s| s.calls_succeeded),
            calls_failed: sum(|s| s.calls_failed),
            ..Default::default()
        }),
        subchannel_ref: snapshot
            .subchannels
            .iter()
            .map(|s| SubchannelRef {
                subchannel_id: s.id,
                name: s.address.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

fn subchannel_message(snapshot: &SubchannelSnapshot) -> Subchannel {
    Subchannel {
        r#ref: Some(SubchannelRef {
            subchannel_id: snapshot.id,
            name: snapshot.address.clone(),
        }),
        data: Some(ChannelData {
            state: Some(state_message(snapshot.state)),
            target: snapshot.address.clone(),
            calls_started: count_of(snapshot.calls_started),
            calls_succeeded: count_of(snapshot.calls_succeeded),
            calls_failed: count_of(snapshot.calls_failed),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn state_message(state: ConnectivityState) -> ChannelConnectivityState {
    let state = match state {
        ConnectivityState::Idle => State::Idle,
        ConnectivityState::Connecting => State::Connecting,
        ConnectivityState::Ready => State::Ready,
        ConnectivityState::TransientFailure => State::TransientFailure,
        ConnectivityState::Shutdown => State::Shutdown,
    };
    ChannelConnectivityState {
        state: state.into(),
    }
}

/// A counter as channelz's `int64` (saturating: never negative).
fn count_of(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_zero_and_rejects_negative() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE);
        assert_eq!(page_size(3).unwrap(), 3);
        let error = page_size(-1).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("-1"), "{}", error.message());
    }
}

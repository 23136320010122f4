//! gRPC's channelz service (feature `channelz`): channels to real tonic
//! backends on 127.0.0.1, built with `.channelz(true)`, read through a
//! tonic server on 127.0.0.1 with the generated `ChannelzClient`.
//!
//! The registry is process-wide and these tests run at once: each finds
//! its own channels by their target (unique: it names their backends'
//! ports) or id, never assumes it is alone.

mod support;

use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::{route, Backend};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel as TonicChannel, Endpoint, Server};
use tonic::Code;
use tonic_balance::channelz::proto::channel_connectivity_state::State;
use tonic_balance::channelz::proto::channelz_client::ChannelzClient;
use tonic_balance::channelz::proto::{
    Channel, GetChannelRequest, GetServerRequest, GetServerSocketsRequest, GetServersRequest,
    GetSocketRequest, GetSubchannelRequest, GetTopChannelsRequest, GetTopChannelsResponse,
};
use tonic_balance::channelz::{ChannelzServer, ChannelzService};
use tonic_balance::BalancedChannel;

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Serves channelz on a free port of 127.0.0.1 and connects a client.
async fn channelz() -> ChannelzClient<TonicChannel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ChannelzServer::new(ChannelzService::default());
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ChannelzClient::new(channel)
}

async fn top_channels(
    client: &mut ChannelzClient<TonicChannel>,
    start_channel_id: i64,
    max_results: i64,
) -> GetTopChannelsResponse {
    let request = GetTopChannelsRequest {
        start_channel_id,
        max_results,
    };
    client.get_top_channels(request).await.unwrap().into_inner()
}

/// The listed channels with `target` (every page).
async fn listed(client: &mut ChannelzClient<TonicChannel>, target: &str) -> Vec<Channel> {
    let mut found = Vec::new();
    let mut start = 0;
    // Bounded: a page per 100 channels, and a test makes a handful.
    for _ in 0..100 {
        let page = top_channels(client, start, 0).await;
        if let Some(last) = page.channel.last() {
            start = last.r#ref.as_ref().unwrap().channel_id + 1;
        }
        let ours = page.channel.into_iter().filter(|c| {
            let data = c.data.as_ref().unwrap();
            data.target == target
        });
        found.extend(ours);
        if page.end {
            return found;
        }
    }
    panic!("channelz never ended its pages");
}

fn id_of(channel: &Channel) -> i64 {
    channel.r#ref.as_ref().unwrap().channel_id
}

async fn channel_to(target: &str, channelz: bool) -> BalancedChannel {
    BalancedChannel::builder(target)
        .balancer("round_robin")
        .channelz(channelz)
        .connect(Duration::from_secs(10))
        .await
        .unwrap()
}

#[tokio::test]
async fn channelz_shows_the_channels_target_state_subchannels_and_call_counts() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backends = [Backend::start(), Backend::start()];
        let target = format!("static:///{},{}", backends[0].addr, backends[1].addr);
        let channel = channel_to(&target, true).await;
        let mut client = SimpleClient::new(channel.clone());
        for i in 0..6 {
            route(&mut client, &format!("call {i}")).await.unwrap();
        }
        for _ in 0..2 {
            let status = route(&mut client, "fail:5").await.unwrap_err();
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
        }
        let mut channelz = channelz().await;

        let listed = listed(&mut channelz, &target).await;
        assert_eq!(listed.len(), 1, "{listed:?}");
        let id = id_of(&listed[0]);
        let request = GetChannelRequest { channel_id: id };
        let got = channelz.get_channel(request).await.unwrap().into_inner();
        let got = got.channel.unwrap();
        assert_eq!(got, listed[0], "GetChannel answers as GetTopChannels");
        assert_eq!(got.r#ref.as_ref().unwrap().name, target);
        let data = got.data.as_ref().unwrap();
        assert_eq!(data.state.unwrap().state(), State::Ready);
        assert_eq!(data.target, target);
        assert_eq!(
            (data.calls_started, data.calls_succeeded, data.calls_failed),
            (8, 6, 2)
        );

        let mut addresses: Vec<String> =
            got.subchannel_ref.iter().map(|r| r.name.clone()).collect();
        addresses.sort();
        let mut expected: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
        expected.sort();
        assert_eq!(addresses, expected);
        for subchannel_ref in &got.subchannel_ref {
            let request = GetSubchannelRequest {
                subchannel_id: subchannel_ref.subchannel_id,
            };
            let subchannel = channelz.get_subchannel(request).await.unwrap().into_inner();
            let subchannel = subchannel.subchannel.unwrap();
            assert_eq!(subchannel.r#ref.as_ref(), Some(subchannel_ref));
            let data = subchannel.data.unwrap();
            assert_eq!(data.target, subchannel_ref.name, "the subchannel's address");
            assert_eq!(data.state.unwrap().state(), State::Ready);
            let backend = backends
                .iter()
                .find(|b| b.addr.to_string() == data.target)
                .unwrap();
            let served = backend
                .stats
                .calls
                .load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(data.calls_started, served as i64, "{}", data.target);
            assert_eq!(data.calls_started, data.calls_succeeded + data.calls_failed);
        }
        drop((client, channel));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_dropped_channel_leaves_channelz_and_one_built_without_it_never_joins() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let target = format!("static:///{}", backend.addr);
        let channel = channel_to(&target, true).await;
        let other = Backend::start();
        let unlisted_target = format!("static:///{}", other.addr);
        let unlisted = channel_to(&unlisted_target, false).await;
        let mut channelz = channelz().await;

        let found = listed(&mut channelz, &target).await;
        assert_eq!(found.len(), 1, "{found:?}");
        let id = id_of(&found[0]);
        assert!(listed(&mut channelz, &unlisted_target).await.is_empty());

        drop(channel);
        // The registry is the process's: a channelz request of another test
        // running in parallel lists every channel, this one too, and holds
        // it until that request is answered. So the entry goes when the last
        // holder lets go, which is at most a few requests later.
        let mut gone = false;
        for _ in 0..200 {
            if listed(&mut channelz, &target).await.is_empty() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(gone, "a dropped channel stayed in channelz");
        let status = channelz
            .get_channel(GetChannelRequest { channel_id: id })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains(&id.to_string()), "{status:?}");
        drop(unlisted);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn top_channels_pages_from_start_channel_id_by_max_results() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let mut channels = Vec::new();
        let mut channelz = channelz().await;
        let mut ids = Vec::new();
        for i in 0..3 {
            // Three targets, unique to this test by the backend's port;
            // the channels need not connect to be listed.
            let target = format!("static:///{},127.0.0.1:{}", backend.addr, 1 + i);
            channels.push(
                BalancedChannel::builder(&target)
                    .channelz(true)
                    .build()
                    .unwrap(),
            );
            let found = listed(&mut channelz, &target).await;
            assert_eq!(found.len(), 1, "{found:?}");
            ids.push(id_of(&found[0]));
        }
        assert!(ids.is_sorted(), "ids grow: {ids:?}");

        let page = top_channels(&mut channelz, ids[0], 1).await;
        let page_ids: Vec<i64> = page.channel.iter().map(id_of).collect();
        assert_eq!(page_ids, [ids[0]], "max_results 1 from the first id");
        assert!(!page.end, "two more channels follow");

        let page = top_channels(&mut channelz, ids[0] + 1, 100).await;
        let page_ids: Vec<i64> = page.channel.iter().map(id_of).collect();
        assert!(page_ids.contains(&ids[1]) && page_ids.contains(&ids[2]));
        assert!(!page_ids.contains(&ids[0]), "below start_channel_id");
        assert!(page_ids.is_sorted(), "ascending ids: {page_ids:?}");

        let page = top_channels(&mut channelz, i64::MAX, 0).await;
        assert!(page.channel.is_empty() && page.end);
        drop(channels);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn servers_and_sockets_are_empty_or_not_found_and_bad_requests_say_why() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut channelz = channelz().await;
        let servers = channelz
            .get_servers(GetServersRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(servers.server.is_empty() && servers.end);
        let sockets = channelz
            .get_server_sockets(GetServerSocketsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(sockets.socket_ref.is_empty() && sockets.end);

        let unknown = i64::MAX;
        let not_found = [
            channelz
                .get_server(GetServerRequest { server_id: unknown })
                .await
                .unwrap_err(),
            channelz
                .get_socket(GetSocketRequest {
                    socket_id: unknown,
                    summary: false,
                })
                .await
                .unwrap_err(),
            channelz
                .get_channel(GetChannelRequest {
                    channel_id: unknown,
                })
                .await
                .unwrap_err(),
            channelz
                .get_subchannel(GetSubchannelRequest {
                    subchannel_id: unknown,
                })
                .await
                .unwrap_err(),
        ];
        for status in not_found {
            assert_eq!(status.code(), Code::NotFound, "{status:?}");
            assert!(
                status.message().contains(&unknown.to_string()),
                "{status:?}"
            );
        }

        let request = GetTopChannelsRequest {
            start_channel_id: 0,
            max_results: -1,
        };
        let status = channelz.get_top_channels(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("-1"), "{status:?}");
    })
    .await
    .unwrap();
}

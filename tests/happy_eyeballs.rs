//! pick_first's happy eyeballs (gRFC A61) against real servers on
//! 127.0.0.1: a peer that accepts TCP and never speaks HTTP/2 must not hold
//! the pass for the 20 s minimum connect timeout; 250 ms after its attempt
//! started, the next address is tried too, and the first READY one wins.
//!
//! These run on the real clock on purpose: a paused clock would advance
//! through the 20 s connect timeout while the runtime waits on sockets, so
//! the old, serial pass would pass them too. Each call has a 5 s deadline,
//! far below that timeout; nothing asserts how long anything took.

mod support;

use std::time::Duration;

use support::h2server::{Behaviour, H2Server};
use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{eventually, route, Backend};
use tonic_balance::{BalancedChannel, ConnectivityState, Peer};

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// One call with a 5 s deadline; the address that served it.
async fn call_with_deadline(client: &mut SimpleClient<BalancedChannel>) -> String {
    let mut request = tonic::Request::new(SimpleRequest { data: "hi".into() });
    request.set_timeout(Duration::from_secs(5));
    let response = client
        .route(request)
        .await
        .expect("served within the call's 5 s deadline");
    response
        .extensions()
        .get::<Peer>()
        .map(|p| p.address().to_string())
        .expect("the response names its peer")
}

#[tokio::test]
async fn a_silent_first_address_does_not_hold_calls_for_the_connect_timeout() {
    tokio::time::timeout(TEST_LIMIT, async {
        let silent = H2Server::start(Behaviour::Silent).await;
        let backend = Backend::start();
        // Default policy (pick_first) and default backoff: the attempt to
        // the silent peer would only time out after 20 s.
        let target = format!("static:///{},{}", silent.addr, backend.addr);
        let channel = BalancedChannel::builder(target).build().unwrap();
        let mut client = SimpleClient::new(channel.clone());

        assert_eq!(
            call_with_deadline(&mut client).await,
            backend.addr.to_string()
        );
        assert_eq!(silent.connections(), 1, "the first address was tried first");
        assert_eq!(channel.state(), ConnectivityState::Ready);
        // The attempt still in flight to the silent peer is released once
        // the second address is READY: the client closes that socket.
        assert!(eventually(Duration::from_secs(5), || silent.closed() == 1).await);
        for i in 0..5 {
            let peer = route(&mut client, &format!("call {i}")).await.unwrap();
            assert_eq!(peer, backend.addr.to_string());
        }
        assert_eq!(silent.connections(), 1, "no new attempt to the silent peer");
        assert_eq!(backend.calls(), 6);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_attempt_delay_moves_past_several_silent_addresses_and_releases_them() {
    tokio::time::timeout(TEST_LIMIT, async {
        let first = H2Server::start(Behaviour::Silent).await;
        let second = H2Server::start(Behaviour::Silent).await;
        let backend = Backend::start();
        let target = format!("static:///{},{},{}", first.addr, second.addr, backend.addr);
        let channel = BalancedChannel::builder(target).build().unwrap();
        let mut client = SimpleClient::new(channel.clone());

        assert_eq!(
            call_with_deadline(&mut client).await,
            backend.addr.to_string()
        );
        assert_eq!((first.connections(), second.connections()), (1, 1));
        assert!(
            eventually(Duration::from_secs(5), || first.closed() == 1
                && second.closed() == 1)
            .await,
            "both attempts in flight were released"
        );
        assert_eq!(channel.state(), ConnectivityState::Ready);
    })
    .await
    .unwrap();
}

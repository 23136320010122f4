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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::h2server::{Behaviour, H2Server};
use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{eventually, free_port, route, Backend};
use tonic::Code;
use tonic_balance::resolver::{Resolver, ResolverBuilder, ResolverUpdate, UpdateSink};
use tonic_balance::{Address, BalancedChannel, ConnectivityState, Error, Peer, Target};

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

/// A resolver that answers every `resolve_now` at once with the same list
/// (as the `dns` resolver does for an IP literal, and as
/// `examples/custom_resolver.rs` does), counting the requests.
struct AnswersAtOnce {
    addresses: Vec<Address>,
    requests: Arc<AtomicUsize>,
}

struct AnsweringResolver {
    sink: UpdateSink,
    update: ResolverUpdate,
    requests: Arc<AtomicUsize>,
}

impl ResolverBuilder for AnswersAtOnce {
    fn scheme(&self) -> &str {
        "answers-at-once"
    }

    fn build(&self, _: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        let update = ResolverUpdate::new(self.addresses.clone());
        sink.update(update.clone());
        Ok(Box::new(AnsweringResolver {
            sink,
            update,
            requests: self.requests.clone(),
        }))
    }
}

impl Resolver for AnsweringResolver {
    fn resolve_now(&mut self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.sink.update(self.update.clone());
    }
}

#[tokio::test]
async fn a_failed_pass_does_not_spin_re_resolving_while_every_address_is_in_backoff() {
    tokio::time::timeout(TEST_LIMIT, async {
        let requests = Arc::new(AtomicUsize::new(0));
        let resolver = AnswersAtOnce {
            addresses: vec![Address::new(format!("127.0.0.1:{}", free_port()))],
            requests: requests.clone(),
        };
        // Default backoff: the refused address waits at least 0.8 s before
        // its next attempt.
        let channel = BalancedChannel::builder("answers-at-once:///down")
            .resolver_builder(resolver)
            .build()
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        let status = route(&mut client, "x").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let after_the_pass = requests.load(Ordering::SeqCst);
        assert!(
            after_the_pass >= 1,
            "the failed pass asked for re-resolution"
        );
        // Each answer starts a new pass, which ends at once: the address is
        // still in backoff. Such a pass must not ask again, or the control
        // task spins (one round per scheduling turn).
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        let more = requests.load(Ordering::SeqCst) - after_the_pass;
        assert!(more <= 1, "{more} re-resolutions while in backoff");
        assert_eq!(channel.state(), ConnectivityState::TransientFailure);
    })
    .await
    .unwrap();
}

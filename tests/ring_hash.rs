//! `ring_hash` (gRFC A42, A76) against real tonic backends on 127.0.0.1:
//! calls carry their key in the `session-id` header the policy hashes.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{fast_backoff, static_target, Backend, ClosedPort};
use tonic::Status;
use tonic_balance::resolver::{ManualResolver, ResolverUpdate};
use tonic_balance::{Address, BalancedChannel, ConnectivityState, Endpoint, Peer, WaitForReady};

const TEST_LIMIT: Duration = Duration::from_secs(60);

const CONFIG: &str =
    r#"{"loadBalancingConfig":[{"ring_hash":{"requestHashHeader":"session-id"}}]}"#;

/// The address that served one call with `session-id: key`.
async fn call(client: &mut SimpleClient<BalancedChannel>, key: &str) -> Result<String, Status> {
    let mut request = tonic::Request::new(SimpleRequest { data: key.into() });
    let value = key.parse().map_err(|_| Status::internal("bad key"))?;
    request.metadata_mut().insert("session-id", value);
    request.extensions_mut().insert(WaitForReady(true));
    request.set_timeout(Duration::from_secs(10));
    let response = client.route(request).await?;
    let peer = response
        .extensions()
        .get::<Peer>()
        .map(|p| p.address().to_string());
    peer.ok_or_else(|| Status::internal("no peer in the response"))
}

/// Where each of `keys` goes; a call that fails (a backend just died and
/// the channel has not seen it yet) is tried again, at most 50 times.
async fn owners(
    client: &mut SimpleClient<BalancedChannel>,
    keys: &[String],
) -> HashMap<String, String> {
    let mut owners = HashMap::new();
    for key in keys {
        let mut last = None;
        for _ in 0..50 {
            match call(client, key).await {
                Ok(owner) => {
                    last = Some(owner);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        owners.insert(
            key.clone(),
            last.unwrap_or_else(|| panic!("{key}: no call succeeded")),
        );
    }
    owners
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

fn channel(target: &str, manual: Option<&ManualResolver>) -> BalancedChannel {
    let mut builder = BalancedChannel::builder(target)
        .service_config(CONFIG)
        .backoff(fast_backoff());
    if let Some(manual) = manual {
        builder = builder.resolver_builder(manual.clone());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn the_same_key_always_reaches_the_same_backend_and_keys_spread() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
        let refs: Vec<&Backend> = backends.iter().collect();
        let mut client = SimpleClient::new(channel(&static_target(&refs), None));
        let keys = keys(100);
        let first = owners(&mut client, &keys).await;
        for _ in 0..3 {
            assert_eq!(owners(&mut client, &keys).await, first);
        }
        let mut per_backend: HashMap<&str, usize> = HashMap::new();
        for owner in first.values() {
            *per_backend.entry(owner).or_default() += 1;
        }
        assert_eq!(per_backend.len(), 3, "{per_backend:?}");
        assert!(per_backend.values().all(|&n| n >= 10), "{per_backend:?}");
        // Lazy: only backends that got a call were connected, once each.
        assert!(backends.iter().all(|b| b.accepted_connections() == 1));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_fourth_backend_takes_about_a_quarter_of_the_keys() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backends: Vec<Backend> = (0..4).map(|_| Backend::start()).collect();
        let addrs: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
        let manual = ManualResolver::new("manual");
        manual.update(addrs[..3].to_vec());
        let mut client = SimpleClient::new(channel("manual:///ring", Some(&manual)));
        let keys = keys(1000);
        let before = owners(&mut client, &keys).await;
        manual.update(addrs.clone());
        let after = owners(&mut client, &keys).await;
        let moved = keys.iter().filter(|k| before[*k] != after[*k]).count();
        let to_new = keys.iter().filter(|k| after[*k] == addrs[3]).count();
        // The new backend takes about a quarter. A42 keeps the ring's size
        // (1024 points here), so each old backend also gives up a quarter
        // of its points (342 -> 256 each): the keys on those move to the
        // next point, which is another old backend's about half the time.
        // Over 200 sets of addresses (xxHash64 of the same keys, as here):
        // 198..298 to the new one, 350 moved on average, at most 405.
        assert!(
            (150..=333).contains(&to_new),
            "{to_new} of 1000 keys to the new backend"
        );
        assert!(moved <= 450, "{moved} of 1000 keys moved");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_dead_backends_keys_move_to_the_others_and_come_back_when_it_returns() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
        let refs: Vec<&Backend> = backends.iter().collect();
        let mut client = SimpleClient::new(channel(&static_target(&refs), None));
        let keys = keys(200);
        let before = owners(&mut client, &keys).await;
        let dead = backends[1].addr;
        let dead_name = dead.to_string();
        backends[1].kill();
        let during = owners(&mut client, &keys).await;
        let mut moved = 0;
        for key in &keys {
            if before[key] == dead_name {
                moved += 1;
                assert_ne!(during[key], dead_name, "{key} left the dead backend");
            } else {
                assert_eq!(during[key], before[key], "{key} stays where it was");
            }
        }
        assert!(moved > 20, "the dead backend had keys: {moved}");
        // Each moved key stays with its ring successor.
        assert_eq!(owners(&mut client, &keys).await, during);

        let _revived = Backend::start_on(dead);
        let mut back = false;
        for _ in 0..100 {
            if owners(&mut client, &keys).await == before {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(back, "every key is back where it was");
    })
    .await
    .unwrap();
}

/// gRFC A61: each endpoint is a pick_first child over all its addresses,
/// so an endpoint whose first address is dead keeps its keys on its
/// second (before, ring_hash connected only the first address, and the
/// endpoint's keys went to the next endpoint on the ring).
#[tokio::test]
async fn an_endpoint_whose_first_address_is_dead_serves_its_keys_from_its_second() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dead = ClosedPort::new();
        let (second, other) = (Backend::start(), Backend::start());
        let address = |a: std::net::SocketAddr| Address::from(a.to_string());
        let manual = ManualResolver::new("manual");
        manual.update_state(ResolverUpdate::from_endpoints(vec![
            Endpoint::new(vec![address(dead.addr), address(second.addr)]),
            Endpoint::new(vec![address(other.addr)]),
        ]));
        let mut client = SimpleClient::new(channel("manual:///ring", Some(&manual)));
        let keys = keys(100);
        let first = owners(&mut client, &keys).await;
        assert_eq!(owners(&mut client, &keys).await, first, "keys stay put");
        let count = |b: &Backend| first.values().filter(|o| **o == b.addr.to_string()).count();
        // The dead address's endpoint owns about half the ring.
        assert!(
            count(&second) >= 20,
            "{} keys on the second address",
            count(&second)
        );
        assert!(
            count(&other) >= 20,
            "{} keys on the other endpoint",
            count(&other)
        );
        assert_eq!(count(&second) + count(&other), keys.len());
        assert_eq!(second.accepted_connections(), 1);
    })
    .await
    .unwrap();
}

/// ring_hash connects only for calls (gRFC A42; grpc-go's `ExitIdle` is a
/// no-op), so `connect` and `wait_until_ready` cannot make its channel
/// READY: they fail at their deadline with an error that says why and
/// what to do, and connect nothing; the first call connects its backend.
#[tokio::test]
async fn connect_fails_clearly_while_ring_hash_waits_for_calls_and_a_call_makes_it_ready() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backends: Vec<Backend> = (0..3).map(|_| Backend::start()).collect();
        let refs: Vec<&Backend> = backends.iter().collect();
        let target = static_target(&refs);
        tokio::time::pause();
        let err = BalancedChannel::builder(target.as_str())
            .service_config(CONFIG)
            .connect(Duration::from_secs(5))
            .await
            .expect_err("ring_hash stays IDLE without calls");
        let text = err.to_string();
        assert!(err.is_timeout(), "{text}");
        assert!(
            text.contains("state IDLE")
                && text.contains("ring_hash")
                && text.contains("connects only when calls arrive")
                && text.contains(".build()"),
            "{text}"
        );

        let channel = channel(&target, None);
        let err = channel
            .wait_until_ready(Duration::from_secs(5))
            .await
            .expect_err("still IDLE");
        assert!(
            err.to_string().contains("connects only when calls arrive"),
            "{err}"
        );
        tokio::time::resume();
        assert_eq!(channel.state(), ConnectivityState::Idle);
        assert!(backends.iter().all(|b| b.accepted_connections() == 0));

        let mut client = SimpleClient::new(channel.clone());
        let owner = call(&mut client, "user-1")
            .await
            .expect("the call connects");
        assert_eq!(channel.state(), ConnectivityState::Ready);
        channel
            .wait_until_ready(Duration::from_secs(1))
            .await
            .expect("READY after one call");
        let connected: Vec<String> = backends
            .iter()
            .filter(|b| b.accepted_connections() > 0)
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(connected, vec![owner], "only the key's backend");
    })
    .await
    .unwrap();
}

//! The `dns` resolver against a real authoritative DNS server (hickory-server,
//! UDP and TCP on 127.0.0.1) whose zone the tests change, and real tonic
//! backends on 127.0.0.1, 127.0.0.2 and 127.0.0.3 sharing one port.

#![cfg(feature = "dns")]

mod support;

use std::collections::BTreeSet;

use std::time::Duration;

use futures_util::StreamExt;
use support::dns::DnsServer;
use support::proto::simple_client::SimpleClient;
use support::{eventually, route, Backend};
use tonic::Code;
use tonic_balance::resolver::{DnsResolverBuilder, ResolverDiscover};
use tonic_balance::subchannel::BackoffConfig;
use tonic_balance::{BalancedChannel, Target};
use tower::discover::Change;

const TEST_LIMIT: Duration = Duration::from_secs(60);
const WITHIN: Duration = Duration::from_secs(15);

/// Backends on 127.0.0.1, 127.0.0.2 and 127.0.0.3, all on one port.
fn three_backends() -> Vec<Backend> {
    for _ in 0..50 {
        let port = support::free_port();
        let free = ["127.0.0.2", "127.0.0.3"]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok());
        if free {
            return (1..=3)
                .map(|i| Backend::start_on(format!("127.0.0.{i}:{port}").parse().unwrap()))
                .collect();
        }
    }
    panic!("no port free on 127.0.0.1-3");
}

fn fast_dns() -> DnsResolverBuilder {
    DnsResolverBuilder::default()
        .refresh_interval(Duration::from_millis(100))
        .min_resolve_interval(Duration::from_millis(10))
        .lookup_timeout(Duration::from_millis(250))
        .backoff(BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            ..BackoffConfig::default()
        })
}

async fn round_robin(target: String, dns: DnsResolverBuilder) -> SimpleClient<BalancedChannel> {
    let channel = BalancedChannel::builder(target)
        .resolver_builder(dns)
        .balancer("round_robin")
        .backoff(support::fast_backoff())
        .connect(WITHIN)
        .await
        .unwrap();
    SimpleClient::new(channel)
}

/// Makes `n` calls, all of which must succeed; returns who served them.
async fn served_by(client: &mut SimpleClient<BalancedChannel>, n: usize) -> BTreeSet<String> {
    let mut peers = BTreeSet::new();
    for i in 0..n {
        peers.insert(
            route(client, &format!("call {i}"))
                .await
                .expect("call succeeds"),
        );
    }
    peers
}

/// Calls until a call reaches `backend`; false if none does within WITHIN.
/// Failed calls are an error unless `failures_allowed` (a backend was just
/// killed, and calls already on its connection may fail).
async fn reaches(
    client: &mut SimpleClient<BalancedChannel>,
    backend: &Backend,
    failures_allowed: bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while tokio::time::Instant::now() < deadline {
        match route(client, "probe").await {
            Ok(peer) if peer == backend.addr.to_string() => return true,
            Ok(_) => {}
            Err(status) if failures_allowed => tracing::debug!(%status, "call failed"),
            Err(status) => panic!("call failed: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test]
async fn round_robin_follows_records_as_the_zone_changes_and_survives_the_dns_server_stopping() {
    support::trace();
    tokio::time::timeout(TEST_LIMIT, async {
        let backends = three_backends();
        let port = backends[0].addr.port();
        let mut dns = DnsServer::start().await;
        dns.set("name.test", &["127.0.0.1", "127.0.0.2"]).await;
        let mut client = round_robin(dns.target(&format!("name.test:{port}")), fast_dns()).await;

        // Both resolved backends serve calls; the third is not in DNS yet.
        assert!(
            eventually(WITHIN, || backends[..2]
                .iter()
                .all(|b| b.open_connections() == 1))
            .await
        );
        let peers = served_by(&mut client, 20).await;
        let first_two: BTreeSet<String> =
            backends[..2].iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(peers, first_two);
        assert_eq!(backends[2].calls(), 0);

        // Added to the zone: re-resolution brings it into rotation.
        dns.set("name.test", &["127.0.0.1", "127.0.0.2", "127.0.0.3"])
            .await;
        assert!(
            reaches(&mut client, &backends[2], false).await,
            "127.0.0.3 never got a call"
        );

        // Removed from the zone: its connection is dropped, no new calls.
        dns.set("name.test", &["127.0.0.2", "127.0.0.3"]).await;
        assert!(eventually(WITHIN, || backends[0].open_connections() == 0).await);
        let before = backends[0].calls();
        let peers = served_by(&mut client, 20).await;
        assert_eq!(backends[0].calls(), before);
        assert!(!peers.contains(&backends[0].addr.to_string()), "{peers:?}");

        // The DNS server goes away: lookups fail (each within the 250 ms
        // lookup timeout), the known set keeps serving.
        dns.stop().await;
        let (one, two, three) = (
            backends[0].calls(),
            backends[1].calls(),
            backends[2].calls(),
        );
        let until = tokio::time::Instant::now() + Duration::from_millis(1500);
        while tokio::time::Instant::now() < until {
            served_by(&mut client, 4).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(backends[0].calls(), one);
        assert!(backends[1].calls() > two && backends[2].calls() > three);

        // It comes back with 127.0.0.1 again: the retries pick that up.
        dns.set("name.test", &["127.0.0.1", "127.0.0.2", "127.0.0.3"])
            .await;
        dns.restart().await;
        assert!(
            reaches(&mut client, &backends[0], false).await,
            "127.0.0.1 never came back"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_lost_connection_triggers_re_resolution_that_finds_the_replacement() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut backends = three_backends();
        let port = backends[0].addr.port();
        let mut dns = DnsServer::start().await;
        dns.set("swap.test", &["127.0.0.1", "127.0.0.2"]).await;
        // No periodic refresh during the test: only resolve_now can look again.
        let only_on_demand = fast_dns().refresh_interval(Duration::from_secs(3600));
        let mut client =
            round_robin(dns.target(&format!("swap.test:{port}")), only_on_demand).await;
        assert!(
            eventually(WITHIN, || backends[..2]
                .iter()
                .all(|b| b.open_connections() == 1))
            .await
        );

        dns.set("swap.test", &["127.0.0.2", "127.0.0.3"]).await;
        backends[0].kill();
        assert!(
            reaches(&mut client, &backends[2], true).await,
            "the replacement never got a call"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_name_that_does_not_exist_fails_calls_with_an_error_naming_it() {
    tokio::time::timeout(TEST_LIMIT, async {
        support::trace();
        let dns = DnsServer::start().await;
        let channel = BalancedChannel::builder(dns.target("missing.test:50051"))
            .resolver_builder(fast_dns())
            .build()
            .unwrap();
        let mut client = SimpleClient::new(channel.clone());
        let status = route(&mut client, "x").await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        let message = status.message();
        assert!(
            message.contains("\"missing.test\" does not exist (NXDOMAIN"),
            "{message}"
        );
        let err = channel
            .wait_until_ready(Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing.test"), "{err}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn wait_until_ready_says_resolver_error_for_a_name_that_does_not_exist_without_picking() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dns = DnsServer::start().await;
        for policy in ["pick_first", "round_robin"] {
            let counting = support::counting::CountingPicks::new(policy);
            let channel = BalancedChannel::builder(dns.target("missing.test:50051"))
                .resolver_builder(fast_dns())
                .balancer_builder(counting.clone())
                .build()
                .unwrap();
            let err = channel
                .wait_until_ready(Duration::from_millis(500))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("(state TRANSIENT_FAILURE: resolver error: dns: cannot resolve"),
                "{policy}: {err}"
            );
            assert!(
                err.contains("\"missing.test\" does not exist"),
                "{policy}: {err}"
            );
            assert_eq!(counting.picks(), 0, "{policy}: no pick for the message");
        }
    })
    .await
    .unwrap();
}

/// The addresses the first update of `target` holds, through the resolver
/// alone (no connection is made).
async fn first_addresses(target: &str, builder: DnsResolverBuilder) -> BTreeSet<String> {
    let target: Target = target.parse().unwrap();
    let mut discover = ResolverDiscover::with_builder(&target, &builder).unwrap();
    let mut found = BTreeSet::new();
    // Inserts of one snapshot arrive back to back.
    let first = tokio::time::timeout(WITHIN, discover.next()).await.unwrap();
    let mut change = first;
    loop {
        match change {
            Some(Ok(Change::Insert(address, _))) => found.insert(address.to_string()),
            other => panic!("unexpected {other:?}"),
        };
        match tokio::time::timeout(Duration::from_millis(200), discover.next()).await {
            Ok(next) => change = next,
            Err(_) => return found,
        }
    }
}

#[tokio::test]
async fn every_a_and_aaaa_record_becomes_an_address_with_port_443_by_default() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut dns = DnsServer::start().await;
        dns.set(
            "dual.test",
            &["127.0.0.1", "127.0.0.2", "::1", "2001:db8::7"],
        )
        .await;
        let found = first_addresses(&dns.target("dual.test:8080"), fast_dns()).await;
        let want = [
            "127.0.0.1:8080",
            "127.0.0.2:8080",
            "[2001:db8::7]:8080",
            "[::1]:8080",
        ];
        assert_eq!(found, want.map(String::from).into());
        let found = first_addresses(&dns.target("dual.test"), fast_dns()).await;
        assert!(
            found.iter().all(|a| a.ends_with(":443")) && found.len() == 4,
            "{found:?}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn ip_literals_and_localhost_need_no_dns_server() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let port = backend.addr.port();
        // The authority names a DNS server nobody runs: it is never asked.
        let nowhere = format!("127.0.0.1:{}", support::free_port());
        for target in [
            format!("dns://{nowhere}/127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("dns://{nowhere}/localhost:{port}"),
        ] {
            let channel = BalancedChannel::builder(target.as_str())
                .connect(WITHIN)
                .await
                .unwrap_or_else(|e| panic!("{target}: {e}"));
            let peer = route(&mut SimpleClient::new(channel), "x").await.unwrap();
            assert_eq!(peer, backend.addr.to_string(), "{target}");
        }
        let found = first_addresses(&format!("dns://{nowhere}/10.1.2.3"), fast_dns()).await;
        assert_eq!(found, BTreeSet::from(["10.1.2.3:443".to_owned()]));
    })
    .await
    .unwrap();
}

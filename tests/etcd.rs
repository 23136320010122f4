//! The `etcd` resolver and etcd registration against a real etcd (the
//! `etcd` binary, started by `support::etcd` on free loopback ports) and
//! real tonic backends.
//!
//! The SIGKILL test runs its registration in a child process: this test
//! binary itself, re-run with `TONIC_BALANCE_ETCD_CHILD` set so that only
//! `registration_child_process` does anything.
#![cfg(feature = "etcd")]

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_client::{CompactionOptions, GetOptions};
use support::etcd::{Etcd, TcpProxy};
use support::proto::simple_client::SimpleClient;
use support::{eventually, route, Backend};
use tonic_balance::registration::{Registration, RegistrationStatus};
use tonic_balance::resolver::{EtcdResolverBuilder, EtcdRetryConfig};
use tonic_balance::subchannel::BackoffConfig;
use tonic_balance::{BalancedChannel, ConnectivityState};

const TEST_LIMIT: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(15);
const CHILD_ENV: &str = "TONIC_BALANCE_ETCD_CHILD";

fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        min_connect_timeout: Duration::from_secs(2),
        ..BackoffConfig::default()
    }
}

fn fast_retry() -> EtcdRetryConfig {
    EtcdRetryConfig::default()
        .with_request_timeout(Duration::from_secs(2))
        .with_backoff(fast_backoff())
}

fn fast_etcd() -> EtcdResolverBuilder {
    EtcdResolverBuilder::default().with_retry(fast_retry())
}

fn channel(target: &str, resolver: EtcdResolverBuilder) -> BalancedChannel {
    BalancedChannel::builder(target)
        .resolver_builder(resolver)
        .balancer("round_robin")
        .backoff(fast_backoff())
        .build()
        .expect("channel")
}

fn client(target: &str, resolver: EtcdResolverBuilder) -> SimpleClient<BalancedChannel> {
    SimpleClient::new(channel(target, resolver))
}

fn addrs(backends: &[&Backend]) -> BTreeSet<String> {
    backends.iter().map(|b| b.addr.to_string()).collect()
}

/// The backends 4 x `want.len()` round-robin calls reach, if all succeed.
async fn peers(client: &mut SimpleClient<BalancedChannel>, n: usize) -> Option<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for i in 0..4 * n.max(1) {
        seen.insert(route(client, &format!("call {i}")).await.ok()?);
    }
    Some(seen)
}

/// Waits until calls reach exactly `want` (and every call succeeds).
async fn serves(client: &mut SimpleClient<BalancedChannel>, want: &[&Backend]) -> bool {
    let want = addrs(want);
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let seen = peers(client, want.len()).await;
        if seen.as_ref() == Some(&want) {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            eprintln!("wanted {want:?}, calls reach {seen:?}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn put(etcd: &mut etcd_client::Client, key: &str, value: &str) {
    etcd.put(key, value, None).await.expect("put");
}

/// Writes through a cluster that may be electing a new leader.
async fn put_retrying(etcd: &mut etcd_client::Client, key: &str, value: &str) {
    for _ in 0..50 {
        if etcd.put(key, value, None).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not put {key}");
}

async fn key_exists(etcd: &mut etcd_client::Client, key: &str) -> bool {
    let response = etcd.get(key, None).await.expect("get");
    !response.kvs().is_empty()
}

async fn within<F: std::future::Future<Output = ()>>(test: F) {
    support::trace();
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("test ran out of time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_put_and_deleted_appear_and_vanish_from_traffic() {
    within(async {
        let etcd = Etcd::start();
        let mut kv = etcd.client().await;
        let (a, b) = (Backend::start(), Backend::start());
        put(
            &mut kv,
            &format!("/grpclb/svc/{}", a.addr),
            &a.addr.to_string(),
        )
        .await;
        let target = format!("etcd://{}//grpclb/svc", etcd.endpoint(0));
        let mut client = client(&target, fast_etcd());
        assert!(serves(&mut client, &[&a]).await);
        put(
            &mut kv,
            &format!("/grpclb/svc/{}", b.addr),
            &b.addr.to_string(),
        )
        .await;
        assert!(serves(&mut client, &[&a, &b]).await);
        kv.delete(format!("/grpclb/svc/{}", a.addr), None)
            .await
            .unwrap();
        assert!(serves(&mut client, &[&b]).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_json_and_plain_values_are_both_discovered_through_a_given_client() {
    within(async {
        let etcd = Etcd::start();
        let mut kv = etcd.client().await;
        let (a, b) = (Backend::start(), Backend::start());
        let json = format!(
            r#"{{"Op":0,"Addr":"{}","Metadata":{{"weight":2}}}}"#,
            a.addr
        );
        put(&mut kv, "foo/bar/svc/a", &json).await;
        put(&mut kv, "foo/bar/svc/b", &b.addr.to_string()).await;
        // Empty authority: the builder's client.
        let mut client = client("etcd:///foo/bar/svc", fast_etcd().with_client(kv.clone()));
        assert!(serves(&mut client, &[&a, &b]).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_value_is_skipped_and_the_rest_still_serve() {
    within(async {
        let etcd = Etcd::start();
        let mut kv = etcd.client().await;
        let (a, b) = (Backend::start(), Backend::start());
        put(&mut kv, "/grpclb/svc/a", &a.addr.to_string()).await;
        put(&mut kv, "/grpclb/svc/junk", "not an address").await;
        let target = format!("etcd://{}//grpclb/svc", etcd.endpoint(0));
        let mut client = client(&target, fast_etcd());
        assert!(serves(&mut client, &[&a]).await);
        put(&mut kv, "/grpclb/svc/more-junk", r#"{"Addr":5}"#).await;
        put(&mut kv, "/grpclb/svc/b", &b.addr.to_string()).await;
        assert!(serves(&mut client, &[&a, &b]).await);
        // Junk over a good key keeps what the key had.
        put(&mut kv, "/grpclb/svc/a", "{broken").await;
        put(&mut kv, "/grpclb/svc/junk", "still junk").await;
        assert!(serves(&mut client, &[&a, &b]).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_prefix_fails_calls_fast_until_a_key_appears() {
    within(async {
        let etcd = Etcd::start();
        let mut kv = etcd.client().await;
        let a = Backend::start();
        let target = format!("etcd://{}//grpclb/empty", etcd.endpoint(0));
        let balanced = channel(&target, fast_etcd());
        let mut client = SimpleClient::new(balanced.clone());
        // The empty set arrives at once: the channel gives up instead of
        // waiting for a resolver that never speaks.
        let failed = eventually(CONVERGE, || {
            balanced.state() == ConnectivityState::TransientFailure
        })
        .await;
        assert!(failed, "state {:?}", balanced.state());
        let status = route(&mut client, "x").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        put(&mut kv, "/grpclb/empty/a", &a.addr.to_string()).await;
        assert!(serves(&mut client, &[&a]).await);
    })
    .await;
}

/// Only does something as the child of the SIGKILL test: registers the
/// address it is given, says so, and waits to be killed.
#[tokio::test]
async fn registration_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (endpoints, addr) = spec.split_once(' ').expect("endpoints and address");
    let registration = Registration::builder("/grpclb/killed/", addr)
        .etcd_endpoints(endpoints)
        .ttl(Duration::from_secs(1))
        .register()
        .await
        .expect("child registers");
    println!("REGISTERED {}", registration.key());
    tokio::time::sleep(TEST_LIMIT).await;
}

/// A child process that cannot outlive a failed test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_process_killed_with_sigkill_disappears_when_its_lease_expires() {
    within(async {
        let etcd = Etcd::start();
        let mut kv = etcd.client().await;
        let (a, b) = (Backend::start(), Backend::start());
        let mut child = KillOnDrop(
            Command::new(std::env::current_exe().unwrap())
                .args(["registration_child_process", "--exact", "--nocapture"])
                .env(CHILD_ENV, format!("{} {}", etcd.endpoint(0), a.addr))
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the child"),
        );
        let stdout = child.0.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find(|l| l.starts_with("REGISTERED"))
        })
        .await
        .unwrap();
        assert!(line.is_some(), "the child did not register");
        let _b = Registration::builder("/grpclb/killed/", b.addr.to_string())
            .etcd_endpoints(&etcd.endpoint(0))
            .register()
            .await
            .unwrap();
        let target = format!("etcd://{}//grpclb/killed", etcd.endpoint(0));
        let mut client = client(&target, fast_etcd());
        assert!(serves(&mut client, &[&a, &b]).await);

        child.0.kill().unwrap(); // SIGKILL: no revoke, the lease just stops.
        child.0.wait().unwrap();
        let key = format!("/grpclb/killed/{}", a.addr);
        assert!(
            key_exists(&mut kv, &key).await,
            "gone before the TTL ran out"
        );
        assert!(serves(&mut client, &[&b]).await);
        assert!(!key_exists(&mut kv, &key).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_registration_disappears_at_once_and_a_dropped_one_too() {
    within(async {
        let etcd = Etcd::start();
        let mut kv = etcd.client().await;
        let (a, b) = (Backend::start(), Backend::start());
        // A TTL far longer than the test: only revocation can remove a key.
        let register = |addr: String| {
            Registration::builder("/grpclb/revoked/", addr)
                .etcd_endpoints(&etcd.endpoint(0))
                .ttl(Duration::from_secs(600))
                .register()
        };
        let reg_a = register(a.addr.to_string()).await.unwrap();
        let reg_b = register(b.addr.to_string()).await.unwrap();
        assert_eq!(
            reg_a.target(),
            format!("etcd://{}//grpclb/revoked", etcd.endpoint(0))
        );
        let mut client = client(reg_a.target(), fast_etcd());
        assert!(serves(&mut client, &[&a, &b]).await);

        reg_a.shutdown().await.expect("revoked");
        assert!(!key_exists(&mut kv, &format!("/grpclb/revoked/{}", a.addr)).await);
        assert!(serves(&mut client, &[&b]).await);

        let key_b = reg_b.key().to_owned();
        drop(reg_b);
        let mut gone = false;
        for _ in 0..200 {
            if !key_exists(&mut kv, &key_b).await {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(gone, "dropping the registration did not revoke it");
    })
    .await;
}

async fn wait_registered_with_new_lease(registration: &Registration, old: i64) -> i64 {
    let mut status = registration.status();
    let new = status
        .wait_for(|s| matches!(s, RegistrationStatus::Registered { lease_id } if *lease_id != old))
        .await
        .expect("status");
    match *new {
        RegistrationStatus::Registered { lease_id } => lease_id,
        _ => unreachable!(),
    }
}

fn lease_of(registration: &Registration) -> i64 {
    match *registration.status().borrow() {
        RegistrationStatus::Registered { lease_id } => lease_id,
        ref other => panic!("not registered: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_survives_an_etcd_restart_that_lost_every_lease() {
    within(async {
        let mut etcd = Etcd::start();
        let (a, b) = (Backend::start(), Backend::start());
        let registration = Registration::builder("/grpclb/restart/", a.addr.to_string())
            .etcd_endpoints(&etcd.endpoint(0))
            .ttl(Duration::from_secs(2))
            .retry(fast_retry())
            .register()
            .await
            .unwrap();
        let first_lease = lease_of(&registration);
        let mut client = client(registration.target(), fast_etcd());
        assert!(serves(&mut client, &[&a]).await);

        etcd.restart_empty(); // every key, lease and revision is gone
        let lease = wait_registered_with_new_lease(&registration, first_lease).await;
        assert_ne!(lease, first_lease);
        let mut kv = etcd.client().await;
        assert!(key_exists(&mut kv, registration.key()).await);
        // The resolver noticed the reset too: it follows the new store.
        put(
            &mut kv,
            &format!("/grpclb/restart/{}", b.addr),
            &b.addr.to_string(),
        )
        .await;
        assert!(serves(&mut client, &[&a, &b]).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_lease_is_revoked_elsewhere_registers_again() {
    within(async {
        let etcd = Etcd::start();
        let mut kv = etcd.client().await;
        let a = Backend::start();
        let registration = Registration::builder("/grpclb/lost/", a.addr.to_string())
            .etcd_endpoints(&etcd.endpoint(0))
            .ttl(Duration::from_secs(1))
            .register()
            .await
            .unwrap();
        let first_lease = lease_of(&registration);
        kv.lease_revoke(first_lease).await.unwrap();
        wait_registered_with_new_lease(&registration, first_lease).await;
        assert!(key_exists(&mut kv, registration.key()).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_past_the_watch_revision_is_recovered_by_reading_again() {
    within(async {
        let etcd = Etcd::start();
        let mut kv = etcd.client().await;
        let (a, b) = (Backend::start(), Backend::start());
        put(&mut kv, "/grpclb/compact/a", &a.addr.to_string()).await;
        let proxy = TcpProxy::start(&etcd.endpoint(0)).await;
        let target = format!("etcd://{}//grpclb/compact", proxy.endpoint());
        let mut client = client(&target, fast_etcd());
        assert!(serves(&mut client, &[&a]).await);

        // Cut the resolver off, change the set, and compact the history it
        // would resume from.
        proxy.cut();
        put(&mut kv, "/grpclb/compact/b", &b.addr.to_string()).await;
        kv.delete("/grpclb/compact/a", None).await.unwrap();
        let revision = kv
            .get("x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        kv.compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap();
        proxy.restore().await;
        assert!(serves(&mut client, &[&b]).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_keeps_discovery_working_when_the_watched_member_is_killed() {
    within(async {
        let mut etcd = Etcd::cluster(3);
        let (a, b) = (Backend::start(), Backend::start());
        let mut kv = etcd.client().await;
        put(&mut kv, "/grpclb/cluster/a", &a.addr.to_string()).await;
        let target = format!("etcd://{}//grpclb/cluster", etcd.endpoints());
        let mut client = client(&target, fast_etcd());
        assert!(serves(&mut client, &[&a]).await);
        // Kill the member that serves the resolver's watch.
        let watched = (0..etcd.len()).find(|i| etcd.watchers(*i).unwrap_or(0) > 0);
        let watched = watched.expect("one member has the watch");
        etcd.kill(watched);
        let survivor = (watched + 1) % etcd.len();
        let mut kv = etcd.client_of(survivor).await;
        put_retrying(&mut kv, "/grpclb/cluster/b", &b.addr.to_string()).await;
        assert!(serves(&mut client, &[&a, &b]).await);
        kv.delete("/grpclb/cluster/a", None).await.unwrap();
        assert!(serves(&mut client, &[&b]).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_keeps_serving_while_etcd_is_down_and_follows_changes_after_it_returns() {
    within(async {
        let mut etcd = Etcd::start();
        let (a, b, c) = (Backend::start(), Backend::start(), Backend::start());
        let mut kv = etcd.client().await;
        put(&mut kv, "/grpclb/down/a", &a.addr.to_string()).await;
        put(&mut kv, "/grpclb/down/b", &b.addr.to_string()).await;
        let target = format!("etcd://{}//grpclb/down", etcd.endpoint(0));
        let mut client = client(&target, fast_etcd());
        assert!(serves(&mut client, &[&a, &b]).await);

        etcd.kill(0);
        // Long enough for several failed reconnects of the watch.
        for _ in 0..20 {
            let seen = peers(&mut client, 2).await;
            assert_eq!(seen, Some(addrs(&[&a, &b])), "while etcd is down");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        etcd.restart(0);
        let mut kv = etcd.client().await;
        put(&mut kv, "/grpclb/down/c", &c.addr.to_string()).await;
        kv.delete("/grpclb/down/a", None).await.unwrap();
        assert!(serves(&mut client, &[&b, &c]).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_channel_cancels_its_etcd_watch() {
    within(async {
        let etcd = Etcd::start();
        let mut kv = etcd.client().await;
        let a = Backend::start();
        put(&mut kv, "/grpclb/drop/a", &a.addr.to_string()).await;
        let target = format!("etcd://{}//grpclb/drop", etcd.endpoint(0));
        let mut client = client(&target, fast_etcd());
        assert!(serves(&mut client, &[&a]).await);
        assert_eq!(etcd.watchers(0), Some(1));
        drop(client);
        assert!(eventually(CONVERGE, || etcd.watchers(0) == Some(0)).await);
        let left = kv
            .get("/grpclb/drop/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(left.kvs().len(), 1, "the resolver never writes");
    })
    .await;
}

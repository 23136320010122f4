//! A real etcd for tests (and the convergence benchmark, which includes this
//! file by path): the `etcd` binary started on free loopback ports with a
//! temporary data directory, one member or an N-member cluster, members
//! killed (SIGKILL) and restarted at will, everything killed on drop.
//!
//! Raft is tuned for loopback (25 ms heartbeats, 250 ms elections), which
//! also brings etcd's minimum lease TTL down to 1 s. Each member's log is
//! kept in the temporary directory and printed if the member fails to start.
//!
//! The file is self-contained (no `super::`), so an example can use it with
//! `#[path = "../tests/support/etcd.rs"] mod etcd;`.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a member may take to become healthy.
const START_LIMIT: Duration = Duration::from_secs(30);

/// A running etcd cluster (one member unless asked otherwise).
pub struct Etcd {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    dir: TempDir,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The etcd binary: `$ETCD_BIN`, else `etcd` on PATH, else /usr/bin/etcd.
pub fn etcd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        return bin.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    assert!(
        bin.is_file(),
        "no etcd binary (looked on PATH and at /usr/bin/etcd): install etcd-server \
         (apt-get install etcd-server) or set ETCD_BIN"
    );
    bin
}

/// `n` distinct loopback ports that are free now.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

impl Etcd {
    /// One member, healthy.
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// An `n`-member cluster on loopback, every member healthy.
    pub fn cluster(n: usize) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir for etcd");
        let ports = free_ports(2 * n);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("tonic-balance-{}", ports[0]);
        let mut etcd = Etcd {
            members,
            initial_cluster,
            token,
            dir,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_healthy(i);
        }
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let binary = etcd_binary();
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("etcd log file");
        let child = Command::new(binary)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "25", "--election-timeout", "250"])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        m.child = Some(child);
    }

    /// Blocks until member `i` answers `/health` with a leader.
    pub fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + START_LIMIT;
        while Instant::now() < deadline {
            if self.is_healthy(i) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        panic!("etcd member {i} not healthy after {START_LIMIT:?}; its log:\n{log}");
    }

    /// True if member `i` is up and has a leader.
    pub fn is_healthy(&self, i: usize) -> bool {
        http_get(self.members[i].client_port, "/health")
            .is_some_and(|body| body.contains("\"health\":\"true\""))
    }

    /// `host:port` of member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's client endpoint, `,`-separated (a target authority).
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many members the cluster has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Kills member `i` with SIGKILL (no goodbye to clients or peers).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on the same ports and data directory, and
    /// waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i);
    }

    /// Kills the single member, deletes its data and starts it afresh: every
    /// key and lease is gone and revisions start again from 1.
    pub fn restart_empty(&mut self) {
        assert_eq!(self.members.len(), 1, "restart_empty is for one member");
        self.kill(0);
        let _ = std::fs::remove_dir_all(&self.members[0].data_dir);
        self.spawn(0);
        self.wait_healthy(0);
    }

    /// A client of every member (no leader required).
    pub async fn client(&self) -> etcd_client::Client {
        let endpoints: Vec<String> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .map(|i| self.endpoint(i))
            .collect();
        etcd_client::Client::connect(endpoints, None)
            .await
            .expect("etcd client")
    }

    /// A client of member `i` only.
    pub async fn client_of(&self, i: usize) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint(i)], None)
            .await
            .expect("etcd client")
    }

    /// Member `i`'s gauge of open watchers (`etcd_debugging_mvcc_watcher_total`).
    pub fn watchers(&self, i: usize) -> Option<u64> {
        let metrics = http_get(self.members[i].client_port, "/metrics")?;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    /// The directory holding data directories and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A blocking HTTP/1.0 GET on loopback; the body, or None on any failure.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

/// A TCP proxy on loopback that can be cut (every connection closed, new
/// ones refused) and restored on the same port: a network partition between
/// a client and etcd while etcd itself keeps running.
pub struct TcpProxy {
    port: u16,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Starts forwarding a free loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> TcpProxy {
        let proxy = TcpProxy {
            port: free_ports(1)[0],
            upstream: upstream.parse().expect("upstream host:port"),
            tasks: Arc::default(),
        };
        proxy.restore().await;
        proxy
    }

    /// `127.0.0.1:<port>`: give this to the client instead of etcd's.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes every proxied connection and stops listening.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the proxy port");
        let (upstream, tasks) = (self.upstream, self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

//! Backends in other processes, so that their CPU time is not the client's.
//!
//! `loadgen --serve N --first-index I` listens on N free ports of
//! 127.0.0.1, prints one `LISTEN <index> <addr>` line per port and serves
//! `proto.Simple/Route` until its standard input closes (so it never
//! outlives the load generator) or it is killed. Each backend answers with
//! its index in `SimpleResponse.code`, which is how every client, tonic's
//! included, counts calls per backend.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::proto::simple_server::{Simple, SimpleServer};
use crate::proto::{SimpleRequest, SimpleResponse};

struct Backend {
    index: i32,
}

#[tonic::async_trait]
impl Simple for Backend {
    async fn route(&self, _: Request<SimpleRequest>) -> Result<Response<SimpleResponse>, Status> {
        Ok(Response::new(SimpleResponse {
            code: self.index,
            value: String::new(),
        }))
    }
}

/// The backends' tokio scheduler: `--backend-runtime` (handed to the
/// backends' processes as `LOADGEN_BACKEND_RUNTIME`), `multi_thread` when
/// unset.
///
/// `current_thread` has no LIFO slot, so a backend answers every call of
/// one read before its connection task writes: one write for many
/// responses, as grpc-go's server does, and less CPU per call than
/// `multi_thread` with one worker, whose LIFO slot runs the connection
/// task after each response: one write per response (BENCHMARKS.md,
/// section 7).
pub static RUNTIME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The runtime the backends' processes use: `RUNTIME` in the load
/// generator, the environment in a backend process.
pub fn runtime_kind() -> Result<&'static str, String> {
    if let Some(kind) = RUNTIME.get() {
        return Ok(kind);
    }
    match std::env::var("LOADGEN_BACKEND_RUNTIME").as_deref() {
        Err(_) | Ok("multi_thread") => Ok("multi_thread"),
        Ok("current_thread") => Ok("current_thread"),
        Ok(other) => Err(format!(
            "LOADGEN_BACKEND_RUNTIME must be multi_thread or current_thread, not {other}"
        )),
    }
}

/// The `--serve` mode: serves `count` backends numbered from `first`; with
/// `cpu`, on that CPU alone with one tokio worker.
pub fn serve(
    count: usize,
    first: usize,
    cpu: Option<usize>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let current_thread = runtime_kind()? == "current_thread";
    let mut runtime = if current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if let Some(cpu) = cpu {
        crate::process::pin_to(cpu)?;
        if !current_thread {
            runtime.worker_threads(1);
        }
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async {
        for index in first..first + count {
            // serve_with_incoming ignores the builder's TCP_NODELAY: set
            // it here, or Nagle's algorithm stalls replies for 40 ms.
            let incoming =
                TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.with_nodelay(Some(true));
            println!("LISTEN {index} {}", incoming.local_addr()?);
            let backend = Backend {
                index: i32::try_from(index)?,
            };
            let mut server = tonic::transport::Server::builder();
            // `--tls on`: the parent hands over the certificate.
            if let (Ok(cert), Ok(key)) = (
                std::env::var("LOADGEN_TLS_CERT"),
                std::env::var("LOADGEN_TLS_KEY"),
            ) {
                let identity = tonic::transport::Identity::from_pem(cert, key);
                server = server
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
            }
            tokio::spawn(
                server
                    .add_service(SimpleServer::new(backend))
                    .serve_with_incoming(incoming),
            );
        }
        // Serve until the parent closes our stdin (or dies).
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await??;
        Ok(())
    })
}

/// Backend processes started by this load generator. Dropping it kills them.
pub struct Backends {
    procs: Vec<(Child, Vec<usize>)>,
    /// The CPU the backends' processes are pinned to, if any.
    cpu: Option<usize>,
    /// The backends' addresses, by index.
    pub addrs: Vec<SocketAddr>,
}

impl Backends {
    /// `n` backends in one process (for throughput runs), pinned to `cpu`.
    pub fn shared(n: usize, cpu: Option<usize>) -> std::io::Result<Backends> {
        let mut backends = Backends::empty(n, cpu);
        backends.spawn(n, 0)?;
        Ok(backends)
    }

    /// `n` backends, each in its own process (so that one can be killed),
    /// pinned to `cpu`.
    pub fn separate(n: usize, cpu: Option<usize>) -> std::io::Result<Backends> {
        let mut backends = Backends::empty(n, cpu);
        for i in 0..n {
            backends.spawn(1, i)?;
        }
        Ok(backends)
    }

    fn empty(n: usize, cpu: Option<usize>) -> Backends {
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        Backends {
            procs: Vec::new(),
            cpu,
            addrs: vec![unset; n],
        }
    }

    fn spawn(&mut self, count: usize, first: usize) -> std::io::Result<()> {
        let mut command = Command::new(std::env::current_exe()?);
        if let Some(tls) = crate::clients::TLS.get() {
            command
                .env("LOADGEN_TLS_CERT", &tls.cert_pem)
                .env("LOADGEN_TLS_KEY", &tls.key_pem);
        }
        if let Some(kind) = RUNTIME.get() {
            command.env("LOADGEN_BACKEND_RUNTIME", kind);
        }
        if let Some(cpu) = self.cpu {
            command.args(["--pin-cpu", &cpu.to_string()]);
        }
        let mut child = command
            .args([
                "--serve",
                &count.to_string(),
                "--first-index",
                &first.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| bad("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut indices = Vec::new();
        // Push first, so that Drop kills the child whatever happens below.
        self.procs.push((child, Vec::new()));
        for _ in 0..count {
            let line = lines.next().ok_or_else(|| bad("backend exited"))??;
            let (index, addr) = parse_listen(&line).ok_or_else(|| bad(&line))?;
            *self.addrs.get_mut(index).ok_or_else(|| bad(&line))? = addr;
            indices.push(index);
        }
        if let Some(last) = self.procs.last_mut() {
            last.1 = indices;
        }
        Ok(())
    }

    /// CPU time the backends' processes have used so far (every thread's
    /// run time from `/proc/PID/task/TID/schedstat`, in nanoseconds), or
    /// `None` where `/proc` cannot tell (not Linux, a process gone).
    pub fn cpu_time(&self) -> Option<Duration> {
        let mut total = Duration::ZERO;
        for (child, _) in &self.procs {
            total += process_cpu_time(child.id())?;
        }
        Some(total)
    }

    /// SIGKILLs the process serving backend `index`.
    pub fn kill(&mut self, index: usize) -> std::io::Result<()> {
        for (child, indices) in &mut self.procs {
            if indices.contains(&index) {
                child.kill()?;
                child.wait()?;
            }
        }
        Ok(())
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        for (child, _) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The summed run time of every thread of process `pid`.
fn process_cpu_time(pid: u32) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(text) = std::fs::read_to_string(task.ok()?.path().join("schedstat")) else {
            // A thread that ended between the listing and the read.
            continue;
        };
        let nanos: u64 = text.split(' ').next()?.parse().ok()?;
        total += Duration::from_nanos(nanos);
    }
    Some(total)
}

fn parse_listen(line: &str) -> Option<(usize, SocketAddr)> {
    let mut words = line.strip_prefix("LISTEN ")?.split(' ');
    let index = words.next()?.parse().ok()?;
    let addr = words.next()?.parse().ok()?;
    Some((index, addr))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::other(format!("backend process: unexpected output: {what}"))
}

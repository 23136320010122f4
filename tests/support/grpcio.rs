//! A foreign gRPC server: Python's `grpcio`, which is gRPC's C-core, in a
//! child process (`tests/support/grpcio_server.py`). The test command
//! installs `grpcio` with pip; a test that needs it fails with that advice
//! when it is missing, never skips.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};

/// A running grpcio server. Dropping it kills the process.
pub struct GrpcioServer {
    pub addr: SocketAddr,
    child: Child,
    _stdin: ChildStdin,
}

impl GrpcioServer {
    /// Starts `grpcio_server.py` with `args` (see the script's options) and
    /// waits until it listens.
    pub fn start(args: &[&str]) -> GrpcioServer {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/grpcio_server.py"
        );
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e} (the tests need Python 3 with grpcio: pip install grpcio)"));
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the server's port");
        let port: u16 = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("grpcio server did not start (is grpcio installed? pip install grpcio): {line:?}")
            });
        GrpcioServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            _stdin: stdin,
        }
    }

    /// Sends the server a command line (`SERVING` / `NOT_SERVING` with
    /// `--health-service`).
    pub fn command(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self._stdin, "{line}").expect("the grpcio server reads its commands");
        self._stdin
            .flush()
            .expect("the grpcio server reads its commands");
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the process freezes; the kernel keeps its sockets, so the
    /// connection stays up and nothing answers (a hung host).
    /// Returns once every thread of the process is stopped (state `T` in
    /// `/proc`), so that nothing it does afterwards races the caller.
    pub fn freeze(&self) {
        signal(self.pid(), libc::SIGSTOP);
        for _ in 0..1000 {
            if all_threads_stopped(self.pid()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("process {} did not stop after SIGSTOP", self.pid());
    }

    /// SIGCONT: undoes [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        signal(self.pid(), libc::SIGCONT);
    }
}

fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // `tid (comm) S ...`: the state follows the last `)`.
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('T'))
    })
}

fn signal(pid: u32, sig: libc::c_int) {
    // The pid is our own child's, which we have not reaped yet.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

impl Drop for GrpcioServer {
    fn drop(&mut self) {
        // SIGKILL ends a frozen process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

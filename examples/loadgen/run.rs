//! Drives one client: `concurrency` tasks call in a closed loop; after the
//! warm-up a measurement window opens, and every call that completes inside
//! it is recorded (latency, backend or error, completion time), together
//! with the process's CPU time (getrusage user + sys) and heap allocations
//! over the window, and the backends' CPU time when the caller can read it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::clients::Client;

/// An action taken `at` into the measurement window (the failover kill).
pub struct Midway<'a> {
    pub at: Duration,
    pub action: Box<dyn FnOnce() + 'a>,
}

/// Everything recorded in one window.
#[derive(Debug, Default)]
pub struct Window {
    pub elapsed: Duration,
    pub cpu: Duration,
    /// CPU time of the backends' processes, when known.
    pub backend_cpu: Option<Duration>,
    /// Context switches (voluntary + involuntary) of this process.
    pub switches: u64,
    /// Heap allocations made by this process.
    pub allocations: u64,
    /// Latency of every completed call, µs, sorted.
    pub latencies_us: Vec<u32>,
    /// (completion time into the window, backend index or `None` = error).
    pub calls: Vec<(Duration, Option<usize>)>,
    /// (completion time into the window, message) of every failed call.
    pub errors: Vec<(Duration, String)>,
}

impl Window {
    pub fn requests(&self) -> usize {
        self.calls.len()
    }

    pub fn rps(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU µs spent by this (client) process per completed call.
    pub fn cpu_us_per_request(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests().max(1) as f64
    }

    /// CPU µs spent by the backends' processes per completed call.
    pub fn backend_cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.backend_cpu?;
        Some(cpu.as_secs_f64() * 1e6 / self.requests().max(1) as f64)
    }

    /// The share of the window this (client) process ran, in percent of
    /// one CPU (above 100 on several CPUs at once).
    pub fn busy_percent(&self) -> f64 {
        percent(self.cpu, self.elapsed)
    }

    /// The same for the backends' processes, when known.
    pub fn backend_busy_percent(&self) -> Option<f64> {
        Some(percent(self.backend_cpu?, self.elapsed))
    }

    /// Context switches of this (client) process per completed call.
    pub fn switches_per_request(&self) -> f64 {
        self.switches as f64 / self.requests().max(1) as f64
    }

    /// Heap allocations of this (client) process per completed call.
    pub fn allocations_per_request(&self) -> f64 {
        self.allocations as f64 / self.requests().max(1) as f64
    }

    /// Latency percentile `p` (0..=100) in µs.
    pub fn percentile(&self, p: f64) -> u32 {
        let n = self.latencies_us.len();
        if n == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        self.latencies_us[rank.clamp(1, n) - 1]
    }

    /// Calls served per backend among calls completed in `from..`.
    pub fn per_backend(&self, backends: usize, from: Duration) -> Vec<usize> {
        let mut counts = vec![0; backends];
        for (_, backend) in self.calls.iter().filter(|(t, _)| *t >= from) {
            if let Some(slot) = backend.and_then(|b| counts.get_mut(b)) {
                *slot += 1;
            }
        }
        counts
    }
}

#[derive(Default)]
struct Control {
    recording: AtomicBool,
    stop: AtomicBool,
    start: OnceLock<Instant>,
}

#[derive(Default)]
struct Log {
    latencies_us: Vec<u32>,
    calls: Vec<(Duration, Option<usize>)>,
    errors: Vec<(Duration, String)>,
}

fn percent(cpu: Duration, elapsed: Duration) -> f64 {
    cpu.as_secs_f64() * 100.0 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Warms `client` up, then measures it for `duration`. `backend_cpu`
/// reads the backends' CPU time so far (`None`: not known).
pub async fn measure(
    client: &Client,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    midway: Option<Midway<'_>>,
    backend_cpu: &dyn Fn() -> Option<Duration>,
) -> Window {
    let control = Arc::new(Control::default());
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(client.clone(), control.clone())))
        .collect();
    tokio::time::sleep(warmup).await;

    let (cpu0, switches0) = usage();
    let backend0 = backend_cpu();
    let allocations0 = crate::process::allocations();
    crate::process::callgrind::zero();
    let start = Instant::now();
    let _ = control.start.set(start);
    control.recording.store(true, Ordering::Release);
    match midway {
        Some(m) => {
            tokio::time::sleep(m.at).await;
            (m.action)();
            tokio::time::sleep_until((start + duration).into()).await;
        }
        None => tokio::time::sleep(duration).await,
    }
    control.recording.store(false, Ordering::Release);
    crate::process::callgrind::dump();
    let elapsed = start.elapsed();
    let (cpu1, switches1) = usage();
    let backend1 = backend_cpu();
    let allocations1 = crate::process::allocations();
    control.stop.store(true, Ordering::Release);

    let mut window = Window {
        elapsed,
        cpu: cpu1.saturating_sub(cpu0),
        backend_cpu: backend0.zip(backend1).map(|(a, b)| b.saturating_sub(a)),
        switches: switches1.saturating_sub(switches0),
        allocations: allocations1.saturating_sub(allocations0),
        ..Window::default()
    };
    for worker in workers {
        if let Ok(log) = worker.await {
            window.latencies_us.extend(log.latencies_us);
            window.calls.extend(log.calls);
            window.errors.extend(log.errors);
        }
    }
    window.latencies_us.sort_unstable();
    window.calls.sort_unstable_by_key(|(t, _)| *t);
    window.errors.sort_by_key(|(t, _)| *t);
    window
}

async fn worker(mut client: Client, control: Arc<Control>) -> Log {
    let mut log = Log::default();
    while !control.stop.load(Ordering::Acquire) {
        let began = Instant::now();
        let outcome = client.call().await;
        let ended = Instant::now();
        if !control.recording.load(Ordering::Acquire) {
            continue;
        }
        let Some(&start) = control.start.get() else {
            continue;
        };
        let at = ended.saturating_duration_since(start);
        let micros = ended.duration_since(began).as_micros();
        log.latencies_us
            .push(u32::try_from(micros).unwrap_or(u32::MAX));
        match outcome {
            Ok(backend) => log.calls.push((at, Some(backend))),
            Err(message) => {
                log.calls.push((at, None));
                log.errors.push((at, message));
            }
        }
    }
    log
}

/// User + system CPU time and context switches of this process so far.
fn usage() -> (Duration, u64) {
    // SAFETY: getrusage only writes into the struct we hand it; an all-zero
    // `rusage` is a valid value of that plain C struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return (Duration::ZERO, 0);
        }
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    let switches = usage.ru_nvcsw.max(0) as u64 + usage.ru_nivcsw.max(0) as u64;
    (tv(usage.ru_utime) + tv(usage.ru_stime), switches)
}

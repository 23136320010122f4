//! Load generator: unary gRPC throughput, latency and client CPU of
//! tonic-balance against tonic's own channels and raw hyper and h2, plus a
//! failover scenario and a cancellation storm. See BENCHMARKS.md for
//! figures.
//!
//! ```text
//! cargo run --release --example loadgen -- \
//!     [--scenario throughput|failover|cancel-storm|all] [--concurrency 1,16,64] \
//!     [--duration 3s] [--warmup 1s] [--rounds 3] [--clients a,b,...] \
//!     [--failover-concurrency 16] \
//!     [--storm-calls 10000] [--storm-callers 50] [--storm-wait 2ms] \
//!     [--tls on]   # TLS backends and clients (build with --features tls)
//!     [--pin on]   # client on CPU 0, backends on CPU 1, one tokio worker
//!                  # each (one thread for current_thread backends)
//!
//! Each flag takes one value and may be given once. `--concurrency`,
//! `--rounds`, `--failover-concurrency`, `--storm-calls` and
//! `--storm-callers` take positive integers (`--concurrency` a
//! comma-separated list of them); `--duration`, `--warmup` and
//! `--storm-wait` take a duration: a decimal number of seconds (`3`,
//! `2.5`), or with a unit, `s` or `ms` (`3s`, `2.5s`, `500ms`); `--duration`
//! must be above zero, `--warmup 0` and `--storm-wait 0` are accepted.
//! `--clients` names each client at most once, from the list below (and
//! `--help`). A bad value is refused with an error naming the flag.
//!
//! `--scenario connections`: every call on one connection to one backend
//! (tonic-direct, ours-pick_first, ours-round_robin, hyper and h2 over one
//! connection), by default at concurrency 1,16,64,256: how a client's cost
//! per call grows with the streams in flight on one HTTP/2 connection. The
//! raw h2 client is left out above 200 calls in flight (it stalls there).
//!
//! Clients beyond the default set: `ours-round_robin-pool4` (a pool of 4
//! connections per address, `connections_per_address(4)`) and
//! `ours-least_request` (the `least_request` policy, gRFC A48),
//! `ours-weighted_round_robin` (gRFC A58; no load reports, so equal
//! weights) and `ours-ring_hash` (gRFC A42; a different
//! `x-loadgen-key` header per call, its `requestHashHeader`).
//! `ours-round_robin-outlier`: round_robin under outlier detection (gRFC
//! A50) with failure-percentage ejection, counting every call's outcome.
//!
//! `--backend-runtime current_thread` (or `LOADGEN_BACKEND_RUNTIME=current_thread`
//! in the environment) runs the backends on tokio's current-thread
//! scheduler: a server that answers all the calls of one read in one write
//! (as grpc-go's does), instead of one write per response, and needs less
//! CPU per call. The default is `multi_thread` (one worker with `--pin on`).
//!
//! Each throughput row gives the backends' CPU per call beside the
//! client's, and how busy each side was in percent of one CPU: pinned, the
//! side near 100 % sets the throughput. When it is the backends, the
//! throughput ratios measure the server's cost of each client's calls,
//! and the `cpu vs` columns (client CPU ratios) say what the client alone
//! would reach.
//! ```
//!
//! Backends run in child processes (this binary re-executed with
//! `--serve`), so the client's CPU figure is the client's alone; they share
//! the machine's cores with the client, as on any single-host benchmark.
//! Clients are measured alternately (A B C D E, A B C D E, ...) and the
//! report gives medians over rounds, and each client's throughput ratio to
//! `tonic-direct` taken within each round (then the median of those).

mod clients;
#[path = "../../tests/support/h2frames.rs"]
mod h2frames;
mod process;
mod report;
mod run;
mod server;
mod storm;

pub mod proto {
    tonic::include_proto!("proto");
}

use std::collections::BTreeMap;
use std::time::Duration;

use clients::{Client, Kind};
use report::{Failover, Throughput};
use run::Midway;
use server::Backends;

const BACKENDS: usize = 3;

const USAGE: &str = "\
cargo run --release --example loadgen -- \\
    [--scenario throughput|connections|failover|cancel-storm|all] [--concurrency 1,16,64] \\
    [--duration 3s] [--warmup 1s] [--rounds 3] [--clients a,b,...] \\
    [--failover-concurrency 16] \\
    [--storm-calls 10000] [--storm-callers 50] [--storm-wait 2ms] \\
    [--tls on] [--pin on] [--backend-runtime multi_thread|current_thread]

Each flag at most once. --concurrency: comma-separated positive integers;
--rounds, --failover-concurrency, --storm-calls, --storm-callers: a positive
integer; --duration, --warmup, --storm-wait: seconds (3, 2.5) or a number
with s or ms (3s, 2.5s, 500ms); --duration above zero, --warmup and
--storm-wait may be 0.
";

/// The flags of a measuring run; each takes one value.
const FLAGS: [&str; 13] = [
    "--scenario",
    "--concurrency",
    "--duration",
    "--warmup",
    "--rounds",
    "--clients",
    "--failover-concurrency",
    "--storm-calls",
    "--storm-callers",
    "--storm-wait",
    "--tls",
    "--pin",
    "--backend-runtime",
];

/// `--help`: the flags, then every client `--clients` accepts.
fn usage() -> String {
    let mut text = USAGE.to_owned();
    text.push_str("\nclients (default: the first six; with --tls on, the first four):\n");
    for row in Kind::EVERY.chunks(3) {
        let names: Vec<String> = row
            .iter()
            .map(|&k| match k {
                Kind::OursOtel => format!("{} (--features otel)", k.name()),
                _ => k.name().to_owned(),
            })
            .collect();
        text.push_str(&format!("  {}\n", names.join(" ")));
    }
    text
}

/// The raw `h2` client stalls with more calls than this on one
/// connection to the tonic backend (seen at 256; not investigated), so the
/// connections scenario leaves it out above it.
const H2_MAX_STREAMS: usize = 200;

#[global_allocator]
static ALLOCATOR: process::Counting = process::Counting;

#[derive(Debug)]
struct Options {
    scenario: String,
    concurrency: Vec<usize>,
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    clients: Vec<Kind>,
    failover_concurrency: usize,
    storm: storm::Storm,
    /// `--pin on`: the CPU of the backends' processes (the client is on 0).
    backend_cpu: Option<usize>,
    /// The backends' tokio scheduler (`server::runtime_kind`).
    backend_runtime: &'static str,
    /// The machine's CPUs, counted before pinning.
    cores: usize,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage());
        return Ok(());
    }
    if let Some(count) = flag(&args, "--serve") {
        let first = flag(&args, "--first-index").unwrap_or("0");
        let cpu = flag(&args, "--pin-cpu").map(str::parse).transpose()?;
        return server::serve(count.parse()?, first.parse()?, cpu);
    }
    let options = match parse(&args) {
        Ok(options) => options,
        Err(e) => {
            // A usage error: the message alone (not its Debug form), exit 2.
            eprintln!("loadgen: {e} (see --help)");
            std::process::exit(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if options.backend_cpu.is_some() {
        process::pin_to(0)?;
        runtime.worker_threads(1);
    }
    // RUST_LOG=tonic_balance=debug shows subchannel events on stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async {
        if matches!(options.scenario.as_str(), "throughput" | "all") {
            throughput(&options, BACKENDS, &options.clients).await?;
        }
        if options.scenario == "connections" {
            let kinds: Vec<Kind> = options
                .clients
                .iter()
                .copied()
                .filter(|&k| k != Kind::TonicBalanceList)
                .collect();
            throughput(&options, 1, &kinds).await?;
        }
        if matches!(options.scenario.as_str(), "failover" | "all") {
            failover(&options).await?;
        }
        if matches!(options.scenario.as_str(), "cancel-storm" | "all") {
            cancel_storm(&options).await?;
        }
        Ok::<_, BoxError>(())
    })?;
    Ok(())
}

/// Closed-loop unary calls of every client in `kinds` to `count`
/// backends, one table per concurrency.
async fn throughput(options: &Options, count: usize, kinds: &[Kind]) -> Result<(), BoxError> {
    let backends = Backends::shared(count, options.backend_cpu)?;
    println!(
        "# throughput{}: {} backend(s) in one child process ({} runtime), {} cores{}, {} rounds x {:?} (warm-up {:?})",
        if clients::TLS.get().is_some() { " over TLS" } else { "" },
        count,
        options.backend_runtime,
        options.cores,
        match (options.backend_cpu, options.backend_runtime) {
            (None, _) => "",
            (Some(_), "current_thread") => {
                " (pinned: client on CPU 0 with one tokio worker, backends on CPU 1 on one thread)"
            }
            (Some(_), _) => " (pinned: client on CPU 0, backends on CPU 1, one tokio worker each)",
        },
        options.rounds,
        options.duration,
        options.warmup
    );
    for &concurrency in &options.concurrency {
        let mut result = Throughput::new(concurrency, count);
        for round in 0..options.rounds {
            for &kind in kinds {
                if kind == Kind::H2RoundRobin && count == 1 && concurrency > H2_MAX_STREAMS {
                    continue;
                }
                let client = Client::connect(kind, &backends.addrs).await?;
                let window = run::measure(
                    &client,
                    concurrency,
                    options.warmup,
                    options.duration,
                    None,
                    &|| backends.cpu_time(),
                )
                .await;
                drop(client);
                eprintln!(
                    "  c={concurrency} round {} {:<width$} {:>9.0} req/s",
                    round + 1,
                    kind.name(),
                    window.rps(),
                    width = Kind::name_width()
                );
                result.add(round, kind, window);
                // Let the dropped client's connections and tasks wind down.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        result.print();
    }
    Ok(())
}

async fn failover(options: &Options) -> Result<(), BoxError> {
    let kinds: Vec<Kind> = [
        Kind::OursRoundRobin,
        Kind::OursPickFirst,
        Kind::TonicBalanceList,
    ]
    .into_iter()
    .filter(|k| options.clients.contains(k))
    .collect();
    let concurrency = options.failover_concurrency;
    println!(
        "# failover: {} backends, one process each; concurrency {concurrency}; backend 0 \
         SIGKILLed {:?} into a {:?} window",
        BACKENDS,
        options.duration / 2,
        options.duration
    );
    let mut report = Failover::new(BACKENDS);
    for round in 0..options.rounds {
        for &kind in &kinds {
            let mut backends = Backends::separate(BACKENDS, options.backend_cpu)?;
            let client = Client::connect(kind, &backends.addrs).await?;
            let kill_at = options.duration / 2;
            let midway = Midway {
                at: kill_at,
                action: Box::new(|| {
                    if let Err(e) = backends.kill(0) {
                        eprintln!("failed to kill backend 0: {e}");
                    }
                }),
            };
            let window = run::measure(
                &client,
                concurrency,
                options.warmup,
                options.duration,
                Some(midway),
                // The backends are borrowed by the kill; their CPU is not
                // part of the failover report.
                &|| None,
            )
            .await;
            drop(client);
            report.add(round, kind, kill_at, window);
        }
    }
    report.print();
    Ok(())
}

/// The storm against each client in turn, `rounds` times, each on a fresh
/// backend.
async fn cancel_storm(options: &Options) -> Result<(), BoxError> {
    let mut outcomes = Vec::new();
    for round in 0..options.rounds {
        for client in storm::StormClient::ALL {
            let outcome = storm::run(options.storm, client, round).await?;
            eprintln!("  cancel-storm round {} {} done", round + 1, client.name());
            outcomes.push(outcome);
            // Let the dropped client's connection and tasks wind down.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    storm::print(options.storm, &outcomes);
    Ok(())
}

/// Parses a measuring run's flags. Every value is checked before anything
/// is set up (TLS material, the backends' runtime), so a bad one changes
/// nothing.
fn parse(args: &[String]) -> Result<Options, BoxError> {
    let flags = flags(args)?;
    let get = |name: &str| flags.get(name).copied();
    let scenario = get("--scenario").unwrap_or("all").to_owned();
    if ![
        "throughput",
        "connections",
        "failover",
        "cancel-storm",
        "all",
    ]
    .contains(&scenario.as_str())
    {
        return Err(format!(
            "--scenario must be throughput, connections, failover, cancel-storm or all, \
             not {scenario:?}"
        )
        .into());
    }
    let default_concurrency = if scenario == "connections" {
        "1,16,64,256"
    } else {
        "1,16,64"
    };
    let concurrency = positive_list(
        "--concurrency",
        get("--concurrency").unwrap_or(default_concurrency),
    )?;
    let duration_ = duration("--duration", get("--duration").unwrap_or("3s"), false)?;
    let warmup = duration("--warmup", get("--warmup").unwrap_or("1s"), true)?;
    let rounds = positive("--rounds", get("--rounds").unwrap_or("3"))?;
    let failover_concurrency = positive(
        "--failover-concurrency",
        get("--failover-concurrency").unwrap_or("16"),
    )?;
    let storm = storm::Storm {
        calls: positive("--storm-calls", get("--storm-calls").unwrap_or("10000"))?,
        callers: positive("--storm-callers", get("--storm-callers").unwrap_or("50"))?,
        longest_wait: duration("--storm-wait", get("--storm-wait").unwrap_or("2ms"), true)?,
        handler_delay: Duration::from_millis(1),
    };
    let pin = on_off("--pin", get("--pin"))?;
    let tls = on_off("--tls", get("--tls"))?;
    let runtime = match get("--backend-runtime") {
        None => None,
        Some("multi_thread") => Some("multi_thread"),
        Some("current_thread") => Some("current_thread"),
        Some(other) => {
            return Err(format!(
                "--backend-runtime must be multi_thread or current_thread, not {other:?}"
            )
            .into())
        }
    };
    let default_clients = if tls {
        "tonic-direct,tonic-balance_list,ours-round_robin,ours-pick_first".to_owned()
    } else {
        let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        names.join(",")
    };
    let clients = clients(get("--clients").unwrap_or(&default_clients))?;
    let backend_cpu = match pin {
        false => None,
        true if cores() >= 2 => Some(1),
        true => return Err("--pin on needs 2 CPUs".into()),
    };

    // Every value is good: set up.
    if let Some(kind) = runtime {
        if server::RUNTIME.set(kind).is_err() {
            return Err("--backend-runtime set twice".into());
        }
    }
    let backend_runtime = server::runtime_kind()?;
    if tls {
        let material = clients::TlsMaterial::generate()?;
        if clients::TLS.set(material).is_err() {
            return Err("TLS set twice".into());
        }
    }
    Ok(Options {
        scenario,
        concurrency,
        duration: duration_,
        warmup,
        rounds,
        clients,
        failover_concurrency,
        storm,
        backend_cpu,
        backend_runtime,
        cores: cores(),
    })
}

/// The flags in `args` and their values: each one of `FLAGS`, followed
/// by its value, at most once.
fn flags(args: &[String]) -> Result<BTreeMap<&'static str, &str>, String> {
    let mut flags = BTreeMap::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let Some(&name) = FLAGS.iter().find(|&&f| f == arg) else {
            return Err(format!(
                "unknown flag {arg:?}; the flags are {}",
                FLAGS.join(" ")
            ));
        };
        let value = match rest.next() {
            Some(value) if !value.starts_with("--") => value.as_str(),
            _ => return Err(format!("{name} needs a value")),
        };
        if let Some(first) = flags.insert(name, value) {
            return Err(format!(
                "{name} given twice ({first:?} and {value:?}); give it once"
            ));
        }
    }
    Ok(flags)
}

/// A positive integer: a count of calls, callers, rounds or tasks.
fn positive(name: &str, text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name} must be a positive integer, not {text:?}")),
    }
}

/// Comma-separated positive integers, each at most once.
fn positive_list(name: &str, text: &str) -> Result<Vec<usize>, String> {
    let mut list = Vec::new();
    for item in text.split(',') {
        match item.parse::<usize>() {
            Ok(n) if n > 0 => {
                if list.contains(&n) {
                    return Err(format!("{name} lists {n} twice, in {text:?}"));
                }
                list.push(n);
            }
            _ => {
                return Err(format!(
                    "{name} must be a comma-separated list of positive integers, not {text:?}"
                ))
            }
        }
    }
    Ok(list)
}

/// A duration: a decimal number of seconds (`3`, `2.5`), or of seconds or
/// milliseconds with the unit (`3s`, `2.5s`, `500ms`). Zero only if
/// `zero_ok`.
fn duration(name: &str, text: &str, zero_ok: bool) -> Result<Duration, String> {
    let accepted = if zero_ok {
        "a duration (3s, 2.5s, 500ms, or 3 for seconds; 0 for none)"
    } else {
        "a duration above zero (3s, 2.5s, 500ms, or 3 for seconds)"
    };
    let refuse = || format!("{name} must be {accepted}, not {text:?}");
    let (number, scale) = match text.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    // Digits with at most one decimal point: no sign, exponent, inf or NaN.
    let decimal = number.chars().any(|c| c.is_ascii_digit())
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.matches('.').count() <= 1;
    if !decimal {
        return Err(refuse());
    }
    let seconds: f64 = number.parse().map_err(|_| refuse())?;
    let value = Duration::try_from_secs_f64(seconds * scale).map_err(|_| refuse())?;
    if value.is_zero() && !zero_ok {
        return Err(refuse());
    }
    Ok(value)
}

/// `on` or `off` (absent is off).
fn on_off(name: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("off") => Ok(false),
        Some("on") => Ok(true),
        Some(other) => Err(format!("{name} must be on or off, not {other:?}")),
    }
}

/// `--clients`: comma-separated names from `Kind::EVERY`, each once.
fn clients(text: &str) -> Result<Vec<Kind>, String> {
    let mut kinds = Vec::new();
    for name in text.split(',') {
        let Some(kind) = Kind::parse(name) else {
            let every: Vec<&str> = Kind::EVERY.iter().map(|k| k.name()).collect();
            return Err(format!(
                "--clients: unknown client {name:?}; the clients are {}",
                every.join(" ")
            ));
        };
        if kinds.contains(&kind) {
            return Err(format!("--clients names {name} twice, in {text:?}"));
        }
        kinds.push(kind);
    }
    Ok(kinds)
}

/// The value after `name` in the `--serve` child's arguments.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    fn error(line: &str) -> String {
        match parse(&args(line)) {
            Ok(options) => panic!("{line} accepted: {options:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults() -> Result<(), BoxError> {
        let options = parse(&[])?;
        assert_eq!(options.scenario, "all");
        assert_eq!(options.concurrency, [1, 16, 64]);
        assert_eq!(options.duration, Duration::from_secs(3));
        assert_eq!(options.warmup, Duration::from_secs(1));
        assert_eq!(options.rounds, 3);
        assert_eq!(options.clients, Kind::ALL);
        assert_eq!(options.failover_concurrency, 16);
        assert_eq!(options.storm.calls, 10000);
        assert_eq!(options.storm.callers, 50);
        assert_eq!(options.storm.longest_wait, Duration::from_millis(2));
        assert_eq!(options.backend_cpu, None);
        Ok(())
    }

    #[test]
    fn good_values() -> Result<(), BoxError> {
        let options = parse(&args(
            "--scenario connections --duration 1500ms --warmup 0 --rounds 9 \
             --clients ours-pick_first-method_config,tonic-direct --storm-wait 0.5",
        ))?;
        assert_eq!(options.concurrency, [1, 16, 64, 256]);
        assert_eq!(options.duration, Duration::from_millis(1500));
        assert_eq!(options.warmup, Duration::ZERO);
        assert_eq!(options.rounds, 9);
        assert_eq!(options.clients, [Kind::OursMethodConfig, Kind::TonicDirect]);
        assert_eq!(options.storm.longest_wait, Duration::from_millis(500));
        Ok(())
    }

    #[test]
    fn durations() {
        let seconds = |text| duration("--duration", text, false);
        assert_eq!(seconds("5"), Ok(Duration::from_secs(5)));
        assert_eq!(seconds("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(seconds("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(seconds(".5"), Ok(Duration::from_millis(500)));
        for bad in [
            "0",
            "0s",
            "0ms",
            "0.0000000001",
            "1.5m",
            "-1s",
            "+1s",
            "1e3",
            "inf",
            "NaN",
            "",
            "s",
            "ms",
            ".",
            "1..5",
            "1.2.3s",
            "3 s",
            "99999999999999999999999",
        ] {
            let e = seconds(bad).expect_err(bad);
            assert!(
                e.starts_with("--duration must be a duration above zero"),
                "{e}"
            );
            assert!(e.contains("500ms"), "{e}");
        }
        assert_eq!(
            duration("--warmup", "0", true),
            Ok(Duration::ZERO),
            "a warm-up of 0 is fine"
        );
        assert_eq!(
            duration("--warmup", "-1s", true),
            Err(
                "--warmup must be a duration (3s, 2.5s, 500ms, or 3 for seconds; 0 for none), \
                 not \"-1s\""
                    .to_owned()
            )
        );
    }

    #[test]
    fn numbers_name_the_flag_and_value() {
        assert_eq!(
            error("--concurrency 64,x"),
            "--concurrency must be a comma-separated list of positive integers, not \"64,x\""
        );
        for value in ["0", "-1", "", "1,,2", "16,0", "1.5"] {
            let e = error(&format!("--concurrency {value}"));
            assert!(e.contains(&format!("{value:?}")), "{e}");
        }
        assert_eq!(
            error("--concurrency 16,16"),
            "--concurrency lists 16 twice, in \"16,16\""
        );
        for flag in [
            "--rounds",
            "--failover-concurrency",
            "--storm-calls",
            "--storm-callers",
        ] {
            for value in ["0", "-2", "x", "", "2.0"] {
                assert_eq!(
                    error(&format!("{flag} {value}")),
                    format!("{flag} must be a positive integer, not {value:?}")
                );
            }
        }
        assert!(error("--duration 0s").starts_with("--duration must be a duration above zero"));
        assert!(error("--storm-wait 1.5m").starts_with("--storm-wait must be a duration"));
    }

    #[test]
    fn flags_once_each_with_a_value() {
        assert_eq!(
            error("--rounds 2 --rounds 3"),
            "--rounds given twice (\"2\" and \"3\"); give it once"
        );
        assert_eq!(
            error("--scenario throughput --duration 1s --scenario failover"),
            "--scenario given twice (\"throughput\" and \"failover\"); give it once"
        );
        assert_eq!(error("--rounds"), "--rounds needs a value");
        assert_eq!(error("--rounds --duration 1s"), "--rounds needs a value");
        assert!(error("--round 3").starts_with("unknown flag \"--round\""));
        assert!(error("3").starts_with("unknown flag \"3\""));
        assert_eq!(error("--pin yes"), "--pin must be on or off, not \"yes\"");
        assert_eq!(error("--tls 1"), "--tls must be on or off, not \"1\"");
    }

    #[test]
    fn clients_named_once_from_the_one_list() {
        assert_eq!(
            error("--clients tonic-direct,tonic-direct"),
            "--clients names tonic-direct twice, in \"tonic-direct,tonic-direct\""
        );
        let e = error("--clients nosuch");
        assert!(e.starts_with("--clients: unknown client \"nosuch\""), "{e}");
        let help = usage();
        for kind in Kind::EVERY {
            assert!(e.contains(kind.name()), "{kind:?} missing from {e}");
            assert!(help.contains(kind.name()), "{kind:?} missing from --help");
            assert_eq!(clients(kind.name()), Ok(vec![kind]));
        }
        assert!(error("--clients ").starts_with("--clients: unknown client \"\""));
    }

    #[test]
    fn client_column_fits_every_name() {
        assert_eq!(Kind::name_width(), "ours-pick_first-method_config".len());
    }
}

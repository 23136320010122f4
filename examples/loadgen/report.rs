//! Tables for people and one JSON line per client (or failover run) for
//! scripts. Throughput figures are medians over rounds; each ratio (to
//! `tonic-direct`, `tonic-balance_list`, `hyper-round_robin` and
//! `h2-round_robin`) is taken
//! within each round, then its median is reported.
//!
//! Besides the client's CPU per call, each row gives the backends' CPU per
//! call and how busy each side was (percent of one CPU over the window):
//! with `--pin on` each side has one CPU, and the side near 100 % is the
//! one that sets the throughput. The `cpu vs` columns are the client-CPU
//! ratios (the base client's CPU µs per call over this client's, within a
//! round, then the median): the throughput ratio the two clients would
//! show if each were limited by its own CPU alone.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::clients::Kind;
use crate::run::Window;

/// What is kept of one throughput window.
struct Summary {
    round: usize,
    kind: Kind,
    rps: f64,
    p50: u32,
    p99: u32,
    p999: u32,
    cpu_us: f64,
    backend_cpu_us: Option<f64>,
    busy: f64,
    backend_busy: Option<f64>,
    switches: f64,
    allocations: f64,
    errors: usize,
    per_backend: Vec<usize>,
}

/// The throughput results at one concurrency.
pub struct Throughput {
    concurrency: usize,
    backends: usize,
    runs: Vec<Summary>,
}

impl Throughput {
    pub fn new(concurrency: usize, backends: usize) -> Self {
        Throughput {
            concurrency,
            backends,
            runs: Vec::new(),
        }
    }

    pub fn add(&mut self, round: usize, kind: Kind, w: Window) {
        self.runs.push(Summary {
            round,
            kind,
            rps: w.rps(),
            p50: w.percentile(50.0),
            p99: w.percentile(99.0),
            p999: w.percentile(99.9),
            cpu_us: w.cpu_us_per_request(),
            backend_cpu_us: w.backend_cpu_us_per_request(),
            busy: w.busy_percent(),
            backend_busy: w.backend_busy_percent(),
            switches: w.switches_per_request(),
            allocations: w.allocations_per_request(),
            errors: w.errors.len(),
            per_backend: w.per_backend(self.backends, Duration::ZERO),
        });
    }

    /// The ratio of `run`'s throughput to `base`'s in the same round.
    fn ratio(&self, run: &Summary, base: Kind) -> Option<f64> {
        self.base(run, base).map(|b| run.rps / b.rps)
    }

    /// `base`'s client CPU per call over `run`'s, in the same round.
    fn cpu_ratio(&self, run: &Summary, base: Kind) -> Option<f64> {
        self.base(run, base)
            .filter(|_| run.cpu_us > 0.0)
            .map(|b| b.cpu_us / run.cpu_us)
    }

    /// For each of `bases`, the median over rounds of `ratio(run, base)`:
    /// a table cell each (`-` when the base did not run) and, in `line`,
    /// `{key}_vs_{base}_median` and `{key}_vs_{base}_by_round`.
    fn ratio_cells(
        &self,
        runs: &[&Summary],
        bases: &[Kind],
        key: &str,
        ratio: fn(&Self, &Summary, Kind) -> Option<f64>,
        line: &mut serde_json::Value,
    ) -> Vec<String> {
        let mut cells = Vec::new();
        for &base in bases {
            let ratios: Vec<f64> = runs.iter().filter_map(|r| ratio(self, r, base)).collect();
            let median_ratio = (!ratios.is_empty()).then(|| median(ratios.clone()));
            cells.push(median_ratio.map_or("-".to_owned(), |r| format!("{r:.3}")));
            let name = base.name().replace('-', "_");
            line[format!("{key}_vs_{name}_median")] = json!(median_ratio.map(round3));
            line[format!("{key}_vs_{name}_by_round")] =
                json!(ratios.iter().map(|v| round3(*v)).collect::<Vec<_>>());
        }
        cells
    }

    fn base(&self, run: &Summary, base: Kind) -> Option<&Summary> {
        self.runs
            .iter()
            .find(|r| r.round == run.round && r.kind == base)
    }

    pub fn print(&self) {
        let width = Kind::name_width();
        println!("\n## concurrency {}", self.concurrency);
        println!(
            "{:<width$} {:>8} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10} {:>11} {:>10} {:>10} {:>7} {:>10} {:>6}  calls per backend",
            "client",
            "req/s",
            "vs direct",
            "vs b_list",
            "vs hyper",
            "vs h2",
            "p50 µs",
            "p99 µs",
            "p999 µs",
            "CPU µs/req",
            "srv µs/req",
            "busy cl/srv",
            "cpu vs dir",
            "cpu vs bl",
            "csw/req",
            "allocs/req",
            "errors"
        );
        // Every client that ran, in the order it first ran (the default
        // set and any extra one asked for with --clients).
        let mut kinds: Vec<Kind> = Vec::new();
        for run in &self.runs {
            if !kinds.contains(&run.kind) {
                kinds.push(run.kind);
            }
        }
        let lines: Vec<serde_json::Value> = kinds
            .into_iter()
            .filter_map(|kind| self.row(kind))
            .collect();
        println!();
        for line in lines {
            println!("{line}");
        }
    }

    /// Prints `kind`'s table row and returns its JSON line.
    fn row(&self, kind: Kind) -> Option<serde_json::Value> {
        let runs: Vec<&Summary> = self.runs.iter().filter(|r| r.kind == kind).collect();
        if runs.is_empty() {
            return None;
        }
        let med = |f: &dyn Fn(&Summary) -> f64| median(runs.iter().map(|r| f(r)).collect());
        let rps: Vec<f64> = runs.iter().map(|r| r.rps).collect();
        let errors: usize = runs.iter().map(|r| r.errors).sum();
        let mut per_backend = vec![0; self.backends];
        for r in &runs {
            for (total, n) in per_backend.iter_mut().zip(&r.per_backend) {
                *total += n;
            }
        }
        let known = |f: &dyn Fn(&Summary) -> Option<f64>| -> Option<f64> {
            let values: Option<Vec<f64>> = runs.iter().map(|r| f(r)).collect();
            values.map(median)
        };
        let backend_cpu_us = known(&|r| r.backend_cpu_us);
        let backend_busy = known(&|r| r.backend_busy);
        let mut line = json!({
            "scenario": "throughput",
            "client": kind.name(),
            "concurrency": self.concurrency,
            "rounds": runs.len(),
            "rps_median": round1(median(rps.clone())),
            "rps_by_round": rps.iter().map(|v| round1(*v)).collect::<Vec<_>>(),
            "p50_us": med(&|r| r.p50.into()),
            "p99_us": med(&|r| r.p99.into()),
            "p999_us": med(&|r| r.p999.into()),
            "cpu_us_per_request": round1(med(&|r| r.cpu_us)),
            "backend_cpu_us_per_request": backend_cpu_us.map(round1),
            "client_busy_percent": round1(med(&|r| r.busy)),
            "backend_busy_percent": backend_busy.map(round1),
            "context_switches_per_request": round3(med(&|r| r.switches)),
            "allocations_per_request": round1(med(&|r| r.allocations)),
            "errors": errors,
            "calls_per_backend": per_backend,
        });
        let cells = self.ratio_cells(
            &runs,
            &[
                Kind::TonicDirect,
                Kind::TonicBalanceList,
                Kind::HyperRoundRobin,
                Kind::H2RoundRobin,
            ],
            "ratio",
            Self::ratio,
            &mut line,
        );
        let cpu_cells = self.ratio_cells(
            &runs,
            &[Kind::TonicDirect, Kind::TonicBalanceList],
            "cpu_ratio",
            Self::cpu_ratio,
            &mut line,
        );
        let busy = format!(
            "{:.0}/{}",
            med(&|r| r.busy),
            backend_busy.map_or("-".to_owned(), |b| format!("{b:.0}"))
        );
        let width = Kind::name_width();
        println!(
            "{:<width$} {:>8.0} {:>9} {:>9} {:>8} {:>7} {:>7.0} {:>7.0} {:>8.0} {:>10.1} {:>10} {:>11} {:>10} {:>10} {:>7.2} {:>10.1} {:>6}  {:?}",
            kind.name(),
            median(rps),
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            med(&|r| r.p50.into()),
            med(&|r| r.p99.into()),
            med(&|r| r.p999.into()),
            med(&|r| r.cpu_us),
            backend_cpu_us.map_or("-".to_owned(), |c| format!("{c:.1}")),
            busy,
            cpu_cells[0],
            cpu_cells[1],
            med(&|r| r.switches),
            med(&|r| r.allocations),
            errors,
            per_backend
        );
        Some(line)
    }
}

/// Failover runs: one line per (round, client).
pub struct Failover {
    backends: usize,
    lines: Vec<serde_json::Value>,
}

impl Failover {
    pub fn new(backends: usize) -> Self {
        Failover {
            backends,
            lines: Vec::new(),
        }
    }

    pub fn add(&mut self, round: usize, kind: Kind, kill_at: Duration, w: Window) {
        let before = w.errors.iter().filter(|(t, _)| *t < kill_at).count();
        let after: Vec<&(Duration, String)> =
            w.errors.iter().filter(|(t, _)| *t >= kill_at).collect();
        let last_ms = after
            .last()
            .map(|(t, _)| (t.saturating_sub(kill_at)).as_secs_f64() * 1e3);
        let mut messages: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, m) in &after {
            *messages.entry(m.as_str()).or_default() += 1;
        }
        let after_calls = w.per_backend(self.backends, kill_at);
        let ok_after: usize = after_calls.iter().sum();
        self.lines.push(json!({
            "scenario": "failover",
            "client": kind.name(),
            "round": round + 1,
            "killed_backend": 0,
            "kill_at_ms": kill_at.as_millis() as u64,
            "window_ms": w.elapsed.as_millis() as u64,
            "errors_before_kill": before,
            "errors_after_kill": after.len(),
            "last_error_ms_after_kill": last_ms.map(round1),
            "ok_calls_after_kill": ok_after,
            "calls_per_backend_after_kill": after_calls,
            "error_messages": messages,
            "first_error_times_ms_after_kill": after
                .iter()
                .take(64)
                .map(|(t, _)| round1(t.saturating_sub(kill_at).as_secs_f64() * 1e3))
                .collect::<Vec<_>>(),
        }));
    }

    pub fn print(&self) {
        let width = Kind::name_width();
        println!(
            "\n{:<width$} {:>5} {:>13} {:>12} {:>20} {:>10}  calls per backend after kill",
            "client", "round", "errors before", "errors after", "last error after kill", "ok after"
        );
        for l in &self.lines {
            let text = |key: &str| l[key].to_string();
            println!(
                "{:<width$} {:>5} {:>13} {:>12} {:>20} {:>10}  {}",
                l["client"].as_str().unwrap_or("?"),
                text("round"),
                text("errors_before_kill"),
                text("errors_after_kill"),
                l["last_error_ms_after_kill"]
                    .as_f64()
                    .map_or("-".to_owned(), |ms| format!("{ms:.1} ms")),
                text("ok_calls_after_kill"),
                text("calls_per_backend_after_kill")
            );
        }
        println!();
        for l in &self.lines {
            println!("{l}");
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

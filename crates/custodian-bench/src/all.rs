//! `custodian-bench all`: every scenario, each against the limit it is bounded by, in one run; a
//! table for people, JSON for scripts, and a latency-versus-concurrency plot (SVG).
//!
//! Each scenario runs as `custodian-bench NAME --json` in a child process (its own daemon on
//! loopback, its own clean-up), so one scenario's memory and threads never colour another's.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::limits::Limits;

/// Options of `custodian-bench all`.
#[derive(Args)]
pub struct AllArgs {
    /// Smaller sizes and shorter runs (128 MiB blobs, a 100,000-entry log): a smoke run in a
    /// few minutes, not figures to quote
    #[arg(long)]
    quick: bool,
    /// Also measure on full stores, beside the fresh ones: small blobs after 1,000,000 others,
    /// the ledger at 10,000,000 entries (in process and over gRPC), attestations after
    /// 1,000,000 more runs, and eleven more large puts into one store, each followed by as many
    /// bytes of mixed blobs, so that the last finds 20 GiB stored, with its gets (with --quick:
    /// 100,000 blobs, 100,000 entries, 100,000 runs, two more puts). Needs about 27 GiB of free
    /// disk and 10-18 minutes
    #[arg(long)]
    prefill: bool,
    /// Also write bench-latest.json, bench-latest.md and latency-vs-concurrency.svg here, and
    /// with --prefill put-growth.svg, the plot of the growth series
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// One line of the summary.
#[derive(Serialize, Clone, Debug)]
struct Row {
    scenario: String,
    result: String,
    p50: String,
    p99: String,
    daemon_peak_rss_mib: Option<f64>,
    limit: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

/// Runs `custodian-bench ARGS --json` and reads its report as the scenario's own type.
fn sub<T: serde::de::DeserializeOwned>(exe: &Path, args: &[&str]) -> anyhow::Result<T> {
    eprintln!("bench all: custodian-bench {}", args.join(" "));
    let output = Command::new(exe)
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running custodian-bench {}", args.join(" ")))?;
    anyhow::ensure!(
        output.status.success(),
        "custodian-bench {} failed",
        args.join(" ")
    );
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("reading the JSON of custodian-bench {}", args.join(" ")))
}

fn ms(x: f64) -> String {
    if x < 1.0 {
        format!("{:.0} µs", x * 1000.0)
    } else {
        format!("{x:.1} ms")
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    scenario: String,
    result: String,
    p50: String,
    p99: String,
    rss: Option<f64>,
    limit: String,
    ratio: String,
    target: &str,
    met: Option<bool>,
) -> Row {
    Row {
        scenario,
        result,
        p50,
        p99,
        daemon_peak_rss_mib: rss,
        limit,
        ratio,
        target: target.into(),
        met,
    }
}

/// A streamed get's row, judged against the reference registry's unverified read of the same
/// blob (`registry` seconds): ≤ 1.2× within the memory budget (`rss`, `budget`).
fn stream_row(
    scenario: String,
    result: String,
    seconds: f64,
    (registry, hash_alone): (f64, Option<f64>),
    rss: Option<f64>,
    budget: bool,
) -> Row {
    let ratio = seconds / registry;
    // The hash the client must run over every byte, on one core and from memory, beside the
    // registry's read: a verified get can only come within the target when it is well below.
    let hash = hash_alone.map_or_else(String::new, |h| {
        format!(" (SHA-256 of the same bytes alone, in memory on one core: {h:.2} s)")
    });
    row(
        scenario,
        result,
        "—".into(),
        "—".into(),
        rss,
        format!("the reference registry's unverified read {registry:.2} s{hash}"),
        format!("{ratio:.2}×"),
        "≤ 1.2×",
        Some(ratio <= 1.2 && budget),
    )
}

/// The row of unary calls that do no work, beside the target a unary scenario with the same
/// callers is held to: `ratio` below 1 says that no call, however little it did, would meet it.
fn noop_row(noop: &crate::measure::CallRate, target: String, ratio: f64) -> Row {
    row(
        format!(
            "unary gRPC health checks (no work), {} callers over {} connections",
            noop.callers, noop.connections
        ),
        format!(
            "{:.0} calls/s, daemon CPU {:.0} µs each",
            noop.calls_per_second, noop.daemon_cpu_us_per_call
        ),
        ms(noop.p50_ms),
        ms(noop.p99_ms),
        None,
        target,
        format!("{ratio:.2}×"),
        "—",
        None,
    )
}

/// What every scenario reported, as the scenario's own types: a renamed or missing field fails
/// here, loudly, instead of turning into a blank in the summary.
#[derive(Serialize, Deserialize)]
struct Scenarios {
    custody: crate::custody::Report,
    small: Vec<crate::small::Row>,
    ledger: crate::ledger::Report,
    evidence: crate::evidence::Report,
    rest: crate::rest::Report,
    scan: ScanReport,
}

/// The part of `custodian-bench scan --json` the summary reads (the corpus scores are reported
/// by the scan scenario itself).
#[derive(Serialize, Deserialize)]
struct ScanReport {
    throughput: Vec<crate::scan::Row>,
}

/// The daemon's memory budget through every scenario, prefilled included (issue 22).
const RSS_BUDGET_MIB: f64 = 128.0;

/// The growth series' puts in `all --prefill`: each put of 1 GiB is followed by 1 GiB of mixed
/// blobs, so the eleventh finds 20 GiB stored, the size issue 22's target names.
const GROWTH_PUTS: &str = "11";

/// Whether a daemon's peak RSS is within [`RSS_BUDGET_MIB`].
fn within_budget(rss: f64) -> bool {
    rss <= RSS_BUDGET_MIB
}

/// The growth series' plot (`custody --grow --plot`) from a custody report that holds one, its
/// floor the put's as the table judges it: max(SHA-256, write+fsync) of the same size.
fn growth_plot(custody: &crate::custody::Report) -> Option<String> {
    (custody.growth.len() > 1).then(|| {
        let floor = custody
            .openssl_sha256_seconds
            .max(custody.disk_write_fsync_seconds);
        let backend = custody.growth_backend.as_deref().unwrap_or("rocksdb");
        crate::custody::growth_svg(&custody.growth, floor, backend)
    })
}

/// A size in GiB as the tables write it: whole GiB from 10 up, two decimals below.
fn gib(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// "1,000,000": a count as the tables write it.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rows(limits: &Limits, raw: &Scenarios) -> Vec<Row> {
    let mut out = Vec::new();
    let none = || "—".to_string();
    // Custody: the large put and gets per backend, against the machine's floors and, when it
    // ran, the reference registry on the same file.
    let custody = &raw.custody;
    let openssl = custody.openssl_sha256_seconds;
    let disk = custody.disk_write_fsync_seconds;
    let mib = crate::measure::mib(custody.size_bytes);
    // The custody run's own measure of the hash, where it has one, as the receive-path row uses.
    let sha256_alone = custody
        .sha256_in_memory_seconds
        .unwrap_or(mib / 1024.0 / limits.sha256_gib_per_s);
    let peer = custody.peer.as_ref();
    // A transfer's time, with what it cost both ends where the report measured it.
    let timed = |seconds: f64, cpu: Option<crate::custody::Cpu>| match cpu {
        Some(cpu) => format!("{seconds:.2} s, {}", cpu.describe()),
        None => format!("{seconds:.2} s"),
    };
    for b in &custody.backends {
        let rss = b.daemon_peak_rss_mib;
        let budget = within_budget(rss);
        // Reports from before local puts measured the streamed put only, and have no streamed
        // row of their own.
        let streamed = b.put_streamed_seconds > 0.0;
        let put_path = if streamed { "local put socket" } else { "gRPC" };
        out.push(row(
            format!("{mib:.0} MiB put, {put_path}, {}", b.backend),
            format!("{:.2} s", b.put_seconds),
            none(),
            none(),
            Some(rss),
            format!("max(openssl sha256 {openssl:.2} s, write+fsync {disk:.2} s)"),
            format!("{:.2}×", b.put_ratio_to_floor),
            "≤ 1.5×, RSS ≤ 128 MiB",
            Some(b.put_ratio_to_floor <= 1.5 && budget),
        ));
        if streamed {
            out.push(row(
                format!("{mib:.0} MiB put, streamed over gRPC, {}", b.backend),
                timed(b.put_streamed_seconds, b.put_streamed_cpu),
                none(),
                none(),
                Some(rss),
                format!("max(openssl sha256 {openssl:.2} s, write+fsync {disk:.2} s)"),
                format!("{:.2}×", b.put_streamed_ratio_to_floor),
                "≤ 1.5×",
                Some(b.put_streamed_ratio_to_floor <= 1.5 && budget),
            ));
        }
        out.push(row(
            format!("{mib:.0} MiB get to a file, gRPC, {}", b.backend),
            format!("{:.2} s", b.get_seconds),
            none(),
            none(),
            Some(rss),
            format!("openssl sha256 {openssl:.2} s + write+fsync {disk:.2} s"),
            format!("{:.2}×", b.get_ratio_to_floor),
            "≤ 1.3×",
            Some(b.get_ratio_to_floor <= 1.3 && budget),
        ));
        match peer {
            Some(p) => {
                // The same get by the blob's BLAKE3 digest (reports from before it have none):
                // as fully verified, by a hash that is not slower than the registry's read.
                for (what, seconds, cpu, hash) in [
                    (
                        "get (stream)",
                        b.get_stream_seconds,
                        b.get_stream_cpu,
                        Some(sha256_alone),
                    ),
                    (
                        "get (stream) by BLAKE3 digest",
                        b.get_stream_blake3_seconds,
                        b.get_stream_blake3_cpu,
                        None,
                    ),
                ] {
                    if seconds > 0.0 {
                        out.push(stream_row(
                            format!("{mib:.0} MiB {what}, gRPC, {}", b.backend),
                            timed(seconds, cpu),
                            seconds,
                            (p.get_stream_seconds, hash),
                            Some(rss),
                            budget,
                        ));
                    }
                }
                // Issue 22 asks for the CLI's receive path as lean as curl's plus one SHA-256
                // pass: the CLI's CPU for the get by sha256 against curl's for the registry's
                // read and the hash alone, from memory.
                if let (Some(cli), Some(curl), Some(hash)) = (
                    b.get_stream_cpu,
                    p.get_stream_cpu,
                    custody.sha256_in_memory_seconds,
                ) {
                    let ratio = cli.cli_seconds / (curl.cli_seconds + hash);
                    out.push(row(
                        format!("{mib:.0} MiB get (stream), gRPC, {}: the CLI's CPU", b.backend),
                        format!("{:.2} s", cli.cli_seconds),
                        none(),
                        none(),
                        None,
                        format!(
                            "curl's read from the registry {:.2} s + SHA-256 alone from memory {hash:.2} s",
                            curl.cli_seconds
                        ),
                        format!("{ratio:.2}×"),
                        "≤ 1.0×",
                        Some(ratio <= 1.0),
                    ));
                }
                for (what, ours, theirs, copy) in [
                    ("put", b.put_seconds, p.put_seconds, 0.0),
                    (
                        "get to a file",
                        b.get_seconds,
                        p.get_seconds,
                        p.copy_seconds,
                    ),
                ] {
                    let ratio = ours / theirs;
                    // Both gets to a file stand on the disk's own copy of the bytes, shown
                    // beside the registry's time so that a miss by milliseconds reads as such.
                    let floor = if copy > 0.0 {
                        format!(" (the disk's own copy {copy:.2} s, {:.2}× it)", ours / copy)
                    } else {
                        String::new()
                    };
                    out.push(row(
                        format!("{mib:.0} MiB {what} against the registry, {}", b.backend),
                        format!("{ours:.2} s"),
                        none(),
                        none(),
                        None,
                        format!("the reference registry {theirs:.2} s{floor}"),
                        format!("{ratio:.2}×"),
                        "≤ 1.0×",
                        Some(ratio <= 1.0),
                    ));
                }
            }
            None => out.push(row(
                format!("{mib:.0} MiB get (stream), gRPC, {}", b.backend),
                format!("{:.2} s", b.get_stream_seconds),
                none(),
                none(),
                Some(rss),
                format!("openssl sha256 {openssl:.2} s (no reference registry in this run)"),
                format!("{:.2}×", b.get_stream_ratio),
                "—",
                None,
            )),
        }
    }
    // The same put into a store that grows (--prefill): the first put against the median of the
    // last quarter, as `custodian-bench custody` judges it, with the last put shown beside it.
    if let (Some((first, grown, from)), Some(last)) = (
        crate::custody::growth_summary(&custody.growth),
        custody.growth.last(),
    ) && custody.growth.len() > 1
    {
        let to_fresh = grown.put_seconds / first.put_seconds;
        let rss = custody.growth_daemon_peak_rss_mib;
        // The verdict keeps the raw times, as the target names them; each put against the
        // SHA-256 timed just before and just after it is shown beside, so that a run whose
        // machine slowed over its minutes says so in the same row.
        let beside = crate::custody::growth_summary_beside(&custody.growth).map_or_else(
            String::new,
            |(fresh, grown)| {
                format!(
                    "; against SHA-256 timed beside each put, {:.2}× the fresh ({grown:.2}× and {fresh:.2}×)",
                    grown / fresh
                )
            },
        );
        out.push(row(
            format!(
                "{mib:.0} MiB put, rocksdb, {} GiB stored in {} blobs",
                gib(last.stored_gib),
                thousands(last.stored_blobs)
            ),
            format!(
                "{:.2} s, the median of the puts from {} GiB stored ({to_fresh:.2}× the put into the empty store); the last {:.2} s{beside}",
                grown.put_seconds,
                gib(from),
                last.put_seconds
            ),
            none(),
            none(),
            rss,
            format!("max(openssl sha256 {openssl:.2} s, write+fsync {disk:.2} s)"),
            format!("{:.2}×", grown.put_ratio_to_floor),
            "≤ 1.5×, ≤ 1.1× fresh",
            Some(
                grown.put_ratio_to_floor <= 1.5
                    && to_fresh <= 1.1
                    && rss.is_none_or(within_budget),
            ),
        ));
    }
    // The gets of the growth series' last blob from its full store, beside the fresh store's.
    if let Some(gets) = &custody.growth_gets {
        let backend = custody.growth_backend.as_deref().unwrap_or("rocksdb");
        let fresh = custody.backends.iter().find(|b| b.backend == backend);
        let stored = format!(
            "{backend}, {} GiB stored in {} blobs",
            gib(gets.stored_gib),
            thousands(gets.stored_blobs)
        );
        let versus = |ours: f64, theirs: Option<f64>| match theirs {
            Some(t) if t > 0.0 => format!("{ours:.2} s ({:.2}× the fresh)", ours / t),
            _ => format!("{ours:.2} s"),
        };
        let rss = custody.growth_daemon_peak_rss_mib;
        let budget = rss.is_none_or(within_budget);
        let ratio = gets.get_seconds / (openssl + disk);
        // The verdict keeps the run's floor; the disk as the gets found it is shown beside it.
        let mut result = versus(gets.get_seconds, fresh.map(|f| f.get_seconds));
        if let Some(after) = gets.disk_write_fsync_seconds {
            result.push_str(&format!(
                "; write+fsync right after: {after:.2} s, {:.2}× with it",
                gets.get_seconds / (openssl + after)
            ));
        }
        out.push(row(
            format!("{mib:.0} MiB get to a file, gRPC, {stored}"),
            result,
            none(),
            none(),
            rss,
            format!("openssl sha256 {openssl:.2} s + write+fsync {disk:.2} s"),
            format!("{ratio:.2}×"),
            "≤ 1.3×",
            Some(ratio <= 1.3 && budget),
        ));
        if let Some(p) = peer {
            for (what, ours, theirs, cpu, hash) in [
                (
                    "get (stream)",
                    gets.get_stream_seconds,
                    fresh.map(|f| f.get_stream_seconds),
                    gets.get_stream_cpu,
                    Some(sha256_alone),
                ),
                (
                    "get (stream) by BLAKE3 digest",
                    gets.get_stream_blake3_seconds,
                    fresh.map(|f| f.get_stream_blake3_seconds),
                    gets.get_stream_blake3_cpu,
                    None,
                ),
            ] {
                let result = match cpu {
                    Some(cpu) => format!("{}; {}", versus(ours, theirs), cpu.describe()),
                    None => versus(ours, theirs),
                };
                out.push(stream_row(
                    format!("{mib:.0} MiB {what}, gRPC, {stored}"),
                    result,
                    ours,
                    (p.get_stream_seconds, hash),
                    rss,
                    budget,
                ));
            }
        }
    }
    // Small blobs, each backend on a fresh store and, with --prefill, on a full one.
    for b in &raw.small {
        // Each row is judged against the floors measured beside it, where the report has them.
        let beside = if b.floors.is_some() { " beside it" } else { "" };
        let batched = b.floors.map_or(limits.rocksdb_batched_values_per_s, |f| {
            f.batched_values_per_s
        });
        let multi_get = b
            .floors
            .map_or(limits.rocksdb_multi_get_10k_ms, |f| f.multi_get_10k_ms);
        let rate = b.batch_put_blobs_per_s;
        let ratio = rate / batched;
        let stored = match b.stored_before {
            0 => String::new(),
            n => format!(", {} stored", thousands(n)),
        };
        let fresh = raw
            .small
            .iter()
            .find(|f| f.backend == b.backend && f.stored_before == 0);
        let versus_fresh = |ours: f64, theirs: f64, what: &str| match (b.stored_before, fresh) {
            (0, _) | (_, None) => String::new(),
            (_, Some(_)) => format!(" ({:.2}× {what} fresh)", ours / theirs),
        };
        let (target, floor) = if b.backend == "rocksdb" {
            ("≥ 0.9×, RSS ≤ 128 MiB", 0.9)
        } else {
            ("≥ 0.5×, RSS ≤ 128 MiB", 0.5)
        };
        out.push(row(
            format!("BatchPut 10,000 × 4 KiB, {}{stored}", b.backend),
            format!(
                "{rate:.0} blobs/s{}",
                versus_fresh(rate, fresh.map_or(1.0, |f| f.batch_put_blobs_per_s), "the")
            ),
            ms(b.batch_ms_p50),
            ms(b.batch_ms_p99),
            Some(b.daemon_peak_rss_mib),
            format!("RocksDB synced batches {batched:.0}/s{beside}"),
            format!("{ratio:.2}×"),
            target,
            Some(ratio >= floor && within_budget(b.daemon_peak_rss_mib)),
        ));
        let ratio = b.find_missing_ms_p50 / multi_get;
        out.push(row(
            format!("FindMissing of 10,000 digests, {}{stored}", b.backend),
            format!(
                "per call{}",
                versus_fresh(
                    b.find_missing_ms_p50,
                    fresh.map_or(1.0, |f| f.find_missing_ms_p50),
                    "the p50"
                )
            ),
            ms(b.find_missing_ms_p50),
            ms(b.find_missing_ms_p99),
            None,
            format!("RocksDB multi_get of 10,000 keys {}{beside}", ms(multi_get)),
            format!("p50 {ratio:.1}×"),
            "≤ 1.5×",
            Some(ratio <= 1.5),
        ));
    }
    // Ledger appends over gRPC.
    let ledger = &raw.ledger;
    let fsync = ledger.fsync_median_ms;
    let group = limits.rocksdb_group_synced_puts_per_s;
    // The fresh rows, with the row of the same writer count on the large log (a daemon that
    // restarted on it) under its fresh one.
    let large = ledger.grpc_appends_on_large_log.as_ref();
    // The same writers each on an `AppendStream` of their own sit under the unary row, judged
    // by the same target: with receipts, then with compact answers.
    let streamed = [
        (ledger.grpc_stream_appends.as_ref(), ""),
        (
            ledger.grpc_compact_stream_appends.as_ref(),
            crate::ledger::COMPACT_ANSWERS,
        ),
    ];
    let rows_of = ledger.grpc_appends.iter().flat_map(move |r| {
        let on_streams = streamed.into_iter().filter_map(move |(s, answers)| {
            let s = s.filter(|s| s.writers == r.writers)?;
            let name = format!(
                "durable ledger appends, {} gRPC writers, each on its own AppendStream{answers}",
                s.writers
            );
            Some((s, name, None))
        });
        let on_large = large.filter(|l| l.writers == r.writers).map(|l| {
            let name = format!(
                "durable ledger appends, {} gRPC writers, into {} entries",
                l.writers,
                thousands(ledger.log_size)
            );
            (l, name, Some(l.appends_per_second / r.appends_per_second))
        });
        let name = format!("durable ledger appends, {} gRPC writers", r.writers);
        std::iter::once((r, name, None))
            .chain(on_streams)
            .chain(on_large)
    });
    for (r, name, to_fresh) in rows_of {
        let rate = r.appends_per_second;
        let (p50, p99) = (r.median_ms, r.p99_ms);
        let (limit, ratio, target, met) = if r.writers == 64 {
            // Judged against the floor measured beside the row, where the report has it.
            let (group, group_p99, beside) =
                r.floors
                    .map_or((group, limits.rocksdb_group_synced_put_p99_ms, ""), |f| {
                        (
                            f.group_synced_puts_per_s,
                            f.group_synced_put_p99_ms,
                            " beside it",
                        )
                    });
            // The floor's own p99 in units of one fsync, so that the p99 target is read beside
            // what RocksDB's own 64 writers reach.
            let group_p99 = group_p99.map_or(String::new(), |p99| {
                format!(", their p99 {:.0}× fsync", p99 / fsync)
            });
            (
                format!("RocksDB 64-writer synced puts {group:.0}/s{beside}{group_p99}"),
                format!("{:.2}×, p99 {:.0}× fsync", rate / group, p99 / fsync),
                "≥ 1.0×, p99 ≤ 20× fsync",
                Some(rate >= group && p99 <= 20.0 * fsync),
            )
        } else {
            (
                format!("4 KiB fdatasync {}", ms(fsync)),
                format!("p50 {:.1}× fsync", p50 / fsync),
                "—",
                None,
            )
        };
        let fresh = to_fresh.map_or(String::new(), |x| format!(" ({x:.2}× the fresh)"));
        out.push(row(
            name,
            match (r.daemon_cpu_us_per_append, r.writers_cpu_us_per_append) {
                (Some(us), Some(writers)) => format!(
                    "{rate:.0}/s{fresh}, daemon CPU {us:.0} µs each, the writers' {writers:.0} µs"
                ),
                (Some(us), None) => format!("{rate:.0}/s{fresh}, daemon CPU {us:.0} µs each"),
                _ => format!("{rate:.0}/s{fresh}"),
            },
            ms(p50),
            ms(p99),
            r.daemon_peak_rss_mib,
            limit,
            ratio,
            target,
            met.map(|m| m && r.daemon_peak_rss_mib.is_none_or(within_budget)),
        ));
    }
    if let Some(noop) = &ledger.grpc_noop {
        out.push(noop_row(
            noop,
            format!("RocksDB 64-writer synced puts {group:.0}/s"),
            noop.calls_per_second / group,
        ));
    }
    if let Some(large) = &ledger.appends_on_large_log {
        let empty = ledger.appends.iter().find(|r| r.writers == large.writers);
        out.push(row(
            format!(
                "durable ledger appends into {} entries, {} writers in process",
                thousands(ledger.log_size),
                large.writers
            ),
            format!("{:.0}/s", large.appends_per_second),
            ms(large.median_ms),
            ms(large.p99_ms),
            None,
            empty.map_or_else(none, |e| {
                format!("the same into an empty log {:.0}/s", e.appends_per_second)
            }),
            empty.map_or_else(none, |e| {
                format!("{:.2}×", large.appends_per_second / e.appends_per_second)
            }),
            "—",
            None,
        ));
    }
    let p99 = ledger.inclusion_proof_p99_us / 1000.0;
    out.push(row(
        format!("inclusion proof at {} entries", thousands(ledger.log_size)),
        "checked against the signed root".into(),
        ms(ledger.inclusion_proof_median_us / 1000.0),
        ms(p99),
        None,
        none(),
        none(),
        "p99 ≤ 1 ms",
        Some(p99 <= 1.0),
    ));
    let audit = ledger.audit_entries_per_second;
    out.push(row(
        format!("offline audit of {} entries", thousands(ledger.log_size)),
        format!("{audit:.0} entries/s"),
        none(),
        none(),
        None,
        format!(
            "openssl sha256 of the export {:.2} s",
            ledger.openssl_sha256_export_seconds
        ),
        format!("{:.1}×", ledger.audit_ratio_to_openssl),
        "≥ 100,000/s",
        Some(audit >= 100_000.0),
    ));
    // The registry's start-ups: rows with a result and at most a ratio, no target.
    let start_up = |scenario: String, result: String, against: Option<(&str, f64)>| {
        let (limit, ratio) = against.map_or((none(), none()), |(limit, ratio)| {
            (limit.to_string(), format!("{ratio:.3}×"))
        });
        row(
            scenario,
            result,
            none(),
            none(),
            None,
            limit,
            ratio,
            "—",
            None,
        )
    };
    let replay = "the replay of the whole log";
    out.push(start_up(
        format!(
            "registry index rebuilt at start-up from {} entries",
            thousands(ledger.log_size)
        ),
        format!("{:.2} s", ledger.registry_replay_seconds),
        None,
    ));
    if let Some(seconds) = ledger.registry_restore_seconds {
        out.push(start_up(
            format!(
                "registry index rebuilt at a restart from its snapshot, {} entries past it",
                thousands(ledger.registry_restore_followed)
            ),
            format!("{seconds:.3} s"),
            Some((replay, seconds / ledger.registry_replay_seconds)),
        ));
    }
    if let Some((first, restart)) = ledger.daemon_start_seconds {
        out.push(start_up(
            format!(
                "`custodian serve` on the {}-entry log, launch to its first answer: first start, then a restart after kill -9",
                thousands(ledger.log_size)
            ),
            format!("{first:.2} s, then {restart:.2} s"),
            Some(("the first start", restart / first)),
        ));
    }
    if let Some(runs) = &ledger.run_log {
        out.push(start_up(
            format!(
                "registry index rebuilt at start-up from {} attested runs over {} eval × model pairs",
                thousands(runs.entries),
                thousands(runs.pairs)
            ),
            format!("{:.2} s", runs.replay_seconds),
            None,
        ));
        out.push(start_up(
            format!(
                "the same at a restart from its snapshot ({} entries listed, {} past it)",
                thousands(runs.listed),
                thousands(runs.followed)
            ),
            format!("{:.3} s", runs.restore_seconds),
            Some((replay, runs.restore_seconds / runs.replay_seconds)),
        ));
    }
    // Attested runs.
    let evidence = &raw.evidence;
    // The fresh rows, each followed by the row of the same name and clients measured after the
    // prefill (when there was one).
    let prefilled = evidence.prefilled.as_ref();
    let attest_rows = evidence.scenarios.iter().flat_map(|s| {
        let after = prefilled.and_then(|p| {
            p.scenarios
                .iter()
                .find(|a| a.name == s.name && a.clients == s.clients)
                .map(|a| {
                    let name = format!(
                        "{}, {} client(s), {} runs attested before",
                        a.name,
                        a.clients,
                        thousands(p.runs_before)
                    );
                    let fresh = a.runs_per_second / s.runs_per_second;
                    (a, name, Some(fresh), p.daemon_peak_rss_mib)
                })
        });
        let name = format!("{}, {} client(s)", s.name, s.clients);
        std::iter::once((s, name, None, evidence.daemon_peak_rss_mib)).chain(after)
    });
    for (s, name, to_fresh, rss) in attest_rows {
        let rate = s.runs_per_second;
        let targeted = s.clients == 32;
        let unary = s.name.contains("unary");
        // Judged against the rate measured beside the row, where the report has it.
        let (ed25519, beside) = s
            .ed25519_verifies_per_s
            .map_or((limits.ed25519_verifies_per_s, ""), |f| (f, " beside it"));
        let fresh = to_fresh.map_or(String::new(), |x| format!(" ({x:.2}× the fresh)"));
        out.push(row(
            name,
            match s.daemon_cpu_us_per_run {
                Some(us) => format!("{rate:.0} runs/s{fresh}, daemon CPU {us:.0} µs each"),
                None => format!("{rate:.0} runs/s{fresh}"),
            },
            ms(s.call_ms_p50),
            ms(s.call_ms_p99),
            Some(rss),
            format!("Ed25519 verify {ed25519:.0}/s per core{beside}"),
            format!("{:.2}×", rate / ed25519),
            match (targeted, unary) {
                (true, true) => "≥ 0.5×",
                (true, false) => "≥ 10,000/s",
                (false, _) => "—",
            },
            targeted.then_some(if unary {
                rate >= 0.5 * ed25519
            } else {
                rate >= 10_000.0
            }),
        ));
    }
    if let Some(noop) = &evidence.noop {
        let half = 0.5 * limits.ed25519_verifies_per_s;
        out.push(noop_row(
            noop,
            format!("half the Ed25519 verify rate {half:.0}/s"),
            noop.calls_per_second / half,
        ));
    }
    // REST data pack.
    let rest = &raw.rest;
    let rest_mib = crate::measure::mib(rest.size_bytes);
    // Reports from before local data pack uploads have one upload row, which went over REST.
    let (rest_upload, local_upload) = match &rest.local_upload {
        Some(local) => (
            "upload over REST (digest check and scan included)",
            Some((
                "upload handed over the local put socket (the same checks and scan)",
                local.seconds,
                local.ratio_to_openssl,
                (local.cli_cpu_seconds, local.daemon_cpu_seconds),
            )),
        ),
        None => ("upload (digest check and scan included)", None),
    };
    let transfers = [
        Some((
            rest_upload,
            rest.upload_seconds,
            rest.upload_ratio_to_openssl,
            (rest.upload_cli_cpu_seconds, rest.upload_daemon_cpu_seconds),
        )),
        local_upload,
        Some((
            "verified download to a file",
            rest.download_seconds,
            rest.download_ratio_to_openssl,
            (
                rest.download_cli_cpu_seconds,
                rest.download_daemon_cpu_seconds,
            ),
        )),
    ];
    // The same upload into the growth series' full store, under the fresh one.
    let mut grown_upload = custody.growth_gets.as_ref().and_then(|gets| {
        let grown = gets.rest_upload.as_ref()?;
        let backend = custody.growth_backend.as_deref().unwrap_or("rocksdb");
        let rss = custody.growth_daemon_peak_rss_mib;
        Some(row(
            format!(
                "REST data pack {mib:.0} MiB upload over REST, {backend}, {} GiB stored in {} blobs",
                gib(gets.stored_gib),
                thousands(gets.stored_blobs)
            ),
            format!(
                "{:.2} s ({:.2}× the fresh), CPU: CLI {:.2} s, daemon {:.2} s",
                grown.seconds,
                grown.seconds / rest.upload_seconds,
                grown.cli_cpu_seconds,
                grown.daemon_cpu_seconds
            ),
            none(),
            none(),
            rss,
            format!("openssl sha256 {openssl:.2} s"),
            format!("{:.2}×", grown.ratio_to_openssl),
            "≤ 2×",
            Some(grown.ratio_to_openssl <= 2.0 && rss.is_none_or(within_budget)),
        ))
    });
    for (what, secs, ratio, (cli_cpu, daemon_cpu)) in transfers.into_iter().flatten() {
        let upload = what.starts_with("upload");
        out.push(row(
            format!("REST data pack {rest_mib:.0} MiB {what}"),
            format!("{secs:.2} s, CPU: CLI {cli_cpu:.2} s, daemon {daemon_cpu:.2} s"),
            none(),
            none(),
            Some(rest.daemon_peak_rss_mib),
            format!("openssl sha256 {:.2} s", rest.openssl_sha256_seconds),
            format!("{ratio:.2}×"),
            if upload { "≤ 2×" } else { "—" },
            upload.then_some(ratio <= 2.0 && within_budget(rest.daemon_peak_rss_mib)),
        ));
        if what == rest_upload {
            out.extend(grown_upload.take());
        }
    }
    out.push(row(
        "REST ranged reads of 1 MiB".into(),
        format!("{} reads", rest.ranges),
        ms(rest.range_ms_p50),
        ms(rest.range_ms_p99),
        None,
        none(),
        none(),
        "—",
        None,
    ));
    // Scanning.
    for r in &raw.scan.throughput {
        let ratio = r.ratio_to_openssl;
        out.push(row(
            format!("scan {} MiB: {}", r.bytes >> 20, r.content),
            format!("{:.2} GiB/s", r.scan_gib_per_s),
            none(),
            none(),
            None,
            format!("openssl sha256 {:.2} s", r.openssl_sha256_seconds),
            format!("{ratio:.2}×"),
            "≤ 2×",
            Some(ratio <= 2.0),
        ));
    }
    out
}

fn markdown(limits: &Limits, rows: &[Row]) -> String {
    let mut s = format!(
        "Limits measured in the same run: SHA-256 {:.2} GiB/s and BLAKE3 {:.2} GiB/s on one core; \
sequential write + fsync {:.2} GiB/s; 4 KiB fdatasync median {}, p99 {}; RocksDB 4 KiB synced \
puts {:.0}/s (one writer), {:.0}/s (64 writers, group commit{}), {:.0}/s (synced batches of 1,000); \
RocksDB multi_get of 10,000 keys {}; Ed25519 verifications {:.0}/s on one core.\n\n",
        limits.sha256_gib_per_s,
        limits.blake3_gib_per_s,
        limits.disk_write_fsync_gib_per_s,
        ms(limits.fsync_median_ms),
        ms(limits.fsync_p99_ms),
        limits.rocksdb_synced_puts_per_s,
        limits.rocksdb_group_synced_puts_per_s,
        limits
            .rocksdb_group_synced_put_p99_ms
            .map_or(String::new(), |p99| format!("; their p99 {}", ms(p99))),
        limits.rocksdb_batched_values_per_s,
        ms(limits.rocksdb_multi_get_10k_ms),
        limits.ed25519_verifies_per_s
    );
    s.push_str(
        "| scenario | result | p50 | p99 | daemon peak RSS | limit | ratio | target | met |\n|---|---:|---:|---:|---:|---|---:|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.result,
            r.p50,
            r.p99,
            r.daemon_peak_rss_mib
                .map_or("—".into(), |m| format!("{m:.0} MiB")),
            r.limit,
            r.ratio,
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        ));
    }
    s
}

/// A plotted line: its name, its colour and its (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// Latency (p50 and p99) against concurrency for ledger appends over gRPC and in process, and
/// attested runs: log-scaled axes, drawn as plain SVG.
fn svg(raw: &Scenarios) -> String {
    let series = |runs: &[crate::ledger::AppendResult],
                  field: fn(&crate::ledger::AppendResult) -> f64|
     -> Vec<(f64, f64)> {
        runs.iter()
            .map(|r| (r.writers as f64, field(r)))
            .filter(|(x, y)| *x > 0.0 && *y > 0.0)
            .collect()
    };
    let (grpc, local) = (&raw.ledger.grpc_appends, &raw.ledger.appends);
    let lines: Vec<Series<'_>> = vec![
        ("gRPC p50", "#1f77b4", series(grpc, |r| r.median_ms)),
        ("gRPC p99", "#aec7e8", series(grpc, |r| r.p99_ms)),
        ("in process p50", "#d62728", series(local, |r| r.median_ms)),
        ("in process p99", "#ff9896", series(local, |r| r.p99_ms)),
    ];
    let points: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.2.iter().copied()).collect();
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 190.0, 40.0, 50.0);
    let x_max = points.iter().map(|p| p.0).fold(2.0, f64::max).log2().ceil();
    let y_min = points
        .iter()
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        .log10()
        .floor()
        .min(-1.0);
    let y_max = points
        .iter()
        .map(|p| p.1)
        .fold(0.1, f64::max)
        .log10()
        .ceil()
        .max(y_min + 1.0);
    let px = |x: f64| left + (x.log2() / x_max) * (w - left - right);
    let py = |y: f64| top + (1.0 - (y.log10() - y_min) / (y_max - y_min)) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"14\">Durable ledger appends: latency against concurrent writers (log-log)</text>\n"
    );
    for e in 0..=x_max as i32 {
        let x = px(2f64.powi(e));
        s.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            h - bottom,
            h - bottom + 16.0,
            2u64.pow(e as u32)
        ));
    }
    for e in y_min as i32..=y_max as i32 {
        let y = py(10f64.powi(e));
        s.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} ms</text>\n",
            w - right,
            left - 6.0,
            y + 4.0,
            10f64.powi(e)
        ));
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">concurrent writers</text>\n",
        left + (w - left - right) / 2.0,
        h - 12.0
    ));
    for (i, (name, colour, pts)) in lines.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        ));
        for (x, y) in pts {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>\n",
                px(*x),
                py(*y)
            ));
        }
        let ly = top + 20.0 + i as f64 * 20.0;
        s.push_str(&format!(
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{name}</text>\n",
            w - right + 15.0,
            w - right + 40.0,
            w - right + 46.0,
            ly + 4.0
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// Runs every scenario.
pub fn run(args: AllArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the custodian-bench binary")?;
    let limits_dir = crate::limits::default_dir().join(format!("limits-{}", std::process::id()));
    let _cleanup = custodian_testkit::RemoveOnDrop(limits_dir.clone());
    eprintln!("bench all: measuring this machine's limits");
    let limits = crate::limits::measure(&limits_dir)?;
    let q = args.quick;
    let p = args.prefill;
    let mut custody: Vec<&str> = if q {
        vec!["custody", "--size-mib", "128", "--runs", "1"]
    } else {
        vec!["custody", "--runs", "2"]
    };
    if p {
        custody.extend(["--grow", if q { "2" } else { GROWTH_PUTS }]);
    }
    let mut small = vec!["small"];
    if p {
        small.extend(["--prefill", if q { "100000" } else { "1000000" }]);
    }
    let mut ledger: Vec<&str> = if q {
        vec![
            "ledger",
            "--writers",
            "1,8,64",
            "--seconds",
            "1",
            "--log-size",
            "100000",
        ]
    } else {
        vec!["ledger", "--writers", "1,8,64,256", "--seconds", "3"]
    };
    if p && !q {
        ledger.extend(["--log-size", "10000000"]);
    }
    let mut evidence = if q {
        vec!["evidence", "--seconds", "1"]
    } else {
        vec!["evidence", "--seconds", "3"]
    };
    if p {
        evidence.extend(["--prefill", if q { "100000" } else { "1000000" }]);
    }
    let rest: &[&str] = if q {
        &["rest", "--size-mib", "128"]
    } else {
        &["rest"]
    };
    let scan: &[&str] = if q {
        &["scan", "--size-mib", "128", "--runs", "1"]
    } else {
        &["scan"]
    };
    let raw = Scenarios {
        custody: sub(&exe, &custody)?,
        small: sub(&exe, &small)?,
        ledger: sub(&exe, &ledger)?,
        evidence: sub(&exe, &evidence)?,
        rest: sub(&exe, rest)?,
        scan: sub(&exe, scan)?,
    };
    let rows = rows(&limits, &raw);
    let table = markdown(&limits, &rows);
    let report = serde_json::json!({
        "quick": q,
        "prefill": p,
        "limits": limits,
        "summary": rows,
        "scenarios": raw,
    });
    if let Some(dir) = &args.write {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("bench-latest.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(dir.join("bench-latest.md"), &table)?;
        std::fs::write(dir.join("latency-vs-concurrency.svg"), svg(&raw))?;
        let mut written = vec![
            "bench-latest.json",
            "bench-latest.md",
            "latency-vs-concurrency.svg",
        ];
        // A run that grew a store (--prefill) redraws the growth plot too, so the plot beside
        // the table is of the same run and the same build.
        if let Some(plot) = growth_plot(&raw.custody) {
            std::fs::write(dir.join("put-growth.svg"), plot)?;
            written.push("put-growth.svg");
        }
        eprintln!(
            "bench all: wrote {} to {}",
            written.join(", "),
            dir.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{table}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            sha256_gib_per_s: 1.6,
            blake3_gib_per_s: 4.0,
            disk_write_fsync_gib_per_s: 0.5,
            fsync_median_ms: 0.2,
            fsync_p99_ms: 0.4,
            rocksdb_synced_puts_per_s: 5000.0,
            rocksdb_group_synced_puts_per_s: 30_000.0,
            rocksdb_group_synced_put_p99_ms: Some(6.0),
            rocksdb_batched_values_per_s: 80_000.0,
            rocksdb_multi_get_10k_ms: 5.0,
            ed25519_verifies_per_s: 30_000.0,
        }
    }

    /// The table's rows for the report `json`.
    fn rows_from(json: serde_json::Value) -> Vec<Row> {
        let raw: Scenarios = serde_json::from_value(json).expect("the report parses");
        rows(&limits(), &raw)
    }

    /// Where the row named `name` is in `rows`.
    fn position(rows: &[Row], name: &str) -> usize {
        rows.iter()
            .position(|r| r.scenario == name)
            .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
    }

    /// The rows named `fresh` and `full`, after checking that the second sits right under the
    /// first.
    fn under_its_fresh_row<'a>(rows: &'a [Row], fresh: &str, full: &str) -> (&'a Row, &'a Row) {
        let (at_fresh, at_full) = (position(rows, fresh), position(rows, full));
        assert_eq!(at_full, at_fresh + 1, "{full} is not under {fresh}");
        (&rows[at_fresh], &rows[at_full])
    }

    /// A report's row of 64 gRPC writers appending at `rate` with that p99 and CPU per append
    /// (the writers' where given); the rest is what every such row holds.
    fn writers_64(
        rate: f64,
        p99_ms: f64,
        daemon_cpu: f64,
        writers_cpu: Option<f64>,
    ) -> serde_json::Value {
        serde_json::json!({"writers": 64, "appends": 96000, "appends_per_second": rate,
            "median_ms": 1.9, "p99_ms": p99_ms, "mean_batch": 20.0, "daemon_peak_rss_mib": 60.0,
            "daemon_cpu_us_per_append": daemon_cpu, "writers_cpu_us_per_append": writers_cpu})
    }

    /// The report written before the newer rows has no row whose name contains `part`.
    fn assert_no_row_in_the_old_report(part: &str) {
        let rows = rows(&limits(), &raw());
        assert!(
            !rows.iter().any(|r| r.scenario.contains(part)),
            "a row names {part}: {rows:?}"
        );
    }

    /// A growth series that timed SHA-256 beside each put shows each put against it in
    /// the grown store's row; the verdict keeps the raw times the target names.
    #[test]
    fn the_grown_store_row_shows_each_put_against_sha256_beside_it() {
        let mut json = raw_json();
        // The first put (1.3 s) beside SHA-256 at 1.3 s, the last quarter's (1.38, 1.4 and
        // 1.6 s) beside 1.0 s each: 1.0× and a median of 1.4×, so 1.40× the fresh.
        let beside = [1.3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        for (point, sha) in json["custody"]["growth"]
            .as_array_mut()
            .expect("the growth series")
            .iter_mut()
            .zip(beside)
        {
            point["sha256_seconds_beside"] = sha.into();
        }
        let scenarios: Scenarios = serde_json::from_value(json).expect("parses");
        let rows = rows(&limits(), &scenarios);
        let name = "1024 MiB put, rocksdb, 2.00 GiB stored in 12,345 blobs";
        let grown = &rows[position(&rows, name)];
        assert!(
            grown.result.ends_with(
                "the last 1.60 s; against SHA-256 timed beside each put, 1.40× the fresh (1.40× and 1.00×)"
            ),
            "{grown:?}"
        );
        assert_eq!((grown.ratio.as_str(), grown.met), ("1.40×", Some(true)));
        // A report from before it says nothing of it.
        let old_rows = super::rows(&limits(), &raw());
        let old = &old_rows[position(&old_rows, name)];
        assert!(old.result.ends_with("the last 1.60 s"), "{old:?}");
    }

    /// A run that grew a store draws its growth plot, on the put's floor as the table judges it
    /// (max(SHA-256, write+fsync): 1.0 s here), and a run that did not draws none.
    #[test]
    fn the_growth_plot_is_drawn_from_a_grown_store_only() {
        let mut custody = raw().custody;
        let plot = growth_plot(&custody).expect("nine puts make a plot");
        let floor = custody
            .openssl_sha256_seconds
            .max(custody.disk_write_fsync_seconds);
        assert_eq!(floor, 1.0);
        assert_eq!(
            plot,
            crate::custody::growth_svg(&custody.growth, floor, "rocksdb")
        );
        custody.growth.truncate(1);
        assert!(growth_plot(&custody).is_none());
    }

    /// Reports as the scenarios print them with --json.
    fn raw() -> Scenarios {
        serde_json::from_value(raw_json()).expect("every scenario's report parses as its type")
    }

    fn raw_json() -> serde_json::Value {
        serde_json::json!({
            "custody": {"size_bytes": 1073741824u64, "openssl_sha256_seconds": 0.8,
                "openssl_sha256_gib_per_s": 1.25, "disk_write_fsync_seconds": 1.0,
                "disk_write_fsync_gib_per_s": 1.0,
                "backends": [{"backend": "rocksdb", "put_seconds": 2.0, "put_ratio": 2.5,
                    "put_ratio_to_floor": 2.0, "get_seconds": 3.0, "get_ratio": 3.75,
                    "get_ratio_to_floor": 3.0, "get_stream_seconds": 1.0, "get_stream_ratio": 1.25,
                    "daemon_peak_rss_mib": 85.0}],
                "peer": {"registry": "docker-registry", "put_seconds": 2.5, "get_seconds": 2.0,
                    "get_stream_seconds": 0.9, "copy_seconds": 1.5},
                "growth": [
                    {"stored_gib": 0.0, "put_seconds": 1.3, "put_ratio_to_floor": 1.3, "daemon_cpu_seconds": 1.0},
                    {"stored_gib": 0.25, "put_seconds": 1.2, "put_ratio_to_floor": 1.2, "daemon_cpu_seconds": 1.0},
                    {"stored_gib": 0.5, "put_seconds": 1.3, "put_ratio_to_floor": 1.3, "daemon_cpu_seconds": 1.0},
                    {"stored_gib": 0.75, "put_seconds": 1.25, "put_ratio_to_floor": 1.25, "daemon_cpu_seconds": 1.0},
                    {"stored_gib": 1.0, "put_seconds": 1.3, "put_ratio_to_floor": 1.3, "daemon_cpu_seconds": 1.0},
                    {"stored_gib": 1.25, "put_seconds": 1.35, "put_ratio_to_floor": 1.35, "daemon_cpu_seconds": 1.0},
                    {"stored_gib": 1.5, "put_seconds": 1.38, "put_ratio_to_floor": 1.38, "daemon_cpu_seconds": 1.1},
                    {"stored_gib": 1.75, "put_seconds": 1.4, "put_ratio_to_floor": 1.4, "daemon_cpu_seconds": 1.1},
                    {"stored_gib": 2.0, "stored_blobs": 12345, "put_seconds": 1.6, "put_ratio_to_floor": 1.6, "daemon_cpu_seconds": 1.2}],
                "growth_daemon_peak_rss_mib": 100.0},
            "small": [{"backend": "rocksdb", "blobs": 10000, "blob_bytes": 4096,
                "batch_put_blobs_per_s": 51000.0, "batch_put_mib_per_s": 199.0, "batch_ms_p50": 40.0,
                "batch_ms_p99": 60.0, "find_missing_digests": 10000, "find_missing_ms_p50": 18.0,
                "find_missing_ms_p99": 24.0, "daemon_peak_rss_mib": 92.0},
                {"backend": "rocksdb", "stored_before": 1000000, "prefill_blobs_per_s": 80000.0,
                "blobs": 10000, "blob_bytes": 4096,
                "batch_put_blobs_per_s": 40000.0, "batch_put_mib_per_s": 156.0, "batch_ms_p50": 50.0,
                "batch_ms_p99": 70.0, "find_missing_digests": 10000, "find_missing_ms_p50": 36.0,
                "find_missing_ms_p99": 50.0, "daemon_peak_rss_mib": 110.0},
                {"backend": "file", "blobs": 10000, "blob_bytes": 4096,
                "batch_put_blobs_per_s": 44000.0, "batch_put_mib_per_s": 172.0, "batch_ms_p50": 45.0,
                "batch_ms_p99": 55.0, "find_missing_digests": 10000, "find_missing_ms_p50": 7.0,
                "find_missing_ms_p99": 9.0, "daemon_peak_rss_mib": 52.0}],
            "ledger": {"fsync_median_ms": 0.2, "fsync_p99_ms": 0.4, "log_size": 1000000,
                "fill_seconds": 9.0,
                "appends": [
                    {"writers": 1, "appends": 3000, "appends_per_second": 3000.0, "median_ms": 0.3, "p99_ms": 0.5, "mean_batch": 1.0},
                    {"writers": 64, "appends": 90000, "appends_per_second": 30000.0, "median_ms": 1.6, "p99_ms": 4.0, "mean_batch": 40.0}],
                "grpc_appends": [
                    {"writers": 1, "appends": 2000, "appends_per_second": 2000.0, "median_ms": 0.5, "p99_ms": 0.7, "mean_batch": 1.0},
                    {"writers": 64, "appends": 63000, "appends_per_second": 21000.0, "median_ms": 3.0, "p99_ms": 6.0, "mean_batch": 30.0, "daemon_peak_rss_mib": 70.0}],
                "inclusion_proof_median_us": 40.0, "inclusion_proof_p99_us": 90.0,
                "receipt_median_us": 60.0, "receipt_p99_us": 120.0,
                "audit_entries_per_second": 250000.0, "audit_seconds": 4.0,
                "registry_replay_seconds": 0.5, "openssl_sha256_export_seconds": 0.2,
                "audit_ratio_to_openssl": 16.0},
            "evidence": {"daemon_peak_rss_mib": 100.0, "bundle_runs": 1000, "bundle_entries": 1001,
                "bundle_bytes": 3000000, "bundle_verify_ms": 90.0, "scenarios": [
                {"name": "AttestRuns (batch)", "clients": 32, "runs_per_second": 18000.0, "runs": 54000,
                    "call_ms_p50": 800.0, "call_ms_p99": 900.0}]},
            "rest": {"size_bytes": 1073741824u64, "openssl_sha256_seconds": 0.8, "upload_seconds": 3.5,
                "upload_ratio_to_openssl": 4.4, "upload_cli_cpu_seconds": 0.7,
                "upload_daemon_cpu_seconds": 2.9, "download_seconds": 2.7,
                "download_ratio_to_openssl": 3.4, "download_cli_cpu_seconds": 1.5,
                "download_daemon_cpu_seconds": 1.0,
                "ranges": 200, "range_bytes": 1048576, "range_ms_p50": 1.5, "range_ms_p99": 3.0,
                "daemon_peak_rss_mib": 80.0},
            "scan": {"scanner": "custodian.builtin/rules-2", "throughput": [{"content": "JSON Lines text",
                "bytes": 1073741824u64, "openssl_sha256_seconds": 0.75, "scan_seconds": 0.4,
                "scan_gib_per_s": 2.5, "ratio_to_openssl": 0.5, "bytes_scanned": 1073741824u64,
                "files": 1, "verdict": "clean"}]},
        })
    }

    #[test]
    fn a_report_missing_a_field_is_refused_not_read_as_blank() {
        let mut json = raw_json();
        json["rest"]
            .as_object_mut()
            .expect("rest report")
            .remove("upload_seconds");
        let err = serde_json::from_value::<Scenarios>(json)
            .err()
            .expect("a missing field is an error");
        assert!(err.to_string().contains("upload_seconds"), "{err}");
    }

    #[test]
    fn a_report_with_local_puts_shows_the_local_and_the_streamed_put() {
        let mut json = raw_json();
        let backend = &mut json["custody"]["backends"][0];
        backend["put_seconds"] = serde_json::json!(1.2);
        backend["put_ratio_to_floor"] = serde_json::json!(1.2);
        backend["put_streamed_seconds"] = serde_json::json!(2.0);
        backend["put_streamed_ratio_to_floor"] = serde_json::json!(2.0);
        let rows = rows_from(json);
        let find = |name: &str| &rows[position(&rows, name)];
        let local = find("1024 MiB put, local put socket, rocksdb");
        assert_eq!((local.ratio.as_str(), local.met), ("1.20×", Some(true)));
        let streamed = find("1024 MiB put, streamed over gRPC, rocksdb");
        assert_eq!(
            (streamed.ratio.as_str(), streamed.met),
            ("2.00×", Some(false))
        );
        assert!(
            !rows
                .iter()
                .any(|r| r.scenario.starts_with("1024 MiB put, gRPC"))
        );
    }

    #[test]
    fn grpc_appends_on_the_large_log_sit_under_the_fresh_row_of_their_writer_count() {
        let mut json = raw_json();
        json["ledger"]["grpc_appends_on_large_log"] = writers_64(31500.0, 3.6, 40.0, None);
        let rows = rows_from(json);
        let (fresh, large) = under_its_fresh_row(
            &rows,
            "durable ledger appends, 64 gRPC writers",
            "durable ledger appends, 64 gRPC writers, into 1,000,000 entries",
        );
        assert_eq!(
            large.result,
            "31500/s (1.50× the fresh), daemon CPU 40 µs each"
        );
        // Judged by the fresh row's target: 1.05× the group commit, p99 18× one fsync.
        assert_eq!(
            (large.ratio.as_str(), large.met),
            ("1.05×, p99 18× fsync", Some(true))
        );
        assert_eq!(fresh.met, Some(false));
        // Reports from before the large log's gRPC row have none.
        assert_no_row_in_the_old_report("gRPC writers, into");
    }

    #[test]
    fn appends_on_streams_sit_under_the_unary_row_and_are_judged_by_its_target() {
        let mut json = raw_json();
        json["ledger"]["grpc_stream_appends"] = writers_64(32000.0, 4.6, 39.0, Some(14.0));
        let rows = rows_from(json);
        let (unary, streamed) = under_its_fresh_row(
            &rows,
            "durable ledger appends, 64 gRPC writers",
            "durable ledger appends, 64 gRPC writers, each on its own AppendStream",
        );
        assert_eq!(
            streamed.result,
            "32000/s, daemon CPU 39 µs each, the writers' 14 µs"
        );
        // The group commit's own p99 (6 ms) is read in units of one fsync (0.2 ms).
        assert_eq!(
            streamed.limit,
            "RocksDB 64-writer synced puts 30000/s, their p99 30× fsync"
        );
        // 32,000/s against the run's group commit of 30,000/s, but p99 23× one fsync.
        assert_eq!(
            (streamed.ratio.as_str(), streamed.met),
            ("1.07×, p99 23× fsync", Some(false))
        );
        assert_eq!(unary.met, Some(false));
        // Reports from before the streams' row have none.
        assert_no_row_in_the_old_report("AppendStream");
    }

    /// The streams with compact answers sit under the streams with receipts, judged by the
    /// same target against the floor beside them.
    #[test]
    fn compact_answers_sit_under_the_streams_with_receipts() {
        let mut json = raw_json();
        json["ledger"]["grpc_stream_appends"] = writers_64(24000.0, 3.0, 39.0, Some(12.0));
        json["ledger"]["grpc_compact_stream_appends"] = writers_64(36000.0, 3.0, 29.0, Some(12.0));
        let rows = rows_from(json);
        let (_, compact) = under_its_fresh_row(
            &rows,
            "durable ledger appends, 64 gRPC writers, each on its own AppendStream",
            "durable ledger appends, 64 gRPC writers, each on its own AppendStream, compact answers",
        );
        assert_eq!(
            compact.result,
            "36000/s, daemon CPU 29 µs each, the writers' 12 µs"
        );
        // 36,000/s against the run's group commit of 30,000/s, p99 15× one fsync of 0.2 ms.
        assert_eq!(
            (compact.ratio.as_str(), compact.met),
            ("1.20×, p99 15× fsync", Some(true))
        );
        assert_no_row_in_the_old_report("compact answers");
    }

    #[test]
    fn gets_from_the_grown_store_are_judged_as_the_fresh_gets_are() {
        let mut json = raw_json();
        json["custody"]["growth_gets"] = serde_json::json!({"stored_gib": 2.0,
            "stored_blobs": 12346, "get_seconds": 2.16, "get_stream_seconds": 1.2,
            "get_stream_blake3_seconds": 0.99});
        let rows = rows_from(json);
        let find = |name: &str| &rows[position(&rows, name)];
        let stored = "rocksdb, 2.00 GiB stored in 12,346 blobs";
        let get = find(&format!("1024 MiB get to a file, gRPC, {stored}"));
        // 2.16 s against 0.8 s of SHA-256 and 1.0 s of write+fsync, and the fresh get's 3.0 s.
        assert_eq!(get.result, "2.16 s (0.72× the fresh)");
        assert_eq!((get.ratio.as_str(), get.met), ("1.20×", Some(true)));
        let stream = find(&format!("1024 MiB get (stream), gRPC, {stored}"));
        assert_eq!((stream.ratio.as_str(), stream.met), ("1.33×", Some(false)));
        // The fresh report has no BLAKE3 get, so its row has no comparison to it.
        let blake3 = find(&format!(
            "1024 MiB get (stream) by BLAKE3 digest, gRPC, {stored}"
        ));
        assert_eq!(blake3.result, "0.99 s");
        assert_eq!((blake3.ratio.as_str(), blake3.met), ("1.10×", Some(true)));

        // With the disk timed again after the gets, its figure is shown beside the verdict,
        // which stays on the run's own floor.
        let mut json = raw_json();
        json["custody"]["growth_gets"] = serde_json::json!({"stored_gib": 2.0,
            "stored_blobs": 12346, "get_seconds": 2.7, "get_stream_seconds": 1.2,
            "get_stream_blake3_seconds": 0.99, "disk_write_fsync_seconds": 2.0});
        let rows = rows_from(json);
        let get = &rows[position(&rows, &format!("1024 MiB get to a file, gRPC, {stored}"))];
        assert_eq!(
            get.result,
            "2.70 s (0.90× the fresh); write+fsync right after: 2.00 s, 0.96× with it"
        );
        assert_eq!((get.ratio.as_str(), get.met), ("1.50×", Some(false)));
    }

    #[test]
    fn a_rest_upload_into_the_grown_store_sits_beside_the_fresh_one() {
        let mut json = raw_json();
        json["custody"]["growth_gets"] = serde_json::json!({"stored_gib": 19.0,
            "stored_blobs": 296434, "get_seconds": 2.16, "get_stream_seconds": 1.2,
            "get_stream_blake3_seconds": 0.99, "rest_upload": {"seconds": 1.4,
            "ratio_to_openssl": 1.75, "cli_cpu_seconds": 0.6, "daemon_cpu_seconds": 2.0}});
        json["custody"]["growth_daemon_peak_rss_mib"] = serde_json::json!(101.0);
        let rows = rows_from(json.clone());
        let (_, grown) = under_its_fresh_row(
            &rows,
            "REST data pack 1024 MiB upload (digest check and scan included)",
            "REST data pack 1024 MiB upload over REST, rocksdb, 19 GiB stored in 296,434 blobs",
        );
        // 1.4 s against the fresh upload's 3.5 s; judged as the fresh upload is (≤ 2× SHA-256).
        assert_eq!(
            grown.result,
            "1.40 s (0.40× the fresh), CPU: CLI 0.60 s, daemon 2.00 s"
        );
        assert_eq!((grown.ratio.as_str(), grown.met), ("1.75×", Some(true)));
        assert_eq!(grown.daemon_peak_rss_mib, Some(101.0));
        // Over 2× SHA-256, or over the memory budget, it is not met.
        let mut slow = json.clone();
        slow["custody"]["growth_gets"]["rest_upload"]["ratio_to_openssl"] = 2.5.into();
        let rows = rows_from(slow);
        let grown = rows
            .iter()
            .find(|r| r.scenario.contains("upload over REST, rocksdb,"));
        assert_eq!(grown.map(|r| r.met), Some(Some(false)));
        let mut heavy = json;
        heavy["custody"]["growth_daemon_peak_rss_mib"] = 140.0.into();
        let rows = rows_from(heavy);
        let grown = rows
            .iter()
            .find(|r| r.scenario.contains("upload over REST, rocksdb,"));
        assert_eq!(grown.map(|r| r.met), Some(Some(false)));
        // Reports from before it was measured have no such row.
        assert_no_row_in_the_old_report("upload over REST, rocksdb,");
    }

    #[test]
    fn attestations_after_a_prefill_sit_under_their_fresh_rows() {
        let mut json = raw_json();
        json["evidence"]["prefilled"] = serde_json::json!({"runs_before": 1000000,
            "fill_seconds": 60.0, "daemon_peak_rss_mib": 140.0, "scenarios": [
            {"name": "AttestRuns (batch)", "clients": 32, "runs_per_second": 9000.0,
                "runs": 27000, "call_ms_p50": 900.0, "call_ms_p99": 1000.0}]});
        let rows = rows_from(json);
        let (fresh, after) = under_its_fresh_row(
            &rows,
            "AttestRuns (batch), 32 client(s)",
            "AttestRuns (batch), 32 client(s), 1,000,000 runs attested before",
        );
        assert_eq!(after.result, "9000 runs/s (0.50× the fresh)");
        // The same target as the fresh row (≥ 10,000/s), and the prefilled daemon's memory.
        assert_eq!(after.met, Some(false));
        assert_eq!(after.daemon_peak_rss_mib, Some(140.0));
        assert_eq!(fresh.met, Some(true));
    }

    #[test]
    fn a_report_with_a_blake3_streamed_get_shows_it_beside_the_sha256_one() {
        let mut json = raw_json();
        json["custody"]["backends"][0]["get_stream_blake3_seconds"] = serde_json::json!(0.99);
        let rows = rows_from(json);
        let find = |name: &str| &rows[position(&rows, name)];
        let sha256 = find("1024 MiB get (stream), gRPC, rocksdb");
        assert_eq!((sha256.ratio.as_str(), sha256.met), ("1.11×", Some(true)));
        let blake3 = find("1024 MiB get (stream) by BLAKE3 digest, gRPC, rocksdb");
        assert_eq!((blake3.ratio.as_str(), blake3.met), ("1.10×", Some(true)));
        // A report from before the BLAKE3 get was measured has no such row.
        assert_no_row_in_the_old_report("BLAKE3");
    }

    #[test]
    fn streamed_transfers_show_what_they_cost_both_ends_and_the_hash_beside_the_registry() {
        let mut json = raw_json();
        let backend = &mut json["custody"]["backends"][0];
        backend["put_streamed_seconds"] = serde_json::json!(1.25);
        backend["put_streamed_ratio_to_floor"] = serde_json::json!(1.64);
        backend["put_streamed_cpu"] =
            serde_json::json!({"cli_seconds": 0.45, "daemon_seconds": 1.49, "cores": 2});
        backend["get_stream_blake3_seconds"] = serde_json::json!(0.99);
        backend["get_stream_cpu"] =
            serde_json::json!({"cli_seconds": 1.05, "daemon_seconds": 0.45, "cores": 2});
        let rows = rows_from(json);
        let find = |name: &str| &rows[position(&rows, name)];
        let put = find("1024 MiB put, streamed over gRPC, rocksdb");
        assert_eq!(
            put.result,
            "1.25 s, CPU: CLI 0.45 s, daemon 1.49 s (at least 0.97 s on 2 cores)"
        );
        let sha256 = find("1024 MiB get (stream), gRPC, rocksdb");
        assert_eq!(
            sha256.result,
            "1.00 s, CPU: CLI 1.05 s, daemon 0.45 s (at least 0.75 s on 2 cores)"
        );
        // The limits' SHA-256 runs at 1.6 GiB/s: 0.625 s for the GiB.
        assert!(
            sha256
                .limit
                .ends_with("(SHA-256 of the same bytes alone, in memory on one core: 0.62 s)"),
            "{}",
            sha256.limit
        );
        // The CLI's receive path against curl's plus one hash, once the report has all three.
        assert!(
            !rows.iter().any(|r| r.scenario.ends_with("the CLI's CPU")),
            "no curl figure, no row"
        );
        // A get whose CPU the report lacks (as every report before the fiftieth session) shows
        // its time alone, and the BLAKE3 row no SHA-256.
        let blake3 = find("1024 MiB get (stream) by BLAKE3 digest, gRPC, rocksdb");
        assert_eq!(blake3.result, "0.99 s");
        assert!(!blake3.limit.contains("SHA-256"), "{}", blake3.limit);
    }

    #[test]
    fn the_clis_receive_path_is_judged_against_curls_read_plus_one_sha256_pass() {
        let mut json = raw_json();
        json["custody"]["sha256_in_memory_seconds"] = serde_json::json!(0.6);
        json["custody"]["peer"]["get_stream_cpu"] =
            serde_json::json!({"cli_seconds": 0.3, "daemon_seconds": 0.1, "cores": 2});
        json["custody"]["backends"][0]["get_stream_cpu"] =
            serde_json::json!({"cli_seconds": 0.99, "daemon_seconds": 0.5, "cores": 2});
        let rows = rows_from(json.clone());
        let lean = &rows[position(&rows, "1024 MiB get (stream), gRPC, rocksdb: the CLI's CPU")];
        assert_eq!(
            (lean.result.as_str(), lean.ratio.as_str(), lean.met),
            ("0.99 s", "1.10×", Some(false))
        );
        assert_eq!(
            lean.limit,
            "curl's read from the registry 0.30 s + SHA-256 alone from memory 0.60 s"
        );
        json["custody"]["backends"][0]["get_stream_cpu"]["cli_seconds"] = serde_json::json!(0.85);
        let rows = rows_from(json);
        let lean = &rows[position(&rows, "1024 MiB get (stream), gRPC, rocksdb: the CLI's CPU")];
        assert_eq!((lean.ratio.as_str(), lean.met), ("0.94×", Some(true)));
    }

    #[test]
    fn a_report_with_a_local_data_pack_upload_shows_it_beside_the_rest_upload() {
        let mut json = raw_json();
        json["rest"]["local_upload"] = serde_json::json!({
            "seconds": 1.3,
            "ratio_to_openssl": 1.3,
            "cli_cpu_seconds": 0.01,
            "daemon_cpu_seconds": 1.9,
        });
        let with_local: Scenarios = serde_json::from_value(json).expect("parses");
        let rows = rows(&limits(), &with_local);
        let find = |name: &str| {
            rows.iter()
                .find(|r| r.scenario.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
        };
        let local = find("REST data pack 1024 MiB upload handed over the local put socket");
        assert_eq!((local.ratio.as_str(), local.met), ("1.30×", Some(true)));
        let rest = find("REST data pack 1024 MiB upload over REST");
        assert_eq!(rest.met, Some(false));
        // The report without it (as every earlier one) keeps its single upload row.
        let rows = super::rows(&limits(), &raw());
        assert!(rows.iter().any(
            |r| r.scenario == "REST data pack 1024 MiB upload (digest check and scan included)"
        ));
    }

    #[test]
    fn the_summary_judges_each_target_from_the_scenarios() {
        let rows = rows(&limits(), &raw());
        let find = |prefix: &str| {
            rows.iter()
                .find(|r| r.scenario.starts_with(prefix))
                .unwrap_or_else(|| panic!("no row {prefix}: {rows:?}"))
        };
        let met = |prefix: &str| find(prefix).met;
        // The put's floor is max(SHA-256 0.8 s, write+fsync 1.0 s): 2.0 s is 2.0×, over 1.5×.
        assert_eq!(met("1024 MiB put, gRPC"), Some(false));
        assert_eq!(find("1024 MiB put, gRPC").ratio, "2.00×");
        // The streamed get against the registry's unverified read: 1.0 / 0.9 = 1.11×.
        assert_eq!(met("1024 MiB get (stream)"), Some(true));
        assert_eq!(met("1024 MiB put against the registry"), Some(true));
        assert_eq!(
            met("1024 MiB get to a file against the registry"),
            Some(false)
        );
        // Judged against the registry (3.0 / 2.0 s); the disk's own copy is shown beside it.
        assert_eq!(
            find("1024 MiB get to a file against the registry").limit,
            "the reference registry 2.00 s (the disk's own copy 1.50 s, 2.00× it)"
        );
        assert_eq!(
            find("1024 MiB put against the registry").limit,
            "the reference registry 2.50 s"
        );
        // The grown store is judged by the median of the last quarter of its puts (1.38, 1.40
        // and 1.60 s: 1.40 s), not by the last put alone: 1.4× its floor and 1.08× the put
        // into the empty store, with the last put (1.60 s, which alone would fail) shown beside.
        let grown = find("1024 MiB put, rocksdb, 2.00 GiB stored in 12,345 blobs");
        assert_eq!(grown.met, Some(true), "{grown:?}");
        assert!(
            grown.result.contains(
                "1.40 s, the median of the puts from 1.50 GiB stored (1.08× the put into the empty store); the last 1.60 s"
            ),
            "{grown:?}"
        );
        assert_eq!(grown.ratio, "1.40×");
        // RocksDB's BatchPut must reach 0.9× the synced batches; file:// 0.5×.
        assert_eq!(met("BatchPut 10,000 × 4 KiB, rocksdb"), Some(false));
        assert_eq!(met("BatchPut 10,000 × 4 KiB, file"), Some(true));
        let prefilled = find("BatchPut 10,000 × 4 KiB, rocksdb, 1,000,000 stored");
        assert!(
            prefilled.result.contains("(0.78× the fresh)"),
            "{prefilled:?}"
        );
        let missing = find("FindMissing of 10,000 digests, rocksdb, 1,000,000 stored");
        assert!(
            missing.result.contains("(2.00× the p50 fresh)"),
            "{missing:?}"
        );
        assert_eq!(met("FindMissing of 10,000 digests, rocksdb"), Some(false));
        assert_eq!(met("FindMissing of 10,000 digests, file"), Some(true));
        // 21,000/s against RocksDB's own 64 writers at 30,000/s.
        assert_eq!(met("durable ledger appends, 64"), Some(false));
        assert_eq!(met("durable ledger appends, 1 "), None);
        assert_eq!(met("inclusion proof"), Some(true));
        assert_eq!(met("offline audit"), Some(true));
        assert_eq!(met("AttestRuns (batch), 32"), Some(true));
        assert_eq!(met("REST data pack 1024 MiB upload"), Some(false));
        assert_eq!(met("scan"), Some(true));
        let table = markdown(&limits(), &rows);
        assert!(
            table.contains("| 1024 MiB put, gRPC, rocksdb | 2.00 s |"),
            "{table}"
        );
        // The limits' line gives the group commit's own p99 beside its rate.
        assert!(
            table.contains("30000/s (64 writers, group commit; their p99 6.0 ms)"),
            "{table}"
        );
    }

    /// A row that carries floors measured beside it is judged against them, not against the
    /// run's first limits; a row without them still is.
    #[test]
    fn rows_are_judged_against_the_floors_measured_beside_them() {
        let mut json = raw_json();
        let floors = serde_json::json!({"group_synced_puts_per_s": 20000.0,
            "batched_values_per_s": 50000.0, "multi_get_10k_ms": 20.0});
        json["small"][0]["floors"] = floors.clone();
        json["ledger"]["grpc_appends"][1]["floors"] = floors;
        json["ledger"]["grpc_appends"][1]["p99_ms"] = serde_json::json!(3.0);
        json["evidence"]["scenarios"]
            .as_array_mut()
            .expect("the scenarios")
            .push(
                serde_json::json!({"name": "AttestRun (unary)", "clients": 32,
                "runs_per_second": 8000.0, "runs": 32000, "call_ms_p50": 4.0,
                "call_ms_p99": 8.0, "ed25519_verifies_per_s": 15000.0}),
            );
        let rows = rows_from(json);
        // The row `name`, after checking its ratio and verdict.
        let judged = |name: &str, ratio: &str, met: bool| {
            let row = &rows[position(&rows, name)];
            assert_eq!((row.ratio.as_str(), row.met), (ratio, Some(met)), "{row:?}");
            row
        };
        // 51,000 blobs/s: 1.02× the 50,000/s beside it (0.64× the run's first 80,000/s).
        let put = judged("BatchPut 10,000 × 4 KiB, rocksdb", "1.02×", true);
        assert_eq!(put.limit, "RocksDB synced batches 50000/s beside it");
        // 18 ms against 20 ms beside it (3.6× the first 5 ms).
        judged("FindMissing of 10,000 digests, rocksdb", "p50 0.9×", true);
        // The prefilled row has no floors of its own: the run's first limits still judge it.
        let full = judged(
            "BatchPut 10,000 × 4 KiB, rocksdb, 1,000,000 stored",
            "0.50×",
            false,
        );
        assert_eq!(full.limit, "RocksDB synced batches 80000/s");
        // 21,000 appends/s against 20,000/s beside it, p99 15× the fsync. Floors from before
        // their p99 was measured name none, not the first limits' one.
        let appends = judged(
            "durable ledger appends, 64 gRPC writers",
            "1.05×, p99 15× fsync",
            true,
        );
        assert_eq!(
            appends.limit,
            "RocksDB 64-writer synced puts 20000/s beside it"
        );
        // 8,000 runs/s: 0.53× the 15,000/s beside it (0.27× the first 30,000/s).
        let unary = judged("AttestRun (unary), 32 client(s)", "0.53×", true);
        assert_eq!(unary.limit, "Ed25519 verify 15000/s per core beside it");
    }

    #[test]
    fn counts_are_written_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
    }

    #[test]
    fn the_plot_is_svg_with_one_line_per_series() {
        let svg = svg(&raw());
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");
        assert!(svg.contains(">gRPC p99<") && svg.contains(">64<"));
    }
}

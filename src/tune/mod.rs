//! `corecast tune check`: audits the running host against what `tuning/` recommends.
//!
//! Owns the host recommendations corecast makes (open files, locked memory, io_uring, the accept
//! backlog, local ports, TCP memory, the CPU governor, NIC interrupt placement), the table that
//! reports them, and the thresholds start-up shares with it (`runtime::preflight` refuses to
//! start below the same memlock minimum and with io_uring disabled). It only reads the host: it
//! never changes a setting, so it is safe to run anywhere, CI included; `tuning/apply.sh` is
//! what changes hosts.
//!
//! # Layout
//! - `checks`: one pure function per check, from what was read to a [`Row`]; the parsers of
//!   the `/proc` and `/sys` texts. Unit-tested with sample file contents.
//! - `host`: the thin layer that reads the real host into a [`host::Snapshot`].
//!
//! # Exit status
//! 0 once the table is printed, whatever it says; with `--strict`, 1 when any row is `warn` or
//! `fail` (`n/a` never counts); 2 when the arguments are wrong or `--json` cannot be written.

mod checks;
pub mod host;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::config::{parse_cpu_list, CpuList};

/// The memlock glommio refuses to start below (its `MIN_MEMLOCK_LIMIT`): below it, `fail`.
pub const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;

/// Locked memory beyond the executors' io_uring buffers: glommio's rings themselves and anything
/// else the process pins. 1 MiB covers both with room on the kernels corecast runs on.
const MEMLOCK_SLACK_BYTES: u64 = 1024 * 1024;

/// Locked memory a process with `executors` glommio executors of `io_memory_bytes` each needs.
pub fn memlock_bytes_wanted(executors: usize, io_memory_bytes: usize) -> u64 {
    executors as u64 * io_memory_bytes as u64 + MEMLOCK_SLACK_BYTES
}

/// Every check, in the order of the table. A row for each is printed on every run.
pub const CHECK_NAMES: [&str; 8] = [
    "nofile",
    "memlock",
    "io_uring",
    "somaxconn",
    "port_range",
    "tcp_mem",
    "cpu_governor",
    "irq_affinity",
];

/// `corecast tune check`: audit this host and print one row per check.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Exit 1 when any check is `warn` or `fail` (`n/a` does not count). Without it the exit
    /// status is 0 whenever the audit ran.
    #[arg(long)]
    strict: bool,
    /// Also write the rows as a JSON array to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The broadcast cores to audit, as given to `serve --cores` (`1-7`). Default: every online
    /// CPU but the first, the plan tuning/ recommends (CPU 0 keeps the ingest core, the NIC
    /// interrupts and the OS); on a one-CPU host, that CPU. Decides which CPUs NIC interrupts
    /// must stay off and how many executors need locked memory.
    #[arg(long, value_parser = parse_cpu_list)]
    cores: Option<CpuList>,
}

/// The `tune` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TuneCommand {
    /// Audit this host against tuning/'s recommendations: a table of pass / warn / fail / n/a
    /// with the command that fixes each; see tuning/README.md.
    Check(CheckArgs),
}

/// What a check found, from best to worst; `n/a` when it does not apply to this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    /// Meets the recommendation.
    #[serde(rename = "pass")]
    Pass,
    /// corecast runs, but below what tuning/ recommends for 10,000+ connections.
    #[serde(rename = "warn")]
    Warn,
    /// corecast will not start, or cannot reach 10,000 connections.
    #[serde(rename = "fail")]
    Fail,
    /// Nothing to check here (no cpufreq in a VM, no NIC interrupts, ...); the row says why.
    #[serde(rename = "n/a")]
    NotApplicable,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::NotApplicable => "n/a",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// One of [`CHECK_NAMES`].
    pub check: &'static str,
    /// What the host has, or why the check does not apply.
    pub found: String,
    /// What tuning/ recommends.
    pub recommended: String,
    pub status: Status,
    /// The command that fixes it; `-` when nothing needs fixing.
    pub fix: String,
}

/// Runs `corecast tune <command>`.
pub fn main(command: TuneCommand) -> ExitCode {
    let TuneCommand::Check(args) = command;
    let snapshot = host::Snapshot::read();
    let cores = args
        .cores
        .clone()
        .unwrap_or_else(|| default_cores(&snapshot.online_cpus));
    let rows = checks::all(&snapshot, &cores);
    assert_eq!(rows.len(), CHECK_NAMES.len(), "one row per check");
    let mut stdout = std::io::stdout().lock();
    let printed = write!(stdout, "{}", table(&rows, &cores)).and_then(|()| stdout.flush());
    if let Err(err) = printed {
        eprintln!("corecast tune check: cannot print the table: {err}");
        return ExitCode::from(2);
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&rows).expect("rows always serialize");
        if let Err(err) = std::fs::write(path, json + "\n") {
            eprintln!(
                "corecast tune check: cannot write {}: {err}",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    let flagged = rows
        .iter()
        .any(|row| matches!(row.status, Status::Warn | Status::Fail));
    if args.strict && flagged {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every online CPU but the first; the only one on a one-CPU host.
fn default_cores(online: &[usize]) -> CpuList {
    match online {
        [] => vec![0],
        [only] => vec![*only],
        [_, rest @ ..] => rest.to_vec(),
    }
}

/// The rows as an aligned table (the last column unpadded), then a one-line summary.
fn table(rows: &[Row], cores: &[usize]) -> String {
    let header = ["check", "found", "recommended", "status", "fix"];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|row| {
            [
                row.check,
                row.found.as_str(),
                row.recommended.as_str(),
                row.status.as_str(),
                row.fix.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&header).chain(&cells) {
        let mut text = String::new();
        for (column, cell) in line.iter().enumerate() {
            if column + 1 == line.len() {
                text.push_str(cell);
            } else {
                let pad = widths[column] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    let count = |status| rows.iter().filter(|row| row.status == status).count();
    out.push_str(&format!(
        "{} checks: {} pass, {} warn, {} fail, {} n/a (broadcast cores {})\n",
        rows.len(),
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::NotApplicable),
        checks::format_cpu_list(cores),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cores_leave_the_first_cpu_to_ingest_and_interrupts() {
        assert_eq!(default_cores(&[0, 1, 2, 3]), [1, 2, 3]);
        assert_eq!(default_cores(&[0]), [0]);
        assert_eq!(default_cores(&[]), [0]);
    }

    #[test]
    fn table_aligns_columns_and_counts_statuses() {
        let row = |check, found: &str, status| Row {
            check,
            found: found.into(),
            recommended: ">= 1".into(),
            status,
            fix: "-".into(),
        };
        let rows = [
            row("nofile", "a", Status::Pass),
            row("io_uring", "longer value", Status::Fail),
        ];
        let text = table(&rows, &[1, 2, 3]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "check     found         recommended  status  fix",
                "nofile    a             >= 1         pass    -",
                "io_uring  longer value  >= 1         fail    -",
                "2 checks: 1 pass, 0 warn, 1 fail, 0 n/a (broadcast cores 1-3)",
            ]
        );
    }

    #[test]
    fn memlock_wanted_counts_every_executor_and_the_slack() {
        assert_eq!(memlock_bytes_wanted(3, 1 << 20), 4 << 20);
    }
}

//! Host probes: a process's resident memory and the CPU time of all its threads, and the CPU
//! time of the calling thread, from `/proc`.
//!
//! Owns the bench's only reads of another process. It never runs on the delivery path: it is
//! read before connecting, once idle, and around the measured phase. The CPU probe exists so
//! that the report can show the bench's cost per delivery next to the server's: a bench that
//! spends more CPU per received message than the server per sent one measures itself. The
//! thread probe is how the floor server (see `floor`), a thread of the bench's own process,
//! reads its cost from the same counter at the same resolution as a server's.

/// Which process to look at.
#[derive(Debug, Clone, Copy)]
pub enum Process {
    /// The bench itself.
    Bench,
    /// Another process, by id.
    Pid(u32),
}

impl Process {
    fn dir(self) -> String {
        match self {
            Self::Bench => "/proc/self".into(),
            Self::Pid(pid) => format!("/proc/{pid}"),
        }
    }
}

/// Resident memory of `process` in KiB, from the `VmRSS` line of `/proc/PID/status`.
pub fn rss_kib(process: Process) -> Result<u64, String> {
    let path = format!("{}/status", process.dir());
    let status = std::fs::read_to_string(&path).map_err(|error| format!("{path}: {error}"))?;
    parse_vm_rss_kib(&status).ok_or_else(|| format!("{path}: no VmRSS line"))
}

/// CPU time `process`'s live threads have run, in nanoseconds, summed from
/// `/proc/PID/task/TID/schedstat` (nanosecond resolution, unlike the tick counts of `stat`).
pub fn cpu_time_ns(process: Process) -> Result<u64, String> {
    let path = format!("{}/task", process.dir());
    let threads = std::fs::read_dir(&path).map_err(|error| format!("{path}: {error}"))?;
    let mut total_ns = 0;
    for thread in threads.flatten() {
        // A thread that ended since the listing has no file any more: it no longer counts.
        let Ok(schedstat) = std::fs::read_to_string(thread.path().join("schedstat")) else {
            continue;
        };
        total_ns += parse_schedstat_ns(&schedstat)
            .ok_or_else(|| format!("{}: unexpected schedstat", thread.path().display()))?;
    }
    Ok(total_ns)
}

/// CPU time the calling thread has run, in nanoseconds, from `/proc/thread-self/schedstat`
/// (the `stat` file's utime and stime count whole clock ticks, 10 ms on most hosts: too coarse
/// for a phase of a few hundred milliseconds).
pub fn thread_cpu_time_ns() -> Result<u64, String> {
    const PATH: &str = "/proc/thread-self/schedstat";
    let schedstat = std::fs::read_to_string(PATH).map_err(|error| format!("{PATH}: {error}"))?;
    parse_schedstat_ns(&schedstat).ok_or_else(|| format!("{PATH}: unexpected schedstat"))
}

fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The first field of a schedstat line: time spent on a CPU, in nanoseconds.
fn parse_schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tcorecast\nVmPeak:\t  9000 kB\nVmRSS:\t   4321 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(4321));
        assert_eq!(parse_vm_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn schedstat_gives_run_time_first() {
        assert_eq!(
            parse_schedstat_ns("1069536801 312265981 335\n"),
            Some(1_069_536_801)
        );
        assert_eq!(parse_schedstat_ns(""), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(rss_kib(Process::Bench).unwrap() > 0);
        // The sum covers live threads only, so it drops when another test's thread ends: spin
        // until this thread's running has lifted it 10 ms above the start, within a watchdog.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let before_ns = cpu_time_ns(Process::Bench).unwrap();
        while cpu_time_ns(Process::Bench).unwrap() < before_ns + 10_000_000 {
            assert!(std::time::Instant::now() < give_up, "running did not count");
        }
    }

    #[test]
    fn own_thread_counts_its_running_not_its_sleeping() {
        let measuring = std::thread::spawn(|| {
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let before_ns = thread_cpu_time_ns().unwrap();
            // Spins until 20 ms of its own CPU time are counted, however loaded the host.
            while thread_cpu_time_ns().unwrap() < before_ns + 20_000_000 {
                assert!(std::time::Instant::now() < give_up, "running did not count");
            }
            let spun_ns = thread_cpu_time_ns().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            thread_cpu_time_ns().unwrap() - spun_ns
        });
        let slept_ns = measuring.join().unwrap();
        assert!(
            slept_ns < 10_000_000,
            "sleeping 50 ms counted {slept_ns} ns"
        );
    }
}

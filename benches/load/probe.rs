//! Host probes: a process's resident memory and the CPU time of all its threads (or of a
//! process and every process it started), and the CPU time of the calling thread, from `/proc`.
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
    /// A process the bench started and every live process below it: a server started through
    /// a shell or a build tool is measured whole, whatever it runs as.
    Tree(u32),
}

impl Process {
    /// The `/proc` directories of the processes it names.
    fn dirs(self) -> Result<Vec<String>, String> {
        Ok(match self {
            Self::Bench => vec!["/proc/self".into()],
            Self::Pid(pid) => vec![format!("/proc/{pid}")],
            Self::Tree(root) => {
                let mut dirs = vec![format!("/proc/{root}")];
                dirs.extend(descendants(root)?.iter().map(|pid| format!("/proc/{pid}")));
                dirs
            }
        })
    }
}

/// Resident memory of `process` in KiB, from the `VmRSS` line of `/proc/PID/status`, summed
/// over a tree (pages two processes share count twice; a shell's are a few hundred KiB).
pub fn rss_kib(process: Process) -> Result<u64, String> {
    let mut total_kib = 0;
    for (index, dir) in process.dirs()?.iter().enumerate() {
        let path = format!("{dir}/status");
        let status = match std::fs::read_to_string(&path) {
            Ok(status) => status,
            // A descendant that ended since the listing no longer counts; the root must exist.
            Err(_) if index > 0 => continue,
            Err(error) => return Err(format!("{path}: {error}")),
        };
        // A zombie has no VmRSS line: it holds no memory.
        match parse_vm_rss_kib(&status) {
            Some(kib) => total_kib += kib,
            None if index > 0 => {}
            None => return Err(format!("{path}: no VmRSS line")),
        }
    }
    Ok(total_kib)
}

/// CPU time `process`'s live threads have run, in nanoseconds, summed from
/// `/proc/PID/task/TID/schedstat` (nanosecond resolution, unlike the tick counts of `stat`),
/// and over a tree's processes.
pub fn cpu_time_ns(process: Process) -> Result<u64, String> {
    let mut total_ns = 0;
    for (index, dir) in process.dirs()?.iter().enumerate() {
        match threads_cpu_time_ns(dir) {
            Ok(ns) => total_ns += ns,
            // A descendant that ended since the listing no longer counts.
            Err(_) if index > 0 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(total_ns)
}

/// The live processes below `root`, from the parent ids in `/proc/PID/stat`.
fn descendants(root: u32) -> Result<Vec<u32>, String> {
    let entries = std::fs::read_dir("/proc").map_err(|error| format!("/proc: {error}"))?;
    let parents: Vec<(u32, u32)> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            // A process that ended since the listing has no file any more.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat_ppid(&stat)?))
        })
        .collect();
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parents
                .iter()
                .filter(|&&(_, ppid)| ppid == parent)
                .map(|&(pid, _)| pid),
        );
        next += 1;
    }
    found.remove(0);
    Ok(found)
}

/// The parent id in a `/proc/PID/stat` line: the second field after the command name, which
/// is in parentheses and may itself hold spaces and parentheses.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time of the live threads of the process whose `/proc` directory is `dir`.
fn threads_cpu_time_ns(dir: &str) -> Result<u64, String> {
    let path = format!("{dir}/task");
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
    fn stat_ppid_skips_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (peer) x) S 4200 4242 4200 0 -1 4194560 100 0";
        assert_eq!(parse_stat_ppid(stat), Some(4200));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    /// A shell that starts a `sleep`: the tree holds both, and its memory is at least the
    /// shell's own.
    #[test]
    fn a_tree_holds_the_children_of_a_process() {
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let root = shell.id();
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let children = loop {
            let children = descendants(root).unwrap();
            if !children.is_empty() || std::time::Instant::now() > give_up {
                break children;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let own = rss_kib(Process::Pid(root)).unwrap();
        let tree = rss_kib(Process::Tree(root)).unwrap();
        cpu_time_ns(Process::Tree(root)).unwrap();
        for child in &children {
            let _ = std::process::Command::new("kill")
                .arg(child.to_string())
                .status();
        }
        shell.wait().unwrap();
        assert_eq!(children.len(), 1, "{children:?}");
        assert!(tree > own, "tree {tree} KiB, shell alone {own} KiB");
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

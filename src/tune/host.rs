//! Reads the running host for `corecast tune check` and for start-up's preflight.
//!
//! Owns every read of `/proc`, `/sys`, the resource limits and the io_uring probe, and nothing
//! else: it keeps the texts as the kernel wrote them (parsing and judging are `checks`'s, where
//! they are tested with sample contents). It never writes to the host. A file that cannot be
//! read is kept as `None`, which the checks report as such instead of failing the audit.

use crate::config::parse_cpu_list;

use super::checks;

/// What the checks need from the host, read once.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// `RLIMIT_NOFILE` as (soft, hard); `None` if it cannot be read.
    pub nofile: Option<(u64, u64)>,
    /// `RLIMIT_MEMLOCK` as (soft, hard) in bytes.
    pub memlock: Option<(u64, u64)>,
    /// The text of `/proc/sys/kernel/io_uring_disabled` (absent before Linux 6.6).
    pub io_uring_disabled: Option<String>,
    /// Whether a two-entry io_uring could be created here, and the error if not.
    pub io_uring_ring: Result<(), String>,
    /// The text of `/proc/sys/net/core/somaxconn`.
    pub somaxconn: Option<String>,
    /// The text of `/proc/sys/net/ipv4/ip_local_port_range`.
    pub port_range: Option<String>,
    /// The text of `/proc/sys/net/ipv4/tcp_mem` (in pages).
    pub tcp_mem: Option<String>,
    /// The kernel's page size in bytes, the unit of `tcp_mem`.
    pub page_bytes: u64,
    /// Online CPUs, from `/sys/devices/system/cpu/online`.
    pub online_cpus: Vec<usize>,
    /// Per online CPU, its `cpufreq/scaling_governor` (`None` without cpufreq, as in most VMs).
    pub governors: Vec<(usize, Option<String>)>,
    /// NIC queue interrupts and the CPUs each may run on; `None` if `/proc/interrupts` cannot
    /// be read.
    pub nic_irqs: Option<Vec<checks::NicIrq>>,
}

/// The page size assumed where the kernel cannot be asked (4 KiB, as on x86-64).
const PAGE_BYTES_FALLBACK: u64 = 4096;

/// Entries of the ring `io_uring_ring` creates: the smallest that proves io_uring works.
const PROBE_RING_ENTRIES: u32 = 2;

impl Snapshot {
    /// Reads everything the checks need from the running host.
    pub fn read() -> Snapshot {
        let online_cpus = read("/sys/devices/system/cpu/online")
            .and_then(|text| parse_cpu_list(text.trim()).ok())
            .unwrap_or_else(allowed_cpus);
        let governors = online_cpus
            .iter()
            .map(|cpu| {
                let path = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
                (*cpu, read(&path).map(|text| text.trim().to_owned()))
            })
            .collect();
        let nic_irqs = read("/proc/interrupts").map(|text| {
            checks::nic_irqs(&text)
                .into_iter()
                .map(|(number, name)| checks::NicIrq {
                    number,
                    name,
                    affinity: read(&format!("/proc/irq/{number}/smp_affinity_list"))
                        .and_then(|text| parse_cpu_list(text.trim()).ok()),
                })
                .collect()
        });
        Snapshot {
            nofile: rlimit::getrlimit(rlimit::Resource::NOFILE).ok(),
            memlock: rlimit::getrlimit(rlimit::Resource::MEMLOCK).ok(),
            io_uring_disabled: read("/proc/sys/kernel/io_uring_disabled"),
            io_uring_ring: io_uring_ring(),
            somaxconn: read("/proc/sys/net/core/somaxconn"),
            port_range: read("/proc/sys/net/ipv4/ip_local_port_range"),
            tcp_mem: read("/proc/sys/net/ipv4/tcp_mem"),
            page_bytes: page_bytes(),
            online_cpus,
            governors,
            nic_irqs,
        }
    }
}

/// `kernel.io_uring_disabled`: 0 enabled, 1 only for `kernel.io_uring_group`, 2 disabled;
/// `None` where the setting does not exist (before Linux 6.6) or cannot be read.
pub fn io_uring_disabled() -> Option<u8> {
    read("/proc/sys/kernel/io_uring_disabled")
        .as_deref()
        .and_then(checks::parse_io_uring_disabled)
}

/// Creates a tiny io_uring, asks it which operations the kernel supports (the probe glommio
/// registers at start) and drops it: the one test that also catches seccomp filters and
/// container runtimes that block the syscalls, `io_uring_register` included (a filter may let
/// a ring be set up and refuse the rest).
pub fn io_uring_ring() -> Result<(), String> {
    let ring = io_uring::IoUring::new(PROBE_RING_ENTRIES)
        .map_err(|err| format!("io_uring_setup: {err}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|err| format!("io_uring_register: {err}"))
}

fn page_bytes() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|bytes| u64::try_from(bytes).ok())
        .unwrap_or(PAGE_BYTES_FALLBACK)
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// CPUs this process may run on (its affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect();
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus.sort_unstable();
    cpus
}

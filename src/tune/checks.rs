//! The checks of `corecast tune check`: pure functions from what `host` read to a table row.
//!
//! Owns the thresholds and the fix commands, and the parsers of the kernel's texts
//! (`/proc/interrupts`, `tcp_mem`; `ip_local_port_range`'s, which the bench shares, is
//! [`corecast_proto::host`]'s). Nothing here touches the host, so every check is tested with
//! sample file contents.
//!
//! Which checks can fail: `nofile`, `memlock` and `io_uring`, because each stops corecast from
//! starting or from holding 10,000 connections. Everything else is advice: `warn` at worst.

use corecast_proto::host::parse_port_range;

use super::host::Snapshot;
use super::{memlock_bytes_wanted, Row, Status, MEMLOCK_BYTES_MIN};
use crate::config::defaults;

/// Hard open-file limit below which corecast cannot hold the 10,000 connections the project
/// targets (one descriptor each): `fail`.
const NOFILE_HARD_MIN: u64 = 10_000;

/// Hard open-file limit tuning/ sets (limits.conf, the unit's `LimitNOFILE`): the kernel's
/// default `fs.nr_open`, the highest a limit may be without raising that too. Below it, `warn`.
const NOFILE_RECOMMENDED: u64 = 1_048_576;

/// Locked memory tuning/ sets in KiB (limits.conf, the unit's `LimitMEMLOCK=64M`): enough for 63
/// executors at the default `io_memory_bytes`.
const MEMLOCK_KIB_RECOMMENDED: u64 = 64 * 1024;

/// glommio listens with a backlog of 1024 and the kernel caps it at `net.core.somaxconn`: below
/// this, bursts of new connections are refused sooner than corecast asks for. `warn`.
const SOMAXCONN_MIN: u64 = 1024;

/// What `tuning/sysctl.conf` sets `net.core.somaxconn` to (the kernel's default since 5.4).
const SOMAXCONN_RECOMMENDED: u64 = 4096;

/// The local port range tuning/ sets: 55,536 ports, so one load generator (or one proxy) can
/// open that many connections to one address; it starts above corecast's own ports (8080 and
/// 8081) so an outgoing connection can never take them before corecast binds.
const PORT_RANGE_RECOMMENDED: (u64, u64) = (10_000, 65_535);

/// TCP memory pressure threshold (`tcp_mem`'s middle value) below which the kernel starts to
/// shrink socket buffers: 1 GiB is 100,000 connections with 10 KiB each in flight. `warn`.
const TCP_MEM_PRESSURE_BYTES_MIN: u64 = 1 << 30;

/// The governor that keeps a core at full clock between bursts.
const GOVERNOR_RECOMMENDED: &str = "performance";

/// Name prefixes of NIC queue interrupts in `/proc/interrupts`: interface names
/// (`eth0-TxRx-3`, `ens5-Tx-Rx-0`, `enp1s0f0-1`) and drivers that name queues after themselves.
const NIC_IRQ_PREFIXES: [&str; 11] = [
    "eth",
    "ens",
    "enp",
    "eno",
    "enx",
    "mlx4-",
    "mlx5_comp",
    "i40e-",
    "ice-",
    "ixgbe-",
    "bnxt_en",
];

/// A NIC queue interrupt and the CPUs it may run on (`None` if that could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicIrq {
    pub number: u32,
    pub name: String,
    pub affinity: Option<Vec<usize>>,
}

/// Every row, in the order of [`super::CHECK_NAMES`], for `cores` as the broadcast cores.
pub(super) fn all(host: &Snapshot, cores: &[usize]) -> Vec<Row> {
    // The ingest core is an executor of its own even when it shares a CPU.
    let executors = cores.len() + 1;
    vec![
        nofile(host.nofile),
        memlock(host.memlock, executors),
        io_uring(host.io_uring_disabled.as_deref(), &host.io_uring_ring),
        somaxconn(host.somaxconn.as_deref()),
        port_range(host.port_range.as_deref()),
        tcp_mem(host.tcp_mem.as_deref(), host.page_bytes),
        cpu_governor(&host.governors),
        irq_affinity(host.nic_irqs.as_deref(), &host.online_cpus, cores),
    ]
}

fn row(check: &'static str, found: String, recommended: String, status: Status) -> Row {
    Row {
        check,
        found,
        recommended,
        status,
        fix: "-".into(),
    }
}

fn with_fix(mut row: Row, fix: String) -> Row {
    if row.status != Status::Pass && row.status != Status::NotApplicable {
        row.fix = fix;
    }
    row
}

fn unreadable(check: &'static str, what: &str, recommended: String) -> Row {
    row(
        check,
        format!("cannot read {what}"),
        recommended,
        Status::NotApplicable,
    )
}

fn limit_text(value: u64, unit: u64) -> String {
    if value == rlimit::INFINITY {
        "unlimited".into()
    } else {
        (value / unit).to_string()
    }
}

fn nofile(limits: Option<(u64, u64)>) -> Row {
    let recommended = format!("hard >= {NOFILE_RECOMMENDED}");
    let Some((soft, hard)) = limits else {
        return unreadable("nofile", "RLIMIT_NOFILE", recommended);
    };
    let status = if hard < NOFILE_HARD_MIN {
        Status::Fail
    } else if hard < NOFILE_RECOMMENDED {
        Status::Warn
    } else {
        Status::Pass
    };
    // Judged on the hard limit: `serve` raises the soft one to it at start.
    let found = format!("soft {}, hard {}", limit_text(soft, 1), limit_text(hard, 1));
    with_fix(
        row("nofile", found, recommended, status),
        format!(
            "LimitNOFILE={NOFILE_RECOMMENDED} in the unit; as root: ulimit -n {NOFILE_RECOMMENDED}; \
             limits.conf: tuning/apply.sh --apply"
        ),
    )
}

fn memlock(limits: Option<(u64, u64)>, executors: usize) -> Row {
    let io_memory_bytes = defaults::io_memory_bytes();
    let wanted = memlock_bytes_wanted(executors, io_memory_bytes);
    let recommended = format!(
        "hard >= {} ({executors} x {} io_memory + 1 MiB)",
        bytes_text(wanted),
        bytes_text(io_memory_bytes as u64)
    );
    let Some((soft, hard)) = limits else {
        return row(
            "memlock",
            "cannot read RLIMIT_MEMLOCK".into(),
            recommended,
            Status::Fail,
        );
    };
    // Judged on the hard limit: `serve` raises the soft one to it at start.
    let status = if hard < MEMLOCK_BYTES_MIN {
        Status::Fail
    } else if hard < wanted {
        Status::Warn
    } else {
        Status::Pass
    };
    let found = format!(
        "soft {} KiB, hard {} KiB",
        limit_text(soft, 1024),
        limit_text(hard, 1024)
    );
    let fix_kib = MEMLOCK_KIB_RECOMMENDED.max(wanted.div_ceil(1 << 20) * 1024);
    with_fix(
        row("memlock", found, recommended, status),
        format!(
            "LimitMEMLOCK={}M in the unit; as root: ulimit -l {fix_kib}; \
             limits.conf: tuning/apply.sh --apply",
            fix_kib / 1024
        ),
    )
}

/// `kernel.io_uring_disabled` as a number: 0 enabled, 1 root and `kernel.io_uring_group` only,
/// 2 disabled.
pub fn parse_io_uring_disabled(text: &str) -> Option<u8> {
    text.trim().parse().ok()
}

fn io_uring(disabled: Option<&str>, ring: &Result<(), String>) -> Row {
    let recommended = "a ring; io_uring_disabled 0".to_owned();
    let disabled = disabled.and_then(parse_io_uring_disabled);
    let setting = match disabled {
        Some(value) => format!("kernel.io_uring_disabled {value}"),
        None => "no kernel.io_uring_disabled (before Linux 6.6)".into(),
    };
    let enable = "sysctl -w kernel.io_uring_disabled=0".to_owned();
    match ring {
        Ok(()) if disabled == Some(1) => with_fix(
            row(
                "io_uring",
                format!("ring created, but {setting}: only root and kernel.io_uring_group may"),
                recommended,
                Status::Warn,
            ),
            enable,
        ),
        Ok(()) => row(
            "io_uring",
            format!("ring created; {setting}"),
            recommended,
            Status::Pass,
        ),
        Err(err) => {
            let fix = if matches!(disabled, Some(1 | 2)) {
                enable
            } else if err.contains("not implemented") {
                "run on Linux 5.8 or later built with CONFIG_IO_URING".into()
            } else {
                "allow io_uring_setup, io_uring_enter and io_uring_register in the seccomp \
                 profile (docker: --security-opt seccomp=PROFILE)"
                    .into()
            };
            with_fix(
                row(
                    "io_uring",
                    format!("no ring: {err}; {setting}"),
                    recommended,
                    Status::Fail,
                ),
                fix,
            )
        }
    }
}

fn somaxconn(text: Option<&str>) -> Row {
    let recommended = format!(">= {SOMAXCONN_MIN} (glommio's backlog)");
    let Some(value) = text.and_then(|text| text.trim().parse::<u64>().ok()) else {
        return unreadable("somaxconn", "net.core.somaxconn", recommended);
    };
    let status = if value < SOMAXCONN_MIN {
        Status::Warn
    } else {
        Status::Pass
    };
    with_fix(
        row("somaxconn", value.to_string(), recommended, status),
        format!("sysctl -w net.core.somaxconn={SOMAXCONN_RECOMMENDED}"),
    )
}

fn port_range(text: Option<&str>) -> Row {
    let (low_wanted, high_wanted) = PORT_RANGE_RECOMMENDED;
    let ports_wanted = high_wanted - low_wanted + 1;
    let recommended = format!("{low_wanted}-{high_wanted} ({ports_wanted} ports)");
    let Some((low, high)) = text.and_then(parse_port_range) else {
        return unreadable("port_range", "net.ipv4.ip_local_port_range", recommended);
    };
    let ports = high - low + 1;
    let status = if ports < ports_wanted {
        Status::Warn
    } else {
        Status::Pass
    };
    with_fix(
        row(
            "port_range",
            format!("{low}-{high} ({ports} ports)"),
            recommended,
            status,
        ),
        format!("sysctl -w net.ipv4.ip_local_port_range=\"{low_wanted} {high_wanted}\""),
    )
}

/// The three values of `tcp_mem`, in pages: (min, pressure, max).
pub(super) fn parse_tcp_mem(text: &str) -> Option<(u64, u64, u64)> {
    let values: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match values[..] {
        [min, pressure, max] => Some((min, pressure, max)),
        _ => None,
    }
}

fn tcp_mem(text: Option<&str>, page_bytes: u64) -> Row {
    let recommended = format!("pressure >= {}", bytes_text(TCP_MEM_PRESSURE_BYTES_MIN));
    let Some((_, pressure, max)) = text.and_then(parse_tcp_mem) else {
        return unreadable("tcp_mem", "net.ipv4.tcp_mem", recommended);
    };
    let status = if pressure * page_bytes < TCP_MEM_PRESSURE_BYTES_MIN {
        Status::Warn
    } else {
        Status::Pass
    };
    let found = format!(
        "pressure {}, max {}",
        bytes_text(pressure * page_bytes),
        bytes_text(max * page_bytes)
    );
    // The kernel's own ratios around the pressure value: min 3/4 of it, max 3/2.
    let pages = TCP_MEM_PRESSURE_BYTES_MIN / page_bytes;
    with_fix(
        row("tcp_mem", found, recommended, status),
        format!(
            "sysctl -w net.ipv4.tcp_mem=\"{} {pages} {}\" (with that much RAM to spare)",
            pages / 4 * 3,
            pages / 2 * 3
        ),
    )
}

fn cpu_governor(governors: &[(usize, Option<String>)]) -> Row {
    let recommended = format!("{GOVERNOR_RECOMMENDED} on every CPU");
    let mut by_governor: Vec<(&str, Vec<usize>)> = Vec::new();
    for (cpu, governor) in governors {
        let Some(governor) = governor.as_deref() else {
            continue;
        };
        match by_governor.iter_mut().find(|(name, _)| *name == governor) {
            Some((_, cpus)) => cpus.push(*cpu),
            None => by_governor.push((governor, vec![*cpu])),
        }
    }
    if by_governor.is_empty() {
        return row(
            "cpu_governor",
            "no cpufreq in /sys (a VM, or no frequency driver)".into(),
            recommended,
            Status::NotApplicable,
        );
    }
    let found = by_governor
        .iter()
        .map(|(governor, cpus)| format!("{governor} on {}", format_cpu_list(cpus)))
        .collect::<Vec<_>>()
        .join(", ");
    let status = if by_governor
        .iter()
        .all(|(governor, _)| *governor == GOVERNOR_RECOMMENDED)
    {
        Status::Pass
    } else {
        Status::Warn
    };
    with_fix(
        row("cpu_governor", found, recommended, status),
        format!(
            "echo {GOVERNOR_RECOMMENDED} | tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
        ),
    )
}

/// Whether one name of `/proc/interrupts` is a NIC queue: an interface or NIC driver prefix,
/// or a virtio-net queue (`virtio2-input.0`, `virtio2-output.0`; virtio-rng's bare
/// `virtio4-input` has no queue number and is not one).
pub(super) fn is_nic_queue(name: &str) -> bool {
    if NIC_IRQ_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
    {
        return true;
    }
    let Some(rest) = name.strip_prefix("virtio") else {
        return false;
    };
    let Some((device, queue)) = rest.split_once('-') else {
        return false;
    };
    let Some((direction, number)) = queue.split_once('.') else {
        return false;
    };
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits(device) && matches!(direction, "input" | "output") && digits(number)
}

/// The numbered interrupts of `/proc/interrupts` that are NIC queues, with the matching name.
/// The header line gives the number of per-CPU count columns; what follows them is the chip,
/// the trigger and the device names.
pub fn nic_irqs(interrupts: &str) -> Vec<(u32, String)> {
    let mut lines = interrupts.lines();
    let cpus = lines
        .next()
        .map_or(0, |header| header.split_whitespace().count());
    lines
        .filter_map(|line| {
            let (label, rest) = line.split_once(':')?;
            let number = label.trim().parse::<u32>().ok()?;
            let name = rest
                .split_whitespace()
                .skip(cpus)
                .map(|token| token.trim_end_matches(','))
                .find(|token| is_nic_queue(token))?;
            Some((number, name.to_owned()))
        })
        .collect()
}

fn irq_affinity(irqs: Option<&[NicIrq]>, online: &[usize], cores: &[usize]) -> Row {
    let others: Vec<usize> = online
        .iter()
        .copied()
        .filter(|cpu| !cores.contains(cpu))
        .collect();
    let others_text = format_cpu_list(&others);
    let recommended = if others.is_empty() {
        "NIC IRQs off the broadcast cores".to_owned()
    } else {
        format!("NIC IRQs on {others_text} only")
    };
    let Some(irqs) = irqs else {
        return unreadable("irq_affinity", "/proc/interrupts", recommended);
    };
    if irqs.is_empty() {
        return row(
            "irq_affinity",
            "no NIC queue interrupts in /proc/interrupts".into(),
            recommended,
            Status::NotApplicable,
        );
    }
    if others.is_empty() {
        return row(
            "irq_affinity",
            format!(
                "{} NIC IRQs; every online CPU is a broadcast core (give --cores a subset)",
                irqs.len()
            ),
            recommended,
            Status::NotApplicable,
        );
    }
    let on_cores: Vec<&NicIrq> = irqs
        .iter()
        .filter(|irq| {
            irq.affinity
                .as_ref()
                .is_some_and(|cpus| cpus.iter().any(|cpu| cores.contains(cpu)))
        })
        .collect();
    if on_cores.is_empty() {
        return row(
            "irq_affinity",
            format!("{} NIC IRQs, none on the broadcast cores", irqs.len()),
            recommended,
            Status::Pass,
        );
    }
    let numbers = on_cores
        .iter()
        .map(|irq| irq.number.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let found = format!(
        "{} of {} NIC IRQs allowed on {}: {}",
        on_cores.len(),
        irqs.len(),
        format_cpu_list(cores),
        on_cores
            .iter()
            .map(|irq| format!("{} {}", irq.number, irq.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    with_fix(
        row("irq_affinity", found, recommended, Status::Warn),
        format!(
            "systemctl stop irqbalance; for irq in {numbers}; do echo {others_text} > \
             /proc/irq/$irq/smp_affinity_list; done"
        ),
    )
}

/// `[0, 1, 2, 5]` as `0-2,5`, the kernel's and `--cores`'s notation.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut index = 0;
    while index < sorted.len() {
        let first = sorted[index];
        let mut last = first;
        while index + 1 < sorted.len() && sorted[index + 1] == last + 1 {
            index += 1;
            last = sorted[index];
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
        index += 1;
    }
    parts.join(",")
}

/// Bytes in the largest binary unit that keeps the figure at 1 or more.
fn bytes_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/interrupts` of the project's 2-vCPU VM (virtio-net `virtio2`, virtio-rng `virtio4`).
    const VM_INTERRUPTS: &str = "           CPU0       CPU1
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
 33:          0          0 PCI-MSIX-0000:00:05.0   0-edge      virtio4-config
 34:        232          0 PCI-MSIX-0000:00:05.0   1-edge      virtio4-input
 37:          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config
 38:          0      15496 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:      14339          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
 41:       5251          0 PCI-MSIX-0000:00:04.0   1-edge      virtio3-rx
NMI:          0          0   Non-maskable interrupts
LOC:    2091793    2402810   Local timer interrupts
ERR:          0
";

    /// A bare-metal host with a Mellanox and an Intel NIC, four CPUs.
    const METAL_INTERRUPTS: &str = "     CPU0  CPU1  CPU2  CPU3
 120:  5  0  0  0  IR-PCI-MSI 1048576-edge  mlx5_comp0@pci:0000:02:00.0
 121:  0  5  0  0  IR-PCI-MSI 1048577-edge  mlx5_async0@pci:0000:02:00.0
 130:  0  0  7  0  IR-PCI-MSI 2097152-edge  i40e-ens1f0-TxRx-0
 140:  0  0  0  9  IR-IO-APIC 16-fasteoi  ehci_hcd:usb1, eth1
";

    fn host() -> Snapshot {
        Snapshot {
            nofile: Some((20_000, 20_000)),
            memlock: Some((8 << 20, 8 << 20)),
            io_uring_disabled: Some("0\n".into()),
            io_uring_ring: Ok(()),
            somaxconn: Some("4096\n".into()),
            port_range: Some("32768\t60999\n".into()),
            tcp_mem: Some("287898\t383867\t575796\n".into()),
            page_bytes: 4096,
            online_cpus: vec![0, 1],
            governors: vec![(0, None), (1, None)],
            nic_irqs: Some(vec![]),
        }
    }

    fn status_of(rows: &[Row], check: &str) -> Status {
        rows.iter().find(|row| row.check == check).unwrap().status
    }

    #[test]
    fn every_check_has_a_row_in_table_order() {
        let rows = all(&host(), &[1]);
        let names: Vec<&str> = rows.iter().map(|row| row.check).collect();
        assert_eq!(names, super::super::CHECK_NAMES);
        for row in &rows {
            assert_eq!(
                row.fix == "-",
                matches!(row.status, Status::Pass | Status::NotApplicable),
                "{row:?}"
            );
        }
    }

    #[test]
    fn interrupts_yield_only_nic_queues() {
        assert_eq!(
            nic_irqs(VM_INTERRUPTS),
            [
                (38, "virtio2-input.0".into()),
                (39, "virtio2-output.0".into())
            ]
        );
        assert_eq!(
            nic_irqs(METAL_INTERRUPTS),
            [
                (120, "mlx5_comp0@pci:0000:02:00.0".into()),
                (130, "i40e-ens1f0-TxRx-0".into()),
                (140, "eth1".into())
            ]
        );
        assert!(nic_irqs("").is_empty());
    }

    #[test]
    fn nic_irqs_on_broadcast_cores_warn_with_the_command_that_moves_them() {
        let irq = |number, affinity: &[usize]| NicIrq {
            number,
            name: format!("eth0-TxRx-{number}"),
            affinity: Some(affinity.to_vec()),
        };
        let online = [0, 1, 2, 3];
        let row = irq_affinity(
            Some(&[irq(30, &[0]), irq(31, &[0, 1])]),
            &online,
            &[1, 2, 3],
        );
        assert_eq!(row.status, Status::Warn);
        assert_eq!(row.recommended, "NIC IRQs on 0 only");
        assert_eq!(row.found, "1 of 2 NIC IRQs allowed on 1-3: 31 eth0-TxRx-31");
        assert_eq!(
            row.fix,
            "systemctl stop irqbalance; for irq in 31; do echo 0 > \
             /proc/irq/$irq/smp_affinity_list; done"
        );
        let row = irq_affinity(Some(&[irq(30, &[0])]), &online, &[1, 2, 3]);
        assert_eq!(row.status, Status::Pass);
        let everywhere = irq_affinity(Some(&[irq(30, &[0])]), &[0], &[0]);
        assert_eq!(everywhere.status, Status::NotApplicable);
        let none = irq_affinity(Some(&[]), &online, &[1]);
        assert_eq!(none.status, Status::NotApplicable);
    }

    #[test]
    fn limits_fail_below_what_start_up_needs_and_warn_below_the_recommendation() {
        assert_eq!(nofile(Some((1024, 4096))).status, Status::Fail);
        assert_eq!(nofile(Some((20_000, 20_000))).status, Status::Warn);
        let pass = nofile(Some((1024, 1_048_576)));
        assert_eq!((pass.status, pass.fix.as_str()), (Status::Pass, "-"));
        assert_eq!(memlock(Some((64 << 10, 64 << 10)), 3).status, Status::Fail);
        assert_eq!(memlock(Some((1 << 20, 1 << 20)), 3).status, Status::Warn);
        let pass = memlock(Some((8 << 20, 8 << 20)), 3);
        assert_eq!(pass.status, Status::Pass);
        assert_eq!(pass.found, "soft 8192 KiB, hard 8192 KiB");
        let unlimited = memlock(Some((rlimit::INFINITY, rlimit::INFINITY)), 3);
        assert_eq!(unlimited.status, Status::Pass);
        assert!(unlimited.found.contains("unlimited"), "{unlimited:?}");
        let big = memlock(Some((1 << 20, 1 << 20)), 100);
        assert!(big.fix.starts_with("LimitMEMLOCK=101M"), "{big:?}");
    }

    #[test]
    fn io_uring_fails_without_a_ring_and_names_the_cause() {
        assert_eq!(io_uring(Some("0\n"), &Ok(())).status, Status::Pass);
        assert_eq!(io_uring(None, &Ok(())).status, Status::Pass);
        let group_only = io_uring(Some("1\n"), &Ok(()));
        assert_eq!(group_only.status, Status::Warn);
        let disabled = io_uring(Some("2\n"), &Err("Operation not permitted".into()));
        assert_eq!(
            (disabled.status, disabled.fix.as_str()),
            (Status::Fail, "sysctl -w kernel.io_uring_disabled=0")
        );
        let seccomp = io_uring(Some("0\n"), &Err("Operation not permitted".into()));
        assert!(seccomp.fix.contains("seccomp"), "{seccomp:?}");
        let old = io_uring(None, &Err("Function not implemented".into()));
        assert!(old.fix.contains("5.8"), "{old:?}");
    }

    #[test]
    fn sysctls_parse_and_compare_with_sample_texts() {
        let host = host();
        let rows = all(&host, &[1]);
        assert_eq!(status_of(&rows, "somaxconn"), Status::Pass);
        assert_eq!(status_of(&rows, "port_range"), Status::Warn);
        assert_eq!(status_of(&rows, "tcp_mem"), Status::Pass);
        assert_eq!(somaxconn(Some("128\n")).status, Status::Warn);
        assert_eq!(
            somaxconn(Some("128\n")).fix,
            "sysctl -w net.core.somaxconn=4096"
        );
        assert_eq!(somaxconn(Some("garbage")).status, Status::NotApplicable);
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_port_range("9 3"), None);
        let wide = port_range(Some("10000 65535"));
        assert_eq!(wide.status, Status::Pass);
        assert_eq!(wide.found, "10000-65535 (55536 ports)");
        assert_eq!(parse_tcp_mem("1 2 3\n"), Some((1, 2, 3)));
        assert_eq!(parse_tcp_mem("1 2"), None);
        let small = tcp_mem(Some("18000\t24000\t36000\n"), 4096);
        assert_eq!(small.status, Status::Warn);
        assert_eq!(
            small.fix,
            "sysctl -w net.ipv4.tcp_mem=\"196608 262144 393216\" (with that much RAM to spare)"
        );
        let rows = all(&host, &[1]);
        let row = rows.iter().find(|row| row.check == "tcp_mem").unwrap();
        assert_eq!(row.found, "pressure 1.5 GiB, max 2.2 GiB");
    }

    #[test]
    fn governor_is_not_applicable_without_cpufreq_and_warns_unless_performance() {
        assert_eq!(
            cpu_governor(&[(0, None), (1, None)]).status,
            Status::NotApplicable
        );
        let mixed = cpu_governor(&[
            (0, Some("performance".into())),
            (1, Some("powersave".into())),
            (2, Some("powersave".into())),
        ]);
        assert_eq!(mixed.status, Status::Warn);
        assert_eq!(mixed.found, "performance on 0, powersave on 1-2");
        let fast = cpu_governor(&[(0, Some("performance".into()))]);
        assert_eq!(fast.status, Status::Pass);
    }

    #[test]
    fn cpu_lists_and_byte_sizes_format_compactly() {
        assert_eq!(format_cpu_list(&[5, 0, 1, 2, 7, 8]), "0-2,5,7-8");
        assert_eq!(format_cpu_list(&[]), "");
        assert_eq!(bytes_text(8 << 20), "8 MiB");
        assert_eq!(bytes_text(1536 << 20), "1.5 GiB");
        assert_eq!(bytes_text(100), "100 B");
    }
}

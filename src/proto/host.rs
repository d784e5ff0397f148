//! The host's own vocabulary that the server, `corecast tune` and the bench read alike: a CPU
//! list (`0,2,4-7`, as `--cores` and `--server-cpus` take it) and the kernel's local port range
//! (`net.ipv4.ip_local_port_range`).
//!
//! Owns the two text formats, as pure functions over strings. It never reads a file or
//! `/proc`: the caller reads, and decides what a bad value means for it.

/// Parses `0,2,4-7` into `[0, 2, 4, 5, 6, 7]`.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} in {text:?} is not a CPU id"))
        };
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (parse(first)?, parse(last)?);
                if first > last || last - first > 4_096 {
                    return Err(format!("CPU range {part:?} is empty or too large"));
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(parse(part)?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("{text:?} names no CPU"));
    }
    Ok(cpus)
}

/// The low and high ports of an `ip_local_port_range` text (`"32768\t60999\n"`), if it is
/// two numbers in order.
pub fn parse_port_range(text: &str) -> Option<(u64, u64)> {
    let mut bounds = text.split_whitespace().map(str::parse::<u64>);
    let low = bounds.next()?.ok()?;
    let high = bounds.next()?.ok()?;
    (low <= high).then_some((low, high))
}

/// How many local ports an `ip_local_port_range` text allows (`"32768\t60999\n"` gives
/// 28,232): the bench checks its subscribers against it.
pub fn local_port_count(range: &str) -> Option<u64> {
    parse_port_range(range).map(|(low, high)| high - low + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_port_count_counts_both_ends() {
        assert_eq!(local_port_count("32768\t60999\n"), Some(28_232));
        assert_eq!(local_port_count("60999 32768"), None);
        assert_eq!(local_port_count("garbage"), None);
    }
}

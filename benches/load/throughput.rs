//! `corecast bench --throughput-s T`: how many publishes a second a server, or a cluster of
//! nodes, takes through its control-plane API, and what each costs.
//!
//! `--publishers` plain threads (pinned round-robin to `--cpu`) each post to one of the `--api`
//! URLs (a comma-separated list: the nodes of a cluster, dealt round-robin to the threads) as
//! fast as their answers come, for `T` seconds: one message per `POST /v1/publish`, or
//! `--batch` messages per `POST /v1/publish/batch`. Nobody subscribes: this measures the
//! publish path (the API, the sequencer, in cluster mode the bridge and Redis), not fan-out.
//! The report gives messages and requests a second, each request's latency, the refusals by
//! status, and, for each process of `--pids` (corecast nodes, `redis-server`), its CPU time
//! per message published.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::probe::{self, Process};
use crate::BenchArgs;

/// What one publisher thread saw.
#[derive(Default)]
struct Tally {
    /// Each answered request's round trip, in microseconds.
    latencies_us: Vec<u32>,
    /// Messages answered 200.
    published: u64,
    /// Requests answered otherwise, by status (0: no answer).
    refused: Vec<(u16, u64)>,
}

impl Tally {
    fn refuse(&mut self, status: u16) {
        match self.refused.iter_mut().find(|(seen, _)| *seen == status) {
            Some((_, count)) => *count += 1,
            None => self.refused.push((status, 1)),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.published += other.published;
        for (status, count) in other.refused {
            for _ in 0..count {
                self.refuse(status);
            }
        }
    }
}

/// The body of one request: `batch` messages on `channel`, each `data` of about
/// `payload_bytes`.
fn body(channel: &str, batch: usize, payload_bytes: usize) -> String {
    let pad = "x".repeat(payload_bytes.saturating_sub(12));
    let message = format!(r#"{{"channel":{channel:?},"data":{{"pad":"{pad}"}}}}"#);
    if batch == 1 {
        return message;
    }
    let mut body = String::from(r#"{"messages":["#);
    for at in 0..batch {
        if at > 0 {
            body.push(',');
        }
        body.push_str(&message);
    }
    body.push_str("]}");
    body
}

/// One publisher thread: posts to `url` until `until`.
fn publish_until(url: &str, body: &str, batch: usize, until: Instant) -> Tally {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut tally = Tally::default();
    while Instant::now() < until {
        let start = Instant::now();
        let sent = agent
            .post(url)
            .header("content-type", "application/json")
            .send(body);
        let status = match sent {
            Ok(mut response) => {
                // Read to the end, so the connection is reused.
                let _ = response.body_mut().read_to_string();
                response.status().as_u16()
            }
            Err(_) => 0,
        };
        let took = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
        tally.latencies_us.push(took);
        if status == 200 {
            tally.published += batch as u64;
        } else {
            tally.refuse(status);
        }
    }
    tally
}

/// The `q` quantile of sorted `values`.
fn quantile(values: &[u32], q: f64) -> u32 {
    if values.is_empty() {
        return 0;
    }
    let at = ((values.len() - 1) as f64 * q).round() as usize;
    values[at]
}

/// Runs the throughput mode and prints its report.
pub fn main(args: &BenchArgs, seconds: u64) -> Result<String, String> {
    let urls: Vec<String> = args
        .api
        .split(',')
        .map(|api| {
            let api = api.trim().trim_end_matches('/');
            if args.batch > 1 {
                format!("{api}/v1/publish/batch")
            } else {
                format!("{api}/v1/publish")
            }
        })
        .collect();
    let pids: Vec<u32> = args.pids.clone().unwrap_or_default();
    let cpu_before: Vec<u64> = pids
        .iter()
        .map(|pid| probe::cpu_time_ns(Process::Pid(*pid)))
        .collect::<Result<_, _>>()?;
    let body = body(&args.channel, args.batch, args.payload_bytes);
    let cpus = args
        .cpu
        .as_ref()
        .map(|list| list.cpus().to_vec())
        .unwrap_or_default();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..args.publishers)
        .map(|index| {
            let url = urls[index % urls.len()].clone();
            let body = body.clone();
            let batch = args.batch;
            let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
            std::thread::Builder::new()
                .name(format!("bench-throughput-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        super::pin_current_thread("cpu", cpu)?;
                    }
                    Ok::<_, String>(publish_until(&url, &body, batch, until))
                })
                .map_err(|err| format!("cannot start a publisher thread: {err}"))
        })
        .collect::<Result<_, _>>()?;
    let mut tally = Tally::default();
    for thread in threads {
        let done = thread
            .join()
            .map_err(|_| "a publisher thread panicked".to_owned())??;
        tally.merge(done);
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let cpu_after: Vec<u64> = pids
        .iter()
        .map(|pid| probe::cpu_time_ns(Process::Pid(*pid)))
        .collect::<Result<_, _>>()?;
    tally.latencies_us.sort_unstable();
    let requests = tally.latencies_us.len() as u64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "throughput: {} publishers, {} per request, {} API(s), {elapsed_s:.1} s",
        args.publishers,
        args.batch,
        urls.len()
    );
    let _ = writeln!(
        out,
        "messages published/s: {:.0}   requests/s: {:.0}",
        tally.published as f64 / elapsed_s,
        requests as f64 / elapsed_s
    );
    let _ = writeln!(
        out,
        "request latency us: p50 {}  p99 {}  max {}",
        quantile(&tally.latencies_us, 0.5),
        quantile(&tally.latencies_us, 0.99),
        tally.latencies_us.last().copied().unwrap_or(0)
    );
    if !tally.refused.is_empty() {
        tally.refused.sort_unstable();
        let refused: Vec<String> = tally
            .refused
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .collect();
        let _ = writeln!(
            out,
            "requests refused by status (0: no answer): {}",
            refused.join(", ")
        );
    }
    for ((pid, before), after) in pids.iter().zip(&cpu_before).zip(&cpu_after) {
        let per_message_us = if tally.published == 0 {
            0.0
        } else {
            (after - before) as f64 / 1_000.0 / tally.published as f64
        };
        let _ = writeln!(
            out,
            "pid {pid}: {:.2} CPU-s, {per_message_us:.2} us CPU per message published",
            (after - before) as f64 / 1e9
        );
    }
    if tally.published == 0 {
        return Err(format!("nothing was published\n{out}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_body_holds_every_message_and_parses() {
        let one: serde_json::Value = serde_json::from_str(&body("a.b", 1, 64)).unwrap();
        assert_eq!(one["channel"], "a.b");
        let batch: serde_json::Value = serde_json::from_str(&body("a.b", 3, 64)).unwrap();
        assert_eq!(batch["messages"].as_array().unwrap().len(), 3);
        assert_eq!(quantile(&[1, 2, 3, 4], 0.5), 3);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}

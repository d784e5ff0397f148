//! The publisher: one plain thread that posts the bench's events to the control-plane API at
//! fixed intervals.
//!
//! Owns the HTTP side of the run, the event body format, and the handle (`Publisher`) through
//! which the run drives any target's publishing, this thread's or the floor's (see `floor`).
//! It never runs on the receive thread, because a blocking HTTP round trip there would stall
//! every subscriber's reads and show up as latency; it is pinned to the bench's CPU like the
//! receive thread, so that it never takes time from the server it measures. It takes `t_us`
//! right before each request is sent, so the measured latency starts when the server can first
//! see the event. Ticks are scheduled from the phase's start (tick k at start + k * interval),
//! so a slow request delays one event, not all later ones.

use std::fmt::Write as _;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, Instant};

/// Longest one publish request may take, in milliseconds, before the run fails.
const PUBLISH_TIMEOUT_MS: u64 = 5_000;

/// Largest publish response the publisher reads, in bytes; an error body is quoted in the
/// failure message up to this size.
const RESPONSE_BYTES_MAX: u64 = 4_096;

/// Commands queued to the publisher at once: the receive thread sends one per phase and waits
/// for it.
const COMMANDS_QUEUED_MAX: usize = 1;

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `{api}/v1/publish`.
    pub url: String,
    /// The channel name as a JSON string, quotes included.
    pub channel_json: String,
    /// Size of the JSON `data` value, in bytes.
    pub payload_bytes: usize,
    /// Time between two publishes of a phase.
    pub interval: Duration,
}

/// A phase for the publisher: events `first_seq..first_seq + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    pub first_seq: u64,
    pub count: u64,
}

/// How a phase ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every event of the phase was handed to the server.
    Published(Published),
    /// A publish failed; the publisher has stopped. Carries what to tell the operator.
    Failed(String),
}

/// A phase every event of which was handed to the server: accepted by its API (this module),
/// or written to every subscriber's socket (the floor, see `floor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub phase: Phase,
    /// CPU time the publishing thread spent on the phase, in nanoseconds, when that thread is
    /// the server (the floor); `None` here, where it is part of the bench.
    pub cpu_ns: Option<u64>,
}

/// The receive thread's handle on whatever publishes the events: the publisher thread here,
/// or the floor server's thread. Both take one phase at a time on `phases` and answer each
/// on `outcomes`; both end once `phases` is dropped.
pub struct Publisher {
    pub phases: SyncSender<Phase>,
    pub outcomes: Receiver<Outcome>,
    /// Dropped after `phases`, since fields drop in declaration order: it wakes a thread that
    /// may be blocked somewhere `phases` cannot reach (the floor in `accept`).
    pub _wake: Option<WakeAccept>,
}

/// Connects once to its address when dropped, to wake a thread blocked in `accept` there.
pub struct WakeAccept(pub std::net::SocketAddr);

impl Drop for WakeAccept {
    fn drop(&mut self) {
        // Refused once the thread has stopped listening: then it did not need waking.
        let _ = std::net::TcpStream::connect(self.0);
    }
}

/// Starts the publisher thread pinned to `cpu` (the bench's `--cpu`; unpinned when `None`),
/// and returns once it is pinned. It ends after its current phase once `phases` is dropped, or
/// with the process: it is never joined, so that a request stuck on a dead server cannot hold
/// the report back.
pub fn spawn(plan: Plan, cpu: Option<usize>) -> Result<Publisher, String> {
    let (phases, phase_source) = mpsc::sync_channel(COMMANDS_QUEUED_MAX);
    let (outcome_sink, outcomes) = mpsc::sync_channel(COMMANDS_QUEUED_MAX);
    let (pinned_sink, pinned) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("bench-publish".into())
        .spawn(move || {
            let pin = cpu.map_or(Ok(()), |cpu| super::pin_current_thread("cpu", cpu));
            let pinned = pin.is_ok();
            if pinned_sink.send(pin).is_ok() && pinned {
                run(&plan, &phase_source, &outcome_sink);
            }
        })
        .map_err(|error| format!("cannot start the publisher thread: {error}"))?;
    pinned
        .recv()
        .map_err(|_| "the publisher thread ended before it started".to_string())??;
    Ok(Publisher {
        phases,
        outcomes,
        _wake: None,
    })
}

fn run(plan: &Plan, phases: &Receiver<Phase>, outcomes: &SyncSender<Outcome>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(PUBLISH_TIMEOUT_MS)))
        .build()
        .into();
    let mut body = String::new();
    for phase in phases {
        let outcome = publish_phase(plan, &agent, &mut body, phase);
        let failed = matches!(outcome, Outcome::Failed(_));
        if outcomes.send(outcome).is_err() || failed {
            return;
        }
    }
}

fn publish_phase(plan: &Plan, agent: &ureq::Agent, body: &mut String, phase: Phase) -> Outcome {
    let start = Instant::now();
    for index in 0..phase.count {
        sleep_until_tick(start, plan.interval, index);
        let seq = phase.first_seq + index;
        let sent_us = super::unix_us();
        write_body(body, &plan.channel_json, seq, sent_us, plan.payload_bytes);
        let response = agent
            .post(&plan.url)
            .header("content-type", "application/json")
            .send(body.as_str());
        let mut response = match response {
            Ok(response) => response,
            Err(error) => {
                return Outcome::Failed(format!("publish seq {seq} to {}: {error}", plan.url));
            }
        };
        // Read the answer to the end so the agent can reuse the connection.
        let answer = response
            .body_mut()
            .with_config()
            .limit(RESPONSE_BYTES_MAX)
            .read_to_string()
            .unwrap_or_default();
        if response.status() != 200 {
            return Outcome::Failed(format!(
                "publish seq {seq} to {}: HTTP {}: {answer}",
                plan.url,
                response.status()
            ));
        }
    }
    Outcome::Published(Published {
        phase,
        cpu_ns: None,
    })
}

/// Sleeps until tick `index` of a phase started at `start`: start + index * interval. Shared by
/// every target's publishing, so that all of them follow the same schedule.
pub fn sleep_until_tick(start: Instant, interval: Duration, index: u64) {
    let tick = start + interval * u32::try_from(index).unwrap_or(u32::MAX);
    std::thread::sleep(tick.saturating_duration_since(Instant::now()));
}

/// Writes the publish body for event `seq` into `body`: the channel, and `data` as
/// `write_data` builds it.
pub fn write_body(
    body: &mut String,
    channel_json: &str,
    seq: u64,
    sent_us: u64,
    payload_bytes: usize,
) {
    body.clear();
    body.push_str(r#"{"channel":"#);
    body.push_str(channel_json);
    body.push_str(r#","data":"#);
    write_data(body, seq, sent_us, payload_bytes);
    body.push('}');
}

/// Appends event `seq`'s `data` value to `out`, `{"seq":..,"t_us":..,"pad":"xx.."}`, padded to
/// `payload_bytes` bytes (or with an empty `pad` when the fields alone are longer). The HTTP
/// publisher and the floor both build `data` here, so that both targets carry the same bytes.
pub fn write_data(out: &mut String, seq: u64, sent_us: u64, payload_bytes: usize) {
    let start = out.len();
    // Writing to a String cannot fail.
    let _ = write!(out, r#"{{"seq":{seq},"t_us":{sent_us},"pad":""#);
    let closing = r#""}"#;
    let unpadded = out.len() - start + closing.len();
    out.extend(std::iter::repeat_n(
        'x',
        payload_bytes.saturating_sub(unpadded),
    ));
    out.push_str(closing);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_pads_data_to_the_payload_size() {
        let mut body = String::new();
        write_body(
            &mut body,
            r#""bench.fanout""#,
            7,
            1_700_000_000_000_000,
            100,
        );
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["channel"], "bench.fanout");
        assert_eq!(value["data"]["seq"], 7);
        assert_eq!(value["data"]["t_us"], 1_700_000_000_000_000u64);
        assert_eq!(value["data"].to_string().len(), 100);
    }

    #[test]
    fn body_with_a_tiny_payload_has_an_empty_pad() {
        let mut body = String::new();
        write_body(&mut body, r#""c""#, 1, 2, 0);
        assert_eq!(
            body,
            r#"{"channel":"c","data":{"seq":1,"t_us":2,"pad":""}}"#
        );
    }
}

//! `corecast subscribe` and `corecast publish`: the client library and the publish API from a
//! shell.
//!
//! Owns the two commands' arguments, their validation (each error names its argument), and the
//! JSON lines they print. `subscribe` prints one line per event on stdout: deliveries exactly
//! as the server's `message` frame, and `connected`, `subscribed`, `gap`, `error` and
//! `disconnected` notices in the same `{"type":..}` shape. It holds no protocol logic: the
//! connection is a [`Client`], the publish is one `POST /v1/publish`. Secrets (`--token`,
//! `--key`) can come from the environment instead of the command line, where any user of the
//! host could read them in the process list.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::wire::publish_url;
use crate::{Client, ClientConfig, ClientError, Event};
use corecast_proto::channel::{is_pattern, validate_channel, validate_pattern, validate_user};
use corecast_proto::tls;
use corecast_proto::{Position, Priority, Since};

/// How long `subscribe` waits on the event channel between looks at stdout; any value works,
/// this only bounds how late a closed stdout is noticed.
const EVENT_WAIT_MS: u64 = 1_000;

/// Longest a `publish` waits for the server's reply, in ms.
const PUBLISH_TIMEOUT_MS: u64 = 10_000;

/// Exit status for arguments that are refused before anything is sent.
const EXIT_USAGE: u8 = 2;

/// `corecast subscribe`: print every event of the subscriptions as JSON lines.
#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// Channels or patterns (`*` one token, `>` one or more trailing tokens).
    #[arg(required = true, value_name = "PATTERN")]
    patterns: Vec<String>,
    /// The server's WebSocket endpoint, `ws://` or `wss://` (TLS).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// A connection JWT, for a server with `auth = "jwt"`: sent as `Authorization: Bearer`.
    /// Better set through CORECAST_TOKEN, which other users cannot read in the process list.
    #[arg(
        long,
        value_name = "JWT",
        env = "CORECAST_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// For wss://: a PEM file of the CA certificates to trust (a private CA, or a
    /// self-signed server's certificate) instead of the built-in Mozilla roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Exit 0 after this many messages (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Resume after a position of this epoch (with --since-seq or --since-offset).
    #[arg(long, value_name = "E", requires = "position")]
    since_epoch: Option<String>,
    /// Resume after this node-wide seq (any pattern).
    #[arg(long, value_name = "S", requires = "since_epoch", group = "position")]
    since_seq: Option<u64>,
    /// Resume after this offset (exact channels only).
    #[arg(long, value_name = "N", requires = "since_epoch", group = "position")]
    since_offset: Option<u64>,
    /// Interval of the app-level ping, ms.
    #[arg(long, default_value_t = 10_000)]
    ping_interval_ms: u64,
}

/// `corecast publish`: publish one event through the control-plane API, to a channel or (with
/// `--user`) to every connection of one user.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "corecast publish [OPTIONS] <CHANNEL> <JSON>\n       \
                            corecast publish [OPTIONS] --user <ID> <JSON>"
)]
pub struct PublishArgs {
    /// The channel (no wildcards); left out with --user.
    #[arg(value_name = "CHANNEL")]
    channel: String,
    /// The event, any JSON value (quote it for the shell: '{"n":1}').
    #[arg(value_name = "JSON", required_unless_present = "user")]
    json: Option<String>,
    /// Publish to this user's `$user` stream (every connection of the user, on every shard
    /// and node) instead of a channel.
    #[arg(long, value_name = "ID")]
    user: Option<String>,
    /// The server's control-plane API, `http://` or `https://`.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    api: String,
    /// A control-plane API key (`[[api_keys]]`), sent as `Authorization: Bearer`. Better set
    /// through CORECAST_KEY, which other users cannot read in the process list.
    #[arg(long, value_name = "KEY", env = "CORECAST_KEY", hide_env_values = true)]
    key: Option<String>,
    /// For https://: a PEM file of the CA certificates to trust (a private CA, or a
    /// self-signed server's certificate) instead of the built-in Mozilla roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Delivery priority (the server's default is normal).
    #[arg(long, value_enum)]
    priority: Option<Priority>,
}

impl SubscribeArgs {
    /// The `since` every pattern starts from, checked against the patterns.
    fn since(&self) -> Result<Option<Since>, String> {
        let Some(epoch) = &self.since_epoch else {
            return Ok(None);
        };
        match (self.since_seq, self.since_offset) {
            (Some(seq), None) => Ok(Some(Since {
                epoch: epoch.as_str().into(),
                position: Position::Seq(seq),
            })),
            (None, Some(offset)) => {
                if let Some(pattern) = self.patterns.iter().find(|p| is_pattern(p)) {
                    return Err(format!(
                        "--since-offset applies to exact channels only; {pattern:?} is a \
                         pattern (use --since-seq)"
                    ));
                }
                Ok(Some(Since {
                    epoch: epoch.as_str().into(),
                    position: Position::Offset(offset),
                }))
            }
            _ => Err("--since-epoch needs exactly one of --since-seq or --since-offset".into()),
        }
    }
}

/// Runs `corecast subscribe`.
pub fn subscribe_main(args: SubscribeArgs) -> ExitCode {
    for pattern in &args.patterns {
        if let Err(err) = validate_pattern(pattern) {
            eprintln!("corecast subscribe: PATTERN {pattern:?}: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let since = match args.since() {
        Ok(since) => since,
        Err(err) => {
            eprintln!("corecast subscribe: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut config = ClientConfig::new(&args.url);
    config.ping_interval_ms = args.ping_interval_ms;
    config.token = args.token;
    config.ca_file = args.ca;
    if let Err(err) = config.validate() {
        eprintln!("corecast subscribe: --url/--ping-interval-ms: {err}");
        return ExitCode::from(EXIT_USAGE);
    }
    let client = match Client::connect(config) {
        Ok(client) => client,
        Err(err @ ClientError::Config(_)) => {
            eprintln!("corecast subscribe: --url/--ca: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(err) => {
            eprintln!("corecast subscribe: {}: {err}", args.url);
            return ExitCode::FAILURE;
        }
    };
    for pattern in &args.patterns {
        let subscribed = match &since {
            Some(since) => client.subscribe_since(pattern, since.clone()),
            None => client.subscribe(pattern),
        };
        if let Err(err) = subscribed {
            eprintln!("corecast subscribe: {err}");
            return ExitCode::FAILURE;
        }
    }
    let mut messages = 0;
    let mut stdout = std::io::stdout().lock();
    loop {
        if args.count.is_some_and(|count| messages >= count) {
            return ExitCode::SUCCESS;
        }
        let Some(event) = client.next_event(Duration::from_millis(EVENT_WAIT_MS)) else {
            continue;
        };
        if matches!(event, Event::Message(_)) {
            messages += 1;
        }
        let line = event_line(&event);
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // Whoever read our output has gone (a closed pipe): nothing left to do.
            return ExitCode::SUCCESS;
        }
        if let Event::Closed { code, reason } = &event {
            eprintln!(
                "corecast subscribe: the server closed the connection for good: {code} {reason}"
            );
            return ExitCode::FAILURE;
        }
    }
}

/// One event as a JSON line: a delivery exactly as the server's frame (with `data` byte for
/// byte), every other event as a `{"type":..}` object of its fields.
pub fn event_line(event: &Event) -> String {
    match event {
        Event::Message(message) => {
            let seq = message
                .seq
                .map(|seq| format!(r#","seq":{seq}"#))
                .unwrap_or_default();
            format!(
                r#"{{"type":"message","channel":{},"offset":{}{seq},"ts_ms":{},"data":{}}}"#,
                Value::from(message.channel.as_str()),
                message.offset,
                message.ts_ms,
                message.data.get()
            )
        }
        Event::Connected {
            conn_id,
            user,
            epoch,
            reconnects,
        } => notice(
            "connected",
            json!({"conn_id": conn_id, "user": user, "epoch": epoch, "reconnects": reconnects}),
        ),
        Event::Subscribed {
            pattern,
            server,
            epoch,
            seq,
            recovered,
            reason,
        } => notice(
            "subscribed",
            json!({"channel": pattern, "server": server.then_some(true), "epoch": epoch,
                   "seq": seq, "recovered": recovered, "reason": reason}),
        ),
        Event::Unsubscribed { pattern, server } => notice(
            "unsubscribed",
            json!({"channel": pattern, "server": server.then_some(true)}),
        ),
        Event::Presence { id, presence } => notice(
            "presence",
            json!({"id": id, "channel": presence.channel, "connections": presence.connections,
                   "users": presence.users, "members": members(&presence.members),
                   "truncated": presence.truncated.then_some(true)}),
        ),
        Event::PresenceDiff {
            channel,
            joined,
            left,
        } => notice(
            "presence_diff",
            json!({"channel": channel, "joined": members(joined), "left": members(left)}),
        ),
        Event::Gap { channel, from, to } => {
            notice("gap", json!({"channel": channel, "from": from, "to": to}))
        }
        Event::Published {
            id,
            channel,
            offset,
        } => notice(
            "published",
            json!({"id": id, "channel": channel, "offset": offset}),
        ),
        Event::Acked {
            id,
            channel,
            offset,
        } => notice(
            "acked",
            json!({"id": id, "channel": channel, "offset": offset}),
        ),
        Event::Error { id, code, message } => {
            notice("error", json!({"id": id, "code": code, "message": message}))
        }
        Event::Disconnected { reason, retry_in } => notice(
            "disconnected",
            json!({"reason": reason,
                   "retry_in_ms": u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX)}),
        ),
        Event::Closed { code, reason } => notice("closed", json!({"code": code, "reason": reason})),
    }
}

/// Presence members as the server sent them (`info` re-read from its raw JSON).
fn members(members: &[crate::Member]) -> Value {
    members
        .iter()
        .map(|member| {
            let info = member
                .info
                .as_ref()
                .and_then(|info| serde_json::from_str::<Value>(info.get()).ok());
            let mut fields = json!({"conn_id": member.conn_id});
            if let Some(user) = &member.user {
                fields["user"] = user.as_str().into();
            }
            if let Some(info) = info {
                fields["info"] = info;
            }
            fields
        })
        .collect()
}

/// `{"type":kind,...}` with `fields` after `type` (as in the server's frames) and without its
/// `null` ones: absent stays absent, as on the wire.
fn notice(kind: &str, fields: Value) -> String {
    let mut line = format!(r#"{{"type":{}"#, Value::from(kind));
    if let Value::Object(fields) = fields {
        for (key, value) in fields.iter().filter(|(_, value)| !value.is_null()) {
            line.push_str(&format!(",{}:{value}", Value::from(key.as_str())));
        }
    }
    line.push('}');
    line
}

/// Where `corecast publish` sends its event.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Channel(&'a str),
    User(&'a str),
}

impl PublishArgs {
    /// The target and the JSON text: with `--user` the one positional argument is the JSON.
    fn target(&self) -> Result<(Target<'_>, &str), String> {
        match (&self.user, &self.json) {
            (Some(_), Some(_)) => Err(format!(
                "--user publishes to a user, not to a channel: give the JSON alone, without \
                 CHANNEL {:?}",
                self.channel
            )),
            (Some(user), None) => {
                validate_user(user).map_err(|err| format!("--user: {err}"))?;
                Ok((Target::User(user), &self.channel))
            }
            (None, Some(json)) => {
                validate_channel(&self.channel)
                    .map_err(|err| format!("CHANNEL {:?}: {err}", self.channel))?;
                Ok((Target::Channel(&self.channel), json))
            }
            (None, None) => Err("give CHANNEL and JSON, or --user ID and JSON".into()),
        }
    }
}

/// Runs `corecast publish`.
pub fn publish_main(args: PublishArgs) -> ExitCode {
    let (target, json) = match args.target() {
        Ok(target) => target,
        Err(err) => {
            eprintln!("corecast publish: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let data: Box<RawValue> = match serde_json::from_str(json) {
        Ok(data) => data,
        Err(err) => {
            eprintln!("corecast publish: JSON {json:?} is not valid JSON: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let url = match publish_url(&args.api) {
        Ok(url) => url,
        Err(err) => {
            eprintln!("corecast publish: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let priority = args
        .priority
        .map(|priority| format!(r#","priority":"{}""#, priority.name()))
        .unwrap_or_default();
    let (field, name) = match target {
        Target::Channel(channel) => ("channel", channel),
        Target::User(user) => ("user", user),
    };
    let body = format!(
        r#"{{"{field}":{},"data":{}{priority}}}"#,
        Value::from(name),
        data.get()
    );
    let tls = match ureq_tls(args.ca.as_deref()) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("corecast publish: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(PUBLISH_TIMEOUT_MS)))
        .tls_config(tls)
        .build()
        .new_agent();
    let mut request = agent.post(&url).header("content-type", "application/json");
    if let Some(key) = &args.key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let reply = request.send(body.as_str());
    let mut response = match reply {
        Ok(response) => response,
        Err(err) => {
            eprintln!("corecast publish: POST {url}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let status = response.status().as_u16();
    let text = match response.body_mut().read_to_string() {
        Ok(text) => text,
        Err(err) => {
            eprintln!("corecast publish: POST {url}: reading the reply: {err}");
            return ExitCode::FAILURE;
        }
    };
    if status == 200 {
        println!("{}", text.trim_end());
        ExitCode::SUCCESS
    } else {
        eprintln!("corecast publish: POST {url}: {status} {}", text.trim_end());
        ExitCode::FAILURE
    }
}

/// ureq's TLS settings for an `https://` API: rustls, trusting the certificates of `ca` (a
/// PEM file) when given, else the built-in Mozilla roots. The error names `--ca` and the file.
pub fn ureq_tls(ca: Option<&Path>) -> Result<ureq::tls::TlsConfig, String> {
    let builder = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
    let Some(path) = ca else {
        return Ok(builder.build());
    };
    let certificates = std::fs::read(path)
        .map_err(|err| err.to_string())
        .and_then(|pem| tls::certificates(&pem))
        .map_err(|err| format!("--ca {}: {err}", path.display()))?;
    let certificates = certificates
        .iter()
        .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
        .collect();
    Ok(builder
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certificates)))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;

    #[test]
    fn a_message_line_is_the_servers_frame() {
        let frame = r#"{"type":"message","channel":"a.b","offset":7,"seq":12,"ts_ms":5,"data":{"z":1,"a":2}}"#;
        let Ok(crate::event::Frame::Event(event)) = crate::event::parse_frame(frame.as_bytes())
        else {
            panic!("a message")
        };
        assert_eq!(event_line(&event), frame);
        let without_seq = Event::Message(Message {
            channel: "c".into(),
            offset: 1,
            seq: None,
            ts_ms: 2,
            data: RawValue::from_string("[1]".into()).unwrap(),
        });
        assert_eq!(
            event_line(&without_seq),
            r#"{"type":"message","channel":"c","offset":1,"ts_ms":2,"data":[1]}"#
        );
    }

    #[test]
    fn notices_leave_absent_fields_out() {
        let subscribed = Event::Subscribed {
            pattern: "a.*".into(),
            server: false,
            epoch: Some("e".into()),
            seq: Some(3),
            recovered: Some(false),
            reason: Some("epoch_changed".into()),
        };
        let line = event_line(&subscribed);
        assert!(line.starts_with(r#"{"type":"subscribed","#), "{line}");
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"type": "subscribed", "channel": "a.*", "epoch": "e", "seq": 3,
                   "recovered": false, "reason": "epoch_changed"})
        );
        let plain = Event::Subscribed {
            pattern: "a.*".into(),
            server: false,
            epoch: None,
            seq: None,
            recovered: None,
            reason: None,
        };
        assert_eq!(
            event_line(&plain),
            r#"{"type":"subscribed","channel":"a.*"}"#
        );
    }

    #[test]
    fn user_notices_carry_the_user_and_server_side_marks() {
        let connected = Event::Connected {
            conn_id: "0-1".into(),
            user: Some("ada".into()),
            epoch: None,
            reconnects: 0,
        };
        assert_eq!(
            event_line(&connected),
            r#"{"type":"connected","conn_id":"0-1","reconnects":0,"user":"ada"}"#
        );
        let server = Event::Unsubscribed {
            pattern: "q.*".into(),
            server: true,
        };
        assert_eq!(
            event_line(&server),
            r#"{"type":"unsubscribed","channel":"q.*","server":true}"#
        );
        let closed = Event::Closed {
            code: 4010,
            reason: "bye".into(),
        };
        assert_eq!(
            event_line(&closed),
            r#"{"type":"closed","code":4010,"reason":"bye"}"#
        );
        let Ok(crate::event::Frame::Event(diff)) = crate::event::parse_frame(
            br#"{"type":"presence_diff","channel":"r","joined":[{"user":"ada","conn_id":"0-1","info":{"n":1}}],"left":[{"conn_id":"1-2"}]}"#,
        ) else {
            panic!("presence_diff")
        };
        assert_eq!(
            serde_json::from_str::<Value>(&event_line(&diff)).unwrap(),
            json!({"type": "presence_diff", "channel": "r",
                   "joined": [{"user": "ada", "conn_id": "0-1", "info": {"n": 1}}],
                   "left": [{"conn_id": "1-2"}]})
        );
    }

    #[test]
    fn publish_takes_a_channel_or_a_user() {
        let args = |channel: &str, json: Option<&str>, user: Option<&str>| PublishArgs {
            channel: channel.into(),
            json: json.map(str::to_string),
            user: user.map(str::to_string),
            api: "http://127.0.0.1:1".into(),
            key: None,
            ca: None,
            priority: None,
        };
        let to_channel = args("a.b", Some("1"), None);
        assert_eq!(to_channel.target(), Ok((Target::Channel("a.b"), "1")));
        let to_user = args(r#"{"n":1}"#, None, Some("ada"));
        assert_eq!(to_user.target(), Ok((Target::User("ada"), r#"{"n":1}"#)));
        assert_eq!(
            args("a.b", Some("1"), Some("ada")).target().unwrap_err(),
            r#"--user publishes to a user, not to a channel: give the JSON alone, without CHANNEL "a.b""#
        );
        assert!(args("1", None, Some(""))
            .target()
            .unwrap_err()
            .starts_with("--user: user \"\" is 0 bytes"));
        assert!(args("a.*", Some("1"), None)
            .target()
            .unwrap_err()
            .starts_with(r#"CHANNEL "a.*": "#));
    }

    #[test]
    fn since_arguments_are_checked_against_the_patterns() {
        let args = |patterns: &[&str], seq, offset| SubscribeArgs {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            url: "ws://127.0.0.1:1/ws".into(),
            token: None,
            ca: None,
            count: None,
            since_epoch: Some("e".into()),
            since_seq: seq,
            since_offset: offset,
            ping_interval_ms: 10_000,
        };
        assert_eq!(
            args(&["a.*"], Some(4), None).since(),
            Ok(Some(Since {
                epoch: "e".into(),
                position: Position::Seq(4)
            }))
        );
        assert_eq!(
            args(&["a.b"], None, Some(2)).since(),
            Ok(Some(Since {
                epoch: "e".into(),
                position: Position::Offset(2)
            }))
        );
        assert_eq!(
            args(&["a.b", "a.*"], None, Some(2)).since().unwrap_err(),
            r#"--since-offset applies to exact channels only; "a.*" is a pattern (use --since-seq)"#
        );
        assert!(args(&["a.b"], None, None).since().is_err());
    }
}

//! Pins down the client side of auth and TLS against the real binary: `corecast subscribe
//! --token` (and `CORECAST_TOKEN`) is admitted by a server with `auth = "jwt"` and a bad token
//! is refused with the server's 401; `corecast publish --key` (and `CORECAST_KEY`) is accepted
//! by a server with `[[api_keys]]` and a missing or wrong key is refused with 401; and over
//! `wss://`/`https://` with a self-signed certificate trusted through `--ca`, the Rust client,
//! `corecast subscribe`, `corecast publish` and `corecast bench` all get every message, while
//! the same commands without `--ca` fail naming the address and the certificate error. Every
//! command runs with a bound and every test under the watchdog.

mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{watchdog, Server, STEP};
use corecast_client::{Client, ClientConfig, Event};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SECRET: &str = "client-secure-secret";
const KEY: &str = "operator-key-0123456789";

/// A token signed with `secret`, valid for a minute, granting every channel.
fn token(secret: &str) -> String {
    let claims = json!({
        "sub": "ada", "exp": common::now_ms() / 1000 + 60, "channels": [">"],
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token encodes")
}

/// Runs `corecast ARGS` with `env` to completion, with a bound.
async fn corecast(args: &[&str], env: &[(&str, &str)]) -> Output {
    let run = Command::new(env!("CARGO_BIN_EXE_corecast"))
        .args(args)
        .env_remove("CORECAST_TOKEN")
        .env_remove("CORECAST_KEY")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("expected corecast {args:?} to finish"))
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `corecast subscribe ARGS` with `env`, its stdout read line by line.
struct Subscriber {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Subscriber {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Subscriber {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corecast"))
            .arg("subscribe")
            .args(args)
            .env_remove("CORECAST_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Subscriber { child, lines }
    }

    /// The next line, past those about the connection's own `$user` (a token's `sub` gives it
    /// one), which these tests of channels do not follow.
    async fn next(&mut self) -> Value {
        loop {
            let line = tokio::time::timeout(STEP, self.lines.next_line())
                .await
                .expect("a line from corecast subscribe")
                .unwrap()
                .expect("corecast subscribe ended early");
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|err| panic!("{line:?}: {err}"));
            if value["channel"] != "$user" {
                return value;
            }
        }
    }

    /// Reads `connected` and `subscribed` to `channel`.
    async fn ready(&mut self, channel: &str) {
        let connected = self.next().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        let subscribed = self.next().await;
        assert_eq!(
            (&subscribed["type"], &subscribed["channel"]),
            (&json!("subscribed"), &json!(channel)),
            "{subscribed}"
        );
    }

    /// Reads one message and checks its channel, offset and data.
    async fn message(&mut self, channel: &str, offset: u64, data: &Value) {
        let message = self.next().await;
        common::assert_message(&message, channel, offset, data);
    }

    async fn exits_0(mut self) {
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("corecast subscribe --count to exit")
            .unwrap();
        assert_eq!(status.code(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_presents_its_token_and_a_bad_one_is_refused() {
    watchdog(async {
        let server = Server::start(&["--auth", "jwt", "--jwt-secret", SECRET]).await;
        let url = server.ws_url("/ws");
        let good = token(SECRET);
        let mut flag = Subscriber::spawn(
            &["tok.1", "--url", &url, "--count", "1", "--token", &good],
            &[],
        );
        flag.ready("tok.1").await;
        let mut from_env = Subscriber::spawn(
            &["tok.1", "--url", &url, "--count", "1"],
            &[("CORECAST_TOKEN", &good)],
        );
        from_env.ready("tok.1").await;
        let offset = server.publish("tok.1", &json!({"n": 1})).await;
        flag.message("tok.1", offset, &json!({"n": 1})).await;
        from_env.message("tok.1", offset, &json!({"n": 1})).await;
        flag.exits_0().await;
        from_env.exits_0().await;

        let forged = token("another-secret");
        for env in [vec![], vec![("CORECAST_TOKEN", forged.as_str())]] {
            let refused = corecast(&["subscribe", "tok.1", "--url", &url], &env).await;
            let stderr = text(&refused.stderr);
            assert_eq!(refused.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.starts_with(&format!("corecast subscribe: {url}: connect: "))
                    && stderr.contains("401"),
                "{stderr}"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_presents_its_key_and_a_missing_or_wrong_one_is_refused() {
    watchdog(async {
        let config = std::env::temp_dir().join(format!(
            "corecast-client-secure-{}.toml",
            std::process::id()
        ));
        std::fs::write(&config, format!("[[api_keys]]\nkey = \"{KEY}\"\n")).unwrap();
        let server = Server::start(&["--config", config.to_str().unwrap()]).await;
        let api = format!("http://{}", server.api);
        let with_flag =
            corecast(&["publish", "key.1", "1", "--api", &api, "--key", KEY], &[]).await;
        assert_eq!(
            (with_flag.status.code(), text(&with_flag.stdout)),
            (
                Some(0),
                "{\"channel\":\"key.1\",\"offset\":1}\n".to_string()
            ),
            "{}",
            text(&with_flag.stderr)
        );
        let from_env = corecast(
            &["publish", "key.1", "2", "--api", &api],
            &[("CORECAST_KEY", KEY)],
        )
        .await;
        assert_eq!(
            (from_env.status.code(), text(&from_env.stdout)),
            (
                Some(0),
                "{\"channel\":\"key.1\",\"offset\":2}\n".to_string()
            ),
            "{}",
            text(&from_env.stderr)
        );
        let url = format!("{api}/v1/publish");
        for key in [None, Some("not-the-key-0123456789")] {
            let mut args = vec!["publish", "key.1", "3", "--api", &api];
            args.extend(key.iter().flat_map(|key| ["--key", key]));
            let refused = corecast(&args, &[]).await;
            let stderr = text(&refused.stderr);
            assert_eq!(refused.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.starts_with(&format!("corecast publish: POST {url}: 401 "))
                    && stderr.contains("unauthorized"),
                "{stderr}"
            );
        }
    })
    .await
}

/// A self-signed certificate for `127.0.0.1` and `localhost`, written with its key to a
/// fresh directory.
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
}

fn certificate() -> Certificate {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("a self-signed certificate");
    let dir = std::env::temp_dir().join(format!("corecast-client-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write the certificate");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write the key");
    Certificate { cert, key }
}

async fn tls_server(certificate: &Certificate) -> Server {
    let (cert, key) = (
        certificate.cert.to_str().unwrap(),
        certificate.key.to_str().unwrap(),
    );
    Server::start(&[
        "--tls-cert-file",
        cert,
        "--tls-key-file",
        key,
        "--api-tls-cert-file",
        cert,
        "--api-tls-key-file",
        key,
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_subscribe_and_publish_speak_tls_with_a_private_ca() {
    watchdog(async {
        let certificate = certificate();
        let server = tls_server(&certificate).await;
        let ca = certificate.cert.to_str().unwrap();
        let wss = format!("wss://{}/ws", server.ws);
        let https = format!("https://{}", server.api);

        let mut config = ClientConfig::new(&wss);
        config.ca_file = Some(certificate.cert.clone());
        let client = tokio::task::spawn_blocking(move || {
            let client = Client::connect(config).expect("the wss:// client connects");
            client.subscribe("sec.1").unwrap();
            client
        })
        .await
        .unwrap();
        let mut subscriber =
            Subscriber::spawn(&["sec.1", "--url", &wss, "--ca", ca, "--count", "1"], &[]);
        subscriber.ready("sec.1").await;
        let client = tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            while !seen
                .iter()
                .any(|event| matches!(event, Event::Subscribed { .. }))
            {
                seen.push(client.next_event(STEP).expect("subscribed within a step"));
            }
            assert!(matches!(seen[0], Event::Connected { .. }), "{seen:?}");
            client
        })
        .await
        .unwrap();

        let published = corecast(
            &[
                "publish",
                "sec.1",
                r#"{"over":"tls"}"#,
                "--api",
                &https,
                "--ca",
                ca,
            ],
            &[],
        )
        .await;
        assert_eq!(
            (published.status.code(), text(&published.stdout)),
            (
                Some(0),
                "{\"channel\":\"sec.1\",\"offset\":1}\n".to_string()
            ),
            "{}",
            text(&published.stderr)
        );
        subscriber
            .message("sec.1", 1, &json!({"over": "tls"}))
            .await;
        subscriber.exits_0().await;
        tokio::task::spawn_blocking(move || match client.next_event(STEP) {
            Some(Event::Message(message)) => {
                assert_eq!((message.channel.as_str(), message.offset), ("sec.1", 1));
                assert_eq!(message.data.get(), r#"{"over":"tls"}"#);
            }
            other => panic!("expected the message, got {other:?}"),
        })
        .await
        .unwrap();

        // Without --ca the self-signed certificate is not trusted: a clear error, no hang.
        let refused = corecast(&["subscribe", "sec.1", "--url", &wss], &[]).await;
        let stderr = text(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with(&format!(
                "corecast subscribe: {wss}: connect: TLS handshake with {} failed: invalid peer \
                 certificate: ",
                server.ws
            )),
            "{stderr}"
        );
        let refused = corecast(&["publish", "sec.1", "2", "--api", &https], &[]).await;
        let stderr = text(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with(&format!("corecast publish: POST {https}/v1/publish: "))
                && stderr.contains("certificate"),
            "{stderr}"
        );
        let bad_ca = corecast(
            &[
                "publish",
                "sec.1",
                "2",
                "--api",
                &https,
                "--ca",
                "/nonexistent.pem",
            ],
            &[],
        )
        .await;
        assert_eq!(bad_ca.status.code(), Some(2));
        assert!(
            text(&bad_ca.stderr).starts_with("corecast publish: --ca /nonexistent.pem: "),
            "{}",
            text(&bad_ca.stderr)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_a_tls_server_over_wss_and_https() {
    watchdog(async {
        let certificate = certificate();
        let server = tls_server(&certificate).await;
        let ca = certificate.cert.to_str().unwrap();
        let wss = format!("wss://{}/ws", server.ws);
        let https = format!("https://{}", server.api);
        let json_path = std::env::temp_dir().join(format!(
            "corecast-client-secure-bench-{}.json",
            std::process::id()
        ));
        let small = [
            "bench",
            "--subscribers",
            "100",
            "--events",
            "20",
            "--warmup-events",
            "2",
            "--interval-ms",
            "5",
            "--timeout-s",
            "20",
        ];
        let mut args = small.to_vec();
        let json_arg = json_path.to_str().unwrap();
        args.extend([
            "--ws", &wss, "--api", &https, "--ca", ca, "--json", json_arg,
        ]);
        let output = corecast(&args, &[]).await;
        assert!(
            output.status.success(),
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            text(&output.stdout),
            text(&output.stderr)
        );
        let report: Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        std::fs::remove_file(&json_path).unwrap();
        assert_eq!(report["target"], wss.as_str());
        assert_eq!(report["deliveries"], 100 * 20, "{report}");
        assert_eq!(
            (
                &report["lost"],
                &report["duplicated"],
                &report["out_of_order"]
            ),
            (&json!(0), &json!(0), &json!(0)),
            "{report}"
        );

        // Without --ca every subscriber's handshake fails, and the bench says why.
        let mut args = small.to_vec();
        args.extend(["--ws", &wss, "--api", &https]);
        let refused = corecast(&args, &[]).await;
        let stderr = text(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "failed while connecting: TLS handshake with {} failed: invalid peer certificate: ",
                server.ws
            )),
            "{stderr}"
        );
    })
    .await
}

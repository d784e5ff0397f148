//! Cluster mode against a real `redis-server` (started here on a free port; `.ci/deps` installs
//! Debian's package, and without it these tests fail, they never skip) and three real nodes:
//! a publish on one node reaches subscribers on the others with identical offsets and seqs, in
//! the same order; a client that moves from one node to another recovers with no gap; when
//! Redis dies and comes back empty mid-stream, publishes fail with 503 meanwhile, every client
//! is closed with 1012, and on reconnecting it is told exactly `recovered:false`,
//! `epoch_changed`, after which delivery goes on; when Redis stalls (SIGSTOP), the publish
//! in flight is answered `outcome_unknown` within `redis_timeout_ms`, later ones
//! `cluster_unavailable` at once, stats show the stall, and subscribers receive exactly what
//! was answered 200, perhaps what was answered `outcome_unknown`, and nothing answered 503; a
//! channel a node forgot (no subscriber, history expired) comes back there with the cluster's
//! offsets, and a batch is numbered whole. A batch has one fate: numbered in a row on every
//! node, consecutive seqs, while another node publishes; sent into a stall, answered
//! `outcome_unknown` whole and then delivered whole or not at all; while Redis is down, or when
//! Redis refuses it for memory, refused whole with nothing delivered and no number taken; and
//! when its script fails while running, answered `outcome_unknown` with none of it delivered.
//! Presence counts both nodes' members, diffs carry the other node's joins, and a killed
//! node's members are gone within its entries' expiry (`NODE_TTL_S`, 5 s).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_error, assert_message, watchdog, Client, HttpReply, Server, QUIET, STEP};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A `redis-server` child on a free loopback port, without persistence, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &["--port".to_owned(), port.to_string()])
    }

    /// A Redis that speaks TLS only, on a free port, with `pki`'s server certificate; it asks
    /// clients for a certificate of `pki`'s CA when `clients_certified`.
    fn start_tls(pki: &Pki, clients_certified: bool) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let path = |file: &str| pki.dir.join(file).to_str().expect("UTF-8").to_owned();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path("server.pem"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            if clients_certified { "yes" } else { "no" },
        ]
        .map(str::to_owned);
        Redis::start_with(port, &args)
    }

    fn start_with(port: u16, args: &[String]) -> Redis {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // A replica's full sync writes the master's snapshot to its working directory.
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "these tests need redis-server on the PATH (apt-get install redis-server, as \
                     .ci/deps does): {err}"
                )
            });
        let deadline = Instant::now() + STEP;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server with SIGSTOP, as a stall does: it keeps its connections and accepts
    /// new ones, and answers nothing. It resumes when the guard drops, failing test or not.
    fn pause(&self) -> Paused<'_> {
        assert!(
            self.signal("STOP"),
            "expected kill -STOP of redis-server to succeed"
        );
        Paused { redis: self }
    }

    /// Sends the signal `name` (`STOP`, `CONT`) to the server; whether `kill` succeeded.
    fn signal(&self, name: &str) -> bool {
        Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .is_ok_and(|status| status.success())
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `redis-cli -p port args..`'s output (raw, one reply line per value).
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("these tests need redis-cli (redis-tools): {err}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Polls `cli(port, args)` every 50 ms until `done` holds of its output, for at most 20 s.
fn wait_cli(port: u16, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cli(port, args);
        if done(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "redis-cli -p {port} {args:?} still says {out:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-sentinel` child monitoring the master `corecast`, killed on drop.
struct Sentinel {
    redis: Redis,
}

impl Sentinel {
    /// A sentinel on a free port that watches the master on `master_port` with quorum 1 and
    /// takes a master as down after one silent second.
    fn start(master_port: u16) -> Sentinel {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("corecast-sentinel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\n\
                 sentinel monitor corecast 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds corecast 1000\n\
                 sentinel failover-timeout corecast 10000\n"
            ),
        )
        .expect("write the sentinel's config");
        let redis = Redis::start_with(
            port,
            &[
                conf.to_str().expect("UTF-8").to_owned(),
                "--sentinel".to_owned(),
            ],
        );
        Sentinel { redis }
    }

    fn port(&self) -> u16 {
        self.redis.port
    }

    /// The port of the master it names.
    fn master_port(&self) -> String {
        cli(
            self.port(),
            &["SENTINEL", "get-master-addr-by-name", "corecast"],
        )
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
    }
}

/// A Redis Cluster of three masters without replicas, made with `redis-cli --cluster create`.
struct RedisCluster {
    masters: Vec<Redis>,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("corecast-rc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let masters: Vec<Redis> = (0..3)
            .map(|_| {
                let port = free_port();
                let nodes = dir.join(format!("nodes-{port}.conf"));
                let args = [
                    "--port",
                    &port.to_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    nodes.to_str().expect("UTF-8"),
                    "--cluster-node-timeout",
                    "2000",
                ]
                .map(str::to_owned);
                Redis::start_with(port, &args)
            })
            .collect();
        let addrs: Vec<String> = masters
            .iter()
            .map(|redis| format!("127.0.0.1:{}", redis.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(created.status.success(), "{created:?}");
        for redis in &masters {
            wait_cli(redis.port, &["CLUSTER", "INFO"], |info| {
                info.contains("cluster_state:ok")
            });
        }
        RedisCluster { masters }
    }

    /// The master serving the slot of corecast's keys, and the others.
    fn owner_and_others(&self) -> (&Redis, Vec<&Redis>) {
        let port = self.masters[0].port;
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", "{corecast}"])
            .parse()
            .expect("a slot");
        let nodes = cli(port, &["CLUSTER", "NODES"]);
        let owner_port = nodes
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let serves = fields.iter().skip(8).any(|range| {
                    let (start, end) = range.split_once('-').unwrap_or((range, range));
                    let (start, end) = (start.parse::<u16>(), end.parse::<u16>());
                    matches!((start, end), (Ok(start), Ok(end)) if (start..=end).contains(&slot))
                });
                let addr = fields.get(1)?.split('@').next()?;
                serves
                    .then(|| addr.rsplit(':').next()?.parse::<u16>().ok())
                    .flatten()
            })
            .expect("a master serves the slot");
        let owner = self
            .masters
            .iter()
            .find(|redis| redis.port == owner_port)
            .expect("one of ours");
        let others = self
            .masters
            .iter()
            .filter(|redis| redis.port != owner_port)
            .collect();
        (owner, others)
    }
}

/// A CA made for the test, and a server (`localhost`) and a client certificate it signed, as
/// PEM files in `dir`: `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`.
struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir =
            std::env::temp_dir().join(format!("corecast-redis-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a certificate whose subject is its issuer's reads as self-signed.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "corecast test CA");
        let ca = ca_params.self_signed(&ca_key).expect("a CA certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write the CA");
        for (who, names) in [
            ("server", vec!["localhost".to_owned()]),
            ("client", Vec::new()),
        ] {
            let key = KeyPair::generate().expect("a key");
            let mut params = CertificateParams::new(names).expect("parameters");
            params
                .distinguished_name
                .push(DnType::CommonName, format!("corecast test {who}"));
            let cert = params
                .signed_by(&key, &ca, &ca_key)
                .expect("a signed certificate");
            std::fs::write(dir.join(format!("{who}.pem")), cert.pem())
                .expect("write a certificate");
            std::fs::write(dir.join(format!("{who}.key")), key.serialize_pem())
                .expect("write a key");
        }
        Pki { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("UTF-8").to_owned()
    }
}

/// A stopped `redis-server`, resumed (SIGCONT) on drop.
struct Paused<'a> {
    redis: &'a Redis,
}

impl Paused<'_> {
    /// Resumes the server now: dropping the guard sends SIGCONT.
    fn resume(self) {}
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        // Never a panic here: this runs while a failing test unwinds too.
        if !self.redis.signal("CONT") {
            eprintln!("kill -CONT of redis-server failed");
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node of the cluster and waits until it has synced with Redis.
async fn node(redis: &Redis) -> Server {
    node_with(redis, &[]).await
}

/// [`node`] with `extra` flags.
async fn node_with(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--sys-stats-interval-ms", "0"];
    args.extend_from_slice(extra);
    let server = Server::start(&args).await;
    let stats = server
        .poll_json("/v1/stats", |stats| {
            stats["cluster"]["connected"] == true && stats["cluster"]["seq"].is_u64()
        })
        .await;
    assert!(
        stats["cluster"]["connected"] == true && stats["cluster"]["seq"].is_u64(),
        "expected the node to sync with Redis: {stats}"
    );
    server
}

/// Subscribes and returns the reply's `seq`, checked for shape.
async fn subscribe(client: &mut Client, pattern: &str) -> u64 {
    client.subscribe(pattern, 1).await
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_every_node_with_the_same_numbers() {
    watchdog(async {
        let redis = Redis::start();
        let (a, b, c) = (node(&redis).await, node(&redis).await, node(&redis).await);
        let mut on_b = Client::connect(&b).await;
        let mut on_c = Client::connect(&c).await;
        subscribe(&mut on_b, "cl.*").await;
        subscribe(&mut on_c, "cl.*").await;
        let mut expected = Vec::new();
        for i in 0..20 {
            let (server, channel) = if i % 4 == 3 {
                (&c, "cl.y")
            } else {
                (&a, "cl.x")
            };
            let offset = server.publish(channel, &json!({ "i": i })).await;
            expected.push((channel, offset, json!({ "i": i })));
        }
        let mut seen_b = Vec::new();
        let mut seen_c = Vec::new();
        for (channel, offset, data) in &expected {
            let got_b = on_b.recv().await;
            let got_c = on_c.recv().await;
            assert_message(&got_b, channel, *offset, data);
            assert_eq!(got_b, got_c, "both nodes send the very same message");
            seen_b.push(got_b["seq"].as_u64().unwrap());
            seen_c.push(got_c["seq"].as_u64().unwrap());
        }
        assert_eq!(seen_b, seen_c);
        assert!(
            seen_b.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "{seen_b:?}"
        );
        let offsets_x: Vec<u64> = expected
            .iter()
            .filter(|(channel, ..)| *channel == "cl.x")
            .map(|(_, offset, _)| *offset)
            .collect();
        assert_eq!(
            offsets_x,
            (1..=15).collect::<Vec<_>>(),
            "one offset sequence per channel, cluster-wide"
        );
        let stats = a
            .poll_json("/v1/stats", |stats| {
                stats["cluster"]["nodes"]
                    .as_array()
                    .is_some_and(|nodes| nodes.len() == 3)
            })
            .await;
        let nodes = stats["cluster"]["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 3, "{stats}");
        assert!(
            nodes.iter().all(|node| node["connections"].is_u64()),
            "{stats}"
        );
        drop((a, b, c));
    })
    .await
}

#[tokio::test]
async fn a_client_that_moves_to_another_node_recovers_with_no_gap() {
    watchdog(async {
        let redis = Redis::start();
        let (a, b) = (node(&redis).await, node(&redis).await);
        let mut on_a = Client::connect(&a).await;
        let epoch = on_a.hello["epoch"].as_str().unwrap().to_owned();
        subscribe(&mut on_a, "mv.1").await;
        for i in 1..=5 {
            a.publish("mv.1", &json!(i)).await;
            assert_message(&on_a.recv().await, "mv.1", i, &json!(i));
        }
        drop(on_a);
        for i in 6..=10 {
            b.publish("mv.1", &json!(i)).await;
        }
        let mut on_b = Client::connect(&b).await;
        assert_eq!(
            on_b.hello["epoch"],
            epoch.as_str(),
            "one epoch for the cluster"
        );
        let reply = on_b
            .request(json!({"type": "subscribe", "channel": "mv.1", "id": 2,
                            "since": {"epoch": epoch, "offset": 5}}))
            .await;
        assert_eq!(reply["recovered"], true, "{reply}");
        for i in 6..=10 {
            assert_message(&on_b.recv().await, "mv.1", i, &json!(i));
        }
        a.publish("mv.1", &json!(11)).await;
        assert_message(&on_b.recv().await, "mv.1", 11, &json!(11));
        on_b.expect_silence("each message once").await;
    })
    .await
}

#[tokio::test]
async fn when_redis_restarts_empty_clients_are_told_exactly_what_happened() {
    watchdog(async {
        let redis = Redis::start();
        let port = redis.port;
        let (a, b) = (node(&redis).await, node(&redis).await);
        let mut on_b = Client::connect(&b).await;
        let epoch = on_b.hello["epoch"].as_str().unwrap().to_owned();
        subscribe(&mut on_b, "rs.1").await;
        for i in 1..=3 {
            a.publish("rs.1", &json!(i)).await;
            assert_message(&on_b.recv().await, "rs.1", i, &json!(i));
        }

        drop(redis);
        // Once the node knows, a publish is refused unsent: certainly not published.
        a.poll_json("/v1/stats", |stats| stats["cluster"]["connected"] == false)
            .await;
        let refused = a
            .post(
                "/v1/publish",
                &json!({"channel": "rs.1", "data": 4}).to_string(),
            )
            .await;
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(
            common::assert_http_error_body(&refused, "publish while Redis is down"),
            "cluster_unavailable"
        );
        let act = json!({"user": "ada"}).to_string();
        let refused = a.post("/v1/users/disconnect", &act).await;
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(
            common::assert_http_error_body(&refused, "a user act while Redis is down"),
            "cluster_unavailable"
        );
        on_b.expect_silence("nothing is delivered while Redis is down")
            .await;

        let _redis = Redis::start_on(port);
        // The nodes resync with an empty Redis: a new epoch, and every client is closed so it
        // learns its positions are void.
        let (code, reason) = on_b.expect_close(Duration::from_secs(15)).await;
        assert_eq!(code, 1012, "{reason}");
        let stats = b
            .poll_json("/v1/stats", |stats| stats["epoch"] != epoch.as_str())
            .await;
        let new_epoch = stats["epoch"].as_str().unwrap().to_owned();
        assert_ne!(new_epoch, epoch);

        let mut again = Client::connect(&b).await;
        assert_eq!(again.hello["epoch"], new_epoch.as_str());
        let reply = again
            .request(json!({"type": "subscribe", "channel": "rs.1", "id": 2,
                            "since": {"epoch": epoch, "offset": 3}}))
            .await;
        assert_eq!(
            (reply["recovered"].clone(), reply["reason"].clone()),
            (json!(false), json!("epoch_changed")),
            "{reply}"
        );
        // Both nodes are back on the new epoch, and A's bridge on Redis, before a publish can
        // reach this one.
        a.poll_json("/v1/stats", |stats| {
            stats["epoch"] == new_epoch.as_str() && stats["cluster"]["connected"] == true
        })
        .await;
        let offset = a.publish("rs.1", &json!(5)).await;
        assert_eq!(offset, 1, "offsets restarted with the epoch");
        let got: Value = again.recv().await;
        assert_message(&got, "rs.1", 1, &json!(5));
    })
    .await
}

/// Sends Redis one inline command and returns its reply's first line.
fn redis_command(redis: &Redis, command: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port)).expect("redis");
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .expect("write to redis");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("a reply from redis");
    line
}

#[tokio::test]
async fn a_node_whose_subscription_broke_delivers_what_it_missed_in_order() {
    watchdog(async {
        let redis = Redis::start();
        let (a, b) = (node(&redis).await, node(&redis).await);
        let mut on_b = Client::connect(&b).await;
        subscribe(&mut on_b, "br.1").await;
        for i in 1..=3 {
            a.publish("br.1", &json!(i)).await;
            assert_message(&on_b.recv().await, "br.1", i, &json!(i));
        }
        // Every node's events subscription is cut; the command connections stay, so publishes
        // go on while the nodes reconnect.
        let killed = redis_command(&redis, "CLIENT KILL TYPE pubsub");
        assert!(killed.starts_with(':'), "CLIENT KILL answered {killed:?}");
        for i in 4..=10 {
            a.publish("br.1", &json!(i)).await;
        }
        for i in 4..=10 {
            let got = on_b.recv().await;
            assert_message(&got, "br.1", i, &json!(i));
        }
        on_b.expect_silence("each missed message once, no gap notice")
            .await;
        let log = b.stderr_tail();
        assert!(
            log.contains("Redis events subscription lost"),
            "expected node B to have lost its subscription (so 4.. came from the log): {log}"
        );
    })
    .await
}

/// The `redis_timeout_ms` the stall tests run with, and the flag that sets it.
const REDIS_TIMEOUT: Duration = Duration::from_millis(1_000);
const REDIS_TIMEOUT_FLAG: [&str; 2] = ["--redis-timeout-ms", "1000"];
/// How much later than [`REDIS_TIMEOUT`] an `outcome_unknown` may come on a loaded two-core
/// machine.
const SLACK: Duration = Duration::from_secs(2);

/// What a publish was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Published { offset: u64 },
    Unknown,
    Unavailable,
}

/// Reads an HTTP publish reply: exactly `{channel, offset}`, or exactly an error body whose
/// code goes with its status (504 `outcome_unknown`, 503 `cluster_unavailable`).
fn http_answer(reply: &HttpReply, what: &str) -> Answer {
    match reply.status {
        200 => Answer::Published {
            offset: reply.json()["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("{what}: expected an offset in {}", reply.body)),
        },
        504 => {
            let code = common::assert_http_error_body(reply, what);
            assert_eq!(code, "outcome_unknown", "{what}");
            let message = reply.json()["error"]["message"].to_string();
            assert!(
                message.contains("may or may not") && message.contains("/v1/history"),
                "{what}: the message says what happened and how to find out: {message}"
            );
            Answer::Unknown
        }
        503 => {
            let code = common::assert_http_error_body(reply, what);
            assert_eq!(code, "cluster_unavailable", "{what}");
            Answer::Unavailable
        }
        status => panic!(
            "{what}: expected 200, 503 or 504, got {status} {}",
            reply.body
        ),
    }
}

/// `POST /v1/publish` of `data` to `channel`: the answer, and how long it took.
async fn publish_timed(server: &Server, channel: &str, data: u64) -> (Answer, Duration) {
    let body = json!({"channel": channel, "data": data}).to_string();
    let started = Instant::now();
    let reply = server.post("/v1/publish", &body).await;
    let took = started.elapsed();
    (http_answer(&reply, &format!("publish of {data}")), took)
}

/// Waits until `server`'s bridge has just refreshed its presence (the node list it shows
/// changes with each refresh), so that the next presence round trip is a second away and a
/// publish sent now is the first round trip to meet a stall.
async fn after_presence_refresh(server: &Server) {
    let before = server.stats().await["cluster"]["nodes"].clone();
    let deadline = Instant::now() + STEP;
    while server.stats().await["cluster"]["nodes"] == before {
        assert!(
            Instant::now() < deadline,
            "expected the presence refresh every second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts an `outcome_unknown` came after Redis had `redis_timeout_ms` to answer, and not
/// much later.
fn assert_timed_out(took: Duration, what: &str) {
    assert!(
        took + Duration::from_millis(50) >= REDIS_TIMEOUT && took < REDIS_TIMEOUT + SLACK,
        "{what}: expected outcome_unknown after {REDIS_TIMEOUT:?} (at most {SLACK:?} more), \
         took {took:?}"
    );
}

/// Asserts a refusal came at once: well before a round trip could have timed out.
fn assert_at_once(took: Duration, what: &str) {
    assert!(
        took < REDIS_TIMEOUT,
        "{what}: expected cluster_unavailable at once, not after a timeout; took {took:?}"
    );
}

/// Every delivery `client` receives on `channel` until `last` has arrived and then nothing for
/// [`QUIET`], as `(data, offset, seq)`.
async fn deliveries(client: &mut Client, channel: &str, last: u64) -> Vec<(u64, u64, u64)> {
    let mut seen = Vec::new();
    let mut last_seen = false;
    loop {
        let within = if last_seen { QUIET } else { STEP };
        let Some(got) = client.recv_within(within).await else {
            assert!(last_seen, "expected {last} to be delivered, got {seen:?}");
            return seen;
        };
        let data = got["data"].as_u64().expect("integer data");
        let offset = got["offset"].as_u64().expect("an offset");
        assert_message(&got, channel, offset, &json!(data));
        seen.push((data, offset, got["seq"].as_u64().expect("a seq")));
        last_seen |= data == last;
    }
}

/// Asserts `seen` is exactly what the answers allow, in order: every publish answered 200,
/// at the offset it was answered, perhaps those answered `outcome_unknown`, none answered
/// `cluster_unavailable`; offsets 1, 2, 3.. and seqs rising.
fn assert_delivered_truly(seen: &[(u64, u64, u64)], answers: &[(u64, Answer)]) {
    let offsets: Vec<u64> = seen.iter().map(|(_, offset, _)| *offset).collect();
    assert_eq!(
        offsets,
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "one offset each, no gap: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|pair| pair[0].2 < pair[1].2),
        "in seq order: {seen:?}"
    );
    for (data, answer) in answers {
        let at: Vec<u64> = seen
            .iter()
            .filter(|(seen, ..)| seen == data)
            .map(|(_, offset, _)| *offset)
            .collect();
        match answer {
            Answer::Published { offset } => assert_eq!(
                at,
                vec![*offset],
                "{data} was answered 200 at offset {offset}: delivered once, there: {seen:?}"
            ),
            Answer::Unknown => assert!(
                at.len() <= 1,
                "{data} (outcome_unknown) is delivered at most once: {seen:?}"
            ),
            Answer::Unavailable => assert!(
                at.is_empty(),
                "{data} was answered cluster_unavailable, yet delivered: {seen:?}"
            ),
        }
    }
    assert!(
        seen.iter()
            .all(|(data, ..)| answers.iter().any(|(answered, _)| answered == data)),
        "only what was published is delivered: {seen:?}"
    );
}

#[tokio::test]
async fn in_a_redis_stall_each_publish_is_answered_truly_and_nothing_refused_is_delivered() {
    watchdog(async {
        let redis = Redis::start();
        let a = node_with(&redis, &REDIS_TIMEOUT_FLAG).await;
        let b = node_with(&redis, &REDIS_TIMEOUT_FLAG).await;
        let mut on_a = Client::connect(&a).await;
        let mut on_b = Client::connect(&b).await;
        subscribe(&mut on_a, "st.1").await;
        subscribe(&mut on_b, "st.1").await;
        let mut answers = Vec::new();
        for data in 1..=3 {
            let (answer, _) = publish_timed(&a, "st.1", data).await;
            assert_eq!(answer, Answer::Published { offset: data });
            answers.push((data, answer));
        }

        after_presence_refresh(&a).await;
        let paused = redis.pause();
        // Sent as Redis stops: no answer ever comes, so its outcome is unknown; meanwhile
        // stats show it waiting.
        let started = Instant::now();
        let ((answer, took), (midway, asked_at)) =
            tokio::join!(publish_timed(&a, "st.1", 4), async {
                tokio::time::sleep(REDIS_TIMEOUT / 4).await;
                let stats = a.stats().await;
                (stats, started.elapsed())
            });
        assert_eq!(answer, Answer::Unknown, "the publish in flight");
        assert_timed_out(took, "the publish in flight");
        answers.push((4, answer));
        // Only a stats reply that came while the publish still waited can show it waiting.
        if asked_at < REDIS_TIMEOUT * 3 / 4 {
            let cluster = &midway["cluster"];
            let waited = cluster["oldest_pending_ms"]
                .as_u64()
                .expect("oldest_pending_ms");
            assert!(
                (1..REDIS_TIMEOUT.as_millis() as u64).contains(&waited)
                    && cluster["stalled"] == false
                    && cluster["connected"] == true,
                "while the publish waits, within its time: {cluster}"
            );
        }
        // The bridge knows Redis is stalled: later publishes are refused unsent, at once.
        for data in 5..=7 {
            let (answer, took) = publish_timed(&a, "st.1", data).await;
            assert_eq!(
                answer,
                Answer::Unavailable,
                "publish of {data} in the stall"
            );
            assert_at_once(took, &format!("publish of {data} in the stall"));
            answers.push((data, answer));
        }
        let cluster = a.stats().await["cluster"].clone();
        assert_eq!(
            (
                cluster["connected"].clone(),
                cluster["stalled"].clone(),
                cluster["publishes_outcome_unknown_total"].clone(),
                cluster["publishes_unavailable_total"].clone(),
            ),
            (json!(false), json!(true), json!(1), json!(3)),
            "in the stall: {cluster}"
        );

        paused.resume();
        let stats = a
            .poll_json("/v1/stats", |stats| {
                stats["cluster"]["connected"] == true && stats["cluster"]["stalled"] == false
            })
            .await;
        assert_eq!(
            (
                stats["cluster"]["connected"].clone(),
                stats["cluster"]["stalled"].clone(),
                stats["cluster"]["oldest_pending_ms"].clone(),
            ),
            (json!(true), json!(false), json!(0)),
            "the stall clears once Redis answers again: {stats}"
        );
        let mut offset_next = None;
        for data in 8..=10 {
            let (answer, _) = publish_timed(&a, "st.1", data).await;
            let Answer::Published { offset } = answer else {
                panic!("publish of {data} after the stall: expected 200, got {answer:?}");
            };
            assert!(
                offset_next.is_none_or(|next| offset == next),
                "offsets go on one by one: {answer:?}"
            );
            offset_next = Some(offset + 1);
            answers.push((data, answer));
        }

        let seen_a = deliveries(&mut on_a, "st.1", 10).await;
        let seen_b = deliveries(&mut on_b, "st.1", 10).await;
        assert_delivered_truly(&seen_a, &answers);
        assert_eq!(
            seen_a, seen_b,
            "every node delivers the same, in the same order"
        );

        let metrics = a.get("/metrics").await;
        assert_eq!(metrics.status, 200);
        for line in [
            "corecast_cluster_connected 1",
            "corecast_cluster_stalled 0",
            "corecast_cluster_publishes_outcome_unknown_total 1",
            "corecast_cluster_publishes_unavailable_total 3",
        ] {
            assert!(
                metrics.body.lines().any(|got| got == line),
                "no {line:?} in /metrics:\n{}",
                metrics.body
            );
        }
    })
    .await
}

#[tokio::test]
async fn in_a_redis_stall_socket_publishes_and_batch_entries_get_the_same_answers() {
    watchdog(async {
        let redis = Redis::start();
        let mut flags = REDIS_TIMEOUT_FLAG.to_vec();
        flags.extend(["--client-publish", "sk.>"]);
        let a = node_with(&redis, &flags).await;
        let mut publisher = Client::connect(&a).await;
        let mut watcher = Client::connect(&a).await;
        subscribe(&mut watcher, "sk.1").await;
        let publish =
            |data: u64| json!({"type": "publish", "channel": "sk.1", "data": data, "id": data});
        let reply = publisher.request(publish(1)).await;
        assert_eq!(
            reply,
            json!({"type": "published", "id": 1, "channel": "sk.1", "offset": 1})
        );
        let mut answers = vec![(1, Answer::Published { offset: 1 })];

        after_presence_refresh(&a).await;
        let paused = redis.pause();
        let started = Instant::now();
        publisher.send(publish(2)).await;
        let reply = publisher
            .recv_within(REDIS_TIMEOUT + SLACK)
            .await
            .expect("an answer to the socket publish in flight");
        assert_error(&reply, json!(2), "outcome_unknown");
        assert_timed_out(started.elapsed(), "the socket publish in flight");
        answers.push((2, Answer::Unknown));

        let started = Instant::now();
        let reply = publisher.request(publish(3)).await;
        assert_error(&reply, json!(3), "cluster_unavailable");
        assert_at_once(started.elapsed(), "a socket publish in the stall");
        answers.push((3, Answer::Unavailable));

        let started = Instant::now();
        let batch = json!({"messages": [{"channel": "sk.1", "data": 30}]}).to_string();
        let reply = a.post("/v1/publish/batch", &batch).await;
        assert_eq!(
            http_answer(&reply, "a batch in the stall"),
            Answer::Unavailable
        );
        assert_at_once(started.elapsed(), "a batch in the stall");
        answers.push((30, Answer::Unavailable));
        let cluster = a.stats().await["cluster"].clone();
        assert_eq!(
            (
                cluster["stalled"].clone(),
                cluster["publishes_outcome_unknown_total"].clone(),
                cluster["publishes_unavailable_total"].clone(),
            ),
            (json!(true), json!(1), json!(2)),
            "in the stall: {cluster}"
        );

        paused.resume();
        a.poll_json("/v1/stats", |stats| {
            stats["cluster"]["connected"] == true && stats["cluster"]["stalled"] == false
        })
        .await;
        let reply = publisher.request(publish(4)).await;
        let offset = reply["offset"].as_u64().expect("published after the stall");
        assert_eq!(
            reply,
            json!({"type": "published", "id": 4, "channel": "sk.1", "offset": offset})
        );
        answers.push((4, Answer::Published { offset }));
        let seen = deliveries(&mut watcher, "sk.1", 4).await;
        assert_delivered_truly(&seen, &answers);
    })
    .await
}

#[tokio::test]
async fn a_channel_a_node_forgot_comes_back_with_the_clusters_offsets() {
    watchdog(async {
        let redis = Redis::start();
        let a = node_with(&redis, &["--history-age-s", "1"]).await;
        let mut first = Client::connect(&a).await;
        let epoch = first.hello["epoch"].as_str().unwrap().to_owned();
        subscribe(&mut first, "fc.x").await;
        let offsets = a
            .publish_batch(&[("fc.x", json!(1)), ("fc.x", json!(2))])
            .await;
        assert_eq!(offsets, [1, 2], "a batch, numbered by Redis");
        assert_message(&first.recv().await, "fc.x", 1, &json!(1));
        assert_message(&first.recv().await, "fc.x", 2, &json!(2));
        drop(first);
        let stats = a
            .poll_json("/v1/stats", |stats| {
                stats["ingest"]["channels_forgotten_total"] == 1
            })
            .await;
        assert_eq!(stats["ingest"]["channels_forgotten_total"], 1, "{stats}");
        assert_eq!(stats["ingest"]["channels"], 0, "{stats}");
        assert_eq!(
            a.publish("fc.x", &json!(3)).await,
            3,
            "Redis's offsets never forget"
        );
        let mut again = Client::connect(&a).await;
        for (offset, recovered) in [(1, false), (2, true)] {
            let reply = again
                .request(json!({"type": "subscribe", "channel": "fc.x", "id": 9,
                                "since": {"epoch": epoch, "offset": offset}}))
                .await;
            assert_eq!(reply["type"], "subscribed", "{reply}");
            assert_eq!(
                reply["recovered"], recovered,
                "since offset {offset}: {reply}"
            );
            if recovered {
                assert_message(&again.recv().await, "fc.x", 3, &json!(3));
            } else {
                assert_eq!(reply["reason"], "history_trimmed", "{reply}");
                again.unsubscribe("fc.x", 2).await;
            }
        }
        again.expect_silence("fc.x:3 came once").await;
    })
    .await
}

/// The body of a `/v1/publish/batch` of `data` to `channel`, one message each.
fn batch_body(channel: &str, data: impl IntoIterator<Item = Value>) -> String {
    let messages: Vec<Value> = data
        .into_iter()
        .map(|data| json!({"channel": channel, "data": data}))
        .collect();
    json!({ "messages": messages }).to_string()
}

/// `POST /v1/publish/batch` of `body`: the answer for the whole batch (its offsets when 200,
/// checked to be one per message, on `channel`, in a row), and how long it took.
async fn publish_batch_timed(
    server: &Server,
    channel: &str,
    body: &str,
) -> (Result<Vec<u64>, Answer>, Duration) {
    let started = Instant::now();
    let reply = server.post("/v1/publish/batch", body).await;
    let took = started.elapsed();
    if reply.status != 200 {
        let answer = http_answer(&reply, "a batch");
        let message = reply.json()["error"]["message"].to_string();
        match answer {
            Answer::Unknown => assert!(
                message.contains("whole or not at all"),
                "an unknown batch is published whole or not at all: {message}"
            ),
            _ => assert!(
                message.contains("nothing of the batch was published"),
                "a refused batch says nothing of it was published: {message}"
            ),
        }
        return (Err(answer), took);
    }
    let results = reply.json()["results"].clone();
    let offsets: Vec<u64> = results
        .as_array()
        .unwrap_or_else(|| panic!("expected results in {}", reply.body))
        .iter()
        .map(|result| {
            assert_eq!(result["channel"], channel, "{result}");
            result["offset"].as_u64().expect("an offset")
        })
        .collect();
    assert!(
        offsets.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "a batch to one channel has offsets in a row: {offsets:?}"
    );
    (Ok(offsets), took)
}

/// Asserts `seen` (as [`deliveries`] gives) holds the messages `data` (in order, consecutive
/// offsets from `offset_first`, consecutive seqs) or none of them, never some; whether all.
fn assert_all_or_none(seen: &[(u64, u64, u64)], data: &[u64], offset_first: u64) -> bool {
    let of_batch: Vec<&(u64, u64, u64)> = seen
        .iter()
        .filter(|(seen, ..)| data.contains(seen))
        .collect();
    if of_batch.is_empty() {
        return false;
    }
    let got: Vec<u64> = of_batch.iter().map(|(data, ..)| *data).collect();
    assert_eq!(got, data, "all of the batch, in order, or none: {seen:?}");
    let offsets: Vec<u64> = of_batch.iter().map(|(_, offset, _)| *offset).collect();
    assert_eq!(
        offsets,
        (offset_first..offset_first + data.len() as u64).collect::<Vec<_>>(),
        "{seen:?}"
    );
    assert!(
        of_batch.windows(2).all(|pair| pair[1].2 == pair[0].2 + 1),
        "the batch's seqs are consecutive: {seen:?}"
    );
    true
}

#[tokio::test]
async fn a_batch_sent_into_a_redis_stall_is_answered_once_and_delivered_whole_or_not_at_all() {
    watchdog(async {
        let redis = Redis::start();
        let a = node_with(&redis, &REDIS_TIMEOUT_FLAG).await;
        let b = node_with(&redis, &REDIS_TIMEOUT_FLAG).await;
        let mut on_a = Client::connect(&a).await;
        let mut on_b = Client::connect(&b).await;
        subscribe(&mut on_a, "sb.1").await;
        subscribe(&mut on_b, "sb.1").await;
        let (answer, _) = publish_timed(&a, "sb.1", 1).await;
        assert_eq!(answer, Answer::Published { offset: 1 });

        after_presence_refresh(&a).await;
        let paused = redis.pause();
        let batch: Vec<u64> = (100..150).collect();
        let body = batch_body("sb.1", batch.iter().map(|data| json!(data)));
        let (answer, took) = publish_batch_timed(&a, "sb.1", &body).await;
        assert_eq!(answer, Err(Answer::Unknown), "the batch in flight, whole");
        assert_timed_out(took, "the batch in flight");
        // Redis is known stalled now: a batch is refused whole, unsent, at once.
        let refused: Vec<u64> = (200..203).collect();
        let body = batch_body("sb.1", refused.iter().map(|data| json!(data)));
        let (answer, took) = publish_batch_timed(&a, "sb.1", &body).await;
        assert_eq!(answer, Err(Answer::Unavailable), "a batch in the stall");
        assert_at_once(took, "a batch in the stall");
        let cluster = a.stats().await["cluster"].clone();
        assert_eq!(
            (
                cluster["stalled"].clone(),
                cluster["publishes_outcome_unknown_total"].clone(),
                cluster["publishes_unavailable_total"].clone(),
            ),
            (json!(true), json!(50), json!(3)),
            "each message of a batch counts: {cluster}"
        );

        paused.resume();
        a.poll_json("/v1/stats", |stats| {
            stats["cluster"]["connected"] == true && stats["cluster"]["stalled"] == false
        })
        .await;
        let (answer, _) = publish_timed(&a, "sb.1", 999).await;
        let Answer::Published { offset: last } = answer else {
            panic!("a publish after the stall: expected 200, got {answer:?}");
        };
        let seen_a = deliveries(&mut on_a, "sb.1", 999).await;
        let seen_b = deliveries(&mut on_b, "sb.1", 999).await;
        assert_eq!(seen_a, seen_b, "every node delivers the same");
        let whole = assert_all_or_none(&seen_a, &batch, 2);
        let data: Vec<u64> = seen_a.iter().map(|(data, ..)| *data).collect();
        let mut expected = vec![1];
        if whole {
            expected.extend(&batch);
        }
        expected.push(999);
        assert_eq!(data, expected, "nothing refused is delivered");
        assert_eq!(last, if whole { 52 } else { 2 }, "{seen_a:?}");
    })
    .await
}

#[tokio::test]
async fn a_batch_while_redis_is_down_is_refused_whole_and_nothing_of_it_is_delivered() {
    watchdog(async {
        let redis = Redis::start();
        let (a, b) = (node(&redis).await, node(&redis).await);
        let mut on_b = Client::connect(&b).await;
        subscribe(&mut on_b, "dn.1").await;
        let offsets = a
            .publish_batch(&[("dn.1", json!(1)), ("dn.1", json!(2))])
            .await;
        assert_eq!(offsets, [1, 2]);
        assert_message(&on_b.recv().await, "dn.1", 1, &json!(1));
        assert_message(&on_b.recv().await, "dn.1", 2, &json!(2));

        drop(redis);
        a.poll_json("/v1/stats", |stats| stats["cluster"]["connected"] == false)
            .await;
        let body = batch_body("dn.1", (10..60).map(|data| json!(data)));
        let (answer, took) = publish_batch_timed(&a, "dn.1", &body).await;
        assert_eq!(answer, Err(Answer::Unavailable));
        assert_at_once(took, "a batch while Redis is down");
        assert_eq!(
            a.stats().await["cluster"]["publishes_unavailable_total"],
            50,
            "each of its messages counts"
        );
        on_b.expect_silence("nothing of a refused batch is delivered")
            .await;
    })
    .await
}

/// Every delivery `client` receives until `count` have arrived and then nothing for
/// [`QUIET`].
async fn receive(client: &mut Client, count: usize) -> Vec<Value> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        got.push(client.recv().await);
    }
    client
        .expect_silence("nothing more than was published")
        .await;
    got
}

#[tokio::test]
async fn a_batch_is_numbered_in_a_row_on_every_node_while_another_node_publishes() {
    watchdog(async {
        let redis = Redis::start();
        let (a, b, c) = (node(&redis).await, node(&redis).await, node(&redis).await);
        let mut clients = Vec::new();
        for server in [&a, &b, &c] {
            let mut client = Client::connect(server).await;
            subscribe(&mut client, "nr.*").await;
            clients.push(client);
        }
        // Large messages make each batch many of Redis's reads, so that node C's publishes
        // would land among its messages if a batch were not one command.
        let pad = "x".repeat(2_000);
        const BATCHES: u64 = 3;
        const SIZE: u64 = 50;
        const SINGLES: u64 = 60;
        let singles = c.publish_many("nr.single", (0..SINGLES).map(|i| json!(i)).collect());
        let batches = async {
            let mut answered = Vec::new();
            for k in 0..BATCHES {
                let body = batch_body(
                    "nr.batch",
                    (0..SIZE).map(|i| json!({"k": k, "i": i, "pad": pad})),
                );
                let (answer, _) = publish_batch_timed(&a, "nr.batch", &body).await;
                answered.push(answer.expect("a batch while Redis is up"));
            }
            answered
        };
        let (singles, batches) = tokio::join!(singles, batches);
        assert_eq!(singles, (1..=SINGLES).collect::<Vec<_>>());
        let total = (BATCHES * SIZE + SINGLES) as usize;
        let mut seen = Vec::new();
        for client in &mut clients {
            seen.push(receive(client, total).await);
        }
        assert!(
            seen.iter().all(|node| *node == seen[0]),
            "every node delivers the same messages with the same numbers, in the same order"
        );
        let stream = &seen[0];
        let seqs: Vec<u64> = stream
            .iter()
            .map(|got| got["seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "one seq per publish, cluster-wide: {seqs:?}"
        );
        for (k, offsets) in batches.iter().enumerate() {
            let at = stream
                .iter()
                .position(|got| got["data"]["k"] == k && got["data"]["i"] == 0)
                .unwrap_or_else(|| panic!("batch {k} was delivered"));
            let run = &stream[at..at + SIZE as usize];
            for (i, got) in run.iter().enumerate() {
                let data = json!({"k": k, "i": i, "pad": pad});
                assert_message(got, "nr.batch", offsets[i], &data);
            }
        }
        let singles: Vec<u64> = stream
            .iter()
            .filter(|got| got["channel"] == "nr.single")
            .map(|got| got["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(singles, (1..=SINGLES).collect::<Vec<_>>());
        drop((a, b, c));
    })
    .await
}

#[tokio::test]
async fn a_batch_redis_refuses_for_want_of_memory_is_refused_whole_and_takes_no_numbers() {
    watchdog(async {
        let redis = Redis::start();
        let a = node(&redis).await;
        let mut on_a = Client::connect(&a).await;
        subscribe(&mut on_a, "om.1").await;
        a.publish("om.1", &json!(1)).await;
        let first = on_a.recv().await;
        assert_message(&first, "om.1", 1, &json!(1));

        // Between two presence refreshes (which Redis would refuse too), so the refusal is
        // the batch script's own: Redis checks memory at a script's first write.
        after_presence_refresh(&a).await;
        let set = redis_command(&redis, "CONFIG SET maxmemory 1");
        assert_eq!(set, "+OK\r\n");
        let body = batch_body("om.1", (10..15).map(|data| json!(data)));
        let (answer, took) = publish_batch_timed(&a, "om.1", &body).await;
        let set = redis_command(&redis, "CONFIG SET maxmemory 0");
        assert_eq!(set, "+OK\r\n");
        assert_eq!(
            answer,
            Err(Answer::Unavailable),
            "OOM: refused before it ran"
        );
        assert_at_once(took, "a batch Redis refused");
        let cluster = a.stats().await["cluster"].clone();
        assert_eq!(
            (
                cluster["connected"].clone(),
                cluster["publishes_unavailable_total"].clone()
            ),
            (json!(true), json!(5)),
            "Redis answered the refusal; the connection stands: {cluster}"
        );

        a.publish("om.1", &json!(2)).await;
        let next = on_a.recv().await;
        assert_message(&next, "om.1", 2, &json!(2));
        assert_eq!(
            next["seq"].as_u64(),
            first["seq"].as_u64().map(|seq| seq + 1),
            "the refused batch took no seq"
        );
        on_a.expect_silence("nothing of the refused batch").await;
    })
    .await
}

#[tokio::test]
async fn a_batch_script_that_fails_while_running_is_unknown_and_delivers_none_of_it() {
    watchdog(async {
        let redis = Redis::start();
        let a = node(&redis).await;
        let mut on_a = Client::connect(&a).await;
        subscribe(&mut on_a, "rt.*").await;
        a.publish("rt.ok", &json!(1)).await;
        assert_message(&on_a.recv().await, "rt.ok", 1, &json!(1));

        // Something other than corecast breaks a channel's counter: the batch's script fails
        // at that message's offset, after the messages before it took theirs.
        let set = redis_command(&redis, "HSET {corecast}:offsets rt.bad oops");
        assert_eq!(set, ":1\r\n");
        let body = json!({"messages": [
            {"channel": "rt.ok", "data": 2},
            {"channel": "rt.ok", "data": 3},
            {"channel": "rt.bad", "data": 4},
        ]})
        .to_string();
        let (answer, took) = publish_batch_timed(&a, "rt.ok", &body).await;
        assert_eq!(
            answer,
            Err(Answer::Unknown),
            "the script failed while running"
        );
        assert_at_once(took, "a batch whose script failed");
        on_a.expect_silence("none of the failed batch is delivered")
            .await;
        let del = redis_command(&redis, "HDEL {corecast}:offsets rt.bad");
        assert_eq!(del, ":1\r\n");

        assert_eq!(a.publish("rt.ok", &json!(5)).await, 4);
        let gap = on_a.recv().await;
        assert_eq!(
            gap,
            json!({"type": "gap", "channel": "rt.ok", "from": 2, "to": 3}),
            "the offsets the failed batch took are announced as lost, never delivered"
        );
        assert_message(&on_a.recv().await, "rt.ok", 4, &json!(5));
        on_a.expect_silence("nothing else").await;
        assert_eq!(
            a.stats().await["cluster"]["publishes_outcome_unknown_total"],
            3
        );
    })
    .await
}

#[tokio::test]
async fn a_user_on_two_nodes_gets_its_stream_and_every_node_acts_on_it() {
    watchdog(async {
        let redis = Redis::start();
        let (a, b) = (node(&redis).await, node(&redis).await);
        let mut ada_a = Client::connect_path(&a, "/ws?user=ada").await;
        let mut ada_b = Client::connect_path(&b, "/ws?user=ada").await;
        let mut bob_b = Client::connect_path(&b, "/ws?user=bob").await;

        // A publish to ada on node a reaches her on both nodes, numbered once for the cluster.
        for n in 1..=3 {
            let server = if n == 2 { &b } else { &a };
            let reply = server
                .post(
                    "/v1/publish",
                    &json!({"user": "ada", "data": n}).to_string(),
                )
                .await;
            assert_eq!(reply.json(), json!({"user": "ada", "offset": n}));
        }
        for ada in [&mut ada_a, &mut ada_b] {
            for n in 1..=3 {
                assert_message(&ada.recv().await, "$user", n, &json!(n));
            }
        }
        // Ada's connection to b drops; she misses two, published through b, and back she
        // recovers exactly them.
        let epoch = ada_b.hello["epoch"].clone();
        drop(ada_b);
        for n in 4..=5 {
            b.post(
                "/v1/publish",
                &json!({"user": "ada", "data": n}).to_string(),
            )
            .await;
        }
        assert_message(&ada_a.recv().await, "$user", 4, &json!(4));
        assert_message(&ada_a.recv().await, "$user", 5, &json!(5));
        let mut ada_b = Client::connect_path(&b, "/ws?user=ada").await;
        let reply = ada_b
            .request(json!({"type": "subscribe", "channel": "$user", "id": 1,
                            "since": {"epoch": epoch, "offset": 3}}))
            .await;
        assert_eq!(reply["recovered"], true, "{reply}");
        for n in 4..=5 {
            assert_message(&ada_b.recv().await, "$user", n, &json!(n));
        }
        ada_b.expect_silence("recovered once, nothing twice").await;

        // Subscribed from node b's API, on both nodes.
        let reply = b
            .post(
                "/v1/users/subscribe",
                &json!({"user": "ada", "channel": "quotes.*"}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        for ada in [&mut ada_a, &mut ada_b] {
            let got = ada.recv().await;
            assert_eq!(
                (&got["type"], &got["channel"], &got["server"]),
                (&json!("subscribed"), &json!("quotes.*"), &json!(true)),
                "{got}"
            );
        }
        let offset = a.publish("quotes.1", &json!("q")).await;
        for ada in [&mut ada_a, &mut ada_b] {
            assert_message(&ada.recv().await, "quotes.1", offset, &json!("q"));
        }

        // Disconnected from node a's API, on both nodes; bob stays.
        let reply = a
            .post(
                "/v1/users/disconnect",
                &json!({"user": "ada", "reason": "bye"}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        for ada in [&mut ada_a, &mut ada_b] {
            assert_eq!(
                ada.expect_close(Duration::from_secs(5)).await,
                (4010, "bye".to_owned())
            );
        }
        bob_b.ping(1).await;
    })
    .await
}

#[tokio::test]
async fn nodes_reach_a_tls_redis_through_rediss_with_the_configured_ca_and_client_certificate() {
    watchdog(async {
        let pki = Pki::new("tls");
        let redis = Redis::start_tls(&pki, true);
        let url = format!("rediss://localhost:{}", redis.port);
        let (ca, cert, key) = (
            pki.file("ca.pem"),
            pki.file("client.pem"),
            pki.file("client.key"),
        );
        let tls = [
            "--redis",
            url.as_str(),
            "--redis-ca-file",
            &ca,
            "--redis-cert-file",
            &cert,
            "--redis-key-file",
            &key,
            "--sys-stats-interval-ms",
            "0",
        ];
        let (a, b) = (Server::start(&tls).await, Server::start(&tls).await);
        for node in [&a, &b] {
            let stats = node
                .poll_json("/v1/stats", |stats| stats["cluster"]["connected"] == true)
                .await;
            assert_eq!(stats["cluster"]["connected"], true, "{stats}");
        }
        let mut on_b = Client::connect(&b).await;
        subscribe(&mut on_b, "tls.1").await;
        let offset = a.publish("tls.1", &json!("over TLS")).await;
        assert_message(&on_b.recv().await, "tls.1", offset, &json!("over TLS"));

        // Without its client certificate, or trusting another CA, a node never gets through:
        // it says so, and refuses publishes as certainly not published.
        let other = Pki::new("tls-other");
        let other_ca = other.file("ca.pem");
        for args in [
            vec!["--redis", url.as_str(), "--redis-ca-file", ca.as_str()],
            vec![
                "--redis",
                url.as_str(),
                "--redis-ca-file",
                other_ca.as_str(),
                "--redis-cert-file",
                cert.as_str(),
                "--redis-key-file",
                key.as_str(),
            ],
        ] {
            let refused = Server::start(&args).await;
            let reply = refused
                .post(
                    "/v1/publish",
                    &json!({"channel": "tls.1", "data": 1}).to_string(),
                )
                .await;
            assert_eq!(reply.status, 503, "{args:?}: {}", reply.body);
            assert_eq!(
                common::assert_http_error_body(&reply, "publish without a TLS link"),
                "cluster_unavailable"
            );
            let stats = refused.get("/v1/stats").await.json();
            assert_eq!(stats["cluster"]["connected"], false, "{args:?}: {stats}");
        }
        on_b.expect_silence("nothing from the refused nodes").await;
    })
    .await
}

#[test]
fn tls_files_for_redis_are_checked_at_start_up() {
    let pki = Pki::new("tls-start");
    let ca = pki.file("ca.pem");
    for (args, says) in [
        (
            vec![
                "--redis",
                "redis://127.0.0.1:1",
                "--redis-ca-file",
                ca.as_str(),
            ],
            "redis_ca_file is for TLS to Redis",
        ),
        (
            vec![
                "--redis",
                "rediss://localhost:1",
                "--redis-cert-file",
                ca.as_str(),
            ],
            "redis_cert_file and redis_key_file go together",
        ),
        (
            vec![
                "--redis",
                "rediss://localhost:1",
                "--redis-ca-file",
                "/nonexistent/ca.pem",
            ],
            "cannot read redis_ca_file /nonexistent/ca.pem",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_corecast"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("run corecast");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}

#[tokio::test]
async fn nodes_on_a_redis_cluster_find_the_master_of_their_slot_from_any_node() {
    watchdog(async {
        let cluster = RedisCluster::start();
        let (owner, others) = cluster.owner_and_others();
        // Seeded with a master that does not serve corecast's slot: the bridge finds the one
        // that does, so no script meets MOVED or CROSSSLOT.
        let seed = format!("redis://127.0.0.1:{}", others[0].port);
        let args = ["--redis", seed.as_str(), "--redis-cluster", "true"];
        let (a, b) = (Server::start(&args).await, Server::start(&args).await);
        for node in [&a, &b] {
            let stats = node
                .poll_json("/v1/stats", |stats| stats["cluster"]["connected"] == true)
                .await;
            assert_eq!(stats["cluster"]["connected"], true, "{stats}");
        }
        let mut on_b = Client::connect(&b).await;
        subscribe(&mut on_b, "rc.*").await;
        for n in 1..=3 {
            let offset = a.publish("rc.1", &json!(n)).await;
            assert_eq!(offset, n);
        }
        let offsets = a
            .publish_batch(&[("rc.1", json!(4)), ("rc.2", json!("b"))])
            .await;
        assert_eq!(offsets, [4, 1]);
        let mut seqs = Vec::new();
        for (channel, offset, data) in [
            ("rc.1", 1, json!(1)),
            ("rc.1", 2, json!(2)),
            ("rc.1", 3, json!(3)),
            ("rc.1", 4, json!(4)),
            ("rc.2", 1, json!("b")),
        ] {
            let got = on_b.recv().await;
            assert_message(&got, channel, offset, &data);
            seqs.push(got["seq"].as_u64().expect("a seq"));
        }
        assert!(
            seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "{seqs:?}"
        );
        assert_eq!(cli(owner.port, &["GET", "{corecast}:seq"]), "5");
        assert_eq!(
            cli(others[0].port, &["DBSIZE"]),
            "0",
            "every key is in one slot"
        );

        // The slot's master killed, with no replica to take over: publishes get a clear
        // refusal, and nothing reaches the subscriber.
        owner.signal("KILL");
        let refused = a
            .poll_json("/v1/stats", |stats| stats["cluster"]["connected"] == false)
            .await;
        assert_eq!(refused["cluster"]["connected"], false, "{refused}");
        let reply = a
            .post(
                "/v1/publish",
                &json!({"channel": "rc.1", "data": 5}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        on_b.expect_silence("nothing is published without the slot's master")
            .await;
    })
    .await
}

#[tokio::test]
async fn a_redis_that_lost_messages_it_had_numbered_starts_a_new_epoch_that_clients_learn() {
    watchdog(async {
        let redis = Redis::start();
        let (a, b) = (node(&redis).await, node(&redis).await);
        let mut on_b = Client::connect(&b).await;
        let epoch = on_b.hello["epoch"].as_str().expect("an epoch").to_owned();
        subscribe(&mut on_b, "lost.1").await;
        for n in 1..=5 {
            a.publish("lost.1", &json!(n)).await;
            assert_message(&on_b.recv().await, "lost.1", n, &json!(n));
        }
        // As after a failover to a replica that lagged, or a restart from an older save: the
        // same epoch, but the last three messages gone. Every node notices at its next
        // connect (dropped here), and the epoch ends rather than numbers repeat.
        assert_eq!(redis_command(&redis, "SET {corecast}:seq 2").trim(), "+OK");
        assert!(redis_command(&redis, "CLIENT KILL TYPE normal").starts_with(':'));
        assert!(redis_command(&redis, "CLIENT KILL TYPE pubsub").starts_with(':'));
        let (code, reason) = on_b.expect_close(Duration::from_secs(15)).await;
        assert_eq!(code, 1012, "{reason}");
        for node in [&a, &b] {
            let stats = node
                .poll_json("/v1/stats", |stats| {
                    stats["epoch"] != epoch.as_str() && stats["cluster"]["connected"] == true
                })
                .await;
            assert_ne!(stats["epoch"], epoch.as_str(), "{stats}");
        }
        let mut again = Client::connect(&b).await;
        let reply = again
            .request(json!({"type": "subscribe", "channel": "lost.1", "id": 2,
                            "since": {"epoch": epoch, "offset": 5}}))
            .await;
        assert_eq!(
            (reply["recovered"].clone(), reply["reason"].clone()),
            (json!(false), json!("epoch_changed")),
            "{reply}"
        );
        let offset = a.publish("lost.1", &json!("new")).await;
        assert_eq!(offset, 1, "the new epoch numbers from 1");
        assert_message(&again.recv().await, "lost.1", 1, &json!("new"));
    })
    .await
}

#[tokio::test]
async fn nodes_follow_a_sentinel_failover_with_every_publish_accounted_for() {
    watchdog(async {
        let master = Redis::start();
        let replica_port = free_port();
        let replica = Redis::start_with(
            replica_port,
            &[
                "--port".to_owned(),
                replica_port.to_string(),
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                master.port.to_string(),
            ],
        );
        wait_cli(replica.port, &["INFO", "replication"], |info| {
            info.contains("master_link_status:up")
        });
        let (first, second) = (Sentinel::start(master.port), Sentinel::start(master.port));
        for sentinel in [&first, &second] {
            wait_cli(
                sentinel.port(),
                &["SENTINEL", "replicas", "corecast"],
                |replicas| replicas.contains(&replica.port.to_string()),
            );
        }
        let sentinels = [
            format!("redis://127.0.0.1:{}", first.port()),
            format!("redis://127.0.0.1:{}", second.port()),
        ];
        let args = [
            "--redis",
            "redis://127.0.0.1:1",
            "--redis-sentinel",
            &sentinels[0],
            "--redis-sentinel",
            &sentinels[1],
            "--redis-sentinel-master",
            "corecast",
        ];
        let (a, b) = (Server::start(&args).await, Server::start(&args).await);
        for node in [&a, &b] {
            let stats = node
                .poll_json("/v1/stats", |stats| stats["cluster"]["connected"] == true)
                .await;
            assert_eq!(stats["cluster"]["connected"], true, "{stats}");
        }
        let mut on_b = Client::connect(&b).await;
        let epoch = on_b.hello["epoch"].as_str().expect("an epoch").to_owned();
        subscribe(&mut on_b, "sn.1").await;
        for n in 1..=3 {
            a.publish("sn.1", &json!(n)).await;
            assert_message(&on_b.recv().await, "sn.1", n, &json!(n));
        }

        // One sentinel dies; the other runs the failover, and the nodes, asking it, follow.
        drop(first);
        assert!(cli(second.port(), &["SENTINEL", "FAILOVER", "corecast"]).contains("OK"));
        wait_cli(
            second.port(),
            &["SENTINEL", "get-master-addr-by-name", "corecast"],
            |addr| addr.contains(&replica.port.to_string()),
        );
        assert_eq!(second.master_port(), replica.port.to_string());
        // Publish through the switch until the new master numbers them. Until the old master
        // is told it is a replica it takes writes, which the resync to the new one then
        // discards: the nodes, seeing the new master hold less than they have, end the epoch.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut published = Vec::new();
        let mut n = 4;
        loop {
            assert!(
                Instant::now() < deadline,
                "the nodes did not publish through the new master"
            );
            let reply = a
                .post(
                    "/v1/publish",
                    &json!({"channel": "sn.1", "data": n}).to_string(),
                )
                .await;
            match reply.status {
                200 => published.push(n),
                503 | 504 => {}
                other => panic!("unexpected {other}: {}", reply.body),
            }
            n += 1;
            let numbered: u64 = cli(replica.port, &["GET", "{corecast}:seq"])
                .parse()
                .unwrap_or(0);
            let stats = a.get("/v1/stats").await.json();
            if numbered >= 1 && (stats["epoch"] != epoch.as_str() || numbered > 3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // What the subscriber got, and whether it was told its positions are void: a close
        // 1012 (a new epoch), after which a resubscribe says `recovered:false`.
        let mut got = Vec::new();
        let mut told = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(2), on_b.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let message: Value = serde_json::from_str(text.as_str()).expect("JSON");
                    assert_eq!(message["type"], "message", "{message}");
                    got.push(message["data"].as_u64().expect("a number"));
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let code = frame.map(|frame| u16::from(frame.code));
                    assert_eq!(code, Some(1012), "only a new epoch closes it");
                    told = true;
                    break;
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => panic!("the subscriber's connection failed: {other:?}"),
                Err(_) => break,
            }
        }
        let stats = b
            .poll_json("/v1/stats", |stats| stats["cluster"]["connected"] == true)
            .await;
        assert_eq!(
            stats["epoch"] != epoch.as_str(),
            told,
            "the subscriber is closed exactly when its node starts a new epoch: {stats}"
        );
        if told {
            on_b = Client::connect(&b).await;
            let reply = on_b
                .request(json!({"type": "subscribe", "channel": "sn.1", "id": 2,
                                "since": {"epoch": epoch, "offset": 3}}))
                .await;
            assert_eq!(reply["recovered"], false, "{reply}");
        }
        for data in &published {
            assert!(
                got.contains(data) || told,
                "{data} was published, never delivered, and the subscriber was not told: \
                 got {got:?}"
            );
        }
        // And past the switch, every publish reaches it again.
        for data in ["after-1", "after-2"] {
            let offset = a.publish("sn.1", &json!(data)).await;
            assert_message(&on_b.recv().await, "sn.1", offset, &json!(data));
        }
    })
    .await
}

#[tokio::test]
async fn a_redis_stopped_for_ten_seconds_costs_the_shards_nothing_and_every_publish_is_told() {
    watchdog(async {
        let redis = Redis::start();
        let a = node_with(&redis, &REDIS_TIMEOUT_FLAG).await;
        let b = node_with(&redis, &REDIS_TIMEOUT_FLAG).await;
        let mut on_b = Client::connect(&b).await;
        let mut pinger = Client::connect(&b).await;
        subscribe(&mut on_b, "ten.1").await;
        let mut answers = Vec::new();
        let (answer, _) = publish_timed(&a, "ten.1", 1).await;
        assert_eq!(answer, Answer::Published { offset: 1 });
        answers.push((1, answer));

        let paused = redis.pause();
        let stopped = Instant::now();
        let mut data = 2;
        while stopped.elapsed() < Duration::from_secs(10) {
            let (answer, took) = publish_timed(&a, "ten.1", data).await;
            assert!(
                matches!(answer, Answer::Unknown | Answer::Unavailable),
                "publish of {data} while Redis is stopped: {answer:?}"
            );
            assert!(
                took < REDIS_TIMEOUT + SLACK,
                "answered within its time: {took:?}"
            );
            answers.push((data, answer));
            data += 1;
            // The shards serve their connections meanwhile: a command is answered at once.
            let asked = Instant::now();
            pinger.ping(data).await;
            assert!(
                asked.elapsed() < Duration::from_millis(500),
                "{:?}",
                asked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        paused.resume();
        a.poll_json("/v1/stats", |stats| stats["cluster"]["connected"] == true)
            .await;
        let (answer, _) = publish_timed(&a, "ten.1", data).await;
        assert!(
            matches!(answer, Answer::Published { .. }),
            "after: {answer:?}"
        );
        answers.push((data, answer));
        let seen = deliveries(&mut on_b, "ten.1", data).await;
        assert_delivered_truly(&seen, &answers);
    })
    .await
}

/// The `conn_id`s of a presence answer's members or a diff's list, sorted (two nodes may give
/// the same `conn_id`: each is unique on its node only).
fn conn_ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("expected a list of members, got {list}"))
        .iter()
        .map(|member| member["conn_id"].as_str().expect("a conn_id").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn presence_counts_every_node_diffs_cross_nodes_and_a_killed_nodes_members_go_in_time() {
    watchdog(async {
        let redis = Redis::start();
        let path =
            std::env::temp_dir().join(format!("corecast-presence-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "presence_diff_interval_ms = 300\n[[namespaces]]\npattern = \"room.*\"\n\
             presence = true\njoin_leave = true\n",
        )
        .expect("write the config");
        let config = ["--config", path.to_str().expect("a UTF-8 path")];
        let (a, b) = (
            node_with(&redis, &config).await,
            node_with(&redis, &config).await,
        );
        let mut watcher = Client::connect_path(&a, "/ws?channels=room.1").await;
        let id = |client: &Client| client.hello["conn_id"].as_str().unwrap().to_owned();
        let on_a = Client::connect_path(&a, "/ws?user=ua&channels=room.1").await;
        let mut on_b = Vec::new();
        for _ in 0..2 {
            on_b.push(Client::connect_path(&b, "/ws?user=ub&channels=room.1").await);
        }
        let mut left = vec![id(&watcher), id(&on_a)];
        left.sort();
        let mut expected: Vec<String> = left.iter().cloned().chain(on_b.iter().map(id)).collect();
        expected.sort();

        // Node a's answer holds node b's members once b's refresh wrote them (1 s).
        let body = a
            .poll_json("/v1/presence?channel=room.1", |body| {
                body["connections"] == json!(4)
            })
            .await;
        assert_eq!(body["connections"], json!(4), "both nodes' members: {body}");
        assert_eq!(conn_ids(&body["members"]), expected);
        assert_eq!(body["users"], json!(2), "ua and ub: {body}");

        // The watcher on a got b's joins through Redis, batched.
        let mut joined = Vec::new();
        let deadline = tokio::time::Instant::now() + STEP;
        while joined.len() < 4 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = watcher.recv_within(left).await else {
                break;
            };
            assert_eq!(frame["type"], json!("presence_diff"), "{frame}");
            joined.extend(conn_ids(&frame["joined"]));
        }
        joined.sort();
        assert_eq!(
            joined, expected,
            "every join of both nodes reached the watcher"
        );

        // Node b dies without a word: its members are gone from a's answer within the expiry.
        let killed = Instant::now();
        drop(b);
        drop(on_b);
        let deadline = killed + Duration::from_secs(7);
        let body = loop {
            let body = a.get("/v1/presence?channel=room.1").await.json();
            if body["connections"] == json!(2) || Instant::now() > deadline {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let gone = killed.elapsed();
        assert_eq!(body["connections"], json!(2), "b's members gone: {body}");
        assert!(
            gone <= Duration::from_secs(6),
            "b's members went after {gone:?}, past NODE_TTL_S = 5 s"
        );
        assert_eq!(conn_ids(&body["members"]), left);
    })
    .await;
}

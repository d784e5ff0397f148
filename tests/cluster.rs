//! Cluster mode against a real `redis-server` (started here on a free port; `.ci/deps` installs
//! Debian's package, and without it these tests fail, they never skip) and three real nodes:
//! a publish on one node reaches subscribers on the others with identical offsets and seqs, in
//! the same order; a client that moves from one node to another recovers with no gap; and when
//! Redis dies and comes back empty mid-stream, publishes fail with 503 meanwhile, every client
//! is closed with 1012, and on reconnecting it is told exactly `recovered:false`,
//! `epoch_changed`, after which delivery goes on.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_message, watchdog, Client, Server, STEP};
use serde_json::{json, Value};

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
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
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
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node of the cluster and waits until it has synced with Redis.
async fn node(redis: &Redis) -> Server {
    let url = redis.url();
    let server = Server::start(&["--redis", &url, "--sys-stats-interval-ms", "0"]).await;
    let stats = server
        .poll_json("/v1/stats", |stats| stats["cluster"]["seq"].is_u64())
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
        // Both nodes are back on the new epoch before a publish can reach this one.
        a.poll_json("/v1/stats", |stats| stats["epoch"] == new_epoch.as_str())
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

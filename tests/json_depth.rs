//! Pins down `json_depth_max` against the real server: the deepest JSON every size limit allows
//! (a 64 KiB frame, a 1 MiB control-plane body), in every place a value goes, gets the exact
//! `bad_request` / 400 naming the limit while the connection stays open, on both shards; a
//! document exactly at the limit is accepted and delivered byte for byte; and a subscriber on
//! the same server receives all 200 messages published meanwhile, in order, offset by offset.
//!
//! The boundary: every `[` or `{` open at once counts, the document's own outermost one too.
//! A command or a body may nest 128 levels (the default), so a command's or a `/v1/publish`
//! body's `data` may nest 127 and a batch entry's 125 (`{"messages":[{"data":..}]}`).

mod common;

use common::{assert_error, watchdog, Client, Server, STEP};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The server's default `json_depth_max`, which this test leaves as it is.
const DEPTH_MAX: usize = 128;
/// The default `frame_bytes_max` and `publish_body_bytes_max`.
const FRAME_BYTES_MAX: usize = 64 * 1024;
const BODY_BYTES_MAX: usize = 1024 * 1024;

/// `depth` nested arrays.
fn arrays(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

/// `head`, then as many nested arrays as fit in `bytes` with `tail` after them.
fn deepest(head: &str, tail: &str, bytes: usize) -> String {
    let text = format!(
        "{head}{}{tail}",
        arrays((bytes - head.len() - tail.len()) / 2)
    );
    assert!(
        text.len() > bytes - 2 && text.len() <= bytes,
        "{} bytes",
        text.len()
    );
    text
}

/// The byte at which `doc` (whose strings hold no brackets) opens level `DEPTH_MAX + 1`.
fn first_too_deep(doc: &str) -> usize {
    let mut depth = 0;
    for (at, byte) in doc.bytes().enumerate() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                if depth > DEPTH_MAX {
                    return at;
                }
            }
            b']' | b'}' => depth -= 1,
            _ => {}
        }
    }
    panic!("{} bytes nest at most {DEPTH_MAX} levels", doc.len())
}

/// What a too-deep document is told, after the parser's own words.
fn too_deep(doc: &str) -> String {
    format!(
        "nested deeper than json_depth_max = {DEPTH_MAX} (at byte {})",
        first_too_deep(doc)
    )
}

/// Sends `doc` and asserts the exact refusal: no id (a too-deep command is not searched for
/// one), `bad_request`, the limit and the byte; then that the connection still answers.
async fn refused_on_the_socket(client: &mut Client, doc: &str, ping_id: u64) {
    client.send_text(doc).await;
    let reply = client.recv().await;
    assert_error(&reply, Value::Null, "bad_request");
    assert_eq!(
        reply["message"],
        format!("not a valid command: {}", too_deep(doc)),
        "{} bytes starting {:?}",
        doc.len(),
        &doc[..40]
    );
    client.ping(ping_id).await;
}

/// A delivery, with `data` as its raw text: serde_json reads a `Value` at most 127 levels
/// deep, one less than a delivery of `data` at the limit holds.
#[derive(Debug, Deserialize)]
struct Delivery<'a> {
    r#type: &'a str,
    channel: &'a str,
    offset: u64,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The next frame on `client` is the delivery of `data` (raw JSON) on `channel` at `offset`.
async fn delivered_raw(client: &mut Client, channel: &str, offset: u64, data: &str) {
    let text = loop {
        match tokio::time::timeout(STEP, client.ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => break text,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected the delivery on {channel}, got {other:?}"),
        }
    };
    let delivery: Delivery = serde_json::from_str(text.as_str()).expect("a delivery");
    assert_eq!(
        (delivery.r#type, delivery.channel, delivery.offset),
        ("message", channel, offset)
    );
    assert_eq!(delivery.data.get(), data, "data delivered byte for byte");
}

/// Connects clients until one is on `shard` (the kernel spreads connections over both
/// shards' listeners).
async fn client_on_shard(server: &Server, shard: u64) -> Client {
    for _ in 0..64 {
        let client = Client::connect(server).await;
        if client.shard() == shard {
            return client;
        }
    }
    panic!("64 connections in a row missed shard {shard}")
}

#[tokio::test]
async fn the_deepest_json_every_limit_allows_is_refused_and_nobody_else_notices() {
    watchdog(async {
        let server = Server::start(&["--client-publish", "deep.>"]).await;
        let mut subscriber = Client::connect(&server).await;
        subscriber.subscribe("calm.feed", 1).await;
        let datas: Vec<Value> = (1..=200).map(|n| json!({"n": n})).collect();
        let hostile = async {
            // A 64 KiB frame, the most `frame_bytes_max` takes, nested in every place a value
            // can sit, and as broken JSON (the path that salvages an id), on each shard.
            let socket_docs = [
                deepest(r#"{"type":"ping","id":"#, "}", FRAME_BYTES_MAX),
                deepest(
                    r#"{"type":"publish","channel":"deep.s","id":7,"data":"#,
                    "}",
                    FRAME_BYTES_MAX,
                ),
                deepest(r#"{"type":"ping","id":8,"extra":"#, "}", FRAME_BYTES_MAX),
                deepest(
                    r#"{"type":"subscribe","channel":"deep.s","id":9,"since":"#,
                    "}",
                    FRAME_BYTES_MAX,
                ),
                deepest("", "", FRAME_BYTES_MAX),
                {
                    let head = r#"{"type":"ping","id":10,"x":"#;
                    head.to_owned() + &"[".repeat(FRAME_BYTES_MAX - head.len())
                },
            ];
            for shard in [0, 1] {
                let mut client = client_on_shard(&server, shard).await;
                for (at, doc) in socket_docs.iter().enumerate() {
                    assert!(doc.len() <= FRAME_BYTES_MAX);
                    refused_on_the_socket(&mut client, doc, 100 + at as u64).await;
                }
            }

            // The deepest body `publish_body_bytes_max` takes, on both publish routes.
            for (path, doc) in [
                (
                    "/v1/publish",
                    deepest(r#"{"channel":"deep.h","data":"#, "}", BODY_BYTES_MAX),
                ),
                (
                    "/v1/publish/batch",
                    deepest(
                        r#"{"messages":[{"channel":"deep.h","data":"#,
                        "}]}",
                        BODY_BYTES_MAX,
                    ),
                ),
            ] {
                let reply = server.post(path, &doc).await;
                assert_eq!(
                    (reply.status, reply.json()),
                    (
                        400,
                        json!({"error": {
                            "code": "bad_request",
                            "message": format!("invalid JSON body: {}", too_deep(&doc)),
                        }})
                    ),
                    "{path} with {} bytes",
                    doc.len()
                );
            }
        };
        let (offsets, ()) = tokio::join!(server.publish_many("calm.feed", datas), hostile);

        // The subscriber got every message published meanwhile, exactly and in order.
        assert_eq!(offsets, (1..=200).collect::<Vec<u64>>());
        for n in 1..=200u64 {
            let got = subscriber.recv().await;
            common::assert_message(&got, "calm.feed", n, &json!({"n": n}));
        }
        subscriber.expect_silence("nothing but the 200").await;
    })
    .await;
}

#[tokio::test]
async fn a_document_exactly_at_the_limit_is_accepted_one_level_more_is_not() {
    watchdog(async {
        let server = Server::start(&["--client-publish", "deep.>"]).await;
        let mut subscriber = Client::connect(&server).await;
        subscriber.subscribe("deep.>", 1).await;
        let mut publisher = Client::connect(&server).await;

        // Over the socket: the command's `{` is level 1, so `data` may nest 127.
        let at_limit = arrays(DEPTH_MAX - 1);
        let command =
            format!(r#"{{"type":"publish","channel":"deep.s","id":5,"data":{at_limit}}}"#);
        publisher.send_text(&command).await;
        let reply = publisher.recv().await;
        assert_eq!(
            reply,
            json!({"type": "published", "id": 5, "channel": "deep.s", "offset": 1})
        );
        delivered_raw(&mut subscriber, "deep.s", 1, &at_limit).await;
        let over = format!(
            r#"{{"type":"publish","channel":"deep.s","id":6,"data":{}}}"#,
            arrays(DEPTH_MAX)
        );
        refused_on_the_socket(&mut publisher, &over, 2).await;

        // `/v1/publish`: the body's `{` is level 1, so `data` may nest 127 here too.
        let body = json_body("deep.h", &at_limit);
        let reply = server.post("/v1/publish", &body).await;
        assert_eq!(
            (reply.status, reply.json()),
            (200, json!({"channel": "deep.h", "offset": 1}))
        );
        delivered_raw(&mut subscriber, "deep.h", 1, &at_limit).await;
        let body = json_body("deep.h", &arrays(DEPTH_MAX));
        let reply = server.post("/v1/publish", &body).await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert_eq!(
            reply.json()["error"]["message"],
            format!("invalid JSON body: {}", too_deep(&body))
        );

        // A batch entry sits three levels down (`{`, `[`, `{`): its `data` may nest 125.
        let batch_limit = arrays(DEPTH_MAX - 3);
        let body = format!(r#"{{"messages":[{}]}}"#, json_body("deep.h", &batch_limit));
        let reply = server.post("/v1/publish/batch", &body).await;
        assert_eq!(
            (reply.status, reply.json()),
            (
                200,
                json!({"results": [{"channel": "deep.h", "offset": 2}]})
            )
        );
        delivered_raw(&mut subscriber, "deep.h", 2, &batch_limit).await;
        let body = format!(
            r#"{{"messages":[{}]}}"#,
            json_body("deep.h", &arrays(DEPTH_MAX - 2))
        );
        let reply = server.post("/v1/publish/batch", &body).await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert_eq!(
            reply.json()["error"]["message"],
            format!("invalid JSON body: {}", too_deep(&body))
        );
        subscriber.expect_silence("nothing past the limit").await;
    })
    .await;
}

/// `{"channel":..,"data":..}` with `data` as raw JSON.
fn json_body(channel: &str, data: &str) -> String {
    format!(r#"{{"channel":"{channel}","data":{data}}}"#)
}

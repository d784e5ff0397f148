//! Presence against the real binary on two shards (PROTOCOL.md section 5): the exact members
//! and counts of `GET /v1/presence` and the `presence` command over both shards, truncation at
//! `presence_members_max`, `members=false`, `presence_disabled`, `not_subscribed`, members
//! leaving on close and unsubscribe, tenant isolation (keys and sockets see only their own
//! tenant's members), and `join_leave` diffs batched into one frame per interval. Each test
//! compares the exact set of `conn_id`s the clients were given in `connected`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{assert_error, assert_http_error_body, watchdog, Client, Server, STEP};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "presence-test-secret";
const OPERATOR_KEY: &str = "operator-key-0123456789";
const ACME_KEY: &str = "acme-key-0123456789abcdef";

/// A server with `room.*` tracking presence (with diffs when `join_leave`), `doc.*` tracking
/// it without, and `extra` TOML before the namespaces.
async fn server(extra: &str, join_leave: bool) -> Server {
    let toml = format!(
        "{extra}\n[[namespaces]]\npattern = \"room.*\"\npresence = true\njoin_leave = \
         {join_leave}\n[[namespaces]]\npattern = \"doc.*\"\npresence = true\n"
    );
    let path = std::env::temp_dir().join(format!(
        "corecast-presence-{}-{:x}.toml",
        std::process::id(),
        toml.len() * 31 + usize::from(join_leave) + extra.len() * 7
    ));
    std::fs::write(&path, toml).expect("write the config");
    Server::start(&["--config", path.to_str().expect("a UTF-8 path")]).await
}

fn conn_id(client: &Client) -> String {
    client.hello["conn_id"]
        .as_str()
        .expect("connected has a conn_id")
        .to_owned()
}

/// Connects `?user=<user><n>&channels=<channel>` clients until both shards have at least
/// `per_shard` of them.
async fn spread(server: &Server, channel: &str, per_shard: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = Vec::new();
    for n in 0..200 {
        let on = |shard| clients.iter().filter(|c| c.shard() == shard).count();
        if on(0) >= per_shard && on(1) >= per_shard {
            return clients;
        }
        let path = format!("/ws?user=u{}&channels={channel}", n % 3);
        clients.push(Client::connect_path(server, &path).await);
    }
    panic!("expected 200 connections to land on both shards");
}

fn member_ids(body: &Value) -> BTreeSet<String> {
    body["members"]
        .as_array()
        .unwrap_or_else(|| panic!("expected members in {body}"))
        .iter()
        .map(|member| member["conn_id"].as_str().expect("a conn_id").to_owned())
        .collect()
}

/// Polls `GET /v1/presence?<query>` until its connections count is `connections`.
async fn presence_when(server: &Server, query: &str, connections: usize) -> Value {
    let path = format!("/v1/presence?{query}");
    let body = server
        .poll_json(&path, |body| body["connections"] == json!(connections))
        .await;
    assert_eq!(
        body["connections"],
        json!(connections),
        "expected {connections} connections from {path}, got {body}"
    );
    body
}

#[tokio::test]
async fn members_and_counts_are_exact_over_both_shards_and_leave_on_close_and_unsubscribe() {
    watchdog(async {
        let server = server("", false).await;
        let mut clients = spread(&server, "room.1", 2).await;
        let mut anonymous = Client::connect_path(&server, "/ws?channels=room.1").await;
        // Subscribers by a wildcard, or to another channel, are not members of room.1.
        let _wildcard = Client::connect_path(&server, "/ws?user=w&channels=room.*").await;
        let _elsewhere = Client::connect_path(&server, "/ws?user=x&channels=room.2").await;

        let mut expected: BTreeSet<String> = clients.iter().map(conn_id).collect();
        expected.insert(conn_id(&anonymous));
        let users = clients.len().min(3);
        let body = presence_when(&server, "channel=room.1", expected.len()).await;
        assert_eq!(member_ids(&body), expected, "every member of both shards");
        assert_eq!(body["channel"], json!("room.1"));
        assert_eq!(
            body["users"],
            json!(users),
            "users counted once each: {body}"
        );
        assert!(body.get("truncated").is_none(), "{body}");
        let mine = body["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|member| member["conn_id"] == json!(conn_id(&anonymous)))
            .unwrap();
        assert_eq!(
            mine,
            &json!({"user": null, "conn_id": conn_id(&anonymous), "info": null}),
            "an anonymous member has user null"
        );

        // The socket command answers the same object, with its type and id.
        let reply = anonymous
            .request(json!({"type": "presence", "channel": "room.1", "id": 7}))
            .await;
        assert_eq!(reply["type"], json!("presence"), "{reply}");
        assert_eq!(reply["id"], json!(7));
        assert_eq!(reply["connections"], json!(expected.len()));
        assert_eq!(reply["users"], json!(users));
        assert_eq!(member_ids(&reply), expected);

        // One member closes, another unsubscribes: both leave.
        let closed = clients.pop().unwrap();
        expected.remove(&conn_id(&closed));
        drop(closed);
        let leaving = clients.last_mut().unwrap();
        leaving.unsubscribe("room.1", 2).await;
        expected.remove(&conn_id(leaving));
        let body = presence_when(&server, "channel=room.1", expected.len()).await;
        assert_eq!(member_ids(&body), expected);

        // Counts only.
        let body = server
            .get("/v1/presence?channel=room.1&members=false")
            .await;
        assert_eq!(body.status, 200);
        let body = body.json();
        let connections = expected.len();
        assert_eq!(
            body,
            json!({"channel": "room.1", "connections": connections, "users": body["users"]})
        );
    })
    .await;
}

#[tokio::test]
async fn past_presence_members_max_the_list_is_cut_and_says_truncated() {
    watchdog(async {
        let server = server("presence_members_max = 3", false).await;
        let clients = spread(&server, "doc.a", 2).await;
        let all: BTreeSet<String> = clients.iter().map(conn_id).collect();
        let body = presence_when(&server, "channel=doc.a", clients.len()).await;
        let listed = member_ids(&body);
        assert_eq!(listed.len(), 3, "presence_members_max members: {body}");
        assert!(listed.is_subset(&all));
        assert_eq!(body["truncated"], json!(true));
        let counts = server.get("/v1/presence?channel=doc.a&members=false").await;
        let counts = counts.json();
        assert!(counts.get("members").is_none() && counts.get("truncated").is_none());
        assert_eq!(counts["connections"], json!(clients.len()));
    })
    .await;
}

#[tokio::test]
async fn presence_outside_a_presence_namespace_or_unsubscribed_is_refused() {
    watchdog(async {
        let server = server("", false).await;
        let reply = server.get("/v1/presence?channel=leads.1").await;
        assert_eq!(reply.status, 400);
        assert_eq!(
            assert_http_error_body(&reply, "presence of leads.1"),
            "presence_disabled"
        );
        let reply = server.get("/v1/presence?channel=room.*").await;
        assert_eq!(reply.status, 400);
        assert_eq!(assert_http_error_body(&reply, "room.*"), "invalid_channel");
        let reply = server
            .get("/v1/presence?channel=room.1&members=maybe")
            .await;
        assert_eq!(
            assert_http_error_body(&reply, "members=maybe"),
            "bad_request"
        );
        let reply = server.get("/v1/presence").await;
        assert_eq!(assert_http_error_body(&reply, "no channel"), "bad_request");

        let mut client = Client::connect_path(&server, "/ws?channels=leads.1,room.1").await;
        let reply = client
            .request(json!({"type": "presence", "channel": "leads.1", "id": 1}))
            .await;
        assert_error(&reply, json!(1), "presence_disabled");
        let reply = client
            .request(json!({"type": "presence", "channel": "room.2", "id": 2}))
            .await;
        assert_error(&reply, json!(2), "not_subscribed");
        let reply = client
            .request(json!({"type": "presence", "channel": "room.>", "id": 3}))
            .await;
        assert_error(&reply, json!(3), "invalid_channel");
        let reply = client.request(json!({"type": "presence", "id": 4})).await;
        assert_error(&reply, json!(4), "bad_request");
    })
    .await;
}

/// A token of `sub` in `tenant` with an `info` claim.
fn token(tenant: &str, sub: &str) -> String {
    let claims = json!({
        "sub": sub, "exp": common::now_ms() / 1000 + 300, "tenant": tenant,
        "channels": [">"], "info": {"name": format!("{sub} of {tenant}")},
    });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("a token encodes")
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_members_by_key_and_by_socket() {
    watchdog(async {
        let keys = format!(
            "auth = \"jwt\"\njwt_secret = \"{SECRET}\"\n[[api_keys]]\nkey = \"{OPERATOR_KEY}\"\n\
             [[api_keys]]\nkey = \"{ACME_KEY}\"\ntenant = \"acme\""
        );
        let server = server(&keys, false).await;
        let connect = |tenant: &'static str, sub: &'static str| {
            let path = format!("/ws?token={}&channels=room.1", token(tenant, sub));
            let server = &server;
            async move { Client::connect_path(server, &path).await }
        };
        let mut ada = connect("acme", "ada").await;
        let bob = connect("acme", "bob").await;
        let mut eve = connect("globex", "eve").await;

        let get = |query: &'static str, key: &'static str| {
            let server = &server;
            async move {
                server
                    .http_with("GET", &format!("/v1/presence?{query}"), None, Some(key))
                    .await
            }
        };
        let deadline = tokio::time::Instant::now() + STEP;
        let acme = loop {
            let reply = get("channel=room.1", ACME_KEY).await;
            assert_eq!(reply.status, 200, "{reply:?}");
            let body = reply.json();
            if body["connections"] == json!(2) || tokio::time::Instant::now() > deadline {
                break body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let expected: BTreeSet<String> = [conn_id(&ada), conn_id(&bob)].into();
        assert_eq!(
            member_ids(&acme),
            expected,
            "acme's key sees acme only: {acme}"
        );
        assert_eq!(acme["tenant"], json!("acme"));
        assert_eq!(acme["users"], json!(2));
        let names: BTreeSet<&str> = acme["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|member| member["info"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["ada of acme", "bob of acme"].into(),
            "info as the token's"
        );

        let reply = get("channel=room.1&tenant=globex", ACME_KEY).await;
        assert_eq!(reply.status, 403, "acme's key may not name globex");
        let globex = get("channel=room.1&tenant=globex", OPERATOR_KEY)
            .await
            .json();
        assert_eq!(member_ids(&globex), [conn_id(&eve)].into());
        let unscoped = get("channel=room.1", OPERATOR_KEY).await.json();
        assert_eq!(
            unscoped["connections"],
            json!(0),
            "no unscoped members: {unscoped}"
        );

        let reply = eve
            .request(json!({"type": "presence", "channel": "room.1", "id": "e"}))
            .await;
        assert_eq!(member_ids(&reply), [conn_id(&eve)].into(), "{reply}");
        assert!(
            reply.get("tenant").is_none(),
            "a socket never sees its scope"
        );
        let reply = ada
            .request(json!({"type": "presence", "channel": "room.1", "id": "a"}))
            .await;
        assert_eq!(member_ids(&reply), expected, "{reply}");
    })
    .await;
}

/// Every `presence_diff` `watcher` receives within `within`.
async fn diffs(watcher: &mut Client, within: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut diffs = Vec::new();
    while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
        match watcher.recv_within(left).await {
            Some(frame) if frame["type"] == json!("presence_diff") => diffs.push(frame),
            Some(frame) => panic!("expected only presence_diff frames, got {frame}"),
            None => break,
        }
    }
    diffs
}

fn ids_in(diffs: &[Value], list: &str) -> BTreeSet<String> {
    diffs
        .iter()
        .flat_map(|diff| diff[list].as_array().unwrap().iter())
        .map(|member| member["conn_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn joins_and_leaves_reach_every_subscriber_batched_per_interval() {
    watchdog(async {
        let interval = Duration::from_millis(1000);
        let server = server("presence_diff_interval_ms = 1000", true).await;
        // Two watchers by exact name, one by wildcard: all are subscribers of room.1.
        let mut watchers = Vec::new();
        for path in [
            "/ws?channels=room.1",
            "/ws?channels=room.1",
            "/ws?channels=room.*",
        ] {
            watchers.push(Client::connect_path(&server, path).await);
        }
        let watching: BTreeSet<String> = watchers[..2].iter().map(conn_id).collect();
        // The watchers' own joins arrive first; wait them out.
        for watcher in &mut watchers {
            let seen = diffs(watcher, interval * 3).await;
            assert!(ids_in(&seen, "joined").is_subset(&watching), "{seen:?}");
        }

        let clients = spread(&server, "room.1", 10).await;
        let joined: BTreeSet<String> = clients.iter().map(conn_id).collect();
        for watcher in &mut watchers {
            let seen = diffs(watcher, interval * 3).await;
            assert_eq!(ids_in(&seen, "joined"), joined, "every join: {seen:?}");
            assert!(ids_in(&seen, "left").is_empty());
            // The joins took well under an interval or two; each shard's and the ingest
            // core's ticks may split them across neighbouring ticks, never one frame a join.
            assert!(
                seen.len() <= 3 && seen.len() < clients.len() / 4,
                "{} joins came in {} frames",
                clients.len(),
                seen.len()
            );
            assert_eq!(seen[0]["channel"], json!("room.1"));
        }

        let left: BTreeSet<String> = clients.iter().take(5).map(conn_id).collect();
        let mut clients = clients;
        clients.drain(..5);
        for watcher in &mut watchers {
            let seen = diffs(watcher, interval * 3).await;
            assert_eq!(ids_in(&seen, "left"), left, "every leave: {seen:?}");
            assert!(ids_in(&seen, "joined").is_empty());
        }
        let body = presence_when(&server, "channel=room.1", clients.len() + 2).await;
        assert_eq!(member_ids(&body).len(), clients.len() + 2);
    })
    .await;
}

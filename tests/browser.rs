//! Proves the browser client `/client.js` in real headless Chromium (README, "Delivery guarantees" and "Browser client"): when
//! every connection between the page and the server is cut mid-stream, it reconnects, resubscribes
//! with `since` (offset form for its exact channel, seq form for its wildcard pattern), gets
//! `recovered:true` and ends holding every offset 1..=N exactly once, in order, through each;
//! when the server restarts (new epoch, history gone) it reports `recovered:false` with reason
//! `epoch_changed` and then receives what is published after. Also that its reconnect delays are
//! full jitter, capped and reset by `connected`, and that it replaces a connection gone silent
//! (no pong, or no `connected`, for two ping intervals). The page reaches the server through a TCP
//! proxy in the test, which cuts, silences and (on restart) redirects its connections; the page's
//! state is read by evaluating JavaScript over the DevTools protocol. And that the control
//! plane's `/dashboard` draws `$sys.stats` live and shows the exact connection count (its
//! screenshot, saved under cargo's `target/tmp`, is the README's). And that the npm package
//! `corecast-client` works as installed: `npm pack` of `src/web`, extracted into a
//! `node_modules`, its entry point resolved by Node through `exports`, imported by a page that
//! receives a publish. And that a page's client takes its user's `$user` stream, ends for good
//! on the server's 4010 by default, and with `reconnectAfterDisconnect` comes back and recovers
//! what the user was sent meanwhile. Chromium and npm must be installed (`.ci/deps` installs Debian's
//! `chromium` and `npm`): without them these tests fail, they never skip.

mod common;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use common::{watchdog, Client, Server, STEP};

/// Where Debian's `chromium` package puts the browser; `CHROMIUM` overrides it.
const CHROMIUM_DEFAULT: &str = "/usr/bin/chromium";
/// The channel the page subscribes to, exactly (so the client recovers by offset) and through a
/// wildcard pattern (so it recovers by seq).
const CHANNEL: &str = "browser.feed";
const PATTERN: &str = "browser.*";
/// Messages published before the cut, and in all in the first phase.
const CUT_AFTER_MESSAGES: u64 = 60;
const FIRST_PHASE_MESSAGES: u64 = 150;
/// Messages published after the restart.
const SECOND_PHASE_MESSAGES: u64 = 20;
/// Pause between two publishes: a steady stream the cut lands in the middle of.
const PUBLISH_PAUSE: Duration = Duration::from_millis(5);
/// The page client's backoff base and cap: small, so the test reconnects in well under a second.
/// Its jitter's random source is fixed at 0.5, so the first reconnect waits exactly half the base,
/// while messages go on being published.
const BACKOFF_BASE_MS: u64 = 100;
const BACKOFF_CAP_MS: u64 = 400;
/// The page the tests' own origins serve at `/`.
const BLANK_PAGE: &str = "<!doctype html><title>corecast test</title>";
/// The npm package's name (src/web/package.json), the folder it installs into.
const NPM_PACKAGE: &str = "corecast-client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_recovers_a_cut_and_reports_a_server_restart() {
    watchdog(async {
        let chromium = chromium_path();
        let mut server = Server::start(&[]).await;
        let proxy = Proxy::start(server.ws).await;
        // Chromium runs while `_browser` lives, so a failing or timed-out test ends it too.
        let (_browser, tab) = open_page(chromium, serve_blank_page().await).await;

        // --- the page loads the client from the server and subscribes through the proxy ------
        let script = format!(
            r#"(async () => {{
                const {{ Client }} = await import("http://{ws}/client.js");
                const page = {{
                    offsets: {{ "{CHANNEL}": [], "{PATTERN}": [] }},
                    states: [], recoveries: [], received: [], errors: [],
                }};
                window.page = page;
                const client = new Client({{
                    url: "ws://{proxy}/ws", backoffBaseMs: {BACKOFF_BASE_MS},
                    backoffCapMs: {BACKOFF_CAP_MS}, random: () => 0.5,
                }});
                window.client = client;
                client.on("state", (event) => page.states.push(event.state));
                client.on("recovery", (event) => {{
                    page.recoveries.push(event);
                    page.received.push(page.offsets[event.pattern].length);
                }});
                client.on("error", (event) => page.errors.push(event));
                const subscriptions = ["{CHANNEL}", "{PATTERN}"].map((pattern) =>
                    client.subscribe(pattern, (message) => {{
                        page.offsets[pattern].push(message.offset);
                    }}));
                await Promise.all(subscriptions.map((subscription) => subscription.ready));
                return JSON.stringify({{ epoch: client.epoch }});
            }})()"#,
            ws = server.ws,
            proxy = proxy.addr,
        );
        let first_epoch = evaluate(&tab, script).await["epoch"].clone();
        assert!(
            first_epoch.as_str().is_some_and(|epoch| epoch.len() == 16),
            "expected the client to remember the 16-hex-char epoch of `connected`, got {first_epoch}"
        );

        // --- phase 1: a steady stream, every proxied connection cut in the middle ------------
        for offset in 1..=FIRST_PHASE_MESSAGES {
            let published = server.publish(CHANNEL, &json!({ "n": offset })).await;
            assert_eq!(published, offset, "expected offsets to count from 1");
            if offset == CUT_AFTER_MESSAGES {
                assert_eq!(
                    proxy.cut_all(),
                    1,
                    "expected exactly the page's one WebSocket to be cut"
                );
            }
            tokio::time::sleep(PUBLISH_PAUSE).await;
        }
        let page = wait_for_page(&tab, "the last offset of the first phase", |page| {
            [CHANNEL, PATTERN]
                .iter()
                .all(|pattern| offsets(page, pattern).last() == Some(&FIRST_PHASE_MESSAGES))
        })
        .await;
        let expected: Vec<u64> = (1..=FIRST_PHASE_MESSAGES).collect();
        for pattern in [CHANNEL, PATTERN] {
            assert_eq!(
                offsets(&page, pattern),
                expected,
                "expected every offset exactly once, in order, across the cut, through \
                 {pattern}; recoveries {}",
                page["recoveries"]
            );
        }
        assert_eq!(
            page["recoveries"].as_array().map(Vec::len),
            Some(2),
            "expected one resubscribe with `since` per pattern after the cut; page state {page}"
        );
        for pattern in [CHANNEL, PATTERN] {
            let (recovery, received) = recovery_of(&page, pattern, 0);
            assert_eq!(
                recovery,
                json!({
                    "pattern": pattern, "server": false, "epoch": first_epoch,
                    "seq": recovery["seq"], "recovered": true, "reason": null,
                }),
                "expected `recovered:true` in the same epoch"
            );
            // One channel only, so seq counts its publishes: the reply's seq past what the page
            // had means messages were published while it was away, and came back by recovery.
            assert!(
                recovery["seq"].as_u64().is_some_and(|seq| seq > received),
                "expected messages missed during the cut (reply seq past the {received} \
                 received), got {recovery}"
            );
        }
        assert_eq!(
            page["states"],
            json!(["open", "reconnecting", "connecting", "open"]),
            "expected one reconnect after the cut"
        );

        // --- phase 2: the server restarts; history and epoch are gone ----------------------
        let status = server.terminate(STEP).await;
        assert!(status.success(), "expected exit 0 on SIGTERM, got {status}");
        drop(server);
        // This time the page may publish to its channel over the socket. The new server takes
        // fresh ports and the proxy forwards to it, so the page reconnects to the address it
        // knows, as to a server restarted in place (binding the old port again could race with
        // anything else on this machine that takes an ephemeral port meanwhile).
        let client_publish = format!("--client-publish={CHANNEL}");
        let server = Server::start(&[&client_publish]).await;
        proxy.retarget(server.ws);
        let page = wait_for_page(&tab, "the recovery reports after the restart", |page| {
            page["recoveries"].as_array().map(Vec::len) == Some(4)
        })
        .await;
        let second_epoch = evaluate(&tab, "JSON.stringify(window.client.epoch)".into()).await;
        assert!(
            second_epoch.as_str().is_some_and(|epoch| epoch.len() == 16)
                && second_epoch != first_epoch,
            "expected a new 16-hex-char epoch after the restart, got {second_epoch} (was \
             {first_epoch})"
        );
        for pattern in [CHANNEL, PATTERN] {
            let (recovery, _) = recovery_of(&page, pattern, 1);
            assert_eq!(
                recovery,
                json!({
                    "pattern": pattern, "server": false, "epoch": second_epoch,
                    "seq": recovery["seq"], "recovered": false, "reason": "epoch_changed",
                }),
                "expected the restart reported as `recovered:false`, reason `epoch_changed`"
            );
        }
        for offset in 1..=SECOND_PHASE_MESSAGES {
            let published = server.publish(CHANNEL, &json!({ "n": offset })).await;
            assert_eq!(published, offset, "expected offsets to restart at 1");
        }
        let page = wait_for_page(&tab, "the last message published after the restart", |page| {
            [CHANNEL, PATTERN]
                .iter()
                .all(|pattern| offsets(page, pattern).last() == Some(&SECOND_PHASE_MESSAGES))
        })
        .await;
        let expected: Vec<u64> = (1..=FIRST_PHASE_MESSAGES)
            .chain(1..=SECOND_PHASE_MESSAGES)
            .collect();
        for pattern in [CHANNEL, PATTERN] {
            assert_eq!(
                offsets(&page, pattern),
                expected,
                "expected the live messages of the new epoch after the old ones, through \
                 {pattern}"
            );
        }
        assert_eq!(
            page["states"].as_array().and_then(|states| states.last()),
            Some(&json!("open"))
        );
        assert_eq!(page["errors"], json!([]), "expected no error event");

        // The page's own commands: an ack the server confirms, a publish it delivers back, and
        // a publish it refuses (that channel is not open to clients).
        let script = format!(
            r#"(async () => {{
                const client = window.client;
                const acked = await client.ack("{CHANNEL}", {SECOND_PHASE_MESSAGES});
                const published = await client.publish("{CHANNEL}", {{ from: "page" }});
                const refused = await client.publish("browser.other", {{}})
                    .then(() => "published", (error) => error.code);
                return JSON.stringify({{ acked: acked === undefined, published, refused }});
            }})()"#
        );
        assert_eq!(
            evaluate(&tab, script).await,
            json!({
                "acked": true,
                "published": {"channel": CHANNEL, "offset": SECOND_PHASE_MESSAGES + 1},
                "refused": "forbidden",
            }),
            "expected the ack confirmed, the page's publish sequenced, the other refused"
        );
        wait_for_page(&tab, "the page's own publish delivered back", |page| {
            [CHANNEL, PATTERN]
                .iter()
                .all(|pattern| offsets(page, pattern).last() == Some(&(SECOND_PHASE_MESSAGES + 1)))
        })
        .await;
    })
    .await
}

/// Pins the client's timing in Chromium: reconnect delays are full jitter of
/// `min(cap, base * 2^attempt)` (with the jitter's random source fixed at 0.5 the delays are
/// exact), the attempt count resets once a connection reached `connected`, pings measure a
/// round-trip latency, and a connection that goes silent (no pong for two intervals, or no
/// `connected` for two intervals) is dropped and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_backs_off_with_full_jitter_and_drops_a_silent_connection() {
    watchdog(async {
        let chromium = chromium_path();
        let server = Server::start(&[]).await;
        let proxy = Proxy::start(server.ws).await;
        let refused = {
            // A port nothing listens on once this listener is dropped.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("its address")
        };
        let (_browser, tab) = open_page(chromium, serve_blank_page().await).await;
        let script = format!(
            r#"(async () => {{
                const {{ Client }} = await import("http://{ws}/client.js");
                const page = {{ refusedDelays: [], reconnects: [], states: [], latencies: [] }};
                window.page = page;
                const refused = new Client({{
                    url: "ws://{refused}/ws", backoffBaseMs: 20, backoffCapMs: 100,
                    random: () => 0.5,
                }});
                await new Promise((done) => refused.on("state", (event) => {{
                    if (event.state !== "reconnecting") return;
                    page.refusedDelays.push([event.attempt, event.delayMs]);
                    if (page.refusedDelays.length === 6) {{
                        refused.close();
                        done();
                    }}
                }}));
                const client = new Client({{
                    url: "ws://{proxy}/ws", backoffBaseMs: 40, backoffCapMs: 10000,
                    pingIntervalMs: 150, random: () => 0.5,
                }});
                window.client = client;
                client.on("state", (event) => {{
                    page.states.push(event.state);
                    if (event.state === "reconnecting") {{
                        page.reconnects.push([event.attempt, event.delayMs, event.reason]);
                    }}
                }});
                client.on("latency", (latency) => page.latencies.push(latency));
                return JSON.stringify(page);
            }})()"#,
            ws = server.ws,
            proxy = proxy.addr,
        );
        let page = evaluate(&tab, script).await;
        assert_eq!(
            page["refusedDelays"],
            json!([[1, 10], [2, 20], [3, 40], [4, 50], [5, 50], [6, 50]]),
            "expected delays of 0.5 * min(100, 20 * 2^attempt) ms against a refusing port"
        );

        // Connected and answering pings, then the path goes silent.
        let page = wait_for_page(&tab, "two pongs", |page| {
            page["latencies"].as_array().map(Vec::len) >= Some(2)
        })
        .await;
        for latency in page["latencies"].as_array().expect("latencies") {
            let (last_ms, average_ms) = (&latency["lastMs"], &latency["averageMs"]);
            assert!(
                last_ms
                    .as_f64()
                    .is_some_and(|ms| (0.0..1000.0).contains(&ms))
                    && average_ms
                        .as_f64()
                        .is_some_and(|ms| (0.0..1000.0).contains(&ms)),
                "expected loopback round trips in milliseconds, got {latency}"
            );
        }
        // The live connection stops answering, and so does the first one that replaces it.
        proxy.silence(1);
        let page = wait_for_page(&tab, "two silent connections dropped", |page| {
            page["reconnects"].as_array().map(Vec::len) >= Some(2)
        })
        .await;
        assert_eq!(
            page["reconnects"],
            json!([
                [1, 20, "no pong for two ping intervals"],
                [2, 40, "no connected frame within two ping intervals"],
            ]),
            "expected the dead connection dropped with the attempt count reset by `connected`, \
             then the silent new one dropped with the next delay"
        );
        let page = wait_for_page(&tab, "a connection through the proxy again", |page| {
            page["states"].as_array().and_then(|states| states.last()) == Some(&json!("open"))
        })
        .await;
        assert_eq!(
            page["states"],
            json!([
                "open",
                "reconnecting",
                "connecting",
                "reconnecting",
                "connecting",
                "open",
            ]),
            "expected exactly two replaced connections, then an open one"
        );
    })
    .await
}

/// The npm package, as an application gets it: `npm pack` of `src/web` (its tarball holds exactly
/// the package's files), extracted into an application's `node_modules/corecast-client`, its
/// entry point resolved by Node through the package's `exports` (and imported there once), and
/// that file imported by a page, which subscribes and receives a publish. A package that does
/// not pack, a broken `exports`, or a file missing from `files` fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_imports_the_packed_npm_package_and_receives_a_publish() {
    watchdog(async {
        let chromium = chromium_path();
        let app = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("npm-app");
        let entry = tokio::task::spawn_blocking({
            let app = app.clone();
            move || install_packed_package(&app)
        })
        .await
        .expect("the npm task");
        let installed = app.join("node_modules").join(NPM_PACKAGE);
        for (file, served) in [
            ("client.js", &include_bytes!("../src/web/client.js")[..]),
            ("client.d.ts", &include_bytes!("../src/web/client.d.ts")[..]),
        ] {
            let packed = std::fs::read(installed.join(file))
                .unwrap_or_else(|err| panic!("expected {file} in the package: {err}"));
            assert!(
                packed == served,
                "expected the packed {file} to be the served one"
            );
        }
        let server = Server::start(&[]).await;
        let (_browser, tab) = open_page(chromium, serve_folder(app).await).await;
        let script = format!(
            r#"(async () => {{
                const {{ Client }} = await import("/{entry}");
                const page = {{ received: [] }};
                window.page = page;
                const client = new Client({{ url: "ws://{ws}/ws" }});
                const subscription = client.subscribe("{CHANNEL}", (message) => {{
                    page.received.push([message.offset, message.data]);
                }});
                await subscription.ready;
                return JSON.stringify(page);
            }})()"#,
            ws = server.ws,
        );
        assert_eq!(evaluate(&tab, script).await, json!({ "received": [] }));
        let offset = server.publish(CHANNEL, &json!({ "from": "npm" })).await;
        let page = wait_for_page(&tab, "the publish delivered", |page| {
            page["received"]
                .as_array()
                .is_some_and(|received| !received.is_empty())
        })
        .await;
        assert_eq!(
            page["received"],
            json!([[offset, { "from": "npm" }]]),
            "expected the page on the packed module to receive exactly the publish"
        );
    })
    .await
}

/// Publishes `data` to `user`'s `$user` stream; returns the offset.
async fn publish_to_user(server: &Server, user: &str, data: Value) -> u64 {
    let body = json!({"user": user, "data": data}).to_string();
    let reply = server.post("/v1/publish", &body).await;
    assert_eq!(
        reply.status, 200,
        "expected the publish to {user:?}: {reply:?}"
    );
    reply.json()["offset"].as_u64().expect("an integer offset")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_takes_its_user_stream_and_a_disconnect_ends_it_unless_asked() {
    watchdog(async {
        let chromium = chromium_path();
        let server = Server::start(&[]).await;
        let (_browser, tab) = open_page(chromium, serve_blank_page().await).await;
        // ada stays away after the server's disconnect (the default); bob reconnects, after
        // half a second (random 0.5 of a 1 s base), and resumes his stream with `since`.
        let script = format!(
            r#"(async () => {{
                const {{ Client }} = await import("http://{ws}/client.js");
                const page = {{ ada: [], bob: [], states: [], closed: [], recoveries: [],
                                errors: [], users: [], presence: null }};
                window.page = page;
                const clients = {{
                    ada: new Client({{ url: "ws://{ws}/ws?user=ada" }}),
                    bob: new Client({{ url: "ws://{ws}/ws?user=bob", backoffBaseMs: 1000,
                                       random: () => 0.5, reconnectAfterDisconnect: true }}),
                }};
                window.clients = clients;
                for (const [name, client] of Object.entries(clients)) {{
                    client.on("state", (event) => page.states.push([name, event.state, event.reason || null]));
                    client.on("closed", (event) => page.closed.push([name, event.code, event.reason]));
                    client.on("recovery", (event) => page.recoveries.push([name, event.pattern, event.recovered]));
                    client.on("error", (event) => page.errors.push([name, event.code, event.message]));
                    client.on("connected", (frame) => page.users.push([name, frame.user, client.user]));
                }}
                const ready = Object.entries(clients).map(([name, client]) =>
                    client.subscribe("$user", (message) => page[name].push([message.offset, message.data])).ready);
                await Promise.all(ready);
                return JSON.stringify(page.users);
            }})()"#,
            ws = server.ws,
        );
        assert_eq!(
            evaluate(&tab, script).await,
            json!([["ada", "ada", "ada"], ["bob", "bob", "bob"]])
        );
        for user in ["ada", "bob"] {
            for n in 1..=2 {
                assert_eq!(publish_to_user(&server, user, json!(n)).await, n);
            }
        }
        wait_for_page(&tab, "offsets 1 and 2 on each $user", |page| {
            page["ada"].as_array().is_some_and(|got| got.len() == 2)
                && page["bob"].as_array().is_some_and(|got| got.len() == 2)
        })
        .await;

        for (user, reason) in [("ada", "signed out"), ("bob", "come back")] {
            let body = json!({"user": user, "reason": reason}).to_string();
            let reply = server.post("/v1/users/disconnect", &body).await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
        let page = wait_for_page(&tab, "both disconnects seen", |page| {
            let states = page["states"].as_array().expect("states");
            page["closed"].as_array().is_some_and(|closed| !closed.is_empty())
                && states.iter().any(|state| state[0] == "bob" && state[1] == "reconnecting")
        })
        .await;
        assert_eq!(page["closed"], json!([["ada", 4010, "signed out"]]));
        assert!(
            page["states"]
                .as_array()
                .unwrap()
                .contains(&json!(["bob", "reconnecting", "closed 4010 come back"])),
            "{page}"
        );
        // Published while bob is away: recovered when he is back.
        for n in 3..=4 {
            assert_eq!(publish_to_user(&server, "bob", json!(n)).await, n);
        }
        let page = wait_for_page(&tab, "bob's stream resumed", |page| {
            page["bob"].as_array().is_some_and(|got| got.len() == 4)
        })
        .await;
        assert_eq!(page["bob"], json!([[1, 1], [2, 2], [3, 3], [4, 4]]));
        assert_eq!(page["recoveries"], json!([["bob", "$user", true]]));
        assert_eq!(page["errors"], json!([]));
        assert_eq!(page["ada"], json!([[1, 1], [2, 2]]));
        let ada_states: Vec<&Value> = page["states"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|state| state[0] == "ada")
            .collect();
        assert_eq!(
            ada_states.last().map(|state| &state[1]),
            Some(&json!("closed")),
            "{page}"
        );
        // ada's client did not come back: only bob is connected.
        let connections = |stats: &Value| -> u64 {
            let shards = stats["shards"].as_array().expect("shards in /v1/stats");
            shards
                .iter()
                .map(|shard| shard["connections"].as_u64().expect("connections"))
                .sum()
        };
        let stats = server
            .poll_json("/v1/stats", |stats| connections(stats) == 1)
            .await;
        assert_eq!(connections(&stats), 1, "{stats}");
        assert_eq!(
            evaluate(&tab, "JSON.stringify(window.clients.ada.state)".into()).await,
            json!("closed")
        );
    })
    .await
}

/// `npm pack`s `src/web` into `app`, checks the tarball's file list, extracts it into
/// `app/node_modules/corecast-client`, and returns the package's entry point relative to `app`,
/// as Node resolves it from `exports` (after importing it there once).
fn install_packed_package(app: &Path) -> String {
    let _ = std::fs::remove_dir_all(app);
    let installed = app.join("node_modules").join(NPM_PACKAGE);
    std::fs::create_dir_all(&installed).expect("expected to create node_modules");
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web");
    let packed = run(
        Command::new("npm")
            .args(["pack", "--json", "--pack-destination"])
            .arg(app)
            .current_dir(&package)
            .env("NPM_CONFIG_UPDATE_NOTIFIER", "false"),
        "npm pack (`.ci/deps` installs Debian's `npm`)",
    );
    let packed: Value = serde_json::from_slice(&packed).expect("npm pack --json prints JSON");
    let mut files: Vec<&str> = packed[0]["files"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a files list from npm pack, got {packed}"))
        .iter()
        .map(|file| file["path"].as_str().expect("a path"))
        .collect();
    files.sort_unstable();
    assert_eq!(
        files,
        ["README.md", "client.d.ts", "client.js", "package.json"],
        "expected the tarball to hold the client, its types, the README and package.json"
    );
    let tarball = app.join(packed[0]["filename"].as_str().expect("a tarball name"));
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&installed)
            .arg("--strip-components=1"),
        "tar -xzf of the packed tarball",
    );
    // Node's resolver follows `exports` (`require.resolve` in every Node that Debian ships) and
    // checks the file it names exists; importing it proves it loads as an ES module.
    const RESOLVE: &str = r#"const entry = require.resolve("corecast-client");
        import("corecast-client").then((module) => {
            if (typeof module.Client !== "function") throw new Error("no Client export");
            process.stdout.write(entry);
        });"#;
    let entry = run(
        Command::new("node").args(["-e", RESOLVE]).current_dir(app),
        "node resolving and importing the installed package",
    );
    let entry = PathBuf::from(String::from_utf8(entry).expect("a UTF-8 path"));
    let entry = entry.strip_prefix(app).unwrap_or_else(|_| {
        panic!(
            "expected the entry point under {}, got {}",
            app.display(),
            entry.display()
        )
    });
    entry.to_str().expect("a UTF-8 path").to_owned()
}

/// Runs `command` to success and returns its standard output, or fails naming `what`.
fn run(command: &mut Command, what: &str) -> Vec<u8> {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("expected {what} to start: {err}"));
    assert!(
        output.status.success(),
        "expected {what} to succeed, got {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The offsets the page's handler of `pattern` received, in order.
fn offsets(page: &Value, pattern: &str) -> Vec<u64> {
    page["offsets"][pattern]
        .as_array()
        .unwrap_or_else(|| panic!("expected an offsets array for {pattern} in {page}"))
        .iter()
        .map(|offset| offset.as_u64().expect("an integer offset"))
        .collect()
}

/// The `nth` recovery event of `pattern` on the page, with how many messages its handler had
/// received when it came.
fn recovery_of(page: &Value, pattern: &str, nth: usize) -> (Value, u64) {
    let recoveries = page["recoveries"].as_array().expect("a recoveries array");
    let at = recoveries
        .iter()
        .enumerate()
        .filter(|(_, recovery)| recovery["pattern"] == pattern)
        .nth(nth)
        .unwrap_or_else(|| panic!("expected recovery {nth} of {pattern} in {page}"))
        .0;
    let received = page["received"][at].as_u64().expect("a received count");
    (recoveries[at].clone(), received)
}

/// The Chromium binary, or a failure saying how to install it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_sys_stats_live_and_shows_the_connection_count() {
    watchdog(async {
        let chromium = chromium_path();
        let server = Server::start(&["--sys-stats-interval-ms", "200"]).await;
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(Client::connect(&server).await);
        }
        clients[0].subscribe("dash.t", 1).await;
        let (_browser, tab) =
            open_page(chromium, format!("http://{}/dashboard", server.api)).await;
        // Some traffic for the charts while the page watches.
        let datas: Vec<Value> = (0..40).map(|i| json!({ "i": i })).collect();
        server.publish_many("dash.t", datas).await;
        const READ: &str = r#"JSON.stringify({
            connections: document.getElementById("connections").textContent,
            state: document.getElementById("state").textContent,
            points: [...document.querySelectorAll("canvas")].map((c) => Number(c.dataset.points)),
            deliveries: (window.corecastDashboard || { ticks: [] }).ticks
                .map((tick) => tick.deliveries_per_s),
        })"#;
        // Five clients and the dashboard's own connection.
        let deadline = Instant::now() + STEP;
        let shown = loop {
            let shown = evaluate(&tab, READ.into()).await;
            let charted = shown["points"]
                .as_array()
                .is_some_and(|points| points.len() == 4 && points.iter().all(|n| n.as_u64() >= Some(3)));
            let delivered = shown["deliveries"]
                .as_array()
                .is_some_and(|rates| rates.iter().any(|rate| rate.as_f64() > Some(0.0)));
            if shown["connections"] == "6" && shown["state"] == "open" && charted && delivered {
                break shown;
            }
            assert!(
                Instant::now() < deadline,
                "expected the dashboard to show 6 connections, an open feed, 4 charts with data                  and the publishes as deliveries within {STEP:?}; it shows {shown}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let png = tokio::task::spawn_blocking(move || {
            tab.capture_screenshot(
                headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption::Png,
                None,
                None,
                true,
            )
            .expect("expected a screenshot")
        })
        .await
        .expect("the screenshot task");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "expected a PNG of the drawn page, got {} bytes; page showed {shown}",
            png.len()
        );
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
        std::fs::write(&path, &png).expect("expected to write the screenshot");
        drop(clients);
    })
    .await
}

fn chromium_path() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM_DEFAULT));
    assert!(
        path.is_file(),
        "this test needs Chromium at {} (set CHROMIUM to use another path): install Debian's \
         `chromium` package (apt-get install chromium), as .ci/deps does",
        path.display()
    );
    path
}

/// Starts headless Chromium with the flags this machine needs (no sandbox as root, no
/// background connections to hosts the closed network refuses) and a fresh profile, and opens
/// one tab on `url`. Dropping the [`Browser`] ends the process.
async fn open_page(chromium: PathBuf, url: String) -> (Browser, Arc<Tab>) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&OsStr> = [
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .iter()
        .map(OsStr::new)
        .collect();
        let options = LaunchOptions::default_builder()
            .path(Some(chromium))
            .headless(true)
            .sandbox(false)
            .window_size(Some((1280, 800)))
            .args(args)
            .build()
            .expect("valid launch options");
        let browser = Browser::new(options)
            .unwrap_or_else(|err| panic!("expected headless Chromium to start: {err:#}"));
        let tab = browser.new_tab().expect("expected a new tab");
        tab.navigate_to(&url)
            .and_then(|tab| tab.wait_until_navigated())
            .unwrap_or_else(|err| panic!("expected {url} to load: {err:#}"));
        (browser, tab)
    })
    .await
    .expect("the Chromium task")
}

/// Serves an empty HTML page on a loopback port of its own and returns its URL. The page is on
/// another origin than the server, as an application's would be, so importing `/client.js`
/// from it exercises the server's CORS header; `about:blank` would not do, as Chromium refuses
/// it a module from the loopback network.
async fn serve_blank_page() -> String {
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{BLANK_PAGE}",
        BLANK_PAGE.len()
    );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("expected to bind the page server");
    let addr = listener.local_addr().expect("the page server's address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                // One request (GET / or the favicon) gets the page; reading its head first
                // keeps the close from resetting a request still being written.
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/")
}

/// Serves the blank page at `/` and the files under `root` at their paths, on a loopback port of
/// its own, and returns its URL: an application's origin, with its `node_modules`. A path that
/// is not a file under `root` gets 404.
async fn serve_folder(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("expected to bind the file server");
    let addr = listener.local_addr().expect("the file server's address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let root = root.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let read = stream.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..read]);
                let path = head.split(' ').nth(1).unwrap_or("/");
                let (status, content_type, body) = if path == "/" {
                    ("200 OK", "text/html", BLANK_PAGE.as_bytes().to_vec())
                } else {
                    let file = path.trim_start_matches('/');
                    let inside = !file.split('/').any(|part| part == "..");
                    match std::fs::read(root.join(file)) {
                        Ok(body) if inside => ("200 OK", content_type_of(file), body),
                        _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
                    }
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}/")
}

/// The media type a browser needs for `file`: a module must be served as JavaScript.
fn content_type_of(file: &str) -> &'static str {
    match Path::new(file).extension().and_then(OsStr::to_str) {
        Some("js") => "text/javascript",
        Some("json") => "application/json",
        _ => "text/plain",
    }
}

/// Evaluates `expression` in the page (awaiting a promise), which must produce a JSON string,
/// and returns it parsed.
async fn evaluate(tab: &Arc<Tab>, expression: String) -> Value {
    let tab = tab.clone();
    tokio::task::spawn_blocking(move || {
        let result = tab
            .evaluate(&expression, true)
            .unwrap_or_else(|err| panic!("expected the page to evaluate {expression}: {err:#}"));
        let text = result
            .value
            .as_ref()
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("expected a JSON string from {expression}, got {result:?}"));
        serde_json::from_str(text).unwrap_or_else(|err| panic!("expected JSON, got {text}: {err}"))
    })
    .await
    .expect("the evaluate task")
}

/// Polls the page's `window.page` until `done` holds, for at most [`STEP`]; returns it.
async fn wait_for_page(tab: &Arc<Tab>, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let page = evaluate(tab, "JSON.stringify(window.page)".into()).await;
        if done(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "expected {what} within {STEP:?}; page state {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of the server's WebSocket port that can cut every connection through
/// it at once, as a network failure would, or silence them: hold them open and forward nothing,
/// as a dead path that no FIN or RST comes back from. It keeps accepting after a cut. A
/// connection whose server side cannot be reached (the server is restarting) is closed at once.
struct Proxy {
    addr: SocketAddr,
    /// Where new connections are forwarded.
    target: Arc<Mutex<SocketAddr>>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    /// Bumped to silence every live connection.
    silence: Arc<watch::Sender<u64>>,
    /// New connections still to be silenced from their start.
    silent_new_links: Arc<AtomicUsize>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("expected to bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let silence = Arc::new(watch::channel(0).0);
        let silent_new_links = Arc::new(AtomicUsize::new(0));
        let target = Arc::new(Mutex::new(target));
        let (accepted, silencer, silent_new, forward_to) = (
            links.clone(),
            silence.clone(),
            silent_new_links.clone(),
            target.clone(),
        );
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut silenced = silencer.subscribe();
                let silent_from_start = silent_new
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let target = *forward_to.lock().unwrap();
                let link = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    if !silent_from_start {
                        tokio::select! {
                            // Either side closing or failing ends the link; how does not matter.
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {
                                return;
                            }
                            _ = silenced.changed() => {}
                        }
                    }
                    // Silent: keep both sockets open, forward nothing, until cut.
                    std::future::pending::<()>().await
                });
                accepted.lock().unwrap().push(link.abort_handle());
            }
        });
        Proxy {
            addr,
            target,
            links,
            silence,
            silent_new_links,
            accept: accept.abort_handle(),
        }
    }

    /// Forwards new connections to `target` from now on.
    fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// Silences every live connection and the next `new_links` ones it accepts.
    fn silence(&self, new_links: usize) {
        self.silent_new_links.store(new_links, Ordering::SeqCst);
        self.silence.send_modify(|generation| *generation += 1);
    }

    /// Drops both sockets of every live connection; returns how many were live.
    fn cut_all(&self) -> usize {
        let links = std::mem::take(&mut *self.links.lock().unwrap());
        let live = links.iter().filter(|link| !link.is_finished()).count();
        links.iter().for_each(AbortHandle::abort);
        live
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

// A peer for `corecast bench --compare`: the broadcast server a JavaScript developer would write
// with Bun, whose WebSocket server and pub/sub are uWebSockets' own (one event loop, one thread).
//
// A connection to `/publish` is the publisher: every text message it sends is published, as is,
// to one topic. Every other path is a subscriber: it joins the topic and is greeted with the same
// `{"type":"connected",...}` frame corecast sends, so the bench knows it is live. A subscriber
// whose unsent bytes pass `BACKPRESSURE_BYTES_MAX` loses messages (uWS drops them), which the
// bench counts as loss. There are no other limits and no protocol checks beyond Bun's: that is
// the point of the comparison.
//
// Run: `node_modules/.bin/bun server.js PORT` (0 picks a free port); it prints
// `listening ws=127.0.0.1:PORT` and serves until killed.

/** The one topic every subscriber joins. */
const TOPIC = "broadcast";

/** Path of the publisher's connection (the bench's `--publish-ws`). */
const PUBLISH_PATH = "/publish";

/** Unsent bytes a subscriber may hold before uWS drops its messages: 64 MiB, as the uWS peer. */
const BACKPRESSURE_BYTES_MAX = 64 * 1024 * 1024;

/** The greeting corecast sends, which the bench waits for before it counts a subscriber. */
const HELLO =
  '{"type":"connected","conn_id":"peer","shard":0,"server_time_ms":0,"heartbeat_s":0}';

const port = Number.parseInt(process.argv[2] ?? "0", 10);

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(request, server) {
    const publisher = new URL(request.url).pathname === PUBLISH_PATH;
    if (server.upgrade(request, { data: { publisher } })) {
      return undefined;
    }
    return new Response("WebSocket upgrade expected\n", { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    backpressureLimit: BACKPRESSURE_BYTES_MAX,
    closeOnBackpressureLimit: false,
    // No idle timeout and no pings, as the tokio peer: the bench's connections stay open for
    // the whole run and nothing else is measured.
    idleTimeout: 0,
    sendPings: false,
    open(ws) {
      if (!ws.data.publisher) {
        ws.subscribe(TOPIC);
        ws.send(HELLO);
      }
    },
    message(ws, message) {
      if (ws.data.publisher && typeof message === "string") {
        server.publish(TOPIC, message);
      }
    },
  },
});

console.log(`listening ws=127.0.0.1:${server.port}`);

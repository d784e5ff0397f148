// corecast browser client: one ES module, no dependencies, no build step.
//
// It keeps one WebSocket to a corecast server open (reconnecting with exponential backoff and
// full jitter), subscribes patterns with a handler each, and, after a drop, resubscribes every
// pattern with `since` so the server sends what was missed (the delivery extensions of the wire
// contract). What it cannot recover (`recovered:false`) and what the server dropped (`gap`) it
// reports to the application, never hides. Types: client.d.ts beside this file.
//
// A connection with a user (a token's `sub`, or `?user=` on a server without auth) is
// subscribed by the server to `$user` at connect; `subscribe("$user", handler)` hands its
// messages to `handler` and resumes the stream with `since` after a reconnect. Subscriptions
// the server makes for the user (`server: true`) are kept like the application's own. A close
// with 4010 (the server disconnected the user) ends the client, unless
// `reconnectAfterDisconnect`.
//
//   import { Client } from "http://HOST:PORT/client.js";
//   const client = new Client({ url: "ws://HOST:PORT/ws" });
//   client.on("recovery", (event) => { if (!event.recovered) reload(event.pattern); });
//   const subscription = client.subscribe("leads.*", (message) => show(message.data));
//   await subscription.ready;

/** Defaults of every option; see client.d.ts for what each one trades. */
export const DEFAULTS = Object.freeze({
  backoffBaseMs: 1000,
  backoffCapMs: 30000,
  pingIntervalMs: 10000,
  latencySamplesMax: 10,
  reconnectAfterDisconnect: false,
});

/** Largest doubling of the backoff base applied: 2^30 already exceeds any sensible cap. */
const BACKOFF_DOUBLINGS_MAX = 30;

/** Longest channel name or pattern, in bytes (PROTOCOL.md, Channels). */
const CHANNEL_BYTES_MAX = 255;

/**
 * Channels whose last offset one subscription remembers, to hand each message to it once (see
 * `Subscription.takes`); past it the least recently seen channel is forgotten.
 */
const CHANNELS_TRACKED_MAX = 1024;

/** A token of a channel name (PROTOCOL.md, Channels). */
const TOKEN = /^[A-Za-z0-9_:@=+-]+$/;

/** The first token of the server's own channels (`$sys.stats`): only patterns naming it match. */
const SYSTEM_TOKEN = "$sys";

/** The connection's own user's stream (PROTOCOL.md, Users): a name of its own, never a prefix. */
export const USER_CHANNEL = "$user";

/** The close code of a user disconnected by the server (`POST /v1/users/disconnect`). */
const CLOSE_USER_DISCONNECTED = 4010;

/** An error the server answered (`code` is the contract's error code) or a closed connection. */
export class CorecastError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "CorecastError";
    this.code = code;
  }
}

/**
 * Checks a channel name or pattern against PROTOCOL.md: 1 to 255 bytes of `.`-separated tokens,
 * where a pattern's token may be `*` (exactly one token) and its last token `>` (one or more).
 * Returns null when valid, else why not.
 */
export function patternError(pattern) {
  if (typeof pattern !== "string") return "a channel must be a string";
  if (pattern === USER_CHANNEL) return null;
  const bytes = new TextEncoder().encode(pattern).length;
  if (bytes < 1 || bytes > CHANNEL_BYTES_MAX) {
    return `a channel has 1 to ${CHANNEL_BYTES_MAX} bytes, this one ${bytes}`;
  }
  const tokens = pattern.split(".");
  for (let at = 0; at < tokens.length; at += 1) {
    const token = tokens[at];
    if (token === "*" || (token === ">" && at === tokens.length - 1)) continue;
    if (at === 0 && token === SYSTEM_TOKEN) continue;
    if (!TOKEN.test(token)) return `invalid token ${JSON.stringify(token)} in ${pattern}`;
  }
  return null;
}

/**
 * Whether `pattern` (with `*` and `>`) matches the channel name `channel`. No wildcard stands
 * for a token the server reserves (`$sys`, `$user`): a pattern must spell it out.
 */
export function matches(pattern, channel) {
  const wanted = pattern.split(".");
  const tokens = channel.split(".");
  for (let at = 0; at < wanted.length; at += 1) {
    if (wanted[at] === ">") {
      return at === wanted.length - 1 && tokens.length > at && !tokens.slice(at).some(reserved);
    }
    if (at >= tokens.length) return false;
    if (wanted[at] === "*" ? reserved(tokens[at]) : wanted[at] !== tokens[at]) return false;
  }
  return tokens.length === wanted.length;
}

function reserved(token) {
  return token.startsWith("$");
}

/** Whether `pattern` names one channel (no wildcard): only those may recover by offset. */
function isExact(pattern) {
  return !pattern.split(".").some((token) => token === "*" || token === ">");
}

/** A promise with its settle functions, settled at most once. */
function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((ok, fail) => {
    resolve = ok;
    reject = fail;
  });
  // A subscription's `ready` may be left unawaited; its failure still reaches the "error" event.
  promise.catch(() => {});
  return { promise, resolve, reject, settled: false };
}

function settle(pending, ok, value) {
  if (pending.settled) return;
  pending.settled = true;
  if (ok) pending.resolve(value);
  else pending.reject(value);
}

/**
 * One pattern subscribed on the server, shared by every handler the application gave for it,
 * with its position: the last `seq` seen through it (else its last `subscribed` reply's), the
 * last `offset` for an exact channel, and the epoch those belong to.
 *
 * It also remembers the last offset it took per channel (at most CHANNELS_TRACKED_MAX). The
 * server sends each message once per connection, recoveries of overlapping patterns included;
 * this is the guard that would report a breach (an "error" event with code "duplicate") rather
 * than hand a handler the same message twice. Offsets rise within a channel, so a message at
 * or below the remembered offset was already taken by this subscription; across channels no
 * order holds (a `critical` publish may overtake), which is why `seq` cannot serve.
 */
class Subscription {
  constructor(client, pattern) {
    this.client = client;
    this.pattern = pattern;
    this.exact = isExact(pattern);
    this.handlers = new Set();
    this.epoch = null;
    this.lastSeq = null;
    this.lastOffset = null;
    this.channelOffsets = new Map();
    // Whether the server confirmed it on the current connection.
    this.active = false;
    // Set while a resubscribe with `since` awaits its reply: the server sends each message once
    // per connection, so a missed one that an overlapping subscription recovers first arrives
    // before this one's reply, and belongs to it too if it lies past its position (`since`).
    this.recovering = null;
    // Messages of an exact channel that arrive while it recovers by offset and lie past what
    // the recovery will send: the server's live `$user` sends them ahead of the recovered ones
    // when a publish lands between connect and the resume. They are handed over once the
    // recovery has caught up to them, so handlers see offsets in order.
    this.held = [];
    // Made by the server for the connection's user (`POST /v1/users/subscribe`).
    this.server = false;
    this.firstReply = deferred();
  }

  /** The `subscribe` command, with `since` when there is a position to recover from. */
  command(id) {
    const command = { type: "subscribe", channel: this.pattern, id };
    if (this.epoch !== null) {
      if (this.exact && this.lastOffset !== null) {
        command.since = { epoch: this.epoch, offset: this.lastOffset };
      } else if (this.lastSeq !== null) {
        command.since = { epoch: this.epoch, seq: this.lastSeq };
      }
    }
    this.recovering = command.since === undefined ? null : command.since;
    return command;
  }

  /** Whether a message arriving now is this subscription's: confirmed, or recovering and past
   * the position it recovers from. */
  wants(message) {
    if (!matches(this.pattern, message.channel)) return false;
    if (this.active) return true;
    if (this.recovering === null) return false;
    if (this.recovering.offset !== undefined) return message.offset > this.recovering.offset;
    return message.seq > this.recovering.seq;
  }

  /** Applies a `subscribed` reply to the position. */
  confirmed(reply) {
    this.active = true;
    this.recovering = null;
    // The reply's epoch names the positions that follow (a server without the delivery
    // extensions sends none, and its client epoch is null too).
    this.epoch = typeof reply.epoch === "string" ? reply.epoch : this.client.epoch;
    if (reply.recovered === false) {
      // Resume from the reply: what lies between is lost, and an offset of another epoch (or
      // one whose history is gone) must not be asked for again.
      this.lastOffset = null;
      this.channelOffsets.clear();
      this.lastSeq = typeof reply.seq === "number" ? reply.seq : null;
    } else if (reply.recovered !== true && this.lastSeq === null) {
      // A fresh subscription: nothing seen yet, so its position is the reply's seq. (Recovered:
      // the missed messages follow and advance the position one by one.)
      this.lastSeq = typeof reply.seq === "number" ? reply.seq : null;
    }
  }

  /** Whether a message arriving now must wait for the recovery in progress (see `held`). */
  holds(message) {
    return (
      !this.active &&
      this.exact &&
      this.recovering !== null &&
      this.recovering.offset !== undefined &&
      typeof message.offset === "number"
    );
  }

  /**
   * Hands over the held messages the recovery has caught up to (all of them when `all`, or once
   * the recovery is known to send nothing more: not recovered, or past them).
   */
  release(all) {
    while (this.held.length > 0) {
      const next = this.held[0];
      const caughtUp = this.lastOffset !== null && this.lastOffset + 1 >= next.offset;
      if (!all && !caughtUp) return;
      this.held.shift();
      if (this.takes(next)) this.deliver(next);
    }
  }

  /** Whether `message` (of a channel this pattern matches) was not yet taken by it. */
  takes(message) {
    const taken = this.channelOffsets.get(message.channel);
    return taken === undefined || typeof message.offset !== "number" || message.offset > taken;
  }

  /** Records a delivered message's position and hands it to every handler. */
  deliver(message) {
    if (typeof message.seq === "number") this.lastSeq = message.seq;
    if (typeof message.offset === "number") {
      if (this.exact) this.lastOffset = message.offset;
      // Delete first so the map's order is least recently seen first.
      this.channelOffsets.delete(message.channel);
      this.channelOffsets.set(message.channel, message.offset);
      if (this.channelOffsets.size > CHANNELS_TRACKED_MAX) {
        this.channelOffsets.delete(this.channelOffsets.keys().next().value);
      }
    }
    if (this.handlers.size === 0) {
      // A server-side subscription the application gave no handler for.
      this.client.emit("message", message);
      return;
    }
    for (const handler of [...this.handlers]) {
      try {
        handler(message, this.handle);
      } catch (error) {
        this.client.emit("error", { code: "handler", message: String(error), error });
      }
    }
  }
}

/**
 * A connection to corecast that stays up: see the module comment and client.d.ts.
 * Events (`on(name, listener)`): "state", "connected", "subscribed", "unsubscribed",
 * "recovery", "gap", "message", "presence_diff", "latency", "closed", "error".
 */
export class Client {
  constructor(options) {
    const given = typeof options === "string" ? { url: options } : { ...options };
    if (typeof given.url !== "string") throw new TypeError("options.url must be a ws:// URL");
    this.options = { ...DEFAULTS, ...given };
    for (const name of ["backoffBaseMs", "backoffCapMs", "pingIntervalMs", "latencySamplesMax"]) {
      const value = this.options[name];
      if (!(Number.isFinite(value) && value > 0)) {
        throw new RangeError(`options.${name} must be a positive number, got ${value}`);
      }
    }
    this.WebSocket = given.WebSocket || globalThis.WebSocket;
    this.random = given.random || Math.random;
    this.state = "connecting";
    this.epoch = null;
    this.connId = null;
    this.user = null;
    this.attempt = 0;
    this.socket = null;
    this.reconnectTimer = null;
    this.connectTimer = null;
    this.pingTimer = null;
    this.nextId = 1;
    this.pending = new Map();
    this.pings = new Map();
    this.latencySamples = [];
    this.latency = { lastMs: null, averageMs: null };
    this.subscriptions = new Map();
    this.listeners = new Map();
    this.open();
  }

  /** Adds a listener for an event; returns a function that removes it. */
  on(name, listener) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(listener);
    return () => this.listeners.get(name).delete(listener);
  }

  emit(name, event) {
    for (const listener of [...(this.listeners.get(name) || [])]) {
      try {
        listener(event);
      } catch (error) {
        if (name !== "error") this.emit("error", { code: "listener", message: String(error), error });
      }
    }
  }

  /**
   * Subscribes `pattern` and calls `handler(message, subscription)` for each message of a
   * channel it matches, from this connection on and, after a reconnect, for what was missed.
   * Several handlers of one pattern share one server subscription.
   */
  subscribe(pattern, handler) {
    const problem = patternError(pattern);
    if (problem !== null) throw new CorecastError("invalid_channel", problem);
    if (typeof handler !== "function") throw new TypeError("subscribe needs a handler function");
    let subscription = this.subscriptions.get(pattern);
    if (subscription === undefined) {
      subscription = this.track(pattern);
      if (this.state === "open") this.sendSubscribe(subscription);
    }
    subscription.handlers.add(handler);
    const handle = subscription.handle;
    return {
      pattern,
      ready: handle.ready,
      position: handle.position,
      unsubscribe: () => this.unsubscribe(pattern, handler),
    };
  }

  /** A new subscription of `pattern`, tracked from now on (sent by the caller). */
  track(pattern) {
    const subscription = new Subscription(this, pattern);
    subscription.handle = {
      pattern,
      ready: subscription.firstReply.promise,
      position: () => ({
        epoch: subscription.epoch,
        seq: subscription.lastSeq,
        offset: subscription.lastOffset,
      }),
    };
    this.subscriptions.set(pattern, subscription);
    return subscription;
  }

  /** Removes `handler`; the server subscription ends with the pattern's last handler. */
  unsubscribe(pattern, handler) {
    const subscription = this.subscriptions.get(pattern);
    if (subscription === undefined) return Promise.resolve();
    if (handler !== undefined) subscription.handlers.delete(handler);
    if (handler !== undefined && subscription.handlers.size > 0) return Promise.resolve();
    this.subscriptions.delete(pattern);
    settle(subscription.firstReply, false, new CorecastError("unsubscribed", `${pattern} was unsubscribed`));
    if (this.state !== "open") return Promise.resolve();
    return this.request({ type: "unsubscribe", channel: pattern }).then(() => undefined);
  }

  /** Publishes `data` to `channel`; resolves to `{channel, offset}` (server permitting). */
  publish(channel, data) {
    return this.request({ type: "publish", channel, data }).then((reply) => ({
      channel: reply.channel,
      offset: reply.offset,
    }));
  }

  /**
   * Who is subscribed to `channel` (an exact name this connection is subscribed to, in a
   * namespace with presence): resolves to `{channel, connections, users, members, truncated?}`.
   */
  presence(channel) {
    return this.request({ type: "presence", channel }).then((reply) => {
      const { type, id, ...presence } = reply;
      return presence;
    });
  }

  /** Acknowledges `offset` on `channel`; resolves once the server recorded it. */
  ack(channel, offset) {
    return this.request({ type: "ack", channel, offset }).then(() => undefined);
  }

  /** Closes the connection for good: no reconnect, pending requests fail. */
  close() {
    this.setState("closed");
    clearTimeout(this.reconnectTimer);
    this.drop(1000, "client closed");
  }

  // --- connection lifecycle ----------------------------------------------------------------

  setState(state, detail = {}) {
    if (this.state === state) return;
    const previous = this.state;
    this.state = state;
    this.emit("state", { state, previous, ...detail });
  }

  open() {
    this.reconnectTimer = null;
    if (this.state === "closed") return;
    this.setState("connecting", { attempt: this.attempt });
    // A "state" listener may have called close().
    if (this.state === "closed") return;
    let socket;
    try {
      socket = new this.WebSocket(this.options.url);
    } catch (error) {
      this.emit("error", { code: "connect", message: String(error), error });
      this.scheduleReconnect(String(error));
      return;
    }
    this.socket = socket;
    // A server that accepts but never says `connected` is as dead as one that stops answering
    // pings: give it the same two intervals.
    this.connectTimer = setTimeout(() => {
      if (this.socket === socket) this.lost("no connected frame within two ping intervals");
    }, 2 * this.options.pingIntervalMs);
    socket.onmessage = (event) => {
      if (this.socket === socket) this.receive(event.data);
    };
    socket.onerror = () => {
      if (this.socket === socket) this.lost("socket error");
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      if (event.code === CLOSE_USER_DISCONNECTED && !this.options.reconnectAfterDisconnect) {
        this.ended(event.code, event.reason);
        return;
      }
      this.lost(`closed ${event.code} ${event.reason}`.trim());
    };
  }

  /** The server closed the connection for good (4010): no reconnect, pending requests fail. */
  ended(code, reason) {
    this.drop(1000, `closed ${code} ${reason}`.trim());
    this.setState("closed", { code, reason });
    this.emit("closed", { code, reason });
  }

  /** The connection ended (closed, failed, or declared dead): clean up and try again. */
  lost(why) {
    this.drop(4000, why);
    if (this.state !== "closed") this.scheduleReconnect(why);
  }

  /** Forgets the current socket: its later events are ignored, its requests fail. */
  drop(code, why) {
    const socket = this.socket;
    this.socket = null;
    clearTimeout(this.connectTimer);
    clearInterval(this.pingTimer);
    this.pingTimer = null;
    this.pings.clear();
    for (const subscription of this.subscriptions.values()) {
      // Held messages were received: they are the application's, and the position moves past
      // them, so the next connection does not ask for them again.
      subscription.release(true);
      subscription.active = false;
      subscription.recovering = null;
    }
    for (const [, pending] of this.pending) {
      if (pending.subscription === undefined) {
        settle(pending, false, new CorecastError("disconnected", `the connection was lost: ${why}`));
      }
    }
    this.pending.clear();
    if (socket !== null) {
      socket.onmessage = socket.onerror = socket.onclose = null;
      try {
        // 1000 is the only code below 3000 a browser may send; 4000 is the client's own. The
        // reason stays short ASCII: a close reason over 123 bytes throws.
        socket.close(code, code === 1000 ? "client closed" : "reconnecting");
      } catch (error) {
        // Closing a socket that never opened throws in some engines; it is gone either way.
      }
    }
  }

  scheduleReconnect(why) {
    const ceilingMs = Math.min(
      this.options.backoffCapMs,
      this.options.backoffBaseMs * 2 ** Math.min(this.attempt, BACKOFF_DOUBLINGS_MAX),
    );
    const delayMs = this.random() * ceilingMs;
    this.attempt += 1;
    // The timer is set before listeners hear of it, so one that calls close() clears it.
    this.reconnectTimer = setTimeout(() => this.open(), delayMs);
    this.setState("reconnecting", { attempt: this.attempt, delayMs, reason: why });
  }

  // --- frames from the server --------------------------------------------------------------

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      this.emit("error", { code: "bad_frame", message: `not JSON: ${String(text).slice(0, 80)}` });
      return;
    }
    switch (frame.type) {
      case "connected":
        return this.connected(frame);
      case "message":
        return this.message(frame);
      case "gap":
        return this.emit("gap", {
          channel: frame.channel,
          from: frame.from,
          to: frame.to,
          patterns: [...this.subscriptions.values()]
            .filter((subscription) => subscription.wants(frame))
            .map((subscription) => subscription.pattern),
        });
      case "pong":
        return this.pong(frame);
      case "presence_diff":
        return this.emit("presence_diff", {
          channel: frame.channel,
          joined: frame.joined || [],
          left: frame.left || [],
        });
      default:
        return this.reply(frame);
    }
  }

  connected(frame) {
    clearTimeout(this.connectTimer);
    this.attempt = 0;
    this.connId = frame.conn_id;
    this.epoch = typeof frame.epoch === "string" ? frame.epoch : null;
    this.user = typeof frame.user === "string" ? frame.user : null;
    for (const subscription of this.subscriptions.values()) {
      this.sendSubscribe(subscription);
      // The server subscribed `$user` at connect: its messages are live before the reply,
      // unless they wait for the recovery of a position.
      if (subscription.pattern === USER_CHANNEL && this.user !== null && subscription.recovering === null) {
        subscription.active = true;
      }
    }
    this.pingTimer = setInterval(() => this.ping(), this.options.pingIntervalMs);
    // Listeners last: one may close the client, which clears what was just set up.
    this.setState("open");
    if (this.state === "open") this.emit("connected", frame);
  }

  /**
   * Hands a message to every subscription that wants it (see `Subscription.wants`) and has not
   * taken it yet. One that none takes is a duplicate: reported, not hidden.
   */
  message(frame) {
    let matched = false;
    let taken = false;
    for (const subscription of [...this.subscriptions.values()]) {
      if (!subscription.wants(frame)) continue;
      matched = true;
      if (subscription.holds(frame)) {
        subscription.held.push(frame);
        taken = true;
        continue;
      }
      if (subscription.takes(frame)) {
        subscription.deliver(frame);
        taken = true;
      }
      subscription.release(false);
    }
    if (matched && !taken) {
      this.emit("error", {
        code: "duplicate",
        message: `${frame.channel} offset ${frame.offset} arrived again`,
      });
    }
  }

  reply(frame) {
    if (frame.server === true) return this.serverSide(frame);
    const pending = frame.id === undefined || frame.id === null ? undefined : this.pending.get(frame.id);
    if (pending === undefined) {
      if (frame.type === "error") this.emit("error", { code: frame.code, message: frame.message });
      return;
    }
    this.pending.delete(frame.id);
    if (pending.subscription !== undefined) return this.subscribeReply(pending.subscription, frame);
    if (frame.type === "error") settle(pending, false, new CorecastError(frame.code, frame.message));
    else settle(pending, true, frame);
  }

  /**
   * A subscription the server made or ended for the connection's user: tracked like the
   * application's own (resumed with `since` after a reconnect), its messages going to the
   * pattern's handlers, or to the "message" event without one.
   */
  serverSide(frame) {
    const pattern = frame.channel;
    if (frame.type === "unsubscribed") {
      const subscription = this.subscriptions.get(pattern);
      if (subscription !== undefined) {
        this.subscriptions.delete(pattern);
        settle(subscription.firstReply, false, new CorecastError("unsubscribed", `${pattern} was unsubscribed by the server`));
      }
      this.emit("unsubscribed", { pattern, server: true });
      return;
    }
    if (frame.type !== "subscribed") return;
    let subscription = this.subscriptions.get(pattern);
    if (subscription === undefined) {
      subscription = this.track(pattern);
      subscription.server = true;
    }
    this.subscribeReply(subscription, frame);
  }

  subscribeReply(subscription, frame) {
    if (this.subscriptions.get(subscription.pattern) !== subscription) return;
    if (frame.type === "error") {
      // Refused (invalid, too many, a bad `since`): the pattern is dropped, not retried forever.
      this.subscriptions.delete(subscription.pattern);
      const error = new CorecastError(frame.code, frame.message);
      settle(subscription.firstReply, false, error);
      this.emit("error", { code: frame.code, message: frame.message, pattern: subscription.pattern });
      return;
    }
    subscription.confirmed(frame);
    subscription.release(frame.recovered !== true);
    const event = {
      pattern: subscription.pattern,
      server: frame.server === true,
      epoch: frame.epoch === undefined ? null : frame.epoch,
      seq: frame.seq === undefined ? null : frame.seq,
      recovered: frame.recovered === undefined ? null : frame.recovered,
      reason: frame.reason === undefined ? null : frame.reason,
    };
    settle(subscription.firstReply, true, event);
    this.emit("subscribed", event);
    if (frame.recovered === true || frame.recovered === false) this.emit("recovery", event);
  }

  // --- commands to the server --------------------------------------------------------------

  send(command) {
    this.socket.send(JSON.stringify(command));
  }

  sendSubscribe(subscription) {
    const id = this.nextId++;
    this.pending.set(id, { subscription, settled: false });
    this.send(subscription.command(id));
  }

  request(command) {
    if (this.state !== "open") {
      return Promise.reject(new CorecastError("disconnected", `not connected (${this.state})`));
    }
    const id = this.nextId++;
    const pending = deferred();
    this.pending.set(id, pending);
    this.send({ ...command, id });
    return pending.promise;
  }

  /**
   * Sends a ping, one per interval. Two pings still unanswered at a tick mean the older one has
   * waited two intervals with no pong: the connection is dead. (Counting ticks, not comparing
   * times, keeps timer drift from stretching that to three intervals.)
   */
  ping() {
    if (this.pings.size >= 2) {
      this.lost("no pong for two ping intervals");
      return;
    }
    const id = this.nextId++;
    this.pings.set(id, performance.now());
    this.send({ type: "ping", id });
  }

  pong(frame) {
    const sentMs = this.pings.get(frame.id);
    if (sentMs === undefined) return;
    // The connection answered: this ping and every earlier one are settled.
    for (const id of [...this.pings.keys()]) if (id <= frame.id) this.pings.delete(id);
    const lastMs = performance.now() - sentMs;
    this.latencySamples.push(lastMs);
    if (this.latencySamples.length > this.options.latencySamplesMax) this.latencySamples.shift();
    const averageMs = this.latencySamples.reduce((sum, sample) => sum + sample, 0) / this.latencySamples.length;
    this.latency = { lastMs, averageMs };
    this.emit("latency", this.latency);
  }
}

// Types of the corecast browser client, client.js (an ES module served beside this file).

/** Options of a `Client`; every one but `url` has a default (see `DEFAULTS`). */
export interface ClientOptions {
  /** The server's WebSocket endpoint, e.g. `ws://127.0.0.1:8080/ws`. */
  url: string;
  /**
   * First reconnect delay ceiling, in ms (default 1000). The delay before reconnect attempt `n`
   * (0 after a connection that reached `connected`) is random in
   * `[0, min(backoffCapMs, backoffBaseMs * 2^n))` (full jitter): a smaller base reconnects
   * sooner, a larger one spreads a crowd of clients over a longer time after a server restart.
   */
  backoffBaseMs?: number;
  /** Largest reconnect delay ceiling, in ms (default 30000). */
  backoffCapMs?: number;
  /**
   * Interval of the app-level ping, in ms (default 10000). Two pings unanswered (about two
   * intervals without a pong) close the connection and reconnect, and so does a connection that
   * has not received `connected` two intervals after it began: a shorter interval notices a
   * dead path sooner, at the cost of more frames.
   */
  pingIntervalMs?: number;
  /** Pongs averaged into `latency.averageMs` (default 10). */
  latencySamplesMax?: number;
  /** The WebSocket constructor to use (default `globalThis.WebSocket`), e.g. a Node.js one. */
  WebSocket?: new (url: string) => WebSocket;
  /** A source of uniform numbers in [0, 1) for the jitter (default `Math.random`). */
  random?: () => number;
  /**
   * Whether to reconnect after the server closed with 4010, the user disconnected by the
   * control plane (`POST /v1/users/disconnect`); default false: the client ends (state
   * `closed`, event `closed`), since a user the server sent away (signed out, banned) is meant
   * to stay away, and a reconnect would undo that or be refused over and over.
   */
  reconnectAfterDisconnect?: boolean;
}

/** The defaults of `ClientOptions`. */
export const DEFAULTS: Readonly<{
  backoffBaseMs: number;
  backoffCapMs: number;
  pingIntervalMs: number;
  latencySamplesMax: number;
  reconnectAfterDisconnect: boolean;
}>;

/** `"$user"`: the connection's own user's stream (a token's `sub`, or `?user=` without auth). */
export const USER_CHANNEL: "$user";

/** `connecting`: a socket is opening, `connected` not yet received. `open`: `connected`
 * received, subscriptions sent. `reconnecting`: waiting out the backoff. `closed`: `close()`,
 * or the server's 4010 (see `reconnectAfterDisconnect`). */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** A delivery, exactly as the server sent it. `seq` is absent on servers without the delivery
 * extensions. */
export interface Message<T = unknown> {
  type: "message";
  channel: string;
  offset: number;
  seq?: number;
  ts_ms: number;
  data: T;
}

/** Where a subscription is: its epoch, the last seq seen (or of its `subscribed` reply), and
 * for an exact channel the last offset. `null` where not known yet. */
export interface Position {
  epoch: string | null;
  seq: number | null;
  offset: number | null;
}

/** The server's `subscribed` reply, for a pattern. `recovered` is `null` on a first subscribe
 * (nothing to recover), `true` when every missed message follows, `false` when they are lost:
 * `reason` is then `"epoch_changed"` (the server restarted: offsets began again; reload state),
 * `"history_trimmed"` or `"too_many"`. */
export interface SubscribedEvent {
  pattern: string;
  /** Made by the server for the connection's user (`POST /v1/users/subscribe`): the client
   * keeps it across reconnects like its own. */
  server: boolean;
  epoch: string | null;
  seq: number | null;
  recovered: boolean | null;
  reason: "epoch_changed" | "history_trimmed" | "too_many" | string | null;
}

/** Messages of `channel` with offsets `from..=to` were dropped for this connection (a slow
 * consumer on a `drop_oldest` namespace); `patterns` are the subscriptions that matched it.
 * They can be fetched from `GET /v1/history` on the control plane. */
export interface GapEvent {
  channel: string;
  from: number;
  to: number;
  patterns: string[];
}

/** Round-trip time of the app-level ping, in ms: the last one and the mean of the last
 * `latencySamplesMax`. `null` before the first pong. */
export interface Latency {
  lastMs: number | null;
  averageMs: number | null;
}

/** The server ended a subscription: `server` is true for `POST /v1/users/unsubscribe`. */
export interface UnsubscribedEvent {
  pattern: string;
  server: true;
}

/** One subscribed connection of a presence answer or diff (PROTOCOL.md, Presence). */
export interface Member {
  /** Absent or null for an anonymous connection. */
  user?: string | null;
  conn_id: string;
  /** The token's `info` claim, when it has one. */
  info?: Record<string, unknown> | null;
}

/** Who is subscribed to a channel, over every shard and node. */
export interface Presence {
  channel: string;
  connections: number;
  users: number;
  /** At most the server's `presence_members_max`. */
  members: Member[];
  /** Present (true) when `members` stops short of `connections`. */
  truncated?: boolean;
}

/** Joins and leaves on a subscribed channel of a `join_leave` namespace since the previous
 * diff (one per `presence_diff_interval_ms` at most; a connection that joined and left in
 * between may be in neither). */
export interface PresenceDiffEvent {
  channel: string;
  joined: Member[];
  left: Member[];
}

/** The server closed the connection for good (4010, its user disconnected); no reconnect
 * follows unless `reconnectAfterDisconnect`. */
export interface ClosedEvent {
  code: number;
  reason: string;
}

export interface StateEvent {
  state: ConnectionState;
  previous: ConnectionState;
  /** Reconnect attempts since the last connection that reached `open`. */
  attempt?: number;
  /** With `reconnecting`: the delay before the next attempt. */
  delayMs?: number;
  /** With `reconnecting`: why the connection ended; with `closed` by the server: its reason. */
  reason?: string;
  /** With `closed` by the server: its close code (4010). */
  code?: number;
}

/** A server error without a request to fail (or a refused subscription, with its pattern),
 * a throwing handler (`code` `"handler"` / `"listener"`), or a message that every subscription
 * it matches had already taken (`"duplicate"`: not handed to a handler again). */
export interface ErrorEvent {
  code: string;
  message: string;
  pattern?: string;
  error?: unknown;
}

export interface ConnectedFrame {
  type: "connected";
  conn_id: string;
  /** The connection's user; absent for an anonymous connection. */
  user?: string;
  shard: number;
  server_time_ms: number;
  heartbeat_s: number;
  epoch?: string;
}

export interface ClientEvents {
  state: StateEvent;
  connected: ConnectedFrame;
  subscribed: SubscribedEvent;
  unsubscribed: UnsubscribedEvent;
  /** A `subscribed` reply to a resubscribe with `since`: `recovered` is `true` or `false`. */
  recovery: SubscribedEvent & { recovered: boolean };
  gap: GapEvent;
  /** A message of a server-side subscription the application gave no handler for. */
  message: Message;
  presence_diff: PresenceDiffEvent;
  latency: Latency;
  closed: ClosedEvent;
  error: ErrorEvent;
}

/** One handler's hold on a pattern. */
export interface Subscription {
  pattern: string;
  /** Settles with the first `subscribed` reply; fails if the server refuses the pattern. */
  ready: Promise<SubscribedEvent>;
  position(): Position;
  /** Removes this handler; the server subscription ends with the pattern's last handler. */
  unsubscribe(): Promise<void>;
}

export type Handler<T = unknown> = (
  message: Message<T>,
  subscription: Pick<Subscription, "pattern" | "ready" | "position">,
) => void;

/** An error the server answered (`code` is the contract's code, e.g. `forbidden`), or
 * `disconnected` for a request whose connection was lost. */
export class CorecastError extends Error {
  code: string;
  constructor(code: string, message: string);
}

/** A connection to corecast that reconnects, resubscribes with `since`, and reports what it
 * could not recover. Connecting starts in the constructor. */
export class Client {
  constructor(options: ClientOptions | string);
  readonly state: ConnectionState;
  /** The server's epoch from the last `connected` frame (`null` before, or on an old server). */
  readonly epoch: string | null;
  readonly connId: string | null;
  /** The user of the last `connected` frame (`null` before, or for an anonymous connection). */
  readonly user: string | null;
  readonly latency: Latency;
  on<K extends keyof ClientEvents>(name: K, listener: (event: ClientEvents[K]) => void): () => void;
  /** Throws `CorecastError("invalid_channel")` on a pattern the contract refuses. `"$user"`
   * takes the messages published to the connection's user (subscribed by the server at
   * connect), resumed with `since` after a reconnect. */
  subscribe<T = unknown>(pattern: string, handler: Handler<T>): Subscription;
  /** Without `handler`, drops every handler of the pattern. */
  unsubscribe(pattern: string, handler?: Handler<any>): Promise<void>;
  /** Fails with `disconnected` unless the state is `open`. */
  publish(channel: string, data: unknown): Promise<{ channel: string; offset: number }>;
  /** Fails with `disconnected` unless the state is `open`, `not_subscribed` off subscriptions. */
  ack(channel: string, offset: number): Promise<void>;
  /** Who is subscribed to `channel` (exact, subscribed by this connection). Fails with
   * `disconnected`, `not_subscribed` or `presence_disabled`. */
  presence(channel: string): Promise<Presence>;
  close(): void;
}

/** Why `pattern` is not a valid channel or pattern, or `null` if it is. */
export function patternError(pattern: string): string | null;

/** Whether `pattern` (with `*`, `>`) matches the channel name `channel`; no wildcard stands for a
 * `$` token. */
export function matches(pattern: string, channel: string): boolean;

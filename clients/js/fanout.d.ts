// Type declarations of fanout.js (the browser and Node.js client of fanout-delivery).

export type State = "connecting" | "connected" | "disconnected" | "closed";

/** A message as the server sends it: exactly one of user / room is set. */
export interface Message {
  type: "message";
  id: string;
  pos: string;
  user?: string;
  room?: string;
  data: unknown;
  /** "base64" when data is the base64 of a payload that is not UTF-8 */
  encoding?: "base64";
  [member: string]: unknown;
}

export interface RecoveredEvent {
  /** "user" or "room:<name>" */
  stream: string;
  /** true: nothing after the last position is missing; false: re-sync from your backend */
  recovered: boolean;
}

export interface JoinedEvent {
  room: string;
  pos?: string;
  recovered: boolean;
}

export interface ErrorEvent {
  /** "token_refused" (the client stopped), "token_error", "connect_error", "bad_frame",
   * or the server's error code ("forbidden", "too_many_rooms", "bad_request", ...) */
  code: string;
  message: string;
  /** set for errors the server sent */
  server?: boolean;
  /** the room whose join was refused (the client stops joining it) */
  room?: string;
  /** the close code of a refused token (4001 expired, 4003 invalid) */
  closeCode?: number;
  error?: unknown;
}

export interface StateDetail {
  /** close code (0: no socket was made) */
  code: number;
  reason: string;
}

/** The subset of the WebSocket API the client uses (the browser's, or the ws package's). */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface Options {
  /** a token, or a function returning one (or a Promise of one): asked before every connect */
  token: string | (() => string | Promise<string>);
  /** rooms joined on every (re)connect, resumed from their last position */
  rooms?: string[];
  /** positions to resume from, as returned by positions() (e.g. kept across a page reload) */
  positions?: Record<string, string>;
  /** the WebSocket constructor; required where there is no global WebSocket (Node.js < 22: the ws package) */
  WebSocket?: new (url: string) => WebSocketLike;
  /** default 500: the first reconnect waits random [0, 500) ms */
  minReconnectDelay?: number;
  /** default 20000: the backoff cap (each failed attempt doubles the range up to it) */
  maxReconnectDelay?: number;
  /** default 10000: a connection that stayed up this long resets the backoff */
  stableAfter?: number;
  /** default 10000: token + connect + welcome must take less */
  connectTimeout?: number;
  /** default 10000: silence tolerated beyond the server's announced ping_ms before the connection is replaced */
  heartbeatTimeout?: number;
  /** default 25000: without a server heartbeat, ping after this much silence */
  pingInterval?: number;
  /** default 10000: message ids remembered to drop duplicates */
  dedupSize?: number;
  /** default true: ask for the app-level heartbeat (heartbeat=1) */
  heartbeat?: boolean;
  /** default true: ask for close codes 4001/4003 on a refused token (auth=close) */
  authClose?: boolean;
  /** where online/offline/pagehide/pageshow (and document's visibilitychange) are listened to;
   * default globalThis when it has addEventListener; null: none */
  environment?: EventTarget | null;
  /** for tests: setTimeout / clearTimeout */
  timers?: Timers;
  /** for tests: the random source of the backoff jitter */
  random?: () => number;
}

export interface Stats {
  connects: number;
  resumes: number;
  duplicates: number;
  dead: number;
  messages: number;
}

export const DEFAULTS: Readonly<Required<Omit<Options, "token" | "rooms" | "positions" | "WebSocket" | "environment" | "timers" | "random">>>;

/** Full jitter: random in [0, min(max, min * 2^attempt)). */
export function backoffDelay(attempt: number, min: number, max: number, random?: () => number): number;

export class FanoutClient {
  constructor(url: string, options: Options);
  readonly url: string;
  readonly state: State;
  readonly stats: Stats;
  connect(): this;
  close(): this;
  join(room: string): this;
  leave(room: string): this;
  positions(): Record<string, string>;
  rooms(): string[];
  on(event: "message", fn: (m: Message) => void): this;
  on(event: "state", fn: (s: State, detail?: StateDetail) => void): this;
  on(event: "recovered", fn: (e: RecoveredEvent) => void): this;
  on(event: "joined", fn: (e: JoinedEvent) => void): this;
  on(event: "welcome", fn: (w: { type: "welcome"; pos: string; recovered?: boolean; ping_ms?: number }) => void): this;
  on(event: "error", fn: (e: ErrorEvent) => void): this;
  off(event: string, fn: (...args: any[]) => void): this;
}

// A real Yjs client (yjs + the stock y-websocket WebsocketProvider) remote-controlled over
// stdin/stdout, so that Python tests can check interop with genuine Node clients.
// Driven by tests/support/node_client.py; install with `cd tests/node && npm ci`.
//
// Protocol: one JSON object per line. Requests `{"id", "cmd", ...args}` are answered with
// `{"id", "ok": true, ...result}` or `{"id", "ok": false, "error", "timeout"?: true}`.
// Unsolicited lines carry an "event" key:
//   {"event":"status","status":"connecting"|"connected"|"disconnected"}
//   {"event":"synced","synced":bool}
//   {"event":"close","code":N|null,"reason":S|null,"local":bool}  (provider `connection-close`;
//       code/reason are null and local is true when the provider closed the socket itself:
//       disconnect() or its 30 s no-message watchdog)
//   {"event":"closed","code":N,"reason":S}  (provider `closed`: it gave up reconnecting)
//   {"event":"error","message":S}
//
// The client edits `doc.getText('code')`. Its indexes and lengths count UTF-16 code units,
// as JavaScript strings do: an emoji outside the BMP is 2, "é" and CJK are 1.
//
// Reconnect policy of y-websocket 3.1.0 (src/y-websocket.js, `defaultShouldReconnect`): a
// server close with code 4400-4499 is permanent ("like HTTP 4xx"): the provider sets
// shouldConnect = false, emits `closed` {code, reason} and never reconnects on its own (only an
// explicit provider.connect() - our `reconnect` - resumes). Every other code, including
// 4500-4599 and 1006 (dropped without a close frame), is transient: it reconnects with
// exponential backoff, 2^failures * 100 ms capped at maxBackoffTime (2500 ms); the failure
// count resets once a connection syncs.

import * as readline from 'node:readline'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

/** @type {WebsocketProvider | null} */
let provider = null
let status = 'disconnected'

const send = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const log = (...args) => console.error(`[yclient ${process.pid}]`, ...args)
const emit = (event, fields = {}) => {
  log(event, JSON.stringify(fields))
  send({ event, ...fields })
}

class TimeoutError extends Error {}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const connected = () => {
  if (provider === null) throw new Error('not connected: send `connect` first')
  return provider
}
const ytext = () => connected().doc.getText('code')
const textLength = () => provider?.doc.getText('code').length ?? 0
const describe = () => `textLength=${textLength()} status=${status} synced=${provider?.synced}`

/** Resolve once `check()` is true, polling every 5 ms; fail after `timeoutMs`. */
const until = async (what, check, timeoutMs = 10000) => {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) {
      throw new TimeoutError(`${what} timed out after ${timeoutMs} ms (${describe()})`)
    }
    await sleep(5)
  }
}

/** mulberry32: a tiny seeded PRNG, so that typeRandom is reproducible. */
const prng = (seed) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
// single UTF-16 code units only, so a typed character is never half a surrogate pair
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz  \néü世界'
const isLowSurrogate = (code) => code >= 0xdc00 && code <= 0xdfff

const typeRandom = async ({ count, seed, intervalMs = 0 }) => {
  const random = prng(seed)
  const text = ytext()
  for (let i = 0; i < count; i++) {
    let index = Math.floor(random() * (text.length + 1))
    // never insert between the two halves of a surrogate pair (e.g. an emoji typed elsewhere)
    if (isLowSurrogate(text.toString().charCodeAt(index))) index--
    text.insert(index, ALPHABET[Math.floor(random() * ALPHABET.length)])
    if (intervalMs > 0) await sleep(intervalMs)
    else if (i % 16 === 15) await new Promise(setImmediate) // let the socket breathe
  }
}

const connect = ({ url, room, params = {} }) => {
  if (provider !== null) throw new Error('already connected')
  // connect only once the handlers below are attached, so that no event is missed
  provider = new WebsocketProvider(url, room, new Y.Doc(), {
    WebSocketPolyfill: WebSocket,
    params,
    connect: false
  })
  provider.on('status', (e) => {
    status = e.status
    emit('status', { status })
  })
  provider.on('sync', (synced) => emit('synced', { synced }))
  provider.on('connection-close', (e) =>
    emit('close', e ? { code: e.code, reason: e.reason, local: false } : { code: null, reason: null, local: true })
  )
  provider.on('closed', ({ code, reason }) => emit('closed', { code, reason }))
  provider.on('connection-error', (e) => emit('error', { message: e?.message ?? String(e) }))
  provider.connect()
}

/** Destroy the provider, giving the socket up to 1 s to send its close frame, then exit. */
const close = async (id) => {
  const ws = provider?.ws
  provider?.destroy()
  provider?.doc.destroy()
  if (ws && ws.readyState !== WebSocket.CLOSED) {
    await Promise.race([new Promise((resolve) => ws.once('close', resolve)), sleep(1000)])
  }
  process.stdout.write(JSON.stringify({ id, ok: true }) + '\n', () => process.exit(0))
}

const commands = {
  connect,
  waitSynced: ({ timeoutMs }) => until('waitSynced', () => connected().synced, timeoutMs),
  insert: ({ index, text }) => ytext().insert(index, text),
  delete: ({ index, length }) => ytext().delete(index, length),
  text: () => ({ text: ytext().toString() }),
  waitText: ({ text, timeoutMs }) =>
    until(`waitText(${JSON.stringify(text).slice(0, 80)})`, () => ytext().toString() === text, timeoutMs),
  waitLength: ({ length, timeoutMs }) =>
    until(`waitLength(${length})`, () => ytext().length === length, timeoutMs),
  typeRandom,
  setAwareness: ({ state }) => connected().awareness.setLocalState(state),
  awareness: () => ({ states: Object.fromEntries(connected().awareness.getStates()) }),
  stateVector: () => ({ stateVector: Buffer.from(Y.encodeStateVector(connected().doc)).toString('base64') }),
  clientId: () => ({ clientId: connected().doc.clientID }),
  status: () => ({
    status,
    synced: provider?.synced ?? false,
    shouldConnect: provider?.shouldConnect ?? false,
    textLength: textLength()
  }),
  disconnect: () => connected().disconnect(),
  reconnect: () => connected().connect()
}

const handle = async (line) => {
  let id = null
  try {
    const { id: reqId, cmd, ...args } = JSON.parse(line)
    id = reqId
    if (cmd === 'close') return await close(id)
    if (!(cmd in commands)) throw new Error(`unknown command ${JSON.stringify(cmd)}`)
    const result = await commands[cmd](args)
    send({ id, ok: true, ...result })
  } catch (err) {
    log('request failed:', line, err)
    send({ id, ok: false, error: String(err?.message ?? err), timeout: err instanceof TimeoutError })
  }
}

process.stdout.on('error', () => process.exit(0)) // the controlling test is gone
process.on('uncaughtException', (err) => emit('error', { message: `uncaught: ${err?.stack ?? err}` }))
process.on('unhandledRejection', (err) => emit('error', { message: `unhandled: ${err?.stack ?? err}` }))
readline.createInterface({ input: process.stdin }).on('line', handle).on('close', () => close(null))

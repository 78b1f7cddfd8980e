// The client side of bench/suite.py and bench/scaleout.py: one Node process plays one role of a
// scenario (a trace writer, an observer, a group of typists, a join storm, idle connections)
// against any server. Every server speaking the y-websocket protocol gets the same client, the
// stock y-websocket WebsocketProvider; Hocuspocus gets its own HocuspocusProvider. Driven by
// bench/harness.py.
//
//   node clients.mjs '<json config>'
//
// Lines on stdout are JSON events: {"event": "ready", ...} once connected and synced,
// {"event": "progress", ...} for the orchestrator, {"event": "done", ...} with the results,
// {"event": "error", "message"} on failure. Lines on stdin are JSON commands: {"cmd": "start"},
// {"cmd": "observed", "clock": N} (the writer's throttle), {"cmd": "stop"}.
// Times are epoch milliseconds from performance.timeOrigin + performance.now(): sub-millisecond
// and comparable between the processes of one machine.

import { readFileSync, writeFileSync } from 'node:fs'
import * as readline from 'node:readline'
import { gunzipSync } from 'node:zlib'
import { HocuspocusProvider } from '@hocuspocus/provider'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'

const config = JSON.parse(process.argv[2])
const now = () => performance.timeOrigin + performance.now()
const send = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, ...fields }) + '\n')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const breathe = () => new Promise(setImmediate)

/** Resolve once `check()` holds, polling every `everyMs`; reject after `timeoutMs`. */
const until = async (what, check, timeoutMs, everyMs = 2) => {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: timed out after ${timeoutMs} ms`)
    await sleep(everyMs)
  }
}

// -- commands from the orchestrator ---------------------------------------------------------

const handlers = { stop: () => process.exit(0) }
let started = null
const startCommand = new Promise((resolve) => { started = resolve })
handlers.start = () => started()
readline.createInterface({ input: process.stdin })
  .on('line', (line) => {
    const command = JSON.parse(line)
    handlers[command.cmd]?.(command)
  })
  .on('close', () => process.exit(0))

// -- one client -----------------------------------------------------------------------------

/**
 * A Y.Doc joined to `room` on the server; `synced` resolves once the server's state arrived.
 * A server of several processes (`config.server.urls`) is joined at process `slot` modulo
 * their number. y-websocket: BroadcastChannel off, or clients of one room in this process
 * would sync each other without the server.
 */
const join = (room, slot = 0) => {
  const { kind, urls } = config.server
  const serverProcess = slot % urls.length
  const url = urls[serverProcess]
  const doc = new Y.Doc()
  let provider
  const synced = new Promise((resolve) => {
    if (kind === 'hocuspocus') {
      provider = new HocuspocusProvider({
        url, name: room, document: doc, WebSocketPolyfill: WebSocket, onSynced: () => resolve()
      })
    } else {
      provider = new WebsocketProvider(url, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
      provider.on('sync', (isSynced) => { if (isSynced) resolve() })
    }
  })
  return { doc, text: doc.getText('code'), provider, synced, serverProcess }
}

const joinAll = async (clients, timeoutMs) => {
  const timeout = sleep(timeoutMs).then(() => { throw new Error(`not synced after ${timeoutMs} ms`) })
  await Promise.race([Promise.all(clients.map((c) => c.synced)), timeout])
}

/**
 * `perRoom` clients in each room: the rooms' first clients first, the others once those
 * synced. Joining an empty room together loses a client's sync on pycrdt-websocket 0.16.5
 * (it then waits for y-websocket's 30 s reconnect; tests/test_upstream_defects.py), and what
 * the scenarios measure comes after the joins. Over several server processes a room's clients
 * go round-robin, each room starting one process further, so the processes hold as many.
 */
const joinRooms = async (rooms, perRoom, setup = () => {}) => {
  const clients = rooms.map((room, index) => [join(room, index)])
  await joinAll(clients.map(([first]) => first), config.timeoutMs)
  for (const [index, room] of rooms.entries()) {
    for (let i = 1; i < perRoom; i++) clients[index].push(join(room, index + i))
  }
  for (const client of clients.flat()) setup(client)
  await joinAll(clients.flat(), config.timeoutMs)
  return clients
}

/** Sum of the document's state vector: the writer's clock when only the writer writes. */
const clockOf = (doc) => {
  let sum = 0
  for (const clock of Y.decodeStateVector(Y.encodeStateVector(doc)).values()) sum += clock
  return sum
}

// -- the trace ------------------------------------------------------------------------------

/** The first `limit` transactions of an editing trace and the text they end with. */
const sliceTrace = (data, limit) => {
  const txns = data.txns.slice(0, limit ?? data.txns.length).map((txn) => txn.patches ?? txn)
  if (txns.length === data.txns.length) return { txns, endContent: data.endContent }
  const chars = []
  for (const patches of txns) {
    for (const [position, deleted, inserted] of patches) chars.splice(position, deleted, ...inserted)
  }
  return { txns, endContent: chars.join('') }
}

/** A trace file: gzipped as published, or the plain slice `build` wrote. */
const loadTrace = (path, limit) => {
  const raw = readFileSync(path)
  return sliceTrace(JSON.parse((path.endsWith('.gz') ? gunzipSync(raw) : raw).toString('utf8')), limit)
}

/** Positions count code points; Y.Text counts UTF-16 units: equal for the ASCII traces used. */
const applyPatches = (doc, text, patches) => doc.transact(() => {
  for (const [position, deleted, inserted] of patches) {
    if (deleted) text.delete(position, deleted)
    if (inserted) text.insert(position, inserted)
  }
})

// -- roles ----------------------------------------------------------------------------------

/**
 * Prepare a run once: the trace's slice (plain JSON, quick for every other role to read), its
 * final text, its encoded document (for seeding rooms) and its updates (for the database).
 */
const build = async () => {
  const { txns, endContent } = loadTrace(config.trace, config.limit)
  writeFileSync(config.traceOut, JSON.stringify({ endContent, txns }))
  writeFileSync(config.textOut, endContent)
  const doc = new Y.Doc()
  const text = doc.getText('code')
  const updates = []
  doc.on('update', (update) => updates.push(update))
  for (const patches of txns) applyPatches(doc, text, patches)
  if (text.toString() !== endContent) throw new Error('replay does not give endContent')
  writeFileSync(config.documentOut, Y.encodeStateAsUpdate(doc))
  // the log a room holds after the session: 4-byte big-endian length, then the update
  const frames = Buffer.alloc(updates.reduce((n, u) => n + 4 + u.length, 0))
  let offset = 0
  for (const update of updates) {
    frames.writeUInt32BE(update.length, offset)
    frames.set(update, offset + 4)
    offset += 4 + update.length
  }
  writeFileSync(config.updatesOut, frames)
  send('done', { edits: txns.length })
}

/**
 * Replay the trace as fast as possible. With `maxLead`, stay at most that many edits ahead of
 * the slowest observer: the orchestrator relays the observers' view of this writer's clock,
 * and the edits known to them are those whose clock after the edit is at most that.
 */
const writer = async () => {
  const { txns } = loadTrace(config.trace, config.limit)
  const client = join(config.room)
  await joinAll([client], config.timeoutMs)
  const clocks = new Float64Array(txns.length)
  let observed = 0
  let wake = null
  handlers.observed = ({ clock }) => { observed = Math.max(observed, clock); wake?.() }
  const editsKnown = () => {
    let lo = 0
    let hi = txns.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (clocks[mid] <= observed) lo = mid + 1
      else hi = mid
    }
    return lo
  }
  send('ready', { clientId: client.doc.clientID })
  await startCommand
  const startedAt = now()
  let waits = 0
  for (let i = 0; i < txns.length; i++) {
    applyPatches(client.doc, client.text, txns[i])
    clocks[i] = Y.getState(client.doc.store, client.doc.clientID)
    if (config.maxLead != null) {
      while (i + 1 - Math.min(editsKnown(), i + 1) >= config.maxLead) {
        waits++
        await new Promise((resolve) => { wake = resolve })
      }
    }
    if (i % 64 === 63) await breathe() // let the socket write and the commands arrive
  }
  const issuedAt = now()
  const ws = client.provider.ws ?? client.provider.configuration?.websocketProvider?.webSocket
  await until('writer socket drained', () => !ws || ws.bufferedAmount === 0, config.timeoutMs)
  send('done', { startedAt, issuedAt, drainedAt: now(), edits: txns.length, waits })
}

/** Hold the room's text; report the writer's clock as seen here, and when endContent arrived. */
const observer = async () => {
  const { endContent } = loadTrace(config.trace, config.limit)
  const client = join(config.room)
  await joinAll([client], config.timeoutMs)
  let doneAt = null
  client.doc.on('update', () => {
    if (doneAt === null && client.text.length === endContent.length &&
        client.text.toString() === endContent) doneAt = now()
  })
  send('ready', {})
  let reported = -1
  const report = setInterval(() => {
    const clock = clockOf(client.doc)
    if (clock !== reported) send('progress', { clock: (reported = clock) })
  }, config.progressMs ?? 20)
  try {
    await until('observer holds endContent', () => doneAt !== null, config.timeoutMs, 5)
  } catch (error) {
    const text = client.text.toString()
    send('done', { doneAt: null, length: text.length, expected: endContent.length })
    throw error
  } finally {
    clearInterval(report)
  }
  send('done', { doneAt, length: endContent.length, expected: endContent.length })
}

/** mulberry32: a small seeded PRNG, so runs type the same keystrokes at the same moments. */
const prng = (seed) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

/**
 * Rooms of clients typing one character at a random position at human speed (or faster), each
 * at most `maxKeystrokes`. Every client records when it typed each of its clocks; a receiver
 * decodes which clocks an incoming update carries, so the latency is from the keystroke to the
 * other client's Y.Doc. Those between clients of different server processes are also kept
 * apart (`crossLatencies`).
 */
const typists = async () => {
  const random = prng(config.seed)
  const sentAt = new Map() // clientID -> Float64Array indexed by clock
  const processOf = new Map() // clientID -> the server process it joined
  const latencies = []
  const crossLatencies = []
  const measure = (client) => {
    sentAt.set(client.doc.clientID, new Float64Array(config.maxKeystrokes))
    processOf.set(client.doc.clientID, client.serverProcess)
    client.doc.on('update', (update, origin) => {
      if (origin === null || origin === client.doc.clientID) return // local typing
      const meta = Y.parseUpdateMeta(update)
      const at = now()
      for (const [sender, to] of meta.to) {
        const times = sentAt.get(sender)
        if (!times) continue
        const cross = processOf.get(sender) !== client.serverProcess
        for (let clock = meta.from.get(sender) ?? 0; clock < to; clock++) {
          if (times[clock] > 0) {
            latencies.push(at - times[clock])
            if (cross) crossLatencies.push(at - times[clock])
          }
        }
      }
    })
  }
  const joined = await joinRooms(config.rooms, config.clientsPerRoom, measure)
  const rooms = joined.map((clients, index) => ({ room: config.rooms[index], clients, typed: 0 }))
  const everyone = joined.flat()
  send('ready', { clients: everyone.length })
  await startCommand
  const startedAt = now()
  const endAt = startedAt + config.seconds * 1000
  const { minRate, maxRate } = config
  const type = async (room, client) => {
    const times = sentAt.get(client.doc.clientID)
    await sleep(random() * 1000 / minRate) // spread the first keystrokes
    while (now() < endAt) {
      const index = Math.floor(random() * (client.text.length + 1))
      const clock = Y.getState(client.doc.store, client.doc.clientID)
      if (clock >= times.length) break
      times[clock] = now()
      client.doc.transact(() => client.text.insert(index, 'x'), client.doc.clientID)
      room.typed++
      await sleep(1000 / (minRate + random() * (maxRate - minRate)))
    }
  }
  await Promise.all(rooms.flatMap((room) => room.clients.map((client) => type(room, client))))
  const typedAt = now()
  let converged = 0
  try {
    await until('rooms converged', () => rooms.every((room) => room.clients.every(
      (client) => client.text.length === room.typed)), config.timeoutMs, 10)
  } finally {
    for (const room of rooms) {
      const first = room.clients[0].text.toString()
      if (first.length === room.typed &&
          room.clients.every((client) => client.text.toString() === first)) converged++
    }
    send('done', {
      startedAt,
      typedAt,
      convergedAt: now(),
      rooms: rooms.length,
      converged,
      keystrokes: rooms.reduce((n, room) => n + room.typed, 0),
      latencies: latencies.map((ms) => Math.round(ms * 100) / 100),
      crossLatencies: crossLatencies.map((ms) => Math.round(ms * 100) / 100)
    })
  }
}

/** Put a document into a room (one update: the trace's whole state) and keep it loaded. */
const seed = async () => {
  const update = readFileSync(config.document)
  const seeder = join(config.room)
  await joinAll([seeder], config.timeoutMs)
  Y.applyUpdate(seeder.doc, update)
  const expected = seeder.text.length
  // a second client proves the server holds it, not just our socket buffer
  const check = join(config.room)
  await joinAll([check], config.timeoutMs)
  await until('seeded room', () => check.text.length === expected, config.timeoutMs)
  check.provider.destroy()
  send('ready', { length: expected })
}

/** `count` clients join at once; the time until every one holds the whole document. */
const storm = async () => {
  send('ready', {})
  await startCommand
  const startedAt = now()
  const clients = Array.from({ length: config.count }, () => join(config.room))
  const syncedAt = []
  await joinAll(clients.map((client) => ({
    synced: client.synced.then(() => syncedAt.push(now()))
  })), config.timeoutMs)
  send('done', {
    startedAt,
    syncedAt,
    complete: clients.filter((client) => client.text.length === config.expectedLength).length
  })
}

/** Idle clients: `rooms` rooms of `clientsPerRoom`, each room with `textLength` characters. */
const idle = async () => {
  const rooms = await joinRooms(config.rooms, config.clientsPerRoom)
  const everyone = rooms.flat()
  for (const clients of rooms) clients[0].text.insert(0, 'x'.repeat(config.textLength))
  await until('idle rooms filled', () => everyone.every((c) => c.text.length === config.textLength),
    config.timeoutMs, 10)
  send('ready', { clients: everyone.length })
}

const roles = { build, writer, observer, typists, seed, storm, idle }
roles[config.role]().catch((error) => {
  send('error', { message: String(error?.stack ?? error) })
  process.exit(1)
})

// The room's Y.Doc and its WebSocket connection (stock y-websocket provider),
// plus the two states the UI shows: connection state and save state.
//
// Save state relies on the server's opt-in "committed" message: with `?ack=1`
// the server sends `[100, varUint(n)]` after each commit, n being how many
// document-update messages from this socket are durably stored. The socket
// below counts what it sent, so "saved" means: this socket has answered the
// server's sync step 1 (its sync step 2 carries edits made while disconnected)
// and every update it sent is committed.

import * as decoding from 'lib0/decoding'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'

import { accessToken } from './api'

export type ConnectionState = 'connecting' | 'live' | 'reconnecting' | 'offline'
export type SaveState = 'saved' | 'saving' | 'unsaved'

export interface ConnectionEvents {
  onConnectionState(state: ConnectionState): void
  onSaveState(state: SaveState): void
  /** The server closed the connection for good (close codes 4400-4499). */
  onClosed(code: number, reason: string): void
  /** The server closed the connection and the provider will retry. */
  onDropped(code: number): void
}

export interface RoomConnection {
  doc: Y.Doc
  provider: WebsocketProvider
  hasUnsavedChanges(): boolean
  destroy(): void
}

const MESSAGE_COMMITTED = 100
const MESSAGE_SYNC = 0
const SYNC_STEP_2 = 1
const SYNC_UPDATE = 2

/** The sync message type (`[0, type, …]`) of an outgoing message, or null for other messages. */
function syncMessageType(data: unknown): number | null {
  const bytes = data instanceof Uint8Array ? data : data instanceof ArrayBuffer ? new Uint8Array(data) : null
  return bytes !== null && bytes[0] === MESSAGE_SYNC ? bytes[1] : null
}

export function connectToRoom(roomId: string, events: ConnectionEvents): RoomConnection {
  const doc = new Y.Doc()
  let unsavedEdits = false
  let everLive = false

  /** A browser WebSocket that counts the document updates it sends and the server commits. */
  class CountingSocket extends WebSocket {
    answeredSync = false
    updatesSent = 0
    updatesCommitted = 0

    override send(data: Parameters<WebSocket['send']>[0]): void {
      super.send(data)
      const type = syncMessageType(data)
      if (type !== SYNC_STEP_2 && type !== SYNC_UPDATE) return
      this.answeredSync ||= type === SYNC_STEP_2
      this.updatesSent++
      updateSaveState()
    }
  }

  const wsBase = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`
  const provider = new WebsocketProvider(wsBase, roomId, doc, {
    params: accessToken ? { ack: '1', token: accessToken } : { ack: '1' },
    WebSocketPolyfill: CountingSocket,
    // Every tab talks to the server itself, so "saved" always means "on the server".
    disableBc: true,
  })

  const currentSocket = (): CountingSocket | null => provider.ws as CountingSocket | null

  provider.messageHandlers[MESSAGE_COMMITTED] = (_encoder, decoder, _provider, _emitSynced, _type) => {
    const socket = currentSocket()
    if (socket === null) return
    socket.updatesCommitted = decoding.readVarUint(decoder)
    updateSaveState()
  }

  function updateSaveState(): void {
    const socket = currentSocket()
    const allCommitted =
      socket !== null && provider.wsconnected && socket.answeredSync && socket.updatesCommitted >= socket.updatesSent
    if (allCommitted) unsavedEdits = false
    if (!unsavedEdits) events.onSaveState('saved')
    else events.onSaveState(provider.wsconnected ? 'saving' : 'unsaved')
  }

  const onLocalUpdate = (_update: Uint8Array, origin: unknown): void => {
    if (origin === provider) return // came from the server
    unsavedEdits = true
    updateSaveState()
  }
  doc.on('update', onLocalUpdate)

  let closedForGood = false
  function updateConnectionState(): void {
    let state: ConnectionState
    if (closedForGood || !navigator.onLine) state = 'offline'
    else if (provider.wsconnected && provider.synced) state = 'live'
    else state = everLive ? 'reconnecting' : 'connecting'
    events.onConnectionState(state)
    updateSaveState()
  }

  provider.on('status', updateConnectionState)
  provider.on('sync', (synced) => {
    everLive ||= synced
    updateConnectionState()
  })
  provider.on('connection-close', (event) => {
    if (event !== null) events.onDropped(event.code)
  })
  provider.on('closed', ({ code, reason }) => {
    closedForGood = true
    updateConnectionState()
    events.onClosed(code, reason)
  })
  window.addEventListener('online', updateConnectionState)
  window.addEventListener('offline', updateConnectionState)

  return {
    doc,
    provider,
    hasUnsavedChanges: () => unsavedEdits,
    destroy() {
      window.removeEventListener('online', updateConnectionState)
      window.removeEventListener('offline', updateConnectionState)
      doc.off('update', onLocalUpdate)
      provider.destroy()
      doc.destroy()
    },
  }
}

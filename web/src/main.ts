// Entry point: `/` is the home page, `/rooms/{id}` a room. The editor (Monaco) is
// loaded only for a room that exists, so the home page and error pages stay light.

import './styles.css'
import { createRoom, getRoom, RoomNotFoundError } from './api'
import { LANGUAGES } from './languages'
import { homeJoinError, renderHome, renderMessage } from './ui'

const root = document.getElementById('app')!

function roomIdFromInput(input: string): string | null {
  const text = input.trim()
  const fromLink = /\/rooms\/([^/?#]+)/.exec(text)
  const id = fromLink ? decodeURIComponent(fromLink[1]) : text
  return /^[\w-]{1,64}$/.test(id) ? id : null
}

function showHome(): void {
  renderHome(root, LANGUAGES, {
    async createRoom(name, language) {
      const room = await createRoom({ name: name || undefined, language })
      location.assign(`/rooms/${encodeURIComponent(room.id)}`)
    },
    joinRoom(input) {
      const id = roomIdFromInput(input)
      if (id === null) homeJoinError(root, 'Enter a room id (letters, digits, - and _) or a room link.')
      else location.assign(`/rooms/${encodeURIComponent(id)}`)
    },
  })
}

async function showRoom(roomId: string): Promise<void> {
  const roomPage = import('./room') // download the editor while the room is looked up
  try {
    const room = await getRoom(roomId)
    ;(await roomPage).openRoom(root, room)
  } catch (error) {
    if (error instanceof RoomNotFoundError) renderMessage(root, 'Room not found', error.message)
    else renderMessage(root, 'Cannot open this room', (error as Error).message)
  }
}

const roomMatch = /^\/rooms\/([^/]+)\/?$/.exec(location.pathname)
if (roomMatch) void showRoom(decodeURIComponent(roomMatch[1]))
else if (location.pathname === '/') showHome()
else renderMessage(root, 'Page not found', `There is nothing at ${location.pathname}.`)

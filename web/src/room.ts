// The room page: wires the connection, the editor, presence and the view together.

import { tokenIsReadOnly, updateRoom, type ApiError, type Room } from './api'
import { registerAutocomplete } from './autocomplete'
import { connectToRoom } from './connection'
import { createSharedEditor } from './editor'
import { LANGUAGES } from './languages'
import { loadUser, Presence } from './presence'
import { renderMessage, renderRoom } from './ui'

/** Messages for close codes after which the provider stops reconnecting (44xx). */
const CLOSED_MESSAGES: Record<number, string> = {
  4400: 'The server could not read a message from this page. Reload to reconnect.',
  4401: 'You are not signed in for this room. Reload after signing in.',
  4403: 'You do not have access to this room.',
  4429: 'Too many requests from this browser. Wait a moment, then reload.',
}

/** Messages for server closes after which the provider reconnects by itself. */
const DROPPED_MESSAGES: Record<number, string> = {
  1009: 'Your last change was too large for the server and was not saved.',
  1012: 'The server is restarting. Reconnecting…',
}

export function openRoom(root: HTMLElement, room: Room): void {
  const user = loadUser()
  let language = room.language
  const view = renderRoom(root, room, LANGUAGES, user, {
    changeLanguage(next) {
      applyLanguage(next)
      meta.set('language', next)
      updateRoom(room.id, { language: next }).catch((error: ApiError) =>
        view.showBanner(`The language was changed here, but not saved on the server: ${error.message}`),
      )
    },
    rename: (name) => presence.rename(name),
  })

  const connection = connectToRoom(room.id, {
    onConnectionState(state) {
      view.setConnectionState(state)
      if (state === 'live') view.hideBanner()
    },
    onSaveState: (state) => view.setSaveState(state),
    onDropped(code) {
      view.showBanner(DROPPED_MESSAGES[code] ?? 'The connection was lost. Reconnecting… Your edits are kept here meanwhile.')
    },
    onClosed(code, reason) {
      if (code === 4404) {
        autocompletion.dispose()
        presence.destroy()
        shared.destroy()
        connection.destroy()
        renderMessage(root, 'Room not found', 'This room no longer exists on the server.')
        return
      }
      shared.editor.updateOptions({ readOnly: true })
      view.showBanner(CLOSED_MESSAGES[code] ?? `The server closed the connection (${code} ${reason}). Reload to try again.`)
    },
  })

  const shared = createSharedEditor(view.editorContainer, connection.doc.getText('code'), connection.provider.awareness, language)
  const presence = new Presence(connection.provider.awareness, user, view.setParticipants)
  const autocompletion = registerAutocomplete(() => language)

  // Changes of language travel through the shared doc too, so collaborators follow them
  // live. At load the room's metadata (REST) is authoritative, so only changes after the
  // first sync count.
  const meta = connection.doc.getMap<string>('meta')
  function applyLanguage(next: string): void {
    language = next
    shared.setLanguage(next)
    view.setLanguage(next)
  }
  connection.provider.once('sync', () =>
    meta.observe(() => {
      const value = meta.get('language')
      if (value && value !== language) applyLanguage(value)
    }),
  )

  window.addEventListener('beforeunload', (event) => {
    if (connection.hasUnsavedChanges()) event.preventDefault()
  })
  if (tokenIsReadOnly()) {
    shared.editor.updateOptions({ readOnly: true })
    view.showBanner('Read-only: this link lets you follow the room, not edit it.')
  } else {
    shared.editor.focus()
  }
}

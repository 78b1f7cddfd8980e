// Plain-DOM views: the home page, the room page and full-page messages.
// Views only render and report user intent; main.ts wires them up.

import { accessToken } from './api'
import type { ConnectionState, SaveState } from './connection'
import type { Participant } from './presence'

type Child = Node | string | null
type Props = Record<string, string | boolean>

/** Create an element; `props` become attributes (`true` → empty, `false` → absent). */
function h<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag)
  for (const [name, value] of Object.entries(props)) {
    if (value === true) element.setAttribute(name, '')
    else if (value !== false) element.setAttribute(name, value)
  }
  element.append(...children.filter((child) => child !== null))
  return element
}

function languageSelect(languages: Record<string, string>, selected: string, props: Props = {}): HTMLSelectElement {
  const select = h('select', props)
  const entries = selected in languages ? Object.entries(languages) : [...Object.entries(languages), [selected, selected]]
  for (const [id, label] of entries) select.append(h('option', { value: id, selected: id === selected }, label))
  return select
}

function showFormError(form: HTMLFormElement, message: string): void {
  const output = form.querySelector('.form-error')
  if (output) output.textContent = message
}

export interface HomeHandlers {
  createRoom(name: string, language: string): Promise<void>
  joinRoom(roomIdOrLink: string): void
}

export function renderHome(root: HTMLElement, languages: Record<string, string>, handlers: HomeHandlers): void {
  const create = h(
    'form',
    { 'aria-labelledby': 'create-title' },
    h('h2', { id: 'create-title' }, 'Create a room'),
    h('label', {}, 'Name', h('input', { name: 'name', placeholder: 'Untitled', maxlength: '100' })),
    h('label', {}, 'Language', languageSelect(languages, 'python', { name: 'language' })),
    h('button', { type: 'submit' }, 'Create room'),
    h('p', { class: 'form-error', role: 'alert' }),
  )
  const join = h(
    'form',
    { 'aria-labelledby': 'join-title' },
    h('h2', { id: 'join-title' }, 'Join a room'),
    h('label', {}, 'Room id or link', h('input', { name: 'room', required: true, placeholder: 'https://…/rooms/abc123' })),
    h('button', { type: 'submit' }, 'Join'),
    h('p', { class: 'form-error', role: 'alert' }),
  )

  create.addEventListener('submit', (event) => {
    event.preventDefault()
    const data = new FormData(create)
    const button = create.querySelector('button')!
    button.disabled = true
    handlers
      .createRoom(String(data.get('name') ?? '').trim(), String(data.get('language')))
      .catch((error: Error) => showFormError(create, error.message))
      .finally(() => (button.disabled = false))
  })
  join.addEventListener('submit', (event) => {
    event.preventDefault()
    handlers.joinRoom(String(new FormData(join).get('room') ?? ''))
  })

  document.title = 'Collab'
  root.replaceChildren(
    h(
      'main',
      { class: 'home' },
      h('header', {}, h('h1', {}, 'Collab'), h('p', {}, 'Write code together, live, in the browser.')),
      h('div', { class: 'cards' }, create, join),
    ),
  )
}

export function homeJoinError(root: HTMLElement, message: string): void {
  const form = root.querySelector<HTMLFormElement>('form[aria-labelledby="join-title"]')
  if (form) showFormError(form, message)
}

export function renderMessage(root: HTMLElement, title: string, text: string): void {
  document.title = `${title} · Collab`
  root.replaceChildren(
    h(
      'main',
      { class: 'message', role: 'alert' },
      h('h1', {}, title),
      h('p', {}, text),
      h('a', { href: '/' }, 'Create or join a room'),
    ),
  )
}

const CONNECTION_LABELS: Record<ConnectionState, string> = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
}

const SAVE_LABELS: Record<SaveState, string> = {
  saved: 'Saved',
  saving: 'Saving…',
  unsaved: 'Offline — not saved',
}

export interface RoomHandlers {
  changeLanguage(language: string): void
  rename(name: string): void
}

export interface RoomView {
  editorContainer: HTMLElement
  setConnectionState(state: ConnectionState): void
  setSaveState(state: SaveState): void
  setParticipants(participants: Participant[]): void
  setLanguage(language: string): void
  showBanner(message: string): void
  hideBanner(): void
}

export function renderRoom(
  root: HTMLElement,
  room: { id: string; name: string; language: string },
  languages: Record<string, string>,
  user: { name: string },
  handlers: RoomHandlers,
): RoomView {
  // The token (when the server requires one) is the invitation: the link carries it.
  const shareLink = `${location.origin}/rooms/${encodeURIComponent(room.id)}${accessToken ? `?token=${encodeURIComponent(accessToken)}` : ''}`
  const language = languageSelect(languages, room.language, { 'aria-label': 'Language' })
  const linkInput = h('input', { readonly: true, value: shareLink, 'aria-label': 'Share link', class: 'share-link' })
  const copy = h('button', { type: 'button' }, 'Copy link')
  const connection = h('span', { class: 'status', 'data-testid': 'connection-state', role: 'status' })
  const save = h('span', { class: 'status', 'data-testid': 'save-state', role: 'status' })
  const banner = h('div', { class: 'banner', role: 'alert', hidden: true })
  const editorContainer = h('div', { class: 'editor' })
  const nameInput = h('input', { value: user.name, maxlength: '32', 'aria-label': 'Your name' })
  const people = h('ul', { class: 'participants', 'aria-label': 'Participants' })

  language.addEventListener('change', () => handlers.changeLanguage(language.value))
  nameInput.addEventListener('change', () => handlers.rename(nameInput.value))
  copy.addEventListener('click', () => {
    linkInput.select()
    navigator.clipboard?.writeText(shareLink).then(
      () => (copy.textContent = 'Copied'),
      () => (copy.textContent = 'Press Ctrl+C'),
    )
  })

  document.title = `${room.name} · Collab`
  root.replaceChildren(
    h(
      'div',
      { class: 'room' },
      h(
        'header',
        { class: 'toolbar' },
        h('a', { href: '/', class: 'brand' }, 'Collab'),
        h('h1', {}, room.name),
        language,
        h('div', { class: 'share' }, linkInput, copy),
        h('div', { class: 'states' }, connection, save),
      ),
      banner,
      h(
        'div',
        { class: 'workspace' },
        editorContainer,
        h('aside', {}, h('h2', {}, 'People here'), people, h('label', {}, 'Your name', nameInput)),
      ),
    ),
  )

  const setStatus = (element: HTMLElement, state: string, label: string): void => {
    element.dataset.state = state
    element.textContent = label
  }

  return {
    editorContainer,
    setConnectionState: (state) => setStatus(connection, state, CONNECTION_LABELS[state]),
    setSaveState: (state) => setStatus(save, state, SAVE_LABELS[state]),
    setParticipants(participants) {
      people.replaceChildren(
        ...participants.map((p) =>
          h(
            'li',
            { style: `--color: ${p.color}` },
            h('span', { class: 'dot', 'aria-hidden': 'true' }),
            p.isLocal ? `${p.name} (you)` : p.name,
          ),
        ),
      )
    },
    setLanguage(next) {
      if (![...language.options].some((option) => option.value === next)) language.append(h('option', { value: next }, next))
      language.value = next
    },
    showBanner(message) {
      banner.textContent = message
      banner.hidden = false
    },
    hideBanner: () => (banner.hidden = true),
  }
}

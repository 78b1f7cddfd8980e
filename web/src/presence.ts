// Who is in the room: our identity in awareness (`{ user: { name, color } }`),
// the participants list, and the per-collaborator styles for the remote
// cursors and selections that y-monaco draws (`yRemoteSelection-{clientID}`,
// `yRemoteSelectionHead-{clientID}`), each head labelled with the name.

import type { Awareness } from 'y-protocols/awareness'

export interface User {
  name: string
  color: string
}

export interface Participant extends User {
  clientId: number
  isLocal: boolean
}

const STORAGE_KEY = 'collab.user'
const MAX_NAME_LENGTH = 32
const COLORS = ['#e11d48', '#2563eb', '#16a34a', '#d97706', '#9333ea', '#0891b2', '#db2777', '#65a30d']

/** The identity remembered in this browser, or a fresh guest one. */
export function loadUser(): User {
  try {
    const stored = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? 'null') as Partial<User> | null
    if (stored && typeof stored.name === 'string' && typeof stored.color === 'string') {
      return { name: cleanName(stored.name), color: stored.color }
    }
  } catch {
    // unreadable storage: fall through to a guest identity
  }
  const user = {
    name: `Guest ${Math.floor(1000 + Math.random() * 9000)}`,
    color: COLORS[Math.floor(Math.random() * COLORS.length)],
  }
  saveUser(user)
  return user
}

function saveUser(user: User): void {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(user))
}

function cleanName(name: string): string {
  return name.trim().slice(0, MAX_NAME_LENGTH) || 'Anonymous'
}

/** A CSS string literal, safe for any user-provided text. */
function cssString(text: string): string {
  return `"${text.replace(/[\\"]/g, '\\$&').replace(/[\n\r\f]/g, ' ')}"`
}

function isColor(value: unknown): value is string {
  return typeof value === 'string' && /^#[0-9a-fA-F]{6}$/.test(value)
}

export class Presence {
  private readonly style = document.head.appendChild(document.createElement('style'))

  constructor(
    private readonly awareness: Awareness,
    private user: User,
    private readonly onParticipants: (participants: Participant[]) => void,
  ) {
    awareness.setLocalStateField('user', user)
    awareness.on('change', this.render)
    this.render()
  }

  rename(name: string): void {
    this.user = { ...this.user, name: cleanName(name) }
    saveUser(this.user)
    this.awareness.setLocalStateField('user', this.user)
  }

  participants(): Participant[] {
    const list: Participant[] = []
    this.awareness.getStates().forEach((state, clientId) => {
      const user = state.user as Partial<User> | undefined
      if (!user || typeof user.name !== 'string') return
      list.push({
        clientId,
        name: cleanName(user.name),
        color: isColor(user.color) ? user.color : '#64748b',
        isLocal: clientId === this.awareness.clientID,
      })
    })
    return list.sort((a, b) => Number(b.isLocal) - Number(a.isLocal) || a.name.localeCompare(b.name))
  }

  destroy(): void {
    this.awareness.off('change', this.render)
    this.style.remove()
  }

  private readonly render = (): void => {
    const participants = this.participants()
    this.style.textContent = participants
      .filter((p) => !p.isLocal)
      .map(
        ({ clientId, name, color }) => `
.yRemoteSelection-${clientId} { background-color: ${color}40; }
.yRemoteSelectionHead-${clientId} { border-color: ${color}; }
.yRemoteSelectionHead-${clientId}::after { content: ${cssString(name)}; background-color: ${color}; }`,
      )
      .join('\n')
    this.onParticipants(participants)
  }
}

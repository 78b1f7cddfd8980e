// The server's REST API (/api/v1), typed for what the client uses.

export interface Room {
  id: string
  name: string
  language: string
  created_at: string
}

export interface Suggestion {
  /** What to insert at the cursor: the rest of the word after the typed prefix. */
  text: string
  /** The whole suggested word. */
  label: string
  confidence: number
}

export class RoomNotFoundError extends Error {
  constructor(roomId: string) {
    super(`There is no room with the id "${roomId}".`)
  }
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message)
  }
}

/**
 * The room token from the page's address (`/rooms/{id}?token=...`), when the server requires
 * tokens. It is sent with every request and with the WebSocket connection.
 */
export const accessToken: string | null = new URLSearchParams(location.search).get('token')

/** Whether the page's token only grants reading (the server drops a reader's edits). */
export function tokenIsReadOnly(token: string | null = accessToken): boolean {
  try {
    const payload = token?.split('.')[1]
    if (!payload) return false
    const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/'))
    return (JSON.parse(json) as { perm?: string }).perm === 'read'
  } catch {
    return false
  }
}

function headers(hasBody: boolean): Record<string, string> {
  return {
    ...(hasBody ? { 'Content-Type': 'application/json' } : {}),
    ...(accessToken ? { Authorization: `Bearer ${accessToken}` } : {}),
  }
}

async function request<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  let response: Response
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    })
  } catch (error) {
    if (signal?.aborted) throw error
    throw new ApiError('Cannot reach the server. Check your connection and try again.')
  }
  if (!response.ok) {
    const detail = await response.json().then((json: { detail?: unknown }) => json.detail, () => undefined)
    const message = typeof detail === 'string' ? detail : `The server answered ${response.status}.`
    throw new ApiError(message, response.status)
  }
  return (await response.json()) as T
}

export function createRoom(fields: { name?: string; language?: string }): Promise<Room> {
  return request('POST', '/rooms', fields)
}

export async function getRoom(roomId: string): Promise<Room> {
  try {
    return await request<Room>('GET', `/rooms/${encodeURIComponent(roomId)}`)
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) throw new RoomNotFoundError(roomId)
    throw error
  }
}

export function updateRoom(roomId: string, fields: { name?: string; language?: string }): Promise<Room> {
  return request('PATCH', `/rooms/${encodeURIComponent(roomId)}`, fields)
}

export async function autocomplete(
  code: string,
  cursorPosition: number,
  language: string,
  signal?: AbortSignal,
): Promise<Suggestion[]> {
  const result = await request<{ suggestions: Suggestion[] }>(
    'POST',
    '/autocomplete',
    { code, cursorPosition, language },
    signal,
  )
  return result.suggestions
}

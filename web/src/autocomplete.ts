// Suggestions from the server's autocomplete endpoint, offered both in
// Monaco's suggestion list and as an inline (ghost text) suggestion.
//
// Both providers ask for the same cursor position, so requests are debounced
// and shared: one request per pause in typing.

import { autocomplete, type Suggestion } from './api'
import { monaco } from './editor'

const DEBOUNCE_MS = 200

type Token = monaco.CancellationToken

function pause(ms: number, token: Token): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(!token.isCancellationRequested), ms)
    token.onCancellationRequested(() => {
      clearTimeout(timer)
      resolve(false)
    })
  })
}

/** Monaco's own cancellation error, exactly (`name` and `message` are both "Canceled"). */
function isMonacoCancellation(value: unknown): boolean {
  return value instanceof Error && value.name === 'Canceled' && value.message === 'Canceled'
}

/**
 * Monaco rejects a superseded inline-completion request with its `Canceled` error and never
 * catches it (microsoft/monaco-editor#4554, #4767): harmless, but it surfaces in the page as an
 * uncaught error. Swallow exactly that error while the providers are registered.
 */
function ignoreMonacoCancellations(): monaco.IDisposable {
  const onRejection = (event: PromiseRejectionEvent) => {
    if (isMonacoCancellation(event.reason)) event.preventDefault()
  }
  const onError = (event: ErrorEvent) => {
    if (isMonacoCancellation(event.error)) event.preventDefault()
  }
  window.addEventListener('unhandledrejection', onRejection)
  window.addEventListener('error', onError)
  return {
    dispose() {
      window.removeEventListener('unhandledrejection', onRejection)
      window.removeEventListener('error', onError)
    },
  }
}

export function registerAutocomplete(getLanguage: () => string): monaco.IDisposable {
  let last: { key: string; suggestions: Promise<Suggestion[]> } | null = null

  async function suggestionsAt(model: monaco.editor.ITextModel, position: monaco.Position, token: Token) {
    if (!(await pause(DEBOUNCE_MS, token))) return []
    const offset = model.getOffsetAt(position)
    const language = getLanguage()
    const key = `${model.id}:${model.getVersionId()}:${offset}:${language}`
    if (last?.key !== key) {
      const suggestions = autocomplete(model.getValue(), offset, language).catch(() => [])
      last = { key, suggestions }
    }
    const suggestions = await last.suggestions
    return token.isCancellationRequested ? [] : suggestions
  }

  /** The part of the suggestion's label already typed before the cursor, as a range. */
  function typedRange(model: monaco.editor.ITextModel, position: monaco.Position, label: string): monaco.Range {
    const before = model.getLineContent(position.lineNumber).slice(0, position.column - 1)
    let typed = Math.min(before.length, label.length)
    while (typed > 0 && !before.endsWith(label.slice(0, typed))) typed--
    return new monaco.Range(position.lineNumber, position.column - typed, position.lineNumber, position.column)
  }

  const completions = monaco.languages.registerCompletionItemProvider('*', {
    async provideCompletionItems(model, position, _context, token) {
      const suggestions = await suggestionsAt(model, position, token)
      return {
        // ask again as the user types: suggestions depend on the whole prefix
        incomplete: true,
        suggestions: suggestions.map((s, rank) => {
          // Replacing the typed part with itself + `text` lets Monaco filter and highlight by label.
          const range = typedRange(model, position, s.label)
          return {
            label: s.label,
            insertText: model.getValueInRange(range) + s.text,
            insertTextRules: monaco.languages.CompletionItemInsertTextRule.KeepWhitespace,
            range,
            kind: monaco.languages.CompletionItemKind.Text,
            detail: `${Math.round(s.confidence * 100)}% · server`,
            sortText: String(rank).padStart(4, '0'),
          }
        }),
      }
    },
  })

  const inline = monaco.languages.registerInlineCompletionsProvider('*', {
    async provideInlineCompletions(model, position, _context, token) {
      const [best] = await suggestionsAt(model, position, token)
      if (!best || best.text === '') return { items: [] }
      const range = new monaco.Range(position.lineNumber, position.column, position.lineNumber, position.column)
      return { items: [{ insertText: best.text, range }] }
    },
    disposeInlineCompletions() {},
  })

  const cancellations = ignoreMonacoCancellations()

  return {
    dispose() {
      completions.dispose()
      inline.dispose()
      cancellations.dispose()
    },
  }
}

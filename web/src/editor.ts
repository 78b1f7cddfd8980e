// Monaco, bound to the room's shared text through y-monaco.
//
// Only the editor core, its features and a handful of syntax-highlighting
// grammars are bundled; the editor worker is built by Vite (`?worker`), so
// nothing is loaded from a CDN.

import 'monaco-editor/esm/vs/editor/editor.all.js'
import 'monaco-editor/esm/vs/basic-languages/cpp/cpp.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/css/css.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/go/go.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/html/html.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/java/java.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/javascript/javascript.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/markdown/markdown.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/python/python.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/rust/rust.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/shell/shell.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/sql/sql.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/typescript/typescript.contribution.js'
import 'monaco-editor/esm/vs/basic-languages/yaml/yaml.contribution.js'
import * as monaco from 'monaco-editor/esm/vs/editor/editor.api.js'
import EditorWorker from 'monaco-editor/esm/vs/editor/editor.worker.js?worker'
import { MonacoBinding } from 'y-monaco'
import type { Awareness } from 'y-protocols/awareness'
import type * as Y from 'yjs'

export { monaco }

// JSON has no grammar of its own without the (large) JSON language service;
// JavaScript's highlighting fits it well.
const MONACO_MODE: Record<string, string> = { json: 'javascript' }

self.MonacoEnvironment = { getWorker: () => new EditorWorker() }

export interface SharedEditor {
  editor: monaco.editor.IStandaloneCodeEditor
  setLanguage(language: string): void
  destroy(): void
}

export function createSharedEditor(
  container: HTMLElement,
  text: Y.Text,
  awareness: Awareness,
  language: string,
): SharedEditor {
  const model = monaco.editor.createModel('', monacoMode(language))
  const editor = monaco.editor.create(container, {
    model,
    automaticLayout: true,
    fontSize: 14,
    minimap: { enabled: false },
    // room above the first line for collaborators' name labels
    padding: { top: 20 },
    scrollBeyondLastLine: false,
    inlineSuggest: { enabled: true },
  })
  const binding = new MonacoBinding(text, model, new Set([editor]), awareness)
  return {
    editor,
    setLanguage: (next) => monaco.editor.setModelLanguage(model, monacoMode(next)),
    destroy() {
      binding.destroy()
      editor.dispose()
      model.dispose()
    },
  }
}

function monacoMode(language: string): string {
  const mode = MONACO_MODE[language] ?? language
  const known = monaco.languages.getLanguages().some((entry) => entry.id === mode)
  return known ? mode : 'plaintext'
}

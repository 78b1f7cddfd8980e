/** Languages offered in the UI: the room's language string → label. */
export const LANGUAGES: Record<string, string> = {
  plaintext: 'Plain text',
  python: 'Python',
  javascript: 'JavaScript',
  typescript: 'TypeScript',
  go: 'Go',
  rust: 'Rust',
  java: 'Java',
  cpp: 'C++',
  html: 'HTML',
  css: 'CSS',
  json: 'JSON',
  markdown: 'Markdown',
  sql: 'SQL',
  shell: 'Shell',
  yaml: 'YAML',
}

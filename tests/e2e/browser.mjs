// Browser scenarios for the web client, run in headless Chromium through playwright-core
// (installed with the client: `cd web && npm ci`). Driven by tests/e2e/test_browser.py.
//
//   node tests/e2e/browser.mjs <scenario> <server http url> [screenshot path]
//
// Exits 0 when the scenario holds; otherwise prints what was expected and exits 1.
// Every wait has a deadline; nothing sleeps for a fixed time. A scenario that needs the
// server stopped or started prints `HARNESS <request>` and waits for a line on stdin.

import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'

const require = createRequire(new URL('../../web/package.json', import.meta.url))
const { chromium } = require('playwright-core')

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
]
const TIMEOUT_MS = 15_000
const VIEWPORT = { width: 960, height: 600 }

const [scenarioName, baseUrl, screenshotPath] = process.argv.slice(2)

class ScenarioFailed extends Error {}

let harnessReplies = null

/** Ask the test driving this script to do something to the server (`stop-server`, `start-server`). */
async function askHarness(request) {
  harnessReplies ??= createInterface({ input: process.stdin })[Symbol.asyncIterator]()
  console.log(`HARNESS ${request}`)
  const reply = await harnessReplies.next()
  if (reply.done || reply.value !== 'done') throw new ScenarioFailed(`the harness did not do ${request}`)
}

/** Wait until `predicate(arg)` is truthy in the page, or fail with `what`. */
async function waitFor(page, what, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: TIMEOUT_MS })
  } catch (error) {
    throw new ScenarioFailed(`${what} (not within ${TIMEOUT_MS} ms): ${error.message.split('\n')[0]}`)
  }
}

async function createRoom(fields) {
  const response = await fetch(`${baseUrl}/api/v1/rooms`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(fields),
  })
  if (response.status !== 201) throw new ScenarioFailed(`POST /api/v1/rooms answered ${response.status}`)
  return response.json()
}

/** A page in a fresh browser context whose remembered identity is `user`. */
async function openAs(browser, user, path) {
  const context = await browser.newContext({ viewport: VIEWPORT })
  await context.addInitScript((stored) => localStorage.setItem('collab.user', stored), JSON.stringify(user))
  const page = await context.newPage()
  const problems = []
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`))
  page.on('console', (message) => {
    // The browser logs failed requests itself: a 404 for an unknown room, refused
    // connections while the server is down. The page shows those to the user.
    if (message.type() === 'error' && !/^(Failed to load resource|WebSocket connection to)/.test(message.text())) {
      problems.push(`console error: ${message.text()}`)
    }
  })
  page.problems = problems
  await page.goto(`${baseUrl}${path}`)
  return page
}

function waitUntilLive(page) {
  return waitFor(
    page,
    'the connection state reaches "live"',
    () => document.querySelector('[data-testid="connection-state"]')?.dataset.state === 'live',
  )
}

function waitUntilSaved(page) {
  return waitFor(
    page,
    'the save state reaches "saved" (the server acknowledged the commit)',
    () => document.querySelector('[data-testid="save-state"]')?.dataset.state === 'saved',
  )
}

/** In-page: the editor's text as rendered (Monaco renders spaces as no-break spaces). */
function renderedText() {
  return [...document.querySelectorAll('.monaco-editor .view-line')]
    .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
    .map((line) => line.textContent.replaceAll('\u00a0', ' '))
    .join('\n')
}

async function waitForText(page, who, text) {
  try {
    await waitFor(page, `${who} editor shows ${JSON.stringify(text)}`, `(${renderedText})() === ${JSON.stringify(text)}`)
  } catch (error) {
    throw new ScenarioFailed(`${error.message}; it shows ${JSON.stringify(await page.evaluate(renderedText))}`)
  }
}

async function typeInEditor(page, text) {
  await page.locator('.monaco-editor .view-lines').click()
  await page.keyboard.type(text)
  // close a suggestion list so it does not cover the text in screenshots
  await page.keyboard.press('Escape')
}

const scenarios = {
  /** Alice types; Bob sees the text, Alice's labelled cursor and both names in the list. */
  async 'two-collaborators'(browser) {
    const room = await createRoom({ name: 'Pairing session', language: 'python' })
    const alice = await openAs(browser, { name: 'Alice', color: '#e11d48' }, `/rooms/${room.id}`)
    const bob = await openAs(browser, { name: 'Bob', color: '#2563eb' }, `/rooms/${room.id}`)
    await Promise.all([waitUntilLive(alice), waitUntilLive(bob)])

    const text = 'def greet(name):'
    await typeInEditor(alice, text)
    await waitForText(bob, "Bob's", text)
    await waitFor(
      bob,
      "Bob sees Alice's cursor labelled \"Alice\"",
      (name) =>
        [...document.querySelectorAll('.yRemoteSelectionHead')].some((head) => {
          const label = getComputedStyle(head, '::after')
          return label.content === JSON.stringify(name) && label.display !== 'none' && head.getClientRects().length > 0
        }),
      'Alice',
    )
    for (const [page, who] of [[alice, 'Alice'], [bob, 'Bob']]) {
      await waitFor(
        page,
        `${who}'s participants list names Alice and Bob`,
        () => {
          const names = [...document.querySelectorAll('.participants li')].map((li) => li.textContent)
          return names.some((n) => n.startsWith('Alice')) && names.some((n) => n.startsWith('Bob'))
        },
      )
    }
    await typeInEditor(bob, '\nreturn f"Hello, {name}!"') // Monaco indents the new line
    await waitForText(alice, "Alice's", 'def greet(name):\n    return f"Hello, {name}!"')
    await Promise.all([waitUntilSaved(alice), waitUntilSaved(bob)])

    // Alice selects the first line, so the screenshot shows a remote selection too.
    await alice.keyboard.press('Control+Home')
    await alice.keyboard.press('Shift+End')
    await waitFor(bob, "Bob sees Alice's selection", () => document.querySelector('[class*="yRemoteSelection-"]') !== null)
    if (screenshotPath) await saveSideBySide(browser, alice, bob, screenshotPath)
    return [alice, bob]
  },

  /** What was typed and committed comes back from the server after a reload. */
  async 'reload'(browser) {
    const room = await createRoom({ name: 'Reload', language: 'python' })
    const page = await openAs(browser, { name: 'Carol', color: '#16a34a' }, `/rooms/${room.id}`)
    await waitUntilLive(page)
    const text = 'print("still here")'
    await typeInEditor(page, text)
    await waitUntilSaved(page)
    await page.reload()
    await waitUntilLive(page)
    await waitForText(page, 'after the reload the', text)
    return [page]
  },

  /** Edits made while the server is down say "not saved" until the server is back and commits them. */
  async 'offline-edits'(browser) {
    const room = await createRoom({ name: 'Offline', language: 'python' })
    const page = await openAs(browser, { name: 'Grace', color: '#65a30d' }, `/rooms/${room.id}`)
    await waitUntilLive(page)
    await typeInEditor(page, 'before = 1')
    await waitUntilSaved(page)

    await askHarness('stop-server')
    await waitFor(page, 'the connection state leaves "live"', () => document.querySelector('[data-testid="connection-state"]')?.dataset.state !== 'live')
    await typeInEditor(page, '\nduring = 2')
    await waitFor(
      page,
      'the save state says "unsaved" while the server is down',
      () => document.querySelector('[data-testid="save-state"]')?.dataset.state === 'unsaved',
    )

    await askHarness('start-server')
    await waitUntilLive(page)
    await waitUntilSaved(page)
    await page.reload()
    await waitUntilLive(page)
    await waitForText(page, 'after the restart and a reload the', 'before = 1\nduring = 2')
    return [page]
  },

  /** A room id the server does not know gives a clear message, not a blank page. */
  async 'unknown-room'(browser) {
    const page = await openAs(browser, { name: 'Dave', color: '#9333ea' }, '/rooms/no-such-room-e2e')
    await waitFor(
      page,
      'the page says "Room not found"',
      () => document.querySelector('main.message h1')?.textContent === 'Room not found',
    )
    return [page]
  },

  /** The home page's form creates a room and opens it in the chosen language. */
  async 'create-from-home'(browser) {
    const page = await openAs(browser, { name: 'Erin', color: '#d97706' }, '/')
    await page.getByLabel('Name').fill('From the home page')
    await page.getByLabel('Language').selectOption('go')
    await page.getByRole('button', { name: 'Create room' }).click()
    await waitFor(page, 'the browser opens /rooms/{id}', () => /^\/rooms\/[^/]+$/.test(location.pathname))
    await waitUntilLive(page)
    await waitFor(
      page,
      'the room shows its name and language',
      () =>
        document.querySelector('.toolbar h1')?.textContent === 'From the home page' &&
        document.querySelector('.toolbar select')?.value === 'go',
    )
    return [page]
  },

  /** Typing asks the server's autocomplete endpoint; accepting its first suggestion inserts its text. */
  async 'autocomplete'(browser) {
    const room = await createRoom({ name: 'Autocomplete', language: 'python' })
    const page = await openAs(browser, { name: 'Frank', color: '#0891b2' }, `/rooms/${room.id}`)
    await waitUntilLive(page)
    const typed = 'pri'
    const answered = page.waitForResponse(
      (response) =>
        response.url().endsWith('/api/v1/autocomplete') &&
        response.request().postDataJSON().cursorPosition === typed.length,
      { timeout: TIMEOUT_MS },
    )
    await page.locator('.monaco-editor .view-lines').click()
    await page.keyboard.type(typed)
    const response = await answered.catch(() => {
      throw new ScenarioFailed(`no POST /api/v1/autocomplete for the cursor after ${JSON.stringify(typed)}`)
    })
    const request = response.request().postDataJSON()
    if (request.code !== typed || request.language !== 'python') {
      throw new ScenarioFailed(`autocomplete request body was ${JSON.stringify(request)}`)
    }
    const [first] = (await response.json()).suggestions
    if (!first) throw new ScenarioFailed(`the server suggested nothing after ${JSON.stringify(typed)}`)
    await waitFor(
      page,
      `the suggestion list offers ${JSON.stringify(first.label)}`,
      (label) =>
        [...document.querySelectorAll('.suggest-widget.visible .monaco-list-row.focused .label-name')].some(
          (row) => row.textContent === label,
        ),
      first.label,
    )
    await page.keyboard.press('Enter')
    await waitForText(page, 'after accepting the suggestion, the', typed + first.text)
    return [page]
  },

  /** Changing the language in one browser changes it for the other and on the server. */
  async 'language-change'(browser) {
    const room = await createRoom({ name: 'Languages', language: 'python' })
    const alice = await openAs(browser, { name: 'Alice', color: '#e11d48' }, `/rooms/${room.id}`)
    const bob = await openAs(browser, { name: 'Bob', color: '#2563eb' }, `/rooms/${room.id}`)
    await Promise.all([waitUntilLive(alice), waitUntilLive(bob)])
    await alice.locator('.toolbar select').selectOption('javascript')
    await waitFor(bob, "Bob's language switches to JavaScript", () => document.querySelector('.toolbar select')?.value === 'javascript')
    const deadline = Date.now() + TIMEOUT_MS
    let language
    while (Date.now() < deadline) {
      language = (await (await fetch(`${baseUrl}/api/v1/rooms/${room.id}`)).json()).language
      if (language === 'javascript') return [alice, bob]
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    throw new ScenarioFailed(`GET /api/v1/rooms/${room.id} still says language ${JSON.stringify(language)}`)
  },
}

/** One picture with both collaborators' windows next to each other. */
async function saveSideBySide(browser, left, right, path) {
  const shots = await Promise.all([left, right].map((page) => page.screenshot()))
  const context = await browser.newContext({ viewport: { width: VIEWPORT.width * 2 + 24, height: VIEWPORT.height + 16 } })
  const canvas = await context.newPage()
  await canvas.setContent(
    `<body style="margin:0;padding:8px;display:flex;gap:8px;background:#cbd5e1">${shots
      .map((png) => `<img style="border-radius:6px" src="data:image/png;base64,${png.toString('base64')}">`)
      .join('')}</body>`,
  )
  await canvas.screenshot({ path })
  await context.close()
}

const scenario = scenarios[scenarioName]
if (!scenario || !baseUrl) {
  console.error(`usage: node browser.mjs <${Object.keys(scenarios).join('|')}> <http url> [screenshot path]`)
  process.exit(2)
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true })
let exitCode = 0
try {
  const pages = await scenario(browser)
  const problems = pages.flatMap((page) => page.problems)
  if (problems.length > 0) throw new ScenarioFailed(`the pages reported errors:\n${problems.join('\n')}`)
  console.log(`${scenarioName}: ok`)
} catch (error) {
  console.error(`${scenarioName}: FAILED: ${error instanceof ScenarioFailed ? error.message : error.stack}`)
  exitCode = 1
} finally {
  await browser.close()
}
process.exit(exitCode)

import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { defineConfig, type Plugin } from 'vite'

// `npm run build` writes the client into the Python package, where
// collab_server/web.py serves it. `npm run dev` proxies the API and the
// WebSocket to a running server (COLLAB_SERVER, default port 8000).
const server = process.env.COLLAB_SERVER ?? 'http://127.0.0.1:8000'

/** Write `name.gz` beside each script, stylesheet and font; the server sends it to gzip-capable browsers. */
function precompress(): Plugin {
  return {
    name: 'precompress',
    apply: 'build',
    writeBundle(options, bundle) {
      for (const fileName of Object.keys(bundle)) {
        if (!/\.(js|css|ttf)$/.test(fileName)) continue
        const path = join(options.dir!, fileName)
        writeFileSync(`${path}.gz`, gzipSync(readFileSync(path), { level: 9 }))
      }
    },
  }
}

export default defineConfig({
  plugins: [precompress()],
  build: {
    outDir: '../collab_server/web_dist',
    emptyOutDir: true,
    // Monaco is one large chunk by nature; it is cached forever under /assets.
    chunkSizeWarningLimit: 4096,
  },
  worker: { format: 'es' },
  server: {
    proxy: {
      '/api': server,
      '/ws': { target: server.replace(/^http/, 'ws'), ws: true },
    },
  },
})

// Hocuspocus as users start it: the stock Server, in memory (no extensions), on loopback.
//   PORT=1234 node hocuspocus-server.mjs
import { Server } from '@hocuspocus/server'

const server = new Server({ port: Number(process.env.PORT), address: '127.0.0.1', quiet: true })
await server.listen()
console.log(`hocuspocus listening on 127.0.0.1:${server.address.port}`)

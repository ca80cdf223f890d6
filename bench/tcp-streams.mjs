// Plain TCP streams, the ceiling a link allows: `node bench/tcp-streams.mjs sink PORT` in one place,
// `node bench/tcp-streams.mjs send HOST:PORT STREAMS BYTES` in the other. The sender splits BYTES over
// STREAMS connections, writes zeros as fast as each socket takes them, and prints Mbit/s once the sink
// has counted every byte (the sink answers one byte per stream when its share has arrived).
import net from "node:net"

const [mode, ...args] = process.argv.slice(2)
if (mode === "sink") {
  const server = net.createServer((socket) => {
    let want = -1
    let got = 0
    let header = Buffer.alloc(0)
    socket.on("data", (chunk) => {
      if (want < 0) {
        header = Buffer.concat([header, chunk])
        if (header.length < 8) return
        want = Number(header.readBigUInt64BE(0))
        got = header.length - 8
      } else got += chunk.length
      if (got >= want) socket.end(Buffer.from([1]))
    })
    socket.on("error", () => {})
  })
  server.listen(Number(args[0] ?? 0), args[1] ?? "0.0.0.0", () => console.log(`listening on ${server.address().port}`))
} else if (mode === "send") {
  const [address, streamsArg, bytesArg] = args
  const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))]
  const streams = Number(streamsArg)
  const total = Number(bytesArg)
  const share = Math.ceil(total / streams)
  const block = Buffer.alloc(1 << 20)
  const started = process.hrtime.bigint()
  await Promise.all(Array.from({ length: streams }, () => new Promise((resolve, reject) => {
    const socket = net.connect({ host, port }, () => {
      const head = Buffer.alloc(8)
      head.writeBigUInt64BE(BigInt(share))
      socket.write(head)
      let left = share
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, block.length)
          left -= n
          if (!socket.write(n === block.length ? block : block.subarray(0, n))) return socket.once("drain", pump)
        }
      }
      pump()
    })
    socket.on("data", () => { socket.destroy(); resolve() })
    socket.on("error", reject)
  })))
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  console.log(JSON.stringify({ streams, bytes: share * streams, seconds, mbit: (share * streams * 8) / seconds / 1e6 }))
} else {
  console.error("usage: tcp-streams.mjs sink PORT [HOST] | send HOST:PORT STREAMS BYTES")
  process.exit(2)
}

import { parentPort } from "node:worker_threads"
parentPort!.on("message", ({ id, task }: { id: number; task: number }) => parentPort!.postMessage({ id, ok: task + 1 }))

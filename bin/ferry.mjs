#!/usr/bin/env node
// ferry's program, run by bin/ferry: the bundled CLI (dist/ferry.cjs, made by `npm run build`) with
// V8's code cache for it (dist/ferry.cjs.cache), so that the bundle is not compiled on every start.
// A cache made by another Node.js version is refused by V8, and the bundle compiles as usual.
Promise.all([import("node:fs"), import("node:path"), import("node:vm"), import("node:module"), import("node:url")]).then(([fs, path, vm, mod, url]) => {
  const file = path.join(path.dirname(url.fileURLToPath(import.meta.url)), "..", "dist", "ferry.cjs")
  let source
  try {
    source = fs.readFileSync(file, "utf8")
  } catch {
    console.error("ferry: not built yet; run `node scripts/ensure.mjs` (installs and builds) first")
    process.exit(1)
  }
  let cachedData
  try {
    cachedData = fs.readFileSync(`${file}.cache`)
  } catch {
    cachedData = undefined
  }
  const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, { filename: file, cachedData })
  if (process.env.FERRY_WRITE_CODE_CACHE === "1") process.once("exit", () => fs.writeFileSync(`${file}.cache`, script.createCachedData()))
  const module = { exports: {} }
  script.runInThisContext()(module.exports, mod.createRequire(file), module, file, path.dirname(file))
})

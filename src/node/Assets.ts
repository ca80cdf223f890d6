/**
 * The files ferry starts or loads at run time, located from this module.
 *
 * Every such path lives here, and only here, because the CLI bundle
 * (`scripts/bundle.mjs`) gives `import.meta.url` this module's place in the
 * tsc build, `dist/node/Assets.js`, so the paths hold wherever the code that
 * uses them ends up. Under the tests this module runs
 * from `src/node/Assets.ts`, and the worker scripts are the ones the test
 * setup bundles from source (`test/setup/workers.ts`), so the live layers run
 * without a prior build.
 */
import { fileURLToPath } from "node:url"

const fromSource = import.meta.url.endsWith(".ts")

/** Where the test setup puts the worker scripts it bundles from `src/node/workers/`. */
export const sourceWorkersDir: URL = new URL("../../node_modules/.cache/ferry/workers/", import.meta.url)

/** A worker thread's script: beside this module in `workers/`, or bundled from source under the tests. */
export const workerScript = (name: "read" | "inflate" | "fake"): URL =>
  fromSource ? new URL(`${name}.mjs`, sourceWorkersDir) : new URL(`./workers/${name}.js`, import.meta.url)

/** The optional ISA-L addon's loader: `native/` at the package root, two levels up from `src|dist/node`. */
export const nativeAddon: string = fileURLToPath(new URL("../../native/index.cjs", import.meta.url))

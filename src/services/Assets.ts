/**
 * The files ferry starts or loads at run time, located from this module.
 *
 * Every such path lives here, and only here, because the CLI bundle
 * (`scripts/bundle.mjs`) keeps this module outside the bundle: its
 * `import.meta.url` stays `dist/services/Assets.js` (or `src/services/` under
 * the tests), so the paths hold wherever the code that uses them ends up.
 */
import { fileURLToPath } from "node:url"

/** A worker thread's script, beside this module in `workers/`. */
export const workerScript = (name: "read" | "inflate" | "fake"): URL => new URL(`./workers/${name}.js`, import.meta.url)

/** The optional ISA-L addon's loader: `native/` at the package root, two levels up from `src|dist/services`. */
export const nativeAddon: string = fileURLToPath(new URL("../../native/index.cjs", import.meta.url))

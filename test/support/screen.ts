/**
 * A small VT100 screen: what a terminal shows after a program's bytes, for tests that look at the
 * screen a person sees rather than count escape codes. It knows printable characters (one column
 * each, wrapping at the right edge as a terminal does), CR, LF (with the tty's onlcr, a line feed
 * returns to the first column too), BS, and the CSI sequences for cursor moves and erasing. Any
 * other escape or control byte throws, so that a program writing one the model does not know
 * fails the test instead of passing on a screen no terminal would show.
 */
import { spawn } from "node:child_process"
import { FERRY } from "./cli.js"

export interface Screen {
  /** Applies bytes as the terminal would. */
  readonly write: (bytes: string) => void
  /** The rows on screen, trailing blanks trimmed. */
  readonly rows: () => Array<string>
  /** Every line ever scrolled off the top, then the screen's rows, without the blank rows at the bottom. */
  readonly history: () => Array<string>
  readonly cursor: () => { readonly row: number; readonly column: number }
}

export const makeScreen = (size: { readonly columns: number; readonly rows: number }, options: { readonly onlcr?: boolean } = {}): Screen => {
  const onlcr = options.onlcr ?? true
  const blank = () => Array.from({ length: size.columns }, () => " ")
  const grid: Array<Array<string>> = Array.from({ length: size.rows }, blank)
  const scrolledOff: Array<string> = []
  let row = 0
  let column = 0
  // a character written in the last column leaves the cursor there until the next one wraps
  let wrapPending = false

  const text = (cells: ReadonlyArray<string>) => cells.join("").trimEnd()
  const clear = (r: number, from: number, to: number) => {
    for (let c = from; c < to; c++) grid[r]![c] = " "
  }
  const lineFeed = () => {
    if (row === size.rows - 1) {
      scrolledOff.push(text(grid.shift()!))
      grid.push(blank())
    } else row++
  }
  const put = (ch: string) => {
    if (wrapPending) {
      column = 0
      lineFeed()
      wrapPending = false
    }
    grid[row]![column] = ch
    if (column === size.columns - 1) wrapPending = true
    else column++
  }
  const clamp = (n: number, low: number, high: number) => Math.min(high, Math.max(low, n))

  const csi = (params: string, final: string) => {
    if (params.startsWith("?")) {
      if (final === "h" || final === "l") return // modes such as the cursor's visibility: nothing on screen
      throw new Error(`screen model: unknown sequence ESC [${params}${final}`)
    }
    const numbers = params === "" ? [] : params.split(";").map((p) => (p === "" ? 0 : Number(p)))
    const n = Math.max(1, numbers[0] ?? 1)
    const mode = numbers[0] ?? 0
    wrapPending = false
    switch (final) {
      case "A":
        return void (row = clamp(row - n, 0, size.rows - 1))
      case "B":
        return void (row = clamp(row + n, 0, size.rows - 1))
      case "C":
        return void (column = clamp(column + n, 0, size.columns - 1))
      case "D":
        return void (column = clamp(column - n, 0, size.columns - 1))
      case "G":
        return void (column = clamp(n - 1, 0, size.columns - 1))
      case "H":
      case "f":
        row = clamp(n - 1, 0, size.rows - 1)
        column = clamp(Math.max(1, numbers[1] ?? 1) - 1, 0, size.columns - 1)
        return
      case "K":
        if (mode === 0) clear(row, column, size.columns)
        else if (mode === 1) clear(row, 0, column + 1)
        else if (mode === 2) clear(row, 0, size.columns)
        else throw new Error(`screen model: unknown erase ESC [${params}K`)
        return
      case "J":
        if (mode === 0) {
          clear(row, column, size.columns)
          for (let r = row + 1; r < size.rows; r++) clear(r, 0, size.columns)
        } else if (mode === 1) {
          for (let r = 0; r < row; r++) clear(r, 0, size.columns)
          clear(row, 0, column + 1)
        } else if (mode === 2) for (let r = 0; r < size.rows; r++) clear(r, 0, size.columns)
        else throw new Error(`screen model: unknown erase ESC [${params}J`)
        return
      case "m":
        return // colours and weights: not what these tests look at
      default:
        throw new Error(`screen model: unknown sequence ESC [${params}${final}`)
    }
  }

  let pending = "" // an escape sequence cut between two writes
  const write = (bytes: string) => {
    const input = [...(pending + bytes)]
    pending = ""
    for (let i = 0; i < input.length; i++) {
      const ch = input[i]!
      if (ch === "\x1b") {
        if (i + 1 >= input.length) return void (pending = ch)
        if (input[i + 1] !== "[") throw new Error(`screen model: unknown escape ESC ${JSON.stringify(input[i + 1])}`)
        let j = i + 2
        while (j < input.length && /[0-9;?]/.test(input[j]!)) j++
        if (j >= input.length) return void (pending = input.slice(i).join(""))
        csi(input.slice(i + 2, j).join(""), input[j]!)
        i = j
      } else if (ch === "\r") {
        column = 0
        wrapPending = false
      } else if (ch === "\n") {
        if (onlcr) column = 0
        wrapPending = false
        lineFeed()
      } else if (ch === "\b") {
        column = Math.max(0, column - 1)
        wrapPending = false
      } else if (ch < " " || ch === "\x7f") {
        throw new Error(`screen model: unknown control byte ${JSON.stringify(ch)}`)
      } else put(ch)
    }
  }

  const rows = () => grid.map(text)
  return {
    write,
    rows,
    history: () => {
      const all = [...scrolledOff, ...rows()]
      while (all.length > 0 && all.at(-1) === "") all.pop()
      return all
    },
    cursor: () => ({ row, column })
  }
}

/**
 * Runs the built `bin/ferry` on a pseudo-terminal of the given size (through util-linux's
 * `script`, which every Debian system has), so that stdout and stderr are a terminal as a
 * person's would be; resolves with every byte it wrote there and its exit code.
 */
export const ferryOnTerminal = (args: ReadonlyArray<string>, size: { readonly columns: number; readonly rows: number }) =>
  new Promise<{ readonly code: number; readonly output: string }>((resolve, reject) => {
    const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`
    const command = `stty cols ${size.columns} rows ${size.rows} && exec ${[FERRY, ...args].map(quote).join(" ")}`
    const child = spawn("script", ["--quiet", "--return", "--command", command, "/dev/null"], { stdio: ["ignore", "pipe", "pipe"] })
    const chunks: Array<Buffer> = []
    let errors = ""
    child.stdout.on("data", (d: Buffer) => void chunks.push(d))
    child.stderr.on("data", (d: Buffer) => void (errors += d))
    child.once("error", reject)
    child.once("close", (code) => {
      if (errors !== "") return reject(new Error(`script: ${errors}`))
      resolve({ code: code ?? 1, output: Buffer.concat(chunks).toString("utf8") })
    })
  })

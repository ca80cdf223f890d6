/** ferry's own version, reported in the handshake and by `--version`. */
export const VERSION = "0.1.0"

/**
 * Challenge-response authentication: the server sends a random nonce, the
 * client answers HMAC-SHA256(token, nonce), the server compares in constant
 * time. The token itself never crosses the wire.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto"

export const newNonce = (): string => randomBytes(32).toString("hex")

export const proofFor = (token: string, nonce: string): string =>
  createHmac("sha256", token).update(`ferry/1 ${nonce}`).digest("hex")

export const proofMatches = (token: string, nonce: string, proof: string | null): boolean => {
  if (proof === null || !/^[0-9a-f]{64}$/.test(proof)) return false
  return timingSafeEqual(Buffer.from(proofFor(token, nonce), "hex"), Buffer.from(proof, "hex"))
}

/** A token as read from a file or the environment: one line, not empty. */
export const parseToken = (text: string): { readonly token: string } | { readonly problem: string } => {
  const token = text.replace(/\r?\n$/, "")
  if (token.length === 0) return { problem: "the token is empty" }
  if (token.includes("\n")) return { problem: "the token must be one line" }
  return { token }
}

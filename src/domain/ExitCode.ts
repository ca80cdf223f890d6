/**
 * ferry's exit codes, one table for the command line and the sender's pipeline: 1 when the job
 * failed (for `send`: a dataset failed on its data), 2 when the command line was wrong, 3 when
 * `send` could not reach or keep a server, 4 when it found nothing to send, 130 and 143 when
 * stopped by SIGINT and SIGTERM (`serve` stops cleanly on either: 0).
 */
export const ExitCode = { Ok: 0, Failed: 1, Usage: 2, Unreachable: 3, NothingToSend: 4, Interrupted: 130, Terminated: 143 } as const
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode]

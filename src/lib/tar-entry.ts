import type * as tarStream from 'tar-stream'

/** The writable side of one tar-stream entry: a streamx Writable, with its own backpressure. */
export type TarEntrySink = ReturnType<tarStream.Pack['entry']>

/**
 * After the entry's write() said it is full: wait for 'drain' (true), or for 'close' (false) if
 * the pack was torn down meanwhile, when no 'drain' would ever come.
 */
export function drained(sink: TarEntrySink): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const settle = (isDrain: boolean): void => {
      sink.off('drain', onDrain)
      sink.off('close', onClose)
      resolve(isDrain)
    }
    const onDrain = (): void => settle(true)
    const onClose = (): void => settle(false)
    sink.on('drain', onDrain)
    sink.on('close', onClose)
  })
}

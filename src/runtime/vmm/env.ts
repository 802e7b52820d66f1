import { imagesDir } from '../../lib/paths.js'
import { defaultStore as defaultKernelStore, type KernelStore } from '../kernel/index.js'
import { defaultStateStore, type StateStore } from '../state/store.js'
import { HOST_PROBE, type AccelProbe } from './accel.js'

/** Where the runtime keeps and finds things; resolved once per command (tests point it at temp dirs through BALE_DATA_DIR). */
export interface RuntimeEnv {
  readonly store: StateStore
  readonly imagesRoot: string
  readonly kernels: KernelStore
  readonly probe: AccelProbe
}

export function defaultRuntimeEnv(env: NodeJS.ProcessEnv = process.env): RuntimeEnv {
  return Object.freeze({ store: defaultStateStore(env), imagesRoot: imagesDir(env), kernels: defaultKernelStore(env), probe: HOST_PROBE })
}

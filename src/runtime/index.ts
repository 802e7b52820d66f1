/**
 * The runtime: boots bundles as QEMU microVMs and manages them (docs/runtime-state.md).
 * Commands call one function each; everything else here is for tests and benchmarks.
 */
export { bootVm, BOOT_TIMEOUT_MS, type BootIO, type BootOptions, type BootResult } from './vmm/boot.js'
export { execInVm, type ExecIO, type ExecOptions, type ExecResult } from './vmm/exec.js'
export { listVms, type VmSummary } from './vmm/list.js'
export { vmLogs, type LogsIO, type LogsOptions } from './vmm/logs.js'
export { stopVm, DEFAULT_GRACE_MS, type StopOptions, type StopResult, type StopStep } from './vmm/stop.js'
export { removeVm, type RemoveOptions, type RemoveResult } from './vmm/remove.js'
export { Interrupts, type InterruptHandler } from './vmm/interrupts.js'
export { chooseAccel, type Accel, type AccelChoice, type AccelRequest } from './vmm/accel.js'
export { defaultRuntimeEnv, type RuntimeEnv } from './vmm/env.js'
export { parsePublish, parsePublishes, formatMapping, type PortMapping } from './net/publish.js'
export { validateName } from './state/store.js'
export { resolveEnv } from './vmm/envvars.js'

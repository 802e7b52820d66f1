import { describe, expect, it } from 'vitest'
import { resolveEnv } from '../../../src/runtime/vmm/envvars.js'
import { accepts, requirePhase, type VmAction } from '../../../src/runtime/vmm/phases.js'
import { VM_STATUSES } from '../../../src/runtime/state/record.js'

describe('VM actions by phase', () => {
  it('each action accepts exactly its phases', () => {
    const table = Object.fromEntries(
      (['exec', 'signal-main', 'stop', 'remove', 'force-remove', 'logs'] as VmAction[]).map((a) => [a, VM_STATUSES.filter((s) => accepts(a, s))]),
    )
    expect(table).toEqual({
      exec: ['starting', 'running'],
      'signal-main': ['running'],
      stop: ['starting', 'running', 'stopped'],
      remove: ['stopped'],
      'force-remove': ['starting', 'running', 'stopped'],
      logs: ['starting', 'running', 'stopped'],
    })
  })

  it('refuses by name, with the way out', () => {
    expect(() => requirePhase('remove', 'web', 'running')).toThrow('VM web is running: remove needs it stopped (stop it first, or use --force)')
    expect(() => requirePhase('exec', 'web', 'stopped')).toThrow(/VM web is stopped: exec needs it starting or running/)
    expect(() => requirePhase('logs', 'web', 'stopped')).not.toThrow()
  })
})

describe('-e resolution', () => {
  it('KEY=VAL as given, KEY from this shell, unset KEY dropped', () => {
    expect(resolveEnv(['A=1', 'B', 'C', 'D=x=y', 'E='], { B: 'two' })).toEqual(['A=1', 'B=two', 'D=x=y', 'E='])
  })

  it('refuses an empty key', () => {
    expect(() => resolveEnv(['=x'], {})).toThrow(/-e "=x": expected KEY=VAL or KEY/)
  })
})

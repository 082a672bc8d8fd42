// The run-time SIMD choice: the CPU features the addon reports against the kernel's own list (/proc/cpuinfo),
// the level in use against the best of those (so a machine with AVX-512 cannot quietly test only the scalar
// kernels), TINY_LLM_SIMD in fresh processes, and its errors.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { cpuFeatures, native, SIMD_LEVELS, type SimdLevel } from '../src/index.ts';
import { expectedSimdLevel } from './support/simd-level.ts';

// The Linux names of the flags cpuFeatures() reports.
const LINUX_FLAGS = {
  avx2: 'avx2',
  fma: 'fma',
  f16c: 'f16c',
  avx512f: 'avx512f',
  avx512bw: 'avx512bw',
  avx512vl: 'avx512vl',
  avx512dq: 'avx512dq',
  avx512vnni: 'avx512_vnni',
  avx512bf16: 'avx512_bf16',
  avxvnni: 'avx_vnni',
} as const;
type Flag = keyof typeof LINUX_FLAGS;

function procCpuFlags(): Set<string> {
  const line = readFileSync('/proc/cpuinfo', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('flags'));
  return new Set((line ?? '').split(':')[1]?.trim().split(/\s+/));
}

// The rule of the levels, written out again: avx2 = AVX2 + FMA + F16C; avx512 adds AVX-512 F, BW, VL, DQ.
function bestLevel(has: (flag: Flag) => boolean): SimdLevel {
  const avx2 = has('avx2') && has('fma') && has('f16c');
  if (avx2 && has('avx512f') && has('avx512bw') && has('avx512vl') && has('avx512dq')) return 'avx512';
  return avx2 ? 'avx2' : 'scalar';
}

const addon = fileURLToPath(new URL('../build/Release/tensor_core.node', import.meta.url));

// Loads the addon in a fresh process with `env` added (the choice is made once per process, at load).
function loadWith(env: Record<string, string>): { level?: SimdLevel; error?: string } {
  const script = `
    try {
      console.log(JSON.stringify({ level: require(${JSON.stringify(addon)}).cpuFeatures().level }));
    } catch (e) {
      console.log(JSON.stringify({ error: e.message }));
    }`;
  const base = { ...process.env };
  delete base.TINY_LLM_SIMD;
  delete base.TINY_LLM_NO_SIMD;
  const child = spawnSync(process.execPath, ['-e', script], { env: { ...base, ...env }, encoding: 'utf8', timeout: 30000 });
  expect(child.stderr).toBe('');
  return JSON.parse(child.stdout);
}

describe('cpuFeatures', () => {
  const f = cpuFeatures();

  it('reports the flags the kernel lists in /proc/cpuinfo', () => {
    const isLinuxX64 = process.platform === 'linux' && process.arch === 'x64' && existsSync('/proc/cpuinfo');
    const proc = isLinuxX64 ? procCpuFlags() : new Set<string>();
    for (const [flag, linuxName] of Object.entries(LINUX_FLAGS)) expect(f[flag as Flag], flag).toBe(proc.has(linuxName));
  });

  it('names the best level those flags allow', () => {
    expect(f.best).toBe(bestLevel((flag) => f[flag]));
  });

  it('runs the best level unless TINY_LLM_SIMD asks for another', () => {
    expect(f.level).toBe(expectedSimdLevel());
  });
});

describe('TINY_LLM_SIMD', () => {
  const best = cpuFeatures().best;
  const available = SIMD_LEVELS.slice(0, SIMD_LEVELS.indexOf(best) + 1);

  it('forces each level this CPU has; unset or empty, the best', () => {
    for (const level of available) expect(loadWith({ TINY_LLM_SIMD: level })).toEqual({ level });
    expect(loadWith({})).toEqual({ level: best });
    expect(loadWith({ TINY_LLM_SIMD: '' })).toEqual({ level: best });
  });

  it('stops the load with a clear error for a level the CPU lacks or a misspelt one', () => {
    for (const level of SIMD_LEVELS.slice(available.length)) {
      expect(loadWith({ TINY_LLM_SIMD: level }).error).toMatch(
        new RegExp(`^tensor-core: TINY_LLM_SIMD=${level} asks for kernels this CPU cannot run \\(it lacks .+\\)`),
      );
    }
    expect(loadWith({ TINY_LLM_SIMD: 'AVX2' }).error).toBe(
      `tensor-core: TINY_LLM_SIMD=AVX2 is not a level: use scalar, avx2 or avx512, or leave it unset for the best this CPU has (${best})`,
    );
  });

  it('TINY_LLM_NO_SIMD=1 still means scalar, and contradicting it is an error', () => {
    expect(loadWith({ TINY_LLM_NO_SIMD: '1' })).toEqual({ level: 'scalar' });
    expect(loadWith({ TINY_LLM_NO_SIMD: '0' })).toEqual({ level: best });
    expect(loadWith({ TINY_LLM_NO_SIMD: '1', TINY_LLM_SIMD: 'scalar' })).toEqual({ level: 'scalar' });
    if (best !== 'scalar') {
      expect(loadWith({ TINY_LLM_NO_SIMD: '1', TINY_LLM_SIMD: best }).error).toMatch(
        /TINY_LLM_NO_SIMD=1 asks for the scalar kernels but TINY_LLM_SIMD=\w+ for others/,
      );
    }
  });

  // Other CPUs, made up: the choice the addon would make on them.
  const none = { avx2: false, fma: false, f16c: false, avx512f: false, avx512bw: false, avx512vl: false, avx512dq: false };
  const zen3 = { ...none, avx2: true, fma: true, f16c: true };
  const zen5 = { ...zen3, avx512f: true, avx512bw: true, avx512vl: true, avx512dq: true };

  it('on other CPUs: the best level by default, an error naming the missing features when forced above it', () => {
    expect(native.chooseSimdLevel(undefined, undefined, zen5)).toEqual({ level: 'avx512', error: '' });
    expect(native.chooseSimdLevel(undefined, undefined, zen3)).toEqual({ level: 'avx2', error: '' });
    expect(native.chooseSimdLevel(undefined, undefined, { ...zen3, f16c: false })).toEqual({ level: 'scalar', error: '' });
    expect(native.chooseSimdLevel(undefined, undefined, { ...zen5, avx512bw: false })).toEqual({ level: 'avx2', error: '' });
    expect(native.chooseSimdLevel('avx2', undefined, zen5)).toEqual({ level: 'avx2', error: '' });
    expect(native.chooseSimdLevel('avx512', undefined, { ...zen3, avx512f: true })).toEqual({
      level: 'scalar',
      error:
        'TINY_LLM_SIMD=avx512 asks for kernels this CPU cannot run (it lacks avx512bw, avx512vl, avx512dq): ' +
        'use TINY_LLM_SIMD=avx2 or lower, or leave it unset',
    });
    expect(native.chooseSimdLevel('avx2', undefined, none).error).toMatch(/it lacks avx2, fma, f16c\): use TINY_LLM_SIMD=scalar/);
  });
});

describe('setSimdLevel (benchmarks switch levels in one process)', () => {
  const initial = cpuFeatures().level;
  afterEach(() => native.setSimdLevel(initial));

  it('switches tensor-core to any level this CPU has and rejects the rest', () => {
    const best = cpuFeatures().best;
    for (const level of SIMD_LEVELS) {
      if (SIMD_LEVELS.indexOf(level) <= SIMD_LEVELS.indexOf(best)) {
        native.setSimdLevel(level);
        expect(cpuFeatures().level).toBe(level);
      } else {
        expect(() => native.setSimdLevel(level)).toThrow(new RegExp(`setSimdLevel: this CPU cannot run the ${level} kernels \\(it lacks`));
      }
    }
    expect(() => native.setSimdLevel('sse')).toThrow('setSimdLevel: "sse" is not a level (scalar, avx2 or avx512)');
    expect(() => native.setSimdLevel()).toThrow(/setSimdLevel: "" is not a level/);
  });
});

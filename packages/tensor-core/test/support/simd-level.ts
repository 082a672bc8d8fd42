// Setup of every test file (vitest.config.ts): the native kernels in this file's process are those of the level
// its project asks for, or the best the CPU has when none is asked for.
import { beforeAll, expect } from 'vitest';
import { cpuFeatures, type SimdLevel } from '../../src/cpu-features.ts';

/** The level the environment asks for: TINY_LLM_SIMD, scalar for TINY_LLM_NO_SIMD=1, else the CPU's best. */
export function expectedSimdLevel(): SimdLevel {
  const { TINY_LLM_SIMD, TINY_LLM_NO_SIMD } = process.env;
  if (TINY_LLM_SIMD) return TINY_LLM_SIMD as SimdLevel;
  return TINY_LLM_NO_SIMD && TINY_LLM_NO_SIMD !== '0' ? 'scalar' : cpuFeatures().best;
}

beforeAll(() => {
  expect(cpuFeatures().level, 'SIMD level of the native kernels').toBe(expectedSimdLevel());
});

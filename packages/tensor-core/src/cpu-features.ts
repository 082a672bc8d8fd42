// Which SIMD kernels the native CPU backend runs: what the CPU has, and the level in use.
import { native } from './native.ts';

/** The instruction-set levels of the native kernels, each a superset of the one before. */
export const SIMD_LEVELS = ['scalar', 'avx2', 'avx512'] as const;
export type SimdLevel = (typeof SIMD_LEVELS)[number];

/** The x86 features the kernels can use (all false on other CPUs), as far as the OS enables them. */
export interface CpuFeatures {
  avx2: boolean;
  fma: boolean;
  f16c: boolean;
  avx512f: boolean;
  avx512bw: boolean;
  avx512vl: boolean;
  avx512dq: boolean;
  avx512vnni: boolean;
  avx512bf16: boolean;
  avxvnni: boolean;
  /** The best level this CPU runs: avx2 needs AVX2, FMA and F16C; avx512 adds AVX-512 F, BW, VL and DQ. */
  best: SimdLevel;
  /** The level tensor-core's kernels use: `best`, unless TINY_LLM_SIMD asks for a lower one. */
  level: SimdLevel;
}

export function cpuFeatures(): CpuFeatures {
  const { simd: _inUse, ...features } = native.cpuFeatures();
  return features as CpuFeatures;
}

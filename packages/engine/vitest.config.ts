import { defineConfig } from 'vitest/config';
import { sharedConfig } from '../../vitest.shared.ts';
import { cpuFeatures, SIMD_LEVELS } from '../tensor-core/src/cpu-features.ts';

// The tests of the integer-activation, decode attention and dense panel kernels run once more at each SIMD level
// below the best this CPU has (TINY_LLM_SIMD set per project, read by the addons when they load in a test file's
// process), as tensor-core's kernel tests do: the scalar and AVX2 kernels stay tested on a machine with AVX-512 VNNI.
const KERNEL_TESTS = [
  'test/quantized-matmul-int16.test.ts',
  'test/quantized-panels.test.ts',
  'test/attention-decode.test.ts',
  'test/dense-panels.test.ts',
];
const forced = process.env.TINY_LLM_SIMD || process.env.TINY_LLM_NO_SIMD;
const lowerLevels = forced ? [] : SIMD_LEVELS.slice(0, SIMD_LEVELS.indexOf(cpuFeatures().best));

// Projects that extend the root config add their `include` to its own, so the root has none.
const shared = sharedConfig(import.meta.url);
const { include, ...test } = shared.test!;

export default defineConfig({
  ...shared,
  test: {
    ...test,
    projects: [
      { extends: true, test: { name: 'engine', include } },
      ...lowerLevels.map((level) => ({
        extends: true,
        test: { name: `engine simd=${level}`, include: KERNEL_TESTS, env: { TINY_LLM_SIMD: level } },
      })),
    ],
  },
});

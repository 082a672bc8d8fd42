import { defineConfig } from 'vitest/config';
import { sharedConfig } from '../../vitest.shared.ts';
import { cpuFeatures, SIMD_LEVELS } from './src/cpu-features.ts';

// The tests of the native kernels run once more at each SIMD level below the best this CPU has (TINY_LLM_SIMD
// set per project; the addon reads it when it loads in a test file's process), so that the AVX2 and scalar
// paths stay tested on a machine with AVX-512. A level forced for the whole run leaves only that one.
const KERNEL_TESTS = ['test/simd.test.ts', 'test/matmul-native.test.ts', 'test/ops.test.ts', 'test/golden-ops.test.ts'];
const forced = process.env.TINY_LLM_SIMD || process.env.TINY_LLM_NO_SIMD;
const lowerLevels = forced ? [] : SIMD_LEVELS.slice(0, SIMD_LEVELS.indexOf(cpuFeatures().best));

// Projects that extend the root config add their `include` to its own, so the root has none.
const shared = sharedConfig(import.meta.url);
const { include, ...test } = shared.test!;

export default defineConfig({
  ...shared,
  test: {
    ...test,
    setupFiles: ['test/support/simd-level.ts'],
    projects: [
      { extends: true, test: { name: 'tensor-core', include } },
      ...lowerLevels.map((level) => ({
        extends: true,
        test: { name: `tensor-core simd=${level}`, include: KERNEL_TESTS, env: { TINY_LLM_SIMD: level } },
      })),
    ],
  },
});

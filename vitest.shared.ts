// Settings every package's vitest.config.ts shares. With TINY_LLM_TEST_REPORT set to a folder, each
// package also writes a JSON report there, which .ci/run sums into its "N passed, N failed" line.
import type { ViteUserConfig } from 'vitest/config';

export function sharedTestConfig(packageName: string): ViteUserConfig['test'] {
  const reportDir = process.env.TINY_LLM_TEST_REPORT;
  return {
    include: ['test/**/*.test.ts'],
    // A guard against hangs, not a performance bar: benchmarks measure speed.
    testTimeout: 120_000,
    reporters: reportDir ? ['default', ['json', { outputFile: `${reportDir}/${packageName}.json` }]] : ['default'],
  };
}

// Settings every package's vitest.config.ts shares. With TINY_LLM_TEST_REPORT set to a folder, each
// package also writes a JSON report there, which .ci/run sums into its "N passed, N failed" line.
import { fileURLToPath } from 'node:url';
import type { ViteUserConfig } from 'vitest/config';

const root = (path: string) => fileURLToPath(new URL(path, import.meta.url));

/**
 * The one switch between the learner's code and the reference solutions: graded tests import
 * `@solution/weekN`, which TINY_LLM_SOLUTION (learner by default) points at one or the other.
 */
export function solutionAliases(): Record<string, string> {
  const solution = process.env.TINY_LLM_SOLUTION ?? 'learner';
  if (solution !== 'learner' && solution !== 'reference') {
    throw new Error(`TINY_LLM_SOLUTION must be "learner" or "reference", got "${solution}"`);
  }
  const aliases: Record<string, string> = {};
  for (const week of ['week1', 'week2', 'week3']) {
    aliases[`@solution/${week}`] =
      solution === 'reference' ? root(`packages/reference/src/${week}/index.ts`) : root(`packages/${week}/src/index.ts`);
  }
  return aliases;
}

export function sharedTestConfig(packageName: string): ViteUserConfig['test'] {
  const reportDir = process.env.TINY_LLM_TEST_REPORT;
  return {
    include: ['test/**/*.test.ts'],
    alias: solutionAliases(),
    // A guard against hangs, not a performance bar: benchmarks measure speed.
    testTimeout: 120_000,
    reporters: reportDir ? ['default', ['json', { outputFile: `${reportDir}/${packageName}.json` }]] : ['default'],
  };
}

// The vitest configuration every package shares, and the switch between the learner's code and the
// reference solutions. With TINY_LLM_TEST_REPORT set to a folder, each package also writes a JSON report
// there, which .ci/run sums into its "N passed, N failed" line (scripts/test-summary.mjs).
import { existsSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Plugin } from 'vite';
import type { ViteUserConfig } from 'vitest/config';
import { chaptersOf, learnerFile, solutionFile, WEEKS } from './scripts/chapters.ts';

const ROOT = fileURLToPath(new URL('.', import.meta.url));

export type Solution = 'learner' | 'reference';

function solutionOf(env: NodeJS.ProcessEnv): Solution {
  const solution = env.TINY_LLM_SOLUTION ?? 'learner';
  if (solution !== 'learner' && solution !== 'reference') {
    throw new Error(`TINY_LLM_SOLUTION must be "learner" or "reference", got "${solution}"`);
  }
  return solution;
}

/**
 * The learner's files that TINY_LLM_REFERENCE_CHAPTERS (a comma-separated list of chapter ids) replaces by
 * their solutions, as paths relative to the repository root (`packages/week1/src/attention.ts`).
 */
function replacedFiles(env: NodeJS.ProcessEnv): Map<string, string> {
  const ids = (env.TINY_LLM_REFERENCE_CHAPTERS ?? '').split(',').filter(Boolean);
  const chapters = WEEKS.flatMap(chaptersOf);
  const replaced = new Map<string, string>();
  for (const id of ids) {
    const chapter = chapters.find((c) => c.id === id);
    if (!chapter) throw new Error(`TINY_LLM_REFERENCE_CHAPTERS: unknown chapter "${id}"`);
    for (const file of chapter.files) replaced.set(learnerFile(chapter, file), solutionFile(chapter, file));
  }
  return replaced;
}

/**
 * The one switch between the learner's code and the reference solutions. Graded tests import
 * `@solution/weekN`, which TINY_LLM_SOLUTION (learner by default) points at packages/weekN/src or at
 * packages/reference/src/weekN. With the learner's code, TINY_LLM_REFERENCE_CHAPTERS=1.1,1.2 swaps the files
 * of those chapters for their solutions wherever they are imported (the learner's later chapters included):
 * the grader uses it to test one chapter of the learner's on top of the reference of every other one.
 */
export function solutionSwitch(env: NodeJS.ProcessEnv = process.env): Plugin {
  const solution = solutionOf(env);
  const replaced = replacedFiles(env);
  if (solution === 'reference' && replaced.size > 0) {
    throw new Error('TINY_LLM_REFERENCE_CHAPTERS only applies to the learner solution (TINY_LLM_SOLUTION=learner)');
  }
  return {
    name: 'tiny-llm-solution-switch',
    enforce: 'pre',
    async resolveId(source, importer, options) {
      const week = /^@solution\/(week\d)$/.exec(source)?.[1];
      if (week) {
        const index = solution === 'reference' ? `packages/reference/src/${week}/index.ts` : `packages/${week}/src/index.ts`;
        return join(ROOT, index);
      }
      if (replaced.size === 0 || !importer) return null;
      const resolved = await this.resolve(source, importer, { ...options, skipSelf: true });
      if (!resolved) return null;
      const solved = replaced.get(relative(ROOT, resolved.id));
      return solved ? join(ROOT, solved) : resolved;
    },
  };
}

/**
 * The file the switch above gives for a learner's chapter file (`packages/week3/src/all-reduce.ts`), as an
 * absolute path: for a test that runs the code under test in a worker thread, which imports it by path where
 * the plugin does not reach.
 */
export function solutionPathOf(learnerPath: string, env: NodeJS.ProcessEnv = process.env): string {
  const parts = /^packages\/(week\d)\/(src|native)\/(.+)$/.exec(learnerPath);
  if (!parts) throw new Error(`solutionPathOf: ${learnerPath} is not a file of a week package (packages/weekN/src/...)`);
  const [, week, folder, file] = parts;
  const path =
    solutionOf(env) === 'reference' ? `packages/reference/${folder}/${week}/${file}` : (replacedFiles(env).get(learnerPath) ?? learnerPath);
  return join(ROOT, path);
}

/** The vitest configuration of a package: `sharedConfig(import.meta.url)` in its vitest.config.ts. */
export function sharedConfig(configUrl: string): ViteUserConfig {
  const packageDir = fileURLToPath(new URL('.', configUrl));
  const reportDir = process.env.TINY_LLM_TEST_REPORT;
  // The report is named after the package's folder: scripts/test-summary.mjs expects one per package with tests.
  const name = relative(join(ROOT, 'packages'), packageDir).replace(/\/$/, '');
  if (!existsSync(join(ROOT, 'packages', name, 'package.json'))) throw new Error(`sharedConfig: ${packageDir} is not a package folder`);
  return {
    plugins: [solutionSwitch()],
    test: {
      include: ['test/**/*.test.ts'],
      // Guards against hangs, not performance bars (benchmarks measure speed). A set-up that times out (a slow
      // WebGPU adapter) fails its tests instead of skipping them.
      testTimeout: 120_000,
      hookTimeout: 120_000,
      // A stray `.only` would silently skip every other test of its file.
      allowOnly: false,
      reporters: reportDir ? ['default', ['json', { outputFile: `${reportDir}/${name}.json` }]] : ['default'],
    },
  };
}

// A check that is not a vitest run (the stub check, the static checks) writes its results as a vitest JSON
// report, so that CI's summary (scripts/test-summary.mjs) counts each of them as a test.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface CheckResult {
  title: string;
  passed: boolean;
  /** Why it failed. */
  message?: string;
}

/** Writes `<dir>/<name>.json` with one test per result, in one file named `source`. */
export function writeReport(dir: string, name: string, source: string, results: readonly CheckResult[]): void {
  const failed = results.filter((r) => !r.passed).length;
  const assertionResults = results.map((r) => ({
    title: r.title,
    status: r.passed ? 'passed' : 'failed',
    failureMessages: r.passed ? [] : [r.message ?? ''],
  }));
  const report = {
    numTotalTests: results.length,
    numPassedTests: results.length - failed,
    numFailedTests: failed,
    numPendingTests: 0,
    numTodoTests: 0,
    success: failed === 0,
    testResults: [{ name: source, status: failed ? 'failed' : 'passed', assertionResults }],
  };
  writeFileSync(join(dir, `${name}.json`), JSON.stringify(report, null, 2));
}

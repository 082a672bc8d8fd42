// Sums the vitest JSON reports in a folder into the line CI reads: "N passed, N failed".
//
// Nothing may hide a failure: a test that did not pass (failed, skipped, pending, todo) counts as failed, a
// file that failed to load counts as one failure, a report that says it did not succeed (an unhandled error,
// a throwing afterAll) counts as one when none of its tests failed, and each expected report that is missing
// (a package whose run died, or never ran) counts as one. Every package with test files must write a report,
// and so must the stub check (scripts/grade.ts --check-stubs) and the static checks (scripts/static-checks.ts).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = process.argv[2];
const packagesDir = fileURLToPath(new URL('../packages/', import.meta.url));

/** Whether a folder holds a *.test.ts file, at any depth. */
function hasTests(folder) {
  if (!existsSync(folder)) return false;
  return readdirSync(folder, { withFileTypes: true, recursive: true }).some((e) => e.isFile() && e.name.endsWith('.test.ts'));
}

const expected = readdirSync(packagesDir).filter((name) => hasTests(join(packagesDir, name, 'test')));
expected.push('stub-check', 'static-checks');

let passed = 0;
let failed = 0;
const problems = [];
for (const name of expected) {
  const path = join(dir, `${name}.json`);
  if (!existsSync(path)) {
    failed++;
    problems.push(`${name}: no report (its test run did not finish)`);
    continue;
  }
  const report = JSON.parse(readFileSync(path, 'utf8'));
  let reportFailures = 0;
  for (const file of report.testResults) {
    const tests = file.assertionResults ?? [];
    for (const test of tests) {
      if (test.status === 'passed') passed++;
      else {
        reportFailures++;
        if (test.status !== 'failed') problems.push(`${name}: "${test.fullName ?? test.title}" was ${test.status}`);
      }
    }
    if (file.status === 'failed' && tests.every((t) => t.status === 'passed')) {
      reportFailures++;
      problems.push(`${name}: ${file.name} failed outside its tests: ${(file.message ?? '').split('\n')[0]}`);
    }
  }
  if (report.success === false && reportFailures === 0) {
    reportFailures++;
    problems.push(`${name}: the run did not succeed although no test failed (an unhandled error?)`);
  }
  failed += reportFailures;
}
for (const line of problems) console.log(`summary: ${line}`);
console.log(`${passed} passed, ${failed} failed`);

// pnpm grade: runs the graded tests of every week against the learner's code (or --solution reference)
// and prints each chapter's progress. A chapter whose tests all fail with NotImplemented is "not started".
//
// pnpm grade --check-stubs (used by CI): the learner packages must still be stubs, so every chapter must be
// "not started"; a chapter failing with a wrong answer instead means a stub computes something. With
// TINY_LLM_TEST_REPORT set, the check is also written there as a test report for the CI summary.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chaptersOf, ROOT, WEEKS, type Chapter } from './chapters.ts';

interface FileResult {
  passed: number;
  failed: number;
  failures: string[];
}

interface Progress {
  chapter: Chapter;
  passed: number;
  total: number;
  status: 'passed' | 'not started' | 'in progress' | 'no tests';
}

function runWeek(week: string, solution: string): Map<string, FileResult> {
  const out = join(mkdtempSync(join(tmpdir(), 'grade-')), `${week}.json`);
  spawnSync('npx', ['vitest', 'run', '--reporter=json', `--outputFile=${out}`], {
    cwd: `${ROOT}packages/${week}`,
    env: { ...process.env, TINY_LLM_SOLUTION: solution, TINY_LLM_TEST_REPORT: '' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const results = new Map<string, FileResult>();
  if (!existsSync(out)) return results;
  const report = JSON.parse(readFileSync(out, 'utf8'));
  for (const file of report.testResults) {
    const assertions = file.assertionResults as { status: string; failureMessages: string[] }[];
    const failed = assertions.filter((a) => a.status !== 'passed');
    // A file that fails to load (a syntax error in a stub) has no assertions but a message of its own.
    const failures = failed.flatMap((a) => a.failureMessages);
    if (assertions.length === 0 && file.message) failures.push(file.message);
    results.set(file.name, {
      passed: assertions.length - failed.length,
      failed: failed.length || (file.status === 'failed' ? 1 : 0),
      failures,
    });
  }
  return results;
}

function progressOf(chapter: Chapter, results: Map<string, FileResult>): Progress {
  const result = results.get(`${ROOT}packages/${chapter.week}/${chapter.test}`);
  if (!result) return { chapter, passed: 0, total: 0, status: 'no tests' };
  const total = result.passed + result.failed;
  const notStarted = result.passed === 0 && result.failures.every((m) => m.includes('NotImplemented'));
  const status = result.failed === 0 ? 'passed' : notStarted ? 'not started' : 'in progress';
  return { chapter, passed: result.passed, total, status };
}

function printTable(rows: Progress[], solution: string): void {
  console.log(`\nProgress of the ${solution} solution\n`);
  console.log(`${'chapter'.padEnd(10)}${'title'.padEnd(28)}${'tests'.padEnd(10)}status`);
  for (const r of rows) {
    const tests = r.total ? `${r.passed}/${r.total}` : '-';
    console.log(`${r.chapter.id.padEnd(10)}${r.chapter.title.padEnd(28)}${tests.padEnd(10)}${r.status}`);
  }
  const done = rows.filter((r) => r.status === 'passed').length;
  console.log(`\n${done} of ${rows.length} chapters pass.`);
}

/** The stub check as a vitest-style JSON report, so the CI summary counts one test per chapter. */
function writeStubReport(rows: Progress[], dir: string): void {
  const ok = rows.filter((r) => r.status === 'not started');
  writeFileSync(
    join(dir, 'stub-check.json'),
    JSON.stringify({ numPassedTests: ok.length, numFailedTests: rows.length - ok.length, testResults: [] }),
  );
}

function main(): void {
  const args = process.argv.slice(2);
  const checkStubs = args.includes('--check-stubs');
  const solutionArg = args.indexOf('--solution');
  const solution = checkStubs ? 'learner' : solutionArg >= 0 ? args[solutionArg + 1] : process.env.TINY_LLM_SOLUTION ?? 'learner';
  if (solution !== 'learner' && solution !== 'reference') {
    console.error(`grade: --solution must be learner or reference, got ${solution}`);
    process.exit(2);
  }
  const rows: Progress[] = [];
  for (const week of WEEKS) {
    const chapters = chaptersOf(week);
    if (chapters.length === 0) continue;
    const results = runWeek(week, solution);
    rows.push(...chapters.map((c) => progressOf(c, results)));
  }
  printTable(rows, solution);
  if (!checkStubs) return;
  const report = process.env.TINY_LLM_TEST_REPORT;
  if (report) writeStubReport(rows, report);
  const bad = rows.filter((r) => r.status !== 'not started');
  for (const r of bad) console.error(`stub check: chapter ${r.chapter.id} is "${r.status}" with the learner stubs; its stubs must only throw NotImplemented`);
  process.exit(bad.length ? 1 : 0);
}

main();

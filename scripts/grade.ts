// pnpm grade: runs the graded tests of every chapter against the learner's code (or --solution reference)
// and prints each chapter's progress.
//
// Each chapter is graded on its own, with the files of every other chapter swapped for their reference
// solutions (TINY_LLM_REFERENCE_CHAPTERS, see vitest.shared.ts): a chapter's row says whether *its* code is
// right, whatever state the others are in. `pnpm test --filter week1` runs the learner's chapters together.
// Each chapter is graded in a process of its own (this script with --grade-one), given at most
// --chapter-timeout seconds: a learner's kernel that crashes, or never returns (a loop without an end in C++
// or WGSL), fails its own chapter and leaves the table standing.
//
// pnpm grade --check-stubs (run by `pnpm test`): the learner packages must still be stubs, so every chapter
// must be "not started": each of its tests fails with a NotImplemented error that names that chapter. With
// TINY_LLM_TEST_REPORT set, the check is also written there as a test report for the CI summary.
// pnpm grade --json: the table as JSON on stdout.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startVitest } from 'vitest/node';
import { allChapters, ROOT, type Chapter } from './chapters.ts';
import { writeReport } from './report.ts';

export type Status = 'passed' | 'in progress' | 'not started' | 'error';

export interface ChapterProgress {
  id: string;
  title: string;
  week: string;
  passed: number;
  total: number;
  status: Status;
  /** Why the chapter is not "passed": the first failure, in one line. */
  detail?: string;
}

type Solution = 'learner' | 'reference';

/** Whether two chapters share a file (1.5 and its Qwen3 extension, 2.6 and 2.7). */
function shareFiles(a: Chapter, b: Chapter): boolean {
  return a.week === b.week && a.files.some((f) => b.files.includes(f));
}

/** The other chapters whose files do not overlap this one's: they run on the reference while it is graded. */
function othersOf(chapter: Chapter, chapters: Chapter[]): string[] {
  return chapters.filter((c) => !shareFiles(c, chapter)).map((c) => c.id);
}

/**
 * The chapters whose NotImplemented this chapter's stubs may throw: its own, and those of the chapters it
 * shares files with (1.5-qwen3's tests reach chapter 1.5's stubs in the same file).
 */
function stubIdsOf(chapter: Chapter, chapters: Chapter[]): string[] {
  return chapters.filter((c) => shareFiles(c, chapter)).map((c) => c.id.split('-')[0]);
}

interface TestOutcome {
  state: 'passed' | 'failed' | 'skipped' | 'pending';
  messages: string[];
}

/** Runs one test file with vitest's Node API and returns each test's outcome, and errors outside any test. */
async function runTests(chapter: Chapter, env: Record<string, string>): Promise<{ tests: TestOutcome[]; errors: string[] }> {
  const saved = { ...process.env };
  Object.assign(process.env, env, { TINY_LLM_TEST_REPORT: '' });
  try {
    // A reporter with no hooks: the table is the output.
    const quiet = { root: join(ROOT, 'packages', chapter.week), watch: false, reporters: [{}] };
    const vitest = await startVitest('test', [chapter.test], quiet);
    const tests: TestOutcome[] = [];
    const errors: string[] = vitest.state.getUnhandledErrors().map((e) => String((e as Error)?.message ?? e));
    for (const module of vitest.state.getTestModules()) {
      errors.push(...module.errors().map((e) => e.message));
      for (const test of module.children.allTests()) {
        const result = test.result();
        tests.push({ state: result.state, messages: (result.errors ?? []).map((e) => e.message) });
      }
    }
    await vitest.close();
    return { tests, errors };
  } finally {
    process.env = saved;
  }
}

/** A NotImplemented error thrown by this chapter's own stubs (TypeScript, or a C++ kernel's message). */
function isOwnStub(message: string, stubIds: string[]): boolean {
  return message.includes('NotImplemented') && stubIds.some((id) => message.includes(`(chapter ${id})`));
}

function progressOf(chapter: Chapter, stubIds: string[], tests: TestOutcome[], errors: string[]): ChapterProgress {
  const row = { id: chapter.id, title: chapter.title, week: chapter.week, total: tests.length };
  const passed = tests.filter((t) => t.state === 'passed').length;
  const failures = [...errors, ...tests.flatMap((t) => t.messages)];
  const oneLine = (s: string) => s.split('\n')[0].slice(0, 200);
  if (tests.length === 0) {
    return { ...row, passed, status: 'error', detail: failures.length ? oneLine(failures[0]) : 'no tests found' };
  }
  const unfinished = tests.filter((t) => t.state === 'skipped' || t.state === 'pending').length;
  if (unfinished > 0) {
    // A test process that died (a crashing native kernel) leaves its tests unfinished and says why in errors.
    const why = errors.length ? `: ${oneLine(errors[0])}` : '';
    return { ...row, passed, status: 'error', detail: `${unfinished} of ${tests.length} tests skipped or not run${why}` };
  }
  if (passed === tests.length && errors.length === 0) return { ...row, passed, status: 'passed' };
  if (passed === 0 && failures.every((m) => isOwnStub(m, stubIds))) return { ...row, passed, status: 'not started' };
  const wrong = failures.find((m) => !isOwnStub(m, stubIds)) ?? failures[0];
  return { ...row, passed, status: 'in progress', detail: oneLine(wrong) };
}

export async function gradeChapter(chapter: Chapter, solution: Solution, chapters: Chapter[]): Promise<ChapterProgress> {
  const env: Record<string, string> = { TINY_LLM_SOLUTION: solution };
  if (solution === 'learner') env.TINY_LLM_REFERENCE_CHAPTERS = othersOf(chapter, chapters).join(',');
  const { tests, errors } = await runTests(chapter, env);
  return progressOf(chapter, stubIdsOf(chapter, chapters), tests, errors);
}

/**
 * gradeChapter in a child process, stopped (with its vitest workers) after `seconds`: a chapter whose tests
 * never end is an error row, not a table that never comes.
 */
function gradeInChild(chapter: Chapter, solution: Solution, seconds: number): Promise<ChapterProgress> {
  const script = fileURLToPath(import.meta.url);
  const child = spawn(process.execPath, ['--import', 'tsx', script, '--grade-one', chapter.id, '--solution', solution], {
    cwd: ROOT,
    detached: true, // its own process group, so that its vitest workers stop with it
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    process.kill(-child.pid!, 'SIGKILL');
  }, seconds * 1000);
  const row = { id: chapter.id, title: chapter.title, week: chapter.week, passed: 0, total: 0, status: 'error' as const };
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut)
        return resolve({ ...row, detail: `no result after ${seconds} s (a kernel that never returns?): its tests were stopped` });
      const last = stdout.trim().split('\n').at(-1) ?? '';
      try {
        resolve(JSON.parse(last) as ChapterProgress);
      } catch {
        resolve({ ...row, detail: `its grading process ended (${signal ?? `exit code ${code}`}) without a result` });
      }
    });
  });
}

function printTable(rows: ChapterProgress[], solution: Solution): void {
  const log = (line = '') => process.stderr.write(`${line}\n`);
  log(
    `\nProgress of the ${solution} solution${solution === 'learner' ? " (each chapter graded on the reference's other chapters)" : ''}\n`,
  );
  log(`${'chapter'.padEnd(11)}${'title'.padEnd(28)}${'tests'.padEnd(9)}status`);
  for (const r of rows) {
    const tests = r.total ? `${r.passed}/${r.total}` : '-';
    log(
      `${r.id.padEnd(11)}${r.title.padEnd(28)}${tests.padEnd(9)}${r.status}${r.detail && r.status !== 'not started' ? `: ${r.detail}` : ''}`,
    );
  }
  const done = rows.filter((r) => r.status === 'passed').length;
  log(`\n${done} of ${rows.length} chapters pass.`);
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      solution: { type: 'string', default: process.env.TINY_LLM_SOLUTION ?? 'learner' },
      'check-stubs': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      chapter: { type: 'string', multiple: true },
      'chapter-timeout': { type: 'string', default: '900' },
      'grade-one': { type: 'string' },
    },
  });
  const checkStubs = values['check-stubs'];
  const solution = checkStubs ? 'learner' : values.solution;
  if (solution !== 'learner' && solution !== 'reference') {
    process.stderr.write(`grade: --solution must be learner or reference, got ${solution}\n`);
    return 2;
  }
  const chapters = allChapters();
  const one = chapters.find((c) => c.id === values['grade-one']);
  if (one) {
    process.stdout.write(`\n${JSON.stringify(await gradeChapter(one, solution, chapters))}\n`);
    return 0;
  }
  const timeout = Number(values['chapter-timeout']);
  if (!(timeout > 0)) {
    process.stderr.write(`grade: --chapter-timeout must be a number of seconds > 0, got ${values['chapter-timeout']}\n`);
    return 2;
  }
  const selected = values.chapter ? chapters.filter((c) => values.chapter!.includes(c.id)) : chapters;
  const rows: ChapterProgress[] = [];
  for (const chapter of selected) {
    let row = await gradeInChild(chapter, solution, timeout);
    if (checkStubs && row.status === 'error') {
      // A stub's tests only throw; a test process that died or stopped answering there is the GPU driver or the
      // machine, not the stub: grade it once more, and say so.
      process.stderr.write(`grade: chapter ${chapter.id}'s test process failed (${row.detail}); grading it once more\n`);
      row = await gradeInChild(chapter, solution, timeout);
    }
    rows.push(row);
  }
  if (values.json) process.stdout.write(`${JSON.stringify({ solution, chapters: rows }, null, 2)}\n`);
  printTable(rows, solution);
  if (!checkStubs) return 0;
  if (process.env.TINY_LLM_TEST_REPORT) {
    const results = rows.map((r) => ({
      title: `chapter ${r.id} is a stub`,
      passed: r.status === 'not started',
      message: `${r.status}: ${r.detail ?? ''}`,
    }));
    writeReport(process.env.TINY_LLM_TEST_REPORT, 'stub-check', 'scripts/grade.ts --check-stubs', results);
  }
  const bad = rows.filter((r) => r.status !== 'not started');
  for (const r of bad) {
    const why = r.detail ? ` (${r.detail})` : '';
    process.stderr.write(
      `stub check: chapter ${r.id} is "${r.status}" with the learner stubs${why}; each of its tests must fail with its own NotImplemented\n`,
    );
  }
  return bad.length ? 1 : 0;
}

process.exitCode = await main();

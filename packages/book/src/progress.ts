// The learner's progress on the dev server: GET /progress.json runs the grader on the learner's code
// (`tsx scripts/grade.ts --json`) and answers with its JSON, which the Progress page shows as a table.
// A Vite plugin's configureServer runs only in `vitepress dev`: the static site has no grader to run, and
// its Progress page says how to see the table instead.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { Plugin } from 'vite';
import { ROOT } from '../../../scripts/chapters.ts';

const PROGRESS_URL = '/progress.json';

/** The whole course's tests can take minutes on a slow machine; past this the page shows an error. */
const GRADE_TIMEOUT_MS = 10 * 60_000;

export interface GradeResult {
  status: number;
  body: string;
}

/** Runs a grader command and turns its outcome into an answer: its JSON, or an error that says why. */
export function runGrader(command: string, args: string[], timeoutMs = GRADE_TIMEOUT_MS): Promise<GradeResult> {
  return new Promise((done) => {
    const child = spawn(command, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const fail = (message: string) => done({ status: 500, body: JSON.stringify({ error: message }) });
    const timer = setTimeout(() => {
      child.kill();
      fail(`the grader did not finish within ${timeoutMs / 1000} s`);
    }, timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      fail(`cannot run the grader: ${error.message}`);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      const why = `${[command, ...args].join(' ')} exited with code ${code}`;
      try {
        const report = JSON.parse(stdout);
        if (!Array.isArray(report.chapters)) throw new Error('no "chapters" list');
        done({ status: 200, body: JSON.stringify(report) });
      } catch (error) {
        fail(`${why} without a progress report (${(error as Error).message}). ${stderr.slice(-2000)}`);
      }
    });
  });
}

export function progressPlugin(): Plugin {
  // One grader run at a time: a second request while one runs gets the same answer.
  let running: Promise<GradeResult> | undefined;
  return {
    name: 'tiny-llm:progress',
    configureServer(server) {
      server.middlewares.use(PROGRESS_URL, (_request, response) => {
        running ??= runGrader(join(ROOT, 'node_modules/.bin/tsx'), ['scripts/grade.ts', '--json']).finally(() => {
          running = undefined;
        });
        void running.then(({ status, body }) => {
          response.statusCode = status;
          response.setHeader('Content-Type', 'application/json');
          response.end(body);
        });
      });
    },
  };
}

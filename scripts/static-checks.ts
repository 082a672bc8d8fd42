// pnpm check: the checks that read the code without running it, each one a line of CI's count.
//   typecheck   tsc on every package and on these scripts (pnpm typecheck)
//   deps        no cycle between packages, every import declared (pnpm check:deps)
//   lint        Biome's lint rules and formatting (pnpm lint; pnpm format fixes what it can)
// Each check's output is printed only when it fails.
import { spawnSync } from 'node:child_process';
import { ROOT } from './chapters.ts';
import { writeReport, type CheckResult } from './report.ts';

const CHECKS: { title: string; command: string[] }[] = [
  { title: 'typecheck: tsc finds no error in any package or script', command: ['pnpm', 'typecheck'] },
  { title: 'deps: no cycle between packages, every import declared', command: ['pnpm', 'check:deps'] },
  { title: 'lint: Biome finds no lint error and nothing to format', command: ['pnpm', 'lint'] },
];

const results: CheckResult[] = [];
for (const check of CHECKS) {
  const run = spawnSync(check.command[0], check.command.slice(1), { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20 });
  const passed = run.status === 0;
  const output = `${run.stdout ?? ''}${run.stderr ?? ''}${run.error ? String(run.error) : ''}`.trim();
  process.stdout.write(`${passed ? 'ok  ' : 'FAIL'} ${check.title}\n`);
  if (!passed) process.stdout.write(`${output}\n\n`);
  results.push({ title: check.title, passed, message: output.split('\n').slice(-40).join('\n') });
}
if (process.env.TINY_LLM_TEST_REPORT) writeReport(process.env.TINY_LLM_TEST_REPORT, 'static-checks', 'scripts/static-checks.ts', results);
process.exitCode = results.every((r) => r.passed) ? 0 : 1;

// The engine's entries run as `pnpm tiny-llm` and `pnpm demo` run them (bin/run.mjs, from the repository root),
// for the tests that check a command end to end. Async, so that spawns can overlap.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs an entry of the engine (`cli`: `pnpm tiny-llm`, `demo`: `pnpm demo`) with `args` (and extra environment);
 * never hangs: a run past five minutes is killed (a software GPU makes some runs take a minute on a loaded machine).
 */
export function runEntry(entry: 'cli' | 'demo', args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['packages/engine/bin/run.mjs', entry, ...args], {
      cwd: ROOT,
      env: { ...process.env, TINY_LLM_DEBUG: '', ...env },
      timeout: 300_000,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) =>
      resolve({ code, stdout, stderr: signal ? `${stderr}\n[the script was killed by ${signal}]` : stderr }),
    );
  });
}

/** `pnpm tiny-llm <args>`. */
export const cli = (args: string[], env: Record<string, string> = {}) => runEntry('cli', args, env);

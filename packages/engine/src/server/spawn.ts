// `tiny-llm serve` in a child process, for the benchmark and the tests: the load they generate then runs beside
// the server, not in its event loop.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const RUN = fileURLToPath(new URL('../../bin/run.mjs', import.meta.url));

export interface ServerProcess {
  url: string;
  child: ChildProcess;
  /** The server's log lines so far (stderr). */
  log: string[];
  stop(): Promise<void>;
}

/** Starts the server on a free port with these extra flags; resolves once it listens. */
export function spawnServer(args: readonly string[] = []): Promise<ServerProcess> {
  const child = spawn(process.execPath, [RUN, 'cli', 'serve', '--port', '0', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  const log: string[] = [];
  const stop = () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
  return new Promise((resolve, reject) => {
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      log.push(...chunk.split('\n').filter(Boolean));
      const listening = /listening on (http:\/\/\S+)/.exec(chunk);
      if (listening) resolve({ url: listening[1], child, log, stop });
    });
    child.once('exit', (code) => reject(new Error(`the server exited (${code}) before listening:\n${log.join('\n')}`)));
  });
}

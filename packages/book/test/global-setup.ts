// Before the browser test: build the site with VitePress (which fails on a dead link), then serve the
// build on a free port of this machine, as any static host would serve it.
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestProject } from 'vitest/node';

declare module 'vitest' {
  export interface ProvidedContext {
    /** The address of the built site, without a trailing slash. */
    site: string;
  }
}

export const BOOK = fileURLToPath(new URL('..', import.meta.url));
export const DIST = join(BOOK, 'dist');

const BUILD_TIMEOUT_MS = 5 * 60_000;
const LISTEN_TIMEOUT_MS = 10_000;

function build(): void {
  const vitepress = createRequire(join(BOOK, 'package.json')).resolve('vitepress/package.json');
  const cli = join(dirname(vitepress), 'bin/vitepress.js');
  const run = spawnSync(process.execPath, [cli, 'build'], { cwd: BOOK, encoding: 'utf8', timeout: BUILD_TIMEOUT_MS });
  const output = `${run.stdout}${run.stderr}`.slice(-4000);
  if (run.error) throw new Error(`vitepress build did not finish (${run.error.message}):\n${output}`);
  if (run.status !== 0) throw new Error(`vitepress build failed with code ${run.status}:\n${output}`);
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.css': 'text/css',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.woff2': 'font/woff2',
};

/** Serves DIST: a path ending in "/" is its index.html; anything missing is the site's 404 page, status 404. */
function serve(): Promise<{ url: string; close: () => void }> {
  const server = createServer(async (request, response) => {
    const path = normalize(decodeURIComponent(new URL(request.url ?? '/', 'http://site').pathname));
    const file = join(DIST, path, path.endsWith('/') ? 'index.html' : '');
    try {
      const body = await readFile(file);
      // Assets have hashed names: cached for good, as static hosts serve them, so each page load is quick.
      const cache = path.startsWith('/assets/') ? { 'Cache-Control': 'max-age=31536000, immutable' } : {};
      response.writeHead(200, { 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream', ...cache });
      response.end(body);
    } catch {
      response.writeHead(404, { 'Content-Type': TYPES['.html'] });
      response.end(await readFile(join(DIST, '404.html')));
    }
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      server.close();
      reject(new Error(`the site's server did not start listening within ${LISTEN_TIMEOUT_MS / 1000} s`));
    }, LISTEN_TIMEOUT_MS);
    server.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`the site's server could not start: ${error.message}`));
    });
    // Port 0: the system picks a free port, so parallel runs on one machine do not collide.
    server.listen(0, '127.0.0.1', () => {
      clearTimeout(timer);
      const { port } = server.address() as AddressInfo;
      resolve({ url: `http://127.0.0.1:${port}`, close: () => server.close() });
    });
  });
}

export default async function setup(project: TestProject): Promise<() => void> {
  build();
  const { url, close } = await serve();
  project.provide('site', url);
  return close;
}

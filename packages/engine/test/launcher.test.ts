// bin/bundle.mjs, what `pnpm tiny-llm` and `pnpm demo` run: the sources bundled, rebuilt when one changes, with
// each module's import.meta.url its source file's. On a small project of its own in a temporary folder; the CLI's
// end-to-end tests (cli.test.ts and others) run the engine's own bundle.
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { transform } from 'esbuild';
import { currentBundle, loadEntry } from '../bin/bundle.mjs';
import { oneLine } from '../src/errors.ts';

const root = mkdtempSync(join(tmpdir(), 'tiny-llm-bundle-'));
const cacheDir = join(root, 'cache');
const entries = { main: 'src/main.ts' };
const bundle = () => currentBundle({ root, cacheDir, entries });
mkdirSync(join(root, 'src/lib'), { recursive: true });
writeFileSync(join(root, 'package.json'), '{ "type": "module" }\n');

/** Writes a source with a modification time `ahead` ms from now: later than the last build, as an edit is. */
function write(file: string, text: string, ahead = 0): void {
  writeFileSync(join(root, file), text);
  const at = new Date(Date.now() + ahead);
  utimesSync(join(root, file), at, at);
}

describe('the bundle of the CLI', () => {
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('keeps each module its source URL, reuses a current build and rebuilds after an edit', async () => {
    write('src/main.ts', "export { where, version } from './lib/where.ts';\nexport const main: string = import.meta.url;\n");
    write('src/lib/where.ts', 'export const where: string = import.meta.url;\nexport const version = 1;\n');
    const first = (await bundle()).main;
    const a = await import(pathToFileURL(first).href);
    expect(a.main).toBe(pathToFileURL(join(root, 'src/main.ts')).href);
    expect(a.where).toBe(pathToFileURL(join(root, 'src/lib/where.ts')).href);
    expect(a.version).toBe(1);

    expect((await bundle()).main).toBe(first);

    write('src/lib/where.ts', 'export const where: string = import.meta.url;\nexport const version = 2;\n', 5_000);
    const second = (await bundle()).main;
    expect(second).not.toBe(first);
    expect((await import(pathToFileURL(second).href)).version).toBe(2);
  });

  it('names the file, line and column of a syntax error', async () => {
    write('src/lib/where.ts', 'export const where = ;\n', 10_000);
    await expect(bundle()).rejects.toThrow(/src\/lib\/where\.ts:1:21/);
  });

  it('leaves a package that does not resolve to fail where it is imported, at run time', async () => {
    write('src/lib/where.ts', "export const where = () => import('no-such-package-of-tiny-llm');\nexport const version = 3;\n", 15_000);
    const m = await import(pathToFileURL((await bundle()).main).href);
    expect(m.version).toBe(3);
    await expect(m.where()).rejects.toThrow(/no-such-package-of-tiny-llm/);
  });

  it('runs the sources through tsx when one does not build, which fails only where it is imported', async () => {
    write(
      'src/main.ts',
      "export const ok: number = 1;\nexport const fine = () => import('./lib/fine.ts');\nexport const broken = () => import('./lib/where.ts');\n",
      20_000,
    );
    write('src/lib/fine.ts', 'export const value: number = 2;\n', 20_000);
    write('src/lib/where.ts', 'export const where = ;\n', 20_000);
    await expect(bundle()).rejects.toThrow(/where\.ts/);
    const m = await loadEntry('main', { root, cacheDir, entries });
    expect(m.ok).toBe(1);
    expect((await m.fine()).value).toBe(2);
    await expect(m.broken()).rejects.toThrow(/where\.ts/);
  });

  it("puts a source's compile error in the CLI's one line: its file, line and column", async () => {
    const err = await transform('export const broken = ;\n', { loader: 'ts', sourcefile: 'src/attention.ts' }).catch((e: unknown) => e);
    expect(oneLine(err)).toMatch(/^Transform failed with 1 error: src\/attention\.ts:1:22: ERROR: Unexpected ";"$/);
  });
});

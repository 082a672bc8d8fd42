// @ts-check
// `pnpm tiny-llm` and `pnpm demo` run the engine as JavaScript bundled from its TypeScript (and every week's, the
// learner's included) by esbuild, rebuilt whenever a source changed since the last build (about 0.3 s) and cached
// under packages/engine/node_modules/.cache. The tests and the other scripts load TypeScript through tsx instead;
// the CLI does not, for two reasons measured on the demo model (2 threads, Zen 5): tsx's loader runs in a thread
// of its own with its own JavaScript heap (Node 20 always runs module hooks off the main thread), 144 -> 110 MB
// of peak resident memory for `bench`; and a command starts sooner, `--help` 1.2 -> 0.2 s.
//
// The bundle must behave as the sources do under tsx:
// - each module's `import.meta.url` stays its source file's URL, so the paths built from it (native addons,
//   WGSL files, models, worker entries) resolve as they do in the source tree;
// - packages from outside the workspace stay imports (of the file esbuild resolves them to, so that Node finds
//   them from the cache folder); one that does not resolve (an optional dependency missing) fails where it is
//   imported, at run time, as it would under tsx;
// - code that only some commands import (the server, the benchmarks) goes into chunks of its own, loaded when a
//   command imports it: one file would load hono, zod and prom-client for `generate` too.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** The entry points `run.mjs` knows, by name. @type {Record<string, string>} */
export const ENTRIES = { cli: 'packages/engine/src/cli.ts', demo: 'packages/engine/src/demo.ts' };

/**
 * @typedef {{ dir: string, builtAt: number, entries: Record<string, string>, inputs: string[] }} Build
 * What `current.json` records: the build's folder, when it started (ms since the epoch), the path of each entry's
 * output, and every source it read (absolute paths), whose modification times decide whether it is still current.
 */

/**
 * The current bundle's entry files in `cacheDir` (a build of `entries`, paths relative to `root`), after building
 * it if a source changed since. A failed build (a syntax error in a source) throws esbuild's message, which names
 * the file, line and column.
 * @param {{ root?: string, cacheDir?: string, entries?: Record<string, string> }} [options]
 * @returns {Promise<Record<string, string>>}
 */
export async function currentBundle(options = {}) {
  const root = options.root ?? REPO_ROOT;
  const cacheDir = options.cacheDir ?? join(REPO_ROOT, 'packages/engine/node_modules/.cache/tiny-llm-bundle');
  const entries = options.entries ?? ENTRIES;
  const current = readCurrent(cacheDir);
  if (current && isFresh(current, entries)) return current.entries;
  return buildInChild(root, cacheDir, entries).entries;
}

/**
 * build() in a child process (this file run as a script), so that the command's own process never loads esbuild:
 * its peak memory, which `tiny-llm bench` reports, is the same whether or not this run rebuilt (9 MB more when it
 * built in-process). The child's error output, esbuild's message, becomes the error.
 * @param {string} root @param {string} cacheDir @param {Record<string, string>} entries @returns {Build}
 */
function buildInChild(root, cacheDir, entries) {
  const child = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--build', JSON.stringify({ root, cacheDir, entries })], {
    encoding: 'utf8',
  });
  if (child.status !== 0) throw new Error(child.stderr.trim() || `the bundle's build exited with ${child.status ?? child.signal}`);
  return JSON.parse(child.stdout);
}

/**
 * The module of entry `name`: from the current bundle, or, when the sources do not build, from the sources
 * themselves through tsx. A source that does not build is often a learner's file being written, and that is only
 * an error for the commands that import it (`--solution learner`): tsx compiles each file as it is imported and
 * reports it there, with its file and line, while the other commands run.
 * @param {string} name
 * @param {{ root?: string, cacheDir?: string, entries?: Record<string, string> }} [options]
 */
export async function loadEntry(name, options = {}) {
  let bundled;
  try {
    bundled = (await currentBundle(options))[name];
  } catch (err) {
    if (process.env.TINY_LLM_DEBUG === '1') process.stderr.write(`(the sources do not build, so they run through tsx: ${err})\n`);
    const { register } = await import('tsx/esm/api');
    register();
    return import(pathToFileURL(join(options.root ?? REPO_ROOT, (options.entries ?? ENTRIES)[name])).href);
  }
  return import(pathToFileURL(bundled).href);
}

/** @param {string} cacheDir @returns {Build | null} */
function readCurrent(cacheDir) {
  try {
    return JSON.parse(readFileSync(join(cacheDir, 'current.json'), 'utf8'));
  } catch {
    return null;
  }
}

/** Built from these entries, its outputs still there, and no source (nor this file) modified since the build started. @param {Build} b @param {Record<string, string>} entries */
function isFresh(b, entries) {
  if (Object.keys(entries).some((name) => !(name in b.entries && existsSync(b.entries[name])))) return false;
  for (const file of [...b.inputs, fileURLToPath(import.meta.url)]) {
    try {
      if (statSync(file).mtimeMs > b.builtAt) return false;
    } catch {
      return false; // a source deleted or renamed
    }
  }
  return true;
}

/**
 * Builds into a folder of its own and then points `current.json` at it (a rename, so atomic): commands started
 * at the same time may each build, and one that runs never sees its chunks replaced under it. Builds an hour old
 * are removed (about 2 MB each): a command loads its chunks from its own build's folder, all of them as it starts.
 * @param {string} root @param {string} cacheDir @param {Record<string, string>} entries @returns {Promise<Build>}
 */
async function build(root, cacheDir, entries) {
  const builtAt = Date.now();
  const dir = join(cacheDir, `build-${builtAt}-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const esbuild = await import('esbuild');
  const result = await esbuild
    .build({
      absWorkingDir: root,
      entryPoints: entries,
      outdir: dir,
      outExtension: { '.js': '.mjs' },
      bundle: true,
      splitting: true,
      chunkNames: 'chunks/[name]-[hash]',
      format: 'esm',
      platform: 'node',
      target: 'node20',
      sourcemap: 'linked',
      metafile: true,
      logLevel: 'silent',
      plugins: [keepSourceUrls, externalPackages],
    })
    .catch((err) => {
      rmSync(dir, { recursive: true, force: true });
      throw err;
    })
    .finally(() => esbuild.stop()); // its service process would otherwise live as long as the command
  /** @type {Record<string, string>} */
  const outputs = {};
  for (const [out, meta] of Object.entries(result.metafile.outputs)) {
    const name = Object.keys(entries).find((n) => meta.entryPoint === entries[n]);
    if (name) outputs[name] = join(root, out);
  }
  // The lockfile too: an install can move the packages the bundle imports by their paths.
  const inputs = [...Object.keys(result.metafile.inputs), 'pnpm-lock.yaml'].map((p) => join(root, p)).filter((p) => existsSync(p));
  /** @type {Build} */
  const b = { dir, builtAt, entries: outputs, inputs };
  const tmp = join(cacheDir, `current.json.${process.pid}`);
  writeFileSync(tmp, JSON.stringify(b));
  renameSync(tmp, join(cacheDir, 'current.json'));
  for (const old of readdirSync(cacheDir)) {
    const path = join(cacheDir, old);
    if (old.startsWith('build-') && path !== dir && statSync(path).mtimeMs < builtAt - 3_600_000)
      rmSync(path, { recursive: true, force: true });
  }
  return b;
}

/** @type {import('esbuild').Plugin} */
const keepSourceUrls = {
  name: 'keep-source-urls',
  setup(b) {
    b.onLoad({ filter: /\.ts$/ }, (args) => ({
      contents: readFileSync(args.path, 'utf8').replaceAll('import.meta.url', JSON.stringify(pathToFileURL(args.path).href)),
      loader: 'ts',
    }));
  },
};

/** @type {import('esbuild').Plugin} */
const externalPackages = {
  name: 'external-packages',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, async (args) => {
      if (args.path.startsWith('@tiny-llm/') || args.pluginData === 'resolving') return undefined;
      if (args.path.startsWith('node:')) return { external: true };
      const found = await b.resolve(args.path, { resolveDir: args.resolveDir, kind: args.kind, pluginData: 'resolving' });
      return { path: found.errors.length > 0 ? args.path : found.path, external: true };
    });
  },
};

// Run as a script by buildInChild.
if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === '--build') {
  const { root, cacheDir, entries } = JSON.parse(process.argv[3]);
  try {
    process.stdout.write(JSON.stringify(await build(root, cacheDir, entries)));
  } catch (err) {
    process.stderr.write(`${err instanceof Error ? err.message : err}\n`);
    process.exitCode = 1;
  }
}

// Loading an addon written with the extension SDK (native/include/tiny_llm/extension.h) in another package:
// the engine's kernels, the reference solutions', a learner's. It is connected to tensor-core's thread pool
// on first load, so that its kernels share the pool (and its thread count) with tensor-core's own.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { native } from './native.ts';

const require = createRequire(import.meta.url);
const loaded = new Map<string, unknown>();

/**
 * The addon at `url` (a .node file an SDK package builds), connected to the pool. `owner` names the package for
 * the message when it is not built. Untyped, as `native`: each package wraps its kernels in typed functions.
 */
// biome-ignore lint/suspicious/noExplicitAny: a native addon's bindings have no TypeScript types
export function loadExtension(url: URL | string, owner: string): any {
  const path = typeof url === 'string' ? url : fileURLToPath(url);
  let addon = loaded.get(path);
  if (addon) return addon;
  if (!existsSync(path)) {
    throw new Error(
      `${owner}: the native addon ${path} is not built. Run \`pnpm build\` at the repository root (it needs cmake, ninja and a ` +
        'C++17 compiler).',
    );
  }
  addon = require(path);
  (addon as { connect(table: unknown): void }).connect(native.sdkTable());
  loaded.set(path, addon);
  // An addon first loaded by a kernel call being recorded (its package's first call in this thread): its
  // calls from here on are part of the recording too.
  if (recording) wrapBindings(addon as Record<string, unknown>, recording);
  return addon;
}

/**
 * A getter of the addon at `url` for a package's kernels: loaded by the first call, then returned as it is. Kernels
 * ask for their addon on every call, dozens of times a decode step: building the URL and its path each time was
 * 3% of the demo model's decode (URL parsing, in a CPU profile).
 */
// biome-ignore lint/suspicious/noExplicitAny: a native addon's bindings have no TypeScript types
export function extensionGetter(url: URL, owner: string): () => any {
  // biome-ignore lint/suspicious/noExplicitAny: as above
  let addon: any = null;
  return () => {
    addon ??= loadExtension(url, owner);
    return addon;
  };
}

/** One call of a native kernel: the binding itself and the arguments it was called with. */
export interface NativeCall {
  readonly kernel: (...args: unknown[]) => unknown;
  readonly args: unknown[];
}

/**
 * Runs fn and returns what it returned with every call it made to a binding of tensor-core's addon or of a loaded
 * extension, in order. While fn runs, each binding is swapped for one that notes the call and makes it; outside
 * it nothing is wrapped, so recording costs nothing the rest of the time. Calls through a binding fetched before
 * fn ran (a function kept in a variable) are not seen: kernels are always called as properties of their addon.
 */
export function recordNativeCalls<T>(fn: () => T): { result: T; calls: NativeCall[] } {
  if (recording) throw new Error('recordNativeCalls: already recording (captures do not nest)');
  const current: Recording = { calls: [], restore: [] };
  recording = current;
  try {
    for (const addon of [native, ...loaded.values()]) wrapBindings(addon as Record<string, unknown>, current);
    return { result: fn(), calls: current.calls };
  } finally {
    recording = null;
    for (const undo of current.restore) undo();
  }
}

interface Recording {
  calls: NativeCall[];
  /** Puts each wrapped binding back. */
  restore: (() => void)[];
}

/** The recording under way in this thread, or null. */
let recording: Recording | null = null;

/** Swaps each binding of `addon` for one that notes its calls in `into` and makes them. */
function wrapBindings(addon: Record<string, unknown>, into: Recording): void {
  for (const [name, kernel] of Object.entries(addon)) {
    if (typeof kernel !== 'function') continue;
    addon[name] = (...args: unknown[]) => {
      into.calls.push({ kernel: kernel as NativeCall['kernel'], args });
      return kernel(...args);
    };
    into.restore.push(() => {
      addon[name] = kernel;
    });
  }
}

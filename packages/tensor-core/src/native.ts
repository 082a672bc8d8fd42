// Loads the compiled C++ addon. Every kernel binding is a property of `native` (see native/src/registry.h).
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const buildDir = fileURLToPath(new URL('../build/Release/', import.meta.url));

// biome-ignore lint/suspicious/noExplicitAny: a native addon's bindings have no TypeScript types
function loadAddon(name: string): any {
  const path = `${buildDir}${name}.node`;
  if (!existsSync(path)) {
    throw new Error(
      `tensor-core: the native addon ${path} is not built. Run \`pnpm build\` at the repository root ` +
        '(it needs cmake, ninja and a C++17 compiler).',
    );
  }
  return require(path);
}

/** The tensor-core addon. Untyped on purpose: only src/backend/cpu.ts and the bench call it. */
// biome-ignore lint/suspicious/noExplicitAny: a native addon's bindings have no TypeScript types
export const native: any = loadAddon('tensor_core');

/** Loads another addon from tensor-core's build folder (the SDK example). */
// biome-ignore lint/suspicious/noExplicitAny: a native addon's bindings have no TypeScript types
export function loadBuiltAddon(name: string): any {
  return loadAddon(name);
}

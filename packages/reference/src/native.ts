// Loads the reference solutions' native addon (native/*.cc, built by `pnpm build` into build/Release) and
// connects it to tensor-core's thread pool, once, so that its kernels share the pool with tensor-core's.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { native as core } from '@tiny-llm/tensor-core';

const require = createRequire(import.meta.url);
const ADDON = fileURLToPath(new URL('../build/Release/reference_kernels.node', import.meta.url));

let addon: any = null;

/** The reference kernels (untyped, as tensor-core's `native`): quantizedMatmul, cpuFeatures. */
export function referenceKernels(): any {
  if (addon) return addon;
  if (!existsSync(ADDON)) {
    throw new Error(
      `@tiny-llm/reference: the native addon ${ADDON} is not built. Run \`pnpm build\` at the repository root ` +
        '(it needs cmake, ninja and a C++17 compiler).',
    );
  }
  const loaded = require(ADDON);
  loaded.connect(core.sdkTable());
  addon = loaded;
  return addon;
}

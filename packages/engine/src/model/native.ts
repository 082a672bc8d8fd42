// The engine's native addon (native/*.cc, built by `pnpm build` into build/Release).
import * as tc from '@tiny-llm/tensor-core';

/** The engine's kernels (untyped, as tensor-core's `native`): quantizedMatmul, panelLinear, attentionDecode, ... */
// biome-ignore lint/suspicious/noExplicitAny: a native addon's bindings have no TypeScript types
export const engineKernels: () => any = tc.extensionGetter(
  new URL('../../build/Release/engine_kernels.node', import.meta.url),
  '@tiny-llm/engine',
);

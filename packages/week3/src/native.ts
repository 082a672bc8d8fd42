// Your week 3 C++ kernels (native/*.cc), built by `pnpm build` (and by this package's `pnpm test`) into
// build/Release/week3_kernels.node. Given: the chapters' work is in the .cc files.
import * as tc from '@tiny-llm/tensor-core';

// biome-ignore lint/suspicious/noExplicitAny: a native addon's bindings have no TypeScript types
export const week3Kernels: () => any = tc.extensionGetter(
  new URL('../build/Release/week3_kernels.node', import.meta.url),
  '@tiny-llm/week3',
);

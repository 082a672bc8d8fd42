// The reference solutions of week 3's C++ kernels (packages/reference/native/week3), built with the week's own
// bindings into build/Release/reference_week3_kernels.node.
import * as tc from '@tiny-llm/tensor-core';

// biome-ignore lint/suspicious/noExplicitAny: a native addon's bindings have no TypeScript types
export const week3Kernels: () => any = tc.extensionGetter(
  new URL('../../build/Release/reference_week3_kernels.node', import.meta.url),
  '@tiny-llm/reference',
);

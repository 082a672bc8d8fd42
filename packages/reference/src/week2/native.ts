// The reference solutions of week 2's C++ kernels (packages/reference/native/week2), built with the week's own
// bindings into build/Release/reference_week2_kernels.node.
import * as tc from '@tiny-llm/tensor-core';

// biome-ignore lint/suspicious/noExplicitAny: a native addon's bindings have no TypeScript types
export const week2Kernels: () => any = tc.extensionGetter(
  new URL('../../build/Release/reference_week2_kernels.node', import.meta.url),
  '@tiny-llm/reference',
);

// Week 3: serving at scale. The graded tests import everything from here (as `@solution/week3`).
export * from './paged-kv-cache.ts';
export * from './prefix-cache.ts';
export * from './paged-attention.ts';
export * from './paged-batch.ts';
export * from './moe.ts';
export * from './qwen2-week3.ts';
export * from './speculative.ts';
export * from './kv-transfer.ts';
export * from './disaggregated.ts';
export * from './all-reduce.ts';
export * from './tensor-parallel.ts';
export * from './tool-calls.ts';
export * from './agent.ts';
export * from './demo-tools.ts';
// What the week 3 tests use of week 2's scheduler.
export type { GenerationRequest, StepOutput } from '@tiny-llm/week2';

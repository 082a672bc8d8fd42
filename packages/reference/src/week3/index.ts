// Week 3 reference solutions: serving at scale. Each file mirrors the learner's file of the same name.
export * from './paged-kv-cache.ts';
export * from './prefix-cache.ts';
export * from './paged-attention.ts';
export * from './paged-batch.ts';
// What the week 3 tests use of week 2's scheduler.
export type { GenerationRequest, StepOutput } from '../week2/index.ts';

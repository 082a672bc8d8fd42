// Week 1: from matmul to text. The graded tests import everything from here (as `@solution/week1`).
export * from './attention.ts';
export * from './positional-encoding.ts';
export * from './grouped-attention.ts';
export * from './norm-and-mlp.ts';
// chapters 1.5-1.7
export * from './sampler.ts';
export * from './qwen2-week1.ts';
export * from './generate.ts';

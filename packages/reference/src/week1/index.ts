// Week 1 reference solutions: from matmul to text. Each file mirrors the learner's file of the same name.
export * from './attention.ts';
export * from './positional-encoding.ts';
export * from './grouped-attention.ts';
export * from './norm-and-mlp.ts';
// chapters 1.5-1.7
export * from './sampler.ts';
export * from './qwen2-week1.ts';
export * from './generate.ts';

// Week 2 reference solutions: a tiny vLLM. Each file mirrors the learner's file of the same name.
export * from './kv-cache.ts';
export * from './quantized-matmul.ts';
export * from './quantized-matmul-gpu.ts';
export * from './flash-attention.ts';
export * from './flash-attention-gpu.ts';
export * from './qwen2-week2.ts';
export * from './batch.ts';

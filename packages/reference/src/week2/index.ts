// Week 2 reference solutions: a tiny vLLM.
export * from './kv-cache.ts';
export * from './linear.ts';
export * from './qwen2-week2.ts';
export * from './quantized-matmul.ts';

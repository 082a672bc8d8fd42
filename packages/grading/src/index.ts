// @tiny-llm/grading: what the graded tests of every week share.
export * from './checks.ts';
export * from './golden-model.ts';
export * from './mistakes.ts';
export * from './transfer.ts';
export { Float64Qwen2, topTwo, type Float64Variant } from './float64-model.ts';
export * as float64 from './float64.ts';
export * from './tensor-parallel.ts';

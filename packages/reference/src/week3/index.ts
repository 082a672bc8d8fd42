// Week 3 reference solutions: serving at scale. Each file mirrors the learner's file of the same name.
export * from './moe.ts';
export * from './qwen2-week3.ts';
export * from './speculative.ts';
export * from './tool-calls.ts';
export * from './agent.ts';
export * from './demo-tools.ts';

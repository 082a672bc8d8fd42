// Week 3: serving at scale. The graded tests import everything from here (as `@solution/week3`).
export * from './moe.ts';
export * from './qwen2-week3.ts';
export * from './speculative.ts';
export * from './tool-calls.ts';
export * from './agent.ts';
export * from './demo-tools.ts';

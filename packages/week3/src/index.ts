// Week 3: serving at scale. The graded tests import everything from here (as `@solution/week3`).
export * from './moe.ts';
export * from './qwen2-week3.ts';
export * from './speculative.ts';

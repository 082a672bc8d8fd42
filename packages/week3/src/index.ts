// Week 3: serving at scale. The graded tests import everything from here (as `@solution/week3`).
export * from './all-reduce.ts';
export * from './tensor-parallel.ts';

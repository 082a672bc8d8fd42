// Week 3 reference solutions: serving at scale. Each file mirrors the learner's file of the same name.
export * from './all-reduce.ts';
export * from './tensor-parallel.ts';

// Week 3 reference solutions: serving at scale.
export * from './moe.ts';

// The reference solutions of every chapter, one module per week (also importable as
// @tiny-llm/reference/week1, /week2, /week3).
export * as week1 from './week1/index.ts';
export * as week2 from './week2/index.ts';
export * as week3 from './week3/index.ts';

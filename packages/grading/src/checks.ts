// The checks of the graded tests. A failure says what is wrong in the learner's terms: the shape expected and
// got, a dtype other than float32, then the worst value at its coordinates (`at [b=0, l=2, h=0, d=1]`), and,
// when the output equals a known wrong answer the test computed itself, which mistake that is.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { assert, expect } from 'vitest';
import type { NDArray } from './float64.ts';

/** A known wrong answer: what the output would be with one particular mistake, and how to explain it. */
export interface Mistake {
  /** Said after "It matches ...": what was done, and what the case needs instead. */
  explanation: string;
  /** The wrong output, computed only when a check fails. */
  values: () => ArrayLike<number>;
}

export interface Mismatch {
  index: number;
  actual: number;
  expected: number;
  /** How many values are off. */
  count: number;
}

/**
 * The worst value outside |actual - expected| <= atol + rtol * |expected|, or null when all are within.
 * NaN matches only NaN; an infinity matches only the same infinity; either against a finite number is the
 * worst kind of mismatch.
 */
export function worstMismatch(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, rtol = 0): Mismatch | null {
  let worst: Mismatch | null = null;
  let worstError = -1;
  let count = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (a === e || (Number.isNaN(a) && Number.isNaN(e))) continue;
    const error = Math.abs(a - e);
    if (error <= atol + rtol * Math.abs(e)) continue;
    count++;
    const badness = Number.isNaN(error) ? Infinity : error;
    if (badness > worstError) {
      worstError = badness;
      worst = { index: i, actual: a, expected: e, count: 0 };
    }
  }
  return worst && { ...worst, count };
}

/** Coordinates of a flat index: `[b=0, l=2, h=0, d=1]` with axis names, `[0, 2, 0, 1]` without. */
export function formatAt(index: number, shape: readonly number[], axes?: readonly string[]): string {
  const coords: number[] = [];
  for (let d = shape.length - 1; d >= 0; d--) {
    coords.unshift(index % shape[d]);
    index = Math.floor(index / shape[d]);
  }
  const named = axes && axes.length === shape.length;
  return `[${coords.map((c, d) => (named ? `${axes[d]}=${c}` : `${c}`)).join(', ')}]`;
}

/** "got -Infinity where the golden is 0.25", "got 0.1, expected 0.5". */
export function describeValues(actual: number, expected: number): string {
  if (Number.isNaN(actual) && !Number.isNaN(expected)) return `got NaN where the golden is ${expected}`;
  if (!Number.isFinite(actual) && Number.isFinite(expected)) return `got ${actual} where the golden is finite (${expected})`;
  if (Number.isFinite(actual) && !Number.isFinite(expected)) return `got ${actual} where the golden is ${expected}`;
  return `got ${actual}, expected ${expected} (off by ${Math.abs(actual - expected).toPrecision(3)})`;
}

/** The first mistake whose wrong answer the output equals (within the same tolerance), if any. */
export function diagnose(actual: ArrayLike<number>, mistakes: readonly Mistake[], atol: number, rtol = 0): Mistake | undefined {
  return mistakes.find((m) => {
    const wrong = m.values();
    return wrong.length === actual.length && worstMismatch(actual, wrong, atol, rtol) === null;
  });
}

export interface GoldenCheck {
  atol?: number;
  rtol?: number;
  /** What the output is, for the message ("layer 0", "the scores"). */
  what?: string;
  /** Names of the axes, for coordinates (`['b', 'l', 'h', 'd']`). */
  axes?: readonly string[];
  /** Known wrong answers to compare a failing output with. */
  mistakes?: readonly Mistake[];
}

/** Shape and dtype, each with a message that says what is wrong; returns the values. */
export function expectWellFormed(actual: Tensor, expectedShape: readonly number[], what = 'output'): ArrayLike<number> {
  if (!(actual instanceof tc.Tensor)) assert.fail(`${what}: expected a Tensor, got ${actual === null ? 'null' : typeof actual}`);
  const shapes = `expected ${tc.formatShape(expectedShape)}, got ${tc.formatShape(actual.shape)}`;
  expect([...actual.shape], `${what} shape: ${shapes}`).toEqual([...expectedShape]);
  expect(actual.dtype, `${what} dtype: the course computes in float32, got ${actual.dtype}`).toBe('float32');
  return actual.toArray();
}

const formatTolerance = (x: number) => (x !== 0 && x < 1e-3 ? x.toExponential() : String(x));

/** Checks values against a golden; a failure names the worst coordinates and, if it can, the mistake. */
export function expectValues(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  shape: readonly number[],
  check: GoldenCheck = {},
): void {
  const { atol = 1e-5, rtol = 0, what = 'output', axes, mistakes = [] } = check;
  expect(actual.length, `${what}: ${actual.length} values, expected ${expected.length}`).toBe(expected.length);
  const worst = worstMismatch(actual, expected, atol, rtol);
  if (!worst) return;
  const tolerance = rtol ? `atol ${formatTolerance(atol)}, rtol ${formatTolerance(rtol)}` : `atol ${formatTolerance(atol)}`;
  const lines = [
    `${what}: ${worst.count} of ${expected.length} values are off (${tolerance}); the worst at ${formatAt(worst.index, shape, axes)}: ` +
      `${describeValues(worst.actual, worst.expected)}.`,
  ];
  const mistake = diagnose(actual, mistakes, atol, rtol);
  if (mistake) lines.push(`It matches a known mistake: ${mistake.explanation}`);
  assert.fail(lines.join('\n'));
}

/** expectWellFormed, then the values against the golden (a Tensor, or a float64 array of the same shape). */
export function expectGolden(actual: Tensor, expected: Tensor | NDArray, check: GoldenCheck = {}): void {
  const shape = expected instanceof tc.Tensor ? expected.shape : expected.shape;
  const values = expectWellFormed(actual, shape, check.what);
  const golden = expected instanceof tc.Tensor ? expected.toArray() : expected.data;
  expectValues(values, golden, shape, check);
}

/**
 * For half-precision inputs: ||actual - expected|| / ||expected|| below `bound`. An error between 1e-4 and 1e-2
 * is the signature of a computation rounded to bf16 along the way (bf16 keeps ~3 significant digits).
 */
export function expectRelativeError(
  actual: Tensor,
  expected: Tensor,
  check: { bound: number; what?: string; mistakes?: readonly Mistake[] },
): void {
  const { bound, what = 'output', mistakes = [] } = check;
  const values = expectWellFormed(actual, expected.shape, what);
  const golden = expected.toArray();
  let num = 0;
  let den = 0;
  for (let i = 0; i < golden.length; i++) {
    num += (values[i] - golden[i]) ** 2;
    den += golden[i] ** 2;
  }
  const error = Math.sqrt(num / den);
  if (error < bound) return;
  const lines = [`${what}: relative error ||out - golden|| / ||golden|| = ${error.toPrecision(3)}, above ${formatTolerance(bound)}.`];
  const mistake = diagnose(values, mistakes, bound * Math.sqrt(den / golden.length));
  if (mistake) lines.push(`It matches a known mistake: ${mistake.explanation}`);
  else if (error > 1e-4 && error < 1e-2) {
    lines.push(
      'An error of this size is what rounding intermediate results to bf16 gives: widen the input to float32 first (tc.astype) and compute in float32.',
    );
  }
  assert.fail(lines.join('\n'));
}

/**
 * The error `fn` throws, for a test of an error message. A stub's NotImplemented is thrown on as it is, so
 * that the test fails as "not started" and not as a message mismatch; no error at all fails the test.
 */
export function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    if ((err as Error)?.name === 'NotImplemented') throw err;
    return err as Error;
  }
  assert.fail('expected an error, but the call returned normally');
}

/** errorOf for an async call: the error its promise rejects with (or `fn` throws). */
export async function rejectionOf(fn: () => Promise<unknown>): Promise<Error> {
  try {
    await fn();
  } catch (err) {
    if ((err as Error)?.name === 'NotImplemented') throw err;
    return err as Error;
  }
  assert.fail('expected an error, but the call completed normally');
}

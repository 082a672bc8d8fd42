// Seeded random numbers. A seed gives the same values on every machine and backend: numbers are drawn on
// the host with a small counter-free generator (xoshiro128**, seeded through splitmix32) and uploaded.
import type { DType } from '../dtype.ts';
import { checkShape, sizeOf } from '../shape.ts';
import type { Tensor } from '../tensor.ts';
import type { Backend } from '../backend/backend.ts';
import { cpu } from '../backend/cpu.ts';
import { tidy } from '../scope.ts';
import { arange, tensor } from './creation.ts';
import { astype, greater, minimum, mul, sub, where } from './elementwise.ts';
import { cumsum, max, softmax, sum } from './reduce.ts';
import { slice } from './shape.ts';

/** A generator of uniform numbers in [0, 1), deterministic for a seed. */
export class Generator {
  private s = new Uint32Array(4);

  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      // splitmix32 spreads one 32-bit seed over the four words of state.
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if (this.s.every((w) => w === 0)) this.s[0] = 1;
  }

  nextUint32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  next(): number {
    const hi = this.nextUint32() >>> 5;
    const lo = this.nextUint32() >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

let global = new Generator(Date.now() >>> 0);

/** Seeds the generator used by calls that pass no seed. */
export function seed(value: number): void {
  global = new Generator(value);
}

function generatorFor(seedValue?: number): Generator {
  return seedValue === undefined ? global : new Generator(seedValue);
}

export interface RandomOptions {
  seed?: number;
  dtype?: DType;
  device?: Backend;
}

export function uniform(shape: readonly number[], options: RandomOptions & { low?: number; high?: number } = {}): Tensor {
  const { low = 0, high = 1 } = options;
  const gen = generatorFor(options.seed);
  const values = new Float64Array(sizeOf(checkShape(shape, 'random.uniform')));
  for (let i = 0; i < values.length; i++) values[i] = low + (high - low) * gen.next();
  return tensor(values, { shape, dtype: options.dtype ?? 'float32', device: options.device });
}

/** Normal samples (Box-Muller), mean `loc` and standard deviation `scale`. */
export function normal(shape: readonly number[], options: RandomOptions & { loc?: number; scale?: number } = {}): Tensor {
  const { loc = 0, scale = 1 } = options;
  const gen = generatorFor(options.seed);
  const values = new Float64Array(sizeOf(checkShape(shape, 'random.normal')));
  for (let i = 0; i < values.length; i += 2) {
    const u1 = 1 - gen.next(); // in (0, 1], so the log is finite
    const u2 = gen.next();
    const r = Math.sqrt(-2 * Math.log(u1));
    values[i] = loc + scale * r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < values.length) values[i + 1] = loc + scale * r * Math.sin(2 * Math.PI * u2);
  }
  return tensor(values, { shape, dtype: options.dtype ?? 'float32', device: options.device });
}

/**
 * One draw per row from the categorical distribution softmax(logits) over the last axis, as int32 of
 * logits.shape without its last axis. -inf logits are never drawn.
 */
export function categorical(logits: Tensor, options: { seed?: number } = {}): Tensor {
  if (logits.ndim === 0) throw new RangeError(`random.categorical: logits must have a last axis, got ${logits.describe()}`);
  const gen = generatorFor(options.seed);
  if (logits.backend !== cpu) return categoricalOnDevice(logits, gen);
  const probs = softmax(logits, -1);
  const p = probs.toArray();
  probs.dispose();
  const n = logits.shape[logits.ndim - 1];
  const rows = n === 0 ? 0 : p.length / n;
  const draws = new Int32Array(rows);
  for (let r = 0; r < rows; r++) draws[r] = drawIndex(p, r * n, n, gen.next());
  return tensor(draws, { shape: logits.shape.slice(0, -1), dtype: 'int32', device: logits.backend });
}

/**
 * The same draw on a backend whose values cannot be read synchronously (a GPU), so that only the chosen indices
 * ever come back: with the row's cumulative probabilities c, the first index whose c exceeds u * total is
 * n - (how many c exceed it). Rounding may leave u * total at or above the last c; then the last index of
 * non-zero probability, as on the CPU. The sums run in float32 here (float64 on the CPU): a draw within a
 * rounding error of a boundary may pick the neighbour.
 */
function categoricalOnDevice(logits: Tensor, gen: Generator): Tensor {
  const lead = logits.shape.slice(0, -1);
  const n = logits.shape[logits.ndim - 1];
  const u = Float32Array.from({ length: sizeOf(lead) }, () => gen.next());
  return tidy(() => {
    const probs = softmax(logits, -1);
    const cdf = cumsum(probs, -1);
    const total = slice(cdf, [...lead.map(() => null), [n - 1, n]]);
    const target = mul(tensor(u, { shape: [...lead, 1], device: logits.backend }), total);
    const first = sub(n, sum(astype(greater(cdf, target), 'int32'), -1));
    const positions = arange(0, n, 1, { dtype: 'float32', device: logits.backend });
    const lastNonZero = astype(max(where(greater(probs, 0), positions, -1), -1), 'int32');
    return minimum(first, lastNonZero);
  });
}

/** The first index whose cumulative probability exceeds u (scaled by the row's total, which is ~1). */
function drawIndex(p: ArrayLike<number>, start: number, n: number, u: number): number {
  let total = 0;
  for (let i = 0; i < n; i++) total += p[start + i];
  const target = u * total;
  let acc = 0;
  let last = 0;
  for (let i = 0; i < n; i++) {
    const pi = p[start + i];
    if (pi <= 0) continue;
    last = i;
    acc += pi;
    if (acc > target) return i;
  }
  return last; // rounding left u * total just above the final sum
}

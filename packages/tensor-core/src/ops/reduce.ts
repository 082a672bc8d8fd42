// Reductions, softmax, scans and sorting along one axis. Kernels work on the last axis; other axes are
// moved there with a transposed view first.
import type { ReduceOp } from '../backend/backend.ts';
import { floatResultType, type DType } from '../dtype.ts';
import { normalizeAxis } from '../shape.ts';
import type { Tensor } from '../tensor.ts';
import { contiguous, div } from './elementwise.ts';
import { expandDims, moveaxis, slice } from './shape.ts';
import { backendOf, empty } from './util.ts';

export interface ReduceOptions {
  keepdims?: boolean;
}

function reduceAxis(op: ReduceOp, x: Tensor, axis: number, options: ReduceOptions, dtype: DType): Tensor {
  const backend = backendOf(op, x);
  if (x.ndim === 0) throw new RangeError(`${op}: needs at least one dimension, got a scalar`);
  const a = normalizeAxis(axis, x.ndim, op);
  if (x.shape[a] === 0 && op !== 'sum') throw new RangeError(`${op}: axis ${a} of ${x.describe()} is empty`);
  const moved = moveaxis(x, a, -1);
  const out = empty(moved.shape.slice(0, -1), dtype, backend);
  backend.reduce(op, moved, out);
  moved.dispose();
  if (!options.keepdims) return out;
  const kept = expandDims(out, a);
  out.dispose();
  return kept;
}

const accumulateType = (t: DType): DType => (t === 'bool' || t === 'uint8' ? 'int32' : t);

export const sum = (x: Tensor, axis = -1, options: ReduceOptions = {}) => reduceAxis('sum', x, axis, options, accumulateType(x.dtype));
export const max = (x: Tensor, axis = -1, options: ReduceOptions = {}) => reduceAxis('max', x, axis, options, x.dtype);
export const min = (x: Tensor, axis = -1, options: ReduceOptions = {}) => reduceAxis('min', x, axis, options, x.dtype);
/** Index of the largest value (the first one on ties), as int32. */
export const argmax = (x: Tensor, axis = -1, options: ReduceOptions = {}) => reduceAxis('argmax', x, axis, options, 'int32');
/** log(sum(exp(x))), computed without overflow. */
export const logsumexp = (x: Tensor, axis = -1, options: ReduceOptions = {}) =>
  reduceAxis('logsumexp', x, axis, options, floatResultType(x.dtype));

export function mean(x: Tensor, axis = -1, options: ReduceOptions = {}): Tensor {
  const total = reduceAxis('sum', x, axis, options, floatResultType(x.dtype));
  const n = x.shape[normalizeAxis(axis, x.ndim, 'mean')];
  const out = div(total, n);
  total.dispose();
  return out;
}

/** Applies a last-axis kernel along `axis` and puts the axis back where it was. */
function alongAxis(op: string, x: Tensor, axis: number, dtype: DType, kernel: (moved: Tensor, out: Tensor) => void): Tensor {
  backendOf(op, x);
  if (x.ndim === 0) throw new RangeError(`${op}: needs at least one dimension, got a scalar`);
  const a = normalizeAxis(axis, x.ndim, op);
  const moved = moveaxis(x, a, -1);
  const out = empty(moved.shape, dtype, x.backend);
  kernel(moved, out);
  moved.dispose();
  if (a === x.ndim - 1) return out;
  const back = moveaxis(out, -1, a);
  out.dispose();
  return back;
}

/** exp(x - max) / sum(exp(x - max)) along `axis`: stable for large inputs, float32 accumulation. */
export function softmax(x: Tensor, axis = -1): Tensor {
  return alongAxis('softmax', x, axis, floatResultType(x.dtype), (m, out) => x.backend.softmax(m, out));
}

export function cumsum(x: Tensor, axis = -1): Tensor {
  return alongAxis('cumsum', x, axis, accumulateType(x.dtype), (m, out) => x.backend.cumsum(m, out));
}

export interface SortOptions {
  descending?: boolean;
}

/** Indices (int32) that sort x along `axis`; stable, NaN last. */
export function argsort(x: Tensor, axis = -1, options: SortOptions = {}): Tensor {
  return alongAxis('argsort', x, axis, 'int32', (m, out) => x.backend.argsort(m, out, options.descending ?? false));
}

/** The values of x sorted along `axis`. */
export function sort(x: Tensor, axis = -1, options: SortOptions = {}): Tensor {
  const order = argsort(x, axis, options);
  const out = takeAlongAxis(x, order, axis);
  order.dispose();
  return out;
}

/** The k largest values along the last axis and their indices, largest first. */
export function topk(x: Tensor, k: number, axis = -1): { values: Tensor; indices: Tensor } {
  const a = normalizeAxis(axis, x.ndim, 'topk');
  if (!Number.isInteger(k) || k < 1 || k > x.shape[a]) {
    throw new RangeError(`topk: k = ${k} must be between 1 and ${x.shape[a]} (axis ${a} of ${x.describe()})`);
  }
  const order = argsort(x, a, { descending: true });
  const specs = x.shape.map((_, i) => (i === a ? ([0, k] as const) : null));
  const indices = slice(order, specs);
  order.dispose();
  return { values: takeAlongAxis(x, indices, a), indices };
}

/** out[..., i, ...] = x[..., indices[..., i, ...], ...] along `axis`; indices have x's shape but along axis. */
export function takeAlongAxis(x: Tensor, indices: Tensor, axis = -1): Tensor {
  const backend = backendOf('takeAlongAxis', x, indices);
  const a = normalizeAxis(axis, x.ndim, 'takeAlongAxis');
  if (indices.ndim !== x.ndim || indices.shape.some((d, i) => i !== a && d !== x.shape[i])) {
    throw new RangeError(`takeAlongAxis: indices ${indices.describe()} do not match ${x.describe()} outside axis ${a}`);
  }
  if (indices.dtype !== 'int32' && indices.dtype !== 'uint32') {
    throw new TypeError(`takeAlongAxis: indices must be int32 or uint32, got ${indices.describe()}`);
  }
  // With the axis moved last, each output row picks from one input row.
  const xMoved = moveaxis(x, a, -1);
  const idxMoved = moveaxis(indices, a, -1);
  const idx = contiguous(idxMoved);
  const out = empty(idx.shape, x.dtype, backend);
  backend.takeAlongAxis(xMoved, idx, out);
  for (const t of new Set([xMoved, idxMoved, idx])) t.dispose();
  if (a === x.ndim - 1) return out;
  const back = moveaxis(out, -1, a);
  out.dispose();
  return back;
}

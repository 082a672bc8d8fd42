// Matrix products and the ops built on indices: matmul, take (embedding rows), tril and triu.
import { isFloating, promoteTypes } from '../dtype.ts';
import { broadcastShapes, normalizeAxis } from '../shape.ts';
import type { Tensor } from '../tensor.ts';
import { arange } from './creation.ts';
import { astype, contiguous, greater, less, sub, where } from './elementwise.ts';
import { broadcastTo, expandDims, moveaxis, reshape, squeeze } from './shape.ts';
import { backendOf, empty, shapeError } from './util.ts';

/**
 * Matrix product with numpy semantics: a [..., M, K] @ b [..., K, N] -> [..., M, N], leading dimensions
 * broadcast; 1-D operands are treated as a row (a) or a column (b) and that dimension is dropped.
 * Transposed views are passed to the kernel as they are (it reads any strides), so `matmul(x,
 * transpose(w))` never copies w. Computes in float32; two half-precision operands give a result of their
 * dtype.
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  const backend = backendOf('matmul', a, b);
  if (a.ndim === 0 || b.ndim === 0) throw shapeError('matmul', 'operands must have at least one dimension', a, b);
  if (!isFloating(a.dtype) || !isFloating(b.dtype)) throw shapeError('matmul', 'operands must be floating point', a, b);
  const a2 = a.ndim === 1 ? expandDims(a, 0) : a;
  const b2 = b.ndim === 1 ? expandDims(b, 1) : b;
  const [m, k] = a2.shape.slice(-2);
  const [k2, n] = b2.shape.slice(-2);
  if (k !== k2) throw shapeError('matmul', `inner dimensions differ (${k} vs ${k2})`, a, b);
  const batch = broadcastShapes('matmul', a2.shape.slice(0, -2), b2.shape.slice(0, -2));
  const out = empty([...batch, m, n], 'float32', backend);
  backend.matmul(broadcastTo(a2, [...batch, m, k]), broadcastTo(b2, [...batch, k, n]), out);
  let result = out;
  if (a.ndim === 1 || b.ndim === 1) {
    result = squeeze(out, [...(a.ndim === 1 ? [-2] : []), ...(b.ndim === 1 ? [-1] : [])]);
    out.dispose();
  }
  const dtype = promoteTypes(a.dtype, b.dtype);
  if (dtype === 'float32') return result;
  const converted = astype(result, dtype);
  result.dispose();
  return converted;
}

/**
 * Gathers along `axis` (default 0): `take(embeddings, ids)` returns the rows [...ids.shape, hidden].
 * Indices must be integers within the axis; an index out of range is an error, not garbage.
 */
export function take(x: Tensor, indices: Tensor, axis = 0): Tensor {
  const backend = backendOf('take', x, indices);
  if (indices.dtype !== 'int32' && indices.dtype !== 'uint32') {
    throw new TypeError(`take: indices must be int32 or uint32, got ${indices.describe()}`);
  }
  const a = normalizeAxis(axis, x.ndim, 'take');
  const table = a === 0 ? x : moveaxis(x, a, 0);
  const ids = contiguous(indices);
  const out = empty([...ids.shape, ...table.shape.slice(1)], x.dtype, backend);
  backend.take(table, ids, out);
  if (a === 0) return out;
  // out is [...ids.shape, x's other dims]: put the gathered dims back where the axis was.
  const k = ids.ndim;
  const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);
  const order = [...range(k, k + a), ...range(0, k), ...range(k + a, out.ndim)];
  return out.view(
    order.map((i) => out.shape[i]),
    order.map((i) => out.strides[i]),
  );
}

/** Keeps the elements on and below diagonal k of the last two dimensions, zeroes the rest. */
export function tril(x: Tensor, k = 0): Tensor {
  return triangle('tril', x, k, true);
}

/** Keeps the elements on and above diagonal k of the last two dimensions, zeroes the rest. */
export function triu(x: Tensor, k = 0): Tensor {
  return triangle('triu', x, k, false);
}

function triangle(op: string, x: Tensor, k: number, lower: boolean): Tensor {
  if (x.ndim < 2) throw new RangeError(`${op}: needs at least 2 dimensions, got ${x.describe()}`);
  const [rows, cols] = x.shape.slice(-2);
  const device = { device: x.backend };
  const r = reshape(arange(rows, undefined, 1, device), [rows, 1]);
  const c = reshape(arange(cols, undefined, 1, device), [1, cols]);
  const offset = sub(c, r); // column - row: 0 on the main diagonal
  const outside = lower ? greater(offset, k) : less(offset, k);
  return where(outside, 0, x);
}

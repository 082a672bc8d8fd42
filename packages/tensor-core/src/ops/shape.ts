// Shape ops. All of them return views that share storage, except where noted (concat, stack, and
// reshape of a tensor whose layout cannot be reshaped in place).
import { formatShape, normalizeAxis, sameShape, sizeOf } from '../shape.ts';
import type { Tensor } from '../tensor.ts';
import { contiguous } from './elementwise.ts';
import { backendOf, empty } from './util.ts';

/** A new shape for the same elements in row-major order; one dimension may be -1 (inferred). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const target = resolveReshape(x, shape);
  if (sameShape(target, x.shape)) return x.view(x.shape, x.strides);
  const strides = x.size === 0 ? stridesFor(target) : stridesWithoutCopy(x.shape, x.strides, target);
  if (strides) return x.view(target, strides);
  const source = contiguous(x);
  return source.view(target, stridesFor(target));
}

/**
 * Strides that give `shape` over the same memory as (oldShape, oldStrides), or null when the elements are
 * not laid out so (numpy's attempt_nocopy_reshape). Splitting or merging dimensions works as long as each
 * group of old dimensions that becomes one new group is itself laid out back to back.
 */
function stridesWithoutCopy(oldShape: readonly number[], oldStrides: readonly number[], shape: readonly number[]): number[] | null {
  const os: number[] = [];
  const ost: number[] = [];
  oldShape.forEach((d, i) => {
    if (d !== 1) {
      os.push(d);
      ost.push(oldStrides[i]);
    }
  });
  const strides = new Array<number>(shape.length).fill(1);
  let oi = 0;
  let oj = 1;
  let ni = 0;
  let nj = 1;
  while (ni < shape.length && oi < os.length) {
    let np = shape[ni];
    let op = os[oi];
    while (np !== op) {
      if (np < op) np *= shape[nj++];
      else op *= os[oj++];
    }
    for (let k = oi; k < oj - 1; k++) if (ost[k] !== os[k + 1] * ost[k + 1]) return null;
    strides[nj - 1] = ost[oj - 1];
    for (let k = nj - 1; k > ni; k--) strides[k - 1] = strides[k] * shape[k];
    ni = nj++;
    oi = oj++;
  }
  return strides;
}

function resolveReshape(x: Tensor, shape: readonly number[]): number[] {
  const out = [...shape];
  const inferred = out.indexOf(-1);
  if (inferred !== out.lastIndexOf(-1)) throw new RangeError(`reshape: only one dimension may be -1, got ${formatShape(shape)}`);
  const known = out.reduce((p, d, i) => (i === inferred ? p : p * d), 1);
  if (inferred >= 0) {
    if (known === 0 || x.size % known !== 0) {
      throw new RangeError(`reshape: cannot reshape ${x.describe()} to ${formatShape(shape)}`);
    }
    out[inferred] = x.size / known;
  }
  if (out.some((d) => !Number.isInteger(d) || d < 0) || sizeOf(out) !== x.size) {
    throw new RangeError(`reshape: cannot reshape ${x.describe()} (${x.size} elements) to ${formatShape(shape)}`);
  }
  return out;
}

function stridesFor(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/** Permutes the dimensions (reverses them when `axes` is omitted). */
export function transpose(x: Tensor, axes?: readonly number[]): Tensor {
  const perm = axes ? axes.map((a) => normalizeAxis(a, x.ndim, 'transpose')) : [...x.shape.keys()].reverse();
  if (perm.length !== x.ndim || new Set(perm).size !== x.ndim) {
    throw new RangeError(`transpose: axes [${axes?.join(', ')}] are not a permutation of the ${x.ndim} dimensions of ${x.describe()}`);
  }
  return x.view(
    perm.map((a) => x.shape[a]),
    perm.map((a) => x.strides[a]),
  );
}

export function swapaxes(x: Tensor, a: number, b: number): Tensor {
  const perm = [...x.shape.keys()];
  const i = normalizeAxis(a, x.ndim, 'swapaxes');
  const j = normalizeAxis(b, x.ndim, 'swapaxes');
  [perm[i], perm[j]] = [perm[j], perm[i]];
  return transpose(x, perm);
}

/** Moves one axis to a new position, keeping the order of the others. */
export function moveaxis(x: Tensor, from: number, to: number): Tensor {
  const src = normalizeAxis(from, x.ndim, 'moveaxis');
  const dst = normalizeAxis(to, x.ndim, 'moveaxis');
  const perm = [...x.shape.keys()].filter((a) => a !== src);
  perm.splice(dst, 0, src);
  return transpose(x, perm);
}

/** Inserts a size-1 dimension at `axis` (which may be negative, counted in the result). */
export function expandDims(x: Tensor, axis: number): Tensor {
  const a = normalizeAxis(axis, x.ndim + 1, 'expandDims');
  const shape = [...x.shape];
  const strides = [...x.strides];
  shape.splice(a, 0, 1);
  strides.splice(a, 0, 0);
  return x.view(shape, strides);
}

/** Removes size-1 dimensions: the given ones, or all of them. */
export function squeeze(x: Tensor, axis?: number | readonly number[]): Tensor {
  const axes =
    axis === undefined
      ? [...x.shape.keys()].filter((a) => x.shape[a] === 1)
      : (Array.isArray(axis) ? axis : [axis]).map((a) => normalizeAxis(a, x.ndim, 'squeeze'));
  for (const a of axes) {
    if (x.shape[a] !== 1) throw new RangeError(`squeeze: dimension ${a} of ${x.describe()} has size ${x.shape[a]}, not 1`);
  }
  const keep = [...x.shape.keys()].filter((a) => !axes.includes(a));
  return x.view(
    keep.map((a) => x.shape[a]),
    keep.map((a) => x.strides[a]),
  );
}

/** A view of x with the given shape, repeating size-1 (or missing leading) dimensions with stride 0. */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(x.shape, shape)) return x;
  const lead = shape.length - x.ndim;
  const strides = shape.map((d, i) => {
    const src = i - lead;
    if (src < 0) return 0;
    if (x.shape[src] === d) return x.strides[src];
    if (x.shape[src] === 1) return 0;
    throw new RangeError(`broadcastTo: cannot broadcast ${x.describe()} to ${formatShape(shape)}`);
  });
  if (lead < 0) throw new RangeError(`broadcastTo: cannot broadcast ${x.describe()} to ${formatShape(shape)}`);
  return x.view([...shape], strides);
}

/** One dimension's selection: an index (drops the dimension), [start, stop?, step?], or null (all of it). */
export type SliceSpec = number | readonly [number | null, (number | null)?, (number | null)?] | null;

/**
 * numpy-style basic slicing: `slice(x, [0, [2, 5], null, [null, null, -1]])`. Missing trailing specs take
 * the whole dimension; negative indices count from the end; out-of-range bounds are clamped as in Python.
 */
export function slice(x: Tensor, specs: readonly SliceSpec[]): Tensor {
  if (specs.length > x.ndim) throw new RangeError(`slice: ${specs.length} specs for ${x.describe()}`);
  let offset = x.offset;
  const shape: number[] = [];
  const strides: number[] = [];
  for (let d = 0; d < x.ndim; d++) {
    const spec = specs[d] ?? null;
    const size = x.shape[d];
    if (typeof spec === 'number') {
      const i = spec < 0 ? spec + size : spec;
      if (!Number.isInteger(i) || i < 0 || i >= size) {
        throw new RangeError(`slice: index ${spec} is out of range for dimension ${d} of ${x.describe()}`);
      }
      offset += i * x.strides[d];
      continue;
    }
    const [start, stop, step] = spec === null ? [null, null, null] : [spec[0], spec[1] ?? null, spec[2] ?? null];
    const [first, count, by] = sliceRange(size, start, stop, step ?? 1, d, x);
    offset += count > 0 ? first * x.strides[d] : 0;
    shape.push(count);
    strides.push(x.strides[d] * by);
  }
  return x.view(shape, strides, offset);
}

const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi);
/** Python's negative indices: -1 is the last element. */
const fromEnd = (v: number, size: number) => (v < 0 ? v + size : v);

function sliceRange(size: number, start: number | null, stop: number | null, step: number, d: number, x: Tensor): [number, number, number] {
  if (!Number.isInteger(step) || step === 0)
    throw new RangeError(`slice: step ${step} for dimension ${d} of ${x.describe()} must be a non-zero integer`);
  let first: number;
  let end: number;
  if (step > 0) {
    first = start === null ? 0 : clamp(fromEnd(start, size), 0, size);
    end = stop === null ? size : clamp(fromEnd(stop, size), 0, size);
  } else {
    first = start === null ? size - 1 : clamp(fromEnd(start, size), -1, size - 1);
    end = stop === null ? -1 : clamp(fromEnd(stop, size), -1, size - 1);
  }
  const count = Math.max(0, Math.ceil((end - first) / step));
  return [first, count, step];
}

/** Joins tensors along an existing axis (a copy). */
export function concat(tensors: readonly Tensor[], axis = 0): Tensor {
  if (tensors.length === 0) throw new RangeError('concat: needs at least one tensor');
  const backend = backendOf('concat', ...tensors);
  const first = tensors[0];
  const a = normalizeAxis(axis, first.ndim, 'concat');
  for (const t of tensors) {
    const fits = t.ndim === first.ndim && t.shape.every((d, i) => i === a || d === first.shape[i]);
    if (!fits || t.dtype !== first.dtype) {
      throw new RangeError(`concat: ${tensors.map((u) => u.describe()).join(', ')} do not match outside axis ${a}`);
    }
  }
  const shape = [...first.shape];
  shape[a] = tensors.reduce((n, t) => n + t.shape[a], 0);
  const out = empty(shape, first.dtype, backend);
  let at = 0;
  for (const t of tensors) {
    const specs: SliceSpec[] = shape.map(() => null);
    specs[a] = [at, at + t.shape[a]];
    const target = slice(out, specs);
    backend.unary('copy', t, target);
    target.dispose();
    at += t.shape[a];
  }
  return out;
}

/** Joins same-shaped tensors along a new axis (a copy). */
export function stack(tensors: readonly Tensor[], axis = 0): Tensor {
  if (tensors.length === 0) throw new RangeError('stack: needs at least one tensor');
  const expanded = tensors.map((t) => {
    if (!sameShape(t.shape, tensors[0].shape)) {
      throw new RangeError(`stack: all tensors must have one shape, got ${tensors.map((u) => u.describe()).join(', ')}`);
    }
    return expandDims(t, axis < 0 ? axis + t.ndim + 1 : axis);
  });
  const out = concat(expanded, axis < 0 ? axis + tensors[0].ndim + 1 : axis);
  for (const e of expanded) e.dispose();
  return out;
}

/**
 * Splits along `axis` into `sections` equal parts, or at the given indices (numpy's split). Views.
 */
export function split(x: Tensor, sections: number | readonly number[], axis = 0): Tensor[] {
  const a = normalizeAxis(axis, x.ndim, 'split');
  const size = x.shape[a];
  let cuts: number[];
  if (typeof sections === 'number') {
    if (!Number.isInteger(sections) || sections <= 0 || size % sections !== 0) {
      throw new RangeError(`split: dimension ${a} of ${x.describe()} (size ${size}) does not split into ${sections} equal parts`);
    }
    cuts = Array.from({ length: sections - 1 }, (_, i) => ((i + 1) * size) / sections);
  } else {
    cuts = [...sections];
  }
  const bounds = [0, ...cuts, size];
  return bounds.slice(0, -1).map((start, i) => {
    const specs: SliceSpec[] = x.shape.map(() => null);
    specs[a] = [start, bounds[i + 1]];
    return slice(x, specs);
  });
}

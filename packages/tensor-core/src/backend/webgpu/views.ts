// Tensors as the kernels see them, and the layout arithmetic done on the CPU before a dispatch.
import type { DType } from '../../dtype.ts';
import { sizeOf } from '../../shape.ts';

/** The dtypes the integer kernels compute exactly in i32 (uint32 values do not all fit). */
export const INTEGER_DTYPES: readonly DType[] = ['int32', 'uint8', 'bool'];

/** A tensor as the kernels see it: its buffer, and its elements' dtype, shape, strides and offset. */
export interface View {
  buffer: GPUBuffer;
  dtype: DType;
  shape: readonly number[];
  strides: readonly number[];
  offset: number;
}

/** The dims a strided walk handles (MAX_DIMS in kernels/layout.wgsl). */
export const MAX_DIMS = 6;

export interface Layout {
  shape: number[];
  /** strides[t][d]: tensor t's stride along dim d. */
  strides: number[][];
}

/**
 * Merges adjacent dims that every tensor walks as one (outer stride = inner stride * inner size) and drops
 * size-1 dims: fewer dims make cheaper index math, and most views then fit in MAX_DIMS.
 */
export function coalesce(shape: readonly number[], strides: (readonly number[])[]): Layout {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strides.every((s, t) => outStrides[t][last] === s[d] * shape[d])) {
      outShape[last] *= shape[d];
      strides.forEach((s, t) => (outStrides[t][last] = s[d]));
    } else {
      outShape.push(shape[d]);
      strides.forEach((s, t) => outStrides[t].push(s[d]));
    }
  }
  return { shape: outShape, strides: outStrides };
}

/**
 * The params of a walk (kernels/layout.wgsl): `shape` (MAX_DIMS sizes, padded in front with 1s) and
 * `strides` (for each dim, the stride of each of up to four tensors), with `ndim` the dims actually walked.
 * Throws, naming the op, when the coalesced layout has more dims than the kernels walk.
 */
export function walkParams(op: string, layout: Layout, what: () => string): { ndim: number; shape: number[]; strides: number[] } {
  const ndim = layout.shape.length;
  if (ndim > MAX_DIMS) throw new Error(`${op}: ${what()} has more than ${MAX_DIMS} dims the webgpu kernels can walk after merging`);
  const pad = MAX_DIMS - ndim;
  const shape = [...new Array<number>(pad).fill(1), ...layout.shape, 1, 1];
  const strides: number[] = new Array<number>(pad * 4).fill(0);
  for (let d = 0; d < ndim; d++) {
    for (let t = 0; t < 4; t++) strides.push(layout.strides[t]?.[d] ?? 0);
  }
  return { ndim, shape, strides };
}

/**
 * The params of kernels over the last axis of x (struct Rows, kernels/layout.wgsl) and the number of leading
 * dims they walk.
 */
export function rowsOf(op: string, x: View) {
  const nd = x.shape.length;
  const walk = walkParams(op, coalesce(x.shape.slice(0, nd - 1), [x.strides.slice(0, nd - 1)]), () => describe(x));
  const rows = {
    count: sizeOf(x.shape.slice(0, nd - 1)),
    n: x.shape[nd - 1],
    offset: x.offset,
    stride: x.strides[nd - 1],
    shape: walk.shape,
    strides: walk.strides,
  };
  return { rows, ndim: walk.ndim };
}

export function isContiguous(v: View): boolean {
  let expected = 1;
  for (let i = v.shape.length - 1; i >= 0; i--) {
    if (v.shape[i] !== 1 && v.strides[i] !== expected) return false;
    expected *= v.shape[i];
  }
  return true;
}

export function elementCount(v: View): number {
  return sizeOf(v.shape);
}

export const describe = (v: View) => `${v.dtype}[${v.shape.join(', ')}]`;

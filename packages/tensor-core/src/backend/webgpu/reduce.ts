// Kernels over the last axis of a view, one workgroup per row: reductions and softmax (kernels/reduce.wgsl),
// prefix sums (kernels/cumsum.wgsl) and argsort (kernels/argsort.wgsl).
import { unsupported, type ReduceOp } from '../backend.ts';
import type { DType } from '../../dtype.ts';
import { sizeOf } from '../../shape.ts';
import { intoContiguous } from './elementwise.ts';
import type { GpuRuntime } from './runtime.ts';
import { kernel } from './shader.ts';
import { coalesce, describe, walkParams, type View } from './views.ts';

const INTEGER_DTYPES: readonly DType[] = ['int32', 'uint8', 'bool'];

/**
 * The rows of x: its leading dims (walked by the kernel) and its last axis. Values are compared and
 * accumulated in f32 (integer sums in i32), so int32 tensors, whose values f32 does not all hold, are only
 * summed, and uint32 not at all.
 */
function rowsOf(op: string, x: View, integerOk: boolean) {
  if (x.dtype === 'uint32' || (x.dtype === 'int32' && !integerOk)) throw unsupported('webgpu', `${op} on ${x.dtype}`);
  const nd = x.shape.length;
  const lead = coalesce(x.shape.slice(0, nd - 1), [x.strides.slice(0, nd - 1)]);
  const walk = walkParams(op, lead, () => describe(x));
  const n = x.shape[nd - 1];
  const params = { rows: sizeOf(x.shape.slice(0, nd - 1)), n, x_offset: x.offset, x_stride: x.strides[nd - 1], shape: walk.shape, strides: walk.strides };
  return { params, ndim: walk.ndim };
}

/** Invocations per row: a power of two, no more than the row needs (short rows are common: norms, heads). */
function rowWorkgroup(rt: GpuRuntime, n: number): number {
  const max = 2 ** Math.floor(Math.log2(Math.min(256, rt.invocations)));
  return Math.min(max, Math.max(32, 2 ** Math.ceil(Math.log2(Math.max(n, 1)))));
}

/** out[row] = op over x's last axis; softmax writes out [rows, n]. */
export function reduce(rt: GpuRuntime, op: ReduceOp | 'softmax', x: View, out: View): void {
  const integerSum = op === 'sum' && INTEGER_DTYPES.includes(x.dtype);
  const { params, ndim } = rowsOf(op, x, integerSum);
  if (params.rows === 0) return;
  const module = kernel('reduce');
  const code = module.constant(integerSum ? 'OP_SUM_INT' : `OP_${op.toUpperCase()}`);
  const word = integerSum || op === 'argmax' ? 'int32' : 'float32';
  intoContiguous(rt, op, out, word, (target) =>
    rt.dispatch(op, module, {
      constants: { WG: rowWorkgroup(rt, params.n), NDIM: ndim, OP: code },
      dtypes: { x: x.dtype },
      buffers: { x: x.buffer, out: target.buffer },
      params,
      workgroups: rt.grid(params.rows),
    }),
  );
}

/** Inclusive prefix sums over the last axis: f32, or exact i32 for integer tensors. */
export function cumsum(rt: GpuRuntime, x: View, out: View): void {
  const integer = INTEGER_DTYPES.includes(x.dtype);
  const { params, ndim } = rowsOf('cumsum', x, integer);
  if (params.rows * params.n === 0) return;
  intoContiguous(rt, 'cumsum', out, integer ? 'int32' : 'float32', (target) =>
    rt.dispatch('cumsum', kernel('cumsum'), {
      constants: { WG: rowWorkgroup(rt, params.n), NDIM: ndim, INTEGER: Number(integer) },
      dtypes: { x: x.dtype },
      buffers: { x: x.buffer, out: target.buffer },
      params,
      workgroups: rt.grid(params.rows),
    }),
  );
}

/** int32 indices that sort each row (stable, NaN last): a bitonic network over the rows padded to 2^k. */
export function argsort(rt: GpuRuntime, x: View, out: View, descending: boolean): void {
  const { params: rows, ndim } = rowsOf('argsort', x, false);
  if (rows.rows * rows.n === 0) return;
  const p = 2 ** Math.ceil(Math.log2(rows.n));
  const keys = rt.createBuffer('argsort', rows.rows * p * 4);
  const order = rt.createBuffer('argsort', rows.rows * p * 4);
  const module = kernel('argsort');
  const wg = Math.min(256, rt.invocations);
  const stage = (name: string, threads: number, k = 0, j = 0) =>
    (target: View) =>
      rt.dispatch('argsort', module, {
        constants: { WG: wg, NDIM: ndim, STAGE: module.constant(name), DESCENDING: Number(descending) },
        dtypes: { x: x.dtype },
        buffers: { x: x.buffer, keys, order, out: target.buffer },
        params: { ...rows, p, k, j },
        workgroups: rt.grid(Math.ceil(threads / wg)),
      });
  intoContiguous(rt, 'argsort', out, 'int32', (target) => {
    stage('STAGE_LOAD', rows.rows * p)(target);
    for (let k = 2; k <= p; k *= 2) {
      for (let j = k / 2; j >= 1; j /= 2) stage('STAGE_MERGE', (rows.rows * p) / 2, k, j)(target);
    }
    stage('STAGE_STORE', rows.rows * rows.n)(target);
  });
  rt.destroyLater(keys);
  rt.destroyLater(order);
}

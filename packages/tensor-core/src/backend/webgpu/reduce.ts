// Kernels over the last axis of a view: reductions, softmax and prefix sums, one workgroup per row
// (kernels/rows.wgsl; fast.ts runs RMSNorm there too), and argsort (kernels/argsort.wgsl).
import { unsupported, type ReduceOp } from '../backend.ts';
import { intoContiguous } from './elementwise.ts';
import type { GpuRuntime } from './runtime.ts';
import { kernel } from './shader.ts';
import { elementCount, INTEGER_DTYPES, rowsOf, type View } from './views.ts';

/**
 * Values are compared and accumulated in f32 (integer sums, prefix sums and sorts in i32), so int32 tensors,
 * whose values f32 does not all hold, are only summed and sorted, and uint32 not at all.
 */
function checkDtype(op: string, x: View, integerOk: boolean): void {
  if (x.dtype === 'uint32' || (x.dtype === 'int32' && !integerOk)) throw unsupported('webgpu', `${op} on ${x.dtype}`);
}

/** Invocations per row: a power of two, no more than the row needs (short rows are common: norms, heads). */
function rowWorkgroup(rt: GpuRuntime, n: number): number {
  const max = 2 ** Math.floor(Math.log2(Math.min(256, rt.invocations)));
  return Math.min(max, Math.max(32, 2 ** Math.ceil(Math.log2(Math.max(n, 1)))));
}

/** out[row] = op over x's last axis; softmax writes out [rows, n]. */
export function reduce(rt: GpuRuntime, op: ReduceOp | 'softmax', x: View, out: View): void {
  const integerSum = op === 'sum' && INTEGER_DTYPES.includes(x.dtype);
  checkDtype(op, x, integerSum);
  const word = integerSum || op === 'argmax' ? 'int32' : 'float32';
  runRows(rt, op, integerSum ? 'OP_SUM_INT' : `OP_${op.toUpperCase()}`, x, out, word);
}

/**
 * One dispatch of kernels/rows.wgsl: `opName` over the rows of x into out (through a temporary of `word`s
 * when out is of another dtype); `weight` and `eps` are rmsNorm's.
 */
export function runRows(
  rt: GpuRuntime,
  op: string,
  opName: string,
  x: View,
  out: View,
  word: 'float32' | 'int32',
  weight?: View,
  eps = 0,
): void {
  if (elementCount(out) === 0) return; // (a sum over an empty axis still writes its zeros)
  const { rows, ndim } = rowsOf(op, x);
  const module = kernel('rows');
  intoContiguous(rt, op, out, word, (target) =>
    rt.dispatch(op, module, {
      constants: { WG: rowWorkgroup(rt, rows.n), NDIM: ndim, OP: module.constant(opName) },
      dtypes: { x: x.dtype, weight: (weight ?? x).dtype },
      buffers: { x: x.buffer, weight: (weight ?? x).buffer, out: target.buffer },
      params: { rows, weight_offset: weight?.offset ?? 0, weight_stride: weight?.strides[0] ?? 0, eps },
      workgroups: rt.grid(rows.count),
    }),
  );
}

/** Inclusive prefix sums over the last axis: f32, or exact i32 for integer tensors. */
export function cumsum(rt: GpuRuntime, x: View, out: View): void {
  const integer = INTEGER_DTYPES.includes(x.dtype);
  checkDtype('cumsum', x, integer);
  runRows(rt, 'cumsum', integer ? 'OP_CUMSUM_INT' : 'OP_CUMSUM', x, out, integer ? 'int32' : 'float32');
}

/** int32 indices that sort each row (stable, NaN last): a bitonic network over the rows padded to 2^k. */
export function argsort(rt: GpuRuntime, x: View, out: View, descending: boolean): void {
  const integer = INTEGER_DTYPES.includes(x.dtype);
  checkDtype('argsort', x, integer);
  const { rows, ndim } = rowsOf('argsort', x);
  if (rows.count * rows.n === 0) return;
  const p = 2 ** Math.ceil(Math.log2(rows.n));
  const keys = rt.createBuffer('argsort', rows.count * p * 4);
  const order = rt.createBuffer('argsort', rows.count * p * 4);
  const module = kernel('argsort');
  const wg = Math.min(256, rt.invocations);
  const stage =
    (name: string, threads: number, k = 0, j = 0) =>
    (target: View) =>
      rt.dispatch('argsort', module, {
        constants: { WG: wg, NDIM: ndim, STAGE: module.constant(name), DESCENDING: Number(descending), INTEGER: Number(integer) },
        dtypes: { x: x.dtype },
        buffers: { x: x.buffer, keys, order, out: target.buffer },
        params: { rows, p, k, j },
        workgroups: rt.grid(Math.ceil(threads / wg)),
      });
  intoContiguous(rt, 'argsort', out, 'int32', (target) => {
    stage('STAGE_LOAD', rows.count * p)(target);
    for (let k = 2; k <= p; k *= 2) {
      for (let j = k / 2; j >= 1; j /= 2) stage('STAGE_MERGE', (rows.count * p) / 2, k, j)(target);
    }
    stage('STAGE_STORE', rows.count * rows.n)(target);
  });
  rt.destroyLater(keys);
  rt.destroyLater(order);
}

// Elementwise ops on the GPU (kernels/elementwise.wgsl): unary, binary, where and copies between any views.
import type { BinaryOp, UnaryOp } from '../backend.ts';
import { unsupported } from '../backend.ts';
import { isFloating, itemSize, type DType } from '../../dtype.ts';
import { contiguousStrides } from '../../shape.ts';
import type { GpuRuntime } from './runtime.ts';
import { kernel } from './shader.ts';
import { coalesce, describe, elementCount, INTEGER_DTYPES, isContiguous, walkParams, type View } from './views.ts';

/** The ops with an integer form; the others have float results. */
const INTEGER_OPS = new Set(['copy', 'neg', 'abs', 'add', 'sub', 'mul', 'maximum', 'minimum', 'equal', 'less', 'greater', 'where']);

type Op = UnaryOp | BinaryOp | 'where';

export function unary(rt: GpuRuntime, op: UnaryOp, x: View, out: View): void {
  if (op === 'copy') copy(rt, x, out);
  else run(rt, op, [x], out);
}

export function binary(rt: GpuRuntime, op: BinaryOp, a: View, b: View, out: View): void {
  run(rt, op, [a, b], out);
}

export function where(rt: GpuRuntime, cond: View, a: View, b: View, out: View): void {
  run(rt, 'where', [cond, a, b], out);
}

/** A same-dtype copy moves bits (any dtype); a conversion goes through the value. */
export function copy(rt: GpuRuntime, x: View, out: View): void {
  run(rt, 'copy', [x], out, x.dtype === out.dtype);
}

function run(rt: GpuRuntime, op: Op, inputs: View[], out: View, raw = false): void {
  const n = elementCount(out);
  if (n === 0) return;
  const views = [out, ...inputs];
  const integer = !raw && INTEGER_OPS.has(op) && views.every((v) => INTEGER_DTYPES.includes(v.dtype));
  // uint32 takes part only in bit copies and conversions to floats: f32 and i32 arithmetic would both
  // change values above 2^24 or 2^31.
  const toFloat = op === 'copy' && isFloating(out.dtype);
  if (!raw && !toFloat && views.some((v) => v.dtype === 'uint32')) {
    throw unsupported(
      'webgpu',
      `${op} on ${views
        .slice(1)
        .map((v) => v.dtype)
        .join(' and ')} into ${out.dtype}`,
    );
  }
  // Inputs the op does not read are bound to x0.
  const [x0, x1 = x0, x2 = x0] = inputs;
  const all = [out, x0, x1, x2];
  const walk = walkParams(
    op,
    coalesce(
      out.shape,
      all.map((v) => v.strides),
    ),
    () => describe(out),
  );
  const module = kernel('elementwise');
  const wg = Math.min(256, rt.invocations);
  rt.dispatch(op, module, {
    constants: { WG: wg, NDIM: walk.ndim, OP: module.constant(`OP_${op.toUpperCase()}`), RAW: Number(raw), INTEGER: Number(integer) },
    dtypes: { x0: x0.dtype, x1: x1.dtype, x2: x2.dtype, out: out.dtype },
    buffers: { x0: x0.buffer, x1: x1.buffer, x2: x2.buffer, out: out.buffer },
    params: { n, offsets: all.map((v) => v.offset), shape: walk.shape, strides: walk.strides },
    workgroups: rt.grid(Math.ceil(n / wg)),
  });
}

/**
 * Kernels other than the elementwise one write a contiguous output at offset 0, in one dtype (f32 or i32
 * words, or the input's dtype for gathers). When `out` is not that, `write` fills a temporary that is then
 * copied (and converted) into out: a bf16 softmax, a max of uint8 values.
 */
export function intoContiguous(rt: GpuRuntime, op: string, out: View, dtype: DType, write: (target: View) => void): void {
  if (out.dtype === dtype && out.offset === 0 && isContiguous(out)) {
    write(out);
    return;
  }
  const n = elementCount(out);
  const temp: View = {
    buffer: rt.createBuffer(op, n * itemSize(dtype)),
    dtype,
    shape: out.shape,
    strides: contiguousStrides(out.shape),
    offset: 0,
  };
  write(temp);
  copy(rt, temp, out);
  rt.destroyLater(temp.buffer);
}

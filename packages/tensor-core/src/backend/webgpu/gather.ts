// Gathers by index on the GPU (kernels/take.wgsl): rows of a table (take) and elements along the last axis
// (takeAlongAxis). Indices are checked by the kernel: an index out of range is reported at the next read.
import { itemSize } from '../../dtype.ts';
import { sizeOf } from '../../shape.ts';
import { intoContiguous } from './elementwise.ts';
import type { GpuRuntime } from './runtime.ts';
import { kernel } from './shader.ts';
import { coalesce, describe, rowsOf, walkParams, type View } from './views.ts';

/** out [...indices.shape, ...rest] = rows of table [R, ...rest] (any strides); indices contiguous. */
export function take(rt: GpuRuntime, table: View, indices: View, out: View): void {
  const rowShape = table.shape.slice(1);
  const row = coalesce(rowShape, [table.strides.slice(1)]);
  const walk = walkParams('take', row, () => describe(table));
  gather(rt, 'take', table, indices, out, {
    inner: sizeOf(rowShape),
    limit: table.shape[0],
    index_stride: table.strides[0],
    walk,
    alongAxis: false,
  });
}

/** out [..., k] = x [..., n] at indices [..., k] along the last axis; indices contiguous. */
export function takeAlongAxis(rt: GpuRuntime, x: View, indices: View, out: View): void {
  const { rows, ndim } = rowsOf('takeAlongAxis', x);
  gather(rt, 'takeAlongAxis', x, indices, out, {
    inner: indices.shape[indices.shape.length - 1],
    limit: rows.n,
    index_stride: rows.stride,
    walk: { ndim, shape: rows.shape, strides: rows.strides },
    alongAxis: true,
  });
}

interface GatherShape {
  inner: number;
  limit: number;
  index_stride: number;
  walk: ReturnType<typeof walkParams>;
  alongAxis: boolean;
}

function gather(rt: GpuRuntime, op: string, x: View, indices: View, out: View, g: GatherShape): void {
  const count = sizeOf(out.shape);
  if (count === 0) return;
  if (itemSize(indices.dtype) !== 4) throw new TypeError(`${op}: indices must be int32 or uint32, got ${describe(indices)}`);
  const wg = Math.min(256, rt.invocations);
  intoContiguous(rt, op, out, out.dtype, (target) =>
    rt.dispatch(op, kernel('take'), {
      constants: { WG: wg, NDIM: g.walk.ndim, ALONG_AXIS: Number(g.alongAxis) },
      dtypes: { x: x.dtype, out: out.dtype },
      buffers: { x: x.buffer, indices: indices.buffer, out: target.buffer, checks: rt.checks },
      params: {
        count,
        inner: g.inner,
        limit: g.limit,
        check: rt.indexCheckCode(op),
        x_offset: x.offset,
        indices_offset: indices.offset,
        index_stride: g.index_stride,
        shape: g.walk.shape,
        strides: g.walk.strides,
      },
      workgroups: rt.grid(Math.ceil(count / wg)),
    }),
  );
}

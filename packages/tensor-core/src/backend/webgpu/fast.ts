// The fused kernels of ops/fast.ts on the GPU: RMSNorm (a row kernel, kernels/rows.wgsl), RoPE
// (kernels/rope.wgsl) and attention (kernels/attention.wgsl). Each writes f32; other output dtypes go through
// a conversion.
import { unsupported } from '../backend.ts';
import { sizeOf } from '../../shape.ts';
import { intoContiguous } from './elementwise.ts';
import type { GpuRuntime } from './runtime.ts';
import { kernel } from './shader.ts';
import { runRows } from './reduce.ts';
import { coalesce, describe, isContiguous, walkParams, type View } from './views.ts';

/** x / sqrt(mean(x^2, -1) + eps) * weight over the last axis of x (any strides). */
export function rmsNorm(rt: GpuRuntime, x: View, weight: View, eps: number, out: View): void {
  runRows(rt, 'rmsNorm', 'OP_RMS_NORM', x, out, 'float32', weight, eps);
}

/** Rotary embedding of x [B, L, H, D] at positions [B, L] (int32, contiguous) with f32 tables [P, D / 2]. */
export function rope(rt: GpuRuntime, x: View, cos: View, sin: View, positions: View, traditional: boolean, out: View): void {
  for (const t of [cos, sin]) {
    if (t.dtype !== 'float32' || !isContiguous(t)) throw new TypeError(`rope: the tables must be contiguous float32, got ${describe(t)}`);
  }
  const [, l, h, d] = x.shape;
  const pairs = sizeOf(x.shape) / 2;
  if (pairs === 0) return;
  const wg = Math.min(256, rt.invocations);
  intoContiguous(rt, 'rope', out, 'float32', (target) =>
    rt.dispatch('rope', kernel('rope'), {
      constants: { WG: wg, TRADITIONAL: Number(traditional) },
      dtypes: { x: x.dtype },
      buffers: { x: x.buffer, positions: positions.buffer, cos_table: cos.buffer, sin_table: sin.buffer, out: target.buffer },
      params: {
        pairs,
        l,
        h,
        half: d / 2,
        x_offset: x.offset,
        positions_offset: positions.offset,
        tables_offset: [cos.offset, sin.offset],
        x_strides: x.strides,
      },
      workgroups: rt.grid(Math.ceil(pairs / wg)),
    }),
  );
}

/** Output features per invocation of the attention kernel (DPT in kernels/attention.wgsl). */
const FEATURES_PER_INVOCATION = 4;

/**
 * softmax(q k^T * scale + mask) v: q [..., Hq, L, D], k and v [..., Hkv, S, D] with q's leading dims, mask an
 * additive view of shape [..., Hq, L, S] (stride 0 where broadcast), 'causal', or null.
 */
export function sdpa(rt: GpuRuntime, q: View, k: View, v: View, mask: View | 'causal' | null, scale: number, out: View): void {
  const nd = q.shape.length;
  const [hq, l, d] = q.shape.slice(nd - 3);
  const [hkv, s] = k.shape.slice(nd - 3);
  const lead = q.shape.slice(0, nd - 3);
  const batch = sizeOf(lead);
  if (batch * hq * l * d === 0) return;
  const td = Math.ceil(d / FEATURES_PER_INVOCATION);
  if (td > rt.invocations) throw unsupported('webgpu', `sdpa with head dim ${d}`);
  // As many query rows per workgroup as L needs (a decode step has one) and the device allows, a power of two
  // so that prompts of every length share a few compiled variants; then the largest key tile that fits in
  // workgroup memory with them.
  let bq = Math.min(16, 2 ** Math.ceil(Math.log2(l)), 2 ** Math.floor(Math.log2(Math.min(256, rt.invocations) / td)));
  const bytes = (bq: number, bk: number) => 4 * (bq * d + 2 * bk * d + bq * bk + 3 * bq);
  const budget = rt.limits.maxComputeWorkgroupStorageSize;
  while (bq > 1 && bytes(bq, 1) > budget) bq = Math.floor(bq / 2);
  const bk = [32, 16, 8, 4, 2, 1].find((b) => bytes(bq, b) <= budget);
  if (bk === undefined) throw unsupported('webgpu', `sdpa with head dim ${d} (workgroup memory)`);

  // The four tensors the kernel walks: q, k, v and the mask (strides 0 when there is no mask tensor).
  const tensorMask = mask !== null && mask !== 'causal' ? mask : null;
  const strides = [q.strides, k.strides, v.strides, tensorMask?.strides ?? new Array<number>(nd).fill(0)];
  const walk = walkParams(
    'sdpa',
    coalesce(
      lead,
      strides.map((st) => st.slice(0, nd - 3)),
    ),
    () => describe(q),
  );
  const along = (dim: number) => strides.map((st) => st[nd - 3 + dim]);
  const maskView = tensorMask ?? q; // bound, never read, when there is no mask tensor
  const module = kernel('attention');
  intoContiguous(rt, 'sdpa', out, 'float32', (target) =>
    rt.dispatch('sdpa', module, {
      constants: {
        TD: td,
        BQ: bq,
        BK: bk,
        D: d,
        MASK: module.constant(mask === null ? 'MASK_NONE' : mask === 'causal' ? 'MASK_CAUSAL' : 'MASK_TENSOR'),
        NBATCH: walk.ndim,
      },
      dtypes: { q: q.dtype, k: k.dtype, v: v.dtype, mask: maskView.dtype },
      buffers: { q: q.buffer, k: k.buffer, v: v.buffer, mask: maskView.buffer, out: target.buffer },
      params: {
        l,
        s,
        hq,
        groups: hq / hkv,
        scale,
        d,
        bk,
        offsets: [q.offset, k.offset, v.offset, tensorMask?.offset ?? 0],
        head_strides: along(0),
        row_strides: along(1),
        col_strides: along(2),
        batch_shape: walk.shape,
        batch_strides: walk.strides,
      },
      workgroups: [Math.ceil(l / bq), hq, batch],
    }),
  );
}

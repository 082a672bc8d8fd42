// Chapter 2.5: flash attention on the GPU. The WGSL kernel (wgsl/week2/flash_attention.wgsl) computes
// attention tile by tile in workgroup memory with the online softmax, as chapter 2.4's C++ kernel does on the
// CPU: the L x S scores are never stored.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import type { FlashAttentionOptions } from './flash-attention.ts';
import { week2Kernel } from './wgsl.ts';

/** Invocations per workgroup (WG in the kernel), within every device's limit of 128 or more. */
const WORKGROUP = 64;

/**
 * The query rows and keys per tile (BQ, BK in the kernel): as many as L needs (a decode step has one query)
 * up to 16, powers of two so that prompts of every length share a few compiled variants, and no more than the
 * device's workgroup memory holds for head dim d (the q, o, k and v tiles, the scores, three numbers per row).
 */
function tileSizes(l: number, d: number, workgroupBytes: number): { bq: number; bk: number } {
  const bytes = (bq: number, bk: number) => 4 * (2 * bq * d + 2 * bk * d + bq * bk + 3 * bq);
  let bk = 16;
  while (bk > 1 && bytes(bk, bk) > workgroupBytes) bk /= 2;
  const bq = Math.min(bk, 2 ** Math.ceil(Math.log2(Math.max(l, 1))));
  if (bytes(bq, bk) > workgroupBytes)
    throw new RangeError(
      `flashAttentionGpu: a head dim of ${d} does not fit the device's ${workgroupBytes} bytes of workgroup memory (maxComputeWorkgroupStorageSize)`,
    );
  return { bq, bk };
}

/**
 * softmax(q @ k^T * scale + mask) @ v on the GPU for q [B, Hq, L, D] and k, v [B, Hkv, S, D] (Hq a multiple of
 * Hkv: query head h reads kv head h / (Hq / Hkv)), float32 or bfloat16 -> float32 [B, Hq, L, D], every tensor
 * on one WebGPU backend. The same function as chapter 2.4's flashAttention.
 */
export function flashAttentionGpu(q: Tensor, k: Tensor, v: Tensor, options: FlashAttentionOptions = {}): Tensor {
  // The kernel first: while it is a stub, every call is the chapter's NotImplemented.
  const kernel = week2Kernel('flash_attention.wgsl');
  const shapes = `q ${q.describe()}, k ${k.describe()}, v ${v.describe()}`;
  if (q.ndim !== 4 || k.ndim !== 4 || v.ndim !== 4)
    throw new RangeError(`flashAttentionGpu: expected q [B, Hq, L, D], k and v [B, Hkv, S, D], got ${shapes}`);
  const [b, hq, l, d] = q.shape;
  const [, hkv, s] = k.shape;
  const kvShape = [b, hkv, s, d];
  if (hkv === 0 || hq % hkv !== 0 || ![k, v].every((t) => t.shape.every((n, i) => n === kvShape[i]))) {
    throw new RangeError(`flashAttentionGpu: expected k and v [${b}, Hkv, S, ${d}] with Hkv dividing ${hq}, got ${shapes}`);
  }
  const { mask } = options;
  const gpu = q.backend;
  const tensors = mask instanceof tc.Tensor ? [q, k, v, mask] : [q, k, v];
  if (!(gpu instanceof tc.WebGPUBackend) || tensors.some((t) => t.backend !== gpu)) {
    throw new TypeError(
      `flashAttentionGpu: every tensor must live on one WebGPU backend (${tensors.map((t) => t.backend.name).join(', ')})`,
    );
  }
  const dtype = q.dtype === 'bfloat16' && k.dtype === 'bfloat16' && v.dtype === 'bfloat16' ? 'bfloat16' : 'float32';
  return tc.tidy(() => {
    const [qc, kc, vc] = [q, k, v].map((t) => tc.contiguous(t.dtype === dtype ? t : tc.astype(t, dtype)));
    // The mask stays in its own shape, as rank 4 ([B|1, Hq|1, L|1, S]); the kernel steps over a dimension of
    // size 1 with stride 0 rather than reading a broadcast copy of L x S per head.
    let maskTensor = qc; // bound, never read, without a mask tensor
    let maskStrides = [0, 0, 0, 0];
    if (mask instanceof tc.Tensor) {
      if (
        mask.ndim > 4 ||
        mask.shape[mask.ndim - 1] !== s ||
        (mask.ndim > 1 && mask.shape[mask.ndim - 2] !== l && mask.shape[mask.ndim - 2] !== 1)
      ) {
        throw new RangeError(`flashAttentionGpu: the mask ${mask.describe()} does not broadcast to [B, Hq, ${l}, ${s}] (${shapes})`);
      }
      const rank4 = [...new Array<number>(4 - mask.ndim).fill(1), ...mask.shape];
      if ((rank4[0] !== 1 && rank4[0] !== b) || (rank4[1] !== 1 && rank4[1] !== hq)) {
        throw new RangeError(`flashAttentionGpu: the mask ${mask.describe()} does not broadcast to [${b}, ${hq}, ${l}, ${s}] (${shapes})`);
      }
      maskTensor = tc.contiguous(tc.reshape(mask.dtype === 'float32' ? mask : tc.astype(mask, 'float32'), rank4));
      maskStrides = [rank4[1] * rank4[2] * s, rank4[2] * s, s, 1].map((stride, i) => (rank4[i] === 1 ? 0 : stride));
    }
    const out = tc.empty(q.shape, 'float32', gpu);
    if (out.size === 0) return out;
    const { bq, bk } = tileSizes(l, d, gpu.limits.maxComputeWorkgroupStorageSize);
    gpu.run(kernel, {
      tensors: { q: qc, k: kc, v: vc, mask: maskTensor, out },
      params: {
        l,
        s,
        d,
        bk,
        hq,
        hkv,
        scale: options.scale ?? 1 / Math.sqrt(d),
        mask_kind: mask === 'causal' ? 1 : mask instanceof tc.Tensor ? 2 : 0,
        mask_strides: maskStrides,
      },
      constants: { WG: WORKGROUP, BQ: bq, BK: bk, D: d },
      workgroups: [Math.ceil(l / bq), hq, b],
    });
    return out;
  });
}

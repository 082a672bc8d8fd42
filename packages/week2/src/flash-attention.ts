// Chapter 2.4: flash attention on the CPU. Read docs/week2/2.4-flash-attention.md.
// Your kernel is native/flash_attention.cc; flashAttention below (given) checks the arguments and calls it.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { flashAttentionGpu } from './flash-attention-gpu.ts';
import { week2Kernels } from './native.ts';

export interface FlashAttentionOptions {
  /** Multiplies the scores; default 1 / sqrt(D). */
  scale?: number;
  /** An additive mask broadcastable to [B, Hq, L, S], or 'causal' (query i sees key j iff j <= i + S - L). */
  mask?: Tensor | 'causal';
}

/**
 * softmax(q @ k^T * scale + mask) @ v for q [B, Hq, L, D] and k, v [B, Hkv, S, D] (Hq a multiple of Hkv: query
 * head h reads kv head h / (Hq / Hkv)), float32 or bfloat16 -> float32 [B, Hq, L, D]. The same function as
 * week 1's scaledDotProductAttentionGrouped, in memory that does not grow with L * S: your C++ kernel, or on GPU
 * tensors your WGSL kernel of chapter 2.5. Given.
 */
export function flashAttention(q: Tensor, k: Tensor, v: Tensor, options: FlashAttentionOptions = {}): Tensor {
  if (q.backend instanceof tc.WebGPUBackend) return flashAttentionGpu(q, k, v, options);
  const shapes = `q ${q.describe()}, k ${k.describe()}, v ${v.describe()}`;
  if (q.ndim !== 4 || k.ndim !== 4 || v.ndim !== 4)
    throw new RangeError(`flashAttention: expected q [B, Hq, L, D], k and v [B, Hkv, S, D], got ${shapes}`);
  const dtype = q.dtype === 'bfloat16' && k.dtype === 'bfloat16' && v.dtype === 'bfloat16' ? 'bfloat16' : 'float32';
  const [, , l, d] = q.shape;
  const s = k.shape[2];
  const { mask } = options;
  return tc.tidy(() => {
    const [qc, kc, vc] = [q, k, v].map((t) => tc.contiguous(t.dtype === dtype ? t : tc.astype(t, dtype)));
    let maskView: Tensor | null = null;
    if (mask instanceof tc.Tensor) {
      if (
        mask.ndim > 4 ||
        mask.shape[mask.ndim - 1] !== s ||
        (mask.ndim > 1 && mask.shape[mask.ndim - 2] !== l && mask.shape[mask.ndim - 2] !== 1)
      ) {
        throw new RangeError(`flashAttention: the mask ${mask.describe()} does not broadcast to [B, Hq, ${l}, ${s}] (${shapes})`);
      }
      // A view of rank 4 ([B|1, Hq|1, L, S]): the kernel reads the dimensions of size 1 with stride 0.
      const float = mask.dtype === 'float32' ? mask : tc.astype(mask, 'float32');
      const rank4 = tc.reshape(float, [...new Array<number>(4 - mask.ndim).fill(1), ...mask.shape]);
      maskView = tc.broadcastTo(rank4, [rank4.shape[0], rank4.shape[1], l, s]);
    }
    const out = tc.empty(q.shape, 'float32');
    const scale = options.scale ?? 1 / Math.sqrt(d);
    week2Kernels().flashAttention(
      qc.native(),
      kc.native(),
      vc.native(),
      maskView?.native() ?? null,
      out.native(),
      scale,
      mask === 'causal',
    );
    return out;
  });
}

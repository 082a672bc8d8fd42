// The known mistakes of each chapter, as wrong answers the tests compute themselves (with float64.ts) and
// compare a failing output with. Each is a mistake learners make: the message says what was done and what
// the case needs instead.
import * as f64 from './float64.ts';
import type { Mistake } from './checks.ts';
import type { Float64Qwen2, Float64Variant } from './float64-model.ts';
import type { NDArray } from './float64.ts';

const lazy = (compute: () => NDArray) => () => compute().data;

/** softmax: the naive form without the max shift. */
export function softmaxMistakes(x: NDArray, axis: number): Mistake[] {
  return [
    {
      explanation:
        'softmax without the max shift: exp(x) overflows to Infinity for large inputs (exp(89) already does in ' +
        'float32) and Infinity / Infinity is NaN. Subtract the row maximum first; it cancels in the ratio.',
      values: lazy(() => f64.softmax(x, axis, { shift: false })),
    },
    {
      explanation: `softmax along another axis than ${axis}.`,
      values: lazy(() => f64.softmax(x, axis === -1 || axis === x.shape.length - 1 ? 0 : -1)),
    },
  ];
}

/** A linear layer: the bias left out. */
export function linearMistakes(x: NDArray, w: NDArray, b?: NDArray): Mistake[] {
  if (!b) return [];
  return [{ explanation: 'the bias left out: linear(x, w, bias) = x @ w.T + bias.', values: lazy(() => f64.linear(x, w)) }];
}

/** The gated MLP: SiLU on the wrong branch. */
export function mlpMistakes(x: NDArray, wGate: NDArray, wUp: NDArray, wDown: NDArray): Mistake[] {
  return [
    {
      explanation: 'SiLU applied to up(x) instead of gate(x): the MLP is down(silu(gate(x)) * up(x)).',
      values: lazy(() => f64.mlp(x, wUp, wGate, wDown)),
    },
  ];
}

/** Multi-head attention: the mask left out, the heads split without the transpose. */
export function multiHeadAttentionMistakes(
  query: NDArray,
  key: NDArray,
  value: NDArray,
  weights: { wq: NDArray; wk: NDArray; wv: NDArray; wo: NDArray },
  numHeads: number,
  mask?: NDArray,
): Mistake[] {
  const [n, l, e] = query.shape;
  const s = key.shape[1];
  const d = e / numHeads;
  // Reshaping [N, L, E] straight to [N, H, L, D] mixes tokens into heads.
  const splitWithoutTranspose = () => {
    const heads = (x: NDArray, w: NDArray, len: number) => f64.reshapeND(f64.linear(x, w), [n, numHeads, len, d]);
    const attended = f64.attention(heads(query, weights.wq, l), heads(key, weights.wk, s), heads(value, weights.wv, s), { mask });
    return f64.linear(f64.reshapeND(attended, [n, l, e]), weights.wo);
  };
  const mistakes: Mistake[] = [
    {
      explanation:
        'the heads split by reshaping [N, L, E] straight to [N, H, L, D]: reshape to [N, L, H, D], then transpose to [N, H, L, D] (and back before merging).',
      values: lazy(splitWithoutTranspose),
    },
  ];
  if (mask) {
    mistakes.push({
      explanation: 'the mask ignored: pass it on to scaledDotProductAttentionSimple.',
      values: lazy(() => f64.multiHeadAttention(query, key, value, weights, numHeads)),
    });
  }
  return mistakes;
}

/** Attention: the usual wrong scales, and a mask left out. */
export function attentionMistakes(q: NDArray, k: NDArray, v: NDArray, options: f64.AttentionOptions): Mistake[] {
  const d = q.shape[q.shape.length - 1];
  const mistakes: Mistake[] = [
    {
      explanation: `scores scaled by 1/D = 1/${d}; the scale is 1/sqrt(D) = 1/sqrt(${d}) unless one is given.`,
      values: lazy(() => f64.attention(q, k, v, { ...options, scale: 1 / d })),
    },
    {
      explanation: 'scores not scaled at all; multiply q @ k^T by the scale (1/sqrt(D) unless one is given).',
      values: lazy(() => f64.attention(q, k, v, { ...options, scale: 1 })),
    },
  ];
  if (options.scale !== undefined) {
    mistakes.push({
      explanation: `the default scale 1/sqrt(D) where this case gives scale = ${options.scale}.`,
      values: lazy(() => f64.attention(q, k, v, { ...options, scale: undefined })),
    });
  }
  if (options.mask !== undefined) {
    mistakes.push({
      explanation: 'the mask ignored; add it to the scaled scores before the softmax.',
      values: lazy(() => f64.attention(q, k, v, { ...options, mask: undefined })),
    });
  }
  return mistakes;
}

const TOP_LEFT =
  "a top-left causal mask (query i sees keys j <= i, PyTorch's is_causal); the L queries are the last L of the " +
  'S tokens, so query i must see keys up to i + S - L (the mask is aligned to the bottom right).';

/** The causal mask aligned to the top left. */
export function causalMaskMistakes(l: number, s: number): Mistake[] {
  return [{ explanation: TOP_LEFT, values: lazy(() => f64.causalMask(l, s, 'top-left')) }];
}

/** Grouped-query attention: the other head mapping, and a top-left causal mask. */
export function gqaMistakes(
  q: NDArray,
  k: NDArray,
  v: NDArray,
  scale: number | undefined,
  mask: NDArray | 'causal' | undefined,
): Mistake[] {
  const options: f64.AttentionOptions = { scale, mask: mask === 'causal' ? 'bottom-right' : mask, kvHeadOf: f64.groupedHead };
  const rank = q.shape.length;
  const [hq, hkv] = [q.shape[rank - 3], k.shape[rank - 3]];
  const mistakes: Mistake[] = [];
  if (hq !== hkv) {
    mistakes.push({
      explanation:
        `query head h reading kv head h % Hkv (interleaved); consecutive query heads share a kv head: h reads ` +
        `floor(h / (Hq / Hkv)), so with Hq = ${hq} and Hkv = ${hkv} heads 0..${hq / hkv - 1} read kv head 0. Reshape q to ` +
        '[..., Hkv, G, L, D], do not tile K and V.',
      values: lazy(() => f64.attention(q, k, v, { ...options, kvHeadOf: (h, _, n) => h % n })),
    });
  }
  if (mask === 'causal')
    mistakes.push({ explanation: TOP_LEFT, values: lazy(() => f64.attention(q, k, v, { ...options, mask: 'top-left' })) });
  return [...mistakes, ...attentionMistakes(q, k, v, options)];
}

/** RoPE: the other pairing convention, per-row offsets ignored. */
export function ropeMistakes(x: NDArray, options: f64.RopeOptions): Mistake[] {
  const style = (traditional: boolean) => (traditional ? 'adjacent pairs (2i, 2i+1)' : 'the halves (i, i + D/2)');
  const mistakes: Mistake[] = [
    {
      explanation: `RoPE on ${style(!options.traditional)}; this case pairs ${style(options.traditional)} (traditional = ${options.traditional}).`,
      values: lazy(() => f64.rope(x, { ...options, traditional: !options.traditional })),
    },
  ];
  const offsets = options.offsets;
  if (offsets.some((o) => o !== offsets[0])) {
    mistakes.push({
      explanation: `the first row's offset used for every row; this case gives one offset per batch row: [${offsets.join(', ')}].`,
      values: lazy(() => f64.rope(x, { ...options, offsets: offsets.map(() => offsets[0]) })),
    });
  }
  if (offsets.some((o) => o !== 0)) {
    mistakes.push({
      explanation: `the offset ignored (positions from 0); row b's first token sits at position offset[b] = [${offsets.join(', ')}].`,
      values: lazy(() => f64.rope(x, { ...options, offsets: offsets.map(() => 0) })),
    });
  }
  if (options.base !== 10000) {
    mistakes.push({
      explanation: `RoPE with its default base 10000; this case uses base ${options.base}.`,
      values: lazy(() => f64.rope(x, { ...options, base: 10000 })),
    });
  }
  return mistakes;
}

/** RMSNorm: a sum of squares where the mean belongs. */
export function rmsNormMistakes(x: NDArray, weight: NDArray, eps: number): Mistake[] {
  return [
    {
      explanation: `the sum of the squares where their mean belongs: divide by the width ${weight.data.length} (tc.mean, not tc.sum).`,
      values: lazy(() => f64.rmsNorm(x, weight, eps, { reduce: 'sum' })),
    },
    {
      explanation: 'the weight left out: multiply the normalised x by weight.',
      values: lazy(() => f64.rmsNorm(x, { shape: weight.shape, data: weight.data.map(() => 1) }, eps)),
    },
  ];
}

/**
 * A decoder layer (or the whole model) of chapter 1.5: the model's RoPE base, the q/k/v biases; and of a
 * Qwen2-MoE model, chapter 3.3's routing weights and shared expert.
 */
export function modelMistakes(model: Float64Qwen2, compute: (variant: Float64Variant) => NDArray): Mistake[] {
  const moe = model.config.moe;
  const mistakes: Mistake[] = moe
    ? moeMistakes({ normTopkProb: moe.normTopkProb, sharedExpert: moe.sharedExpertIntermediateSize > 0 }, (variant) =>
        compute({ moe: variant }),
      )
    : [];
  if (model.config.ropeTheta !== 10000) {
    mistakes.push({
      explanation: `RoPE with its default base 10000; this model's base is config.ropeTheta = ${model.config.ropeTheta}.`,
      values: lazy(() => compute({ ropeBase: 10000 })),
    });
  }
  if (model.hasBiases) {
    mistakes.push({
      explanation: 'the q/k/v projections without their biases (self_attn.{q,k,v}_proj.bias): Qwen2 adds them.',
      values: lazy(() => compute({ biases: false })),
    });
  }
  return mistakes;
}

/**
 * The mixture-of-experts block of chapter 3.3: the k weights normalised the other way than normTopkProb says,
 * and (when the block has one) the shared expert's gate or the shared expert itself left out.
 */
export function moeMistakes(
  block: { normTopkProb: boolean; sharedExpert: boolean },
  compute: (variant: f64.MoeVariant) => NDArray,
): Mistake[] {
  const mistakes: Mistake[] = [
    block.normTopkProb
      ? {
          explanation:
            "the k routing weights not renormalised: with norm_topk_prob true, divide the chosen experts' probabilities by their sum.",
          values: lazy(() => compute({ renormalize: false })),
        }
      : {
          explanation:
            'the k routing weights sum to 1 (renormalised, or a softmax over the k chosen logits only): with norm_topk_prob false, each chosen expert weighs its probability under the softmax over all the experts.',
          values: lazy(() => compute({ renormalize: true })),
        },
  ];
  if (block.sharedExpert) {
    mistakes.push(
      {
        explanation: 'the shared expert added as it is: its output is scaled by sigmoid(x @ shared_expert_gate.T), one gate per token.',
        values: lazy(() => compute({ sharedGate: false })),
      },
      {
        explanation:
          'the shared expert left out: every token also goes through mlp.shared_expert (scaled by its sigmoid gate), added to the routed experts.',
        values: lazy(() => compute({ sharedExpert: false })),
      },
    );
  }
  return mistakes;
}

/**
 * A model with a KV cache run in calls of `lengths` tokens (chapter 2.1): the offset ignored, the cache not
 * returned, the top-left mask on a prefill after cached tokens.
 */
export function cacheMistakes(model: Float64Qwen2, ids: readonly number[], lengths: readonly number[]): Mistake[] {
  const run = (variant: Float64Variant) => lazy(() => model.logitsInCalls(ids, lengths, variant));
  return [
    {
      explanation:
        'each call turned its tokens from position 0: RoPE needs their absolute positions, offset, offset + 1, ... (offset = the tokens already cached).',
      values: run({ ignoreOffset: true }),
    },
    {
      explanation:
        "each call attended to its own tokens only: updateAndFetch must return every cached key and value, the earlier calls' too.",
      values: run({ forgetCache: true }),
    },
    {
      explanation:
        "a top-left causal mask after cached tokens: the L new tokens are the last L of S, so query i sees keys up to i + S - L ('causal' means that).",
      values: run({ topLeftMask: true }),
    },
  ];
}

/** Quantized matmul (chapter 2.2): the groups' biases left out, the values read from the top of their words. */
export function quantizedMatmulMistakes(x: NDArray, w: f64.QuantizedArrays): Mistake[] {
  return [
    {
      explanation:
        'the bias of each group left out: a value dequantizes to q * scale + bias (in the factored form, + bias * sum(x) per group).',
      values: lazy(() => f64.quantizedMatmul(x, w, { withBias: false })),
    },
    {
      explanation: `values read from the top of their 32-bit words: value j of a word sits in bits [j * ${w.bits}, (j + 1) * ${w.bits}), lowest bits first.`,
      values: lazy(() => f64.quantizedMatmul(x, w, { fromTop: true })),
    },
  ];
}

/**
 * Quantized matmul on the GPU (chapter 2.3): chapter 2.2's mistakes, the invocations' partial sums never added
 * (each row is then its first chunk of 32 values), and, with more columns than one dimension of workgroups
 * holds, the column taken from the workgroup's x alone (the columns past it stay 0: GPU buffers start zeroed).
 */
export function quantizedMatmulGpuMistakes(x: NDArray, w: f64.QuantizedArrays): Mistake[] {
  const firstChunk = { shape: x.shape, data: x.data.map((v, i) => (i % w.k < 32 ? v : 0)) };
  const mistakes: Mistake[] = [
    ...quantizedMatmulMistakes(x, w),
    {
      explanation:
        "only the first 32 values of each row summed: every invocation's partial sum must be added in (a tree in workgroup memory), and one invocation writes the total.",
      values: lazy(() => f64.quantizedMatmul(firstChunk, w)),
    },
  ];
  const maxColumns = 65535;
  if (w.n > maxColumns) {
    mistakes.push({
      explanation: `the columns past the first ${maxColumns} left unwritten: column n of workgroup (x, y) is y * (workgroups along x) + x, since one dimension holds at most ${maxColumns} workgroups.`,
      values: lazy(() => {
        const out = f64.quantizedMatmul(x, w);
        return { shape: out.shape, data: out.data.map((v, i) => (i % w.n < maxColumns ? v : 0)) };
      }),
    });
  }
  return mistakes;
}

/**
 * Paged decode attention (chapter 3.1): the block table misread or ignored, whole pages read, the page layout
 * taken for another, and the head mapping and scales of grouped-query attention.
 */
export function pagedAttentionMistakes(
  q: NDArray,
  keyPages: NDArray,
  valuePages: NDArray,
  tables: readonly (readonly number[])[],
  lengths: readonly number[],
  scale?: number,
): Mistake[] {
  const [b, hq, d] = q.shape;
  const [, hkv, p] = keyPages.shape;
  const run = (options: Parameters<typeof f64.pagedAttention>[5]) =>
    lazy(() => f64.pagedAttention(q, keyPages, valuePages, tables, lengths, { scale, ...options }));
  const mistakes: Mistake[] = [];
  // Row 0's block table misread for every row: computable where it lists as many pages as any row reads.
  if (b > 1 && lengths.every((n) => Math.ceil(n / p) <= tables[0].length)) {
    mistakes.push({
      explanation: "every row read row 0's block table: row b's pages are block_tables[b * max_blocks + j].",
      values: run({ variant: { firstTable: true } }),
    });
  }
  mistakes.push({
    explanation:
      'block j read as page j, the block table ignored: token t of row b is in page block_tables[b * max_blocks + t / P], slot t % P.',
    values: run({ variant: { ignoreTable: true } }),
  });
  if (lengths.some((n) => n % p !== 0)) {
    mistakes.push({
      explanation: `whole pages read: a row's last page holds only its first length % ${p} slots (the others are stale or another token's); stop at lengths[b].`,
      values: run({ variant: { wholePages: true } }),
    });
  }
  if (hkv > 1) {
    mistakes.push({
      explanation:
        'the pages read as [N, P, Hkv, D]: a page is [Hkv, P, D], so token t of kv head g is at ((page * Hkv + g) * P + t % P) * D.',
      values: run({ variant: { slotsBeforeHeads: true } }),
    });
  }
  if (hq !== hkv) {
    mistakes.push({
      explanation: `query head h reading kv head h % Hkv (interleaved); consecutive query heads share a kv head: h reads floor(h / (Hq / Hkv)) (Hq = ${hq}, Hkv = ${hkv}).`,
      values: run({ kvHeadOf: (h, _, n) => h % n }),
    });
  }
  mistakes.push(
    { explanation: `scores scaled by 1/D = 1/${d}; the scale is 1/sqrt(D) unless one is given.`, values: run({ scale: 1 / d }) },
    { explanation: 'scores not scaled at all; multiply q . k by the scale (1/sqrt(D) unless one is given).', values: run({ scale: 1 }) },
  );
  return mistakes;
}

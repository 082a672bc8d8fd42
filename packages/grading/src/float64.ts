// Each chapter's math as plain float64 loops over row-major arrays, sharing no code with the solutions or
// with tensor-core's kernels. The graded tests use them two ways: as independent goldens for cases the
// fixtures do not cover, and, with one thing done wrong on purpose, as the known wrong answers that a
// failing test compares the learner's output with (mistakes.ts).
import type { QuantizedWeight, Tensor } from '@tiny-llm/tensor-core';
import { ravel, unravel, type NDArray } from '@tiny-llm/tensor-core/testing';

export type { NDArray };

/** A tensor's values as float64 (exact for float32, bf16 and f16 inputs). */
export function toND(t: Tensor): NDArray {
  return { shape: [...t.shape], data: Float64Array.from(t.toArray()) };
}

const sizeOfShape = (shape: readonly number[]) => shape.reduce((p, d) => p * d, 1);

function zerosND(shape: number[]): NDArray {
  return { shape, data: new Float64Array(sizeOfShape(shape)) };
}

/** Broadcasts `a` against a result of rank idx.length and reads it at idx. */
function at(a: NDArray, idx: number[]): number {
  const lead = idx.length - a.shape.length;
  return a.data[
    ravel(
      a.shape.map((d, i) => (d === 1 ? 0 : idx[lead + i])),
      a.shape,
    )
  ];
}

/**
 * softmax along `axis`. `shift: false` is the naive exp(x) / sum(exp(x)): for inputs near 1000 it divides
 * Infinity by Infinity (exp overflows float64 past ~709 as it overflows float32 past ~88).
 */
export function softmax(x: NDArray, axis: number, { shift = true } = {}): NDArray {
  const ax = axis < 0 ? axis + x.shape.length : axis;
  const n = x.shape[ax];
  const inner = sizeOfShape(x.shape.slice(ax + 1));
  const outer = sizeOfShape(x.shape.slice(0, ax));
  const out = zerosND([...x.shape]);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const index = (k: number) => (o * n + k) * inner + i;
      let max = -Infinity;
      for (let k = 0; k < n; k++) max = Math.max(max, x.data[index(k)]);
      const m = shift ? max : 0;
      let sum = 0;
      for (let k = 0; k < n; k++) sum += Math.exp(x.data[index(k)] - m);
      for (let k = 0; k < n; k++) out.data[index(k)] = Math.exp(x.data[index(k)] - m) / sum;
    }
  }
  return out;
}

/** x [..., in] @ w [out, in].T + b [out]. */
export function linear(x: NDArray, w: NDArray, b?: NDArray): NDArray {
  const [outF, inF] = w.shape;
  const rows = x.data.length / inF;
  const out = zerosND([...x.shape.slice(0, -1), outF]);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let s = b ? b.data[o] : 0;
      for (let i = 0; i < inF; i++) s += x.data[r * inF + i] * w.data[o * inF + i];
      out.data[r * outF + o] = s;
    }
  }
  return out;
}

export type MaskAlignment = 'bottom-right' | 'top-left';

/**
 * The additive causal mask [L, S]: 0 where query i sees key j, -Infinity elsewhere. Bottom-right (the
 * course's): the L queries are the last L of S tokens, so query i sees j <= i + S - L. Top-left (PyTorch's
 * `is_causal`): query i sees j <= i.
 */
export function causalMask(l: number, s: number, align: MaskAlignment = 'bottom-right'): NDArray {
  const shift = align === 'bottom-right' ? s - l : 0;
  const out = zerosND([l, s]);
  for (let i = 0; i < l; i++) for (let j = 0; j < s; j++) out.data[i * s + j] = j <= i + shift ? 0 : -Infinity;
  return out;
}

export interface AttentionOptions {
  /** Multiplies the scores; default 1 / sqrt(D). */
  scale?: number;
  /** An additive mask broadcastable to the scores [..., L, S], or a causal mask of that alignment. */
  mask?: NDArray | MaskAlignment;
  /**
   * Grouped-query attention: the kv head that query head h of hq reads when there are hkv kv heads (q is
   * [..., Hq, L, D], k and v [..., Hkv, S, D]). Default: floor(h / (hq / hkv)). Without grouping leave it out
   * and give q, k and v the same heads.
   */
  kvHeadOf?: (h: number, hq: number, hkv: number) => number;
}

export const groupedHead = (h: number, hq: number, hkv: number) => Math.floor(h / (hq / hkv));

/**
 * softmax(q @ k^T * scale + mask) @ v. q [...batch, L, D], k and v [...batch, S, D], with the batch dims
 * equal; with kvHeadOf, the dimension before L is the head, and q has Hq heads where k and v have Hkv.
 */
export function attention(q: NDArray, k: NDArray, v: NDArray, options: AttentionOptions = {}): NDArray {
  const rank = q.shape.length;
  const [l, d] = q.shape.slice(-2);
  const s = k.shape[rank - 2];
  const scale = options.scale ?? 1 / Math.sqrt(d);
  const mask = typeof options.mask === 'string' ? causalMask(l, s, options.mask) : options.mask;
  const out = zerosND([...q.shape]);
  const batchShape = q.shape.slice(0, -2);
  const batches = sizeOfShape(batchShape);
  const hq = rank >= 3 ? q.shape[rank - 3] : 1;
  const hkv = rank >= 3 ? k.shape[rank - 3] : 1;
  const scores = new Float64Array(s);
  for (let bIndex = 0; bIndex < batches; bIndex++) {
    const batchIdx = unravel(bIndex, batchShape);
    // The k/v batch row: the same, except the head, which maps to its kv head.
    const kvIdx = [...batchIdx];
    if (options.kvHeadOf) kvIdx[kvIdx.length - 1] = options.kvHeadOf(batchIdx[batchIdx.length - 1], hq, hkv);
    const kvRow = ravel(kvIdx, k.shape.slice(0, -2));
    for (let i = 0; i < l; i++) {
      const qOff = (bIndex * l + i) * d;
      for (let j = 0; j < s; j++) {
        let dot = 0;
        for (let e = 0; e < d; e++) dot += q.data[qOff + e] * k.data[(kvRow * s + j) * d + e];
        scores[j] = dot * scale + (mask ? at(mask, [...batchIdx, i, j]) : 0);
      }
      const max = Math.max(...scores);
      let sum = 0;
      for (let j = 0; j < s; j++) sum += Math.exp(scores[j] - max);
      for (let e = 0; e < d; e++) {
        let acc = 0;
        for (let j = 0; j < s; j++) acc += (Math.exp(scores[j] - max) / sum) * v.data[(kvRow * s + j) * d + e];
        out.data[qOff + e] = acc;
      }
    }
  }
  return out;
}

/** How a paged read may go wrong: the known mistakes of chapter 3.1's kernel (none set: the right read). */
export interface PagedReadVariant {
  /** Every row reads row 0's block table. */
  firstTable?: boolean;
  /** Block j read as page j: the block table ignored. */
  ignoreTable?: boolean;
  /** Whole pages read: every slot of a row's last page, past its length. */
  wholePages?: boolean;
  /** The pages read as [N, P, Hkv, D] where they are [N, Hkv, P, D]. */
  slotsBeforeHeads?: boolean;
}

/** The first `length` rows of one kv cache through a block table: pages [N, Hkv, P, D] -> [1, Hkv, length, D]. */
export function gatherPages(pages: NDArray, table: readonly number[], length: number, variant: PagedReadVariant = {}): NDArray {
  const [, hkv, p, d] = pages.shape;
  const out = zerosND([1, hkv, length, d]);
  for (let g = 0; g < hkv; g++) {
    for (let t = 0; t < length; t++) {
      const block = Math.floor(t / p);
      const page = variant.ignoreTable ? block : table[block];
      const row = variant.slotsBeforeHeads ? (page * p + (t % p)) * hkv + g : (page * hkv + g) * p + (t % p);
      out.data.set(pages.data.subarray(row * d, (row + 1) * d), (g * length + t) * d);
    }
  }
  return out;
}

/**
 * Decode attention over a paged cache: q [B, Hq, D], one query per row, against row b's first lengths[b] tokens
 * of keyPages and valuePages [N, Hkv, P, D] through its block table -> [B, Hq, D]. Grouped: query head h reads
 * kv head options.kvHeadOf (default floor(h / (Hq / Hkv))).
 */
export function pagedAttention(
  q: NDArray,
  keyPages: NDArray,
  valuePages: NDArray,
  tables: readonly (readonly number[])[],
  lengths: readonly number[],
  options: Omit<AttentionOptions, 'mask'> & { variant?: PagedReadVariant } = {},
): NDArray {
  const [b, hq, d] = q.shape;
  const p = keyPages.shape[2];
  const { variant = {}, ...attend } = options;
  const out = zerosND([b, hq, d]);
  for (let row = 0; row < b; row++) {
    const table = variant.firstTable ? tables[0] : tables[row];
    const length = variant.wholePages ? Math.ceil(lengths[row] / p) * p : lengths[row];
    const qRow = { shape: [1, hq, 1, d], data: q.data.subarray(row * hq * d, (row + 1) * hq * d) };
    const k = gatherPages(keyPages, table, length, variant);
    const v = gatherPages(valuePages, table, length, variant);
    out.data.set(attention(qRow, k, v, { kvHeadOf: groupedHead, ...attend }).data, row * hq * d);
  }
  return out;
}

export interface RopeOptions {
  base: number;
  traditional: boolean;
  /** The position of each batch row's first token. */
  offsets: readonly number[];
}

/** Rotary embedding of x [B, L, H, D]: pair (2i, 2i+1) when traditional, else (i, i + D/2). */
export function rope(x: NDArray, { base, traditional, offsets }: RopeOptions): NDArray {
  const [b, l, h, d] = x.shape;
  const half = d / 2;
  const out = zerosND([...x.shape]);
  for (let bi = 0; bi < b; bi++) {
    for (let li = 0; li < l; li++) {
      const position = offsets[bi] + li;
      for (let hi = 0; hi < h; hi++) {
        const row = ((bi * l + li) * h + hi) * d;
        for (let i = 0; i < half; i++) {
          const angle = position * base ** ((-2 * i) / d);
          const [i1, i2] = traditional ? [2 * i, 2 * i + 1] : [i, i + half];
          const x1 = x.data[row + i1];
          const x2 = x.data[row + i2];
          out.data[row + i1] = x1 * Math.cos(angle) - x2 * Math.sin(angle);
          out.data[row + i2] = x2 * Math.cos(angle) + x1 * Math.sin(angle);
        }
      }
    }
  }
  return out;
}

/** x / sqrt(mean(x^2) + eps) * weight over the last axis; `reduce: 'sum'` is the mistake of a sum for the mean. */
export function rmsNorm(x: NDArray, weight: NDArray, eps: number, { reduce = 'mean' as 'mean' | 'sum' } = {}): NDArray {
  const n = weight.data.length;
  const out = zerosND([...x.shape]);
  for (let r = 0; r < x.data.length / n; r++) {
    let sq = 0;
    for (let i = 0; i < n; i++) sq += x.data[r * n + i] ** 2;
    const scale = 1 / Math.sqrt((reduce === 'mean' ? sq / n : sq) + eps);
    for (let i = 0; i < n; i++) out.data[r * n + i] = x.data[r * n + i] * scale * weight.data[i];
  }
  return out;
}

export const silu = (x: number) => x / (1 + Math.exp(-x));

/** down(silu(gate(x)) * up(x)). */
export function mlp(x: NDArray, wGate: NDArray, wUp: NDArray, wDown: NDArray): NDArray {
  const gate = linear(x, wGate);
  const up = linear(x, wUp);
  const hidden = { shape: gate.shape, data: gate.data.map((g, i) => silu(g) * up.data[i]) };
  return linear(hidden, wDown);
}

/** Reshapes without copying (row-major data keeps its order). */
export const reshapeND = (a: NDArray, shape: number[]): NDArray => ({ shape, data: a.data });

/** [d0, d1, d2, d3] -> [d0, d2, d1, d3]: the swap between [B, L, H, D] and [B, H, L, D]. */
export function swapMiddle(a: NDArray): NDArray {
  const [d0, d1, d2, d3] = a.shape;
  const out = zerosND([d0, d2, d1, d3]);
  for (let i0 = 0; i0 < d0; i0++)
    for (let i1 = 0; i1 < d1; i1++)
      for (let i2 = 0; i2 < d2; i2++)
        for (let i3 = 0; i3 < d3; i3++) out.data[((i0 * d2 + i2) * d1 + i1) * d3 + i3] = a.data[((i0 * d1 + i1) * d2 + i2) * d3 + i3];
  return out;
}

/**
 * Multi-head attention without biases: query [N, L, E], key and value [N, S, E], weights [E, E] in the
 * [out, in] layout, an additive mask broadcastable to [N, H, L, S].
 */
export function multiHeadAttention(
  query: NDArray,
  key: NDArray,
  value: NDArray,
  weights: { wq: NDArray; wk: NDArray; wv: NDArray; wo: NDArray },
  numHeads: number,
  mask?: NDArray,
): NDArray {
  const [n, l, e] = query.shape;
  const s = key.shape[1];
  const d = e / numHeads;
  const heads = (x: NDArray, w: NDArray, len: number) => swapMiddle(reshapeND(linear(x, w), [n, len, numHeads, d]));
  const attended = attention(heads(query, weights.wq, l), heads(key, weights.wk, s), heads(value, weights.wv, s), { mask });
  return linear(reshapeND(swapMiddle(attended), [n, l, e]), weights.wo);
}

/** The value j of a packed MLX row: `bits` bits at stream position j * bits, lowest bits first. */
export function unpackQuantized(words: ArrayLike<number>, rowStart: number, j: number, bits: number, { fromTop = false } = {}): number {
  let q = 0;
  for (let b = 0; b < bits; b++) {
    const bit = j * bits + b;
    const word = words[rowStart + Math.floor(bit / 32)] >>> 0;
    // Reading from the top: bit b of the value taken from the word's other end (a common mistake).
    const position = fromTop ? 31 - (bit % 32) : bit % 32;
    q |= ((word >>> position) & 1) << (fromTop ? bits - 1 - b : b);
  }
  return q;
}

export interface QuantizedArrays {
  /** uint32 [N, K * bits / 32] */
  words: ArrayLike<number>;
  /** [N, K / groupSize] */
  scales: ArrayLike<number>;
  biases: ArrayLike<number>;
  n: number;
  k: number;
  bits: number;
  groupSize: number;
}

/** A QuantizedWeight's arrays, read back (bf16 and f16 scales widen exactly). */
export function quantizedArraysOf(w: QuantizedWeight): QuantizedArrays {
  const [n, k] = w.shape;
  return { words: w.weight.toArray(), scales: w.scales.toArray(), biases: w.biases.toArray(), n, k, bits: w.bits, groupSize: w.groupSize };
}

/**
 * x [M, K] @ dequantize(w).T in float64, from the packed words. `withBias: false` leaves out the groups'
 * biases, `fromTop` reads each value from the other end of its word: the known mistakes of chapter 2.2.
 */
export function quantizedMatmul(x: NDArray, w: QuantizedArrays, { withBias = true, fromTop = false } = {}): NDArray {
  const { n, k, bits, groupSize } = w;
  const m = x.data.length / k;
  const wordsPerRow = (k * bits) / 32;
  const groups = k / groupSize;
  const out = zerosND([...x.shape.slice(0, -1), n]);
  for (let row = 0; row < n; row++) {
    const weight = new Float64Array(k);
    for (let j = 0; j < k; j++) {
      const g = row * groups + Math.floor(j / groupSize);
      weight[j] = unpackQuantized(w.words, row * wordsPerRow, j, bits, { fromTop }) * w.scales[g] + (withBias ? w.biases[g] : 0);
    }
    for (let i = 0; i < m; i++) {
      let s = 0;
      for (let j = 0; j < k; j++) s += x.data[i * k + j] * weight[j];
      out.data[i * n + row] = s;
    }
  }
  return out;
}

/** A gated MLP's three weights, [inter, E], [inter, E], [E, inter]. */
export interface MlpArrays {
  gate: NDArray;
  up: NDArray;
  down: NDArray;
}

/** A Qwen2-MoE block's weights and settings (chapter 3.3). */
export interface MoeArrays {
  /** The router, [numExperts, E]. */
  router: NDArray;
  experts: MlpArrays[];
  /** The shared expert and its gate [1, E], or none. */
  shared?: MlpArrays;
  sharedGate?: NDArray;
  /** Experts per token. */
  k: number;
  /** Renormalise the k chosen probabilities to sum to 1. */
  normTopkProb: boolean;
}

/** What a MoE pass may do differently: the known mistakes of chapter 3.3. */
export interface MoeVariant {
  /** Overrides normTopkProb. */
  renormalize?: boolean;
  /** false adds the shared expert without its sigmoid gate. */
  sharedGate?: boolean;
  /** false leaves the shared expert out. */
  sharedExpert?: boolean;
}

/**
 * The mixture-of-experts block on x [..., E], token by token: the router's softmax over every expert, the k
 * most likely (lower index first on ties), each chosen expert's MLP weighted by its probability (renormalised
 * over the k when normTopkProb), plus the shared expert scaled by sigmoid(x @ sharedGate.T).
 */
export function moe(x: NDArray, w: MoeArrays, variant: MoeVariant = {}): NDArray {
  const e = w.router.shape[1];
  const renormalize = variant.renormalize ?? w.normTopkProb;
  const out = zerosND([...x.shape]);
  for (let t = 0; t < x.data.length / e; t++) {
    const token: NDArray = { shape: [1, e], data: x.data.subarray(t * e, (t + 1) * e) };
    const probs = softmax(linear(token, w.router), -1).data;
    const chosen = Array.from(probs.keys())
      .sort((a, b) => probs[b] - probs[a] || a - b)
      .slice(0, w.k);
    const total = chosen.reduce((s, i) => s + probs[i], 0);
    const row = out.data.subarray(t * e, (t + 1) * e);
    for (const i of chosen) {
      const y = mlp(token, w.experts[i].gate, w.experts[i].up, w.experts[i].down).data;
      const weight = renormalize ? probs[i] / total : probs[i];
      for (let j = 0; j < e; j++) row[j] += weight * y[j];
    }
    if (w.shared && w.sharedGate && variant.sharedExpert !== false) {
      const y = mlp(token, w.shared.gate, w.shared.up, w.shared.down).data;
      const logit = linear(token, w.sharedGate).data[0];
      const gate = variant.sharedGate === false ? 1 : 1 / (1 + Math.exp(-logit));
      for (let j = 0; j < e; j++) row[j] += gate * y[j];
    }
  }
  return out;
}

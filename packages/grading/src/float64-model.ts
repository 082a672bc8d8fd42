// A Qwen2/Qwen3 forward pass in float64 plain loops (float64.ts), for the fixture models: the independent
// computation behind the model tests' diagnoses (the learner's logits against the same model with one thing
// done wrong) and the greedy margins (a greedy token is only checked where its lead over the runner-up is
// well above the tolerance). Tiny models only: it is written to be obviously right, not fast.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, ModelDir } from '@tiny-llm/tensor-core';
import { attention, causalMask, linear, mlp, reshapeND, rmsNorm, rope, swapMiddle, toND, type NDArray } from './float64.ts';

/** What a model pass may do differently from the real model: the known mistakes of chapter 1.5. */
export interface Float64Variant {
  /** The RoPE base (default config.ropeTheta). */
  ropeBase?: number;
  /** false drops the q/k/v biases. */
  biases?: boolean;
}

interface LayerWeights {
  inputNorm: NDArray;
  postNorm: NDArray;
  q: { w: NDArray; b?: NDArray };
  k: { w: NDArray; b?: NDArray };
  v: { w: NDArray; b?: NDArray };
  o: NDArray;
  qNorm?: NDArray;
  kNorm?: NDArray;
  gate: NDArray;
  up: NDArray;
  down: NDArray;
}

export class Float64Qwen2 {
  readonly config: ModelConfig;
  /** Whether the q/k/v projections have biases (Qwen2 does, Qwen3 does not). */
  readonly hasBiases: boolean;
  private readonly embedding: NDArray;
  private readonly head: NDArray;
  private readonly norm: NDArray;
  private readonly layers: LayerWeights[];

  constructor(dir: string) {
    const md: ModelDir = tc.openModelDir(dir);
    this.config = md.config;
    // Quantized matrices become their float values through tensor-core's plain dequantize (tested against
    // the quantized goldens in tensor-core); everything else is read as it is stored.
    const matrix = (prefix: string): { w: NDArray; b?: NDArray } => {
      const { weight, bias } = md.linear(prefix);
      const w = weight instanceof tc.QuantizedWeight ? toND(tc.dequantize(weight)) : toND(weight);
      return { w, b: bias ? toND(bias) : undefined };
    };
    const vector = (name: string) => (md.has(name) ? toND(md.weight(name)) : undefined);
    this.embedding = matrix('model.embed_tokens').w;
    this.head = md.config.tieWordEmbeddings ? this.embedding : matrix('lm_head').w;
    this.norm = vector('model.norm.weight')!;
    this.layers = Array.from({ length: md.config.numHiddenLayers }, (_, i) => {
      const p = `model.layers.${i}`;
      return {
        inputNorm: vector(`${p}.input_layernorm.weight`)!,
        postNorm: vector(`${p}.post_attention_layernorm.weight`)!,
        q: matrix(`${p}.self_attn.q_proj`),
        k: matrix(`${p}.self_attn.k_proj`),
        v: matrix(`${p}.self_attn.v_proj`),
        o: matrix(`${p}.self_attn.o_proj`).w,
        qNorm: vector(`${p}.self_attn.q_norm.weight`),
        kNorm: vector(`${p}.self_attn.k_norm.weight`),
        gate: matrix(`${p}.mlp.gate_proj`).w,
        up: matrix(`${p}.mlp.up_proj`).w,
        down: matrix(`${p}.mlp.down_proj`).w,
      };
    });
    this.hasBiases = this.layers.some((l) => l.q.b || l.k.b || l.v.b);
  }

  /** Rows of the embedding: ids [L] -> [1, L, E]. */
  embed(ids: readonly number[]): NDArray {
    const e = this.config.hiddenSize;
    const data = new Float64Array(ids.length * e);
    ids.forEach((id, i) => data.set(this.embedding.data.subarray(id * e, (id + 1) * e), i * e));
    return { shape: [1, ids.length, e], data };
  }

  /** One decoder layer on x [1, L, E] at positions 0..L-1, causal. */
  layer(index: number, x: NDArray, variant: Float64Variant = {}): NDArray {
    const c = this.config;
    const w = this.layers[index];
    const [, l] = x.shape;
    const { numAttentionHeads: h, numKeyValueHeads: hkv, headDim: d, rmsNormEps: eps } = c;
    const biases = variant.biases ?? true;
    const heads = (p: { w: NDArray; b?: NDArray }, n: number, norm?: NDArray): NDArray => {
      const projected = reshapeND(linear(rmsNorm(x, w.inputNorm, eps), p.w, biases ? p.b : undefined), [1, l, n, d]);
      return norm ? rmsNorm(projected, norm, eps) : projected;
    };
    const ropeOf = (t: NDArray) => rope(t, { base: variant.ropeBase ?? c.ropeTheta, traditional: false, offsets: [0] });
    const q = swapMiddle(ropeOf(heads(w.q, h, w.qNorm)));
    const k = swapMiddle(ropeOf(heads(w.k, hkv, w.kNorm)));
    const v = swapMiddle(heads(w.v, hkv));
    const attended = attention(q, k, v, { mask: causalMask(l, l), kvHeadOf: (hq, nq, nkv) => Math.floor(hq / (nq / nkv)) });
    const o = linear(reshapeND(swapMiddle(attended), [1, l, h * d]), w.o);
    const hidden = { shape: x.shape, data: x.data.map((xi, i) => xi + o.data[i]) };
    const m = mlp(rmsNorm(hidden, w.postNorm, eps), w.gate, w.up, w.down);
    return { shape: x.shape, data: hidden.data.map((hi, i) => hi + m.data[i]) };
  }

  /** The logits of every position, [L, V]. */
  logits(ids: readonly number[], variant: Float64Variant = {}): NDArray {
    let x = this.embed(ids);
    for (let i = 0; i < this.layers.length; i++) x = this.layer(i, x, variant);
    const normed = rmsNorm(x, this.norm, this.config.rmsNormEps);
    const out = linear(normed, this.head);
    return reshapeND(out, [ids.length, this.config.vocabSize]);
  }
}

/** The best token of a row of logits and its lead over the runner-up. */
export function topTwo(row: ArrayLike<number>): { best: number; margin: number } {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  let second = -Infinity;
  for (let i = 0; i < row.length; i++) if (i !== best && row[i] > second) second = row[i];
  return { best, margin: row[best] - second };
}

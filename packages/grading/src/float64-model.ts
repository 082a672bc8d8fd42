// A Qwen2/Qwen3/Qwen2-MoE forward pass in float64 plain loops (float64.ts), for the fixture models: the independent
// computation behind the model tests' diagnoses (the learner's logits against the same model with one thing
// done wrong) and the greedy margins (a greedy token is only checked where its lead over the runner-up is
// well above the tolerance). Tiny models only: it is written to be obviously right, not fast.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, ModelDir } from '@tiny-llm/tensor-core';
import {
  attention,
  causalMask,
  linear,
  mlp,
  moe,
  reshapeND,
  rmsNorm,
  rope,
  swapMiddle,
  toND,
  type MlpArrays,
  type MoeArrays,
  type MoeVariant,
  type NDArray,
} from './float64.ts';

/** What a model pass may do differently from the real model: the known mistakes of chapters 1.5, 2.1 and 3.3. */
export interface Float64Variant {
  /** The mixture-of-experts layers' mistakes (chapter 3.3). */
  moe?: MoeVariant;
  /** The RoPE base (default config.ropeTheta). */
  ropeBase?: number;
  /** false drops the q/k/v biases. */
  biases?: boolean;
  /** With a cache: every call turns its tokens from position 0, as if the offset were ignored. */
  ignoreOffset?: boolean;
  /** With a cache: every call attends to its own tokens only, as if the cache returned the new keys alone. */
  forgetCache?: boolean;
  /** With a cache: a prefill after cached tokens masks with the top-left aligned causal mask. */
  topLeftMask?: boolean;
}

/** One layer's keys and values so far, [1, Hkv, S, D] each (rotated keys), for passes in several calls. */
export interface Float64LayerCache {
  keys: NDArray | null;
  values: NDArray | null;
}

/** [1, H, S1, D] and [1, H, S2, D] -> [1, H, S1 + S2, D]. */
function concatPositions(a: NDArray | null, b: NDArray): NDArray {
  if (!a) return b;
  const [, h, s1, d] = a.shape;
  const s2 = b.shape[2];
  const data = new Float64Array(h * (s1 + s2) * d);
  for (let i = 0; i < h; i++) {
    data.set(a.data.subarray(i * s1 * d, (i + 1) * s1 * d), i * (s1 + s2) * d);
    data.set(b.data.subarray(i * s2 * d, (i + 1) * s2 * d), (i * (s1 + s2) + s1) * d);
  }
  return { shape: [1, h, s1 + s2, d], data };
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
  /** The layer's MLP: dense, or (Qwen2-MoE's sparse layers) a mixture of experts. */
  mlp: { dense: MlpArrays } | { moe: MoeArrays };
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
    const gated = (prefix: string): MlpArrays => ({
      gate: matrix(`${prefix}.gate_proj`).w,
      up: matrix(`${prefix}.up_proj`).w,
      down: matrix(`${prefix}.down_proj`).w,
    });
    // Qwen2-MoE: every decoder_sparse_step-th layer is sparse, except those in mlp_only_layers.
    const settings = md.config.moe;
    const sparse = (i: number) =>
      settings !== null && settings.numExperts > 0 && !settings.mlpOnlyLayers.includes(i) && (i + 1) % settings.decoderSparseStep === 0;
    const mixture = (prefix: string): MoeArrays => ({
      router: matrix(`${prefix}.gate`).w,
      experts: Array.from({ length: settings!.numExperts }, (_, e) => gated(`${prefix}.experts.${e}`)),
      shared: md.has(`${prefix}.shared_expert.gate_proj.weight`) ? gated(`${prefix}.shared_expert`) : undefined,
      sharedGate: vector(`${prefix}.shared_expert_gate.weight`),
      k: settings!.numExpertsPerTok,
      normTopkProb: settings!.normTopkProb,
    });
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
        mlp: sparse(i) ? { moe: mixture(`${p}.mlp`) } : { dense: gated(`${p}.mlp`) },
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

  /**
   * One decoder layer on x [1, L, E], causal: at positions 0..L-1, or, with a cache, after the cache's S tokens
   * (at positions S..S+L-1), appending the new keys and values to it.
   */
  layer(
    index: number,
    x: NDArray,
    variant: Float64Variant = {},
    cache: Float64LayerCache = { keys: null, values: null },
    position = cache.keys ? cache.keys.shape[2] : 0,
  ): NDArray {
    const w = this.layers[index];
    const eps = this.config.rmsNormEps;
    const o = this.attentionOf(index, x, variant, cache, position);
    const hidden = { shape: x.shape, data: x.data.map((xi, i) => xi + o.data[i]) };
    const normed = rmsNorm(hidden, w.postNorm, eps);
    const m = 'moe' in w.mlp ? moe(normed, w.mlp.moe, variant.moe) : mlp(normed, w.mlp.dense.gate, w.mlp.dense.up, w.mlp.dense.down);
    return { shape: x.shape, data: hidden.data.map((hi, i) => hi + m.data[i]) };
  }

  /**
   * The two halves of layer `index` on x [1, L, E] at positions 0..L-1, each as the layer adds it to its
   * residual stream: attention = attn(norm1(x)) through o_proj, mlp = mlp(norm2(x + attention)). Tensor
   * parallelism (chapter 3.6) sums these over its ranks.
   */
  layerHalves(index: number, x: NDArray): { attention: NDArray; mlp: NDArray } {
    const attention = this.attentionOf(index, x, {}, { keys: null, values: null }, 0);
    const out = this.layer(index, x);
    return { attention, mlp: { shape: x.shape, data: out.data.map((o, i) => o - x.data[i] - attention.data[i]) } };
  }

  /** Layer `index`'s attention half (arguments as layer's). */
  private attentionOf(index: number, x: NDArray, variant: Float64Variant, cache: Float64LayerCache, position: number): NDArray {
    const c = this.config;
    const w = this.layers[index];
    const [, l] = x.shape;
    const { numAttentionHeads: h, numKeyValueHeads: hkv, headDim: d, rmsNormEps: eps } = c;
    const biases = variant.biases ?? true;
    const heads = (p: { w: NDArray; b?: NDArray }, n: number, norm?: NDArray): NDArray => {
      const projected = reshapeND(linear(rmsNorm(x, w.inputNorm, eps), p.w, biases ? p.b : undefined), [1, l, n, d]);
      return norm ? rmsNorm(projected, norm, eps) : projected;
    };
    const cached = cache.keys ? cache.keys.shape[2] : 0;
    const offset = variant.ignoreOffset ? 0 : position;
    const ropeOf = (t: NDArray) => rope(t, { base: variant.ropeBase ?? c.ropeTheta, traditional: false, offsets: [offset] });
    const q = swapMiddle(ropeOf(heads(w.q, h, w.qNorm)));
    cache.keys = concatPositions(cache.keys, swapMiddle(ropeOf(heads(w.k, hkv, w.kNorm))));
    cache.values = concatPositions(cache.values, swapMiddle(heads(w.v, hkv)));
    const mask = causalMask(l, cached + l, variant.topLeftMask ? 'top-left' : 'bottom-right');
    const attended = attention(q, cache.keys, cache.values, { mask, kvHeadOf: (hq, nq, nkv) => Math.floor(hq / (nq / nkv)) });
    return linear(reshapeND(swapMiddle(attended), [1, l, h * d]), w.o);
  }

  /** The logits of every position, [L, V]. */
  logits(ids: readonly number[], variant: Float64Variant = {}): NDArray {
    return this.logitsInCalls(ids, [ids.length], variant);
  }

  /**
   * The logits of every position, [L, V], computed as a model with a KV cache does: in calls of `lengths`
   * tokens (a prefill, then one token at a time: [n, 1, 1, ...]), each after the tokens of the calls before.
   */
  logitsInCalls(ids: readonly number[], lengths: readonly number[], variant: Float64Variant = {}): NDArray {
    const caches: Float64LayerCache[] = this.layers.map(() => ({ keys: null, values: null }));
    const vocab = this.config.vocabSize;
    const out = new Float64Array(ids.length * vocab);
    let start = 0;
    for (const length of lengths) {
      let x = this.embed(ids.slice(start, start + length));
      for (let i = 0; i < this.layers.length; i++) {
        if (variant.forgetCache) caches[i] = { keys: null, values: null };
        x = this.layer(i, x, variant, caches[i], start);
      }
      out.set(linear(rmsNorm(x, this.norm, this.config.rmsNormEps), this.head).data, start * vocab);
      start += length;
    }
    return { shape: [ids.length, vocab], data: out };
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

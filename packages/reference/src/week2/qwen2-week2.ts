// Chapter 2.1: Qwen2 with a KV cache, built from the week 1 pieces of the same solution.
//
// What changes from week 1:
// - forward(ids, offset, cache) runs only the new tokens. Each layer appends their keys and values to its cache
//   and attends over everything cached: a prefill is one call with the prompt, each decode step one call with
//   one token. RoPE turns the new tokens at their absolute positions offset, offset + 1, ... (one offset per
//   batch row: rows of a batch may hold sequences of different lengths, chapter 2.6).
// - The cache says which mask to attend with: 'causal' for a single sequence (its new tokens are the last L of
//   the S cached ones), an explicit mask when the rows of a batch differ (chapter 2.6's BatchingKvCache).
// - Weights stay as the checkpoint stores them: bf16 matrices are read in place by matmul (week 1 widened
//   them to float32 at load, twice the memory), MLX-quantized ones go through chapter 2.2's QuantizedLinear.
//   The embedding table is the exception: a lookup reads a few rows, so it is widened (or dequantized) once.
// - With enableFlashAttention, attention runs chapter 2.4's kernel instead of week 1's grouped attention.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, ModelDir, Tensor } from '@tiny-llm/tensor-core';
import { Embedding, linear, RMSNorm, RoPE, scaledDotProductAttentionGrouped, silu } from '../week1/index.ts';
import { flashAttention } from './flash-attention.ts';
import { KvCache, type AttentionCache } from './kv-cache.ts';
import { QuantizedLinear } from './quantized-matmul.ts';

/** A linear layer's weight as the checkpoint stores it: a tensor (float32, bf16, f16) or MLX-quantized. */
export type Weight = Tensor | tc.QuantizedWeight;

/** x @ w.T + bias with the weight as stored: chapter 2.2's QuantizedLinear, or week 1's linear. */
export class Projection {
  private readonly quantized: QuantizedLinear | null;

  constructor(
    readonly weight: Weight,
    readonly bias?: Tensor,
  ) {
    this.quantized = weight instanceof tc.QuantizedWeight ? new QuantizedLinear(weight, bias) : null;
  }

  forward(x: Tensor): Tensor {
    return this.quantized ? this.quantized.forward(x) : linear(x, this.weight as Tensor, this.bias);
  }
}

export interface Qwen2AttentionWeights {
  q: Projection;
  k: Projection;
  v: Projection;
  o: Projection;
  /** Qwen3: RMSNorm over each head of q and of k, before RoPE. */
  qNorm?: RMSNorm;
  kNorm?: RMSNorm;
}

export interface Qwen2Shape {
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

export interface Qwen2Week2Options {
  /** Attention through chapter 2.4's flash attention kernel instead of week 1's grouped attention. */
  enableFlashAttention?: boolean;
}

/** Qwen2's attention with a KV cache. */
export class Qwen2MultiHeadAttention {
  constructor(
    readonly shape: Qwen2Shape,
    readonly weights: Qwen2AttentionWeights,
    /** One RoPE shared by every layer. */
    readonly rope: RoPE,
    readonly options: Qwen2Week2Options = {},
  ) {}

  /** x [B, L, E], the new tokens of each row at positions offsets[b].. -> [B, L, E]; appends k, v to the cache. */
  forward(x: Tensor, offsets: readonly number[], cache: AttentionCache): Tensor {
    const [b, l] = x.shape;
    const { numHeads: h, numKvHeads: hkv, headDim: d } = this.shape;
    const { q: wq, k: wk, v: wv, o: wo, qNorm, kNorm } = this.weights;
    let q = tc.reshape(wq.forward(x), [b, l, h, d]);
    let k = tc.reshape(wk.forward(x), [b, l, hkv, d]);
    const v = tc.reshape(wv.forward(x), [b, l, hkv, d]);
    if (qNorm && kNorm) {
      q = qNorm.forward(q);
      k = kNorm.forward(k);
    }
    q = this.rope.forward(q, offsets);
    k = this.rope.forward(k, offsets);
    // Heads become a batch dimension, [B, H, L, D]; the cache holds K and V in that layout.
    const heads = (t: Tensor) => tc.transpose(t, [0, 2, 1, 3]);
    const { keys, values, mask } = cache.updateAndFetch(heads(k), heads(v));
    const scale = 1 / Math.sqrt(d);
    const attended = this.options.enableFlashAttention
      ? flashAttention(heads(q), keys, values, { scale, mask })
      : scaledDotProductAttentionGrouped(heads(q), keys, values, scale, mask); // [B, H, L, D]
    return wo.forward(tc.reshape(heads(attended), [b, l, h * d]));
  }
}

/** What a layer's MLP does: week 2's dense Qwen2MLP, or chapter 3.3's mixture of experts. */
export interface LayerMlp {
  /** x [B, L, E] -> [B, L, E]. */
  forward(x: Tensor): Tensor;
}

/** The gated MLP with weights as stored: down(silu(gate(x)) * up(x)). */
export class Qwen2MLP implements LayerMlp {
  constructor(
    readonly gate: Projection,
    readonly up: Projection,
    readonly down: Projection,
  ) {}

  forward(x: Tensor): Tensor {
    return this.down.forward(tc.mul(silu(this.gate.forward(x)), this.up.forward(x)));
  }
}

/** One decoder layer: h = x + attn(norm1(x)); out = h + mlp(norm2(h)). */
export class Qwen2TransformerBlock {
  constructor(
    readonly selfAttn: Qwen2MultiHeadAttention,
    readonly mlp: LayerMlp,
    readonly inputLayerNorm: RMSNorm,
    readonly postAttentionLayerNorm: RMSNorm,
  ) {}

  forward(x: Tensor, offsets: readonly number[], cache: AttentionCache): Tensor {
    const h = tc.add(x, this.selfAttn.forward(this.inputLayerNorm.forward(x), offsets, cache));
    return tc.add(h, this.mlp.forward(this.postAttentionLayerNorm.forward(h)));
  }
}

/** The model types week 2 runs (qwen2_moe's sparse layers are chapter 3.3's: Qwen2ModelWeek3). */
const WEEK2_MODEL_TYPES = ['qwen2', 'qwen3'];

/** The layer `prefix` (e.g. "model.layers.0.mlp.up_proj") of a checkpoint, its weight as stored. */
export function projectionOf(modelDir: ModelDir, prefix: string): Projection {
  const { weight, bias } = modelDir.linear(prefix);
  return new Projection(weight, bias ?? undefined);
}

/** Qwen2 (and Qwen3) with a KV cache per layer. */
export class Qwen2ModelWeek2 {
  readonly config: ModelConfig;
  readonly embedding: Embedding;
  readonly layers: Qwen2TransformerBlock[];
  readonly norm: RMSNorm;
  /** The output head; null when it is the embedding (tie_word_embeddings). */
  readonly lmHead: Projection | null;

  static load(dir: string, options: Qwen2Week2Options = {}): Qwen2ModelWeek2 {
    return new Qwen2ModelWeek2(tc.openModelDir(dir), options);
  }

  constructor(modelDir: ModelDir, options: Qwen2Week2Options = {}) {
    const config = modelDir.config;
    const types = this.modelTypes();
    if (!types.includes(config.modelType)) {
      throw new Error(`${new.target.name}: ${modelDir.dir} is a ${config.modelType} model; it runs ${types.join(' and ')}`);
    }
    this.config = config;
    const { hiddenSize, headDim, rmsNormEps } = config;
    const projection = (prefix: string) => projectionOf(modelDir, prefix);
    const norm = (name: string, size: number) => new RMSNorm(size, modelDir.weight(name), rmsNormEps);

    const table = modelDir.linear('model.embed_tokens').weight;
    this.embedding = new Embedding(config.vocabSize, hiddenSize, table instanceof tc.QuantizedWeight ? tc.dequantize(table) : table);
    const rope = new RoPE(headDim, config.maxPositionEmbeddings, config.ropeTheta, false);
    const shape = { hiddenSize, numHeads: config.numAttentionHeads, numKvHeads: config.numKeyValueHeads, headDim };
    this.layers = Array.from({ length: config.numHiddenLayers }, (_, i) => {
      const p = `model.layers.${i}`;
      const weights: Qwen2AttentionWeights = {
        q: projection(`${p}.self_attn.q_proj`),
        k: projection(`${p}.self_attn.k_proj`),
        v: projection(`${p}.self_attn.v_proj`),
        o: projection(`${p}.self_attn.o_proj`),
        qNorm: config.qkNorm ? norm(`${p}.self_attn.q_norm.weight`, headDim) : undefined,
        kNorm: config.qkNorm ? norm(`${p}.self_attn.k_norm.weight`, headDim) : undefined,
      };
      return new Qwen2TransformerBlock(
        new Qwen2MultiHeadAttention(shape, weights, rope, options),
        this.mlpOf(modelDir, i),
        norm(`${p}.input_layernorm.weight`, hiddenSize),
        norm(`${p}.post_attention_layernorm.weight`, hiddenSize),
      );
    });
    this.norm = norm('model.norm.weight', hiddenSize);
    this.lmHead = config.tieWordEmbeddings ? null : projection('lm_head');
  }

  /** The model types this model runs (week 3's model adds qwen2_moe). */
  protected modelTypes(): readonly string[] {
    return WEEK2_MODEL_TYPES;
  }

  /** Layer i's MLP (week 3's model puts a mixture of experts in the sparse layers of Qwen2-MoE). */
  protected mlpOf(modelDir: ModelDir, i: number): LayerMlp {
    const p = `model.layers.${i}.mlp`;
    return new Qwen2MLP(
      projectionOf(modelDir, `${p}.gate_proj`),
      projectionOf(modelDir, `${p}.up_proj`),
      projectionOf(modelDir, `${p}.down_proj`),
    );
  }

  /** An empty cache for each layer. */
  newCache(): KvCache[] {
    return this.layers.map(() => new KvCache());
  }

  /**
   * ids int32 [B, L]: the next L tokens of B sequences, row b's first one at position offset (or offset[b]),
   * after the tokens its caches hold -> logits float32 [B, L, vocab]. Appends the L tokens to every cache.
   */
  forward(ids: Tensor, offset: number | readonly number[], cache: readonly AttentionCache[]): Tensor {
    if (ids.ndim !== 2 || (ids.dtype !== 'int32' && ids.dtype !== 'uint32')) {
      throw new RangeError(`Qwen2ModelWeek2.forward: expected token ids of shape [B, L] (int32), got ${ids.describe()}`);
    }
    if (cache.length !== this.layers.length) {
      throw new RangeError(`Qwen2ModelWeek2.forward: expected one cache per layer (${this.layers.length}), got ${cache.length}`);
    }
    const offsets = typeof offset === 'number' ? new Array<number>(ids.shape[0]).fill(offset) : offset;
    return tc.tidy(() => {
      let h = this.embedding.forward(ids);
      for (let i = 0; i < this.layers.length; i++) {
        // A scope per layer: its temporaries are freed before the next layer runs.
        const next = tc.tidy(() => this.layers[i].forward(h, offsets, cache[i]));
        h.dispose();
        h = next;
      }
      h = this.norm.forward(h);
      return this.lmHead ? this.lmHead.forward(h) : this.embedding.asLinear(h);
    });
  }
}

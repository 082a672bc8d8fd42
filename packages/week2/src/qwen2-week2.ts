// Chapter 2.1: Qwen2 with a KV cache, built from your week 1 pieces.
// Read docs/week2/2.1-kv-cache.md, then replace each `throw` with your code. Loading (the constructors) is
// given: it is week 1's, with the weights kept as stored.
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
import { Embedding, linear, RMSNorm, RoPE, silu } from '@tiny-llm/week1';
import { NotImplemented } from '@tiny-llm/week1/not-implemented';
import type { KvCache, AttentionCache } from './kv-cache.ts';
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

  /**
   * x [B, L, E], the new tokens of row b at positions offsets[b], offsets[b] + 1, ... -> [B, L, E].
   *
   * As week 1's attention, with three changes:
   * 1. RoPE turns q and k at the tokens' positions: this.rope.forward(q, offsets).
   * 2. k and v, transposed to [B, Hkv, L, D], go into the cache: `const { keys, values, mask } =
   *    cache.updateAndFetch(k, v)` returns every cached key and value [B, Hkv, S, D] and the mask to use.
   * 3. Attend over all of them: scaledDotProductAttentionGrouped(q, keys, values, 1 / sqrt(D), mask), or,
   *    when this.options.enableFlashAttention, flashAttention(q, keys, values, { scale, mask }) (chapter 2.4).
   * Qwen3 (this.weights.qNorm and kNorm): normalise each head of q and k before RoPE, as in week 1.
   */
  forward(x: Tensor, offsets: readonly number[], cache: AttentionCache): Tensor {
    throw new NotImplemented('2.1', 'Qwen2MultiHeadAttention.forward');
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

  /** x [B, L, E] -> [B, L, E]: week 1's pre-norm residual block, passing offsets and cache to the attention. */
  forward(x: Tensor, offsets: readonly number[], cache: AttentionCache): Tensor {
    throw new NotImplemented('2.1', 'Qwen2TransformerBlock.forward');
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

  /** An empty KvCache for each layer. */
  newCache(): KvCache[] {
    throw new NotImplemented('2.1', 'Qwen2ModelWeek2.newCache');
  }

  /**
   * ids int32 [B, L]: the next L tokens of B sequences, row b's first one at position offset (a number for
   * every row, or one per row) after the tokens its caches hold -> logits float32 [B, L, vocab]. Appends the L
   * tokens to every layer's cache (cache[i] is layer i's).
   *
   * A prefill is forward(promptIds, 0, cache); each decode step is forward([[token]], tokensSoFar, cache).
   * As week 1's forward otherwise: the embedding, each layer (in a tc.tidy of its own), the final norm, the
   * head (this.lmHead, or the tied embedding.asLinear).
   */
  forward(ids: Tensor, offset: number | readonly number[], cache: readonly AttentionCache[]): Tensor {
    throw new NotImplemented('2.1', 'Qwen2ModelWeek2.forward');
  }
}

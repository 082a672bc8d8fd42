import type { ModelConfig, ModelDir, Tensor } from '@tiny-llm/tensor-core';
import { NotImplemented } from './not-implemented.ts';
import type { RMSNorm } from './norm-and-mlp.ts';
import type { RoPE } from './positional-encoding.ts';

/**
 * The token embedding: one row of E numbers per token id, weight [V, E] (`model.embed_tokens.weight`).
 */
export class Embedding {
  constructor(
    readonly vocabSize: number,
    readonly embeddingDim: number,
    readonly weight: Tensor,
  ) {}

  /**
   * ids (int32, any shape, e.g. [B, L]) -> their rows, [...ids.shape, E].
   * Hint: `tc.take(weight, ids, 0)` gathers rows.
   */
  forward(ids: Tensor): Tensor {
    throw new NotImplemented('1.5', 'Embedding.forward');
  }

  /**
   * x [..., E] -> logits [..., V]: x @ weight.T, the score of each token is the dot product of x with its
   * embedding row. Models with tied embeddings (config tie_word_embeddings) use this as their output head.
   */
  asLinear(x: Tensor): Tensor {
    throw new NotImplemented('1.5', 'Embedding.asLinear');
  }
}

export interface Qwen2AttentionOptions {
  /** E */
  hiddenSize: number;
  /** H, the query heads. */
  numHeads: number;
  /** Hkv, the key/value heads (H is a multiple of Hkv). */
  numKvHeads: number;
  /** D: E / H in Qwen2; explicit (and possibly different) in Qwen3. */
  headDim: number;
  /** self_attn.q_proj.weight [H * D, E] */
  wq: Tensor;
  /** self_attn.k_proj.weight [Hkv * D, E] */
  wk: Tensor;
  /** self_attn.v_proj.weight [Hkv * D, E] */
  wv: Tensor;
  /** self_attn.o_proj.weight [E, H * D] (no bias) */
  wo: Tensor;
  /** Qwen2's projection biases: self_attn.{q,k,v}_proj.bias, [H * D], [Hkv * D], [Hkv * D]. Qwen3 has none. */
  bq?: Tensor;
  bk?: Tensor;
  bv?: Tensor;
  /** The positions the RoPE tables cover (config max_position_embeddings). */
  maxSeqLen: number;
  /** The RoPE base: config rope_theta (1e6 for Qwen2, not RoPE's default 10000). */
  theta: number;
  /** Qwen3 only: self_attn.q_norm.weight and k_norm.weight [D], an RMSNorm over each head of q and of k. */
  qNorm?: Tensor;
  kNorm?: Tensor;
  /** The eps of qNorm and kNorm (config rms_norm_eps). */
  rmsNormEps?: number;
  /**
   * Optional: one RoPE shared by every layer, so that the cos/sin tables are computed once per model. When
   * it is absent, build `new RoPE(headDim, maxSeqLen, theta, false)` yourself.
   */
  rope?: RoPE;
}

/**
 * Qwen2's attention:
 *   q = linear(x, wq, bq) [B, L, H*D] -> reshape [B, L, H, D]    (k and v: [B, L, Hkv, D])
 *   (Qwen3: q = qNorm(q), k = kNorm(k), an RMSNorm over the last axis D of each head)
 *   q, k = RoPE(q), RoPE(k)        non-traditional, base theta, positions 0..L-1
 *   transpose q, k, v to [B, heads, L, D]
 *   o = scaledDotProductAttentionGrouped(q, k, v, 1 / sqrt(D), mask)   [B, H, L, D]
 *   transpose back to [B, L, H, D], reshape to [B, L, H*D], return linear(o, wo)   [B, L, E]
 * Widen the weights to float32 in the constructor (not on every call) and build the RoPE there.
 */
export class Qwen2MultiHeadAttention {
  constructor(options: Qwen2AttentionOptions) {
    throw new NotImplemented('1.5', 'Qwen2MultiHeadAttention (store the weights, build the RoPE)');
  }

  /** x [B, L, E] -> [B, L, E]. mask: 'causal', an additive tensor broadcastable to [B, H, L, L], or none. */
  forward(x: Tensor, mask?: Tensor | 'causal'): Tensor {
    throw new NotImplemented('1.5', 'Qwen2MultiHeadAttention.forward');
  }
}

export interface Qwen2BlockOptions extends Qwen2AttentionOptions {
  /** I, the MLP's hidden size (config intermediate_size). */
  intermediateSize: number;
  /** mlp.gate_proj.weight [I, E] */
  wGate: Tensor;
  /** mlp.up_proj.weight [I, E] */
  wUp: Tensor;
  /** mlp.down_proj.weight [E, I] */
  wDown: Tensor;
  /** input_layernorm.weight [E] */
  wInputNorm: Tensor;
  /** post_attention_layernorm.weight [E] */
  wPostAttentionNorm: Tensor;
  /** The eps of the block's RMSNorms (config rms_norm_eps). */
  rmsNormEps: number;
}

/**
 * One decoder layer (`model.layers.{i}.*`), pre-norm with residual connections:
 *   h   = x + selfAttn(inputLayerNorm(x), mask)
 *   out = h + mlp(postAttentionLayerNorm(h))
 * Build the attention, your Qwen2MLP and two RMSNorms in the constructor.
 */
export class Qwen2TransformerBlock {
  constructor(options: Qwen2BlockOptions) {
    throw new NotImplemented('1.5', 'Qwen2TransformerBlock (build the attention, the MLP and the two norms)');
  }

  /** x [B, L, E] -> [B, L, E] */
  forward(x: Tensor, mask?: Tensor | 'causal'): Tensor {
    throw new NotImplemented('1.5', 'Qwen2TransformerBlock.forward');
  }
}

/**
 * The whole model, built from a checkpoint:
 *   model.embed_tokens.weight [V, E]                      -> embedding
 *   model.layers.{i}.self_attn.{q,k,v,o}_proj.{weight,bias}, model.layers.{i}.mlp.{gate,up,down}_proj.weight,
 *   model.layers.{i}.{input,post_attention}_layernorm.weight       -> layers[i], i < config.numHiddenLayers
 *   model.norm.weight [E]                                 -> norm
 *   lm_head.weight [V, E], only when !config.tieWordEmbeddings (tied models reuse embedding.asLinear)
 *
 * `modelDir.config` has every number (hiddenSize, numAttentionHeads, numKeyValueHeads, headDim,
 * intermediateSize, rmsNormEps, ropeTheta, maxPositionEmbeddings, tieWordEmbeddings, qkNorm, ...).
 * `modelDir.weight(name)` returns a tensor; `modelDir.linear(prefix)` returns `{ weight, bias }` of a linear
 * layer (or the embedding), where `weight` is a `tc.QuantizedWeight` when the checkpoint is MLX-quantized:
 * week 1 turns those into float32 at load with `tc.dequantize(weight)`. Biases and norms are never quantized.
 *
 * Week 1 runs model_type qwen2 and qwen3. Refuse anything else (qwen2_moe needs chapter 3.3) with an error
 * that names the model type.
 */
export class Qwen2ModelWeek1 {
  readonly config!: ModelConfig;
  readonly embedding!: Embedding;
  readonly layers!: Qwen2TransformerBlock[];
  /** The final RMSNorm, applied after the last layer. */
  readonly norm!: RMSNorm;
  /** lm_head.weight [V, E] (float32) when the model has its own output head; null when it is tied. */
  readonly lmHead!: Tensor | null;

  /**
   * Opens a checkpoint directory (config.json + *.safetensors) with `tc.openModelDir(dir)`, whose errors
   * already say what is wrong (e.g. "... is not a model directory: it has no config.json"), and builds the
   * model from it.
   */
  static load(dir: string): Qwen2ModelWeek1 {
    throw new NotImplemented('1.5', 'Qwen2ModelWeek1.load');
  }

  constructor(modelDir: ModelDir) {
    throw new NotImplemented('1.5', 'Qwen2ModelWeek1 (build the layers from modelDir)');
  }

  /**
   * ids int32 [B, L] -> logits float32 [B, L, V]: embedding, every layer with the 'causal' mask (none
   * needed when L = 1), the final norm, then the output head (embedding.asLinear when tied, else lm_head).
   * Wrap the body in `tc.tidy(() => ...)`: the intermediate tensors are freed when it returns. Give each
   * layer a scope of its own too, `const next = tc.tidy(() => layer.forward(h, mask)); h.dispose(); h = next;`,
   * so that a layer's temporaries are freed before the next one runs (one scope around the whole pass holds
   * every layer's until the end: several times the memory on a long prompt).
   */
  forward(ids: Tensor): Tensor {
    throw new NotImplemented('1.5', 'Qwen2ModelWeek1.forward');
  }
}

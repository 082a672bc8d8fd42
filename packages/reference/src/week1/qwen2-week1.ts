// Chapter 1.5: the Qwen2 model, assembled from the pieces of chapters 1.1-1.4 and loaded from a checkpoint.
// Qwen3 (the extension task) is the same model with per-head RMSNorms on q and k, an explicit head_dim and
// no attention biases, so the same classes run it.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, ModelDir, Tensor } from '@tiny-llm/tensor-core';
import { linear } from './attention.ts';
import { scaledDotProductAttentionGrouped } from './grouped-attention.ts';
import { Qwen2MLP, RMSNorm } from './norm-and-mlp.ts';
import { RoPE } from './positional-encoding.ts';

/** Week 1 computes in float32: half-precision weights are widened once, at load time. */
const float32 = (x: Tensor): Tensor => (x.dtype === 'float32' ? x : tc.astype(x, 'float32'));

function expectShape(owner: string, name: string, t: Tensor | undefined, shape: readonly number[]): void {
  if (!t) return;
  if (t.ndim !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new RangeError(`${owner}: expected ${name} of shape ${tc.formatShape(shape)}, got ${t.describe()}`);
  }
}

/** The token embedding: a table of one row per token id, weight [vocabSize, embeddingDim]. */
export class Embedding {
  readonly weight: Tensor;

  constructor(
    readonly vocabSize: number,
    readonly embeddingDim: number,
    weight: Tensor,
  ) {
    expectShape('Embedding', 'weight', weight, [vocabSize, embeddingDim]);
    this.weight = float32(weight);
  }

  /** ids (int32, any shape) -> their rows, [...ids.shape, embeddingDim]. */
  forward(ids: Tensor): Tensor {
    return tc.take(this.weight, ids, 0);
  }

  /**
   * x [..., embeddingDim] -> logits [..., vocabSize]: the score of each token is the dot product of x with
   * the token's embedding row, x @ weight.T (the output head of models with tied embeddings).
   */
  asLinear(x: Tensor): Tensor {
    return linear(x, this.weight);
  }
}

export interface Qwen2AttentionOptions {
  hiddenSize: number;
  /** Query heads. */
  numHeads: number;
  /** Key/value heads (numHeads is a multiple of it). */
  numKvHeads: number;
  /** Features per head: hiddenSize / numHeads in Qwen2; explicit (and possibly different) in Qwen3. */
  headDim: number;
  /** [numHeads * headDim, hiddenSize] */
  wq: Tensor;
  /** [numKvHeads * headDim, hiddenSize] */
  wk: Tensor;
  /** [numKvHeads * headDim, hiddenSize] */
  wv: Tensor;
  /** [hiddenSize, numHeads * headDim] */
  wo: Tensor;
  /** Qwen2's projection biases: [numHeads * headDim], [numKvHeads * headDim], [numKvHeads * headDim]. */
  bq?: Tensor;
  bk?: Tensor;
  bv?: Tensor;
  /** Positions the RoPE tables cover. */
  maxSeqLen: number;
  /** The RoPE base (config rope_theta). */
  theta: number;
  /** Qwen3: RMSNorm weights [headDim] applied to each head of q and of k, before RoPE. */
  qNorm?: Tensor;
  kNorm?: Tensor;
  /** The eps of qNorm and kNorm. */
  rmsNormEps?: number;
  /** A RoPE shared by every layer (tables computed once per model); built from maxSeqLen and theta if absent. */
  rope?: RoPE;
}

/** Qwen2's attention: biased q/k/v projections, RoPE on q and k, grouped-query attention, output projection. */
export class Qwen2MultiHeadAttention {
  readonly hiddenSize: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly wq: Tensor;
  readonly wk: Tensor;
  readonly wv: Tensor;
  readonly wo: Tensor;
  readonly bq?: Tensor;
  readonly bk?: Tensor;
  readonly bv?: Tensor;
  readonly qNorm?: RMSNorm;
  readonly kNorm?: RMSNorm;
  readonly rope: RoPE;

  constructor(options: Qwen2AttentionOptions) {
    const { hiddenSize, numHeads, numKvHeads, headDim } = options;
    const owner = 'Qwen2MultiHeadAttention';
    if (numHeads % numKvHeads !== 0) {
      throw new RangeError(`${owner}: numHeads (${numHeads}) must be a multiple of numKvHeads (${numKvHeads})`);
    }
    expectShape(owner, 'wq', options.wq, [numHeads * headDim, hiddenSize]);
    expectShape(owner, 'wk', options.wk, [numKvHeads * headDim, hiddenSize]);
    expectShape(owner, 'wv', options.wv, [numKvHeads * headDim, hiddenSize]);
    expectShape(owner, 'wo', options.wo, [hiddenSize, numHeads * headDim]);
    expectShape(owner, 'bq', options.bq, [numHeads * headDim]);
    expectShape(owner, 'bk', options.bk, [numKvHeads * headDim]);
    expectShape(owner, 'bv', options.bv, [numKvHeads * headDim]);
    if (!options.qNorm !== !options.kNorm) throw new RangeError(`${owner}: qNorm and kNorm come together (Qwen3) or not at all`);
    this.hiddenSize = hiddenSize;
    this.numHeads = numHeads;
    this.numKvHeads = numKvHeads;
    this.headDim = headDim;
    this.wq = float32(options.wq);
    this.wk = float32(options.wk);
    this.wv = float32(options.wv);
    this.wo = float32(options.wo);
    this.bq = options.bq && float32(options.bq);
    this.bk = options.bk && float32(options.bk);
    this.bv = options.bv && float32(options.bv);
    const eps = options.rmsNormEps ?? 1e-6;
    if (options.qNorm) this.qNorm = new RMSNorm(headDim, options.qNorm, eps);
    if (options.kNorm) this.kNorm = new RMSNorm(headDim, options.kNorm, eps);
    if (options.rope && (options.rope.dims !== headDim || options.rope.traditional)) {
      throw new RangeError(`${owner}: the shared RoPE must be a non-traditional RoPE of ${headDim} dims`);
    }
    this.rope = options.rope ?? new RoPE(headDim, options.maxSeqLen, options.theta, false);
  }

  /** x [B, L, hiddenSize] -> [B, L, hiddenSize]; mask: additive, broadcastable to [B, H, L, L], or 'causal'. */
  forward(x: Tensor, mask?: Tensor | 'causal'): Tensor {
    if (x.ndim !== 3 || x.shape[2] !== this.hiddenSize) {
      throw new RangeError(`Qwen2MultiHeadAttention: expected x of shape [B, L, ${this.hiddenSize}], got ${x.describe()}`);
    }
    const [b, l] = x.shape;
    const { numHeads: h, numKvHeads: hkv, headDim: d } = this;
    let q = tc.reshape(linear(x, this.wq, this.bq), [b, l, h, d]);
    let k = tc.reshape(linear(x, this.wk, this.bk), [b, l, hkv, d]);
    const v = tc.reshape(linear(x, this.wv, this.bv), [b, l, hkv, d]);
    // Qwen3 normalises each head of q and k (over its d features) before rotating them.
    if (this.qNorm && this.kNorm) {
      q = this.qNorm.forward(q);
      k = this.kNorm.forward(k);
    }
    q = this.rope.forward(q, 0);
    k = this.rope.forward(k, 0);
    // Heads become a batch dimension: [B, L, H, D] -> [B, H, L, D].
    const heads = scaledDotProductAttentionGrouped(
      tc.transpose(q, [0, 2, 1, 3]),
      tc.transpose(k, [0, 2, 1, 3]),
      tc.transpose(v, [0, 2, 1, 3]),
      1 / Math.sqrt(d),
      mask,
    ); // [B, H, L, D]
    const merged = tc.reshape(tc.transpose(heads, [0, 2, 1, 3]), [b, l, h * d]);
    return linear(merged, this.wo);
  }
}

export interface Qwen2BlockOptions extends Qwen2AttentionOptions {
  /** The MLP's hidden size (config intermediate_size). */
  intermediateSize: number;
  /** [intermediateSize, hiddenSize] */
  wGate: Tensor;
  /** [intermediateSize, hiddenSize] */
  wUp: Tensor;
  /** [hiddenSize, intermediateSize] */
  wDown: Tensor;
  /** input_layernorm.weight [hiddenSize] */
  wInputNorm: Tensor;
  /** post_attention_layernorm.weight [hiddenSize] */
  wPostAttentionNorm: Tensor;
  /** The eps of every RMSNorm of the block (config rms_norm_eps). */
  rmsNormEps: number;
}

/** One decoder layer, pre-norm: h = x + attn(inputNorm(x)); out = h + mlp(postAttentionNorm(h)). */
export class Qwen2TransformerBlock {
  readonly selfAttn: Qwen2MultiHeadAttention;
  readonly mlp: Qwen2MLP;
  readonly inputLayerNorm: RMSNorm;
  readonly postAttentionLayerNorm: RMSNorm;

  constructor(options: Qwen2BlockOptions) {
    const { hiddenSize, intermediateSize, rmsNormEps } = options;
    this.selfAttn = new Qwen2MultiHeadAttention(options);
    this.mlp = new Qwen2MLP(hiddenSize, intermediateSize, float32(options.wGate), float32(options.wUp), float32(options.wDown));
    this.inputLayerNorm = new RMSNorm(hiddenSize, options.wInputNorm, rmsNormEps);
    this.postAttentionLayerNorm = new RMSNorm(hiddenSize, options.wPostAttentionNorm, rmsNormEps);
  }

  /** x [B, L, hiddenSize] -> [B, L, hiddenSize]. */
  forward(x: Tensor, mask?: Tensor | 'causal'): Tensor {
    // The residual stream x is never normalised itself: each sublayer reads a normalised copy and adds its
    // result back, so the stream carries every layer's contribution (and gradients) straight through.
    const h = tc.add(x, this.selfAttn.forward(this.inputLayerNorm.forward(x), mask));
    return tc.add(h, this.mlp.forward(this.postAttentionLayerNorm.forward(h)));
  }
}

/** The model types week 1 runs (qwen2_moe needs the mixture-of-experts block of chapter 3.3). */
const WEEK1_MODEL_TYPES = ['qwen2', 'qwen3'];

/** Qwen2 (and Qwen3) for causal language modelling, every weight in float32. */
export class Qwen2ModelWeek1 {
  readonly config: ModelConfig;
  readonly embedding: Embedding;
  readonly layers: Qwen2TransformerBlock[];
  readonly norm: RMSNorm;
  /** lm_head.weight [vocab, hidden] when the model has its own output head; null when it is tied. */
  readonly lmHead: Tensor | null;

  /** Opens a checkpoint directory (config.json + safetensors) and builds the model. */
  static load(dir: string): Qwen2ModelWeek1 {
    return new Qwen2ModelWeek1(tc.openModelDir(dir));
  }

  constructor(modelDir: ModelDir) {
    const config = modelDir.config;
    if (!WEEK1_MODEL_TYPES.includes(config.modelType)) {
      const why = config.modelType === 'qwen2_moe' ? ': its mixture-of-experts layers come in chapter 3.3' : '';
      throw new Error(
        `Qwen2ModelWeek1: ${modelDir.dir} is a ${config.modelType} model, which the week 1 model does not support ` +
          `(supported: ${WEEK1_MODEL_TYPES.join(', ')})${why}`,
      );
    }
    if (config.ropeScaling) {
      throw new Error(
        `Qwen2ModelWeek1: ${modelDir.dir} uses RoPE scaling ${JSON.stringify(config.ropeScaling)}, which week 1 does not implement`,
      );
    }
    this.config = config;
    const { hiddenSize, headDim, rmsNormEps } = config;

    // A linear (or embedding) weight as float32: MLX-quantized ones are dequantized here, once; week 2
    // keeps them quantized and multiplies by them directly.
    const weightOf = (prefix: string): { weight: Tensor; bias?: Tensor } => {
      const { weight, bias } = modelDir.linear(prefix);
      const w = weight instanceof tc.QuantizedWeight ? tc.dequantize(weight) : float32(weight);
      return { weight: w, bias: bias ? float32(bias) : undefined };
    };
    const tensor = (name: string) => float32(modelDir.weight(name));

    this.embedding = new Embedding(config.vocabSize, hiddenSize, weightOf('model.embed_tokens').weight);
    // One set of RoPE tables for every layer.
    const rope = new RoPE(headDim, config.maxPositionEmbeddings, config.ropeTheta, false);
    this.layers = [];
    for (let i = 0; i < config.numHiddenLayers; i++) {
      const p = `model.layers.${i}`;
      const q = weightOf(`${p}.self_attn.q_proj`);
      const k = weightOf(`${p}.self_attn.k_proj`);
      const v = weightOf(`${p}.self_attn.v_proj`);
      this.layers.push(
        new Qwen2TransformerBlock({
          hiddenSize,
          numHeads: config.numAttentionHeads,
          numKvHeads: config.numKeyValueHeads,
          headDim,
          wq: q.weight,
          wk: k.weight,
          wv: v.weight,
          wo: weightOf(`${p}.self_attn.o_proj`).weight,
          bq: q.bias,
          bk: k.bias,
          bv: v.bias,
          maxSeqLen: config.maxPositionEmbeddings,
          theta: config.ropeTheta,
          rope,
          qNorm: config.qkNorm ? tensor(`${p}.self_attn.q_norm.weight`) : undefined,
          kNorm: config.qkNorm ? tensor(`${p}.self_attn.k_norm.weight`) : undefined,
          rmsNormEps,
          intermediateSize: config.intermediateSize,
          wGate: weightOf(`${p}.mlp.gate_proj`).weight,
          wUp: weightOf(`${p}.mlp.up_proj`).weight,
          wDown: weightOf(`${p}.mlp.down_proj`).weight,
          wInputNorm: tensor(`${p}.input_layernorm.weight`),
          wPostAttentionNorm: tensor(`${p}.post_attention_layernorm.weight`),
        }),
      );
    }
    this.norm = new RMSNorm(hiddenSize, tensor('model.norm.weight'), rmsNormEps);
    this.lmHead = config.tieWordEmbeddings ? null : weightOf('lm_head').weight;
  }

  /** ids int32 [B, L] -> logits float32 [B, L, vocab]: the scores of the token after each position. */
  forward(ids: Tensor): Tensor {
    if (ids.ndim !== 2 || (ids.dtype !== 'int32' && ids.dtype !== 'uint32')) {
      throw new RangeError(`Qwen2ModelWeek1: expected token ids of shape [B, L] (int32), got ${ids.describe()}`);
    }
    // Every intermediate tensor is freed (its buffer pooled for the next call) when the pass returns.
    return tc.tidy(() => {
      const l = ids.shape[1];
      // Each position sees itself and the positions before it; a single token needs no mask.
      const mask = l > 1 ? 'causal' : undefined;
      let h = this.embedding.forward(ids); // [B, L, hidden]
      for (const layer of this.layers) {
        // A scope per layer frees its temporaries (projections, the [B, H, L, L] scores) before the next layer
        // runs, instead of holding every layer's until the pass ends.
        const next = tc.tidy(() => layer.forward(h, mask));
        h.dispose();
        h = next;
      }
      h = this.norm.forward(h);
      return this.lmHead ? linear(h, this.lmHead) : this.embedding.asLinear(h);
    });
  }
}

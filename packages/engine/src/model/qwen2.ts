// The engine's model: Qwen2 / Qwen2.5 / Qwen3 / Qwen2-MoE with a KV cache, the course's week 2 model
// (packages/reference/src/week2/qwen2-week2.ts) with the kernels that exist only for speed swapped in. It
// computes the same function (the tests hold both to the same goldens); what differs is how:
// - forward(ids, cache, offset) runs only the new tokens: each layer appends their keys and values to its
//   cache and attends over everything cached. A prefill is one call with the prompt; each decode step is one
//   call with one token. RoPE rotates the new tokens at their absolute positions offset, offset + 1, ...
// - Weights stay in their file dtype: on the CPU, dense matrices are packed at load into panels (Linear; on
//   another backend matmul reads their transposed views), MLX-quantized ones multiplied by the engine's quantized
//   matmul (4-bit ones packed into panels where the CPU has AVX-512 VNNI). The embedding table is a Linear too,
//   whose lookup reads (and dequantizes or widens) only the rows a call asks for (one native call: Linear.rows).
// - tensor-core's fused kernels: fast.rmsNorm, fast.rope (tables computed once per model, grown on demand),
//   fast.sdpa for the few-query steps; a prefill's attention is chapter 2.4's flash attention kernel ('causal'
//   is aligned to the bottom right, so a prefill after cached tokens masks correctly).
// - Every forward pass runs inside tc.tidy: only the logits it returns and the cache buffers survive it.
// - Fused decode (Qwen2LoadOptions.fusedKernels, on by default): each RMSNorm goes into the projection that reads
//   it, each bias and residual add into the projection that produces it, SwiGLU into down_proj (Linear's
//   fusion: one native call per projection, quantized or dense), and a one-token step's RoPE, cache append and
//   attention are one kernel (native/attention_decode.cc). A dense layer is then five native calls instead of
//   seventeen ops, which on Qwen2-0.5B was a third of a 4-bit decode step.
// - A layer's cache is the request's own buffers (DecodeKvCache: sessions) or its block table in a page pool
//   (PagedLayerCache, chapter 3.1: batch and serve); the decode kernel reads and writes either in place.
// - Qwen2-MoE layers use chapter 3.3's mixture-of-experts block, with the engine's experts (moe.ts).
// - Tensor parallelism (chapter 3.6, Qwen2LoadOptions.tensorParallel): built from one rank's shard of the weights
//   (tensor-parallel/shard.ts), each layer's two halves end in an all-reduce of their partial sums. Rank 0 adds
//   the residual to its partial before the sum, the other ranks do not: the sum is then x + half(x), and the
//   residual stays fused into o_proj and down_proj. Only rank 0 runs the output head.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import { flashAttention } from '@tiny-llm/reference/week2';
import { blockTablesTensor, isSparseLayer, PagedLayerCache, type Qwen2MoeBlock } from '@tiny-llm/reference/week3';
import { loadMoeBlock } from './moe.ts';
import { DecodeKvCache, type LayerCache } from './kv-cache.ts';
import { engineKernels } from './native.ts';
import {
  expectWeightShape,
  fuseWeights,
  GatedMlp,
  type InputNorm,
  Linear,
  type QuantizedPrecision,
  releaseFused,
  type Weight,
} from './linear.ts';

/** Where weights come from: a tensor (or quantized weight) by its Hugging Face name, undefined if absent. */
export type WeightSource = (name: string) => Weight | undefined;

export interface Qwen2LoadOptions {
  /** Called as the layers are built (done of total steps), so that a CLI can draw a progress bar. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Fuse q/k/v and gate/up into one projection each (default true): fewer ops per token. false keeps every
   * projection separate (for comparisons).
   */
  fuse?: boolean;
  /**
   * Run decode steps through the fused kernels (default true): each RMSNorm, bias, residual add and SwiGLU inside
   * the projection next to it (one native call each for quantized weights), and RoPE, the cache update and
   * attention as one kernel (native/attention_decode.cc). false composes the separate ops (for comparisons).
   */
  fusedKernels?: boolean;
  /**
   * Quantized weights multiply float32 activations (native/quantized_matmul.cc), as the chapters' models do, so
   * that the logits match the float64 goldens. Default false: in decode steps (up to 16 tokens a call), 4- and
   * 8-bit weights take activations rounded to int16 per block of 32 values and integer dot products
   * (native/quantized_matmul_int16.cc), as llama.cpp does with int8, within a small KL divergence of the exact
   * path (test/int16-activations.test.ts; docs/engine.md compares their speed).
   */
  exact?: boolean;
  /** Build a rank of a tensor-parallel model from its shard of the weights (see the top of this file). */
  tensorParallel?: TensorParallelRank;
}

/** A rank of a tensor-parallel model (chapter 3.6). */
export interface TensorParallelRank {
  /** Rank 0 adds the residual before the all-reduce and runs the output head; the others do neither. */
  rank: number;
  /** Sums a partial result over the ranks: every rank passes its partial and gets the same sum back. */
  allReduce: (partial: Tensor) => Tensor;
}

const SUPPORTED_MODEL_TYPES = ['qwen2', 'qwen3', 'qwen2_moe'];

/**
 * Passes of up to this many tokens attend in the decode kernel (each new token reads the cache on its own); longer
 * ones, prefills, go through flash attention's tiles, which read each cached block once for many queries.
 */
const KERNEL_MAX_TOKENS = 16;

/**
 * The positions [B] and block tables [B, pages] of B decode rows in a page pool, as pagedAttentionDecode reads
 * them: built once per step for every layer (and in a captured step, the inputs a replay rewrites).
 */
export interface PagedRows {
  positions: Tensor;
  tables: Tensor;
}

/** The PagedRows of rows whose caches (one layer's) are in a page pool. */
function pagedRowsOf(caches: readonly PagedLayerCache[]): PagedRows {
  return {
    positions: tc.tensor(
      Int32Array.from(caches, (c) => c.offset),
      { dtype: 'int32', shape: [caches.length] },
    ),
    tables: blockTablesTensor(caches.map((c) => c.table.pages)),
  };
}

/**
 * The token embedding, in the file's dtype or MLX-quantized; also the output head of tied models. The table is kept
 * as a Linear layer (in whatever layout Linear packs it into): its rows are the lookup, its product the tied head.
 */
export class TokenEmbedding {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  private readonly table: Linear;

  constructor(weight: Weight, vocabSize: number, hiddenSize: number, precision: QuantizedPrecision = {}) {
    expectWeightShape('model.embed_tokens', weight, [vocabSize, hiddenSize]);
    this.vocabSize = vocabSize;
    this.hiddenSize = hiddenSize;
    this.table = new Linear(weight, null, 'model.embed_tokens', precision);
  }

  /** ids int32 [...] -> float32 [..., hidden]. Ids must be in range (the model checks them first). */
  forward(ids: Tensor): Tensor {
    return this.table.rows(ids);
  }

  /** x [..., hidden] -> logits [..., vocab] = x @ table.T (tied output head); `norm` normalises x first. */
  asLinear(x: Tensor, norm: InputNorm | null = null): Tensor {
    return this.table.forward(x, { norm });
  }
}

interface AttentionShape {
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
}

/** Qwen2/Qwen3 attention with a KV cache. */
export class Qwen2Attention {
  /** q, k and v fused into one projection [(Hq + 2 Hkv) * D, hidden] when possible (see fuseWeights)... */
  readonly qkvProj: Linear | null;
  /** ...else three. */
  readonly qProj: Linear | null;
  readonly kProj: Linear | null;
  readonly vProj: Linear | null;
  readonly oProj: Linear;
  /** Qwen3's per-head RMSNorm weights [headDim] of q and k (null in Qwen2). */
  readonly qNorm: Tensor | null;
  readonly kNorm: Tensor | null;
  readonly hasBias: boolean;
  readonly shape: AttentionShape;
  private readonly scale: number;
  /** Decode steps (one token) run the fused attention kernel (needs the fused qkv projection). */
  readonly decodeKernel: boolean;

  constructor(
    shape: AttentionShape,
    prefix: string,
    weight: WeightSource,
    need: (name: string) => Weight,
    fuse = true,
    fusedKernels = true,
    precision: QuantizedPrecision = {},
  ) {
    const { hiddenSize, numHeads, numKvHeads, headDim } = shape;
    this.shape = shape;
    const part = (name: string, out: number, inF: number): { w: Weight; b: Tensor | null; p: string } => {
      const p = `${prefix}.${name}`;
      const w = need(`${p}.weight`);
      expectWeightShape(p, w, [out, inF]);
      const b = weight(`${p}.bias`);
      if (b instanceof tc.QuantizedWeight) throw new TypeError(`${p}.bias is quantized; biases stay unquantized`);
      if (b && (b.ndim !== 1 || b.shape[0] !== out)) throw new RangeError(`${p}.bias: expected shape [${out}], got ${b.describe()}`);
      return { w, b: b ?? null, p };
    };
    const q = part('q_proj', numHeads * headDim, hiddenSize);
    const k = part('k_proj', numKvHeads * headDim, hiddenSize);
    const v = part('v_proj', numKvHeads * headDim, hiddenSize);
    this.hasBias = !!(q.b || k.b || v.b);
    const fused = fuse ? fuseWeights([q.w, k.w, v.w]) : null;
    if (fused) {
      // Missing biases (a checkpoint with some of the three) are zeros of their part.
      const bias = this.hasBias
        ? tc.concat(
            [q, k, v].map((x) => (x.b ? tc.astype(x.b, 'float32') : tc.zeros([x.w.shape[0]]))),
            0,
          )
        : null;
      this.qkvProj = new Linear(fused, bias, `${prefix}.qkv_proj`, precision);
      releaseFused([q.w, k.w, v.w], fused, this.qkvProj);
      this.qProj = this.kProj = this.vProj = null;
    } else {
      this.qkvProj = null;
      [this.qProj, this.kProj, this.vProj] = [q, k, v].map((x) => new Linear(x.w, x.b, x.p, precision));
    }
    const o = part('o_proj', hiddenSize, numHeads * headDim);
    this.oProj = new Linear(o.w, o.b, o.p, precision);
    const norm = (name: string): Tensor | null => {
      const w = weight(`${prefix}.${name}.weight`);
      if (!w) return null;
      if (w instanceof tc.QuantizedWeight || w.ndim !== 1 || w.shape[0] !== headDim) {
        throw new RangeError(`${prefix}.${name}.weight: expected a vector of ${headDim} (head_dim) values, got ${String(w)}`);
      }
      return w;
    };
    this.qNorm = norm('q_norm');
    this.kNorm = norm('k_norm');
    if (!this.qNorm !== !this.kNorm) throw new Error(`${prefix}: has one of q_norm and k_norm but not the other`);
    this.scale = 1 / Math.sqrt(headDim);
    this.decodeKernel = fusedKernels && this.qkvProj !== null && headDim % 2 === 0 && headDim <= 256 && numHeads / numKvHeads <= 64;
  }

  /**
   * A decode step of B requests, one token each, each with a cache of its own (continuous batching): the
   * projections run once for the B rows (matrix products instead of B vector products, the point of batching),
   * the attention on each request's cache in place (no padding, no copy of the caches).
   */
  forwardRows(
    x: Tensor,
    caches: readonly LayerCache[],
    positions: readonly number[],
    rope: tc.fast.RopeTables,
    fusion?: { norm?: InputNorm | null; residual?: Tensor | null },
    pagedRows: PagedRows | null = null,
  ): Tensor {
    const norm = fusion?.norm ?? null;
    const residual = fusion?.residual ?? null;
    const row = (t: Tensor, i: number) => tc.slice(t, [[i, i + 1]]);
    if (!this.canDecodeInKernel(x, rope)) {
      // Without the decode kernel, each row goes through the composed path alone.
      return tc.concat(
        caches.map((cache, i) => this.forward(row(x, i), cache, positions[i], rope, { norm, residual: residual && row(residual, i) })),
        0,
      );
    }
    const { numHeads: h, headDim: d } = this.shape;
    const qkv = this.qkvProj!.forward(x, { norm }); // [B, 1, (Hq + 2 Hkv) * D]
    const attn = tc.empty([x.shape[0], 1, h * d], 'float32');
    this.attendInKernel(qkv, caches, rope, attn, pagedRows);
    qkv.dispose();
    const out = this.oProj.forward(attn, { residual });
    attn.dispose();
    return out;
  }

  private canDecodeInKernel(x: Tensor, rope: tc.fast.RopeTables): boolean {
    return this.decodeKernel && x.backend === tc.cpu && rope.cos.dtype === 'float32';
  }

  /**
   * native/attention_decode.cc: qkv [B, L, (Hq + 2 Hkv) * D], L tokens per row after those in its cache, into attn
   * [B, L, Hq * D]. Rows in a page pool go in one call through their block tables; caches of their own, a call each.
   */
  private attendInKernel(
    qkv: Tensor,
    caches: readonly LayerCache[],
    rope: tc.fast.RopeTables,
    attn: Tensor,
    pagedRows: PagedRows | null = null,
  ): void {
    const { numHeads: h, numKvHeads: hkv, headDim: d, rmsNormEps } = this.shape;
    const norms = [this.qNorm?.native() ?? null, this.kNorm?.native() ?? null, rmsNormEps];
    const paged = caches.filter((c) => c instanceof PagedLayerCache);
    if (paged.length === caches.length) {
      const {
        table: { pool },
        layer,
      } = paged[0];
      tc.tidy(() => {
        const { positions, tables } = pagedRows ?? pagedRowsOf(paged);
        engineKernels().pagedAttentionDecode(
          ...[qkv, rope.cos, rope.sin, positions, pool.keys[layer], pool.values[layer], tables, attn].map((t) => t.native()),
          h,
          hkv,
          this.scale,
          ...norms,
        );
      });
      return;
    }
    if (paged.length > 0) throw new Error('Qwen2Attention: a decode step over caches of two kinds (paged and not)');
    const l = qkv.shape[1];
    (caches as readonly DecodeKvCache[]).forEach((cache, i) => {
      const rowOf = (t: Tensor) => (caches.length === 1 ? t : tc.slice(t, [[i, i + 1]]));
      const { keys, values, offset: position } = cache.reserve(rowOf(qkv).shape[0], hkv, d, l, qkv.backend);
      engineKernels().attentionDecode(
        ...[rowOf(qkv), rope.cos, rope.sin].map((t) => t.native()),
        position,
        keys.native(),
        values.native(),
        rowOf(attn).native(),
        h,
        hkv,
        this.scale,
        ...norms,
      );
      cache.commit(l);
    });
  }

  /**
   * x [B, L, hidden] float32 at positions offset.. offset + L - 1 -> [B, L, hidden]. fusion.norm normalises x
   * first (fused into the q/k/v projection), fusion.residual is added to the output (fused into o_proj).
   */
  forward(
    x: Tensor,
    cache: LayerCache,
    offset: number,
    rope: tc.fast.RopeTables,
    fusion?: { norm?: InputNorm | null; residual?: Tensor | null },
  ): Tensor {
    const [b, l] = x.shape;
    const { numHeads: h, numKvHeads: hkv, headDim: d, rmsNormEps } = this.shape;
    const norm = fusion?.norm ?? null;
    const residual = fusion?.residual ?? null;
    if (l <= KERNEL_MAX_TOKENS && this.canDecodeInKernel(x, rope)) {
      // Decode, or a speculative verification's few tokens: one kernel rotates the new query and key heads,
      // appends the keys and values to the cache and attends over it (the composed form below without its dozen
      // ops and views). On the demo model a pass over 2, 3 and 5 tokens cost 1.98, 2.12 and 3.36 one-token steps
      // composed, 1.12, 1.34 and 2.45 here (bench/speculative.ts).
      const qkv = this.qkvProj!.forward(x, { norm }); // [B, L, (Hq + 2 Hkv) * D]
      const attn = tc.empty([b, l, h * d], 'float32');
      this.attendInKernel(qkv, [cache], rope, attn);
      qkv.dispose();
      const out = this.oProj.forward(attn, { residual });
      attn.dispose();
      return out;
    }
    let q: Tensor;
    let k: Tensor;
    let v: Tensor;
    if (this.qkvProj) {
      // One projection; q, k and v are views of its heads [B, L, Hq + 2 Hkv, D].
      const qkv = tc.reshape(this.qkvProj.forward(x, { norm }), [b, l, h + 2 * hkv, d]);
      v = tc.slice(qkv, [null, null, [h + hkv, h + 2 * hkv]]);
      if (this.qNorm && this.kNorm) {
        q = tc.fast.rope(tc.fast.rmsNorm(tc.slice(qkv, [null, null, [0, h]]), this.qNorm, rmsNormEps), rope, offset);
        k = tc.fast.rope(tc.fast.rmsNorm(tc.slice(qkv, [null, null, [h, h + hkv]]), this.kNorm, rmsNormEps), rope, offset);
      } else {
        // q and k are neighbouring heads: one RoPE call rotates both.
        const qk = tc.fast.rope(tc.slice(qkv, [null, null, [0, h + hkv]]), rope, offset);
        q = tc.slice(qk, [null, null, [0, h]]);
        k = tc.slice(qk, [null, null, [h, h + hkv]]);
      }
    } else {
      const input = norm ? tc.fast.rmsNorm(x, norm.weight, norm.eps) : x;
      q = tc.reshape(this.qProj!.forward(input), [b, l, h, d]);
      k = tc.reshape(this.kProj!.forward(input), [b, l, hkv, d]);
      v = tc.reshape(this.vProj!.forward(input), [b, l, hkv, d]);
      if (this.qNorm && this.kNorm) {
        q = tc.fast.rmsNorm(q, this.qNorm, rmsNormEps);
        k = tc.fast.rmsNorm(k, this.kNorm, rmsNormEps);
      }
      q = tc.fast.rope(q, rope, offset);
      k = tc.fast.rope(k, rope, offset);
    }
    // Heads become a batch dimension, [B, H, L, D] (views); the cache stores K and V in that layout.
    const { keys, values } = cache.updateAndFetch(tc.transpose(k, [0, 2, 1, 3]), tc.transpose(v, [0, 2, 1, 3]));
    if (l === 1) {
      // Decode: no mask, so the G query heads that share a kv head are just G query rows of it. Passed as
      // [B, Hkv, G, D], each kv head's K and V are read once for all G rows (one matmul row block), not G
      // times (once per query head): at long contexts attention reads more cache than weights.
      const groups = h / hkv;
      const out = tc.fast.sdpa(tc.reshape(q, [b, hkv, groups, d]), keys, values, { scale: this.scale }); // [B, Hkv, G, D]
      return this.oProj.forward(tc.reshape(out, [b, 1, h * d]), { residual });
    }
    // A prefill: chapter 2.4's flash attention, which never builds the [L, offset + L] scores of a head. The L
    // new tokens see every cached one and the new ones up to their own: the causal mask aligned to the bottom
    // right, whose hidden tiles the kernel skips.
    const out = flashAttention(tc.transpose(q, [0, 2, 1, 3]), keys, values, { scale: this.scale, mask: 'causal' }); // [B, H, L, D]
    return this.oProj.forward(tc.reshape(tc.transpose(out, [0, 2, 1, 3]), [b, l, h * d]), { residual });
  }
}

/** A decoder layer: h = x + attn(norm1(x)); out = h + mlp(norm2(h)), the MLP dense or mixture-of-experts. */
export class Qwen2Block {
  constructor(
    readonly inputLayerNorm: Tensor,
    readonly selfAttn: Qwen2Attention,
    readonly postAttentionLayerNorm: Tensor,
    readonly mlp: GatedMlp | Qwen2MoeBlock,
    readonly rmsNormEps: number,
    /** Norms and residual adds fused into the projections (see Qwen2LoadOptions.fusedKernels). */
    readonly fusedKernels = true,
    readonly tensorParallel: TensorParallelRank | null = null,
  ) {}

  /** The residual a half adds to its output here: none on the tensor-parallel ranks other than 0. */
  private residualOf(x: Tensor): Tensor | null {
    return this.tensorParallel && this.tensorParallel.rank !== 0 ? null : x;
  }

  /** A half's output, or on a tensor-parallel rank its partial sum, all-reduced (the partial is freed). */
  private reduced(t: Tensor): Tensor {
    if (!this.tensorParallel) return t;
    const sum = this.tensorParallel.allReduce(t);
    t.dispose();
    return sum;
  }

  /** residual + out, for a half whose residual is not fused into its last projection. */
  private withResidual(residual: Tensor, out: Tensor): Tensor {
    const r = this.residualOf(residual);
    return r ? tc.add(r, out) : out;
  }

  /**
   * cache and offset: one cache for the B rows at one offset, or one per row (forwardRows: decode only, with
   * pagedRows when the rows are in a page pool).
   */
  forward(
    x: Tensor,
    cache: LayerCache | readonly LayerCache[],
    offset: number | readonly number[],
    rope: tc.fast.RopeTables,
    pagedRows: PagedRows | null = null,
  ): Tensor {
    const eps = this.rmsNormEps;
    const attend = (input: Tensor, fusion?: { norm?: InputNorm; residual?: Tensor | null }) =>
      Array.isArray(cache)
        ? this.selfAttn.forwardRows(input, cache, offset as readonly number[], rope, fusion, pagedRows)
        : this.selfAttn.forward(input, cache as LayerCache, offset as number, rope, fusion);
    if (this.fusedKernels) {
      // The norms go into the projections that read them and the residual adds into the ones that end each
      // half (o_proj, down_proj): with quantized weights a dense layer is four native matmul calls and one
      // attention kernel.
      const h = this.reduced(attend(x, { norm: { weight: this.inputLayerNorm, eps }, residual: this.residualOf(x) }));
      let out: Tensor;
      if (this.mlp instanceof GatedMlp) {
        out = this.reduced(this.mlp.forward(h, { norm: { weight: this.postAttentionLayerNorm, eps }, residual: this.residualOf(h) }));
      } else {
        const n2 = tc.fast.rmsNorm(h, this.postAttentionLayerNorm, eps);
        const m = this.mlp.forward(n2);
        out = this.reduced(this.withResidual(h, m));
        n2.dispose();
        m.dispose();
      }
      h.dispose();
      return out;
    }
    const n1 = tc.fast.rmsNorm(x, this.inputLayerNorm, eps);
    const a = attend(n1);
    const h = this.reduced(this.withResidual(x, a));
    const n2 = tc.fast.rmsNorm(h, this.postAttentionLayerNorm, eps);
    const m = this.mlp.forward(n2);
    const out = this.reduced(this.withResidual(h, m));
    // Free the temporaries now rather than at the end of the pass: their buffers serve the next layer.
    for (const t of [n1, a, h, n2, m]) t.dispose();
    return out;
  }
}

/** Qwen2 / Qwen2.5 / Qwen3 / Qwen2-MoE with a KV cache: the model the engine serves. */
export class Qwen2Model {
  readonly config: ModelConfig;
  readonly embedding: TokenEmbedding;
  readonly layers: Qwen2Block[];
  readonly norm: Tensor;
  /** The untied output head; null when the head is the embedding (tie_word_embeddings). */
  readonly lmHead: Linear | null;
  private rope: tc.fast.RopeTables | null = null;
  /** See Qwen2LoadOptions.fusedKernels. */
  readonly fusedKernels: boolean;

  private constructor(config: ModelConfig, weight: WeightSource, options: Qwen2LoadOptions & { source?: string }) {
    const where = options.source ?? 'Qwen2Model';
    if (!SUPPORTED_MODEL_TYPES.includes(config.modelType)) {
      throw new Error(`${where}: unsupported model_type ${config.modelType} (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
    }
    if (config.ropeScaling) {
      throw new Error(`${where}: RoPE scaling ${JSON.stringify(config.ropeScaling)} is not implemented (only the default RoPE)`);
    }
    this.config = config;
    this.fusedKernels = options.fusedKernels !== false;
    const need = (name: string): Weight => {
      const w = weight(name);
      if (!w) throw new Error(`${where}: the checkpoint has no ${name}`);
      return w;
    };
    const vector = (name: string, size: number): Tensor => {
      const w = need(name);
      if (w instanceof tc.QuantizedWeight || w.ndim !== 1 || w.shape[0] !== size) {
        throw new RangeError(`${where}: expected ${name} of shape [${size}], got ${String(w)}`);
      }
      return w;
    };
    const { hiddenSize, numHiddenLayers, rmsNormEps } = config;
    const total = numHiddenLayers + 2;
    const progress = (done: number) => options.onProgress?.(done, total);

    const precision: QuantizedPrecision = { exact: options.exact };
    this.embedding = new TokenEmbedding(need('model.embed_tokens.weight'), config.vocabSize, hiddenSize, precision);
    progress(1);
    const shape: AttentionShape = {
      hiddenSize,
      numHeads: config.numAttentionHeads,
      numKvHeads: config.numKeyValueHeads,
      headDim: config.headDim,
      rmsNormEps,
    };
    this.layers = [];
    for (let i = 0; i < numHiddenLayers; i++) {
      const p = `model.layers.${i}`;
      const fusedKernels = options.fusedKernels !== false;
      const attn = new Qwen2Attention(shape, `${p}.self_attn`, weight, need, options.fuse !== false, fusedKernels, precision);
      if (config.qkNorm && !attn.qNorm)
        throw new Error(`${where}: ${config.modelType} needs ${p}.self_attn.q_norm.weight and k_norm.weight`);
      if (config.attentionBias && !attn.hasBias)
        throw new Error(`${where}: the checkpoint has no ${p}.self_attn.q_proj.bias (config says the attention has biases)`);
      this.layers.push(
        new Qwen2Block(
          vector(`${p}.input_layernorm.weight`, hiddenSize),
          attn,
          vector(`${p}.post_attention_layernorm.weight`, hiddenSize),
          isSparseLayer(config, i)
            ? loadMoeBlock(config, `${p}.mlp`, weight, { fuse: options.fuse, ...precision })
            : denseMlp(config, `${p}.mlp`, need, { fuse: options.fuse !== false, ...precision }),
          rmsNormEps,
          fusedKernels,
          options.tensorParallel,
        ),
      );
      progress(i + 2);
    }
    this.norm = vector('model.norm.weight', hiddenSize);
    if (config.tieWordEmbeddings) {
      this.lmHead = null;
    } else {
      const w = need('lm_head.weight');
      expectWeightShape('lm_head', w, [config.vocabSize, hiddenSize]);
      this.lmHead = new Linear(w, null, 'lm_head', precision);
    }
    progress(total);
  }

  /**
   * Opens a model directory (Hugging Face or MLX layout) and builds the model over its memory-mapped weights:
   * nothing is converted, so loading costs little more than mapping the files.
   */
  static load(dir: string, options: Qwen2LoadOptions = {}): Qwen2Model {
    const md = tc.openModelDir(dir);
    return new Qwen2Model(md.config, modelDirWeights(md), { ...options, source: dir });
  }

  /** Builds the model from any weight source (a checkpoint, random weights of a real config for benchmarks). */
  static fromWeights(config: ModelConfig, weight: WeightSource, options: Qwen2LoadOptions = {}): Qwen2Model {
    return new Qwen2Model(config, weight, options);
  }

  /** One empty KV cache per layer. */
  newCache(): DecodeKvCache[] {
    return this.layers.map(() => new DecodeKvCache());
  }

  /**
   * ids int32 [B, L]: the next L tokens of B sequences that have `offset` tokens cached (default: what the
   * cache holds) -> float32 logits [B, L, vocab]. Appends the L tokens to the cache.
   */
  forward(ids: Tensor, cache: readonly LayerCache[], offset?: number | readonly number[]): Tensor {
    return this.run(ids, cache, offset, 'all')!;
  }

  /** As forward, but only the last position's logits [B, vocab]: the output head runs on one hidden state. */
  forwardLastLogits(ids: Tensor, cache: readonly LayerCache[], offset?: number | readonly number[]): Tensor {
    return this.run(ids, cache, offset, 'last')!;
  }

  /** As forward, without the output head: the tokens only fill the caches (tensor-parallel ranks other than 0). */
  advance(ids: Tensor, cache: readonly LayerCache[], offset?: number | readonly number[]): void {
    this.run(ids, cache, offset, 'none');
  }

  private run(
    ids: Tensor,
    cache: readonly LayerCache[],
    offsetArg: number | readonly number[] | undefined,
    output: HeadOutput,
  ): Tensor | null {
    const [b, l] = this.checkIds(ids);
    const offset = this.resolveOffset(cache, offsetArg, b, l);
    const rope = this.ropeTables(offset + l);
    try {
      return this.pass(ids, (i) => cache[i], offset, rope, l, output);
    } catch (err) {
      // A pass that failed part-way has appended to some caches only: take those tokens back out. (A block table
      // counts its tokens only once a pass is done: what a failed pass wrote in its pages is overwritten later.)
      for (const c of cache) if (c instanceof DecodeKvCache && c.offset > offset) c.rewind(c.offset - offset);
      throw err;
    }
  }

  /**
   * A decode step of B requests with caches of their own (continuous batching, see Qwen2Attention.forwardRows):
   * tokens[b] after the tokens in caches[b] (a cache per layer) -> the logits float32 [B, vocab]. The tokens may
   * also come as int32 ids [B, 1] (a captured step's input, model/decode-graph.ts).
   */
  decodeRows(tokens: readonly number[] | Tensor, caches: readonly (readonly LayerCache[])[]): Tensor {
    return this.runRows(tokens, caches, 'last')!;
  }

  /** As decodeRows, without the output head (tensor-parallel ranks other than 0). */
  advanceRows(tokens: readonly number[], caches: readonly (readonly LayerCache[])[]): void {
    this.runRows(tokens, caches, 'none');
  }

  private runRows(tokens: readonly number[] | Tensor, caches: readonly (readonly LayerCache[])[], output: HeadOutput): Tensor | null {
    const rows = tokens instanceof tc.Tensor ? tokens.shape[0] : tokens.length;
    if (rows === 0 || caches.length !== rows) {
      throw new RangeError(`Qwen2Model.decodeRows: expected one cache per token, got ${rows} tokens and ${caches.length} caches`);
    }
    const ids =
      tokens instanceof tc.Tensor
        ? tokens
        : tc.tensor(
            tokens.map((t) => [t]),
            { dtype: 'int32' },
          );
    try {
      if (this.checkIds(ids)[1] !== 1) throw new RangeError(`Qwen2Model.decodeRows: expected ids [B, 1], got ${ids.describe()}`);
      const positions = caches.map((c) => this.resolveOffset(c, undefined, 1, 1));
      const rope = this.ropeTables(Math.max(...positions) + 1);
      const paged = caches.map((c) => c[0]).filter((c) => c instanceof PagedLayerCache);
      const pagedRows = paged.length === caches.length ? pagedRowsOf(paged) : null;
      try {
        return this.pass(ids, (i) => caches.map((c) => c[i]), positions, rope, 1, output, pagedRows);
      } catch (err) {
        caches.forEach((c, row) => {
          for (const layer of c)
            if (layer instanceof DecodeKvCache && layer.offset > positions[row]) layer.rewind(layer.offset - positions[row]);
        });
        throw err;
      } finally {
        pagedRows?.positions.dispose();
        pagedRows?.tables.dispose();
      }
    } finally {
      if (ids !== tokens) ids.dispose();
    }
  }

  private pass(
    ids: Tensor,
    cacheOf: (layer: number) => LayerCache | readonly LayerCache[],
    offset: number | readonly number[],
    rope: tc.fast.RopeTables,
    l: number,
    output: HeadOutput,
    pagedRows: PagedRows | null = null,
  ): Tensor | null {
    return tc.tidy(() => {
      let h = this.embedding.forward(ids); // [B, L, hidden]
      for (let i = 0; i < this.layers.length; i++) {
        // A scope per layer: a prefill's attention temporaries (projections, rotated heads, the score matrix)
        // are freed before the next layer runs, not held for all layers until the pass ends. At Qwen2-0.5B
        // shapes and a 256-token prompt they were ~450 MB of the peak resident memory (4-bit: 885 -> 434 MB).
        const next = tc.tidy(() => this.layers[i].forward(h, cacheOf(i), offset, rope, pagedRows));
        h.dispose();
        h = next;
      }
      if (output === 'none') return null;
      // Only the last position's logits are needed to pick the next token: slice before the final norm.
      if (output === 'last') h = tc.slice(h, [null, l - 1]); // [B, hidden]
      if (this.fusedKernels) {
        // The final norm goes into the output head (quantized: the same native call).
        const norm = { weight: this.norm, eps: this.config.rmsNormEps };
        return this.lmHead ? this.lmHead.forward(h, { norm }) : this.embedding.asLinear(h, norm);
      }
      const normed = tc.fast.rmsNorm(h, this.norm, this.config.rmsNormEps);
      return this.lmHead ? this.lmHead.forward(normed) : this.embedding.asLinear(normed);
    });
  }

  /** Checks the ids' shape, dtype and range (an id past the vocabulary would read another tensor's memory). */
  private checkIds(ids: Tensor): [number, number] {
    if (!(ids instanceof tc.Tensor) || ids.ndim !== 2 || (ids.dtype !== 'int32' && ids.dtype !== 'uint32')) {
      const got = ids instanceof tc.Tensor ? ids.describe() : typeof ids;
      throw new TypeError(`Qwen2Model.forward: expected token ids int32 [B, L], got ${got}`);
    }
    const [b, l] = ids.shape;
    if (b === 0 || l === 0) throw new RangeError(`Qwen2Model.forward: no tokens to run (ids ${ids.describe()})`);
    if (ids.backend.readSync) this.checkTokenIds(ids.toArray(), (i) => ` at [${Math.floor(i / l)}, ${i % l}] of ids ${ids.describe()}`);
    return [b, l];
  }

  /**
   * Throws unless every id is a token of the vocabulary (an id past it would read another tensor's memory);
   * where(i) says where id i sits, for the message.
   */
  checkTokenIds(ids: ArrayLike<number>, where: (i: number) => string): void {
    const vocab = this.config.vocabSize;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!(Number.isInteger(id) && id >= 0 && id < vocab)) {
        throw new RangeError(
          `Qwen2Model.forward: token id ${id}${where(i)} is outside the vocabulary (vocab_size ${vocab}: ids 0..${vocab - 1})`,
        );
      }
    }
  }

  private resolveOffset(cache: readonly LayerCache[], offsetArg: number | readonly number[] | undefined, b: number, l: number): number {
    if (!Array.isArray(cache) || cache.length !== this.layers.length) {
      throw new RangeError(
        `Qwen2Model.forward: expected one DecodeKvCache per layer (${this.layers.length}), got ${Array.isArray(cache) ? cache.length : typeof cache} (use model.newCache())`,
      );
    }
    const cached = cache[0].offset;
    for (let i = 1; i < cache.length; i++) {
      if (cache[i].offset !== cached) {
        throw new Error(
          `Qwen2Model.forward: the caches of layers 0 and ${i} hold ${cached} and ${cache[i].offset} tokens (a failed or partial pass?)`,
        );
      }
    }
    let offset: number;
    if (offsetArg === undefined) {
      offset = cached;
    } else if (typeof offsetArg === 'number') {
      offset = offsetArg;
    } else {
      if (offsetArg.length !== b) throw new RangeError(`Qwen2Model.forward: ${offsetArg.length} offsets for a batch of ${b} rows`);
      offset = offsetArg[0];
      if (offsetArg.some((o) => o !== offset)) {
        throw new Error(
          `Qwen2Model.forward: batch rows have different offsets [${offsetArg.join(', ')}]; batched decoding with ` +
            'ragged offsets (per-row masks and caches) is chapter 2.6 (continuous batching), not implemented by this model',
        );
      }
    }
    if (!Number.isInteger(offset) || offset < 0)
      throw new RangeError(`Qwen2Model.forward: offset must be a non-negative integer, got ${offset}`);
    if (offset !== cached) {
      throw new RangeError(
        `Qwen2Model.forward: offset ${offset} does not match the ${cached} tokens in the cache (rewind the cache first)`,
      );
    }
    const max = this.config.maxPositionEmbeddings;
    if (offset + l > max) {
      throw new RangeError(
        `Qwen2Model.forward: ${l} tokens after ${offset} cached ones reach position ${offset + l - 1}, past the model's ` +
          `${max} positions (max_position_embeddings ${max})`,
      );
    }
    const window = this.config.slidingWindow;
    if (window !== null && offset + l > window) {
      throw new RangeError(
        `Qwen2Model.forward: sliding-window attention (window ${window}) is not implemented; the sequence reaches ${offset + l} tokens`,
      );
    }
    return offset;
  }

  /** RoPE tables covering positions [0, end): computed once, regrown (doubling) only when a sequence goes further. */
  /**
   * The RoPE tables for positions 0 .. end - 1 at least, grown on demand (to twice their size or more; the tables
   * they replace are freed).
   */
  ropeTables(end: number): tc.fast.RopeTables {
    const have = this.rope ? this.rope.cos.shape[0] : 0;
    if (end <= have) return this.rope!;
    const max = this.config.maxPositionEmbeddings;
    const size = Math.min(max, Math.max(end, 2 * have, 1024));
    const tables = tc.fast.ropeTables(this.config.headDim, size, this.config.ropeTheta);
    tc.keep(tables.cos);
    tc.keep(tables.sin);
    this.rope?.cos.dispose();
    this.rope?.sin.dispose();
    this.rope = tables;
    return tables;
  }
}

/** The weights of an opened model directory by name, quantized ones as QuantizedWeight. */
export function modelDirWeights(md: tc.ModelDir): WeightSource {
  return (name) => {
    if (name.endsWith('.weight')) {
      const prefix = name.slice(0, -'.weight'.length);
      if (md.isQuantized(prefix)) return md.quantizedWeight(prefix);
    }
    return md.has(name) ? md.weight(name) : undefined;
  };
}

/** Which logits a pass returns: every position's, the last position's, or none (no output head). */
type HeadOutput = 'all' | 'last' | 'none';

function denseMlp(
  config: ModelConfig,
  prefix: string,
  need: (name: string) => Weight,
  options: { fuse: boolean } & QuantizedPrecision,
): GatedMlp {
  const { hiddenSize, intermediateSize } = config;
  const gate = need(`${prefix}.gate_proj.weight`);
  expectWeightShape(`${prefix}.gate_proj`, gate, [intermediateSize, hiddenSize]);
  return new GatedMlp(gate, need(`${prefix}.up_proj.weight`), need(`${prefix}.down_proj.weight`), prefix, options);
}

// Random weights of a real model's shape (a config.json), for benchmarks of Qwen2-0.5B/1.5B/7B without
// downloading them. Values are ~N(0, 0.02) (as transformers initialises them), norms are ones, so that the
// activations stay finite through every layer.
//
// Speed matters: Qwen2-0.5B is 494M values. They are drawn 2 per 32-bit xorshift step from a 4096-entry table
// of normal samples (already in the storage format: bf16 words or float32), straight into the typed array
// that becomes the tensor, about 1 ns a value. Quantized weights (q4, q8: MLX layout, group 64) are built
// directly in their packed form: random 4- or 8-bit levels (every bit of a random word is a fair coin) with a
// scale and bias per group that put the dequantized values at mean 0 and standard deviation 0.02. That is
// what tc.quantize would give for a uniform random weight, without ever materialising the float matrix: at
// about 70 ns a value quantize would take half a minute for 0.5B, and the float copy of the embedding alone
// would blow the 600 MB a q4 0.5B engine is meant to fit in.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import { isSparseLayer } from '@tiny-llm/reference/week3';
import type { Weight } from './model/linear.ts';

export type RandomDType = 'f32' | 'bf16' | 'q4' | 'q8';
export const RANDOM_DTYPES: readonly RandomDType[] = ['f32', 'bf16', 'q4', 'q8'];

export interface RandomWeightsOptions {
  dtype?: RandomDType;
  seed?: number;
  /** Standard deviation of the values (default 0.02). */
  std?: number;
  /** The quantization group size of q4/q8 (default 64). */
  groupSize?: number;
}

/** What a weight is, by its role: matrices may be quantized; norms are ones; biases small random vectors. */
export type WeightRole = 'matrix' | 'norm' | 'bias';

export interface WeightShape {
  shape: number[];
  role: WeightRole;
}

/** Every weight of a config's model, by Hugging Face name, with its logical shape. */
export function weightShapes(config: ModelConfig): Map<string, WeightShape> {
  const { hiddenSize: h, numAttentionHeads: nh, numKeyValueHeads: nkv, headDim: d, vocabSize: v } = config;
  const out = new Map<string, WeightShape>();
  const add = (name: string, shape: number[], role: WeightRole) => out.set(name, { shape, role });
  const mlp = (p: string, inter: number) => {
    add(`${p}.gate_proj.weight`, [inter, h], 'matrix');
    add(`${p}.up_proj.weight`, [inter, h], 'matrix');
    add(`${p}.down_proj.weight`, [h, inter], 'matrix');
  };
  add('model.embed_tokens.weight', [v, h], 'matrix');
  for (let i = 0; i < config.numHiddenLayers; i++) {
    const p = `model.layers.${i}`;
    add(`${p}.input_layernorm.weight`, [h], 'norm');
    add(`${p}.post_attention_layernorm.weight`, [h], 'norm');
    for (const [proj, rows] of [
      ['q_proj', nh * d],
      ['k_proj', nkv * d],
      ['v_proj', nkv * d],
    ] as const) {
      add(`${p}.self_attn.${proj}.weight`, [rows, h], 'matrix');
      if (config.attentionBias) add(`${p}.self_attn.${proj}.bias`, [rows], 'bias');
    }
    add(`${p}.self_attn.o_proj.weight`, [h, nh * d], 'matrix');
    if (config.qkNorm) {
      add(`${p}.self_attn.q_norm.weight`, [d], 'norm');
      add(`${p}.self_attn.k_norm.weight`, [d], 'norm');
    }
    const moe = config.moe;
    if (moe && isSparseLayer(config, i)) {
      // The router and the shared expert's gate are small: they stay dense (as in MLX's quantized checkpoints
      // of Qwen2-MoE, whose router is a [E, hidden] matrix read once per token).
      add(`${p}.mlp.gate.weight`, [moe.numExperts, h], 'matrix');
      for (let e = 0; e < moe.numExperts; e++) mlp(`${p}.mlp.experts.${e}`, moe.moeIntermediateSize);
      if (moe.sharedExpertIntermediateSize > 0) {
        mlp(`${p}.mlp.shared_expert`, moe.sharedExpertIntermediateSize);
        add(`${p}.mlp.shared_expert_gate.weight`, [1, h], 'matrix');
      }
    } else {
      mlp(`${p}.mlp`, config.intermediateSize);
    }
  }
  add('model.norm.weight', [h], 'norm');
  if (!config.tieWordEmbeddings) add('lm_head.weight', [v, h], 'matrix');
  return out;
}

/** Routers stay dense even in quantized models. */
export function isRouter(name: string): boolean {
  return name.endsWith('.mlp.gate.weight') || name.endsWith('.shared_expert_gate.weight');
}

/** FNV-1a of a name, mixed with the seed: each tensor has its own stream, whatever order they are built in. */
function seedOf(name: string, seed: number): number {
  let x = 0x811c9dc5 ^ seed;
  for (let i = 0; i < name.length; i++) x = Math.imul(x ^ name.charCodeAt(i), 0x01000193);
  x ^= x >>> 16;
  return x | 1; // xorshift needs a non-zero state
}

const TABLE_BITS = 12;
const TABLE_MASK = (1 << TABLE_BITS) - 1;

/** 4096 samples of N(0, std) as float32, from Box-Muller on a seeded generator. */
function normalTable(std: number, seed: number): Float32Array {
  const g = new tc.random.Generator(seed);
  const t = new Float32Array(1 << TABLE_BITS);
  for (let i = 0; i < t.length; i += 2) {
    const u1 = 1 - g.next();
    const u2 = g.next();
    const r = Math.sqrt(-2 * Math.log(u1)) * std;
    t[i] = r * Math.cos(2 * Math.PI * u2);
    t[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return t;
}

/** float32 values -> bf16 words, rounded to nearest even. */
function toBf16Words(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const b = bits[i];
    out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** Fills `out` with entries of `table` picked by a xorshift32 stream (two 12-bit picks per step). */
function fillFromTable(out: Uint16Array | Float32Array, table: Uint16Array | Float32Array, seed: number): void {
  let s = seed | 0;
  const n = out.length;
  let i = 0;
  for (; i + 1 < n; i += 2) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = table[s & TABLE_MASK];
    out[i + 1] = table[(s >>> 16) & TABLE_MASK];
  }
  if (i < n) out[i] = table[(s ^ (s << 13)) & TABLE_MASK];
}

/** Random 32-bit words. */
function fillWords(out: Uint32Array, seed: number): void {
  let s = seed | 0;
  for (let i = 0; i < out.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s >>> 0;
  }
}

const tensorOver = (array: Uint16Array | Float32Array | Uint32Array, dtype: tc.DType, shape: number[]): Tensor =>
  new tc.Tensor(tc.cpu.wrap(array.buffer as ArrayBuffer, array.byteOffset, array.byteLength), dtype, shape);

/**
 * The parts that a model fuses into one matrix (q/k/v, an MLP's gate and up), which a Hugging Face file stores
 * back to back: the parts of a group are built in one buffer, in that order, so that the model's fused matrix
 * is a view of it rather than a copy.
 */
function groupOf(name: string): string[] | null {
  let m = /^(.*\.self_attn)\.[qkv]_proj\.(weight|bias)$/.exec(name);
  if (m) return ['q_proj', 'k_proj', 'v_proj'].map((p) => `${m![1]}.${p}.${m![2]}`);
  m = /^(.*)\.(gate|up)_proj\.weight$/.exec(name);
  if (m) return [`${m[1]}.gate_proj.weight`, `${m[1]}.up_proj.weight`];
  return null;
}

/**
 * The weights of a config's model, built on request. `get` is the WeightSource of Qwen2ModelWeek2.fromWeights.
 * Weights are not retained here once the model has taken them: what the model copies (quantized parts it
 * fuses) is then garbage, and the peak memory stays that of the model. The same seed gives the same values.
 */
export class RandomWeights {
  readonly config: ModelConfig;
  readonly dtype: RandomDType;
  readonly shapes: Map<string, WeightShape>;
  readonly bits: number | null;
  readonly groupSize: number;
  private readonly seed: number;
  /**
   * The last few weights handed out, so that a weight asked for twice in a row (a presence check, then the
   * real request) is the same object. Only a few: holding them all would keep alive the parts the model
   * copies when it fuses them, and (quantized) double the memory.
   */
  private readonly recent = new Map<string, Weight>();
  /** Parts of a group built with a sibling, not yet asked for. */
  private readonly pending = new Map<string, Weight>();
  private readonly table16: Uint16Array;
  private readonly table32: Float32Array;
  private readonly std: number;
  /** Called after each tensor is built with the bytes built so far and the total. */
  onProgress?: (done: number, total: number) => void;
  private bytesBuilt = 0;

  constructor(config: ModelConfig, options: RandomWeightsOptions = {}) {
    this.config = config;
    this.dtype = options.dtype ?? 'bf16';
    this.seed = options.seed ?? 0;
    this.std = options.std ?? 0.02;
    this.groupSize = options.groupSize ?? 64;
    this.bits = this.dtype === 'q4' ? 4 : this.dtype === 'q8' ? 8 : null;
    this.shapes = weightShapes(config);
    this.table32 = normalTable(this.std, this.seed);
    this.table16 = toBf16Words(this.table32);
  }

  /** Whether a weight is stored quantized (matrices whose columns split into groups; routers stay dense). */
  isQuantized(name: string): boolean {
    const ws = this.shapes.get(name);
    if (!ws || this.bits === null || ws.role !== 'matrix' || isRouter(name)) return false;
    return ws.shape[1] % this.groupSize === 0;
  }

  /** The bytes a weight takes (packed words, scales and biases for quantized ones). */
  bytesOf(name: string): number {
    const ws = this.shapes.get(name);
    if (!ws) return 0;
    const n = ws.shape.reduce((a, b) => a * b, 1);
    if (this.isQuantized(name)) {
      const groups = n / this.groupSize;
      return (n * this.bits!) / 8 + groups * 2 * 2; // bf16 scales and biases
    }
    return n * (this.dtype === 'f32' ? 4 : 2);
  }

  get totalBytes(): number {
    let total = 0;
    for (const name of this.shapes.keys()) total += this.bytesOf(name);
    return total;
  }

  /** The WeightSource: the weight of that name, built now if needed; undefined for names the model has not. */
  get = (name: string): Weight | undefined => {
    const recent = this.recent.get(name);
    if (recent) return recent;
    const ws = this.shapes.get(name);
    if (!ws) return undefined;
    let w = this.pending.get(name);
    if (w) {
      this.pending.delete(name);
    } else {
      const group = groupOf(name);
      if (group && !this.isQuantized(name) && group.every((g) => this.shapes.has(g))) {
        const built = this.buildGroup(group);
        group.forEach((g, i) => {
          if (g !== name) this.pending.set(g, built[i]);
        });
        w = built[group.indexOf(name)];
        this.bytesBuilt += group.reduce((n, g) => n + this.bytesOf(g), 0);
      } else {
        w = this.build(name, ws);
        this.bytesBuilt += this.bytesOf(name);
      }
      this.onProgress?.(this.bytesBuilt, this.totalBytes);
    }
    this.recent.set(name, w);
    if (this.recent.size > 4) this.recent.delete(this.recent.keys().next().value!);
    return w;
  };

  /** Dense parts in one buffer, back to back; each part has the values it would have alone. */
  private buildGroup(names: string[]): Tensor[] {
    const f32 = this.dtype === 'f32';
    const sizes = names.map((n) => this.shapes.get(n)!.shape.reduce((a, b) => a * b, 1));
    const total = sizes.reduce((a, b) => a + b, 0);
    const all = f32 ? new Float32Array(total) : new Uint16Array(total);
    let offset = 0;
    return names.map((n, i) => {
      const part = all.subarray(offset, offset + sizes[i]);
      offset += sizes[i];
      fillFromTable(part, f32 ? this.table32 : this.table16, seedOf(n, this.seed));
      return tensorOver(part, f32 ? 'float32' : 'bfloat16', this.shapes.get(n)!.shape);
    });
  }

  private build(name: string, { shape, role }: WeightShape): Weight {
    const n = shape.reduce((a, b) => a * b, 1);
    const seed = seedOf(name, this.seed);
    const f32 = this.dtype === 'f32';
    if (role === 'norm') {
      return f32
        ? tensorOver(new Float32Array(n).fill(1), 'float32', shape)
        : tensorOver(new Uint16Array(n).fill(0x3f80), 'bfloat16', shape);
    }
    if (this.isQuantized(name)) return this.buildQuantized(name, shape, seed);
    if (f32) {
      const values = new Float32Array(n);
      fillFromTable(values, this.table32, seed);
      return tensorOver(values, 'float32', shape);
    }
    const words = new Uint16Array(n);
    fillFromTable(words, this.table16, seed);
    return tensorOver(words, 'bfloat16', shape);
  }

  /**
   * Levels q uniform in [0, 2^bits): mean (2^bits - 1) / 2, standard deviation sqrt((4^bits - 1) / 12). The
   * scale makes the dequantized standard deviation `std`, the bias centres the values on 0.
   */
  private buildQuantized(name: string, shape: number[], seed: number): tc.QuantizedWeight {
    const bits = this.bits!;
    const [out, inF] = shape;
    const levels = 2 ** bits;
    const scale = this.std / Math.sqrt((levels * levels - 1) / 12);
    const bias = (-scale * (levels - 1)) / 2;
    const words = new Uint32Array((out * inF * bits) / 32);
    fillWords(words, seed);
    const groups = (out * inF) / this.groupSize;
    const [scaleWord, biasWord] = toBf16Words(new Float32Array([scale, bias]));
    return new tc.QuantizedWeight(
      tensorOver(words, 'uint32', [out, (inF * bits) / 32]),
      tensorOver(new Uint16Array(groups).fill(scaleWord), 'bfloat16', [out, inF / this.groupSize]),
      tensorOver(new Uint16Array(groups).fill(biasWord), 'bfloat16', [out, inF / this.groupSize]),
      this.groupSize,
      bits,
      name.replace(/\.weight$/, ''),
    );
  }
}

// A Hugging Face (or MLX) model directory: config.json, optional generation_config.json, and the weights.
//
// config.json comes in several dialects (docs/architecture.md, "Model files"): transformers 5 writes `rope_parameters.rope_theta` and
// `dtype` where older files have `rope_theta` and `torch_dtype`; Qwen3 has an explicit `head_dim`, Qwen2 does
// not; MLX checkpoints add `quantization` (and often a copy under `quantization_config`). parseModelConfig
// turns all of them into one typed, camelCase ModelConfig and keeps the original as `raw`.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend } from '../backend/backend.ts';
import { cpu } from '../backend/cpu.ts';
import { toDevice } from '../ops/creation.ts';
import type { Tensor } from '../tensor.ts';
import { QUANTIZED_BITS, QUANTIZED_GROUP_SIZES, QuantizedWeight } from './quantized.ts';
import { openCheckpoint, type Checkpoint } from './safetensors.ts';

export const SUPPORTED_MODEL_TYPES = ['qwen2', 'qwen3', 'qwen2_moe'] as const;
export type ModelType = (typeof SUPPORTED_MODEL_TYPES)[number];

/** The architectures (config `architectures`) that map to a model type, for configs without `model_type`. */
const ARCHITECTURES: Record<string, ModelType> = {
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
  Qwen2MoeForCausalLM: 'qwen2_moe',
};

export interface QuantizationParams {
  groupSize: number;
  bits: number;
}

export interface QuantizationConfig extends QuantizationParams {
  /**
   * Per-layer exceptions of MLX mixed-precision checkpoints, by layer prefix (e.g. "model.layers.0.mlp.down_proj"):
   * other parameters, or false for a layer left unquantized.
   */
  layers: Record<string, QuantizationParams | false>;
}

export interface MoeConfig {
  numExperts: number;
  numExpertsPerTok: number;
  moeIntermediateSize: number;
  /** 0 when the model has no shared expert. */
  sharedExpertIntermediateSize: number;
  /** Renormalise the top-k routing weights to sum to 1. */
  normTopkProb: boolean;
  /** Every decoderSparseStep-th layer is sparse (1: all of them)... */
  decoderSparseStep: number;
  /** ...except these, which use a dense MLP of intermediateSize. */
  mlpOnlyLayers: number[];
}

export type ConfigDType = 'float32' | 'float16' | 'bfloat16';

export interface ModelConfig {
  modelType: ModelType;
  architectures: string[];
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  /** Explicit in Qwen3 configs (need not be hidden / heads); hidden / heads otherwise. */
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** The RoPE scaling parameters when the model uses a non-default RoPE (yarn, linear...), else null. */
  ropeScaling: Record<string, unknown> | null;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections have biases (Qwen2, Qwen2-MoE: yes; Qwen3: no). */
  attentionBias: boolean;
  /** Per-head RMSNorm of q and k before RoPE (Qwen3). */
  qkNorm: boolean;
  /** The checkpoint's declared dtype (`dtype` or `torch_dtype`); weights carry their own dtype regardless. */
  dtype: ConfigDType | null;
  /** Sliding-window attention size when the config turns it on, else null. */
  slidingWindow: number | null;
  bosTokenId: number | null;
  /** config.json's eos_token_id as a list (ModelDir.eosTokenIds also looks at generation_config.json). */
  eosTokenIds: number[];
  moe: MoeConfig | null;
  quantization: QuantizationConfig | null;
  raw: Record<string, unknown>;
}

// ---- config parsing -----------------------------------------------------------------------------------------------

/** Reads one field of a config, with the file named in every error. */
class ConfigReader {
  constructor(
    readonly raw: Record<string, unknown>,
    readonly source: string,
  ) {}

  private fail(field: string, why: string): Error {
    return new Error(`${this.source}: ${field} ${why}`);
  }

  /** The first of `fields` that is present (not undefined or null). */
  pick(...fields: string[]): { field: string; value: unknown } | undefined {
    for (const field of fields) {
      const value = this.raw[field];
      if (value !== undefined && value !== null) return { field, value };
    }
    return undefined;
  }

  positiveInt(field: string, fallback?: number): number {
    const value = this.raw[field];
    if (value === undefined || value === null) {
      if (fallback !== undefined) return fallback;
      throw this.fail(field, 'is missing (a required field)');
    }
    if (!Number.isSafeInteger(value) || (value as number) <= 0) {
      throw this.fail(field, `must be a positive integer, got ${JSON.stringify(value)}`);
    }
    return value as number;
  }

  positiveNumber(field: string, value: unknown): number {
    if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
      throw this.fail(field, `must be a positive number, got ${JSON.stringify(value)}`);
    }
    return value;
  }

  bool(field: string, fallback: boolean): boolean {
    const value = this.raw[field];
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'boolean') throw this.fail(field, `must be true or false, got ${JSON.stringify(value)}`);
    return value;
  }

  /** A token id or a list of them (eos_token_id may be either). */
  tokenIds(field: string): number[] {
    const value = this.raw[field];
    if (value === undefined || value === null) return [];
    const list = Array.isArray(value) ? value : [value];
    if (!list.every((v) => Number.isSafeInteger(v) && v >= 0)) {
      throw this.fail(field, `must be a token id or a list of token ids, got ${JSON.stringify(value)}`);
    }
    return list as number[];
  }
}

/** Parses a config.json object; `source` names the file in error messages. */
export function parseModelConfig(raw: unknown, source = 'config.json'): ModelConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new Error(`${source}: expected a JSON object`);
  }
  const r = new ConfigReader(raw as Record<string, unknown>, source);
  const modelType = parseModelType(r);

  const hiddenSize = r.positiveInt('hidden_size');
  const numAttentionHeads = r.positiveInt('num_attention_heads');
  const numKeyValueHeads = r.positiveInt('num_key_value_heads', numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    throw new Error(
      `${source}: num_attention_heads (${numAttentionHeads}) must be a multiple of num_key_value_heads (${numKeyValueHeads})`,
    );
  }
  const headDim = parseHeadDim(r, hiddenSize, numAttentionHeads);
  checkActivation(r);

  return {
    modelType,
    architectures: Array.isArray(r.raw.architectures) ? (r.raw.architectures as string[]) : [],
    hiddenSize,
    intermediateSize: r.positiveInt('intermediate_size'),
    numHiddenLayers: r.positiveInt('num_hidden_layers'),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    vocabSize: r.positiveInt('vocab_size'),
    // Defaults are those of transformers' Qwen2Config, used when a config leaves the field out.
    rmsNormEps: r.positiveNumber('rms_norm_eps', r.raw.rms_norm_eps ?? 1e-6),
    ...parseRope(r),
    maxPositionEmbeddings: r.positiveInt('max_position_embeddings', 32768),
    tieWordEmbeddings: r.bool('tie_word_embeddings', false),
    attentionBias: parseAttentionBias(r, modelType),
    qkNorm: modelType === 'qwen3',
    dtype: parseDType(r),
    slidingWindow: r.bool('use_sliding_window', false) ? r.positiveInt('sliding_window') : null,
    bosTokenId: r.tokenIds('bos_token_id')[0] ?? null,
    eosTokenIds: r.tokenIds('eos_token_id'),
    moe: modelType === 'qwen2_moe' ? parseMoe(r) : null,
    quantization: parseQuantization(r),
    raw: r.raw,
  };
}

function parseModelType(r: ConfigReader): ModelType {
  const supported = `supported: ${SUPPORTED_MODEL_TYPES.join(', ')}`;
  const declared = r.raw.model_type;
  if (declared !== undefined && declared !== null) {
    if ((SUPPORTED_MODEL_TYPES as readonly unknown[]).includes(declared)) return declared as ModelType;
    throw new Error(`${r.source}: unsupported model_type ${JSON.stringify(declared)} (${supported})`);
  }
  const architectures = Array.isArray(r.raw.architectures) ? (r.raw.architectures as unknown[]) : [];
  for (const a of architectures) {
    if (typeof a === 'string' && ARCHITECTURES[a]) return ARCHITECTURES[a];
  }
  if (architectures.length > 0) {
    throw new Error(
      `${r.source}: unsupported architecture ${architectures.join(', ')} ` + `(supported: ${Object.keys(ARCHITECTURES).join(', ')})`,
    );
  }
  throw new Error(`${r.source}: model_type is missing (a required field; ${supported})`);
}

function parseHeadDim(r: ConfigReader, hiddenSize: number, heads: number): number {
  if (r.raw.head_dim !== undefined && r.raw.head_dim !== null) return r.positiveInt('head_dim');
  if (hiddenSize % heads !== 0) {
    throw new Error(
      `${r.source}: hidden_size (${hiddenSize}) is not a multiple of num_attention_heads (${heads}) and there is no head_dim`,
    );
  }
  return hiddenSize / heads;
}

/** Every supported model uses SiLU; anything else would run but give silently wrong logits. */
function checkActivation(r: ConfigReader): void {
  const act = r.raw.hidden_act;
  if (act !== undefined && act !== null && act !== 'silu') {
    throw new Error(`${r.source}: unsupported hidden_act ${JSON.stringify(act)} (only silu is implemented)`);
  }
}

/** rope_theta lives in rope_parameters (transformers 5) or at the top level (older files). */
function parseRope(r: ConfigReader): { ropeTheta: number; ropeScaling: Record<string, unknown> | null } {
  const params = r.raw.rope_parameters;
  if (typeof params === 'object' && params !== null && !Array.isArray(params)) {
    const p = params as Record<string, unknown>;
    const theta = p.rope_theta ?? r.raw.rope_theta ?? 10000;
    const type = p.rope_type ?? p.type ?? 'default';
    return { ropeTheta: r.positiveNumber('rope_parameters.rope_theta', theta), ropeScaling: type === 'default' ? null : p };
  }
  const scaling = r.raw.rope_scaling;
  const ropeScaling =
    typeof scaling === 'object' && scaling !== null && (scaling as Record<string, unknown>).rope_type !== 'default'
      ? (scaling as Record<string, unknown>)
      : null;
  return { ropeTheta: r.positiveNumber('rope_theta', r.raw.rope_theta ?? 10000), ropeScaling };
}

function parseAttentionBias(r: ConfigReader, modelType: ModelType): boolean {
  const found = r.pick('attention_bias', 'qkv_bias');
  if (found === undefined) return modelType !== 'qwen3';
  return r.bool(found.field, false);
}

function parseDType(r: ConfigReader): ConfigDType | null {
  const found = r.pick('dtype', 'torch_dtype');
  if (!found || typeof found.value !== 'string') return null;
  const name = found.value.replace(/^torch\./, '');
  return name === 'float32' || name === 'float16' || name === 'bfloat16' ? name : null;
}

function parseMoe(r: ConfigReader): MoeConfig {
  const mlpOnly = r.raw.mlp_only_layers ?? [];
  if (!Array.isArray(mlpOnly) || !mlpOnly.every((l) => Number.isSafeInteger(l) && l >= 0)) {
    throw new Error(`${r.source}: mlp_only_layers must be a list of layer indices, got ${JSON.stringify(mlpOnly)}`);
  }
  const numExperts = r.positiveInt('num_experts');
  const numExpertsPerTok = r.positiveInt('num_experts_per_tok');
  if (numExpertsPerTok > numExperts) {
    throw new Error(`${r.source}: num_experts_per_tok (${numExpertsPerTok}) exceeds num_experts (${numExperts})`);
  }
  const shared = r.raw.shared_expert_intermediate_size;
  return {
    numExperts,
    numExpertsPerTok,
    moeIntermediateSize: r.positiveInt('moe_intermediate_size'),
    sharedExpertIntermediateSize: shared === 0 ? 0 : r.positiveInt('shared_expert_intermediate_size', 0),
    normTopkProb: r.bool('norm_topk_prob', false),
    decoderSparseStep: r.positiveInt('decoder_sparse_step', 1),
    mlpOnlyLayers: mlpOnly as number[],
  };
}

/**
 * MLX's `quantization` {group_size, bits, ...per-layer entries}; `quantization_config` is accepted when it is
 * the same MLX block, but other methods there (GPTQ, AWQ, bitsandbytes, fp8) use other layouts: refuse them.
 */
function parseQuantization(r: ConfigReader): QuantizationConfig | null {
  const found = r.pick('quantization', 'quantization_config');
  if (!found) return null;
  const where = `${r.source}: ${found.field}`;
  if (typeof found.value !== 'object' || Array.isArray(found.value)) {
    throw new Error(`${where} must be an object {group_size, bits}, got ${JSON.stringify(found.value)}`);
  }
  const q = found.value as Record<string, unknown>;
  const method = q.quant_method;
  if (method !== undefined && method !== 'mlx') {
    throw new Error(`${where}: unsupported quantization method ${JSON.stringify(method)} (only MLX-quantized checkpoints are supported)`);
  }
  if (q.mode !== undefined && q.mode !== 'affine') {
    throw new Error(`${where}: unsupported MLX quantization mode ${JSON.stringify(q.mode)} (only "affine")`);
  }
  const layers: Record<string, QuantizationParams | false> = {};
  for (const [key, value] of Object.entries(q)) {
    if (value === false) layers[key] = false;
    else if (typeof value === 'object' && value !== null) layers[key] = quantParams(value as Record<string, unknown>, `${where}.${key}`);
  }
  return { ...quantParams(q, where), layers };
}

function quantParams(q: Record<string, unknown>, where: string): QuantizationParams {
  const { group_size: groupSize, bits } = q;
  if (groupSize === undefined) throw new Error(`${where}: group_size is missing (a required field)`);
  if (bits === undefined) throw new Error(`${where}: bits is missing (a required field)`);
  if (!QUANTIZED_GROUP_SIZES.includes(groupSize as number)) {
    throw new Error(`${where}: unsupported group_size ${JSON.stringify(groupSize)} (supported: ${QUANTIZED_GROUP_SIZES.join(', ')})`);
  }
  if (!QUANTIZED_BITS.includes(bits as number)) {
    throw new Error(`${where}: unsupported bits ${JSON.stringify(bits)} (supported: ${QUANTIZED_BITS.join(', ')})`);
  }
  return { groupSize: groupSize as number, bits: bits as number };
}

/** Reads and parses a config.json file. */
export function readModelConfig(path: string): ModelConfig {
  return parseModelConfig(readJson(path), path);
}

// ---- the model directory ------------------------------------------------------------------------------------------

/** A linear layer's parameters: the weight (quantized or not) and its bias, if any. */
export interface LinearWeights {
  weight: Tensor | QuantizedWeight;
  bias: Tensor | null;
}

export interface ModelDirOptions {
  /**
   * The backend the weights are handed out on (default the CPU, as zero-copy views of the mapped files). A GPU
   * backend gets each weight uploaded when it is asked for, so a model built from the directory runs there.
   */
  device?: Backend;
}

export class ModelDir {
  readonly dir: string;
  /** Where weight(), quantizedWeight() and linear() put their tensors. */
  readonly device: Backend;
  readonly config: ModelConfig;
  readonly checkpoint: Checkpoint;
  /** generation_config.json, when the directory has one. */
  readonly generationConfig: Record<string, unknown> | null;
  /** Token ids that end generation: generation_config.json's eos_token_id if present, else config.json's. */
  readonly eosTokenIds: number[];

  constructor(dir: string, options: ModelDirOptions = {}) {
    this.dir = dir;
    this.device = options.device ?? cpu;
    const configPath = join(dir, 'config.json');
    this.config = readModelConfig(configPath);
    this.generationConfig = readGenerationConfig(join(dir, 'generation_config.json'));
    const generationEos = this.generationConfig
      ? new ConfigReader(this.generationConfig, join(dir, 'generation_config.json')).tokenIds('eos_token_id')
      : [];
    this.eosTokenIds = generationEos.length > 0 ? generationEos : this.config.eosTokenIds;
    this.checkpoint = openCheckpoint(dir);
  }

  get names(): string[] {
    return this.checkpoint.names;
  }

  has(name: string): boolean {
    return this.checkpoint.has(name);
  }

  /**
   * A tensor by its full name, e.g. "model.norm.weight", on the directory's device (on the CPU a zero-copy
   * view where the file allows).
   */
  weight(name: string): Tensor {
    return toDevice(this.checkpoint.get(name), this.device);
  }

  /** Whether `prefix` (e.g. "model.layers.0.self_attn.q_proj") is an MLX-quantized layer. */
  isQuantized(prefix: string): boolean {
    const w = `${prefix}.weight`;
    return this.has(w) && this.checkpoint.info(w).dtype === 'uint32' && this.has(`${prefix}.scales`) && this.has(`${prefix}.biases`);
  }

  /** The quantized weight of a layer (its packed weight, scales and biases); an error if it is not quantized. */
  quantizedWeight(prefix: string): QuantizedWeight {
    if (!this.isQuantized(prefix)) {
      const w = `${prefix}.weight`;
      const why = !this.has(w)
        ? `there is no ${w}`
        : `it is not MLX-quantized (${w} is ${this.checkpoint.info(w).dtype}, ` +
          `${this.has(`${prefix}.scales`) ? 'with' : 'without'} ${prefix}.scales)`;
      throw new Error(`${this.dir}: ${prefix} has no quantized weight: ${why}`);
    }
    const params = this.quantizationOf(prefix);
    return new QuantizedWeight(
      this.weight(`${prefix}.weight`),
      this.weight(`${prefix}.scales`),
      this.weight(`${prefix}.biases`),
      params.groupSize,
      params.bits,
      `${this.dir}: ${prefix}`,
    );
  }

  /** A linear (or embedding) layer: its weight, quantized when the checkpoint is, and its bias if it has one. */
  linear(prefix: string): LinearWeights {
    const weight = this.isQuantized(prefix) ? this.quantizedWeight(prefix) : this.weight(`${prefix}.weight`);
    const bias = this.has(`${prefix}.bias`) ? this.weight(`${prefix}.bias`) : null;
    return { weight, bias };
  }

  private quantizationOf(prefix: string): QuantizationParams {
    const q = this.config.quantization;
    if (!q) {
      throw new Error(
        `${this.dir}: ${prefix} is stored quantized (uint32 weight + scales + biases), but config.json has no ` +
          '"quantization" {group_size, bits}',
      );
    }
    const own = q.layers[prefix];
    if (own === false) throw new Error(`${this.dir}: ${prefix} is quantized, but config.json's quantization marks it unquantized`);
    return own ?? q;
  }
}

/**
 * Opens a model directory: parses its config, opens its weights (single file or shards, memory-mapped), and
 * reads generation_config.json's eos ids when present. Errors say what is wrong and where.
 */
export function openModelDir(dir: string, options: ModelDirOptions = {}): ModelDir {
  if (!existsSync(dir)) throw new Error(`openModelDir: ${dir} does not exist`);
  if (!statSync(dir).isDirectory()) throw new Error(`openModelDir: ${dir} is a file, not a model directory`);
  if (!existsSync(join(dir, 'config.json'))) {
    const found = readdirSync(dir).sort();
    const listing = found.length === 0 ? 'it is empty' : `found: ${found.slice(0, 20).join(', ')}${found.length > 20 ? ', ...' : ''}`;
    throw new Error(`openModelDir: ${dir} is not a model directory: it has no config.json (${listing})`);
  }
  return new ModelDir(dir, options);
}

function readGenerationConfig(path: string): Record<string, unknown> | null {
  if (!existsSync(path)) return null;
  const value = readJson(path);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${path}: expected a JSON object`);
  return value as Record<string, unknown>;
}

function readJson(path: string): unknown {
  const text = readFileSync(path, 'utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: not valid JSON (${(err as Error).message})`);
  }
}

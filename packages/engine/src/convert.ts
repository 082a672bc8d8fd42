// tiny-llm convert: a float checkpoint quantized into MLX's layout, as `mlx_lm.convert -q` writes it, which
// the engine (and MLX) then load like any MLX model.
//
// Every matrix whose input columns split into groups (the projections, the MLP, the embedding, an untied
// lm_head) becomes three tensors: `<layer>.weight` (uint32 words of packed `bits`-bit values), `<layer>.scales`
// and `<layer>.biases` (one per group of `groupSize` input columns, in the weight's own float dtype), with
// w ≈ q * scale + bias (tc.quantize). Norms, biases and the MoE routers stay as they are. config.json gains
// `quantization` {group_size, bits} (and `quantization_config`, which other readers look for); the tokenizer
// and generation files are copied.
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { UserError, oneLine } from './errors.ts';
import { isRouter, weightShapes } from './random-weights.ts';

export const CONVERT_BITS = [4, 8] as const;
export const CONVERT_GROUP_SIZES = [32, 64, 128] as const;

export interface ConvertOptions {
  bits: (typeof CONVERT_BITS)[number];
  groupSize: (typeof CONVERT_GROUP_SIZES)[number];
  /** The most bytes of one safetensors file (default 2 GiB; a larger single tensor gets a file of its own). */
  maxShardBytes?: number;
  /** Called after each tensor with the bytes written so far and in all. */
  onProgress?: (done: number, total: number) => void;
}

export interface ConvertReport {
  quantized: number;
  kept: number;
  /** Matrices left in float because their columns do not split into groups of the group size. */
  ungrouped: string[];
  /** Bytes of the weights written, and of the source's. */
  bytes: number;
  sourceBytes: number;
  files: string[];
}

/** The files besides the weights and config.json that make a model directory usable. */
const COMPANION_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'vocab.json',
  'merges.txt',
  'chat_template.jinja',
  'chat_template.json',
  'generation_config.json',
  'tools.json',
];

/** MLX writes shards of up to 5 GB; smaller ones keep the conversion's memory modest (a shard is built whole). */
const DEFAULT_SHARD_BYTES = 2 ** 31;

interface PlannedTensor {
  name: string;
  quantize: boolean;
  /** A matrix left in float because its columns do not split into groups. */
  ungrouped: boolean;
  bytes: number;
}

export function convertModel(sourceDir: string, outDir: string, options: ConvertOptions): ConvertReport {
  const source = tc.openModelDir(sourceDir);
  if (source.config.quantization) {
    const q = source.config.quantization;
    throw new UserError(`convert: ${sourceDir} is already quantized (${q.bits} bits, group ${q.groupSize}); convert a float checkpoint`);
  }
  checkOutDir(outDir);
  const plan = planTensors(source, options);
  const shards = shardsOf(plan, options.maxShardBytes ?? DEFAULT_SHARD_BYTES);
  mkdirSync(outDir, { recursive: true });

  const total = plan.reduce((sum, t) => sum + t.bytes, 0);
  let done = 0;
  const files = shards.map((_, i) =>
    shards.length === 1 ? 'model.safetensors' : `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`,
  );
  const weightMap: Record<string, string> = {};
  shards.forEach((shard, i) => {
    const tensors = new Map<string, Tensor>();
    for (const t of shard) {
      for (const [name, tensor] of convertTensor(source, t, options)) {
        tensors.set(name, tensor);
        weightMap[name] = files[i];
      }
      done += t.bytes;
      options.onProgress?.(done, total);
    }
    tc.saveSafetensors(join(outDir, files[i]), tensors, { format: 'mlx' });
    for (const tensor of tensors.values()) tensor.dispose();
  });
  if (files.length > 1) {
    writeFileSync(
      join(outDir, 'model.safetensors.index.json'),
      `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`,
    );
  }
  writeConfig(sourceDir, outDir, options);
  for (const file of COMPANION_FILES) if (existsSync(join(sourceDir, file))) copyFileSync(join(sourceDir, file), join(outDir, file));

  const sourceBytes = source.names.reduce((sum, name) => sum + source.checkpoint.info(name).byteLength, 0);
  const quantized = plan.filter((t) => t.quantize).length;
  const ungrouped = plan.filter((t) => t.ungrouped).map((t) => t.name);
  return { quantized, kept: plan.length - quantized, ungrouped, bytes: total, sourceBytes, files };
}

function checkOutDir(outDir: string): void {
  if (existsSync(outDir) && readdirSync(outDir).length > 0) {
    throw new UserError(`convert: ${outDir} already exists and is not empty; give a new directory with --out`);
  }
}

/** Which tensors are quantized, and the bytes each will take. */
function planTensors(source: tc.ModelDir, { bits, groupSize }: ConvertOptions): PlannedTensor[] {
  const roles = weightShapes(source.config);
  return source.names.map((name) => {
    const info = source.checkpoint.info(name);
    const [rows, columns] = info.shape;
    const isMatrix = roles.get(name)?.role === 'matrix' && info.shape.length === 2 && !isRouter(name);
    const grouped = columns % groupSize === 0;
    const quantize = isMatrix && grouped && isFloat(info.dtype);
    const groupBytes = tc.itemSize(info.dtype) * 2 * rows * (columns / groupSize);
    return {
      name,
      quantize,
      ungrouped: isMatrix && !grouped,
      bytes: quantize ? (rows * columns * bits) / 8 + groupBytes : info.byteLength,
    };
  });
}

/** Tensors grouped into shards of at most maxBytes (a single tensor larger than that has a shard of its own). */
function shardsOf(plan: PlannedTensor[], maxBytes: number): PlannedTensor[][] {
  const shards: PlannedTensor[][] = [[]];
  let bytes = 0;
  for (const t of plan) {
    if (bytes + t.bytes > maxBytes && shards[shards.length - 1].length > 0) {
      shards.push([]);
      bytes = 0;
    }
    shards[shards.length - 1].push(t);
    bytes += t.bytes;
  }
  return shards;
}

/** The output tensors of one source tensor: itself, or its packed weight, scales and biases. */
function convertTensor(source: tc.ModelDir, t: PlannedTensor, { bits, groupSize }: ConvertOptions): [string, Tensor][] {
  const tensor = source.weight(t.name);
  if (!t.quantize) return [[t.name, tensor]];
  const layer = t.name.slice(0, -'.weight'.length);
  try {
    const dtype = isFloat(tensor.dtype) ? tensor.dtype : 'bfloat16';
    const q = tc.quantize(tensor, bits, groupSize, { dtype });
    return [
      [`${layer}.weight`, q.weight],
      [`${layer}.scales`, q.scales],
      [`${layer}.biases`, q.biases],
    ];
  } catch (err) {
    throw new UserError(`convert: cannot quantize ${t.name} (${tensor.describe()}): ${oneLine(err)}`, { cause: err });
  } finally {
    tensor.dispose();
  }
}

function writeConfig(sourceDir: string, outDir: string, { bits, groupSize }: ConvertOptions): void {
  const config = JSON.parse(readFileSync(join(sourceDir, 'config.json'), 'utf8'));
  const quantization = { group_size: groupSize, bits };
  writeFileSync(
    join(outDir, 'config.json'),
    `${JSON.stringify({ ...config, quantization, quantization_config: quantization }, null, 2)}\n`,
  );
}

const isFloat = (dtype: tc.DType): dtype is 'float32' | 'bfloat16' | 'float16' =>
  dtype === 'float32' || dtype === 'bfloat16' || dtype === 'float16';
const pad = (n: number) => String(n).padStart(5, '0');

// Model directories: config parsing (old and transformers-5 dialects, MoE, MLX quantization), weights by
// name, quantized layers, and the errors for directories that are not models.
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { cpu } from '../src/backend/cpu.ts';
import { openModelDir, parseModelConfig, readModelConfig, type ModelDir } from '../src/io/model-dir.ts';
import { dequantize, QuantizedWeight } from '../src/io/quantized.ts';
import { saveSafetensors } from '../src/io/safetensors.ts';
import { Tensor } from '../src/tensor.ts';

const fixtures = fileURLToPath(new URL('../../../fixtures/', import.meta.url));
const modelsDir = join(fixtures, 'models');
const configsDir = join(fixtures, 'configs');
const tmp = mkdtempSync(join(tmpdir(), 'tl-model-dir-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let counter = 0;

function f32(shape: number[], fill = 0): Tensor {
  return new Tensor(cpu.upload(new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(fill)), 'float32', shape);
}

/** A directory with the given config (and optional generation config) and a one-tensor model file. */
function modelDir(config: unknown, generation?: unknown): string {
  const dir = join(tmp, `m${counter++}`);
  mkdirSync(dir);
  writeFileSync(join(dir, 'config.json'), typeof config === 'string' ? config : JSON.stringify(config));
  if (generation !== undefined) writeFileSync(join(dir, 'generation_config.json'), JSON.stringify(generation));
  saveSafetensors(join(dir, 'model.safetensors'), { 'model.norm.weight': f32([4], 1) });
  return dir;
}

const qwen2Base = {
  model_type: 'qwen2',
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 512,
};

// ---- every fixture model: shapes and dtypes against its config ------------------------------------------------------

/** Checks a linear layer's shape [out, in]: the plain weight, or for a quantized one the packed triple. */
function expectLinear(model: ModelDir, prefix: string, out: number, inFeatures: number): void {
  const q = model.config.quantization;
  if (q && model.isQuantized(prefix)) {
    const qw = model.quantizedWeight(prefix);
    expect(qw.shape, prefix).toEqual([out, inFeatures]);
    expect(model.checkpoint.info(`${prefix}.weight`), prefix).toMatchObject({ dtype: 'uint32', shape: [out, (inFeatures * q.bits) / 32] });
    expect(model.checkpoint.info(`${prefix}.scales`).shape, prefix).toEqual([out, inFeatures / q.groupSize]);
    expect(model.checkpoint.info(`${prefix}.biases`).shape, prefix).toEqual([out, inFeatures / q.groupSize]);
  } else {
    expect(model.weight(`${prefix}.weight`).shape, prefix).toEqual([out, inFeatures]);
  }
}

function expectModelShapes(model: ModelDir): void {
  const c = model.config;
  const { hiddenSize: h, headDim: d, numAttentionHeads: heads, numKeyValueHeads: kv } = c;
  expectLinear(model, 'model.embed_tokens', c.vocabSize, h);
  expect(model.weight('model.norm.weight').shape).toEqual([h]);
  expect(model.has('lm_head.weight')).toBe(!c.tieWordEmbeddings);
  if (!c.tieWordEmbeddings) expectLinear(model, 'lm_head', c.vocabSize, h);

  for (let l = 0; l < c.numHiddenLayers; l++) {
    const p = `model.layers.${l}`;
    expectLinear(model, `${p}.self_attn.q_proj`, heads * d, h);
    expectLinear(model, `${p}.self_attn.k_proj`, kv * d, h);
    expectLinear(model, `${p}.self_attn.v_proj`, kv * d, h);
    expectLinear(model, `${p}.self_attn.o_proj`, h, heads * d);
    for (const norm of ['input_layernorm', 'post_attention_layernorm']) expect(model.weight(`${p}.${norm}.weight`).shape).toEqual([h]);
    const { bias: qBias } = model.linear(`${p}.self_attn.q_proj`);
    expect(qBias?.shape ?? null).toEqual(c.attentionBias ? [heads * d] : null);
    expect(model.linear(`${p}.self_attn.k_proj`).bias?.shape ?? null).toEqual(c.attentionBias ? [kv * d] : null);
    expect(model.linear(`${p}.self_attn.o_proj`).bias).toBeNull();
    if (c.qkNorm) {
      expect(model.weight(`${p}.self_attn.q_norm.weight`).shape).toEqual([d]);
      expect(model.weight(`${p}.self_attn.k_norm.weight`).shape).toEqual([d]);
    }
    if (c.moe) {
      const m = c.moe;
      expect(model.weight(`${p}.mlp.gate.weight`).shape).toEqual([m.numExperts, h]);
      for (let e = 0; e < m.numExperts; e++) {
        expectLinear(model, `${p}.mlp.experts.${e}.gate_proj`, m.moeIntermediateSize, h);
        expectLinear(model, `${p}.mlp.experts.${e}.up_proj`, m.moeIntermediateSize, h);
        expectLinear(model, `${p}.mlp.experts.${e}.down_proj`, h, m.moeIntermediateSize);
      }
      expectLinear(model, `${p}.mlp.shared_expert.gate_proj`, m.sharedExpertIntermediateSize, h);
      expectLinear(model, `${p}.mlp.shared_expert.down_proj`, h, m.sharedExpertIntermediateSize);
      expect(model.weight(`${p}.mlp.shared_expert_gate.weight`).shape).toEqual([1, h]);
    } else {
      expectLinear(model, `${p}.mlp.gate_proj`, c.intermediateSize, h);
      expectLinear(model, `${p}.mlp.up_proj`, c.intermediateSize, h);
      expectLinear(model, `${p}.mlp.down_proj`, h, c.intermediateSize);
    }
  }
}

describe('fixture model directories', () => {
  const names = readdirSync(modelsDir).sort();

  it('are all here', () => {
    expect(names).toEqual(['qwen2-moe-tiny', 'qwen2-tiny', 'qwen2-tiny-4bit', 'qwen2-tiny-bf16', 'qwen2-tiny-untied', 'qwen3-tiny']);
  });

  for (const name of names) {
    it(`${name} opens with the shapes its config implies`, () => {
      const model = openModelDir(join(modelsDir, name));
      expectModelShapes(model);
      expect(model.eosTokenIds).toEqual([1]);
    });
  }

  it('weights keep the file dtype', () => {
    const dtypeOf = (name: string, weight: string) => openModelDir(join(modelsDir, name)).checkpoint.info(weight).dtype;
    expect(dtypeOf('qwen2-tiny', 'model.layers.0.mlp.up_proj.weight')).toBe('float32');
    expect(dtypeOf('qwen2-tiny-bf16', 'model.layers.0.mlp.up_proj.weight')).toBe('bfloat16');
    expect(dtypeOf('qwen2-tiny-4bit', 'model.layers.0.mlp.up_proj.weight')).toBe('uint32');
    expect(dtypeOf('qwen2-tiny-4bit', 'model.layers.0.mlp.up_proj.scales')).toBe('bfloat16');
    expect(dtypeOf('qwen2-tiny-4bit', 'model.layers.0.input_layernorm.weight')).toBe('bfloat16');
  });

  it('the configs parse into the expected fields', () => {
    const config = (name: string) => readModelConfig(join(modelsDir, name, 'config.json'));
    expect(config('qwen2-tiny')).toMatchObject({
      modelType: 'qwen2',
      hiddenSize: 64,
      headDim: 16,
      numKeyValueHeads: 2,
      ropeTheta: 1e6,
      rmsNormEps: 1e-6,
      tieWordEmbeddings: true,
      attentionBias: true,
      qkNorm: false,
      dtype: 'float32',
      moe: null,
      quantization: null,
    });
    expect(config('qwen2-tiny-untied')).toMatchObject({ tieWordEmbeddings: false, ropeTheta: 10000, headDim: 16 });
    expect(config('qwen3-tiny')).toMatchObject({ modelType: 'qwen3', headDim: 32, attentionBias: false, qkNorm: true });
    expect(config('qwen2-tiny-4bit')).toMatchObject({ dtype: 'bfloat16', quantization: { groupSize: 64, bits: 4, layers: {} } });
    expect(config('qwen2-moe-tiny').moe).toEqual({
      numExperts: 8,
      numExpertsPerTok: 2,
      moeIntermediateSize: 32,
      sharedExpertIntermediateSize: 96,
      normTopkProb: false,
      decoderSparseStep: 1,
      mlpOnlyLayers: [],
    });
  });
});

describe('the 4-bit model', () => {
  const model = openModelDir(join(modelsDir, 'qwen2-tiny-4bit'));

  it('exposes quantized layers as QuantizedWeight and unquantized ones as tensors', () => {
    const q = model.linear('model.layers.0.self_attn.q_proj');
    expect(q.weight).toBeInstanceOf(QuantizedWeight);
    expect((q.weight as QuantizedWeight).groupSize).toBe(64);
    expect((q.weight as QuantizedWeight).bits).toBe(4);
    expect(q.bias?.shape).toEqual([64]);
    expect(model.linear('model.embed_tokens').weight).toBeInstanceOf(QuantizedWeight);
    expect(model.isQuantized('model.norm')).toBe(false);
    expect(() => model.quantizedWeight('model.norm')).toThrow(
      /model.norm has no quantized weight: it is not MLX-quantized \(model.norm.weight is bfloat16/,
    );
    expect(() => model.quantizedWeight('model.nope')).toThrow(/there is no model.nope.weight/);
  });

  it('dequantizes to float32 of the logical shape', () => {
    const w = dequantize(model.quantizedWeight('model.layers.0.mlp.down_proj'));
    expect(w.dtype).toBe('float32');
    expect(w.shape).toEqual([64, 128]);
    expect(Array.from(w.toArray()).every(Number.isFinite)).toBe(true);
  });
});

// ---- config dialects ------------------------------------------------------------------------------------------------

describe('config parsing', () => {
  it('the Qwen2 release configs', () => {
    const read = (name: string) => readModelConfig(join(configsDir, `${name}.json`));
    expect(read('Qwen2-0.5B-Instruct')).toMatchObject({
      modelType: 'qwen2',
      architectures: ['Qwen2ForCausalLM'],
      hiddenSize: 896,
      intermediateSize: 4864,
      numHiddenLayers: 24,
      numAttentionHeads: 14,
      numKeyValueHeads: 2,
      headDim: 64,
      vocabSize: 151936,
      ropeTheta: 1e6,
      maxPositionEmbeddings: 32768,
      tieWordEmbeddings: true,
      dtype: 'bfloat16',
      bosTokenId: 151643,
      eosTokenIds: [151645],
      slidingWindow: null,
      ropeScaling: null,
    });
    expect(read('Qwen2-1.5B-Instruct')).toMatchObject({ hiddenSize: 1536, numAttentionHeads: 12, headDim: 128, tieWordEmbeddings: true });
    expect(read('Qwen2-7B-Instruct')).toMatchObject({
      hiddenSize: 3584,
      numAttentionHeads: 28,
      numKeyValueHeads: 4,
      headDim: 128,
      vocabSize: 152064,
      tieWordEmbeddings: false,
    });
  });

  it('the transformers-5 dialect: rope_parameters, dtype, explicit head_dim, generation_config eos list', () => {
    const config = {
      architectures: ['Qwen3ForCausalLM'],
      model_type: 'qwen3',
      dtype: 'bfloat16',
      hidden_size: 64,
      head_dim: 128, // Qwen3: need not be hidden / heads
      intermediate_size: 96,
      num_hidden_layers: 1,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      vocab_size: 100,
      rms_norm_eps: 1e-5,
      rope_parameters: { rope_theta: 5e6, rope_type: 'default' },
      eos_token_id: 7,
      tie_word_embeddings: true,
      transformers_version: '5.17.0',
    };
    const dir = modelDir(config, { eos_token_id: [7, 9], bos_token_id: 3 });
    const model = openModelDir(dir);
    expect(model.config).toMatchObject({
      modelType: 'qwen3',
      dtype: 'bfloat16',
      headDim: 128,
      ropeTheta: 5e6,
      ropeScaling: null,
      rmsNormEps: 1e-5,
      eosTokenIds: [7],
      attentionBias: false,
      qkNorm: true,
    });
    expect(model.eosTokenIds).toEqual([7, 9]);
    expect(model.config.raw.transformers_version).toBe('5.17.0');
    expect(Array.from(model.weight('model.norm.weight').toArray())).toEqual([1, 1, 1, 1]);
  });

  it('an older config: rope_theta, torch_dtype ("torch." prefix), defaults for what is left out', () => {
    const c = parseModelConfig({ ...qwen2Base, num_key_value_heads: undefined, torch_dtype: 'torch.float16', rope_theta: 123 });
    expect(c).toMatchObject({
      ropeTheta: 123,
      dtype: 'float16',
      numKeyValueHeads: 4,
      headDim: 16,
      rmsNormEps: 1e-6,
      tieWordEmbeddings: false,
      maxPositionEmbeddings: 32768,
      eosTokenIds: [],
      bosTokenId: null,
      quantization: null,
    });
  });

  it('model type from architectures when model_type is absent; RoPE scaling is surfaced', () => {
    const { model_type: _, ...rest } = qwen2Base;
    const c = parseModelConfig({
      ...rest,
      architectures: ['Qwen2MoeForCausalLM'],
      num_experts: 4,
      num_experts_per_tok: 2,
      moe_intermediate_size: 8,
      rope_scaling: { type: 'yarn', factor: 4 },
    });
    expect(c.modelType).toBe('qwen2_moe');
    expect(c.moe).toMatchObject({ numExperts: 4, sharedExpertIntermediateSize: 0, decoderSparseStep: 1 });
    expect(c.ropeScaling).toEqual({ type: 'yarn', factor: 4 });
  });

  it('MLX quantization: from quantization_config alone, and per-layer overrides', () => {
    const c = parseModelConfig({ ...qwen2Base, quantization_config: { group_size: 32, bits: 8 } });
    expect(c.quantization).toEqual({ groupSize: 32, bits: 8, layers: {} });
    const mixed = parseModelConfig({
      ...qwen2Base,
      quantization: { group_size: 64, bits: 4, 'model.layers.0.mlp.down_proj': { group_size: 64, bits: 8 }, lm_head: false },
    });
    expect(mixed.quantization?.layers).toEqual({ 'model.layers.0.mlp.down_proj': { groupSize: 64, bits: 8 }, lm_head: false });
  });

  it('errors name the field and the file', () => {
    const { hidden_size: _, ...noHidden } = qwen2Base;
    expect(() => parseModelConfig(noHidden, 'my/config.json')).toThrow('my/config.json: hidden_size is missing (a required field)');
    expect(() => parseModelConfig({ ...qwen2Base, vocab_size: '512' }, 'c.json')).toThrow(
      'c.json: vocab_size must be a positive integer, got "512"',
    );
    expect(() => parseModelConfig({ ...qwen2Base, model_type: 'llama' }, 'c.json')).toThrow(
      'c.json: unsupported model_type "llama" (supported: qwen2, qwen3, qwen2_moe)',
    );
    const { model_type: __, ...noType } = qwen2Base;
    expect(() => parseModelConfig({ ...noType, architectures: ['LlamaForCausalLM'] }, 'c.json')).toThrow(
      /unsupported architecture LlamaForCausalLM \(supported: Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen2MoeForCausalLM\)/,
    );
    expect(() => parseModelConfig(noType, 'c.json')).toThrow(/model_type is missing/);
    expect(() => parseModelConfig({ ...qwen2Base, num_key_value_heads: 3 }, 'c.json')).toThrow(
      /must be a multiple of num_key_value_heads \(3\)/,
    );
    expect(() => parseModelConfig({ ...qwen2Base, hidden_act: 'gelu' }, 'c.json')).toThrow(/unsupported hidden_act "gelu"/);
    expect(() => parseModelConfig({ ...qwen2Base, model_type: 'qwen2_moe' }, 'c.json')).toThrow('c.json: num_experts is missing');
    expect(() =>
      parseModelConfig({ ...qwen2Base, quantization_config: { quant_method: 'gptq', bits: 4, group_size: 128 } }, 'c.json'),
    ).toThrow(/c.json: quantization_config: unsupported quantization method "gptq"/);
    expect(() => parseModelConfig({ ...qwen2Base, quantization: { group_size: 64 } }, 'c.json')).toThrow(
      'c.json: quantization: bits is missing',
    );
    expect(() => parseModelConfig({ ...qwen2Base, quantization: { group_size: 64, bits: 7 } }, 'c.json')).toThrow(/unsupported bits 7/);
    expect(() => parseModelConfig({ ...qwen2Base, hidden_size: 130 }, 'c.json')).toThrow(
      'c.json: hidden_size (130) is not a multiple of num_attention_heads (4) and there is no head_dim',
    );
    const moe = { ...qwen2Base, model_type: 'qwen2_moe', num_experts: 4, moe_intermediate_size: 32, shared_expert_intermediate_size: 64 };
    expect(() => parseModelConfig({ ...moe, num_experts_per_tok: 5 }, 'c.json')).toThrow(
      'c.json: num_experts_per_tok (5) exceeds num_experts (4)',
    );
  });
});

// ---- directories that are not models ------------------------------------------------------------------------------

describe('openModelDir errors', () => {
  it('a missing path, a file, a directory without config.json (listing what it holds)', () => {
    expect(() => openModelDir(join(tmp, 'absent'))).toThrow(/absent does not exist/);
    const file = join(tmp, 'plain.txt');
    writeFileSync(file, 'x');
    expect(() => openModelDir(file)).toThrow(/plain.txt is a file, not a model directory/);
    const dir = join(tmp, `not-a-model-${counter++}`);
    mkdirSync(dir);
    expect(() => openModelDir(dir)).toThrow(/is not a model directory: it has no config.json \(it is empty\)/);
    writeFileSync(join(dir, 'README.md'), '');
    writeFileSync(join(dir, 'weights.bin'), '');
    expect(() => openModelDir(dir)).toThrow(/it has no config.json \(found: README.md, weights.bin\)/);
  });

  it('a config that is not JSON, or lacks a field, is named by its path', () => {
    const bad = modelDir('{"model_type": "qwen2",');
    expect(() => openModelDir(bad)).toThrow(new RegExp(`${join(bad, 'config.json')}: not valid JSON`));
    const { num_hidden_layers: _, ...partial } = qwen2Base;
    const missing = modelDir(partial);
    expect(() => openModelDir(missing)).toThrow(`${join(missing, 'config.json')}: num_hidden_layers is missing (a required field)`);
  });

  it('a model directory without weights, and one with a missing shard', () => {
    const dir = join(tmp, `no-weights-${counter++}`);
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(qwen2Base));
    expect(() => openModelDir(dir)).toThrow(/has no .safetensors file/);
    writeFileSync(
      join(dir, 'model.safetensors.index.json'),
      JSON.stringify({ weight_map: { 'model.norm.weight': 'model-00001-of-00001.safetensors' } }),
    );
    expect(() => openModelDir(dir)).toThrow(/model.safetensors.index.json: shard model-00001-of-00001.safetensors is missing/);
  });

  it('quantized weights without a quantization block in the config', () => {
    const dir = join(tmp, `q-no-config-${counter++}`);
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(qwen2Base));
    saveSafetensors(join(dir, 'model.safetensors'), {
      'lm_head.weight': new Tensor(cpu.upload(new Uint32Array(8)), 'uint32', [1, 8]),
      'lm_head.scales': f32([1, 1]),
      'lm_head.biases': f32([1, 1]),
    });
    const model = openModelDir(dir);
    expect(() => model.linear('lm_head')).toThrow(/lm_head is stored quantized .* but config.json has no "quantization"/);
  });
});

// The engine's Qwen2-MoE blocks (src/model/moe.ts): chapter 3.3's block with the engine's experts. Against the
// plain block of the week 3 model (Qwen2ModelWeek3, experts of week 2's Projection and Qwen2MLP) on the
// checkpoints' own layers, fused and unfused; against a float64 loop (@tiny-llm/grading) on bf16 weights; the
// Hugging Face and MLX layouts giving the same block; and the loading errors. The whole model is held to
// the goldens in model.test.ts (qwen2-moe-tiny, tiny-qwen2-moe-py).
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import { expectClose, FIXTURES_DIR, MODELS_DIR, seeded } from '@tiny-llm/tensor-core/testing';
import { expectGolden, float64 as f64 } from '@tiny-llm/grading';
import { isSparseLayer, Qwen2ModelWeek3, type Qwen2MoeBlock } from '@tiny-llm/reference/week3';
import { describe, expect, it } from 'vitest';
import { loadMoeBlock } from '../src/model/moe.ts';
import type { Weight } from '../src/model/linear.ts';

/** A model directory's weights by name, as the engine's loader reads them (dense here). */
function weightsOf(dir: string): (name: string) => Weight | undefined {
  const md = tc.openModelDir(dir);
  return (name) => (md.has(name) ? md.weight(name) : undefined);
}

describe("the engine's MoE block = the plain block of the week 3 model, on the checkpoints' layers", () => {
  for (const [what, dir] of [
    ['qwen2-moe-tiny (float32)', `${FIXTURES_DIR}models/qwen2-moe-tiny`],
    ['tiny-qwen2-moe-py (bf16, read in place)', `${MODELS_DIR}tiny-qwen2-moe-py`],
  ]) {
    for (const fuse of [true, false]) {
      it(`${what}, every layer${fuse ? '' : ', gate and up unfused'}: prefill rows and one decode row`, () => {
        const plain = Qwen2ModelWeek3.load(dir);
        const config = plain.config;
        const weight = weightsOf(dir);
        for (let i = 0; i < config.numHiddenLayers; i++) {
          const engine = loadMoeBlock(config, `model.layers.${i}.mlp`, weight, { fuse });
          const reference = plain.layers[i].mlp as Qwen2MoeBlock;
          for (const t of [7, 1]) {
            const x = tc.tensor(seeded(t * config.hiddenSize, 10 * i + t, 1), { shape: [1, t, config.hiddenSize] });
            expectGolden(engine.forward(x), f64.toND(reference.forward(x)), {
              atol: 1e-5,
              what: `layer ${i}, ${t} tokens`,
              axes: ['b', 'l', 'e'],
            });
          }
        }
      });
    }
  }

  it('bf16 experts against the float64 loop over the tokens', () => {
    // The demo model's layer 0 in float64, from the bf16 values the engine reads.
    const dir = `${MODELS_DIR}tiny-qwen2-moe-py`;
    const md = tc.openModelDir(dir);
    const p = 'model.layers.0.mlp';
    const nd = (name: string) => f64.toND(md.weight(name));
    const gated = (prefix: string) => ({
      gate: nd(`${prefix}.gate_proj.weight`),
      up: nd(`${prefix}.up_proj.weight`),
      down: nd(`${prefix}.down_proj.weight`),
    });
    const moe = md.config.moe!;
    const arrays: f64.MoeArrays = {
      router: nd(`${p}.gate.weight`),
      experts: Array.from({ length: moe.numExperts }, (_, e) => gated(`${p}.experts.${e}`)),
      shared: gated(`${p}.shared_expert`),
      sharedGate: nd(`${p}.shared_expert_gate.weight`),
      k: moe.numExpertsPerTok,
      normTopkProb: moe.normTopkProb,
    };
    const x = tc.tensor(seeded(9 * md.config.hiddenSize, 3, 1), { shape: [9, md.config.hiddenSize] });
    const block = loadMoeBlock(md.config, p, weightsOf(dir));
    expectGolden(block.forward(x), f64.moe(f64.toND(x), arrays), { atol: 1e-4, what: 'layer 0 (bf16)', axes: ['t', 'e'] });
  });
});

describe("the engine's MoE block: loading", () => {
  const config = (moe: Partial<NonNullable<ModelConfig['moe']>>): ModelConfig =>
    tc.parseModelConfig({
      model_type: 'qwen2_moe',
      hidden_size: 16,
      intermediate_size: 32,
      num_hidden_layers: 4,
      num_attention_heads: 2,
      vocab_size: 10,
      num_experts: moe.numExperts ?? 4,
      num_experts_per_tok: moe.numExpertsPerTok ?? 2,
      moe_intermediate_size: 8,
      shared_expert_intermediate_size: 12,
      decoder_sparse_step: moe.decoderSparseStep ?? 1,
      mlp_only_layers: moe.mlpOnlyLayers ?? [],
    });

  it('decoder_sparse_step and mlp_only_layers choose the sparse layers', () => {
    expect([0, 1, 2, 3].map((i) => isSparseLayer(config({}), i))).toEqual([true, true, true, true]);
    expect([0, 1, 2, 3].map((i) => isSparseLayer(config({ decoderSparseStep: 2 }), i))).toEqual([false, true, false, true]);
    expect([0, 1, 2, 3].map((i) => isSparseLayer(config({ mlpOnlyLayers: [0, 2] }), i))).toEqual([false, true, false, true]);
  });

  const p = 'model.layers.0.mlp';
  const random = (rows: number, cols: number, seed: number) => tc.tensor(seeded(rows * cols, seed, 0.5), { shape: [rows, cols] });
  /** Every weight of a block of 4 experts in the Hugging Face layout. */
  function hfWeights(): Map<string, Tensor> {
    const names = new Map<string, Tensor>();
    let seed = 1;
    names.set(`${p}.gate.weight`, random(4, 16, seed++));
    for (let e = 0; e < 4; e++) {
      names.set(`${p}.experts.${e}.gate_proj.weight`, random(8, 16, seed++));
      names.set(`${p}.experts.${e}.up_proj.weight`, random(8, 16, seed++));
      names.set(`${p}.experts.${e}.down_proj.weight`, random(16, 8, seed++));
    }
    names.set(`${p}.shared_expert.gate_proj.weight`, random(12, 16, seed++));
    names.set(`${p}.shared_expert.up_proj.weight`, random(12, 16, seed++));
    names.set(`${p}.shared_expert.down_proj.weight`, random(16, 12, seed++));
    names.set(`${p}.shared_expert_gate.weight`, random(1, 16, seed++));
    return names;
  }

  it("the Hugging Face layout and MLX's stacked switch_mlp give the same block", () => {
    const cfg = config({});
    const names = hfWeights();
    const hf = loadMoeBlock(cfg, p, (n) => names.get(n));
    const stacked = new Map(names);
    for (const proj of ['gate_proj', 'up_proj', 'down_proj']) {
      const parts = [0, 1, 2, 3].map((e) => names.get(`${p}.experts.${e}.${proj}.weight`)!);
      parts.forEach((_, e) => stacked.delete(`${p}.experts.${e}.${proj}.weight`));
      stacked.set(`${p}.switch_mlp.${proj}.weight`, tc.stack(parts, 0));
    }
    const mlx = loadMoeBlock(cfg, p, (n) => stacked.get(n));
    const x = tc.tensor(seeded(3 * 16, 99, 1), { shape: [1, 3, 16] });
    expectClose(mlx.forward(x).toArray(), hf.forward(x).toArray(), 1e-6);
  });

  it('names the missing weight, and the one of the wrong shape', () => {
    const cfg = config({});
    const names = hfWeights();
    expect(() => loadMoeBlock(cfg, p, (n) => (n.endsWith('experts.2.up_proj.weight') ? undefined : names.get(n)))).toThrow(
      /no model\.layers\.0\.mlp\.experts\.2\.up_proj\.weight/,
    );
    const badRouter = new Map(names).set(`${p}.gate.weight`, random(3, 16, 50));
    expect(() => loadMoeBlock(cfg, p, (n) => badRouter.get(n))).toThrow(
      /model\.layers\.0\.mlp\.gate: expected a weight of shape \[4, 16\]/,
    );
    const badExpert = new Map(names).set(`${p}.experts.1.gate_proj.weight`, random(8, 15, 51));
    expect(() => loadMoeBlock(cfg, p, (n) => badExpert.get(n))).toThrow(/experts\.1/);
    expect(() => loadMoeBlock(config({ numExpertsPerTok: 4, numExperts: 4 }), p, (n) => names.get(n))).not.toThrow();
    const block = loadMoeBlock(cfg, p, (n) => names.get(n));
    expect(() => block.forward(tc.zeros([2, 15]))).toThrow(/expected x of shape \[\.\.\., 16\]/);
  });
});

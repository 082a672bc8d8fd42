// Chapter 3.3: the Qwen2-MoE block against a plain per-token loop in float64 (router softmax, top-k, optional
// renormalisation, shared expert with its sigmoid gate), on small random weights. The whole MoE model is
// checked against its golden logits in kv-cache.test.ts (qwen2-moe-tiny, tiny-qwen2-moe-py).
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import { expectClose, seeded } from '@tiny-llm/tensor-core/testing';
import { describe, expect, it } from 'vitest';
import { isSparseLayer } from '../src/model/qwen2.ts';
import { Qwen2MoeBlock, routeTopK, type ExpertWeights } from '../src/model/moe.ts';

type Mat = { rows: number; cols: number; data: number[] };

let seed = 1;
function mat(rows: number, cols: number, scale = 0.5): Mat {
  return { rows, cols, data: seeded(rows * cols, seed++, scale) };
}
const toTensor = (m: Mat, dtype: tc.DType = 'float32') => tc.tensor(m.data, { shape: [m.rows, m.cols], dtype });
/** The values a tensor of `dtype` holds for m (bf16 rounds them), so the loop sees what the block sees. */
const asStored = (m: Mat, dtype: tc.DType): Mat => ({ ...m, data: Array.from(toTensor(m, dtype).toArray()) });

/** W [out, in] @ x [in] in float64. */
function matvec(w: Mat, x: number[]): number[] {
  const out = new Array<number>(w.rows).fill(0);
  for (let r = 0; r < w.rows; r++) for (let c = 0; c < w.cols; c++) out[r] += w.data[r * w.cols + c] * x[c];
  return out;
}
const silu = (v: number) => v / (1 + Math.exp(-v));
const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));
function expert(e: { gate: Mat; up: Mat; down: Mat }, x: number[]): number[] {
  const g = matvec(e.gate, x);
  const u = matvec(e.up, x);
  return matvec(e.down, g.map((v, i) => silu(v) * u[i]));
}

interface Case {
  hidden: number;
  experts: number;
  k: number;
  inter: number;
  shared: number; // 0: no shared expert
  norm: boolean;
  tokens: number[]; // the leading shape of x
  dtype?: tc.DType;
}

function build(c: Case) {
  const dtype = c.dtype ?? 'float32';
  const ex = Array.from({ length: c.experts }, () => ({
    gate: asStored(mat(c.inter, c.hidden), dtype),
    up: asStored(mat(c.inter, c.hidden), dtype),
    down: asStored(mat(c.hidden, c.inter), dtype),
  }));
  const router = asStored(mat(c.experts, c.hidden, 1), dtype);
  const shared = c.shared
    ? { gate: asStored(mat(c.shared, c.hidden), dtype), up: asStored(mat(c.shared, c.hidden), dtype), down: asStored(mat(c.hidden, c.shared), dtype) }
    : null;
  const sharedGate = c.shared ? asStored(mat(1, c.hidden), dtype) : null;
  const weights = (e: { gate: Mat; up: Mat; down: Mat }): ExpertWeights => ({
    gate: toTensor(e.gate, dtype),
    up: toTensor(e.up, dtype),
    down: toTensor(e.down, dtype),
  });
  const block = new Qwen2MoeBlock({
    hiddenSize: c.hidden,
    numExpertsPerTok: c.k,
    normTopkProb: c.norm,
    router: toTensor(router, dtype),
    experts: ex.map(weights),
    sharedExpert: shared ? weights(shared) : undefined,
    sharedExpertGate: sharedGate ? toTensor(sharedGate, dtype) : undefined,
  });
  /** The plain loop: every token on its own, float64. */
  const reference = (x: number[]): number[] => {
    const logits = matvec(router, x);
    const m = Math.max(...logits);
    const exps = logits.map((v) => Math.exp(v - m));
    const z = exps.reduce((a, b) => a + b, 0);
    const probs = exps.map((v) => v / z);
    const order = probs.map((p, e) => [p, e]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, c.k);
    const total = order.reduce((s, [p]) => s + p, 0);
    const out = new Array<number>(c.hidden).fill(0);
    for (const [p, e] of order) {
      const y = expert(ex[e], x);
      const w = c.norm ? p / total : p;
      for (let i = 0; i < c.hidden; i++) out[i] += w * y[i];
    }
    if (shared && sharedGate) {
      const g = sigmoid(matvec(sharedGate, x)[0]);
      const y = expert(shared, x);
      for (let i = 0; i < c.hidden; i++) out[i] += g * y[i];
    }
    return out;
  };
  return { block, reference };
}

function check(c: Case, atol = 1e-5): void {
  const { block, reference } = build(c);
  const t = c.tokens.reduce((a, b) => a * b, 1);
  const xs = seeded(t * c.hidden, seed++, 1);
  const x = tc.tensor(xs, { shape: [...c.tokens, c.hidden] });
  const out = block.forward(x);
  expect([...out.shape]).toEqual([...c.tokens, c.hidden]);
  expect(out.dtype).toBe('float32');
  const want: number[] = [];
  for (let i = 0; i < t; i++) want.push(...reference(xs.slice(i * c.hidden, (i + 1) * c.hidden)));
  expectClose(out.toArray(), want, atol);
}

describe('routeTopK', () => {
  it('picks the k largest probabilities per token, in descending order, lower index first on ties', () => {
    const probs = [0.1, 0.5, 0.3, 0.1, /* token 1 */ 0.25, 0.25, 0.4, 0.1];
    const r = routeTopK(probs, 2, 4, 2, false);
    expect(Array.from(r.indices)).toEqual([1, 2, 2, 0]);
    expectClose(r.weights, [0.5, 0.3, 0.4, 0.25], 1e-7);
  });

  it('renormalises the k weights to sum to 1 only when asked', () => {
    const r = routeTopK([0.1, 0.5, 0.3, 0.1], 1, 4, 2, true);
    expectClose(r.weights, [0.5 / 0.8, 0.3 / 0.8], 1e-7);
    const all = routeTopK([0.1, 0.5, 0.3, 0.1], 1, 4, 4, false);
    expect(Array.from(all.indices)).toEqual([1, 2, 0, 3]);
  });

  it('rejects a k outside [1, E] and probabilities of the wrong size', () => {
    expect(() => routeTopK([0.5, 0.5], 1, 2, 3, false)).toThrow(/k = 3/);
    expect(() => routeTopK([0.5, 0.5, 0.1], 1, 2, 1, false)).toThrow(/3 probabilities for 1 tokens x 2 experts/);
  });
});

describe('Qwen2MoeBlock = the plain per-token loop', () => {
  const base: Case = { hidden: 16, experts: 6, k: 2, inter: 8, shared: 12, norm: false, tokens: [2, 5] };
  it('prefill: 10 tokens, top-2 of 6 experts, shared expert, no renormalisation', () => check(base));
  it('norm_topk_prob: the k weights renormalised', () => check({ ...base, norm: true }));
  it('one token (the decode path)', () => check({ ...base, tokens: [1, 1] }));
  it('no shared expert', () => check({ ...base, shared: 0 }));
  it('top-1', () => check({ ...base, k: 1 }));
  it('every expert for every token (k = E)', () => check({ ...base, experts: 3, k: 3 }));
  it('many tokens, so that every expert gets several', () => check({ ...base, tokens: [3, 40] }));
  it('bf16 weights (read in place)', () => check({ ...base, dtype: 'bfloat16' }, 1e-4));
});

describe('Qwen2MoeBlock: construction', () => {
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

  it('fromWeights reads the Hugging Face layout and MLX stacked switch_mlp the same', () => {
    const cfg = config({});
    const names = new Map<string, Tensor>();
    const p = 'model.layers.0.mlp';
    const r = (rows: number, cols: number) => tc.tensor(seeded(rows * cols, seed++, 0.5), { shape: [rows, cols] });
    names.set(`${p}.gate.weight`, r(4, 16));
    for (let e = 0; e < 4; e++) {
      names.set(`${p}.experts.${e}.gate_proj.weight`, r(8, 16));
      names.set(`${p}.experts.${e}.up_proj.weight`, r(8, 16));
      names.set(`${p}.experts.${e}.down_proj.weight`, r(16, 8));
    }
    names.set(`${p}.shared_expert.gate_proj.weight`, r(12, 16));
    names.set(`${p}.shared_expert.up_proj.weight`, r(12, 16));
    names.set(`${p}.shared_expert.down_proj.weight`, r(16, 12));
    names.set(`${p}.shared_expert_gate.weight`, r(1, 16));
    const hf = Qwen2MoeBlock.fromWeights(cfg, p, (n) => names.get(n));
    const stacked = new Map(names);
    for (const proj of ['gate_proj', 'up_proj', 'down_proj']) {
      const parts = [0, 1, 2, 3].map((e) => names.get(`${p}.experts.${e}.${proj}.weight`)!);
      parts.forEach((_, e) => stacked.delete(`${p}.experts.${e}.${proj}.weight`));
      stacked.set(`${p}.switch_mlp.${proj}.weight`, tc.stack(parts, 0));
    }
    const mlx = Qwen2MoeBlock.fromWeights(cfg, p, (n) => stacked.get(n));
    const x = tc.tensor(seeded(3 * 16, 99, 1), { shape: [1, 3, 16] });
    expectClose(mlx.forward(x).toArray(), hf.forward(x).toArray(), 1e-6);
    expect(() => Qwen2MoeBlock.fromWeights(cfg, p, (n) => (n.endsWith('experts.2.up_proj.weight') ? undefined : names.get(n)))).toThrow(
      /no model\.layers\.0\.mlp\.experts\.2\.up_proj\.weight/,
    );
  });

  it('says which weight has the wrong shape', () => {
    const w = (rows: number, cols: number) => tc.zeros([rows, cols]);
    const expertW = { gate: w(8, 16), up: w(8, 16), down: w(16, 8) };
    expect(
      () => new Qwen2MoeBlock({ hiddenSize: 16, numExpertsPerTok: 2, normTopkProb: false, router: w(3, 16), experts: [expertW, expertW], name: 'layer7' }),
    ).toThrow(/layer7\.gate: expected a weight of shape \[2, 16\]/);
    expect(
      () => new Qwen2MoeBlock({ hiddenSize: 16, numExpertsPerTok: 3, normTopkProb: false, router: w(2, 16), experts: [expertW, expertW] }),
    ).toThrow(/num_experts_per_tok \(3\)/);
    const x = tc.zeros([2, 15]);
    const block = new Qwen2MoeBlock({ hiddenSize: 16, numExpertsPerTok: 1, normTopkProb: false, router: w(2, 16), experts: [expertW, expertW] });
    expect(() => block.forward(x)).toThrow(/expected x of shape \[\.\.\., 16\]/);
  });
});

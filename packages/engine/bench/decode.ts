// Decode speed of the week 2 model (KV cache, weights in their file dtype), next to its ceilings.
//
//   cd packages/engine && npx tsx bench/decode.ts [--tokens 128] [--tokens-05b 32] [--skip-tiny] [--skip-05b] [--q4]
//                                                    [--rounds 3] [--profile] [--composed]
//
// 1. The demo model models/tiny-qwen2-py (15.7M parameters, bf16): greedy decoding of 128 tokens after a short
//    prompt, in an engine session. Its weights (31 MB) nearly fit in L3, so this measures the per-token overhead
//    of the engine: also with every step through the forward pass instead of a replayed decode graph.
// 2. A Qwen2-0.5B with random bf16 weights (fixtures/configs/Qwen2-0.5B-Instruct.json, built with fromWeights):
//    decode is memory-bound, so tokens/s <= read bandwidth / bytes of weights read per token (~0.99 GB).
// --q4 also runs the 0.5B shapes with MLX 4-bit weights (~0.28 GB per token, through quantizedMatmul).
// --profile counts the ops of one decode step and where their time goes (the reference addon's kernels by weight
// shape: quantizedMatmul as "qmm N x K", quantizedPanelLinear as "qpanels N x K", panelLinear as "linear N x K",
// and attentionDecode); for the demo model
// also after the 1024-token prompt, where attention reads a KV cache of 8 MB per step.
// --composed also runs the 0.5B shapes with { fusedKernels: false } (the separate RMSNorm, bias, residual, SwiGLU,
// RoPE, cache and attention ops), alternating with the fused model in each round, and reports both.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { readBandwidthGBs } from '@tiny-llm/tensor-core/bench';
import { engineKernels } from '../src/model/native.ts';
import type { GatedMlp, Weight } from '../src/model/linear.ts';
import { Qwen2Model } from '../src/model/qwen2.ts';
import { EngineQwen2 } from '../src/session.ts';
import { atLeast, defineFlags, scriptFlags } from '../src/flags.ts';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const FLAGS = defineFlags({
  tokens: { kind: 'int', help: 'tokens decoded by the demo model', check: atLeast(2) },
  'tokens-05b': { kind: 'int', help: 'tokens decoded by the 0.5B shapes', check: atLeast(2) },
  rounds: { kind: 'int', help: 'rounds of the 0.5B shapes', check: atLeast(1) },
  'skip-tiny': { kind: 'bool', help: 'leave out the demo model' },
  'skip-05b': { kind: 'bool', help: 'leave out the 0.5B shapes' },
  q4: { kind: 'bool', help: 'also the 0.5B shapes in 4 bits' },
  profile: { kind: 'bool', help: 'profile one decode step' },
  composed: { kind: 'bool', help: 'also the 0.5B shapes with separate kernels' },
});
const flags = scriptFlags('bench/decode.ts', 'decode speed of the demo model and the Qwen2-0.5B shapes', FLAGS);
const TOKENS = flags.tokens ?? 128;

const ids2d = (ids: number[][]) => tc.tensor(ids, { dtype: 'int32' });

/**
 * Greedy decoding of `tokens` tokens after `prompt` in an engine session (decode steps replayed from a captured
 * graph where the model allows it, model/decode-graph.ts; `graphs: false` runs each through the forward pass);
 * returns the decode rate (tokens/s, prefill excluded).
 */
function decodeRate(
  model: Qwen2Model,
  prompt: number[],
  tokens: number,
  graphs = true,
): { rate: number; prefillMs: number; out: number[] } {
  const session = new EngineQwen2(model, { decodeGraphs: graphs }).newSession();
  const next = (ids: number[]) => {
    const logits = session.feed(ids);
    const id = tc.tidy(() => tc.argmax(logits, -1).item());
    logits.dispose();
    return id;
  };
  const t0 = performance.now();
  const out = [next(prompt)];
  const t1 = performance.now();
  for (let i = 1; i < tokens; i++) out.push(next([out[i - 1]]));
  const t2 = performance.now();
  session.dispose();
  return { rate: (tokens - 1) / ((t2 - t1) / 1e3), prefillMs: t1 - t0, out };
}

/** Counts and times every backend kernel call of one decode step (wrapping the CPU backend's methods). */
function profileStep(model: Qwen2Model, prompt: number[]): void {
  const cache = model.newCache();
  tc.tidy(() => model.forwardLastLogits(ids2d([prompt]), cache));
  const backend = tc.cpu as unknown as Record<string, (...a: unknown[]) => unknown>;
  const stats = new Map<string, { n: number; ms: number }>();
  const names = ['unary', 'binary', 'where', 'reduce', 'softmax', 'matmul', 'take', 'rmsNorm', 'rope', 'allocate'];
  const originals = names.map((n) => backend[n]);
  names.forEach((n, i) => {
    backend[n] = function (this: unknown, ...a: unknown[]) {
      const t = performance.now();
      const r = originals[i].apply(this, a);
      const key =
        n === 'unary' || n === 'binary' || n === 'reduce'
          ? `${n}:${a[0]}`
          : n === 'matmul'
            ? (a[1] as Tensor).ndim === 2
              ? `matmul ${(a[1] as Tensor).shape[1]}x${(a[1] as Tensor).shape[0]}` // a weight [out, in], as W.T
              : 'matmul (batched)'
            : n;
      const s = stats.get(key) ?? { n: 0, ms: 0 };
      s.n++;
      s.ms += performance.now() - t;
      stats.set(key, s);
      return r;
    };
  });
  // The engine's kernels are its addon's, not the backend's: wrapped too, the products keyed by weight shape.
  const addon = engineKernels() as Record<string, (...a: unknown[]) => unknown>;
  const shapeOf = (view: unknown) => (view as [ArrayBuffer, Float64Array])[1]; // [byteOffset, dtype, ndim, ...shape, ...strides]
  const wrap = (name: string, keyOf: (args: unknown[]) => string) => {
    const original = addon[name];
    addon[name] = function (this: unknown, ...a: unknown[]) {
      const t = performance.now();
      const r = original.apply(this, a);
      const key = keyOf(a);
      const s = stats.get(key) ?? { n: 0, ms: 0 };
      s.n++;
      s.ms += performance.now() - t;
      stats.set(key, s);
      return r;
    };
    return () => {
      addon[name] = original;
    };
  };
  const restoreKernels = [
    wrap('quantizedMatmul', (a) => `qmm ${shapeOf(a[1])[3]}x${(shapeOf(a[1])[4] * 32) / (a[6] as number)}`),
    // panels [P, K, 32], out [..., N]
    wrap('panelLinear', (a) => `linear ${shapeOf(a[2])[3 + shapeOf(a[2])[2] - 1]}x${shapeOf(a[1])[4]}`),
    // panels [P, K / 8, 16], out [..., N]
    wrap('quantizedPanelLinear', (a) => `qpanels ${shapeOf(a[2])[3 + shapeOf(a[2])[2] - 1]}x${shapeOf(a[1])[4] * 8}`),
    wrap('attentionDecode', () => 'attentionDecode'),
  ];
  const steps = 20;
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) tc.tidy(() => tc.argmax(model.forwardLastLogits(ids2d([[1]]), cache), -1).item());
  const total = (performance.now() - t0) / steps;
  names.forEach((n, i) => (backend[n] = originals[i]));
  for (const restore of restoreKernels) restore();
  let kernelMs = 0;
  let calls = 0;
  console.log(`  one decode step: ${total.toFixed(3)} ms (instrumented)`);
  for (const [k, s] of [...stats].sort((a, b) => b[1].ms - a[1].ms)) {
    if (k !== 'allocate') {
      kernelMs += s.ms;
      calls += s.n;
    }
    console.log(`    ${k.padEnd(16)} ${(s.n / steps).toFixed(0).padStart(5)} calls  ${(s.ms / steps).toFixed(3)} ms`);
  }
  console.log(
    `  ${(calls / steps).toFixed(0)} kernel calls per token, ${(kernelMs / steps).toFixed(3)} ms in kernels, ` +
      `${(total - kernelMs / steps).toFixed(3)} ms elsewhere (JS: op wrappers, tidy, views)`,
  );
}

function bestOf<T extends { rate: number }>(runs: number, fn: () => T): T {
  let best: T | undefined;
  for (let i = 0; i < runs; i++) {
    const r = fn();
    if (!best || r.rate > best.rate) best = r;
  }
  return best!;
}

// ---- 1. the demo model --------------------------------------------------------------------------------------------
if (!flags['skip-tiny']) {
  const dir = `${ROOT}models/tiny-qwen2-py`;
  const golden = JSON.parse(readFileSync(`${dir}/golden.json`, 'utf8')) as { cases: { kind: string; ids: number[] }[] };
  const prompt = golden.cases.find((c) => c.kind === 'text')!.ids;
  const t0 = performance.now();
  const model = Qwen2Model.load(dir);
  const loadMs = performance.now() - t0;
  decodeRate(model, prompt, 16); // warm-up: page in the weights, fill the buffer pool
  decodeRate(model, prompt, 16, false);
  // The two ways alternate, round by round, so that both see the same machine.
  let r = decodeRate(model, prompt, TOKENS);
  let plain = decodeRate(model, prompt, TOKENS, false);
  for (let round = 1; round < 5; round++) {
    const g = decodeRate(model, prompt, TOKENS);
    if (g.rate > r.rate) r = g;
    const p = decodeRate(model, prompt, TOKENS, false);
    if (p.rate > plain.rate) plain = p;
  }
  console.log(
    `tiny-qwen2-py (bf16, 15.7M params): load ${loadMs.toFixed(0)} ms; prompt ${prompt.length} tokens, prefill ` +
      `${r.prefillMs.toFixed(1)} ms; decode ${TOKENS} tokens: ${r.rate.toFixed(0)} tokens/s (${(1e3 / r.rate).toFixed(2)} ms/token)`,
  );
  console.log(
    `  each step through the forward pass instead of a decode graph: ${plain.rate.toFixed(0)} tokens/s ` +
      `(${(1e3 / plain.rate).toFixed(2)} ms/token)`,
  );
  const floor = projectionsFloor(model, 20);
  console.log(`  the projections alone: ${floor.toFixed(2)} ms per step; the rest of a step: ${(1e3 / r.rate - floor).toFixed(2)} ms`);
  // With the cache, a step attends over the context but projects one token: its cost grows linearly, and
  // slowly, with the context (without the cache every step would rerun the whole sequence).
  const long = Array.from({ length: 1024 }, (_, i) => prompt[i % prompt.length]);
  const rl = bestOf(3, () => decodeRate(model, long, 64));
  console.log(
    `  after a ${long.length}-token prompt (prefill ${rl.prefillMs.toFixed(0)} ms): decode ${rl.rate.toFixed(0)} tokens/s ` +
      `(${(1e3 / rl.rate).toFixed(2)} ms/token)`,
  );
  if (flags.profile) profileStep(model, prompt);
  if (flags.profile) profileStep(model, long);
}

// ---- 2. Qwen2-0.5B shapes, random weights ------------------------------------------------------------------------

/** Random bf16 words of small values (magnitude 2^-8 .. 2^-5, random sign): a pool that weights are cut from. */
const POOL = (() => {
  const words = new Uint16Array(1 << 22);
  let seed = 12345;
  for (let i = 0; i < words.length; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    words[i] = ((seed >>> 31) << 15) | ((119 + ((seed >>> 20) & 3)) << 7) | ((seed >>> 8) & 0x7f);
  }
  return words;
})();

/** `n` 16-bit words cut from the pool (at a varying start, so that no two weights are equal). */
function poolWords(n: number, salt: number): Uint16Array<ArrayBuffer> {
  const out = new Uint16Array(n);
  let at = 0;
  let from = (salt * 7919) % POOL.length;
  while (at < n) {
    const len = Math.min(n - at, POOL.length - from);
    out.set(POOL.subarray(from, from + len), at);
    at += len;
    from = 0;
  }
  return out;
}

/** The weights of a Qwen2 config: bf16, or MLX-quantized with `bits` bits (groups of 64), with random values. */
function randomWeights(config: tc.ModelConfig, bits: number | null): { weights: Map<string, Weight>; bytes: number } {
  let salt = 0;
  let bytes = 0;
  const bf16 = (shape: number[]): Tensor => {
    const n = shape.reduce((a, b) => a * b, 1);
    bytes += n * 2;
    return new tc.Tensor(tc.cpu.wrap(poolWords(n, ++salt).buffer), 'bfloat16', shape);
  };
  const matrix = (rows: number, cols: number): Weight => {
    if (bits === null) return bf16([rows, cols]);
    const g = 64;
    const words = poolWords((rows * cols * bits) / 16, ++salt); // any bit pattern is a valid packed weight
    bytes += words.byteLength;
    const packed = new tc.Tensor(tc.cpu.wrap(words.buffer), 'uint32', [rows, (cols * bits) / 32]);
    const scales = tc.astype(tc.full([rows, cols / g], 2 ** -8), 'bfloat16');
    const biases = tc.astype(tc.full([rows, cols / g], -(2 ** -8) * 2 ** (bits - 1)), 'bfloat16');
    bytes += 2 * scales.size * 2;
    return new tc.QuantizedWeight(packed, scales, biases, g, bits);
  };
  const ones = (n: number) => tc.astype(tc.ones([n]), 'bfloat16');
  const { hiddenSize: hid, intermediateSize: inter, numAttentionHeads: h, numKeyValueHeads: hkv, headDim: d, vocabSize } = config;
  const weights = new Map<string, Weight>();
  weights.set('model.embed_tokens.weight', matrix(vocabSize, hid));
  weights.set('model.norm.weight', ones(hid));
  for (let i = 0; i < config.numHiddenLayers; i++) {
    const p = `model.layers.${i}`;
    weights.set(`${p}.input_layernorm.weight`, ones(hid));
    weights.set(`${p}.post_attention_layernorm.weight`, ones(hid));
    weights.set(`${p}.self_attn.q_proj.weight`, matrix(h * d, hid));
    weights.set(`${p}.self_attn.k_proj.weight`, matrix(hkv * d, hid));
    weights.set(`${p}.self_attn.v_proj.weight`, matrix(hkv * d, hid));
    weights.set(`${p}.self_attn.o_proj.weight`, matrix(hid, h * d));
    for (const b of ['q', 'k', 'v']) weights.set(`${p}.self_attn.${b}_proj.bias`, ones(b === 'q' ? h * d : hkv * d));
    if (bits === null) {
      // gate_proj then up_proj, back to back as in a Hugging Face file (so the model fuses them without a copy).
      const both = bf16([2 * inter, hid]);
      const half = inter * hid * 2;
      const { buffer, byteOffset } = both.storage as unknown as { buffer: ArrayBuffer; byteOffset: number };
      weights.set(`${p}.mlp.gate_proj.weight`, new tc.Tensor(tc.cpu.wrap(buffer, byteOffset, half), 'bfloat16', [inter, hid]));
      weights.set(`${p}.mlp.up_proj.weight`, new tc.Tensor(tc.cpu.wrap(buffer, byteOffset + half, half), 'bfloat16', [inter, hid]));
    } else {
      weights.set(`${p}.mlp.gate_proj.weight`, matrix(inter, hid));
      weights.set(`${p}.mlp.up_proj.weight`, matrix(inter, hid));
    }
    weights.set(`${p}.mlp.down_proj.weight`, matrix(hid, inter));
  }
  // Bytes read per decode token: every matrix once (the tied head reads the whole embedding); norms and biases
  // are a rounding error.
  return { weights, bytes };
}

/**
 * Best time (ms) of one pass over every projection of the model with a one-token input: what a decode step costs
 * in weight matmuls alone. The rest of a step (attention, norms, RoPE, the cache, JavaScript) is the engine's
 * overhead over it.
 */
function projectionsFloor(model: Qwen2Model, reps = 5): number {
  const hid = model.config.hiddenSize;
  const x = tc.zeros([1, 1, hid]);
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    tc.tidy(() => {
      for (const layer of model.layers) {
        const a = layer.selfAttn;
        if (a.qkvProj) a.qkvProj.forward(x);
        else for (const p of [a.qProj!, a.kProj!, a.vProj!]) p.forward(x);
        a.oProj.forward(tc.zeros([1, 1, a.oProj.inFeatures]));
        const mlp = layer.mlp as GatedMlp;
        if (mlp.gateUp) mlp.gateUp.forward(x);
        else for (const p of [mlp.gate!, mlp.up!]) p.forward(x);
        mlp.down.forward(tc.zeros([1, 1, mlp.hiddenDim]));
      }
      if (model.lmHead) model.lmHead.forward(x);
      else model.embedding.asLinear(x);
    });
    best = Math.min(best, performance.now() - t0);
  }
  return best;
}

function bench05b(bits: number | null): void {
  const config = tc.readModelConfig(`${ROOT}fixtures/configs/Qwen2-0.5B-Instruct.json`);
  const t0 = performance.now();
  const { weights, bytes: perToken } = randomWeights(config, bits);
  const model = Qwen2Model.fromWeights(config, (name) => weights.get(name));
  const composed = flags.composed ? Qwen2Model.fromWeights(config, (name) => weights.get(name), { fusedKernels: false }) : null;
  const buildS = (performance.now() - t0) / 1e3;
  const prompt = Array.from({ length: 16 }, (_, i) => 100 + i * 7);
  decodeRate(model, prompt, 4); // warm-up
  if (composed) decodeRate(composed, prompt, 4);
  // The machine is shared, so its bandwidth moves from one second to the next: each round measures the read
  // bandwidth just before and just after its decode run(s) and compares them with the better of the two.
  const tokens = flags['tokens-05b'] ?? 32;
  type Round = { rate: number; bw: number; ratio: number; prefillMs: number };
  const rounds: Round[] = [];
  const composedRounds: Round[] = [];
  let bwBefore = readBandwidthGBs(256, 2);
  for (let round = 0; round < (flags.rounds ?? 3); round++) {
    // With --composed, the two models take turns going first.
    const runs = composed && round % 2 === 1 ? [composed, model] : composed ? [model, composed] : [model];
    const results = new Map(runs.map((m) => [m, decodeRate(m, prompt, tokens)]));
    const bwAfter = readBandwidthGBs(256, 2);
    const bw = Math.max(bwBefore, bwAfter);
    for (const [m, r] of results) {
      (m === model ? rounds : composedRounds).push({ rate: r.rate, bw, ratio: r.rate / ((bw * 1e9) / perToken), prefillMs: r.prefillMs });
    }
    bwBefore = bwAfter;
  }
  const medianRatio = (rs: Round[]) => [...rs].sort((a, b) => a.ratio - b.ratio)[Math.floor(rs.length / 2)].ratio;
  const floor = projectionsFloor(model);
  const best = rounds.reduce((a, b) => (b.rate > a.rate ? b : a));
  const kind = bits === null ? 'bf16' : `MLX ${bits}-bit`;
  console.log(
    `Qwen2-0.5B shapes (random ${kind} weights, built in ${buildS.toFixed(1)} s): ${(perToken / 1e9).toFixed(3)} GB of weights per token; ` +
      `prefill ${prompt.length} tokens ${best.prefillMs.toFixed(0)} ms; decode ${tokens} tokens: best ${best.rate.toFixed(1)} tokens/s ` +
      `(read bandwidth ${best.bw.toFixed(1)} GB/s -> ceiling ${((best.bw * 1e9) / perToken).toFixed(1)} tokens/s); ` +
      `ratio to ceiling per round: median ${medianRatio(rounds).toFixed(2)} [${rounds.map((r) => r.ratio.toFixed(2)).join(' ')}]`,
  );
  if (composed) {
    const speedups = rounds.map((r, i) => r.rate / composedRounds[i].rate).sort((a, b) => a - b);
    console.log(
      `  composed ops (fusedKernels: false), same rounds: ratio median ${medianRatio(composedRounds).toFixed(2)} ` +
        `[${composedRounds.map((r) => r.ratio.toFixed(2)).join(' ')}]; fused/composed tokens/s per round: median ` +
        `${speedups[Math.floor(speedups.length / 2)].toFixed(2)}x`,
    );
  }
  console.log(
    `  the projections alone (every weight matmul of a step, nothing else): ${floor.toFixed(1)} ms = ` +
      `${(1e3 / floor).toFixed(1)} steps/s; the model's best step is ${(1e3 / best.rate).toFixed(1)} ms ` +
      `(${((100 * floor * best.rate) / 1e3).toFixed(0)}% of it in the projections)`,
  );
  if (flags.profile) profileStep(model, prompt);
}

if (!flags['skip-05b']) bench05b(null);
if (flags.q4) bench05b(4);

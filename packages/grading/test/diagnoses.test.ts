// Each diagnosis is tested the way a learner meets it: a wrong implementation, written with tensor-core ops as
// a learner would write it, goes through the same check the graded test runs, and the failure must name the
// mistake. A diagnosis that never fires, or names the wrong mistake, fails here.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { goldenOp, seeded } from '@tiny-llm/tensor-core/testing';
import { afterAll, describe, expect, it } from 'vitest';
import { Qwen2ModelWeek1 } from '@tiny-llm/reference/week1';
import {
  KvCache,
  quantizedMatmul,
  Qwen2ModelWeek2,
  Qwen2TransformerBlock,
  type AttentionCache,
  type LayerMlp,
} from '@tiny-llm/reference/week2';
import { Qwen2MoeBlock, Qwen2ModelWeek3 } from '@tiny-llm/reference/week3';
import {
  AllReduceOracle,
  allReduceSteps,
  explainRoundError,
  attentionMistakes,
  cacheMistakes,
  causalMaskMistakes,
  pagedAttentionMistakes,
  quantizedMatmulMistakes,
  describeValues,
  expectGolden,
  expectGreedyTokens,
  expectLayerOutput,
  expectPromptLogits,
  expectRelativeError,
  expectValues,
  float64 as f64,
  formatAt,
  goldenModel,
  gqaMistakes,
  linearMistakes,
  mlpMistakes,
  moeMistakes,
  multiHeadAttentionMistakes,
  rmsNormMistakes,
  ropeMistakes,
  softmaxMistakes,
} from '../src/index.ts';

const nd = f64.toND;

/** The message of the assertion `check` fails with. */
function failureOf(check: () => void): string {
  try {
    check();
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('expected the check to fail, but it passed');
}

/** q @ k^T * scale (+ mask), softmax, @ v, with tensor-core ops: attention as a learner writes it. */
function attend(q: Tensor, k: Tensor, v: Tensor, scale: number, mask?: Tensor): Tensor {
  let scores = tc.mul(tc.matmul(q, tc.swapaxes(k, -1, -2)), scale);
  if (mask) scores = tc.add(scores, mask);
  return tc.matmul(tc.softmax(scores, -1), v);
}

describe('coordinates and values in failure messages', () => {
  it('names the worst value by its coordinates, with axis names', () => {
    expect(formatAt(7, [1, 2, 2, 2], ['b', 'l', 'h', 'd'])).toBe('[b=0, l=1, h=1, d=1]');
    expect(formatAt(5, [2, 3])).toBe('[1, 2]');
    const message = failureOf(() => expectValues([0, 0.5, 0.25, 2], [0, 0.5, 0.25, 1], [2, 2], { what: 'scores', axes: ['row', 'col'] }));
    expect(message).toMatch(/^scores: 1 of 4 values are off \(atol 1e-5\); the worst at \[row=1, col=1\]: got 2, expected 1/);
  });

  it('says "an infinity where the golden is finite", and NaN as NaN', () => {
    expect(describeValues(-Infinity, 0.25)).toBe('got -Infinity where the golden is finite (0.25)');
    expect(describeValues(Number.NaN, 0.25)).toBe('got NaN where the golden is 0.25');
    expect(describeValues(0, -Infinity)).toBe('got 0 where the golden is -Infinity');
    const message = failureOf(() => expectValues([0, -Infinity], [0, 0.5], [2]));
    expect(message).toMatch(/the worst at \[1\]: got -Infinity where the golden is finite \(0.5\)/);
  });
});

describe('1.1: softmax and attention', () => {
  it('softmax without the max shift', () => {
    const f = goldenOp('softmax');
    const c = f.cases.find((k) => k.name === 'stable')!;
    const x = f.get(c, 'x');
    const naive = tc.div(tc.exp(x), tc.sum(tc.exp(x), -1, { keepdims: true }));
    const message = failureOf(() => expectGolden(naive, f.get(c, 'out'), { mistakes: softmaxMistakes(nd(x), -1) }));
    expect(message).toMatch(/got NaN where the golden is/);
    expect(message).toMatch(/It matches a known mistake: softmax without the max shift/);
  });

  it('softmax along the wrong axis', () => {
    const f = goldenOp('softmax');
    const c = f.cases.find((k) => k.name === 'c1')!; // [3, 10], axis -1
    const x = f.get(c, 'x');
    const message = failureOf(() => expectGolden(tc.softmax(x, 0), f.get(c, 'out'), { mistakes: softmaxMistakes(nd(x), -1) }));
    expect(message).toMatch(/softmax along another axis than -1/);
  });

  it('attention scaled by 1/D, not scaled, the default scale, and a mask left out', () => {
    const f = goldenOp('attention');
    const c = f.cases.find((k) => k.name === 'mask1')!;
    const [q, k, v, mask] = ['q', 'k', 'v', 'mask'].map((n) => f.get(c, n));
    const options = { scale: c.scale as number, mask: nd(mask) };
    const mistakes = () => attentionMistakes(nd(q), nd(k), nd(v), options);
    const d = q.shape[3];
    expect(failureOf(() => expectGolden(attend(q, k, v, 1 / d, mask), f.get(c, 'out'), { mistakes: mistakes() }))).toMatch(
      /scores scaled by 1\/D = 1\/16/,
    );
    expect(failureOf(() => expectGolden(attend(q, k, v, 1 / Math.sqrt(d), mask), f.get(c, 'out'), { mistakes: mistakes() }))).toMatch(
      /the default scale 1\/sqrt\(D\) where this case gives scale = 0.3/,
    );
    expect(failureOf(() => expectGolden(attend(q, k, v, c.scale as number), f.get(c, 'out'), { mistakes: mistakes() }))).toMatch(
      /the mask ignored/,
    );
    expect(failureOf(() => expectGolden(attend(q, k, v, 1, mask), f.get(c, 'out'), { mistakes: mistakes() }))).toMatch(
      /scores not scaled at all/,
    );
    const plain = f.cases.find((x) => x.name === 'plain1')!;
    const [pq, pk, pv] = ['q', 'k', 'v'].map((n) => f.get(plain, n));
    const byD = attend(pq, pk, pv, 1 / pq.shape[3]);
    expect(failureOf(() => expectGolden(byD, f.get(plain, 'out'), { mistakes: attentionMistakes(nd(pq), nd(pk), nd(pv), {}) }))).toMatch(
      /scores scaled by 1\/D = 1\/16; the scale is 1\/sqrt\(D\)/,
    );
  });
});

describe('1.1: multi-head attention', () => {
  const f = goldenOp('mha');
  const c = f.cases.find((k) => k.name === 'c1')!; // 4 heads
  const [x, wq, wk, wv, wo] = ['x', 'wq', 'wk', 'wv', 'wo'].map((n) => f.get(c, n));
  const weights = { wq: nd(wq), wk: nd(wk), wv: nd(wv), wo: nd(wo) };
  const [n, l, e] = x.shape;
  const h = c.num_heads as number;
  const lin = (t: Tensor, w: Tensor) => tc.matmul(t, tc.transpose(w));

  it('the heads split without the transpose', () => {
    const heads = (w: Tensor) => tc.reshape(lin(x, w), [n, h, l, e / h]);
    const wrong = lin(tc.reshape(attend(heads(wq), heads(wk), heads(wv), 1 / Math.sqrt(e / h)), [n, l, e]), wo);
    const message = failureOf(() =>
      expectGolden(wrong, f.get(c, 'out'), { mistakes: multiHeadAttentionMistakes(nd(x), nd(x), nd(x), weights, h) }),
    );
    expect(message).toMatch(/reshape to \[N, L, H, D\], then transpose/);
  });

  it('the mask ignored', () => {
    const mask = f64.causalMask(l, l);
    const expected = f64.multiHeadAttention(nd(x), nd(x), nd(x), weights, h, mask);
    const heads = (w: Tensor) => tc.transpose(tc.reshape(lin(x, w), [n, l, h, e / h]), [0, 2, 1, 3]);
    const attended = attend(heads(wq), heads(wk), heads(wv), 1 / Math.sqrt(e / h));
    const wrong = lin(tc.reshape(tc.transpose(attended, [0, 2, 1, 3]), [n, l, e]), wo);
    const message = failureOf(() =>
      expectGolden(wrong, expected, { mistakes: multiHeadAttentionMistakes(nd(x), nd(x), nd(x), weights, h, mask) }),
    );
    expect(message).toMatch(/the mask ignored: pass it on/);
  });
});

describe('1.2: RoPE', () => {
  const f = goldenOp('rope');
  const check = (c: (typeof f.cases)[number], out: Tensor) => {
    const x = f.get(c, 'x');
    const offsets = [c.offset as number | number[]].flat();
    const rows = offsets.length === 1 ? new Array<number>(x.shape[0]).fill(offsets[0]) : offsets;
    const options = { base: c.base as number, traditional: c.traditional as boolean, offsets: rows };
    return failureOf(() => expectGolden(out, f.get(c, 'out'), { axes: ['b', 'l', 'h', 'd'], mistakes: ropeMistakes(nd(x), options) }));
  };
  const ropeWith = (c: (typeof f.cases)[number], traditional: boolean, offset: number | number[]) => {
    const x = f.get(c, 'x');
    const lastStart = Math.max(...[offset].flat());
    return tc.fast.rope(x, tc.fast.ropeTables(x.shape[3], lastStart + x.shape[1], c.base as number), offset, traditional);
  };

  it('the other pairing convention, both ways', () => {
    const qwen = f.cases.find((c) => c.name === 'c2')!;
    expect(check(qwen, ropeWith(qwen, true, 0))).toMatch(
      /RoPE on adjacent pairs \(2i, 2i\+1\); this case pairs the halves \(i, i \+ D\/2\)/,
    );
    const traditional = f.cases.find((c) => c.name === 'c1')!;
    expect(check(traditional, ropeWith(traditional, false, 0))).toMatch(/RoPE on the halves .*; this case pairs adjacent pairs/);
  });

  it("RoPE's default base where the case gives another", () => {
    const c = f.cases.find((k) => k.name === 'c2')!; // base 1e6
    const x = f.get(c, 'x');
    const wrong = tc.fast.rope(x, tc.fast.ropeTables(x.shape[3], x.shape[1], 10000), 0, false);
    expect(check(c, wrong)).toMatch(/RoPE with its default base 10000; this case uses base 1000000/);
  });

  it('per-row offsets ignored, and the offset ignored', () => {
    const c = f.cases.find((k) => k.name === 'c5')!; // offsets [0, 5, 100]
    expect(check(c, ropeWith(c, false, 0))).toMatch(/the first row's offset used for every row|the offset ignored/);
    const shifted = f.cases.find((k) => k.name === 'c3')!; // offset 37
    expect(check(shifted, ropeWith(shifted, false, 0))).toMatch(/the offset ignored \(positions from 0\)/);
  });
});

describe('1.3: the causal mask and grouped-query attention', () => {
  it('a top-left causal mask', () => {
    const f = goldenOp('causal_mask');
    const c = f.cases.find((k) => k.name === 'c4')!; // L = 4, S = 9
    const [l, s] = [c.L as number, c.S as number];
    const topLeft = tc.where(
      tc.greater(tc.reshape(tc.arange(s), [1, s]), tc.reshape(tc.arange(l), [l, 1])),
      tc.full([l, s], -Infinity),
      tc.zeros([l, s]),
    );
    const message = failureOf(() => expectGolden(topLeft, f.get(c, 'out'), { axes: ['row', 'col'], mistakes: causalMaskMistakes(l, s) }));
    expect(message).toMatch(/the worst at \[row=0, col=1\]: got -Infinity where the golden is finite \(0\)/);
    expect(message).toMatch(/query i must see keys up to i \+ S - L/);
  });

  it('query head h reading kv head h % Hkv', () => {
    const f = goldenOp('gqa');
    const c = f.cases.find((k) => k.name === 'none1')!; // 6 query heads on 3 kv heads
    const [q, k, v] = ['q', 'k', 'v'].map((n) => f.get(c, n));
    const groups = q.shape[1] / k.shape[1];
    // Tiling K and V: concat puts kv head j at query heads j, j + Hkv, ... (the interleaved mapping).
    const tile = (t: Tensor) => tc.concat(new Array<Tensor>(groups).fill(t), 1);
    const wrong = attend(q, tile(k), tile(v), 1 / Math.sqrt(q.shape[3]));
    const message = failureOf(() =>
      expectGolden(wrong, f.get(c, 'out'), { mistakes: gqaMistakes(nd(q), nd(k), nd(v), undefined, undefined) }),
    );
    expect(message).toMatch(/query head h reading kv head h % Hkv/);
  });

  it("'causal' aligned to the top left in grouped attention", () => {
    const f = goldenOp('gqa');
    const c = f.cases.find((k) => k.name === 'causal4')!; // L = 4 queries after cached keys
    const [q, k, v] = ['q', 'k', 'v'].map((n) => f.get(c, n));
    const [l, s] = [q.shape[2], k.shape[2]];
    const groups = q.shape[1] / k.shape[1];
    const byHead = (t: Tensor) =>
      tc.reshape(tc.broadcastTo(tc.expandDims(t, 2), [t.shape[0], t.shape[1], groups, s, t.shape[3]]), [
        t.shape[0],
        q.shape[1],
        s,
        t.shape[3],
      ]);
    const topLeft = tc.where(
      tc.greater(tc.reshape(tc.arange(s), [1, s]), tc.reshape(tc.arange(l), [l, 1])),
      tc.full([l, s], -Infinity),
      tc.zeros([l, s]),
    );
    const wrong = attend(q, byHead(k), byHead(v), 1 / Math.sqrt(q.shape[3]), topLeft);
    const message = failureOf(() =>
      expectGolden(wrong, f.get(c, 'out'), { mistakes: gqaMistakes(nd(q), nd(k), nd(v), undefined, 'causal') }),
    );
    expect(message).toMatch(/a top-left causal mask/);
  });
});

describe('1.1 and 1.4: linear and the MLP', () => {
  it('the bias left out', () => {
    const f = goldenOp('linear');
    const c = f.cases.find((k) => k.name === 'c0')!;
    const [x, w, b] = ['x', 'w', 'b'].map((n) => f.get(c, n));
    const message = failureOf(() =>
      expectGolden(tc.matmul(x, tc.transpose(w)), f.get(c, 'out'), { mistakes: linearMistakes(nd(x), nd(w), nd(b)) }),
    );
    expect(message).toMatch(/the bias left out/);
  });

  it('SiLU on the wrong branch of the MLP', () => {
    const f = goldenOp('mlp');
    const c = f.cases.find((k) => k.name === 'c1')!;
    const [x, wGate, wUp, wDown] = ['x', 'w_gate', 'w_up', 'w_down'].map((n) => f.get(c, n));
    const lin = (t: Tensor, w: Tensor) => tc.matmul(t, tc.transpose(w));
    const wrong = lin(tc.mul(lin(x, wGate), tc.silu(lin(x, wUp))), wDown);
    const message = failureOf(() => expectGolden(wrong, f.get(c, 'out'), { mistakes: mlpMistakes(nd(x), nd(wGate), nd(wUp), nd(wDown)) }));
    expect(message).toMatch(/SiLU applied to up\(x\) instead of gate\(x\)/);
  });
});

describe('1.4: RMSNorm', () => {
  it('a sum where the mean belongs, the weight left out', () => {
    const f = goldenOp('rms_norm');
    const c = f.cases.find((k) => k.name === 'c1')!;
    const [x, w] = [f.get(c, 'x'), f.get(c, 'weight')];
    const wrong = tc.mul(tc.mul(x, tc.rsqrt(tc.add(tc.sum(tc.mul(x, x), -1, { keepdims: true }), c.eps as number))), w);
    const message = failureOf(() => expectGolden(wrong, f.get(c, 'out'), { mistakes: rmsNormMistakes(nd(x), nd(w), c.eps as number) }));
    expect(message).toMatch(/the sum of the squares where their mean belongs: divide by the width 16/);
    const unweighted = tc.mul(x, tc.rsqrt(tc.add(tc.mean(tc.mul(x, x), -1, { keepdims: true }), c.eps as number)));
    expect(
      failureOf(() => expectGolden(unweighted, f.get(c, 'out'), { mistakes: rmsNormMistakes(nd(x), nd(w), c.eps as number) })),
    ).toMatch(/the weight left out/);
  });
});

describe('1.4: RMSNorm of bf16 inputs', () => {
  it('computed in bf16 throughout', () => {
    const f = goldenOp('rms_norm');
    const c = f.cases.find((k) => k.name === 'bf16_wide')!;
    const [x, w] = [f.get(c, 'x'), f.get(c, 'weight')];
    expect(x.dtype).toBe('bfloat16');
    const inBf16 = tc.mul(tc.mul(x, tc.rsqrt(tc.add(tc.mean(tc.mul(x, x), -1, { keepdims: true }), c.eps as number))), w);
    expect(inBf16.dtype).toBe('bfloat16');
    const message = failureOf(() => expectRelativeError(tc.astype(inBf16, 'float32'), f.get(c, 'out'), { bound: 1e-6 }));
    expect(message).toMatch(/relative error .* = 0\.002\d+, above 1e-6\.\n.*rounding intermediate results to bf16/);
  });
});

describe('1.5: the model', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'tl-grading-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it("the model's RoPE base left at 10000 (layer and logits)", () => {
    const model = goldenModel('qwen2-tiny');
    // The same checkpoint with rope_theta at RoPE's default: what a model that ignores the config computes.
    const dir = join(tmp, 'base-10000');
    cpSync(model.dir, dir, { recursive: true });
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, rope_theta: 10000 }));
    const wrong = Qwen2ModelWeek1.load(dir);
    const layer = wrong.layers[0].forward(tc.expandDims(model.layerIn(0), 0), 'causal');
    expect(failureOf(() => expectLayerOutput(layer, model, 0))).toMatch(
      /RoPE with its default base 10000; this model's base is config.ropeTheta = 1000000/,
    );
    const prompt = model.prompts[1];
    const logits = wrong.forward(tc.tensor([prompt.ids], { dtype: 'int32' }));
    expect(failureOf(() => expectPromptLogits(logits, model, prompt))).toMatch(
      /the worst at \[b=0, l=\d+, v=\d+\].*\n.*default base 10000/,
    );
  });

  it('the q/k/v biases left out', () => {
    const model = goldenModel('qwen2-tiny');
    const dir = join(tmp, 'no-bias');
    cpSync(model.dir, dir, { recursive: true });
    const weights = tc.readSafetensors(join(model.dir, 'model.safetensors'));
    const kept = Object.fromEntries(
      weights.names.map((n) => [n, /_proj\.bias$/.test(n) ? tc.zeros(weights.get(n).shape) : weights.get(n)]),
    );
    tc.saveSafetensors(join(dir, 'model.safetensors'), kept);
    const wrong = Qwen2ModelWeek1.load(dir);
    const layer = wrong.layers[1].forward(tc.expandDims(model.layerIn(1), 0), 'causal');
    expect(failureOf(() => expectLayerOutput(layer, model, 1))).toMatch(/without their biases/);
  });

  it('greedy tokens: a wrong token where the golden lead is large fails with the position and the lead', () => {
    const model = goldenModel('qwen2-tiny');
    const prompt = model.prompts[0];
    const argmaxOverBatch = prompt.greedy.map(() => 0); // argmax over an axis of size 1 is always 0
    expect(failureOf(() => expectGreedyTokens(argmaxOverBatch, model, prompt))).toMatch(
      /greedy token 0 \(position \d+\): got 0, expected \d+, which leads the runner-up by .*every token is 0/s,
    );
  });

  it('greedy tokens: an argmax over the positions', () => {
    const model = goldenModel('qwen2-tiny');
    const prompt = model.prompts[3];
    const overPositions = prompt.greedy.map((_, i) => prompt.ids.length - 1 + i); // the last position, each step
    expect(failureOf(() => expectGreedyTokens(overPositions, model, prompt))).toMatch(
      /as from an argmax over the positions \(axis 1 of \[1, L, V\]\)/,
    );
  });

  it('greedy tokens: a different pick at a near-tie is accepted', () => {
    const model = goldenModel('qwen2-tiny');
    // Find a step whose golden lead is under the safe margin and flip it to the runner-up.
    for (const prompt of model.prompts) {
      const float64 = model.float64();
      const sequence = [...prompt.ids, ...prompt.greedy];
      const logits = float64.logits(sequence.slice(0, -1));
      const vocab = float64.config.vocabSize;
      for (let t = 0; t < prompt.greedy.length; t++) {
        const row = Array.from(logits.data.subarray((prompt.ids.length - 1 + t) * vocab, (prompt.ids.length + t) * vocab));
        const order = row.map((_, i) => i).sort((a, b) => row[b] - row[a]);
        if (row[order[0]] - row[order[1]] < 1e-3) {
          const flipped = [...prompt.greedy.slice(0, t), order[1], ...prompt.greedy.slice(t + 1).map(() => 0)];
          expectGreedyTokens(flipped, model, prompt);
          return;
        }
      }
    }
    throw new Error('qwen2-tiny has no near-tie among its greedy tokens; this test needs one');
  });
});

describe('2.1: the KV cache', () => {
  const model = goldenModel('qwen2-tiny');
  const prompt = model.prompts.reduce((a, b) => (b.ids.length > a.ids.length ? b : a));
  const n = prompt.ids.length;
  const lengths = [Math.ceil(n / 2), ...new Array<number>(n - Math.ceil(n / 2)).fill(1)];
  const week2 = Qwen2ModelWeek2.load(model.dir);

  /** Runs the prompt in calls of `lengths` through the reference model with `cacheOf` layers and a wrong `offsetOf`. */
  const run = (caches: AttentionCache[], offsetOf: (start: number) => number) => {
    const parts: Tensor[] = [];
    let start = 0;
    for (const length of lengths) {
      parts.push(week2.forward(tc.tensor([prompt.ids.slice(start, start + length)], { dtype: 'int32' }), offsetOf(start), caches));
      start += length;
    }
    return tc.concat(parts, 1);
  };
  const check = (logits: Tensor) =>
    failureOf(() =>
      expectGolden(logits, tc.expandDims(prompt.logits, 0), { atol: 1e-4, mistakes: cacheMistakes(model.float64(), prompt.ids, lengths) }),
    );

  it('the offset ignored: every call at position 0', () => {
    expect(check(run(week2.newCache(), () => 0))).toMatch(/each call turned its tokens from position 0/);
  });

  it('a cache that returns the new keys and values only', () => {
    const forgetful = week2.newCache().map((cache) => ({
      updateAndFetch: (k: Tensor, v: Tensor) => {
        cache.updateAndFetch(k, v);
        return { keys: k, values: v, mask: 'causal' as const };
      },
    }));
    expect(check(run(forgetful, (start) => start))).toMatch(/each call attended to its own tokens only/);
  });

  it('a top-left causal mask after cached tokens', () => {
    const topLeft = week2.newCache().map((cache: KvCache) => ({
      updateAndFetch: (k: Tensor, v: Tensor) => {
        const { keys, values } = cache.updateAndFetch(k, v);
        const [l, s] = [k.shape[2], keys.shape[2]];
        const hidden = tc.greater(tc.reshape(tc.arange(s), [1, s]), tc.reshape(tc.arange(l), [l, 1]));
        return { keys, values, mask: tc.where(hidden, -Infinity, 0) };
      },
    }));
    expect(check(run(topLeft, (start) => start))).toMatch(/a top-left causal mask after cached tokens/);
  });
});

describe('2.2: quantized matmul', () => {
  const w = tc.quantize(tc.tensor(seeded(24 * 128, 3, 0.5), { shape: [24, 128] }), 4, 64);
  const x = tc.tensor(seeded(3 * 128, 4), { shape: [3, 128] });
  const arrays = f64.quantizedArraysOf(w);
  const check = (out: Tensor) => {
    const expected = f64.quantizedMatmul(f64.toND(x), arrays);
    return failureOf(() => expectGolden(out, expected, { atol: 1e-4, mistakes: quantizedMatmulMistakes(f64.toND(x), arrays) }));
  };

  it("the groups' biases left out", () => {
    const unbiased = new tc.QuantizedWeight(w.weight, w.scales, tc.zeros(w.biases.shape, { dtype: w.biases.dtype }), 64, 4);
    expect(check(quantizedMatmul(x, unbiased))).toMatch(/the bias of each group left out/);
  });

  it('values read from the top of their words', () => {
    // Reading value j from the top of a word = reading normally from a word whose values are in reverse order.
    const perWord = 32 / 4;
    const reversed = Uint32Array.from(w.weight.toArray(), (word) => {
      let out = 0;
      for (let j = 0; j < perWord; j++) out |= ((word >>> (4 * j)) & 15) << (4 * (perWord - 1 - j));
      return out >>> 0;
    });
    const wrong = new tc.QuantizedWeight(tc.tensor(reversed, { shape: w.weight.shape }), w.scales, w.biases, 64, 4);
    expect(check(quantizedMatmul(x, wrong))).toMatch(/values read from the top of their 32-bit words/);
  });
});

describe('3.1: paged attention', () => {
  const [p, hq, hkv, d] = [4, 4, 2, 8];
  const lengths = [10, 6, 3]; // none fills its last page
  const tables = [
    [2, 6, 3],
    [0, 7],
    [5, 1],
  ];
  const keys = tc.tensor(seeded(8 * hkv * p * d, 41), { shape: [8, hkv, p, d] });
  const values = tc.tensor(seeded(8 * hkv * p * d, 42), { shape: [8, hkv, p, d] });
  const q = tc.tensor(seeded(3 * hq * d, 43), { shape: [3, hq, d] });

  /**
   * Paged decode attention with tensor ops, as a learner writes it: each row's keys and values gathered page by
   * page, then attention with query head h on kv head kvHeadOf(h). The options each make one known mistake.
   */
  function paged(options: {
    tableOf?: (row: number) => number[];
    pageOf?: (table: number[], block: number) => number;
    wholePages?: boolean;
    slotsFirst?: boolean;
    kvHeadOf?: (h: number) => number;
    scale?: number;
  }): Tensor {
    const {
      tableOf = (row) => tables[row],
      pageOf = (table, block) => table[block],
      kvHeadOf = (h) => Math.floor(h / (hq / hkv)),
      scale = 1 / Math.sqrt(d),
    } = options;
    const pageView = (all: Tensor, page: number) =>
      options.slotsFirst
        ? tc.transpose(tc.slice(tc.reshape(all, [8, p, hkv, d]), [[page, page + 1]]), [0, 2, 1, 3])
        : tc.slice(all, [[page, page + 1]]);
    const rows = lengths.map((length, row) => {
      const n = options.wholePages ? Math.ceil(length / p) * p : length;
      const gather = (all: Tensor) => {
        const blocks = Array.from({ length: Math.ceil(n / p) }, (_, j) => pageView(all, pageOf(tableOf(row), j)));
        const kv = tc.slice(tc.concat(blocks, 2), [null, null, [0, n]]); // [1, Hkv, n, D]
        return tc.concat(
          Array.from({ length: hq }, (_, h) => tc.slice(kv, [null, [kvHeadOf(h), kvHeadOf(h) + 1]])),
          1,
        ); // [1, Hq, n, D]
      };
      return attend(tc.reshape(tc.slice(q, [[row, row + 1]]), [1, hq, 1, d]), gather(keys), gather(values), scale);
    });
    return tc.reshape(tc.concat(rows, 0), [3, hq, d]);
  }
  const check = (out: Tensor) => {
    const [nq, nk, nv] = [q, keys, values].map(nd);
    return failureOf(() =>
      expectGolden(out, f64.pagedAttention(nq, nk, nv, tables, lengths), {
        atol: 1e-5,
        mistakes: pagedAttentionMistakes(nq, nk, nv, tables, lengths),
      }),
    );
  };

  it('the right read passes', () => {
    expect(() => check(paged({}))).toThrow(/expected the check to fail/);
  });

  it("every row reading row 0's block table", () => {
    expect(check(paged({ tableOf: () => tables[0] }))).toMatch(/every row read row 0's block table/);
  });

  it('the block table ignored (block j read as page j)', () => {
    expect(check(paged({ pageOf: (_, block) => block }))).toMatch(/block j read as page j, the block table ignored/);
  });

  it("whole pages read, past a row's length", () => {
    expect(check(paged({ wholePages: true }))).toMatch(/whole pages read/);
  });

  it('the pages read as [N, P, Hkv, D]', () => {
    expect(check(paged({ slotsFirst: true }))).toMatch(/the pages read as \[N, P, Hkv, D\]/);
  });

  it('query head h reading kv head h % Hkv, and scores scaled by 1/D', () => {
    expect(check(paged({ kvHeadOf: (h) => h % hkv }))).toMatch(/query head h reading kv head h % Hkv/);
    expect(check(paged({ scale: 1 / d }))).toMatch(/scores scaled by 1\/D = 1\/8/);
  });
});

describe('3.3: mixture of experts', () => {
  const model = goldenModel('qwen2-moe-tiny');
  const week3 = Qwen2ModelWeek3.load(model.dir);
  const blockOf = (l: number) => week3.layers[l].mlp as Qwen2MoeBlock;
  /** The reference block of layer l rebuilt with one thing changed: a learner's block with that mistake. */
  const changed = (l: number, change: Partial<ConstructorParameters<typeof Qwen2MoeBlock>[0]>) => {
    const b = blockOf(l);
    const options = {
      ...b,
      experts: [...b.experts],
      sharedExpert: b.sharedExpert ?? undefined,
      sharedExpertGate: b.sharedExpertGate ?? undefined,
    };
    return new Qwen2MoeBlock({ ...options, ...change });
  };
  /** Layer l with `mlp` in place of its block, on its golden input. */
  const layerWith = (l: number, mlp: LayerMlp) => {
    const layer = week3.layers[l];
    const wrong = new Qwen2TransformerBlock(layer.selfAttn, mlp, layer.inputLayerNorm, layer.postAttentionLayerNorm);
    return wrong.forward(tc.expandDims(model.layerIn(l), 0), [0], new KvCache());
  };

  it('the k routing weights renormalised where norm_topk_prob is false (layer and logits)', () => {
    expect(failureOf(() => expectLayerOutput(layerWith(1, changed(1, { normTopkProb: true })), model, 1))).toMatch(
      /the k routing weights sum to 1/,
    );
    // The whole model with every block renormalising: its prompt logits.
    const wrong = Qwen2ModelWeek3.load(model.dir);
    wrong.layers.forEach((layer, l) => Object.assign(layer, { mlp: changed(l, { normTopkProb: true }) }));
    const prompt = model.prompts[1];
    const logits = wrong.forward(tc.tensor([prompt.ids], { dtype: 'int32' }), 0, wrong.newCache());
    expect(failureOf(() => expectPromptLogits(logits, model, prompt))).toMatch(/the k routing weights sum to 1/);
  });

  it('the shared expert added without its sigmoid gate', () => {
    // A gate of +1e4 for every token: sigmoid(1e4) = 1, the shared expert's output added as it is.
    const ungated = changed(0, { sharedExpertGate: { forward: (x: Tensor) => tc.full([x.shape[0], 1], 1e4) } });
    expect(failureOf(() => expectLayerOutput(layerWith(0, ungated), model, 0))).toMatch(/the shared expert added as it is/);
  });

  it('the shared expert left out', () => {
    const routedOnly = changed(0, { sharedExpert: undefined, sharedExpertGate: undefined });
    expect(failureOf(() => expectLayerOutput(layerWith(0, routedOnly), model, 0))).toMatch(/the shared expert left out/);
  });

  it('the k routing weights not renormalised where norm_topk_prob is true (the block on random weights)', () => {
    const arrays: f64.MoeArrays = {
      router: nd(tc.tensor(seeded(4 * 8, 21, 1), { shape: [4, 8] })),
      experts: [0, 1, 2, 3].map((e) => ({
        gate: nd(tc.tensor(seeded(6 * 8, 30 + e, 0.5), { shape: [6, 8] })),
        up: nd(tc.tensor(seeded(6 * 8, 40 + e, 0.5), { shape: [6, 8] })),
        down: nd(tc.tensor(seeded(8 * 6, 50 + e, 0.5), { shape: [8, 6] })),
      })),
      k: 2,
      normTopkProb: true,
    };
    const x = nd(tc.tensor(seeded(5 * 8, 22, 1), { shape: [5, 8] }));
    const module = (w: f64.NDArray) => ({
      forward: (t: Tensor) => tc.matmul(t, tc.transpose(tc.tensor(Float32Array.from(w.data), { shape: w.shape }))),
    });
    const expert = (w: f64.MlpArrays) => ({
      forward: (t: Tensor) => module(w.down).forward(tc.mul(tc.silu(module(w.gate).forward(t)), module(w.up).forward(t))),
    });
    const unnormalised = new Qwen2MoeBlock({
      hiddenSize: 8,
      numExpertsPerTok: 2,
      normTopkProb: false,
      router: module(arrays.router),
      experts: arrays.experts.map(expert),
    });
    const out = unnormalised.forward(tc.tensor(Float32Array.from(x.data), { shape: x.shape }));
    const mistakes = moeMistakes({ normTopkProb: true, sharedExpert: false }, (variant) => f64.moe(x, arrays, variant));
    expect(failureOf(() => expectGolden(out, f64.moe(x, arrays), { mistakes }))).toMatch(/the k routing weights not renormalised/);
  });
});

describe('3.6: tensor parallelism', () => {
  it("the all-reduce steps of a pass add up, half by half, to the golden layers' outputs", () => {
    const model = goldenModel('qwen2-tiny');
    const steps = allReduceSteps(model.float64(), model.prompts[0].ids);
    expect(steps.map((s) => `${s.layer} ${s.half}`)).toEqual(['0 attention', '0 MLP', '1 attention', '1 MLP']);
    for (let l = 0; l < model.numLayers; l++) {
      const [attention, mlp] = [steps[2 * l], steps[2 * l + 1]];
      const out = attention.residual.data.map((x, i) => x + attention.sum.data[i] + mlp.sum.data[i]);
      expectValues(out, model.layerOut(l).toArray(), model.layerOut(l).shape, { atol: 1e-5, what: `layer ${l}` });
    }
  });

  it('the oracle names a residual added before the all-reduce on every rank', () => {
    const model = goldenModel('qwen2-tiny');
    const ids = model.prompts[0].ids;
    const steps = allReduceSteps(model.float64(), ids);
    const oracle = new AllReduceOracle(steps, 2);
    oracle.begin(0, ids.length);
    // Each rank passes half of the true sum plus the whole residual, as a rank that adds x before reducing.
    for (const rank of [0, 1]) {
      const reduce = oracle.allReduceOf(rank);
      for (const step of steps)
        reduce(
          tc.tensor(
            Float32Array.from(step.sum.data, (v, i) => v / 2 + step.residual.data[i]),
            { shape: step.sum.shape },
          ),
        );
    }
    expect(failureOf(() => oracle.check('a pass', 1e-4))).toMatch(
      /all-reduce 1 of 4 \(layer 0, attention\)[\s\S]*added the residual before the all-reduce/,
    );
  });

  it("explains a race's wrong sum by the ranks whose slots were read a round early, late, or never written", () => {
    // Rank r's element i at round k is k * 2^(r + 4) + i; 3 ranks, round 7, element 5: the sum is 7 * 112 + 15.
    const expected = 7 * 112 + 15;
    expect(explainRoundError(3, 7, 5, expected - 32, expected)).toMatch(/rank 1 came from the round before/);
    expect(explainRoundError(3, 7, 5, expected + 16 + 64, expected)).toMatch(/ranks 0, 2 came from the round after/);
    expect(explainRoundError(3, 1, 5, 16 + 5, 112 + 15)).toMatch(/slots of ranks 1, 2 read as zeros/);
  });
});

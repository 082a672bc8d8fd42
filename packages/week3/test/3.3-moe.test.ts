// Chapter 3.3, graded: mixture of experts. routeTopK and groupByExpert on cases worked out by hand; the block
// against a plain float64 loop over the tokens (@tiny-llm/grading's float64.moe) on random weights, with the
// known mistakes as diagnoses; a count of the expert calls that fails when the tokens are not grouped by
// expert; then the week 3 model on the Qwen2-MoE fixture (fixtures/models/qwen2-moe-tiny: every layer, every
// prompt's logits prefilled and decoded, within 1e-4, and its greedy tokens) and the MoE demo model's 48-token
// goldens, exactly.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR, seeded } from '@tiny-llm/tensor-core/testing';
import {
  batchOf,
  errorOf,
  expectGolden,
  expectGreedyTokens,
  expectLayerOutput,
  expectPromptLogits,
  float64 as f64,
  goldenModel,
  LOGITS_ATOL,
  modelMistakes,
  moeMistakes,
  type GoldenPrompt,
} from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { groupByExpert, Qwen2MoeBlock, Qwen2ModelWeek3, routeTopK } from '@solution/week3';

const ids2d = (ids: readonly number[]) => tc.tensor([[...ids]], { dtype: 'int32' });

describe('3.3 routeTopK', () => {
  // Two tokens of four experts; token 1 has a tie between experts 0 and 1 for its second place.
  const probs = [0.1, 0.5, 0.3, 0.1, /* token 1 */ 0.25, 0.25, 0.4, 0.1];

  it('the k largest probabilities of each token, in descending order, the lower expert first on a tie', () => {
    const r = routeTopK(probs, 2, 4, 2, false);
    expect(Array.from(r.indices), 'token 0 picks experts 1 (0.5) and 2 (0.3); token 1 experts 2 (0.4) and 0 (0.25, tied with 1)').toEqual([
      1, 2, 2, 0,
    ]);
    expect(Array.from(r.weights), 'without norm_topk_prob the weights are the probabilities themselves').toEqual(
      Array.from(Float32Array.from([0.5, 0.3, 0.4, 0.25])),
    );
    expect([r.numTokens, r.k], 'numTokens and k').toEqual([2, 2]);
  });

  it('norm_topk_prob: the k weights divided by their sum', () => {
    const r = routeTopK(probs, 2, 4, 2, true);
    expect(Array.from(r.weights), 'token 0: 0.5 and 0.3 over 0.8; token 1: 0.4 and 0.25 over 0.65').toEqual(
      Array.from(Float32Array.from([0.5 / 0.8, 0.3 / 0.8, 0.4 / 0.65, 0.25 / 0.65])),
    );
  });

  it('top-1 and top-E', () => {
    expect(Array.from(routeTopK(probs, 2, 4, 1, false).indices), 'k = 1').toEqual([1, 2]);
    expect(Array.from(routeTopK(probs, 2, 4, 4, false).indices), 'k = E: every expert, most likely first').toEqual([
      1, 2, 0, 3, 2, 0, 1, 3,
    ]);
  });

  it('rejects a k outside [1, E] and probabilities of the wrong size', () => {
    expect(errorOf(() => routeTopK(probs, 2, 4, 5, false)).message, 'k = 5 of 4 experts').toMatch(/k/);
    expect(errorOf(() => routeTopK(probs, 2, 4, 0, false)).message, 'k = 0').toMatch(/k/);
    expect(errorOf(() => routeTopK(probs, 3, 4, 2, false)).message, '8 probabilities for 3 tokens x 4 experts').toMatch(/8/);
  });
});

describe('3.3 groupByExpert', () => {
  // Three tokens, two choices each, three experts: expert 0 gets token 1, expert 1 tokens 0 and 2, expert 2 all.
  const routing = {
    numTokens: 3,
    k: 2,
    indices: Int32Array.from([1, 2, 2, 0, 1, 2]),
    weights: Float32Array.from([0.5, 0.3, 0.4, 0.25, 0.6, 0.2]),
  };

  it("sorts the slots by expert, each expert's tokens in order, and says where each slot went", () => {
    const g = groupByExpert(routing, 3);
    expect(Array.from(g.counts), 'counts: slots per expert').toEqual([1, 2, 3]);
    expect(Array.from(g.starts), "starts: each expert's first row").toEqual([0, 1, 3]);
    expect(Array.from(g.tokens), 'tokens: expert 0 [1], expert 1 [0, 2], expert 2 [0, 1, 2]').toEqual([1, 0, 2, 0, 1, 2]);
    expect(Array.from(g.weights), 'weights: each row keeps its routing weight').toEqual(
      Array.from(Float32Array.from([0.25, 0.5, 0.6, 0.3, 0.4, 0.2])),
    );
    expect(Array.from(g.rowOf), 'rowOf[t * k + j]: the row of token t, choice j').toEqual([1, 3, 4, 0, 2, 5]);
  });

  it('rejects an expert index outside 0..E-1', () => {
    const bad = { ...routing, indices: Int32Array.from([1, 2, 2, 3, 1, 2]) };
    expect(errorOf(() => groupByExpert(bad, 3)).message).toMatch(/3/);
  });
});

// ---- the block on random weights -----------------------------------------------------------------------------

/** Values a float32 tensor holds exactly, so that the float64 loop sees what the block sees. */
const matrix = (rows: number, cols: number, seed: number, scale: number): f64.NDArray => ({
  shape: [rows, cols],
  data: Float64Array.from(Float32Array.from(seeded(rows * cols, seed, scale))),
});
const tensorOf = (a: f64.NDArray) => tc.tensor(Float32Array.from(a.data), { shape: a.shape });

/** x @ w.T: the router and the shared expert's gate. */
function linearModule(w: f64.NDArray) {
  const wT = tc.transpose(tensorOf(w));
  return { forward: (x: Tensor) => tc.matmul(x, wT) };
}

/** A gated MLP, down(silu(gate(x)) * up(x)), that records the rows of each call. */
class Expert {
  readonly calls: number[] = [];
  private readonly gateT: Tensor;
  private readonly upT: Tensor;
  private readonly downT: Tensor;

  constructor(w: f64.MlpArrays) {
    [this.gateT, this.upT, this.downT] = [w.gate, w.up, w.down].map((m) => tc.transpose(tensorOf(m)));
  }

  forward(x: Tensor): Tensor {
    this.calls.push(x.shape[0]);
    const g = tc.matmul(x, this.gateT);
    return tc.matmul(tc.mul(tc.mul(g, tc.sigmoid(g)), tc.matmul(x, this.upT)), this.downT);
  }
}

interface BlockCase {
  hidden: number;
  experts: number;
  k: number;
  inter: number;
  /** The shared expert's width; 0: none. */
  shared: number;
  norm: boolean;
  /** The leading shape of x. */
  tokens: number[];
}

function buildBlock(c: BlockCase, seed: number) {
  let s = seed;
  const mlpArrays = (inter: number): f64.MlpArrays => ({
    gate: matrix(inter, c.hidden, s++, 0.5),
    up: matrix(inter, c.hidden, s++, 0.5),
    down: matrix(c.hidden, inter, s++, 0.5),
  });
  const arrays: f64.MoeArrays = {
    router: matrix(c.experts, c.hidden, s++, 1),
    experts: Array.from({ length: c.experts }, () => mlpArrays(c.inter)),
    shared: c.shared ? mlpArrays(c.shared) : undefined,
    sharedGate: c.shared ? matrix(1, c.hidden, s++, 0.5) : undefined,
    k: c.k,
    normTopkProb: c.norm,
  };
  const experts = arrays.experts.map((w) => new Expert(w));
  const block = new Qwen2MoeBlock({
    hiddenSize: c.hidden,
    numExpertsPerTok: c.k,
    normTopkProb: c.norm,
    router: linearModule(arrays.router),
    experts,
    sharedExpert: arrays.shared && new Expert(arrays.shared),
    sharedExpertGate: arrays.sharedGate && linearModule(arrays.sharedGate),
  });
  const t = c.tokens.reduce((a, b) => a * b, 1);
  const x: f64.NDArray = { shape: [...c.tokens, c.hidden], data: Float64Array.from(Float32Array.from(seeded(t * c.hidden, s++, 1))) };
  return { block, arrays, experts, x };
}

/** The block against the float64 loop, diagnosed against the known mistakes. */
function expectBlock(c: BlockCase, seed: number, what: string): void {
  const { block, arrays, x } = buildBlock(c, seed);
  const out = block.forward(tensorOf(x));
  const mistakes = moeMistakes({ normTopkProb: c.norm, sharedExpert: c.shared > 0 }, (variant) => f64.moe(x, arrays, variant));
  const axes = c.tokens.length === 2 ? ['b', 'l', 'e'] : undefined;
  expectGolden(out, f64.moe(x, arrays), { atol: 1e-5, what, axes, mistakes });
}

describe('3.3 Qwen2MoeBlock = a float64 loop over the tokens', () => {
  const base: BlockCase = { hidden: 16, experts: 6, k: 2, inter: 8, shared: 12, norm: false, tokens: [2, 5] };
  it('a prefill: 2 x 5 tokens, top-2 of 6 experts, a shared expert, no renormalisation', () => expectBlock(base, 1, 'the block'));
  it('norm_topk_prob: the k weights renormalised', () => expectBlock({ ...base, norm: true }, 2, 'the block (norm_topk_prob)'));
  it('one token (a decode step)', () => expectBlock({ ...base, tokens: [1, 1] }, 3, 'one token'));
  it('no shared expert', () => expectBlock({ ...base, shared: 0 }, 4, 'the block without a shared expert'));
  it('top-1', () => expectBlock({ ...base, k: 1 }, 5, 'top-1'));
  it('every expert for every token (k = E)', () => expectBlock({ ...base, experts: 3, k: 3 }, 6, 'k = E'));
  it('120 tokens, so that every expert gets many', () => expectBlock({ ...base, tokens: [3, 40] }, 7, '120 tokens'));

  it("rejects x whose last axis is not the block's hidden size", () => {
    const { block } = buildBlock(base, 8);
    expect(errorOf(() => block.forward(tc.zeros([2, 15]))).message).toMatch(/16/);
  });
});

describe('3.3 Qwen2MoeBlock: the tokens grouped by expert', () => {
  it('each chosen expert runs once, on all of its tokens; an expert no token chose does not run', () => {
    const c: BlockCase = { hidden: 16, experts: 8, k: 2, inter: 8, shared: 12, norm: false, tokens: [1, 24] };
    const { block, arrays, experts, x } = buildBlock(c, 11);
    block.forward(tensorOf(x));
    // The tokens each expert should get, from the float64 router.
    const probs = f64.softmax(f64.linear(x, arrays.router), -1).data;
    const want = new Array<number>(c.experts).fill(0);
    for (let t = 0; t < 24; t++) {
      const row = Array.from(probs.subarray(t * c.experts, (t + 1) * c.experts));
      row
        .map((p, e) => [p, e])
        .sort((a, b) => b[0] - a[0] || a[1] - b[1])
        .slice(0, c.k)
        .forEach(([, e]) => want[e]++);
    }
    experts.forEach((expert, e) => {
      const calls = expert.calls;
      if (want[e] === 0) {
        expect(calls, `expert ${e}: no token chose it, so it must not run (it ran on ${calls.join(', ')} rows)`).toEqual([]);
        return;
      }
      expect(
        calls,
        `expert ${e}: ${want[e]} of the 24 tokens chose it; it must run once on all ${want[e]}, not ${calls.length} times on [${calls.join(', ')}] rows ` +
          '(group the tokens by expert: one matmul per expert, not one per token)',
      ).toEqual([want[e]]);
    });
  });
});

// ---- the model ---------------------------------------------------------------------------------------------

describe('3.3 the week 3 model: qwen2-moe-tiny (fixtures/models/qwen2-moe-tiny)', () => {
  const golden = goldenModel('qwen2-moe-tiny');
  let loaded: Qwen2ModelWeek3 | undefined;
  const model = () => (loaded ??= Qwen2ModelWeek3.load(golden.dir));

  for (let l = 0; l < golden.numLayers; l++) {
    it(`layer ${l} (a mixture-of-experts layer): its golden output for prompt 0's golden input`, () => {
      const m = model();
      expectLayerOutput(m.layers[l].forward(batchOf(golden.layerIn(l)), [0], m.newCache()[l]), golden, l);
    });
  }

  for (const prompt of golden.prompts) {
    it(`prompt ${prompt.index} (${prompt.ids.length} tokens) prefilled: the logits of every position (atol ${LOGITS_ATOL})`, () => {
      const m = model();
      expectPromptLogits(m.forward(ids2d(prompt.ids), 0, m.newCache()), golden, prompt);
    });
  }

  /** Half the prompt prefilled, then one token per call: each call's logits against the golden rows. */
  const expectDecoded = (prompt: GoldenPrompt) => {
    const m = model();
    const cache = m.newCache();
    const n = prompt.ids.length;
    const lengths = [Math.ceil(n / 2), ...new Array<number>(n - Math.ceil(n / 2)).fill(1)];
    const float64 = golden.float64();
    const vocab = float64.config.vocabSize;
    let start = 0;
    for (const length of lengths) {
      const logits = m.forward(ids2d(prompt.ids.slice(start, start + length)), start, cache);
      const rows = (all: ArrayLike<number>) => Array.prototype.slice.call(all, start * vocab, (start + length) * vocab) as number[];
      const mistakes = modelMistakes(float64, (variant) => float64.logitsInCalls(prompt.ids, lengths, variant)).map((m) => ({
        ...m,
        values: () => rows(m.values()),
      }));
      const what = length > 1 ? `the prefill of positions 0..${length - 1}` : `the decode step at position ${start}`;
      expectGolden(logits, batchOf(tc.slice(prompt.logits, [[start, start + length]])), {
        atol: LOGITS_ATOL,
        what,
        axes: ['b', 'l', 'v'],
        mistakes,
      });
      start += length;
    }
  };
  for (const prompt of golden.prompts.filter((p) => p.ids.length > 1)) {
    it(`prompt ${prompt.index}: half prefilled, then one token per step (one token through the block each)`, () => expectDecoded(prompt));
  }

  for (const prompt of golden.prompts) {
    it(`prompt ${prompt.index}: ${prompt.greedy.length} greedy tokens through the cache`, () => {
      const m = model();
      const cache = m.newCache();
      const generated: number[] = [];
      let logits = m.forward(ids2d(prompt.ids), 0, cache);
      for (let step = 0; step < prompt.greedy.length; step++) {
        generated.push(tc.tidy(() => tc.argmax(tc.slice(logits, [0, -1]), -1).item()));
        logits = m.forward(ids2d([generated.at(-1)!]), prompt.ids.length + step, cache);
      }
      expectGreedyTokens(generated, golden, prompt);
    });
  }
});

describe('3.3 the week 3 model: the MoE demo model (models/tiny-qwen2-moe-py), 48 greedy tokens of every golden prompt', () => {
  const name = 'tiny-qwen2-moe-py';
  const golden = demoGolden(name);
  let loaded: Qwen2ModelWeek3 | undefined;
  const model = () => (loaded ??= Qwen2ModelWeek3.load(`${MODELS_DIR}${name}`));
  for (const c of golden.cases) {
    it(`${c.kind} prompt of ${c.ids.length} tokens`, () => {
      const m = model();
      const cache = m.newCache();
      const out: number[] = [];
      let logits = m.forward(ids2d(c.ids), 0, cache);
      while (out.length < golden.max_new_tokens) {
        out.push(tc.tidy(() => tc.argmax(tc.slice(logits, [0, -1]), -1).item()));
        logits = m.forward(ids2d([out.at(-1)!]), c.ids.length + out.length - 1, cache);
      }
      const first = c.greedy.findIndex((id, i) => out[i] !== id);
      expect(first, `the first generated token that differs from the golden (got ${out[first]}, expected ${c.greedy[first]})`).toBe(-1);
    });
  }
});

// A session's decode steps replayed from a captured graph (src/model/decode-graph.ts): against the golden logits
// of every fixture model (float64 PyTorch + transformers), and against the same session with every step run
// through the model's forward pass: the replay makes the same kernel calls on the same values, so its logits are
// equal to the last bit, through cache growth, truncation and a model it must leave alone.
import { fileURLToPath } from 'node:url';
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { expectClose, FIXTURES_DIR } from '@tiny-llm/tensor-core/testing';
import { describe, expect, it, vi } from 'vitest';
import type { BlockTable } from '@tiny-llm/reference/week3';
import { EngineBatchModel } from '../src/batch-model.ts';
import { BatchDecodeGraph, DecodeGraph } from '../src/model/decode-graph.ts';
import { Qwen2Model } from '../src/model/qwen2.ts';
import { EngineQwen2, type Session } from '../src/session.ts';

const DEMO_DIR = fileURLToPath(new URL('../../../models/tiny-qwen2-py', import.meta.url));
const FIXTURE_MODELS = ['qwen2-tiny', 'qwen2-tiny-untied', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit', 'qwen3-tiny', 'qwen2-moe-tiny'];

/** Feeds `ids` and returns the logits as a plain array (the tensor freed). */
function feed(session: Session, ids: number[]): Float32Array {
  const logits = session.feed(ids);
  const values = logits.toArray() as Float32Array;
  logits.dispose();
  return values;
}

/** The first index where two logit vectors differ, or -1. */
function firstDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return i;
  return -1;
}

const argmax = (values: Float32Array) => values.reduce((best, v, i) => (v > values[best] ? i : best), 0);

for (const name of FIXTURE_MODELS) {
  describe(`decode graphs: ${name}`, () => {
    const dir = `${FIXTURES_DIR}models/${name}`;
    const golden = tc.readSafetensors(`${dir}/golden.safetensors`);
    // The goldens' 1e-4 holds for the exact path (quantized weights times float32 activations).
    const model = Qwen2Model.load(dir, { exact: true });

    it(`${name === 'qwen2-moe-tiny' ? 'is left to the forward pass (experts are chosen in JavaScript)' : 'is captured'}`, () => {
      expect(DecodeGraph.supports(model)).toBe(name !== 'qwen2-moe-tiny');
    });

    it('a session decoding one token at a time reproduces the golden logits of every position', () => {
      for (let i = 0; i < Number(golden.metadata.prompts); i++) {
        const ids = Array.from(golden.get(`prompt${i}`).toArray());
        const want = golden.get(`prompt${i}.logits`).toArray() as Float32Array;
        const vocab = want.length / ids.length;
        const session = new EngineQwen2(model).newSession();
        feed(session, ids.slice(0, 1));
        for (let p = 1; p < ids.length; p++) {
          const got = feed(session, [ids[p]]);
          expectClose(got, want.subarray(p * vocab, (p + 1) * vocab), 1e-4);
        }
        session.dispose();
      }
    });
  });
}

describe('decode graphs on the demo model', () => {
  const model = Qwen2Model.load(DEMO_DIR);
  const sessions = (): [Session, Session] => [
    new EngineQwen2(model).newSession(),
    new EngineQwen2(model, { decodeGraphs: false }).newSession(),
  ];

  it('600 greedy steps, through two growths of the KV cache: the same logits to the last bit as the forward pass', () => {
    const [graphed, plain] = sessions();
    const replays = vi.spyOn(DecodeGraph.prototype, 'step');
    let a = feed(graphed, [1, 2, 3, 4, 5]);
    let b = feed(plain, [1, 2, 3, 4, 5]);
    for (let step = 0; step < 600; step++) {
      const at = firstDifference(a, b);
      expect(at, `step ${step}: logit ${at} is ${a[at]} replayed, ${b[at]} through forward`).toBe(-1);
      const next = argmax(b);
      a = feed(graphed, [next]);
      b = feed(plain, [next]);
    }
    expect(graphed.tokens).toEqual(plain.tokens);
    // Captured at the first step; at positions 256 and 512 the cache grows (a step through forward) and the next
    // step is captured again; every other step is a replay.
    expect(replays).toHaveBeenCalledTimes(600 - 5);
    replays.mockRestore();
    graphed.dispose();
    plain.dispose();
  });

  it('after truncate, and after a prompt fed in between, the steps go on from the right position', () => {
    const [graphed, plain] = sessions();
    const script: number[][] = [[5, 6, 7], [8], [9], [10], [11, 12, 13, 14], [15], [16]];
    for (const [i, ids] of script.entries()) {
      if (i === 4) {
        graphed.truncate(4);
        plain.truncate(4);
      }
      const at = firstDifference(feed(graphed, ids), feed(plain, ids));
      expect(at, `feed ${i} (${ids.length} tokens)`).toBe(-1);
    }
    graphed.dispose();
    plain.dispose();
  });

  it('a token outside the vocabulary is refused, and the session goes on', () => {
    const [graphed] = sessions();
    feed(graphed, [1, 2, 3]);
    feed(graphed, [4]); // captured
    expect(() => graphed.feed([8192])).toThrow(/token id 8192 is outside the vocabulary \(vocab_size 8192/);
    expect(() => graphed.feed([-1])).toThrow(/token id -1 is outside the vocabulary/);
    expect(graphed.tokens).toEqual([1, 2, 3, 4]);
    const [, plain] = sessions();
    feed(plain, [1, 2, 3]);
    feed(plain, [4]);
    expect(firstDifference(feed(graphed, [5]), feed(plain, [5]))).toBe(-1);
    graphed.dispose();
    plain.dispose();
  });

  it('a replay leaves no tensor behind but the logits it returns', () => {
    const [graphed] = sessions();
    feed(graphed, [1, 2, 3]);
    feed(graphed, [4]);
    const before = tc.cpu.memory().liveBytes;
    const logits: Tensor = graphed.feed([5]);
    expect(tc.cpu.memory().liveBytes - before).toBe(logits.size * 4);
    logits.dispose();
    graphed.dispose();
  });
});

describe('batched decode graphs (EngineBatchModel) on the demo model', () => {
  const model = Qwen2Model.load(DEMO_DIR);

  it('requests that decode together, leave and join: the same logits to the last bit as decodeRows', () => {
    const graphed = new EngineBatchModel(model, { numPages: 64 });
    const plain = new EngineBatchModel(model, { numPages: 64, decodeGraphs: false });
    const replays = vi.spyOn(BatchDecodeGraph.prototype, 'step');
    type Request = { graphed: BlockTable; plain: BlockTable; next: number };
    const start = (prompt: number[]): Request => {
      const r = { graphed: graphed.newRequestCache(), plain: plain.newRequestCache(), next: 0 };
      const a = graphed.prefill(prompt, 0, r.graphed);
      const b = plain.prefill(prompt, 0, r.plain);
      r.next = argmax(b.toArray() as Float32Array);
      a.dispose();
      b.dispose();
      return r;
    };
    let running = [start([1, 2, 3]), start([7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]), start([40, 41])];
    for (let step = 0; step < 90; step++) {
      if (step === 30) running = running.filter((_, i) => i !== 1); // a request finishes
      if (step === 60) running.push(start([100, 101, 102, 103, 104])); // another joins
      const tokens = running.map((r) => r.next);
      const a = graphed.decode(
        tokens,
        running.map((r) => r.graphed.length),
        running.map((r) => r.graphed),
      );
      const b = plain.decode(
        tokens,
        running.map((r) => r.plain.length),
        running.map((r) => r.plain),
      );
      const av = a.toArray() as Float32Array;
      const bv = b.toArray() as Float32Array;
      const at = firstDifference(av, bv);
      expect(at, `step ${step}: logit ${at} is ${av[at]} replayed, ${bv[at]} through decodeRows`).toBe(-1);
      const vocab = bv.length / running.length;
      running.forEach((r, i) => (r.next = argmax(bv.subarray(i * vocab, (i + 1) * vocab))));
      a.dispose();
      b.dispose();
    }
    // Captured again when the batch changes and when the longest table takes a page more: most steps replay.
    expect(replays.mock.calls.length).toBeGreaterThan(70);
    replays.mockRestore();
  });
});

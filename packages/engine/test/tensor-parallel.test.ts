// Tensor parallelism in the engine (src/tensor-parallel/, chapter 3.6): the model split over 2 ranks, rank 0 on
// this thread and rank 1 on a thread of its own. Its logits must equal the single model's within 1e-5 on every
// fixture model (prefills and decode steps), the demo model's goldens must come back exactly (sessions and the
// scheduler), a count that does not divide is refused with the count named, and a rank that fails mid-pass
// fails its call with a clear error, after which the group works again.
import * as tc from '@tiny-llm/tensor-core';
import { demoGolden, FIXTURES_DIR, MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { expectValues } from '@tiny-llm/grading';
import { Scheduler } from '@tiny-llm/reference/week2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generate } from '../src/generate.ts';
import { spawnServer } from '../src/server/spawn.ts';
import { Qwen2Model } from '../src/model/qwen2.ts';
import { loadModel } from '../src/registry.ts';
import { EngineQwen2, type EngineModel } from '../src/session.ts';
import { TensorParallelBatchModel, TensorParallelModel } from '../src/tensor-parallel/parallel-model.ts';
import type { RankCode } from '../src/tensor-parallel/protocol.ts';
import { cli } from './support/cli.ts';

const ATOL = 1e-5;
const FIXTURE_MODELS = ['qwen2-tiny', 'qwen2-tiny-untied', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit', 'qwen3-tiny', 'qwen2-moe-tiny'];

// Quantized weights take float32 activations (exact) on both sides: the split is under test, and a rank's shard
// of a 4-bit matrix can have groups too short for the integer path, which would then differ by its rounding.
const startGroup = (dir: string, code: RankCode = 'engine') =>
  TensorParallelModel.start({ weights: { modelDir: dir }, code, worldSize: 2, exact: true }, `${code} on 2 ranks`);
const loadWhole = (dir: string) => new EngineQwen2(Qwen2Model.load(dir, { exact: true }));

/** Greedy tokens of a session: the prompt, then one token per step. */
function greedy(model: EngineModel, ids: readonly number[], steps: number): { tokens: number[]; logits: Float32Array[] } {
  const session = model.newSession();
  const tokens: number[] = [];
  const logits: Float32Array[] = [];
  let next = [...ids];
  for (let i = 0; i < steps; i++) {
    const out = session.feed(next);
    logits.push(out.toArray() as Float32Array);
    next = [tc.tidy(() => tc.argmax(out, -1).item())];
    tokens.push(next[0]);
    out.dispose();
  }
  session.dispose();
  return { tokens, logits };
}

/** The two models' logits of a prompt's every position, and of a prefill followed by decode steps. */
function expectSameLogits(parallel: EngineModel, single: EngineModel, ids: readonly number[], what: string): void {
  const [a, b] = [parallel.allLogits(ids), single.allLogits(ids)];
  expectValues(a.toArray(), b.toArray(), b.shape, {
    atol: ATOL,
    what: `${what}: every position's logits, 2 ranks against 1`,
    axes: ['l', 'v'],
  });
  const [p, s] = [greedy(parallel, ids, 6), greedy(single, ids, 6)];
  s.logits.forEach((want, step) =>
    expectValues(p.logits[step], want, [1, want.length], { atol: ATOL, what: `${what}: decode step ${step}`, axes: ['b', 'v'] }),
  );
}

describe("tensor parallelism over 2 ranks: the logits of every fixture model equal the single model's (1e-5)", () => {
  for (const name of FIXTURE_MODELS) {
    it(`${name}: every golden prompt, whole and as a prefill then decode steps`, async () => {
      const dir = `${FIXTURES_DIR}models/${name}`;
      const golden = tc.readSafetensors(`${dir}/golden.safetensors`);
      const single = loadWhole(dir);
      const parallel = await startGroup(dir);
      try {
        for (let i = 0; i < Number(golden.metadata.prompts); i++)
          expectSameLogits(parallel, single, Array.from(golden.get(`prompt${i}`).toArray()), `prompt ${i}`);
      } finally {
        await parallel.close();
      }
    });
  }

  it("qwen2-tiny-untied, the reference's chapter 3.6 model (the code --solution learner runs): the same logits", async () => {
    const dir = `${FIXTURES_DIR}models/qwen2-tiny-untied`;
    const golden = tc.readSafetensors(`${dir}/golden.safetensors`);
    const parallel = await startGroup(dir, 'reference');
    try {
      expectSameLogits(parallel, loadWhole(dir), Array.from(golden.get('prompt0').toArray()), 'prompt 0');
    } finally {
      await parallel.close();
    }
  });
});

describe("tensor parallelism over 2 ranks: the demo model's goldens", () => {
  const name = 'tiny-qwen2-py';
  const dir = `${MODELS_DIR}${name}`;
  const golden = demoGolden(name);
  let parallel: TensorParallelModel;
  beforeAll(async () => {
    parallel = await startGroup(dir);
  });
  afterAll(() => parallel?.close());

  it('48 greedy tokens of every golden prompt, through a session: exactly golden.json', async () => {
    const tokenizer = loadTokenizer(dir);
    for (const c of golden.cases) {
      const session = parallel.newSession();
      const r = await generate(
        parallel,
        session,
        tokenizer,
        c.ids,
        { maxTokens: golden.max_new_tokens, ignoreEos: true, temperature: 0 },
        () => {},
      );
      session.dispose();
      expect(r.tokens, JSON.stringify(c.prompt.slice(-40))).toEqual(c.greedy);
    }
  });

  it('every golden prompt through the scheduler, 4 at a time (continuous batching on the group): exactly golden.json', async () => {
    const scheduler = new Scheduler(new TensorParallelBatchModel(parallel.group), { maxBatch: 4, prefillChunk: 16 });
    const ids = golden.cases.map((c) => scheduler.submit({ promptIds: c.ids, maxTokens: golden.max_new_tokens }));
    const out = new Map<number, number[]>(ids.map((id) => [id, []]));
    while (!scheduler.idle) for (const o of await scheduler.step()) if (o.token !== null) out.get(o.id)!.push(o.token);
    golden.cases.forEach((c, i) => expect(out.get(ids[i]), JSON.stringify(c.prompt.slice(-40))).toEqual(c.greedy));
  });
});

describe('tensor parallelism: what does not split, and ranks that fail', () => {
  it('3 ranks of the demo model (6 heads, 2 kv heads): refused, naming num_key_value_heads', async () => {
    await expect(loadModel(`${MODELS_DIR}tiny-qwen2-py`, { tensorParallel: 3 })).rejects.toThrow(
      /num_key_value_heads 2 does not divide by 3/,
    );
  });

  it('--week with --tensor-parallel: refused, saying what runs split', async () => {
    await expect(loadModel(`${MODELS_DIR}tiny-qwen2-py`, { tensorParallel: 2, week: 2 })).rejects.toThrow(/leave out --week/);
  });

  describe('a rank that fails mid-pass', () => {
    const dir = `${FIXTURES_DIR}models/qwen2-tiny`;
    const ids = [3, 1, 4, 1, 5, 9, 2, 6];
    let parallel: TensorParallelModel;
    let want: number[];
    beforeAll(async () => {
      parallel = await startGroup(dir);
      want = greedy(loadWhole(dir), ids, 4).tokens;
    });
    afterAll(() => parallel?.close());

    for (const how of ['throw', 'exit'] as const) {
      const failure =
        how === 'throw' ? /rank 1 failed: a fault planted in rank 1 at its all-reduce 3/ : /rank 1 died \(its thread exited with code 1\)/;
      it(`rank 1 ${how === 'throw' ? 'throws' : "'s thread exits"} at its 3rd all-reduce: the call fails with that error; the session and the group then work again`, () => {
        const session = parallel.newSession();
        session.feed(ids.slice(0, 4)).dispose();
        parallel.group.plantFault(1, { afterAllReduces: 3, how });
        expect(() => session.feed(ids.slice(4))).toThrow(failure);
        // The same session goes on (its cache rebuilt on the restarted group), and so does a new one.
        const logits = session.feed(ids.slice(4));
        expect(tc.tidy(() => tc.argmax(logits, -1).item())).toBe(want[0]);
        session.dispose();
        expect(greedy(parallel, ids, 4).tokens).toEqual(want);
      });
    }

    it('a token id outside the vocabulary: a RangeError, and the group goes on', () => {
      const session = parallel.newSession();
      expect(() => session.feed([1, 100000])).toThrow(/token id 100000 is outside the vocabulary/);
      session.dispose();
      expect(greedy(parallel, ids, 4).tokens).toEqual(want);
    });
  });
});

describe('tensor parallelism from the command line', () => {
  it('generate --tensor-parallel 2: the golden text; --tensor-parallel 3 on the demo model: exit 1, naming the count', async () => {
    const c = demoGolden('tiny-qwen2-py').cases[1];
    const [ok, bad] = await Promise.all([
      cli(['generate', '--tensor-parallel', '2', '--prompt', c.prompt, '--max-tokens', '48', '--ignore-eos']),
      cli(['generate', '--tensor-parallel', '3', '--prompt', 'x']),
    ]);
    expect(ok.stderr).toMatch(/the engine on 2 tensor-parallel ranks/);
    expect(ok.stdout).toBe(c.greedy_text);
    expect(ok.code).toBe(0);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/num_key_value_heads 2 does not divide by 3/);
  });

  it('serve --tensor-parallel 2: the completion of every golden code prompt is its golden text', async () => {
    const server = await spawnServer(['--tensor-parallel', '2']);
    try {
      expect(server.log.join('\n')).toMatch(/on the engine on 2 tensor-parallel ranks/);
      const tokenizer = loadTokenizer(`${MODELS_DIR}tiny-qwen2-py`);
      for (const c of demoGolden('tiny-qwen2-py').cases.filter((k) => k.kind === 'text')) {
        const body = { prompt: c.prompt, max_tokens: 48, temperature: 0 };
        const r = await fetch(`${server.url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        });
        const eos = c.greedy.findIndex((t) => tokenizer.eosTokenIds.includes(t));
        expect(((await r.json()) as { choices: { text: string }[] }).choices[0].text).toBe(
          tokenizer.decode(eos < 0 ? c.greedy : c.greedy.slice(0, eos)),
        );
      }
    } finally {
      await server.stop();
    }
  });
});

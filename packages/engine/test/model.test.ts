// The engine's model (src/model/qwen2.ts: the week 2 model with the speed-only kernels), against the golden
// logits of every fixture model (fixtures/models/*/golden.safetensors, float64 PyTorch + transformers): a
// prefill followed by one-token decode steps, a prefill in two chunks, and greedy decoding must all reproduce
// the full-prompt logits of every position and the greedy continuations. Then the demo models' 48-token
// goldens, its KV cache's buffers, and the errors.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { expectClose, FIXTURES_DIR } from '@tiny-llm/tensor-core/testing';
import { expectGolden, goldenModel } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { RandomWeights } from '../src/random-weights.ts';
import { DecodeKvCache } from '../src/model/kv-cache.ts';
import { Qwen2Model } from '../src/model/qwen2.ts';

const MODELS_DIR = fileURLToPath(new URL('../../../models/', import.meta.url));
const FIXTURE_MODELS = ['qwen2-tiny', 'qwen2-tiny-untied', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit', 'qwen3-tiny', 'qwen2-moe-tiny'];
const ATOL = 1e-4;
/** The goldens' 1e-4 holds for the exact path: quantized weights times float32 activations. */
const EXACT = { exact: true } as const;

const ids2d = (ids: number[][]) => tc.tensor(ids, { dtype: 'int32' });

/** Rows [from, to) of a golden [L, V] logits tensor, flat. */
function goldenRows(logits: Tensor, from: number, to: number): Float32Array {
  const v = logits.shape[1];
  return (logits.toArray() as Float32Array).slice(from * v, to * v);
}

function expectLogits(what: string, actual: Tensor, expected: ArrayLike<number>, shape: number[]): void {
  expect([...actual.shape], `${what}: shape`).toEqual(shape);
  expect(actual.dtype, `${what}: dtype`).toBe('float32');
  expectClose(actual.toArray(), expected, ATOL);
}

for (const name of FIXTURE_MODELS) {
  describe(`Qwen2Model with a KV cache: ${name}`, () => {
    const dir = `${FIXTURES_DIR}models/${name}`;
    const golden = tc.readSafetensors(`${dir}/golden.safetensors`);
    const prompts = Number(golden.metadata.prompts);
    const newTokens = Number(golden.metadata.n_new);
    let loaded: Qwen2Model | undefined;
    const model = () => (loaded ??= Qwen2Model.load(dir, EXACT));
    const promptIds = (i: number) => Array.from(golden.get(`prompt${i}`).toArray());

    for (let i = 0; i < prompts; i++) {
      it(`prompt ${i}: prefill of a prefix, then one token at a time: the logits of every position`, () => {
        const ids = promptIds(i);
        const want = golden.get(`prompt${i}.logits`);
        const vocab = want.shape[1];
        const m = model();
        const cache = m.newCache();
        const prefix = Math.ceil(ids.length / 2);
        const first = m.forward(ids2d([ids.slice(0, prefix)]), cache);
        expectLogits(`prefill of ${prefix} tokens`, first, goldenRows(want, 0, prefix), [1, prefix, vocab]);
        expect(cache.every((c) => c.offset === prefix)).toBe(true);
        for (let p = prefix; p < ids.length; p++) {
          const step = m.forward(ids2d([[ids[p]]]), cache);
          expectLogits(`decode at position ${p}`, step, goldenRows(want, p, p + 1), [1, 1, vocab]);
          expect(cache[0].offset).toBe(p + 1);
        }
      });
    }

    for (let i = 0; i < prompts; i++) {
      it(`prompt ${i}: a prefill in two chunks gives the logits of the whole prompt`, () => {
        const ids = promptIds(i);
        const want = golden.get(`prompt${i}.logits`);
        const m = model();
        const cache = m.newCache();
        const cut = Math.min(3, ids.length - 1);
        const chunks = cut > 0 ? [ids.slice(0, cut), ids.slice(cut)] : [ids];
        let at = 0;
        for (const chunk of chunks) {
          const logits = m.forward(ids2d([chunk]), cache, at);
          expectLogits(`chunk at ${at}`, logits, goldenRows(want, at, at + chunk.length), [1, chunk.length, want.shape[1]]);
          at += chunk.length;
        }
      });
    }

    for (let i = 0; i < prompts; i++) {
      it(`prompt ${i}: ${newTokens} greedy tokens with the cache (forwardLastLogits, then one token per step)`, () => {
        const ids = promptIds(i);
        const m = model();
        const cache = m.newCache();
        const generated: number[] = [];
        let logits = m.forwardLastLogits(ids2d([ids]), cache); // [1, vocab]
        expectLogits(
          'last-position logits of the prompt',
          logits,
          goldenRows(golden.get(`prompt${i}.logits`), ids.length - 1, ids.length),
          [1, m.config.vocabSize],
        );
        for (let step = 0; step < newTokens; step++) {
          const next = tc.tidy(() => tc.argmax(logits, -1).item());
          logits.dispose();
          generated.push(next);
          if (step < newTokens - 1) logits = m.forwardLastLogits(ids2d([[next]]), cache);
        }
        expect(generated).toEqual(Array.from(golden.get(`prompt${i}.greedy`).toArray()));
        expect(cache[0].offset).toBe(ids.length + newTokens - 1);
      });
    }

    it('unfused projections (load option fuse: false) give the same logits', () => {
      const ids = promptIds(3);
      const m = Qwen2Model.load(dir, { fuse: false, ...EXACT });
      const cache = m.newCache();
      const want = golden.get('prompt3.logits');
      expectLogits('prefill', m.forward(ids2d([ids.slice(0, 5)]), cache), goldenRows(want, 0, 5), [1, 5, want.shape[1]]);
      expectLogits('decode', m.forward(ids2d([[ids[5]]]), cache), goldenRows(want, 5, 6), [1, 1, want.shape[1]]);
    });

    it('a batch of two rows with one offset: each row gets its own logits', () => {
      // Row 0: prompt 1's first tokens (its golden logits are the first rows of prompt 1's: attention is causal).
      const a = promptIds(0);
      const b = promptIds(1).slice(0, a.length);
      const m = model();
      const cache = m.newCache();
      const half = Math.ceil(a.length / 2);
      const first = m.forward(ids2d([a.slice(0, half), b.slice(0, half)]), cache, [0, 0]);
      const rest = m.forward(ids2d([a.slice(half), b.slice(half)]), cache, [half, half]);
      const vocab = m.config.vocabSize;
      const wantA = goldenRows(golden.get('prompt0.logits'), 0, a.length);
      const wantB = goldenRows(golden.get('prompt1.logits'), 0, a.length);
      const got = [first, rest].map((t) => t.toArray());
      const rowOf = (t: Float32Array | ArrayLike<number>, row: number, len: number) =>
        Array.prototype.slice.call(t, row * len * vocab, (row + 1) * len * vocab) as number[];
      expectClose([...rowOf(got[0], 0, half), ...rowOf(got[1], 0, a.length - half)], wantA, ATOL);
      expectClose([...rowOf(got[0], 1, half), ...rowOf(got[1], 1, a.length - half)], wantB, ATOL);
    });
  });
}

describe('Qwen2Model.decodeRows: requests of different lengths, each with its own caches, in one step', () => {
  for (const name of ['qwen2-tiny', 'qwen2-tiny-4bit', 'qwen3-tiny', 'qwen2-moe-tiny']) {
    it(`${name}: every prompt's last position, decoded together after its own prefill`, () => {
      const golden = goldenModel(name);
      const m = Qwen2Model.load(golden.dir, EXACT);
      const prompts = golden.prompts.filter((p) => p.ids.length >= 2);
      const caches = prompts.map((p) => {
        const cache = m.newCache();
        m.forward(ids2d([p.ids.slice(0, -1)]), cache).dispose();
        return cache;
      });
      const logits = m.decodeRows(
        prompts.map((p) => p.ids.at(-1)!),
        caches,
      ); // [B, V]
      prompts.forEach((p, row) => {
        const n = p.ids.length;
        expectGolden(tc.slice(logits, [[row, row + 1]]), tc.slice(p.logits, [[n - 1, n]]), {
          atol: ATOL,
          what: `row ${row} (prompt ${p.index}, position ${n - 1})`,
          axes: ['b', 'v'],
        });
        expect(caches[row][0].offset, `row ${row}'s caches hold its ${n} tokens`).toBe(n);
      });
    });
  }
});

interface DemoGolden {
  max_new_tokens: number;
  cases: { kind: string; ids: number[]; greedy: number[] }[];
}

describe('the demo models: 48 greedy tokens of every golden.json prompt, with the KV cache', () => {
  for (const name of ['tiny-qwen2-py', 'tiny-qwen2-py-draft', 'tiny-qwen2-moe-py']) {
    it(name, () => {
      const dir = `${MODELS_DIR}${name}`;
      const golden = JSON.parse(readFileSync(`${dir}/golden.json`, 'utf8')) as DemoGolden;
      const m = Qwen2Model.load(dir);
      for (const c of golden.cases) {
        const cache = m.newCache();
        const out: number[] = [];
        let next = tc.tidy(() => tc.argmax(m.forwardLastLogits(ids2d([c.ids]), cache), -1).item());
        for (let step = 0; step < golden.max_new_tokens; step++) {
          out.push(next);
          if (step + 1 < golden.max_new_tokens) next = tc.tidy(() => tc.argmax(m.forwardLastLogits(ids2d([[next]]), cache), -1).item());
        }
        expect(out, `${c.kind} prompt of ${c.ids.length} tokens`).toEqual(c.greedy);
      }
    });
  }
});

describe('Qwen2Model: memory of a prefill', () => {
  // Each layer runs in its own tidy scope: its temporaries (at L = 128: the score matrix, the projections) are
  // freed before the next layer, so the peak of a pass does not grow with the number of layers. Measured with
  // the CPU backend's byte counts, on random weights of 1 and 6 layers.
  const transientBytes = (layers: number): number => {
    const config = tc.parseModelConfig({
      model_type: 'qwen2',
      hidden_size: 128,
      intermediate_size: 256,
      num_hidden_layers: layers,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: 320,
      max_position_embeddings: 256,
      tie_word_embeddings: true,
      rope_theta: 1e6,
    });
    const model = Qwen2Model.fromWeights(config, new RandomWeights(config, { dtype: 'f32', seed: 1 }).get);
    const cache = model.newCache();
    const ids = ids2d([Array.from({ length: 128 }, (_, i) => (i * 7) % 320)]);
    tc.cpu.resetPeak();
    const logits = model.forwardLastLogits(ids, cache);
    const { liveBytes, peakBytes } = tc.cpu.memory();
    logits.dispose();
    ids.dispose();
    for (const c of cache) c.dispose();
    return peakBytes - liveBytes; // what the pass held at its peak beyond what it left (the logits, the caches)
  };

  it('the temporaries of 6 layers peak no higher than those of 1', () => {
    const one = transientBytes(1);
    const six = transientBytes(6);
    expect(one).toBeGreaterThan(128 * 128 * 4); // a [4, 128, 128] score matrix alone is 256 KB
    expect(six).toBeLessThan(1.5 * one);
  });
});

describe("DecodeKvCache (chapter 2.1's KvCache): buffers", () => {
  const kv = (b: number, h: number, l: number, d: number, seed: number) => tc.random.normal([b, h, l, d], { seed });

  it('appends along the sequence axis and returns everything so far', () => {
    const cache = new DecodeKvCache();
    expect(cache.offset).toBe(0);
    const k1 = kv(2, 3, 5, 4, 1);
    const v1 = kv(2, 3, 5, 4, 2);
    const r1 = cache.updateAndFetch(k1, v1);
    expect(r1.keys.shape).toEqual([2, 3, 5, 4]);
    expect(r1.values.shape).toEqual([2, 3, 5, 4]);
    expect(cache.offset).toBe(5);
    const k2 = kv(2, 3, 1, 4, 3);
    const v2 = kv(2, 3, 1, 4, 4);
    const r2 = cache.updateAndFetch(k2, v2);
    expect(r2.keys.shape).toEqual([2, 3, 6, 4]);
    expect(cache.offset).toBe(6);
    expectClose(r2.keys.toArray(), tc.concat([k1, k2], 2).toArray(), 0);
    expectClose(r2.values.toArray(), tc.concat([v1, v2], 2).toArray(), 0);
  });

  it('writes in place: the returned tensors are views of preallocated buffers', () => {
    const cache = new DecodeKvCache({ chunkSize: 16 });
    const r1 = cache.updateAndFetch(kv(1, 2, 3, 4, 1), kv(1, 2, 3, 4, 2));
    const r2 = cache.updateAndFetch(kv(1, 2, 1, 4, 3), kv(1, 2, 1, 4, 4));
    expect(cache.capacity).toBe(16);
    expect(r2.keys.storage).toBe(r1.keys.storage); // no copy of the cache on a decode step
    expect(r2.values.storage).toBe(r1.values.storage);
  });

  it('grows past a chunk and keeps the contents', () => {
    const cache = new DecodeKvCache({ chunkSize: 4 });
    const ks: Tensor[] = [];
    const vs: Tensor[] = [];
    for (let i = 0; i < 7; i++) {
      const l = i === 0 ? 3 : 1 + (i % 2);
      ks.push(kv(1, 2, l, 8, 10 + i));
      vs.push(kv(1, 2, l, 8, 20 + i));
      const { keys, values } = cache.updateAndFetch(ks[i], vs[i]);
      const total = ks.reduce((n, t) => n + t.shape[2], 0);
      expect(keys.shape).toEqual([1, 2, total, 8]);
      expect(cache.capacity).toBe(Math.ceil(total / 4) * 4);
      expectClose(keys.toArray(), tc.concat(ks, 2).toArray(), 0);
      expectClose(values.toArray(), tc.concat(vs, 2).toArray(), 0);
    }
  });

  it('stores non-contiguous and bf16 inputs as float32', () => {
    const cache = new DecodeKvCache();
    const k = tc.transpose(kv(1, 3, 2, 4, 5), [0, 2, 1, 3]); // [1, 2, 3, 4], a transposed view
    const v = tc.astype(kv(1, 2, 3, 4, 6), 'bfloat16');
    const { keys, values } = cache.updateAndFetch(k, v);
    expect(keys.dtype).toBe('float32');
    expectClose(keys.toArray(), k.toArray(), 0);
    expectClose(values.toArray(), v.toArray(), 0);
  });

  it('rewind drops the last n positions; the next update overwrites them', () => {
    const cache = new DecodeKvCache({ chunkSize: 4 });
    const a = kv(1, 1, 5, 2, 1);
    cache.updateAndFetch(a, a);
    cache.rewind(2);
    expect(cache.offset).toBe(3);
    const b = kv(1, 1, 1, 2, 2);
    const { keys } = cache.updateAndFetch(b, b);
    expect(keys.shape).toEqual([1, 1, 4, 2]);
    expectClose(keys.toArray(), tc.concat([tc.slice(a, [null, null, [0, 3]]), b], 2).toArray(), 0);
    cache.rewind(0);
    expect(cache.offset).toBe(4);
    expect(() => cache.rewind(5)).toThrow(/cannot drop 5 positions from a cache of 4/);
    expect(() => cache.rewind(-1)).toThrow(/rewind/);
  });

  it('rejects k and v that do not fit', () => {
    const cache = new DecodeKvCache();
    expect(() => cache.updateAndFetch(kv(1, 2, 3, 4, 1), kv(1, 2, 3, 5, 1))).toThrow(/one shape \[B, Hkv, L, D\]/);
    expect(() => cache.updateAndFetch(tc.zeros([2, 12]), tc.zeros([2, 12]))).toThrow(/\[B, Hkv, L, D\]/);
    cache.updateAndFetch(kv(1, 2, 3, 4, 1), kv(1, 2, 3, 4, 2));
    expect(() => cache.updateAndFetch(kv(1, 3, 1, 4, 1), kv(1, 3, 1, 4, 2))).toThrow(/holds \[B=1, Hkv=2, S, D=4\]/);
  });
});

describe('Qwen2Model: errors', () => {
  const dir = `${FIXTURES_DIR}models/qwen2-tiny`;
  let loaded: Qwen2Model | undefined;
  const model = () => (loaded ??= Qwen2Model.load(dir, EXACT));

  it('a token id outside the vocabulary says which id and where; the cache is unchanged', () => {
    const m = model();
    const cache = m.newCache();
    expect(() => m.forward(ids2d([[1, 2, 512, 3]]), cache)).toThrow(/token id 512 at \[0, 2\].*outside the vocabulary \(vocab_size 512/);
    expect(() => m.forward(ids2d([[1, -1]]), cache)).toThrow(/token id -1 at \[0, 1\]/);
    expect(cache[0].offset).toBe(0);
  });

  it('a prompt longer than max_position_embeddings', () => {
    const m = model();
    const max = m.config.maxPositionEmbeddings;
    const cache = m.newCache();
    const long = tc.zeros([1, max + 1], { dtype: 'int32' });
    expect(() => m.forward(long, cache)).toThrow(
      new RegExp(`${max + 1} tokens after 0 cached ones reach position ${max}.*max_position_embeddings ${max}`),
    );
    // The same limit counts the cached tokens.
    m.forward(ids2d([[1, 2, 3]]), cache);
    expect(() => m.forward(tc.zeros([1, max - 2], { dtype: 'int32' }), cache)).toThrow(/after 3 cached ones/);
    expect(cache[0].offset).toBe(3);
  });

  it('ids of the wrong shape or dtype, a wrong number of caches, an offset that is not the cache length', () => {
    const m = model();
    expect(() => m.forward(tc.tensor([1, 2, 3], { dtype: 'int32' }), m.newCache())).toThrow(/int32 \[B, L\]/);
    expect(() => m.forward(tc.tensor([[1, 2]], { dtype: 'float32' }), m.newCache())).toThrow(/int32 \[B, L\]/);
    expect(() => m.forward(ids2d([[1]]), [new DecodeKvCache()])).toThrow(/one DecodeKvCache per layer/);
    expect(() => m.forward(ids2d([[1]]), m.newCache(), 4)).toThrow(/offset 4 does not match the 0 tokens in the cache/);
  });

  it('rows with different offsets are chapter 2.6', () => {
    const m = model();
    expect(() => m.forward(ids2d([[1], [2]]), m.newCache(), [0, 3])).toThrow(/ragged offsets.*chapter 2\.6/);
  });

  it('load reports its progress', () => {
    const calls: [number, number][] = [];
    const m = Qwen2Model.load(dir, { onProgress: (done, total) => calls.push([done, total]) });
    const total = m.config.numHiddenLayers + 2;
    expect(calls.length).toBe(total);
    expect(calls.at(-1)).toEqual([total, total]);
    expect(calls.every(([d, t], i) => t === total && d === i + 1)).toBe(true);
  });

  it('weights whose shapes disagree with the config: the error names the weight, its shape and the expected one', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tl-shapes-'));
    cpSync(`${FIXTURES_DIR}models/qwen2-tiny`, dir, { recursive: true });
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, intermediate_size: 96 }));
    expect(() => Qwen2Model.load(dir)).toThrow(
      /model\.layers\.0\.mlp\.gate_proj: expected a weight of shape \[96, 64\], got float32\[128, 64\]/,
    );
    rmSync(dir, { recursive: true, force: true });
  });

  it('a directory that is not a model says so', () => {
    expect(() => Qwen2Model.load(`${FIXTURES_DIR}ops`)).toThrow(/no config\.json/);
  });

  it('rewinding the caches re-runs positions exactly (what speculative decoding does)', () => {
    const m = model();
    const cache = m.newCache();
    const full = m.forward(ids2d([[5, 6, 7, 8, 9]]), cache).toArray();
    for (const c of cache) c.rewind(2);
    const again = m.forward(ids2d([[8, 9]]), cache).toArray();
    expectClose(again, (full as Float32Array).slice(3 * m.config.vocabSize), 1e-5);
  });
});

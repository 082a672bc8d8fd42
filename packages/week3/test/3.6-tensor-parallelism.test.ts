// Chapter 3.6, graded: tensor parallelism. The shards of column- and row-parallel layers against the rows and
// columns of the whole weight and float64 products; the attention shards under grouped-query attention; a
// rank's model on every fixture model, its partial results at every all-reduce of a prefill and of decode
// steps held to the float64 layer halves (fixtures/models/*), and its logits to the goldens; then the
// shared-memory all-reduce in real threads: races, the same bits on every rank, an abort that wakes everyone.
import { Worker } from 'node:worker_threads';
import * as tc from '@tiny-llm/tensor-core';
import type { LinearWeights, Tensor } from '@tiny-llm/tensor-core';
import {
  AllReduceOracle,
  allReduceSteps,
  batchOf,
  expectGolden,
  expectValues,
  explainRoundError,
  float64 as f64,
  goldenModel,
  headsOfRows,
  LOGITS_ATOL,
  matchRows,
  rowParallelMistakes,
} from '@tiny-llm/grading';
import { assert, describe, expect, it } from 'vitest';
import { columnParallel, rowParallel, shardAttention, SharedMemoryAllReduce, TensorParallelQwen2, type RankOf } from '@solution/week3';
import { solutionPathOf } from '../../../vitest.shared.ts';

const random = (shape: number[], seed: number) => tc.random.normal(shape, { seed });
const ranksOf = (worldSize: number): RankOf[] => Array.from({ length: worldSize }, (_, rank) => ({ rank, worldSize }));
const range = (start: number, end: number) => Array.from({ length: end - start }, (_, i) => start + i);
const dense = (w: LinearWeights['weight']): Tensor => (w instanceof tc.QuantizedWeight ? tc.dequantize(w) : w);

/** A shard's weight as a dense tensor, after checking its shape; `wrongAxis` explains the other split's shape. */
function shardWeight(shard: LinearWeights, shape: number[], what: string, wrongAxis: { shape: number[]; why: string }): Tensor {
  const got = [...shard.weight.shape];
  if (got.join() === shape.join()) return dense(shard.weight);
  const why = got.join() === wrongAxis.shape.join() ? `: ${wrongAxis.why}` : '';
  assert.fail(`${what}: expected a weight of shape ${tc.formatShape(shape)}, got ${tc.formatShape(got)}${why}`);
}

/** Columns [start, end) of a float64 [rows, cols] array, flat. */
const columnsOf = (a: f64.NDArray, start: number, end: number) =>
  Float64Array.from(
    { length: a.shape[0] * (end - start) },
    (_, i) => a.data[Math.floor(i / (end - start)) * a.shape[1] + start + (i % (end - start))],
  );

describe('3.6 tensor parallelism: column- and row-parallel layers', () => {
  // W [out, in] = [8, 12]; y = x @ W.T + b.
  const [out, inF] = [8, 12];
  const w = random([out, inF], 1);
  const b = random([out], 2);
  const x = random([3, inF], 3);
  const y = f64.linear(f64.toND(x), f64.toND(w), f64.toND(b));

  for (const n of [2, 4]) {
    it(`columnParallel over ${n} ranks: rank r keeps rows [r ${out}/${n}, (r + 1) ${out}/${n}) of W [${out}, ${inF}] and of the bias, and computes its block of the output features`, () => {
      const rows = out / n;
      for (const at of ranksOf(n)) {
        const shard = columnParallel({ weight: w, bias: b }, at);
        const what = `rank ${at.rank}'s shard`;
        const wrongAxis = {
          shape: [out, inF / n],
          why: 'those are columns; a column-parallel layer splits the rows of W [out, in] (its output features)',
        };
        const weight = shardWeight(shard, [rows, inF], what, wrongAxis);
        const want = range(at.rank * rows, (at.rank + 1) * rows);
        expect(matchRows(weight, w), `${what} holds these rows of W; expected rows ${want[0]}..${want.at(-1)}`).toEqual(want);
        expect(shard.bias, `${what}: a column-parallel layer keeps the bias of its rows`).toBeTruthy();
        const own = f64.linear(f64.toND(x), f64.toND(weight), f64.toND(shard.bias!));
        expectValues(own.data, columnsOf(y, want[0], want.at(-1)! + 1), own.shape, {
          atol: 1e-5,
          what: `${what}'s output, against its features of x @ W.T + b`,
          axes: ['row', 'feature'],
        });
      }
    });

    it(`rowParallel over ${n} ranks: rank r keeps columns [r ${inF}/${n}, (r + 1) ${inF}/${n}) of W, the bias on rank 0 only; the partial outputs sum to the layer's`, () => {
      const cols = inF / n;
      const total = new Float64Array(y.data.length);
      for (const at of ranksOf(n)) {
        const shard = rowParallel({ weight: w, bias: b }, at);
        const what = `rank ${at.rank}'s shard`;
        const wrongAxis = {
          shape: [out / n, inF],
          why: 'those are rows; a row-parallel layer splits the columns of W [out, in] (its input features)',
        };
        const weight = shardWeight(shard, [out, cols], what, wrongAxis);
        const want = range(at.rank * cols, (at.rank + 1) * cols);
        expect(
          matchRows(tc.transpose(weight), tc.transpose(w)),
          `${what} holds these columns of W; expected columns ${want[0]}..${want.at(-1)}`,
        ).toEqual(want);
        const ownX = { shape: [3, cols], data: columnsOf(f64.toND(x), want[0], want.at(-1)! + 1) };
        const partial = f64.linear(ownX, f64.toND(weight), shard.bias ? f64.toND(shard.bias) : undefined);
        partial.data.forEach((v, i) => (total[i] += v));
      }
      expectValues(total, y.data, y.shape, {
        atol: 1e-5,
        what: "the sum of the ranks' partial outputs",
        axes: ['row', 'feature'],
        mistakes: rowParallelMistakes(y, b.toArray(), n),
      });
    });
  }

  it('a 4-bit weight (groups of 64) over 4 ranks: its shards hold the same values as the rows and columns of the whole', () => {
    const q = tc.quantize(random([4, 128], 7), 4, 64);
    const whole = tc.dequantize(q);
    for (const at of ranksOf(4)) {
      const column = dense(columnParallel({ weight: q, bias: null }, at).weight);
      expectGolden(column, f64.toND(tc.contiguous(tc.slice(whole, [[at.rank, at.rank + 1]]))), {
        atol: 0,
        what: `rank ${at.rank}'s column-parallel shard, dequantized`,
      });
      // 32 columns of groups of 64: the shard regroups them (sliceColumns) into groups of 32.
      const row = dense(rowParallel({ weight: q, bias: null }, at).weight);
      expectGolden(row, f64.toND(tc.contiguous(tc.slice(whole, [null, [32 * at.rank, 32 * (at.rank + 1)]]))), {
        atol: 0,
        what: `rank ${at.rank}'s row-parallel shard, dequantized`,
      });
    }
  });
});

describe('3.6 tensor parallelism: the attention shards under grouped-query attention', () => {
  for (const name of ['qwen2-tiny', 'qwen2-tiny-untied']) {
    const golden = goldenModel(name);
    it(`${name} over 2 ranks: rank r keeps its block of query heads, the kv heads they read, the o_proj columns of its heads`, () => {
      const md = tc.openModelDir(golden.dir);
      const c = md.config;
      const [h, hkv, d] = [c.numAttentionHeads, c.numKeyValueHeads, c.headDim];
      const p = 'model.layers.0.self_attn';
      const full = { q: md.linear(`${p}.q_proj`), k: md.linear(`${p}.k_proj`), v: md.linear(`${p}.v_proj`), o: md.linear(`${p}.o_proj`) };
      const shape = { hiddenSize: c.hiddenSize, numHeads: h, numKvHeads: hkv, headDim: d };
      for (const at of ranksOf(2)) {
        const { weights, shape: local } = shardAttention(full, shape, at);
        const who = `rank ${at.rank}`;
        const [qHeads, kvHeads] = [
          range(at.rank * (h / 2), (at.rank + 1) * (h / 2)),
          range(at.rank * (hkv / 2), (at.rank + 1) * (hkv / 2)),
        ];
        const heads = (shard: LinearWeights, fullWeight: LinearWeights) =>
          headsOfRows(matchRows(dense(shard.weight), dense(fullWeight.weight)), d);
        const gotQ = heads(weights.q, full.q);
        expect(
          gotQ,
          `${who}'s q_proj rows are query heads [${gotQ}]; expected its block [${qHeads}] (contiguous: query head j reads kv head floor(j / ${h / hkv}))`,
        ).toEqual(qHeads);
        for (const [label, shard, whole] of [
          ['k_proj', weights.k, full.k],
          ['v_proj', weights.v, full.v],
        ] as const) {
          const got = heads(shard, whole);
          const readBy = (kv: number) => range(kv * (h / hkv), (kv + 1) * (h / hkv));
          const why =
            got.length === hkv
              ? `every kv head: with ${local.numHeads} query heads per rank, its query heads would read the wrong kv heads; keep only the ${hkv / 2} its own query heads read`
              : `kv heads [${got}], which are read by query heads [${got.flatMap(readBy)}], not by its query heads [${qHeads}]`;
          expect(got, `${who}'s ${label} rows hold ${why}; expected kv heads [${kvHeads}]`).toEqual(kvHeads);
        }
        expect({ numHeads: local.numHeads, numKvHeads: local.numKvHeads }, `${who}'s shape: its own counts of query and kv heads`).toEqual({
          numHeads: h / 2,
          numKvHeads: hkv / 2,
        });
        const o = dense(weights.o.weight);
        expect([...o.shape], `${who}'s o_proj: the columns of its heads' outputs (row-parallel), [hidden, ${h / 2} x ${d}]`).toEqual([
          c.hiddenSize,
          (h / 2) * d,
        ]);
        expect(
          headsOfRows(matchRows(tc.transpose(o), tc.transpose(dense(full.o.weight))), d),
          `${who}'s o_proj columns belong to heads`,
        ).toEqual(qHeads);
      }
    });
  }
});

describe("3.6 tensor parallelism: a rank's model on every fixture model, 2 ranks", () => {
  // Dense float32 (tied and untied), bf16, MLX 4-bit (o_proj's 32 columns per rank cut its groups of 64), Qwen3.
  for (const name of ['qwen2-tiny', 'qwen2-tiny-untied', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit', 'qwen3-tiny']) {
    const golden = goldenModel(name);
    const prompt = golden.prompts.reduce((a, b) => (b.ids.length > a.ids.length ? b : a));
    const n = prompt.ids.length;
    const prefix = Math.ceil(n / 2);
    it(`${name}: a prefill of ${prefix} tokens, then ${n - prefix} decode steps: the ranks' partials sum to each layer half (float64) at every all-reduce, and their logits are the golden`, () => {
      const oracle = new AllReduceOracle(allReduceSteps(golden.float64(), prompt.ids), 2);
      const ranks = ranksOf(2).map((at) => TensorParallelQwen2.loadShard(golden.dir, { ...at, allReduce: oracle.allReduceOf(at.rank) }));
      const caches = ranks.map((m) => m.newCache());
      for (const [start, end] of [[0, prefix], ...range(prefix, n).map((p) => [p, p + 1])]) {
        const what = end - start > 1 ? `the prefill of positions 0..${end - 1}` : `the decode step at position ${start}`;
        oracle.begin(start, end);
        const ids = tc.tensor([prompt.ids.slice(start, end)], { dtype: 'int32' });
        const logits = ranks.map((m, r) => m.forward(ids, start, caches[r]));
        oracle.check(what, LOGITS_ATOL);
        // Every rank ends with the same hidden state, hence the same logits.
        logits.forEach((l, r) =>
          expectGolden(l, batchOf(tc.slice(prompt.logits, [[start, end]])), {
            atol: LOGITS_ATOL,
            what: `rank ${r}'s logits of ${what}`,
            axes: ['b', 'l', 'v'],
          }),
        );
      }
    });
  }
});

describe('3.6 tensor parallelism: the shared-memory all-reduce, in threads', () => {
  const modulePath = solutionPathOf('packages/week3/src/all-reduce.ts');
  type Task = { kind: 'rounds' | 'random' | 'abort'; [option: string]: unknown };
  type Report = { type: 'done' | 'wrong' | 'error'; [field: string]: unknown };

  /**
   * Runs `task` on `worldSize` ranks in threads over one buffer. Resolves with every rank's report, or as soon
   * as one rank reports a wrong sum (its peers then wait for it at a barrier: they are stopped); fails if a
   * rank throws, or if they have not all reported within 60 s.
   */
  async function runRanks(worldSize: number, slotSize: number, task: Task): Promise<Report[]> {
    const shared = SharedMemoryAllReduce.allocate(worldSize, slotSize);
    const url = new URL('./support/all-reduce-rank.mjs', import.meta.url);
    const workers = range(0, worldSize).map((rank) => new Worker(url, { workerData: { modulePath, shared, rank, worldSize, task } }));
    let timer: NodeJS.Timeout | undefined;
    try {
      const reports = await new Promise<Report[]>((resolve, reject) => {
        const received: Report[] = [];
        let count = 0;
        workers.forEach((w, rank) => {
          w.once('error', reject);
          w.once('message', (report: Report) => {
            received[rank] = report;
            if (report.type !== 'done' || ++count === worldSize) resolve(received);
          });
        });
        timer = setTimeout(
          () =>
            reject(
              new Error(
                `the ${worldSize} ranks did not all finish within 60 s: a barrier that never opens (read the generation before ` +
                  'arriving, since the last rank may move it on at once; set the arrival count back to 0 for the next barrier)',
              ),
            ),
          60_000,
        );
      });
      const failed = reports.find((r) => r?.type === 'error');
      if (failed) assert.fail(`a rank threw ${failed.name}: ${failed.message}`);
      return reports;
    } finally {
      clearTimeout(timer);
      await Promise.all(workers.map((w) => w.terminate()));
    }
  }

  for (const worldSize of [2, 3, 4]) {
    it(`${worldSize} ranks, 1,000 rounds of 4,096 values with random pauses: every rank holds every round's exact sum`, async () => {
      const reports = await runRanks(worldSize, 4096, { kind: 'rounds', rounds: 1000, length: 4096, pauseMicros: 50 });
      reports.forEach((r, rank) => {
        if (r?.type !== 'wrong') return;
        const [got, expected] = [r.got as number, r.expected as number];
        assert.fail(
          `rank ${rank}, round ${r.round}, element ${r.index}: got ${got}, expected ${expected}: ${explainRoundError(worldSize, r.round as number, r.index as number, got, expected)}`,
        );
      });
    });
  }

  it('4 ranks, 20 rounds of random floats in a slot of 64 values (data 1,000 long: a slot at a time): the same bits on every rank, the sum of the inputs', async () => {
    const reports = await runRanks(4, 64, { kind: 'random', rounds: 20, length: 1000, seed: 3, pauseMicros: 20 });
    const inputs = reports.map((r) => r.inputs as Float32Array[]);
    const results = reports.map((r) => r.results as Float32Array[]);
    for (let k = 0; k < 20; k++) {
      const sum = Float64Array.from(inputs[0][k], (_, i) => inputs.reduce((s, rank) => s + rank[k][i], 0));
      expectValues(results[0][k], sum, [1000], { atol: 1e-6, rtol: 1e-6, what: `round ${k}, rank 0's sum` });
      for (let rank = 1; rank < 4; rank++) {
        const differ = results[rank][k].findIndex((v, i) => v !== results[0][k][i]);
        if (differ >= 0) {
          assert.fail(
            `round ${k}, element ${differ}: rank ${rank} got ${results[rank][k][differ]}, rank 0 ${results[0][k][differ]}: the ranks added the ` +
              'slots in different orders (float addition is not associative); add them in the same order on every rank (rank 0 first), so ' +
              'that every rank goes on with the same hidden state.',
          );
        }
      }
    }
  });

  it('a rank that aborts at round 5 wakes its 2 peers waiting at a barrier: they throw TensorParallelAborted instead of waiting for ever', async () => {
    const shared = SharedMemoryAllReduce.allocate(3, 16);
    const url = new URL('./support/all-reduce-rank.mjs', import.meta.url);
    const task = { kind: 'abort', length: 16, abortRank: 1, abortAt: 5 };
    const workers = range(0, 3).map((rank) => new Worker(url, { workerData: { modulePath, shared, rank, worldSize: 3, task } }));
    try {
      const reports = await Promise.race([
        Promise.all(workers.map((w) => new Promise<Report>((resolve) => w.once('message', resolve)))),
        new Promise<never>((_, reject) =>
          setTimeout(
            () =>
              reject(
                new Error(
                  'the peers of the rank that aborted still wait after 20 s: wait with this.waitWhile, which throws once the group is aborted',
                ),
              ),
            20_000,
          ),
        ),
      ]);
      const stub = reports.find((r) => r.name === 'NotImplemented');
      if (stub) assert.fail(`a rank threw NotImplemented: ${stub.message}`);
      for (const rank of [0, 2]) expect(reports[rank].name, `rank ${rank}: ${reports[rank].message}`).toBe('TensorParallelAborted');
    } finally {
      await Promise.all(workers.map((w) => w.terminate()));
    }
  });
});

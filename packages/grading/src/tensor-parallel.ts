// The checks of chapter 3.6, tensor parallelism: what each all-reduce of a pass must add up to (float64), a
// stand-in all-reduce that lets the ranks of a model run one after the other in one thread, and the known
// mistakes of a shard, of a layer's all-reduces and of a shared-memory all-reduce, said in the learner's terms.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { assert } from 'vitest';
import { expectValues, type Mistake } from './checks.ts';
import type { Float64Qwen2 } from './float64-model.ts';
import type { NDArray } from './float64.ts';

/** One all-reduce of a pass: layer `layer`'s attention or MLP half, what its partials add up to, and its input. */
export interface AllReduceStep {
  layer: number;
  half: 'attention' | 'MLP';
  /** The half's output for every position of the sequence, [1, n, E]: the sum of the ranks' partials. */
  sum: NDArray;
  /** The residual stream the half adds to (its input), [1, n, E]. */
  residual: NDArray;
}

/** The 2 x layers all-reduces of a pass over `ids`, in order: each layer's attention half, then its MLP half. */
export function allReduceSteps(model: Float64Qwen2, ids: readonly number[]): AllReduceStep[] {
  const steps: AllReduceStep[] = [];
  let x = model.embed(ids);
  for (let layer = 0; layer < model.config.numHiddenLayers; layer++) {
    const { attention, mlp } = model.layerHalves(layer, x);
    const h = { shape: x.shape, data: x.data.map((v, i) => v + attention.data[i]) };
    steps.push({ layer, half: 'attention', sum: attention, residual: x }, { layer, half: 'MLP', sum: mlp, residual: h });
    x = { shape: x.shape, data: h.data.map((v, i) => v + mlp.data[i]) };
  }
  return steps;
}

/** Rows [start, end) of a [1, n, E] array, flat. */
const rowsOf = (a: NDArray, start: number, end: number) => a.data.subarray(start * a.shape[2], end * a.shape[2]);

/**
 * The all-reduce for ranks run one after the other in one thread (a real one would wait for the others): each
 * rank's call returns the float64 sum the ranks must reach, so every rank goes on from the right values
 * whatever the others do, and the partials are kept. check() then holds their sums to the float64 ones, step by
 * step, so a failure names the first all-reduce that went wrong.
 */
export class AllReduceOracle {
  private partials: Float64Array[][] = [];
  private shapes: number[][][] = [];
  private start = 0;
  private end = 0;

  constructor(
    readonly steps: readonly AllReduceStep[],
    readonly worldSize: number,
  ) {}

  /** Starts a call of every rank on positions [start, end) of the sequence. */
  begin(start: number, end: number): void {
    this.start = start;
    this.end = end;
    this.partials = Array.from({ length: this.worldSize }, () => []);
    this.shapes = Array.from({ length: this.worldSize }, () => []);
  }

  /** Rank r's all-reduce: records its partial, returns the sum of this step for these positions. */
  allReduceOf(rank: number): (partial: Tensor) => Tensor {
    return (partial) => {
      const calls = this.partials[rank];
      this.shapes[rank].push([...partial.shape]);
      calls.push(Float64Array.from(partial.toArray()));
      const step = this.steps[Math.min(calls.length - 1, this.steps.length - 1)];
      const sum = Float32Array.from(rowsOf(step.sum, this.start, this.end));
      return tc.tensor(sum, { shape: [1, this.end - this.start, step.sum.shape[2]] });
    };
  }

  /** After every rank ran the call: the count and shape of each rank's all-reduces, then their sums. */
  check(what: string, atol: number): void {
    const n = this.steps.length;
    const layers = n / 2;
    this.partials.forEach((calls, rank) => {
      if (calls.length !== n) {
        assert.fail(
          `${what}: rank ${rank} all-reduced ${calls.length} times in a pass over ${layers} layers; expected ${n}: every layer ` +
            'all-reduces twice, the output of its attention (after o_proj) and that of its MLP (after down_proj).',
        );
      }
    });
    const shape = [1, this.end - this.start, this.steps[0].sum.shape[2]];
    this.steps.forEach((step, k) => {
      const where = `${what}, all-reduce ${k + 1} of ${n} (layer ${step.layer}, ${step.half})`;
      this.shapes.forEach((s, rank) => {
        if (s[k].join() !== shape.join()) {
          assert.fail(
            `${where}: rank ${rank} all-reduced a tensor of shape ${tc.formatShape(s[k])}; the ranks sum the half's output, [B, L, hidden] = ${tc.formatShape(shape)}.`,
          );
        }
      });
      const total = new Float64Array(this.partials[0][k].length);
      for (const calls of this.partials) calls[k].forEach((v, i) => (total[i] += v));
      const expected = rowsOf(step.sum, this.start, this.end);
      const residual = rowsOf(step.residual, this.start, this.end);
      expectValues(total, expected, shape, {
        atol,
        what: `${where}: the sum of the ranks' partials`,
        axes: ['b', 'l', 'e'],
        mistakes: layerMistakes(expected, residual, this.worldSize),
      });
    });
  }
}

/** A half of a layer on N ranks: the residual added on every rank, and the whole half computed on every rank. */
function layerMistakes(sum: ArrayLike<number>, residual: ArrayLike<number>, n: number): Mistake[] {
  const scaled = (f: (i: number) => number) => () => Float64Array.from(sum, (_, i) => f(i));
  return [
    {
      explanation:
        `each rank added the residual before the all-reduce, so the sum counts it ${n} times: all-reduce the half's ` +
        'output alone, then add the residual once (every rank holds it already).',
      values: scaled((i) => sum[i] + n * residual[i]),
    },
    {
      explanation:
        `each rank computed the whole half (all the heads, all the MLP columns), so the sum counts it ${n} times: a rank ` +
        'computes only its share, from its shard of the weights.',
      values: scaled((i) => n * sum[i]),
    },
  ];
}

/** The row-parallel bias kept on every rank: the partials then sum to the layer's output plus (N - 1) biases. */
export function rowParallelMistakes(sum: NDArray, bias: ArrayLike<number>, n: number): Mistake[] {
  const width = bias.length;
  return [
    {
      explanation: `the bias kept on every rank: the all-reduce adds it ${n} times. Keep the row-parallel layer's bias on rank 0 only.`,
      values: () => Float64Array.from(sum.data, (v, i) => v + (n - 1) * bias[i % width]),
    },
  ];
}

/** Which rows of `full` [R, C] the rows of `part` [r, C] are (exact matches), -1 for a row found nowhere. */
export function matchRows(part: Tensor, full: Tensor): number[] {
  const [rows, cols] = full.shape;
  const f = full.toArray();
  const p = part.toArray();
  return Array.from({ length: part.shape[0] }, (_, i) => {
    for (let r = 0; r < rows; r++) {
      let same = true;
      for (let c = 0; c < cols && same; c++) same = p[i * cols + c] === f[r * cols + c];
      if (same) return r;
    }
    return -1;
  });
}

/** The heads (blocks of `headDim` rows) that rows fall in, in order of first appearance: rows 0..15 of D = 8 -> [0, 1]. */
export function headsOfRows(rows: readonly number[], headDim: number): number[] {
  return [...new Set(rows.map((r) => (r < 0 ? -1 : Math.floor(r / headDim))))];
}

// ---- the shared-memory all-reduce -----------------------------------------------------------------------------

/** The ranks whose bits are set in `mask`. */
const ranksIn = (mask: number, worldSize: number) => Array.from({ length: worldSize }, (_, r) => r).filter((r) => mask & (1 << r));
const listRanks = (ranks: number[]) => `rank${ranks.length > 1 ? 's' : ''} ${ranks.join(', ')}`;

/**
 * Explains a wrong sum of the race test (test/support/all-reduce-rank.mjs), where rank r's element i at round
 * k >= 1 is k * 2^(r + 4) + i: a slot read a round early or late is off by its rank's 2^(r + 4), a slot read
 * before its rank ever wrote it by the whole value. Says which ranks' values were read when, and the fix.
 */
export function explainRoundError(worldSize: number, round: number, index: number, got: number, expected: number): string {
  const error = got - expected;
  for (let mask = 1; mask < 2 ** worldSize; mask++) {
    const ranks = ranksIn(mask, worldSize);
    const shift = ranks.reduce((s, r) => s + 2 ** (r + 4), 0);
    const unwritten = ranks.reduce((s, r) => s + round * 2 ** (r + 4) + index, 0);
    if (error === -unwritten) {
      return (
        `the slot${ranks.length > 1 ? 's' : ''} of ${listRanks(ranks)} read as zeros, before ${ranks.length > 1 ? 'they were' : 'it was'} ever written: ` +
        "a rank read its peers' slots before they had written. Wait at a barrier after writing your slot, before reading the others."
      );
    }
    if (error === -shift) {
      return (
        `the values of ${listRanks(ranks)} came from the round before: a rank read its peers' slots before they had written ` +
        "this round's values. Wait at a barrier after writing your slot, before reading the others."
      );
    }
    if (error === shift) {
      return (
        `the values of ${listRanks(ranks)} came from the round after: a rank wrote its next values into its slot before every ` +
        'peer had read this round. Wait at a barrier after reading, before the next write.'
      );
    }
  }
  return 'the sum is no mix of rounds: the slots were read while being written, or a rank was left out of the sum.';
}

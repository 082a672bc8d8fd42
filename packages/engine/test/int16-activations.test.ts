// How far the engine's default for quantized weights, integer activations (native/quantized_matmul_int16.cc), moves
// the model's predictions from the exact path (float32 activations, `exact: true`): on the demo model converted to
// 4 and 8 bits, over the golden prompts of models/tiny-qwen2-py and a Python file of 1,999 tokens
// (test/fixtures/inventory.py), the next-token distribution of every position from both paths. The requirement:
// mean KL(exact || fast) at most 1e-3 nats, and the same most likely token at 99% of positions or more.
// The sequences run twice: in chunks of 8 tokens, which the decode kernels take (native/quantized_matmul_int16.cc;
// from 12 rows a call goes to the GEMM where the CPU has AVX-512 VNNI), and in chunks of 512, prefills, which take
// the integer GEMM (native/quantized_gemm_int16.cc) on VNNI and float activations below it. The figures are
// printed (docs/engine.md quotes them).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tc from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertModel } from '../src/convert.ts';
import { Qwen2Model } from '../src/model/qwen2.ts';

const DEMO = `${MODELS_DIR}tiny-qwen2-py`;
const PYTHON_FILE = fileURLToPath(new URL('./fixtures/inventory.py', import.meta.url));

let tmp = '';
const converted: Record<number, string> = {};
let sequences: number[][] = [];

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'tiny-llm-int16-'));
  for (const bits of [4, 8] as const) {
    converted[bits] = join(tmp, `q${bits}`);
    convertModel(DEMO, converted[bits], { bits, groupSize: 64 });
  }
  const python = loadTokenizer(DEMO).encode(readFileSync(PYTHON_FILE, 'utf8'));
  sequences = [...demoGolden('tiny-qwen2-py').cases.map((c) => c.ids), python];
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The logits of every position of `ids`, [L, vocab], fed to the model `chunkLength` tokens at a time. */
function allLogits(model: Qwen2Model, ids: number[], chunkLength: number): Float32Array[] {
  const cache = model.newCache();
  const rows: Float32Array[] = [];
  for (let start = 0; start < ids.length; start += chunkLength) {
    const chunk = ids.slice(start, start + chunkLength);
    const logits = tc.tidy(() => model.forward(tc.tensor([chunk], { dtype: 'int32' }), cache).toArray() as Float32Array);
    const vocab = logits.length / chunk.length;
    for (let i = 0; i < chunk.length; i++) rows.push(logits.subarray(i * vocab, (i + 1) * vocab));
  }
  return rows;
}

/** log softmax in float64. */
function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  const logZ = max + Math.log(sum);
  return Float64Array.from(logits, (v) => v - logZ);
}

const argmax = (v: ArrayLike<number>) => {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
};

describe('integer activations against the exact path, on the demo model quantized', () => {
  for (const [bits, chunkLength] of [
    [4, 8],
    [8, 8],
    [4, 512],
    [8, 512],
  ]) {
    it(`${bits}-bit, chunks of ${chunkLength}: mean KL(exact || fast) <= 1e-3 nats, the same top-1 token at >= 99% of positions`, () => {
      const fast = Qwen2Model.load(converted[bits]);
      const exact = Qwen2Model.load(converted[bits], { exact: true });
      let positions = 0,
        klSum = 0,
        klMax = 0,
        top1Same = 0;
      const tieGaps: number[] = []; // where the top-1 tokens differ: the exact logit of exact's top-1 minus fast's
      for (const ids of sequences) {
        const p = allLogits(exact, ids, chunkLength);
        const q = allLogits(fast, ids, chunkLength);
        for (let i = 0; i < ids.length; i++) {
          const logP = logSoftmax(p[i]);
          const logQ = logSoftmax(q[i]);
          let kl = 0;
          for (let v = 0; v < logP.length; v++) kl += Math.exp(logP[v]) * (logP[v] - logQ[v]);
          klSum += kl;
          klMax = Math.max(klMax, kl);
          const [a, b] = [argmax(p[i]), argmax(q[i])];
          if (a === b) top1Same++;
          else tieGaps.push(p[i][a] - p[i][b]);
          positions++;
        }
      }
      const klMean = klSum / positions;
      const top1 = top1Same / positions;
      console.log(
        `${bits}-bit, group 64, chunks of ${chunkLength}: ${positions} positions (${sequences.length} sequences): mean KL ${klMean.toExponential(2)} nats, ` +
          `max ${klMax.toExponential(2)}; top-1 equal at ${(100 * top1).toFixed(2)}%` +
          (tieGaps.length === 0
            ? ''
            : ` (where not, the exact logits of the two tokens are ${tieGaps.sort((x, y) => x - y)[tieGaps.length >> 1].toFixed(3)} apart, median)`),
      );
      expect(klMean, 'the integer path ran (it differs from the exact one)').toBeGreaterThan(0);
      expect(klMean).toBeLessThanOrEqual(1e-3);
      expect(top1).toBeGreaterThanOrEqual(0.99);
    });
  }
});

// Chapter 2.4's flash attention kernel (the reference solution, which the engine's prefill runs) against
// tensor-core's fast.sdpa (which builds the score matrix), and causal against an all-zero mask, at L = S.
//   cd packages/engine && npx tsx bench/flash-attention.ts [--json FILE]
// Interleaved rounds, best of each: the machine is shared, and the two sides must see the same neighbours.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import * as tc from '@tiny-llm/tensor-core';
import { flashAttention } from '@tiny-llm/reference/week2';

const HEADS = 14;
const KV_HEADS = 2;
const DIM = 64;
const ROUNDS = 5;

function seconds(fn: () => tc.Tensor): number {
  const t0 = performance.now();
  fn().dispose();
  return (performance.now() - t0) / 1e3;
}

interface Row {
  length: number;
  flash_causal_s: number;
  flash_zero_mask_s: number;
  sdpa_causal_s: number;
  causal_speedup_over_zero_mask: number;
  speedup_over_sdpa: number;
}

function measure(length: number): Row {
  const q = tc.random.normal([1, HEADS, length, DIM], { seed: 1 });
  const k = tc.random.normal([1, KV_HEADS, length, DIM], { seed: 2 });
  const v = tc.random.normal([1, KV_HEADS, length, DIM], { seed: 3 });
  const zeros = tc.zeros([length, length]);
  const best = { flash: Infinity, zero: Infinity, sdpa: Infinity };
  for (let r = 0; r < ROUNDS; r++) {
    best.flash = Math.min(
      best.flash,
      seconds(() => flashAttention(q, k, v, { mask: 'causal' })),
    );
    best.zero = Math.min(
      best.zero,
      seconds(() => flashAttention(q, k, v, { mask: zeros })),
    );
    best.sdpa = Math.min(
      best.sdpa,
      seconds(() => tc.fast.sdpa(q, k, v, { mask: 'causal' })),
    );
  }
  return {
    length,
    flash_causal_s: best.flash,
    flash_zero_mask_s: best.zero,
    sdpa_causal_s: best.sdpa,
    causal_speedup_over_zero_mask: best.zero / best.flash,
    speedup_over_sdpa: best.sdpa / best.flash,
  };
}

const { values } = parseArgs({ options: { json: { type: 'string' } } });
const rows = [512, 1024, 2048].map(measure);
console.log(
  `flash attention, ${HEADS} query heads on ${KV_HEADS} kv heads of ${DIM}, best of ${ROUNDS} (${tc.native.numThreads()} threads)`,
);
for (const r of rows) {
  console.log(
    `  L = S = ${r.length}: causal ${(r.flash_causal_s * 1e3).toFixed(1)} ms, zero mask ${(r.flash_zero_mask_s * 1e3).toFixed(1)} ms ` +
      `(causal ${r.causal_speedup_over_zero_mask.toFixed(2)}x faster); fast.sdpa ${(r.sdpa_causal_s * 1e3).toFixed(1)} ms ` +
      `(flash ${r.speedup_over_sdpa.toFixed(2)}x faster)`,
  );
}
if (values.json) writeFileSync(values.json, `${JSON.stringify(rows, null, 2)}\n`);

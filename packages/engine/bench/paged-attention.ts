// The engine's fused decode attention (native/attention_decode.cc) on a paged KV cache (chapter 3.1: the pages of
// each row scattered over a pool, read through block tables) against the same kernel on a contiguous cache, at
// Qwen2-0.5B's attention shape (14 query heads on 2 kv heads of 64) or another's, for one and 16 rows.
//   cd packages/engine && npx tsx bench/paged-attention.ts [--heads 14] [--kv-heads 2] [--json FILE]
// (--heads 8 --kv-heads 1, a multi-query shape: one row is a single task, which the kernel cuts into parts.)
// Each call is RoPE, the new key and value written into the cache, and attention over every cached token.
// Interleaved rounds, best of each: the machine is shared, and the two sides must see the same neighbours.
// Calls repeat on one layer's cache, which then stays in the CPU's caches; the last row instead goes over 24
// layers' caches in turn (Qwen2-0.5B's layers, as a decode step reads them), each read cold.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import * as tc from '@tiny-llm/tensor-core';
import { blockTablesTensor } from '@tiny-llm/reference/week3';
import { engineKernels } from '../src/model/native.ts';

const { values } = parseArgs({
  options: { json: { type: 'string' }, heads: { type: 'string', default: '14' }, 'kv-heads': { type: 'string', default: '2' } },
});
const [HEADS, KV_HEADS, DIM, PAGE] = [Number(values.heads), Number(values['kv-heads']), 64, 16];
if (!(Number.isInteger(HEADS) && Number.isInteger(KV_HEADS) && KV_HEADS > 0 && HEADS % KV_HEADS === 0))
  throw new Error(`paged-attention: --heads ${values.heads} must be a multiple of --kv-heads ${values['kv-heads']}`);
const ROUNDS = 9;

interface Row {
  context: number;
  batch: number;
  layers: number;
  dense_us: number;
  paged_us: number;
  paged_over_dense: number;
}

function measure(context: number, batch: number, layers = 1): Row {
  const position = context - 1;
  const rope = tc.fast.ropeTables(DIM, context, 1_000_000);
  const qkv = tc.random.normal([batch, 1, (HEADS + 2 * KV_HEADS) * DIM], { seed: 1 });
  const out = tc.empty([batch, 1, HEADS * DIM]);
  // The pool: every row's pages, in an order shuffled over the pool (as pages come back and go out again).
  const perRow = context / PAGE;
  const numPages = batch * perRow;
  const order = Array.from({ length: numPages }, (_, i) => i).sort((a, b) => ((a * 7919) % numPages) - ((b * 7919) % numPages));
  const tables = blockTablesTensor(Array.from({ length: batch }, (_, b) => order.slice(b * perRow, (b + 1) * perRow)));
  const caches = Array.from({ length: layers }, (_, layer) => ({
    // The dense cache: every row's buffer [Hkv, context, D] side by side.
    keys: tc.random.normal([batch, KV_HEADS, context, DIM], { seed: 2 + 4 * layer }),
    values: tc.random.normal([batch, KV_HEADS, context, DIM], { seed: 3 + 4 * layer }),
    keyPages: tc.random.normal([numPages, KV_HEADS, PAGE, DIM], { seed: 4 + 4 * layer }),
    valuePages: tc.random.normal([numPages, KV_HEADS, PAGE, DIM], { seed: 5 + 4 * layer }),
  }));
  let call = 0;
  const positions = tc.tensor(new Int32Array(batch).fill(position), { dtype: 'int32' });
  const kernels = engineKernels();
  const dense = () => {
    const { keys, values } = caches[call++ % layers];
    kernels.attentionDecode(
      ...[qkv, rope.cos, rope.sin].map((t) => t.native()),
      position,
      keys.native(),
      values.native(),
      out.native(),
      HEADS,
      KV_HEADS,
      0.125,
    );
  };
  const paged = () => {
    const { keyPages, valuePages } = caches[call++ % layers];
    kernels.pagedAttentionDecode(
      ...[qkv, rope.cos, rope.sin, positions, keyPages, valuePages, tables, out].map((t) => t.native()),
      HEADS,
      KV_HEADS,
      0.125,
    );
  };
  // A sample is the mean of the calls that fit in 20 ms.
  const micros = (fn: () => void) => {
    const t0 = performance.now();
    let calls = 0;
    while (performance.now() - t0 < 20) {
      fn();
      calls++;
    }
    return ((performance.now() - t0) * 1e3) / calls;
  };
  micros(dense);
  micros(paged);
  const best = { dense: Infinity, paged: Infinity };
  for (let r = 0; r < ROUNDS; r++) {
    best.dense = Math.min(best.dense, micros(dense));
    best.paged = Math.min(best.paged, micros(paged));
  }
  return { context, batch, layers, dense_us: best.dense, paged_us: best.paged, paged_over_dense: best.paged / best.dense };
}

const rows = [256, 1024, 4096].flatMap((context) => [1, 16].map((batch) => measure(context, batch)));
rows.push(measure(1024, 1, 24));
console.log(
  `decode attention, ${HEADS} query heads on ${KV_HEADS} kv heads of ${DIM}, pages of ${PAGE}, best of ${ROUNDS} (${tc.native.numThreads()} threads)`,
);
for (const r of rows) {
  console.log(
    `  context ${String(r.context).padStart(4)}, ${String(r.batch).padStart(2)} rows${r.layers > 1 ? `, ${r.layers} layers in turn` : ''}: contiguous ${r.dense_us.toFixed(1)} us, ` +
      `paged ${r.paged_us.toFixed(1)} us (${r.paged_over_dense.toFixed(2)}x)`,
  );
}
if (values.json) writeFileSync(values.json, `${JSON.stringify(rows, null, 2)}\n`);

// Speculative decoding (chapter 3.4) on the demo pair: tiny-qwen2-py-draft drafting for tiny-qwen2-py, greedy,
// against the target alone, through the engine's generation loop (the path of `tiny-llm generate
// --draft-model`). For each k, each golden prompt generates the same tokens both ways (checked: greedy output
// is the target's own). The two alternate prompt by prompt, and each prompt's decode time is the fastest of
// --reps runs, so that a neighbour's burst on a shared machine hits neither; the figure is the decode rate over
// all prompts, with the share of the drafted tokens the target accepted. Then the costs that explain it: a
// decode step of each model, and the target's pass over k + 1 tokens (the fastest of many).
//
//   npx tsx packages/engine/bench/speculative.ts [--tokens 128] [--reps 5] [--k 1,2,3,4,6] [--json FILE]
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as tc from '@tiny-llm/tensor-core';
import { demoGolden } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { generate, generateSpeculative } from '../src/generate.ts';
import { loadModel } from '../src/registry.ts';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const { values } = parseArgs({
  options: {
    tokens: { type: 'string', default: '128' },
    reps: { type: 'string', default: '5' },
    k: { type: 'string', default: '1,2,3,4,6' },
    json: { type: 'string' },
  },
});
const tokens = Number(values.tokens);
const reps = Number(values.reps);
const ks = values.k.split(',').map(Number);

const target = await loadModel(`${ROOT}models/tiny-qwen2-py`);
const draft = await loadModel(`${ROOT}models/tiny-qwen2-py-draft`);
const tokenizer = loadTokenizer(`${ROOT}models/tiny-qwen2-py`);
const prompts = demoGolden('tiny-qwen2-py').cases.map((c) => c.ids);
const options = { maxTokens: tokens, ignoreEos: true, temperature: 0 };

const alone = async (ids: number[]) => {
  const session = target.newSession();
  const r = await generate(target, session, tokenizer, ids, options);
  session.dispose();
  return r;
};
const speculative = (k: number) => async (ids: number[]) => {
  const it = generateSpeculative(target, draft, tokenizer, ids, { ...options, numDraft: k });
  for (;;) {
    const step = await it.next();
    if (step.done) return step.value;
  }
};

/** The fastest of `runs` calls of fn, in milliseconds. */
function fastest(runs: number, fn: () => void): number {
  let best = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, performance.now() - t0);
  }
  return best;
}

interface Row {
  k: number;
  target_alone_tok_s: number;
  speculative_tok_s: number;
  speed_up: number;
  acceptance: number;
  tokens_per_target_pass: number;
}
const rows: Row[] = [];
console.log(`speculative decoding, greedy, ${prompts.length} golden prompts x ${tokens} tokens, each prompt the fastest of ${reps}`);
for (const k of ks) {
  const best = { alone: prompts.map(() => Infinity), spec: prompts.map(() => Infinity) };
  let accepted = 0;
  let drafted = 0;
  let rounds = 0;
  for (let rep = 0; rep < reps; rep++) {
    for (const [i, ids] of prompts.entries()) {
      const a = await alone(ids);
      const s = await speculative(k)(ids);
      if (s.tokens.join() !== a.tokens.join()) throw new Error(`k = ${k}, prompt ${i}: speculative output differs from the target's own`);
      best.alone[i] = Math.min(best.alone[i], a.stats.decodeSeconds);
      best.spec[i] = Math.min(best.spec[i], s.stats.decodeSeconds);
      if (rep === 0) {
        accepted += s.stats.speculative!.accepted;
        drafted += s.stats.speculative!.drafted;
        rounds += s.stats.speculative!.rounds;
      }
    }
  }
  const decoded = prompts.length * (tokens - 1);
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const row: Row = {
    k,
    target_alone_tok_s: decoded / sum(best.alone),
    speculative_tok_s: decoded / sum(best.spec),
    speed_up: sum(best.alone) / sum(best.spec),
    acceptance: accepted / drafted,
    tokens_per_target_pass: (accepted + rounds) / rounds,
  };
  rows.push(row);
  console.log(
    `  k = ${k}: target alone ${row.target_alone_tok_s.toFixed(1)} tok/s, speculative ${row.speculative_tok_s.toFixed(1)} tok/s: ` +
      `${row.speed_up.toFixed(2)}x; ${(100 * row.acceptance).toFixed(1)}% of drafted tokens accepted, ${row.tokens_per_target_pass.toFixed(2)} tokens per target pass`,
  );
}

// What a round costs: the target's pass over k + 1 tokens against its decode step, after a 100-token prompt.
const costs: Record<string, number> = {};
for (const [name, m] of [
  ['target', target.decoding!],
  ['draft', draft.decoding!],
] as const) {
  const cache = m.newCache();
  const ids = (n: number) => tc.tensor([Array.from({ length: n }, (_, i) => 10 + i)], { dtype: 'int32' });
  const pass = (n: number) => () => {
    tc.tidy(() => {
      m.forward(ids(n), cache[0].offset, cache).toArray();
    });
    for (const c of cache) c.rewind(n);
  };
  pass(100)();
  tc.tidy(() => {
    m.forward(ids(100), 0, cache);
  });
  for (const n of name === 'target' ? [1, 2, 3, 5, 7] : [1]) costs[`${name}_pass_${n}_ms`] = fastest(50, pass(n));
  for (const c of cache) c.dispose();
}
console.log(
  `  costs (fastest of 50): a decode step of the target ${costs.target_pass_1_ms.toFixed(2)} ms, of the draft ${costs.draft_pass_1_ms.toFixed(2)} ms; ` +
    `the target's pass over 2, 3, 5, 7 tokens: ${[2, 3, 5, 7].map((n) => (costs[`target_pass_${n}_ms`] / costs.target_pass_1_ms).toFixed(2)).join(', ')} decode steps`,
);
if (values.json) writeFileSync(values.json, `${JSON.stringify({ rows, costs }, null, 2)}\n`);

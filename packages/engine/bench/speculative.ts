// Speculative decoding (chapter 3.4) on the demo pair: tiny-qwen2-py-draft drafting for tiny-qwen2-py, greedy,
// against the target alone, through the engine's generation loop (the path of `tiny-llm generate
// --draft-model`). For each k, each golden prompt generates the same tokens both ways (checked: greedy output
// is the target's own); the figure is the decode rate over all prompts, best of --reps, with the share of the
// drafted tokens the target accepted. The rounds alternate between the two, so that a neighbour's burst on a
// shared machine hits both alike.
//
//   npx tsx packages/engine/bench/speculative.ts [--tokens 128] [--reps 3] [--k 2,3,4,6] [--json FILE]
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { demoGolden } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { generate, generateSpeculative, type GenerateResult } from '../src/generate.ts';
import { loadModel } from '../src/registry.ts';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const { values } = parseArgs({ options: { tokens: { type: 'string', default: '128' }, reps: { type: 'string', default: '3' }, k: { type: 'string', default: '2,3,4,6' }, json: { type: 'string' } } });
const tokens = Number(values.tokens);
const reps = Number(values.reps);
const ks = values.k.split(',').map(Number);

const target = await loadModel(`${ROOT}models/tiny-qwen2-py`);
const draft = await loadModel(`${ROOT}models/tiny-qwen2-py-draft`);
const tokenizer = loadTokenizer(`${ROOT}models/tiny-qwen2-py`);
const prompts = demoGolden('tiny-qwen2-py').cases.map((c) => c.ids);
const options = { maxTokens: tokens, ignoreEos: true, temperature: 0 };

/** Runs every prompt once; the decode rate over all of them (tokens after the first of each / decode time). */
function pass(run: (ids: number[]) => GenerateResult): { rate: number; results: GenerateResult[] } {
  const results = prompts.map(run);
  const decoded = results.reduce((n, r) => n + r.stats.generatedTokens - 1, 0);
  const seconds = results.reduce((s, r) => s + r.stats.decodeSeconds, 0);
  return { rate: decoded / seconds, results };
}

const alone = (ids: number[]) => {
  const session = target.newSession();
  const r = generate(target, session, tokenizer, ids, options);
  session.dispose();
  return r;
};
const speculative = (k: number) => (ids: number[]) => {
  const it = generateSpeculative(target, draft, tokenizer, ids, { ...options, numDraft: k });
  for (;;) {
    const step = it.next();
    if (step.done) return step.value;
  }
};

const rows: { k: number; target_alone_tok_s: number; speculative_tok_s: number; speed_up: number; acceptance: number; tokens_per_target_pass: number }[] = [];
console.log(`speculative decoding, greedy, ${prompts.length} golden prompts x ${tokens} tokens, best of ${reps}`);
for (const k of ks) {
  let best = { alone: 0, spec: 0 };
  let accepted = 0;
  let drafted = 0;
  let rounds = 0;
  for (let rep = 0; rep < reps; rep++) {
    const a = pass(alone);
    const s = pass(speculative(k));
    s.results.forEach((r, i) => {
      if (r.tokens.join() !== a.results[i].tokens.join()) throw new Error(`k = ${k}, prompt ${i}: speculative output differs from the target's own`);
    });
    best = { alone: Math.max(best.alone, a.rate), spec: Math.max(best.spec, s.rate) };
    if (rep === 0) {
      for (const r of s.results) {
        accepted += r.stats.speculative!.accepted;
        drafted += r.stats.speculative!.drafted;
        rounds += r.stats.speculative!.rounds;
      }
    }
  }
  const row = {
    k,
    target_alone_tok_s: best.alone,
    speculative_tok_s: best.spec,
    speed_up: best.spec / best.alone,
    acceptance: accepted / drafted,
    tokens_per_target_pass: (accepted + rounds) / rounds,
  };
  rows.push(row);
  console.log(
    `  k = ${k}: target alone ${row.target_alone_tok_s.toFixed(1)} tok/s, speculative ${row.speculative_tok_s.toFixed(1)} tok/s: ` +
      `${row.speed_up.toFixed(2)}x; ${(100 * row.acceptance).toFixed(1)}% of drafted tokens accepted, ${row.tokens_per_target_pass.toFixed(2)} tokens per target pass`,
  );
}
if (values.json) writeFileSync(values.json, `${JSON.stringify(rows, null, 2)}\n`);

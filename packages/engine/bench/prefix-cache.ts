// Prefix caching (chapter 3.2) where it pays: the second turn of a chat with tools. The demo model answers a
// first question (its system prompt and tool definitions are most of the prompt), then gets a second one; the
// second request's prompt is the whole conversation so far. Timed: from submitting the second request to its
// first token, through the engine's scheduler (what `tiny-llm serve` runs), with and without prefix caching.
//   cd packages/engine && npx tsx bench/prefix-cache.ts [--json FILE]
// Interleaved rounds, best of each: the machine is shared, and the two sides must see the same neighbours.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer, type ChatMessage } from '@tiny-llm/tokenizer';
import { PagedScheduler } from '@tiny-llm/reference/week3';
import { EngineBatchModel } from '../src/batch-model.ts';
import { readToolsFile, renderChatPrompt } from '../src/chat.ts';
import { Qwen2Model } from '../src/model/qwen2.ts';

const DIR = `${MODELS_DIR}tiny-qwen2-py`;
const ROUNDS = 5;
const tokenizer = loadTokenizer(DIR);
const tools = readToolsFile(`${DIR}/tools.json`);
const model = Qwen2Model.load(DIR);

/** Runs one request to its end; returns its tokens and the milliseconds from its submission to its first token. */
async function run(scheduler: PagedScheduler, promptIds: number[]): Promise<{ tokens: number[]; firstTokenMs: number }> {
  const t0 = performance.now();
  scheduler.submit({ promptIds, maxTokens: 64, stopIds: tokenizer.eosTokenIds });
  const tokens: number[] = [];
  let firstTokenMs = NaN;
  while (!scheduler.idle) {
    for (const o of await scheduler.step()) {
      if (o.token === null) continue;
      if (tokens.length === 0) firstTokenMs = performance.now() - t0;
      tokens.push(o.token);
    }
  }
  return { tokens, firstTokenMs };
}

/** A conversation of two turns on a fresh pool; the second turn's time to first token and the lengths. */
async function secondTurn(prefixCaching: boolean) {
  const scheduler = new PagedScheduler(new EngineBatchModel(model, { numPages: 256, prefixCaching }), { maxBatch: 4 });
  const messages: ChatMessage[] = [{ role: 'user', content: 'What is 37 times 12?' }];
  const first = tokenizer.encode(renderChatPrompt(tokenizer, messages, tools));
  const reply = await run(scheduler, first);
  messages.push({ role: 'assistant', content: tokenizer.decode(reply.tokens) }, { role: 'user', content: 'And what is 12 times 12?' });
  const second = tokenizer.encode(renderChatPrompt(tokenizer, messages, tools));
  const { firstTokenMs } = await run(scheduler, second);
  scheduler.model.pool.dispose();
  return { firstTokenMs, firstPrompt: first.length, secondPrompt: second.length };
}

const { values } = parseArgs({ options: { json: { type: 'string' } } });
await secondTurn(true); // warm-up: the weights paged in, the kernels' scratch allocated
const best = { cached: Infinity, uncached: Infinity };
let lengths = { firstPrompt: 0, secondPrompt: 0 };
for (let r = 0; r < ROUNDS; r++) {
  const cached = await secondTurn(true);
  best.cached = Math.min(best.cached, cached.firstTokenMs);
  best.uncached = Math.min(best.uncached, (await secondTurn(false)).firstTokenMs);
  lengths = cached;
}
const report = {
  first_prompt_tokens: lengths.firstPrompt,
  second_prompt_tokens: lengths.secondPrompt,
  second_turn_first_token_ms_cached: best.cached,
  second_turn_first_token_ms_uncached: best.uncached,
  speedup: best.uncached / best.cached,
};
console.log(
  `the second turn of a chat with tools (${report.second_prompt_tokens} prompt tokens, ${report.first_prompt_tokens} of the first turn's), best of ${ROUNDS}: ` +
    `first token in ${best.cached.toFixed(1)} ms with prefix caching, ${best.uncached.toFixed(1)} ms without (${report.speedup.toFixed(1)}x sooner)`,
);
if (values.json) writeFileSync(values.json, `${JSON.stringify(report, null, 2)}\n`);

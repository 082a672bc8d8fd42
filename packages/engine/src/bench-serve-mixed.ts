// `tiny-llm bench-serve --disaggregated`: the colocated engine against prefill and decode in separate workers
// (chapter 3.5), under the load that separates them: short chats streaming while long prompts arrive and
// prefill. In one worker each long prompt's prefill chunks run between the chats' decode steps and stretch
// their time per output token; in separate workers the decode steps go on beside it. Each engine runs in a
// server of its own, started for the run, with the same flags; the chats' TTFT and TPOT p50 and p99 are
// printed side by side.
import { readFileSync, writeFileSync } from 'node:fs';
import type { TinyTokenizer } from '@tiny-llm/tokenizer';
import { percentile, streamOne } from './bench-serve.ts';
import { spawnServer } from './server/spawn.ts';

/** The long prompts' length, in tokens, and how many clients send them, one after another, during the chats. */
export const LONG_PROMPT_TOKENS = 2000;
export const LONG_CLIENTS = 2;
/** Tokens generated per long prompt: they are there to prefill. */
const LONG_MAX_TOKENS = 8;

interface Latencies {
  p50: number;
  p99: number;
}

export interface MixedLoadResult {
  chats: number;
  longPrompts: number;
  seconds: number;
  /** The chats' time to first token and time per output token after it, in seconds. */
  ttft: Latencies;
  tpot: Latencies;
  /** The long prompts' time to first token: their prefill, and the wait for it. */
  longTtft: Latencies;
}

const latencies = (values: number[]): Latencies => {
  const sorted = [...values].sort((a, b) => a - b);
  return { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99) };
};

/**
 * A prompt of LONG_PROMPT_TOKENS tokens of `text` repeated, made different from every other by its first words
 * (with prefix caching, a repeated long prompt would not be prefilled again).
 */
function longPrompt(tokenizer: TinyTokenizer, text: string, n: number): string {
  const head = `Request ${n}.\n`;
  const ids = tokenizer.encode(head + text.repeat(Math.ceil((2 * LONG_PROMPT_TOKENS) / Math.max(1, tokenizer.encode(text).length))));
  return tokenizer.decode(ids.slice(0, LONG_PROMPT_TOKENS));
}

/** `clients` clients stream `requests` chats of `maxTokens`; meanwhile LONG_CLIENTS clients send long prompts. */
async function runMixedLoad(
  url: string,
  o: { clients: number; requests: number; maxTokens: number; chats: string[]; longText: string; tokenizer: TinyTokenizer },
): Promise<MixedLoadResult> {
  const ttft: number[] = [];
  const tpot: number[] = [];
  const longTtft: number[] = [];
  let next = 0;
  let longSent = 0;
  let chatting = true;
  const t0 = performance.now();
  const long = Array.from({ length: LONG_CLIENTS }, async () => {
    while (chatting) {
      const r = await streamOne(url, longPrompt(o.tokenizer, o.longText, longSent++), LONG_MAX_TOKENS);
      longTtft.push(r.ttft);
    }
  });
  await Promise.all(
    Array.from({ length: o.clients }, async () => {
      while (next < o.requests) {
        const r = await streamOne(url, o.chats[next++ % o.chats.length], o.maxTokens);
        ttft.push(r.ttft);
        if (r.tokens > 1) tpot.push(r.tpot);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1e3;
  chatting = false;
  await Promise.all(long);
  return { chats: o.requests, longPrompts: longSent, seconds, ttft: latencies(ttft), tpot: latencies(tpot), longTtft: latencies(longTtft) };
}

export interface BenchDisaggregatedOptions {
  /** The flags both servers start with (each engine adds its own). */
  serveArgs: string[];
  clients: number;
  requests: number;
  maxTokens: number;
  json?: string;
  /** The demo model's golden.json: its chat prompts are the chats, its text prompts make the long prompts. */
  promptsFrom: string;
  tokenizer: TinyTokenizer;
  log: (line: string) => void;
}

const ms = (s: number) => `${(s * 1e3).toFixed(0)} ms`.padStart(8);

export async function runBenchDisaggregated(o: BenchDisaggregatedOptions): Promise<Record<'colocated' | 'disaggregated', MixedLoadResult>> {
  const cases = (JSON.parse(readFileSync(o.promptsFrom, 'utf8')) as { cases: { kind: string; prompt: string }[] }).cases;
  const chats = cases.filter((c) => c.kind === 'chat').map((c) => c.prompt);
  const longText = cases
    .filter((c) => c.kind !== 'chat')
    .map((c) => c.prompt)
    .join('\n\n');
  o.log(
    `bench-serve --disaggregated: ${o.requests} chats of up to ${o.maxTokens} tokens from ${o.clients} clients, while ${LONG_CLIENTS} clients send prompts of ` +
      `${LONG_PROMPT_TOKENS} tokens (${LONG_MAX_TOKENS} tokens each), one after another`,
  );
  const results = {} as Record<'colocated' | 'disaggregated', MixedLoadResult>;
  for (const engine of ['colocated', 'disaggregated'] as const) {
    const server = await spawnServer([...o.serveArgs, ...(engine === 'disaggregated' ? ['--disaggregated'] : [])]);
    try {
      await runMixedLoad(server.url, { ...o, requests: o.clients, maxTokens: 8, chats, longText }); // warm-up
      results[engine] = await runMixedLoad(server.url, { ...o, chats, longText });
    } finally {
      await server.stop();
    }
  }
  o.log(
    `  ${'engine'.padEnd(14)} ${'TTFT p50'.padStart(8)} ${'TTFT p99'.padStart(8)} ${'TPOT p50'.padStart(8)} ${'TPOT p99'.padStart(8)}   long prompts: TTFT p50`,
  );
  for (const [engine, r] of Object.entries(results)) {
    o.log(
      `  ${engine.padEnd(14)} ${ms(r.ttft.p50)} ${ms(r.ttft.p99)} ${ms(r.tpot.p50)} ${ms(r.tpot.p99)}   ${r.longPrompts} in ${r.seconds.toFixed(1)} s: ${ms(r.longTtft.p50).trim()}`,
    );
  }
  const ratio = results.colocated.tpot.p99 / results.disaggregated.tpot.p99;
  o.log(
    `  the chats' TPOT p99: the separated engine's is ${ratio >= 1 ? `${ratio.toFixed(2)}x lower` : `${(1 / ratio).toFixed(2)}x higher`} than the colocated engine's`,
  );
  if (o.json) writeFileSync(o.json, `${JSON.stringify(results, null, 2)}\n`);
  return results;
}

// `tiny-llm bench-serve`: the server under load, as vLLM's benchmark_serving measures one. N clients each send
// streaming completions one after another until the requests run out; for each request: the time to its first
// token (TTFT) and the time per output token after it (TPOT). Then the aggregate throughput, against one client
// alone measured the same way, and /health's latency sampled during the load (the model runs in a worker, so
// the HTTP thread should answer at once whatever the load).
import { readFileSync, writeFileSync } from 'node:fs';
import { spawnServer } from './server/spawn.ts';

export interface LoadResult {
  clients: number;
  requests: number;
  seconds: number;
  generatedTokens: number;
  tokensPerS: number;
  ttft: { p50: number; p99: number };
  tpot: { p50: number; p99: number };
  health: { p50: number; p99: number; max: number };
}

export const percentile = (sorted: number[], p: number) =>
  sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0;

/** One streaming completion; its TTFT, TPOT and token count. */
export async function streamOne(url: string, prompt: string, maxTokens: number): Promise<{ ttft: number; tpot: number; tokens: number }> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok) throw new Error(`bench-serve: the server answered ${res.status}: ${await res.text()}`);
  const decoder = new TextDecoder();
  let buffer = '';
  let first = 0;
  let tokens = 0;
  for await (const chunk of res.body!) {
    buffer += decoder.decode(chunk, { stream: true });
    const events = buffer.split('\n\n');
    buffer = events.pop()!;
    for (const event of events) {
      if (!event.startsWith('data: {')) continue;
      const data = JSON.parse(event.slice(6));
      if (!first && data.choices?.[0]?.text) first = performance.now();
      if (data.usage) tokens = data.usage.completion_tokens;
    }
  }
  const end = performance.now();
  return { ttft: (first - t0) / 1e3, tpot: tokens > 1 ? (end - first) / 1e3 / (tokens - 1) : 0, tokens };
}

/** `clients` clients share `requests` requests over the golden prompts; /health is polled meanwhile. */
export async function runLoad(url: string, clients: number, requests: number, maxTokens: number, prompts: string[]): Promise<LoadResult> {
  let next = 0;
  const ttfts: number[] = [];
  const tpots: number[] = [];
  let generated = 0;
  const health: number[] = [];
  let loading = true;
  const poll = (async () => {
    while (loading) {
      const t0 = performance.now();
      await (await fetch(`${url}/health`)).text();
      health.push((performance.now() - t0) / 1e3);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  })();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next < requests) {
        const r = await streamOne(url, prompts[next++ % prompts.length], maxTokens);
        ttfts.push(r.ttft);
        if (r.tokens > 1) tpots.push(r.tpot);
        generated += r.tokens;
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1e3;
  loading = false;
  await poll;
  const sort = (a: number[]) => [...a].sort((x, y) => x - y);
  const [t, p, h] = [sort(ttfts), sort(tpots), sort(health)];
  return {
    clients,
    requests,
    seconds,
    generatedTokens: generated,
    tokensPerS: generated / seconds,
    ttft: { p50: percentile(t, 0.5), p99: percentile(t, 0.99) },
    tpot: { p50: percentile(p, 0.5), p99: percentile(p, 0.99) },
    health: { p50: percentile(h, 0.5), p99: percentile(h, 0.99), max: h.at(-1) ?? 0 },
  };
}

export interface BenchServeOptions {
  /** A running server; default: start one (with serveArgs) for the run. */
  url?: string;
  serveArgs: string[];
  clients: number;
  requests: number;
  maxTokens: number;
  json?: string;
  /** A golden.json whose prompts the clients send (the demo model's: code and chat, of different lengths). */
  promptsFrom: string;
  log: (line: string) => void;
}

const ms = (s: number) => `${(s * 1e3).toFixed(0)} ms`;

export async function runBenchServe(o: BenchServeOptions): Promise<{ single: LoadResult; loaded: LoadResult }> {
  const server = o.url ? null : await spawnServer(o.serveArgs);
  const url = o.url ?? server!.url;
  try {
    const prompts = (JSON.parse(readFileSync(o.promptsFrom, 'utf8')) as { cases: { prompt: string }[] }).cases.map((c) => c.prompt);
    o.log(`bench-serve: ${url}, ${o.requests} requests of up to ${o.maxTokens} tokens: 1 client, then ${o.clients}`);
    await runLoad(url, 1, 2, 8, prompts); // warm-up
    const single = await runLoad(url, 1, Math.max(4, Math.ceil(o.requests / o.clients)), o.maxTokens, prompts);
    const loaded = await runLoad(url, o.clients, o.requests, o.maxTokens, prompts);
    for (const r of [single, loaded]) {
      o.log(
        `  ${String(r.clients).padStart(3)} client${r.clients > 1 ? 's' : ' '}: ${r.tokensPerS.toFixed(1)} tok/s (${r.generatedTokens} tokens in ${r.seconds.toFixed(2)} s); ` +
          `TTFT p50 ${ms(r.ttft.p50)}, p99 ${ms(r.ttft.p99)}; TPOT p50 ${ms(r.tpot.p50)}, p99 ${ms(r.tpot.p99)}; /health p99 ${ms(r.health.p99)} (max ${ms(r.health.max)})`,
      );
    }
    o.log(`  aggregate throughput at ${o.clients} clients = ${(loaded.tokensPerS / single.tokensPerS).toFixed(2)}x one client's`);
    if (o.json) writeFileSync(o.json, `${JSON.stringify({ url, single, loaded }, null, 2)}\n`);
    return { single, loaded };
  } finally {
    await server?.stop();
  }
}

// `tiny-llm serve --disaggregated` (chapter 3.5): prefill and decode in separate workers, tested as users meet
// it, a real server process. The demo model's golden texts (models/tiny-qwen2-py/golden.json, made by
// transformers) must come back exactly, all at once; a seeded sample must equal the colocated engine's; a
// client that leaves mid-stream and requests that finish leave no page held in either pool; and the flags
// --disaggregated does not combine with are refused.
import { demoGolden, MODELS_DIR, type DemoGoldenCase } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { spawnServer, type ServerProcess } from '../src/server/spawn.ts';
import { cli } from './support/cli.ts';

vi.setConfig({ testTimeout: 300_000, hookTimeout: 120_000 });

const MODEL = 'tiny-qwen2-py';
const golden = demoGolden(MODEL);
const tokenizer = loadTokenizer(`${MODELS_DIR}${MODEL}`);

/** The golden continuation of a case up to (not including) its first end-of-sequence token, as text. */
function expectedText(c: DemoGoldenCase): string {
  const eos = new Set(tokenizer.eosTokenIds);
  const end = c.greedy.findIndex((t) => eos.has(t));
  return tokenizer.decode(c.greedy.slice(0, end < 0 ? c.greedy.length : end));
}

const complete = async (url: string, body: Record<string, unknown>) => {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(res.status, await res.clone().text()).toBe(200);
  return (await res.json()) as { choices: { text: string; finish_reason: string }[]; usage: { prompt_tokens: number } };
};

/** A gauge of /metrics. */
async function gauge(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return Number(line?.split(' ')[1]);
}

let server: ServerProcess;
beforeAll(async () => {
  server = await spawnServer(['--disaggregated', '--max-batch', '4', '--prefill-chunk', '64']);
});
afterAll(() => server?.stop());

describe('serve --disaggregated', () => {
  it('every golden prompt at once: exactly the golden text, each prompt counted whole', async () => {
    const results = await Promise.all(
      golden.cases.map((c) => complete(server.url, { prompt: c.prompt, max_tokens: golden.max_new_tokens, temperature: 0 })),
    );
    results.forEach((r, i) => {
      const c = golden.cases[i];
      expect(r.choices[0].text, `case ${i}, a ${c.kind} prompt of ${c.ids.length} tokens`).toBe(expectedText(c));
      expect(r.usage.prompt_tokens, `case ${i}: its prompt tokens`).toBe(c.ids.length);
    });
  });

  it('a seeded sample: the same text as the colocated engine (the decode worker goes on from the draw after the first token)', async () => {
    const colocated = await spawnServer(['--max-batch', '4']);
    try {
      const body = { prompt: golden.cases[0].prompt, max_tokens: 32, temperature: 0.9, seed: 1234 };
      const [alone, separated] = await Promise.all([complete(colocated.url, body), complete(server.url, body)]);
      expect(separated.choices[0].text).toBe(alone.choices[0].text);
    } finally {
      await colocated.stop();
    }
  });

  it('a client that leaves mid-stream, and requests that finish: no request running, no page held in either pool', async () => {
    const longest = golden.cases.reduce((a, b) => (b.ids.length > a.ids.length ? b : a));
    const controller = new AbortController();
    const res = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: longest.prompt, max_tokens: 200, temperature: 0, stream: true }),
      signal: controller.signal,
    });
    const reader = res.body!.getReader();
    await reader.read(); // the first chunk: the request has left the prefill worker or is about to
    await reader.read();
    controller.abort();
    await complete(server.url, { prompt: golden.cases[1].prompt, max_tokens: 8, temperature: 0 });
    let held = [NaN, NaN];
    for (let tries = 0; tries < 50; tries++) {
      held = [await gauge(server.url, 'tiny_llm_requests_running'), await gauge(server.url, 'tiny_llm_kv_cache_pages_used')];
      if (held[0] === 0 && held[1] === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(held, 'requests running and pages held in the two pools').toEqual([0, 0]);
  });

  it('--disaggregated with flags it does not combine with: a usage error naming them', async () => {
    const cases: [string[], RegExp][] = [
      [
        ['serve', '--disaggregated', '--week', '2'],
        /serve: --disaggregated runs the engine .* does not combine with --week or --solution learner/,
      ],
      [['serve', '--disaggregated', '--solution', 'learner'], /serve: --disaggregated runs the engine/],
      [
        ['bench-serve', '--disaggregated', '--url', 'http://127.0.0.1:1'],
        /bench-serve: --disaggregated starts the two servers it compares; it does not combine with --url/,
      ],
    ];
    const results = await Promise.all(cases.map(([args]) => cli(args)));
    cases.forEach(([args, message], i) => {
      expect(results[i].code, `${args.join(' ')}: ${results[i].stderr}`).toBe(2);
      expect(results[i].stderr).toMatch(message);
    });
  });
});

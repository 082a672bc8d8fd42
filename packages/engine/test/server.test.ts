// The OpenAI-compatible server (tiny-llm serve), tested as users meet it: a real server process on a real socket,
// the official `openai` client and raw HTTP. The golden texts of the demo model (models/tiny-qwen2-py/golden.json,
// made by transformers) must come back exactly, alone and under load; bad requests get OpenAI-shaped 4xx
// errors, and the server stays alive and correct after thousands of them.
import { demoGolden, MODELS_DIR, type DemoGoldenCase } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnServer, type ServerProcess } from '../src/server/spawn.ts';

const MODEL = 'tiny-qwen2-py';
const golden = demoGolden(MODEL);
const tokenizer = loadTokenizer(`${MODELS_DIR}${MODEL}`);
const TOOLS = JSON.parse(await import('node:fs').then((fs) => fs.readFileSync(`${MODELS_DIR}${MODEL}/tools.json`, 'utf8')));

/** The golden continuation of a case up to (not including) its first end-of-sequence token, as text. */
function expectedText(c: DemoGoldenCase, maxTokens = golden.max_new_tokens): string {
  const eos = new Set(tokenizer.eosTokenIds);
  const end = c.greedy.findIndex((t) => eos.has(t));
  return tokenizer.decode(c.greedy.slice(0, Math.min(end < 0 ? c.greedy.length : end, maxTokens)));
}

const post = (url: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

/** The counter or gauge `name` in a Prometheus text exposition (summed over its label sets). */
function metric(text: string, name: string, labels = ''): number {
  return text
    .split('\n')
    .filter((line) => line.startsWith(`${name}${labels ? `{${labels}` : ''}`) && !line.startsWith('#'))
    .reduce((sum, line) => sum + Number(line.split(' ').at(-1)), 0);
}

let server: ServerProcess;
let client: OpenAI;
beforeAll(async () => {
  server = await spawnServer();
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
});
afterAll(() => server?.stop());

/** A golden chat case's messages, as the client sends them. */
const chatMessages = (c: DemoGoldenCase) =>
  c.messages!.map((m) => ({ role: m.role, content: m.content }) as OpenAI.ChatCompletionMessageParam);

describe('serve: the openai client', () => {
  const chatCase = golden.cases.find((c) => c.kind === 'chat' && c.messages?.at(-1)?.content === 'Hello!')!;
  const codeCase = golden.cases.find((c) => c.kind === 'text')!;

  it('chat, not streamed: the golden reply, finish_reason "stop", usage counts', async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: chatMessages(chatCase),
      tools: chatCase.tools ? TOOLS : undefined,
      temperature: 0,
    });
    expect(r.choices[0].message.content).toBe(expectedText(chatCase));
    expect(r.choices[0].finish_reason).toBe('stop');
    expect(r.usage?.prompt_tokens, 'the prompt tokens of the rendered chat').toBe(chatCase.ids.length);
    expect(r.usage?.completion_tokens).toBe(tokenizer.encode(expectedText(chatCase)).length);
  });

  it('chat, streamed: deltas that join to the golden reply, then the usage chunk', async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: chatMessages(chatCase),
      tools: chatCase.tools ? TOOLS : undefined,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      usage = chunk.usage ?? usage;
    }
    expect(text).toBe(expectedText(chatCase));
    expect(finish).toBe('stop');
    expect(usage?.total_tokens).toBe(chatCase.ids.length + tokenizer.encode(text).length);
  });

  it('completions, streamed and not: the golden text, max_tokens ends it with "length"', async () => {
    const whole = await client.completions.create({ model: MODEL, prompt: codeCase.prompt, temperature: 0, max_tokens: 16 });
    expect(whole.choices[0].text).toBe(expectedText(codeCase, 16));
    expect(whole.choices[0].finish_reason).toBe('length');
    let text = '';
    for await (const chunk of await client.completions.create({
      model: MODEL,
      prompt: codeCase.prompt,
      temperature: 0,
      max_tokens: 16,
      stream: true,
    })) {
      text += chunk.choices[0]?.text ?? '';
    }
    expect(text).toBe(expectedText(codeCase, 16));
  });

  it('tools: "What is 37 times 12?" comes back as a calculator call whose arguments parse as JSON, streamed too', async () => {
    const messages = [{ role: 'user' as const, content: 'What is 37 times 12?' }];
    const r = await client.chat.completions.create({ model: MODEL, messages, tools: TOOLS, temperature: 0 });
    const call = r.choices[0].message.tool_calls?.[0] as OpenAI.ChatCompletionMessageFunctionToolCall | undefined;
    expect(r.choices[0].finish_reason).toBe('tool_calls');
    expect(call?.function.name).toBe('calculator');
    expect(JSON.parse(call!.function.arguments)).toEqual({ expression: '37 * 12' });
    expect(call?.id).toMatch(/^call_/);
    const deltas: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
    let finish: string | null = null;
    for await (const chunk of await client.chat.completions.create({
      model: MODEL,
      messages,
      tools: TOOLS,
      temperature: 0,
      stream: true,
    })) {
      deltas.push(...(chunk.choices[0]?.delta.tool_calls ?? []));
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(deltas.map((d) => [d.index, d.function?.name, JSON.parse(d.function?.arguments ?? 'null')])).toEqual([
      [0, 'calculator', { expression: '37 * 12' }],
    ]);
    expect(finish).toBe('tool_calls');
  });

  it("a tool's answer goes back through the chat template, and tool_choice 'none' offers no tools", async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      temperature: 0,
      tools: TOOLS,
      messages: [
        { role: 'user', content: 'What is 37 times 12?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'calculator', arguments: '{"expression": "37 * 12"}' } }],
        },
        { role: 'tool', tool_call_id: 'call_1', content: '444' },
      ],
      max_tokens: 24,
    });
    expect(r.choices[0].message.content, 'the answer after the tool result').toMatch(/444/);
    const none = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'What is 37 times 12?' }],
      tools: TOOLS,
      tool_choice: 'none',
      temperature: 0,
      max_tokens: 24,
    });
    expect(none.choices[0].message.tool_calls).toBeUndefined();
    expect(none.choices[0].finish_reason).not.toBe('tool_calls');
  });

  it("a bad request surfaces as the client's BadRequestError, with the parameter named", async () => {
    const bad = client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], n: 2 } as never);
    await expect(bad).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    await expect(bad).rejects.toMatchObject({ status: 400, param: 'n' });
  });

  it('same seed, same tokens; temperature 0 is greedy', async () => {
    const ask = (seed: number) =>
      client.completions.create({ model: MODEL, prompt: codeCase.prompt, temperature: 1, top_p: 0.95, seed, max_tokens: 24 });
    const [a, b, c] = await Promise.all([ask(7), ask(7), ask(8)]);
    expect(a.choices[0].text).toBe(b.choices[0].text);
    expect(c.choices[0].text).not.toBe(a.choices[0].text);
  });
});

describe('serve: the golden texts', () => {
  it('every golden prompt through /v1/completions at temperature 0, all at once: each its golden text to the first end-of-sequence token', async () => {
    const results = await Promise.all(
      golden.cases.map((c) =>
        client.completions.create({ model: MODEL, prompt: c.prompt, temperature: 0, max_tokens: golden.max_new_tokens }),
      ),
    );
    results.forEach((r, i) => expect(r.choices[0].text, `case ${i} (${golden.cases[i].kind})`).toBe(expectedText(golden.cases[i])));
  });

  it('stop strings cut the text before them, streamed or not, never sending a partial one', async () => {
    const c = golden.cases.find((k) => k.kind === 'text' && expectedText(k).length > 40)!;
    const full = expectedText(c);
    const stop = full.slice(20, 26);
    const cut = full.slice(0, full.indexOf(stop));
    const whole = await client.completions.create({
      model: MODEL,
      prompt: c.prompt,
      temperature: 0,
      max_tokens: 48,
      stop: [stop, 'never appears'],
    });
    expect(whole.choices[0].text).toBe(cut);
    expect(whole.choices[0].finish_reason).toBe('stop');
    const pieces: string[] = [];
    for await (const chunk of await client.completions.create({
      model: MODEL,
      prompt: c.prompt,
      temperature: 0,
      max_tokens: 48,
      stop,
      stream: true,
    }))
      pieces.push(chunk.choices[0]?.text ?? '');
    expect(pieces.join('')).toBe(cut);
  });
});

describe('serve: load', () => {
  it('64 concurrent streaming clients each get their own greedy text; 16 that disconnect midway free their slots', async () => {
    const streamed = async (c: DemoGoldenCase, abortAfter?: number) => {
      const controller = new AbortController();
      const res = await post(server.url, '/v1/completions', { prompt: c.prompt, temperature: 0, max_tokens: 32, stream: true }, {});
      const reader = res.body!.getReader();
      const decoder = new TextDecoder();
      let raw = '';
      let events = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        raw += decoder.decode(value, { stream: true });
        events = raw.split('\n\n').length - 1;
        if (abortAfter !== undefined && events >= abortAfter) {
          controller.abort();
          await reader.cancel();
          return null;
        }
      }
      const texts = raw
        .split('\n\n')
        .filter((e) => e.startsWith('data: {'))
        .map((e) => JSON.parse(e.slice(6)).choices[0]?.text ?? '');
      expect(raw.trimEnd().endsWith('data: [DONE]'), 'the stream ends with [DONE]').toBe(true);
      return texts.join('');
    };
    const cases = Array.from({ length: 80 }, (_, i) => golden.cases[i % golden.cases.length]);
    const results = await Promise.all(cases.map((c, i) => streamed(c, i < 16 ? 3 : undefined)));
    results.slice(16).forEach((text, i) => expect(text, `client ${i + 16}`).toBe(expectedText(cases[i + 16], 32)));
    // The disconnected ones were cancelled: nothing is left running or waiting once the others are done.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metric(metrics, 'tiny_llm_requests_running'), 'running requests after the load').toBe(0);
    expect(metric(metrics, 'tiny_llm_requests_waiting'), 'waiting requests after the load').toBe(0);
    expect(metric(metrics, 'tiny_llm_kv_cache_tokens'), 'tokens held in KV caches after the load').toBe(0);
    expect(metric(metrics, 'tiny_llm_kv_cache_pages_used'), "pages of the KV cache's pool held after the load").toBe(0);
    expect(metric(metrics, 'tiny_llm_kv_cache_pages_total'), "the pool's pages").toBeGreaterThan(0);
    expect(
      metric(metrics, 'tiny_llm_requests_total', 'path="/v1/completions",status="499"'),
      'the disconnects, logged as 499',
    ).toBeGreaterThanOrEqual(16);
    const after = await client.completions.create({ model: MODEL, prompt: golden.cases[0].prompt, temperature: 0, max_tokens: 8 });
    expect(after.choices[0].text, 'a request after the load').toBe(expectedText(golden.cases[0], 8));
  });
});

describe('serve: bad requests', () => {
  const expectError = async (res: Response, status: number, message: RegExp, param?: string | null) => {
    const body = (await res.json()) as { error: Record<string, unknown> & { message: string } };
    expect(res.status, JSON.stringify(body)).toBe(status);
    expect(body.error.message).toMatch(message);
    expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
    if (param !== undefined) expect(body.error.param).toBe(param);
  };

  it('400 for bad JSON, wrong types, unknown fields, n > 1, an empty prompt, a prompt longer than the context', async () => {
    const chat = (extra: object) => ({ messages: [{ role: 'user', content: 'hi' }], ...extra });
    await expectError(await post(server.url, '/v1/chat/completions', '{"messages": ['), 400, /not valid JSON/);
    await expectError(await post(server.url, '/v1/chat/completions', chat({ temperature: 'hot' })), 400, /temperature/, 'temperature');
    await expectError(
      await post(server.url, '/v1/chat/completions', chat({ frequency_penalty: 0.5 })),
      400,
      /unknown or unsupported field: frequency_penalty/,
      'frequency_penalty',
    );
    await expectError(await post(server.url, '/v1/chat/completions', chat({ n: 3 })), 400, /only n = 1 is supported/, 'n');
    await expectError(
      await post(server.url, '/v1/chat/completions', chat({ tool_choice: 'required' })),
      400,
      /tool_choice must be "auto" or "none"/,
    );
    await expectError(await post(server.url, '/v1/chat/completions', { messages: [] }), 400, /messages/);
    await expectError(await post(server.url, '/v1/completions', { prompt: '' }), 400, /the prompt is empty/);
    await expectError(
      await post(server.url, '/v1/completions', { prompt: 'x = 1\n'.repeat(3000) }),
      400,
      /more than the model's context of 2048/,
      'messages',
    );
    await expectError(await post(server.url, '/v1/completions', { prompt: 'x', max_tokens: 1e30 }), 400, /max_tokens/);
  });

  it('404 for an unknown route, 413 for a body over the limit', async () => {
    await expectError(await fetch(`${server.url}/v2/nothing`), 404, /no route GET \/v2\/nothing/);
    await expectError(
      await post(server.url, '/v1/completions', JSON.stringify({ prompt: 'x'.repeat(5 * 1024 * 1024) })),
      413,
      /larger than/,
    );
  });

  it('fuzz: thousands of broken bodies all get a 4xx, and the server is alive and correct afterwards', async () => {
    const valid = JSON.stringify({ messages: [{ role: 'user', content: 'What is 2 + 2?' }], temperature: 0.5, max_tokens: 4, stop: ['x'] });
    let seed = 12345;
    const rand = (n: number) => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return seed % n;
    };
    // Values each field refuses (wrong types, out of range, huge or fractional numbers).
    const wrongValues: Record<string, string[]> = {
      messages: ['"text"', '-5', '{}', 'true', 'null', '[[[[1]]]]', '[{"role": "user", "content": 5}]'],
      temperature: ['"hot"', '-5', '1e400', '[]', '3'],
      max_tokens: ['"many"', '-5', '0', '1e400', '2.5', '999999999999999999999'],
      stop: ['-5', '[1, 2]', '["a", "b", "c", "d", "e"]', '""', '{}'],
      top_p: ['0', '-5', '2', '"high"'],
      seed: ['"s"', '2.5', '1e400'],
      stream: ['"yes"', '1', '[]'],
      tools: ['"calc"', '[1]', '[{"type": "function"}]', '{}'],
      n: ['2', '0', '"1"'],
    };
    const fields = Object.keys(wrongValues);
    const bodies: (string | Uint8Array)[] = [];
    for (let i = 0; i < 2400; i++) {
      switch (i % 6) {
        case 0: // truncated JSON: an object cut before its closing brace never parses
          bodies.push(valid.slice(0, rand(valid.length - 1)));
          break;
        case 1: {
          // a field of the wrong type or range
          const field = fields[rand(fields.length)];
          const values = wrongValues[field];
          bodies.push(JSON.stringify({ ...JSON.parse(valid), [field]: 'WRONG' }).replace('"WRONG"', values[rand(values.length)]));
          break;
        }
        case 2: // deep nesting
          bodies.push(`{"messages": ${'['.repeat(2000 + rand(20000))}`);
          break;
        case 3: // invalid UTF-8 and random bytes
          bodies.push(Uint8Array.from({ length: 1 + rand(300) }, () => 128 + rand(128)));
          break;
        case 4: // an unknown field
          bodies.push(JSON.stringify({ ...JSON.parse(valid), [`field_${rand(1000)}`]: 1 }));
          break;
        default: // a message of an unknown role, or without content
          bodies.push(JSON.stringify({ messages: [rand(2) ? { role: 'robot', content: 'x' } : { role: 'user' }] }));
      }
    }
    const statuses = new Map<number, number>();
    for (let i = 0; i < bodies.length; i += 32) {
      const batch = await Promise.all(
        bodies.slice(i, i + 32).map(async (body) => {
          const res = await fetch(`${server.url}/v1/chat/completions`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body,
          });
          await res.arrayBuffer();
          return res.status;
        }),
      );
      for (const s of batch) statuses.set(s, (statuses.get(s) ?? 0) + 1);
    }
    const wrong = [...statuses].filter(([s]) => s < 400 || s >= 500);
    expect(wrong, `statuses other than 4xx: ${JSON.stringify(Object.fromEntries(statuses))}`).toEqual([]);
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    const after = await client.completions.create({ model: MODEL, prompt: golden.cases[0].prompt, temperature: 0, max_tokens: 8 });
    expect(after.choices[0].text).toBe(expectedText(golden.cases[0], 8));
  });
});

describe('serve: --api-key, metrics, the log', () => {
  let keyed: ServerProcess;
  beforeAll(async () => {
    keyed = await spawnServer(['--api-key', 'sesame', '--max-batch', '2']);
  });
  afterAll(() => keyed?.stop());

  it('401 without the key or with a wrong one; the key opens /v1; /health needs none', async () => {
    const body = { prompt: 'def f(x):', max_tokens: 2, temperature: 0 };
    const missing = await post(keyed.url, '/v1/completions', body);
    expect([missing.status, ((await missing.json()) as { error: { code: string } }).error.code]).toEqual([401, 'invalid_api_key']);
    expect((await post(keyed.url, '/v1/completions', body, { authorization: 'Bearer wrong' })).status).toBe(401);
    expect((await post(keyed.url, '/v1/completions', body, { authorization: 'Bearer sesame' })).status).toBe(200);
    expect((await fetch(`${keyed.url}/health`)).status).toBe(200);
    await expect(new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'wrong' }).models.list()).rejects.toBeInstanceOf(
      OpenAI.AuthenticationError,
    );
  });

  it('/metrics counts requests by status, tokens, and the latency histograms', async () => {
    const ok = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'sesame' });
    await ok.completions.create({ model: MODEL, prompt: 'def f(x):', max_tokens: 5, temperature: 0 });
    const text = await (await fetch(`${keyed.url}/metrics`)).text();
    expect(metric(text, 'tiny_llm_requests_total', 'path="/v1/completions",status="401"')).toBeGreaterThanOrEqual(2);
    expect(metric(text, 'tiny_llm_generation_tokens_total')).toBeGreaterThanOrEqual(5);
    expect(metric(text, 'tiny_llm_prompt_tokens_total')).toBeGreaterThanOrEqual(tokenizer.encode('def f(x):').length);
    expect(metric(text, 'tiny_llm_time_to_first_token_seconds_count')).toBeGreaterThanOrEqual(1);
    expect(metric(text, 'tiny_llm_time_per_output_token_seconds_count')).toBeGreaterThanOrEqual(4);
  });

  it('one log line per request: method, path, status, tokens, milliseconds', () => {
    expect(keyed.log.some((l) => /^POST \/v1\/completions 200 5 tokens \d+ ms$/.test(l))).toBe(true);
    expect(keyed.log.some((l) => /^POST \/v1\/completions 401 - tokens \d+ ms$/.test(l))).toBe(true);
  });
});

// Replicas behind a load balancer (docs/serving.md): two `tiny-llm serve` processes on free loopback ports and
// Debian's HAProxy in front of them with the repository's deploy/haproxy.cfg. Through the balancer, completions
// streamed and not come back as the golden texts (models/tiny-qwen2-py/golden.json), both replicas serve some
// (their /metrics count them), and with one replica stopped every request still succeeds on the other.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { demoGolden, MODELS_DIR, type DemoGoldenCase } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnServer, type ServerProcess } from '../src/server/spawn.ts';

const CONFIG = fileURLToPath(new URL('../../../deploy/haproxy.cfg', import.meta.url));
const MODEL = 'tiny-qwen2-py';
const golden = demoGolden(MODEL);
const tokenizer = loadTokenizer(`${MODELS_DIR}${MODEL}`);
const cases = golden.cases.filter((c) => c.kind === 'text');

/** The golden continuation of a case up to its first end-of-sequence token, as text. */
function expectedText(c: DemoGoldenCase): string {
  const eos = new Set(tokenizer.eosTokenIds);
  const end = c.greedy.findIndex((t) => eos.has(t));
  return tokenizer.decode(c.greedy.slice(0, end < 0 ? c.greedy.length : end));
}

/** A loopback port free now (the OS picks it; the balancer binds it right after). */
const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });

/** Successful completions a replica has served, from its /metrics. */
async function completionsServed(replica: ServerProcess): Promise<number> {
  const text = await (await fetch(`${replica.url}/metrics`)).text();
  return text
    .split('\n')
    .filter(
      (line) => line.startsWith('tiny_llm_requests_total{') && line.includes('path="/v1/completions"') && line.includes('status="200"'),
    )
    .reduce((sum, line) => sum + Number(line.split(' ').at(-1)), 0);
}

/** A completion through `url`, streamed or not: its text, and in how many pieces the stream's bytes came. */
async function complete(url: string, c: DemoGoldenCase, stream: boolean): Promise<{ text: string; pieces: number }> {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: c.prompt, max_tokens: golden.max_new_tokens, temperature: 0, stream }),
  });
  if (r.status !== 200) throw new Error(`${stream ? 'streamed ' : ''}completion: HTTP ${r.status}: ${await r.text()}`);
  if (!stream) return { text: ((await r.json()) as { choices: { text: string }[] }).choices[0].text, pieces: 1 };
  let body = '';
  let pieces = 0;
  const decoder = new TextDecoder();
  for await (const chunk of r.body!) {
    body += decoder.decode(chunk, { stream: true });
    pieces++;
  }
  const events = body.split('\n\n').filter((e) => e.startsWith('data: ') && e !== 'data: [DONE]');
  return { text: events.map((e) => JSON.parse(e.slice(6)).choices[0].text).join(''), pieces };
}

describe('replicas behind HAProxy (deploy/haproxy.cfg)', () => {
  const replicas: ServerProcess[] = [];
  let balancer: ChildProcess | null = null;
  let url = '';
  /** Why the replicas or the balancer did not start: every test fails with it (a missing HAProxy is a failure, not a skip). */
  let setupError: unknown = null;
  const started = () => {
    if (setupError) throw setupError;
  };

  beforeAll(async () => {
    try {
      await startAll();
    } catch (err) {
      setupError = err;
    }
  });

  async function startAll(): Promise<void> {
    if (spawnSync('haproxy', ['-v']).error) {
      throw new Error("HAProxy is not installed: this test runs Debian's (apt-get install -y haproxy; CI's .ci/run installs it)");
    }
    replicas.push(...(await Promise.all([spawnServer(), spawnServer()])));
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    const [one, two] = replicas.map((r) => r.url.replace('http://', ''));
    const env = { ...process.env, TINY_LLM_LB_BIND: `127.0.0.1:${port}`, TINY_LLM_REPLICA1: one, TINY_LLM_REPLICA2: two };
    const log: string[] = [];
    balancer = spawn('haproxy', ['-db', '-f', CONFIG], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    for (const s of [balancer.stdout!, balancer.stderr!]) s.setEncoding('utf8').on('data', (d: string) => log.push(d));
    // Ready once a request gets through to a replica.
    for (let attempt = 0; ; attempt++) {
      if (balancer.exitCode !== null) throw new Error(`haproxy exited (${balancer.exitCode}):\n${log.join('')}`);
      const ok = await fetch(`${url}/health`).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) break;
      if (attempt > 200) throw new Error(`haproxy does not answer on ${url}:\n${log.join('')}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  afterAll(async () => {
    if (balancer && balancer.exitCode === null) {
      const exited = new Promise((resolve) => balancer!.once('exit', resolve));
      balancer.kill('SIGTERM');
      await exited;
    }
    await Promise.all(replicas.map((r) => r.stop()));
  });

  it('8 completions at once, streamed and not: each the golden text, and both replicas served some', async () => {
    started();
    const before = await Promise.all(replicas.map(completionsServed));
    const runs = Array.from({ length: 8 }, (_, i) => ({ c: cases[i % cases.length], stream: i % 2 === 0 }));
    const results = await Promise.all(runs.map(({ c, stream }) => complete(url, c, stream)));
    results.forEach((r, i) =>
      expect(r.text, `request ${i} (${runs[i].stream ? 'streamed' : 'not streamed'})`).toBe(expectedText(runs[i].c)),
    );
    const served = (await Promise.all(replicas.map(completionsServed))).map((n, i) => n - before[i]);
    expect(served[0] + served[1], 'completions the replicas counted').toBe(8);
    expect(Math.min(...served), `completions per replica: ${served.join(' and ')}`).toBeGreaterThan(0);
    // The balancer passes a stream on as it comes: its events arrive in several pieces, not as one body.
    expect(Math.max(...results.map((r) => r.pieces)), 'pieces of the longest stream').toBeGreaterThan(1);
  });

  it('with replica 1 stopped, every request still succeeds, on replica 2', async () => {
    started();
    await replicas[0].stop();
    const before = await completionsServed(replicas[1]);
    for (let i = 0; i < 4; i++) {
      const c = cases[i % cases.length];
      expect((await complete(url, c, i % 2 === 0)).text, `request ${i} after the stop`).toBe(expectedText(c));
    }
    const results = await Promise.all(cases.slice(0, 4).map((c, i) => complete(url, c, i % 2 === 1)));
    results.forEach((r, i) => expect(r.text, `concurrent request ${i} after the stop`).toBe(expectedText(cases[i])));
    expect(await completionsServed(replicas[1]), 'completions replica 2 served after the stop').toBe(before + 8);
  });
});

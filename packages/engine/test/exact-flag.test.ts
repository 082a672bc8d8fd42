// --exact: every command that runs a model takes it, and it switches the engine's quantized matmuls from
// integer activations (the default) to float32 ones, the arithmetic of the chapters' models. Checked through
// real CLI runs on the demo model converted to 4 bits: the logits move without --exact and match the plain
// week 2 model with it; a float model is the same either way, and so is a prefill on a CPU without AVX-512 VNNI
// (float activations there; with VNNI, prefills take the integer GEMM).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tc from '@tiny-llm/tensor-core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { COMMANDS } from '../src/cli.ts';
import { convertModel } from '../src/convert.ts';
import { parseFlags } from '../src/flags.ts';
import { spawnServer } from '../src/server/spawn.ts';
import { cli, ROOT } from './support/cli.ts';

const MODEL_COMMANDS = ['generate', 'chat', 'logits', 'batch', 'serve', 'bench-serve', 'bench'];

vi.setConfig({ testTimeout: 600_000 });

let tmp = '';
let q4 = '';
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'tiny-llm-exact-'));
  q4 = join(tmp, 'q4');
  convertModel(join(ROOT, 'models/tiny-qwen2-py'), q4, { bits: 4, groupSize: 64 });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** `logits --ids` of a model with extra flags, as a Float32Array [L * vocab]. */
async function logits(model: string, ids: number[], flags: string[], name: string): Promise<Float32Array> {
  const out = join(tmp, `${name}.safetensors`);
  const r = await cli(['logits', '--model', model, '--ids', ids.join(','), '--out', out, ...flags]);
  expect(r.code, r.stderr).toBe(0);
  return tc.loadSafetensors(out).get('logits')!.toArray() as Float32Array;
}

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

describe('--exact', () => {
  it('is a flag of every command that runs a model', () => {
    for (const name of MODEL_COMMANDS) {
      expect(COMMANDS[name].flags.exact, name).toMatchObject({ kind: 'bool' });
      expect(parseFlags(name, ['--exact'], COMMANDS[name].flags), name).toMatchObject({ exact: true });
    }
  });

  it('logits of a 4-bit model: without it they move (integer activations), with it they equal the week 2 model (1e-4)', async () => {
    const ids = [435, 326, 261, 138, 157, 20, 90, 12, 7, 300]; // 10 tokens: one call of decode size
    const [fast, exact, week2] = await Promise.all([
      logits(q4, ids, [], 'q4-fast'),
      logits(q4, ids, ['--exact'], 'q4-exact'),
      logits(q4, ids, ['--solution', 'reference', '--week', '2'], 'q4-week2'),
    ]);
    expect(maxDiff(exact, week2)).toBeLessThan(1e-4);
    expect(maxDiff(fast, exact)).toBeGreaterThan(1e-3);
  });

  const vnni = tc.cpuFeatures().level === 'avx512' && tc.cpuFeatures().avx512vnni;
  it(`changes nothing for a float model; a prefill of more than 16 tokens ${vnni ? 'moves (the integer GEMM)' : 'is the same (float activations without VNNI)'}`, async () => {
    const short = [435, 326, 261, 138, 157, 20];
    const long = Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % 8000);
    const [bf16Fast, bf16Exact, longFast, longExact] = await Promise.all([
      logits('models/tiny-qwen2-py', short, [], 'bf16-fast'),
      logits('models/tiny-qwen2-py', short, ['--exact'], 'bf16-exact'),
      logits(q4, long, [], 'q4-long-fast'),
      logits(q4, long, ['--exact'], 'q4-long-exact'),
    ]);
    expect(maxDiff(bf16Fast, bf16Exact)).toBe(0);
    if (vnni) expect(maxDiff(longFast, longExact)).toBeGreaterThan(1e-3);
    else expect(maxDiff(longFast, longExact)).toBe(0);
  });

  it('generate, chat, batch and serve run with it; bench reports which activations ran', async () => {
    const prompts = join(tmp, 'prompts.jsonl');
    writeFileSync(prompts, '{"prompt": "def add(a, b):", "max_tokens": 8}\n');
    const [generated, chat, batch, benchFast, benchExact] = await Promise.all([
      cli(['generate', '--model', q4, '--exact', '--prompt', 'def add(a, b):', '--max-tokens', '8']),
      cli(['chat', '--model', q4, '--exact', '--message', 'Hello!', '--max-tokens', '8']),
      cli(['batch', '--model', q4, '--exact', '--prompts', prompts]),
      cli(['bench', '--model', q4, '--prompt-len', '8', '--gen', '4', '--reps', '1', '--json', join(tmp, 'fast.json')]),
      cli(['bench', '--model', q4, '--exact', '--prompt-len', '8', '--gen', '4', '--reps', '1', '--json', join(tmp, 'exact.json')]),
    ]);
    for (const r of [generated, chat, batch, benchFast, benchExact]) expect(r.code, r.stderr).toBe(0);
    // The same greedy text through continuous batching.
    expect(JSON.parse(batch.stdout).text).toBe(generated.stdout);
    expect(JSON.parse(readFileSync(join(tmp, 'fast.json'), 'utf8')).activations).toBe('int16');
    expect(JSON.parse(readFileSync(join(tmp, 'exact.json'), 'utf8')).activations).toBe('float32');
    // The server, started with it, answers with the same greedy text.
    const server = await spawnServer(['--model', q4, '--exact']);
    try {
      const r = await fetch(`${server.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'def add(a, b):', max_tokens: 8, temperature: 0 }),
      });
      expect(r.status).toBe(200);
      expect(((await r.json()) as { choices: { text: string }[] }).choices[0].text).toBe(generated.stdout);
    } finally {
      await server.stop();
    }
  });
});

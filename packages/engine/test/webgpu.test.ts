// The engine on a GPU (--device webgpu), on the adapter initWebGPU finds (Mesa's software GPU here and in CI):
// the chapter models with every tensor on the WebGPU backend (Qwen2-MoE with the engine's mixture of experts)
// against the golden logits of the fixture models (transformers, float64), the demo models' golden greedy texts
// through the generation loop, each command through the CLI, and the errors a GPU adds (no adapter, a model
// past the device's limits, an op the backend lacks). A software GPU runs a decode step of the demo model in a
// few hundred milliseconds, so the CLI runs use the 3-layer draft model.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tc from '@tiny-llm/tensor-core';
import { DEMO_MODELS, demoGolden, type DemoGoldenCase } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { expectGolden, goldenModel } from '@tiny-llm/grading';
import { afterAll, describe, expect, it } from 'vitest';
import { UserError, deviceErrorOf } from '../src/errors.ts';
import { generate } from '../src/generate.ts';
import { computeLogits } from '../src/logits.ts';
import { closeDevice, deviceBackend, loadModel, type ModelChoice } from '../src/registry.ts';
import { spawnServer } from '../src/server/spawn.ts';
import type { EngineModel } from '../src/session.ts';
import { cli, ROOT, runEntry } from './support/cli.ts';

const DRAFT = 'tiny-qwen2-py-draft';

const tmp = mkdtempSync(join(tmpdir(), 'tiny-llm-webgpu-'));
afterAll(() => {
  closeDevice();
  rmSync(tmp, { recursive: true, force: true });
});

/** stderr without what Dawn prints while it looks for an adapter (a warning when Vulkan cannot be loaded). */
const ownLines = (stderr: string) =>
  stderr
    .split('\n')
    .filter((l) => /^(loaded|tiny-llm|batch|measuring|built|wrote|\[)/.test(l))
    .join('\n');

describe('the logits of every fixture model on the GPU, through the engine, within 1e-4 of the goldens', () => {
  const dense = ['qwen2-tiny', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit', 'qwen2-tiny-untied', 'qwen3-tiny'];
  // Week 2's model runs Qwen2-MoE with the engine's mixture of experts; week 1's is dense only.
  const runs: [string, ModelChoice, string[]][] = [
    ['the engine (the reference week 2 model)', { device: 'webgpu' }, [...dense, 'qwen2-moe-tiny']],
    ['the reference week 1 model', { device: 'webgpu', week: 1 }, dense],
  ];
  for (const [what, choice, models] of runs) {
    for (const name of models) {
      it(`${name}: ${what}, every prompt`, async () => {
        const golden = goldenModel(name);
        const model = await loadModel(golden.dir, choice);
        expect(model.device, 'the model runs on the GPU').toMatch(/^webgpu \(/);
        for (const p of golden.prompts) {
          const logits = await computeLogits(model, p.ids);
          expectGolden(tc.expandDims(logits, 0), tc.expandDims(p.logits, 0), {
            atol: 1e-4,
            what: `prompt ${p.index}`,
            axes: ['b', 'l', 'v'],
          });
        }
      });
    }
  }
});

/**
 * Generates a golden prompt greedily and compares with the golden tokens. Where a token differs, the logits
 * of the two tokens at that step decide: a float32 tie (margin under 1e-4) is the only accepted reason, and
 * the rest of that text is then not comparable.
 */
async function expectGoldenText(model: EngineModel, name: string, c: DemoGoldenCase, maxTokens: number): Promise<void> {
  const tokenizer = loadTokenizer(join(ROOT, 'models', name));
  const session = model.newSession();
  const r = await generate(model, session, tokenizer, c.ids, { maxTokens, ignoreEos: true, temperature: 0 });
  session.dispose();
  const step = c.greedy.findIndex((t, i) => r.tokens[i] !== t);
  if (step < 0) {
    expect(r.text).toBe(c.greedy_text);
    return;
  }
  const replay = model.newSession();
  const row = (await tc.toCPU(replay.feed([...c.ids, ...c.greedy.slice(0, step)]))).toArray();
  replay.dispose();
  const [got, want] = [r.tokens[step], c.greedy[step]];
  const margin = Math.abs(row[got] - row[want]);
  expect(
    margin,
    `token ${step} is ${got} (logit ${row[got]}), the golden ${want} (logit ${row[want]}): a margin of ${margin}`,
  ).toBeLessThan(1e-4);
}

for (const name of DEMO_MODELS) {
  describe(`the demo goldens on the GPU: ${name}, the reference week 2 model, 48 greedy tokens`, () => {
    const golden = demoGolden(name);
    let loaded: Promise<EngineModel> | undefined;
    const model = () => (loaded ??= loadModel(join(ROOT, 'models', name), { device: 'webgpu' }));
    for (const [i, c] of golden.cases.entries()) {
      it(`prompt ${i} (${c.kind}, ${c.ids.length} tokens): the text of golden.json`, async () => {
        await expectGoldenText(await model(), name, c, golden.max_new_tokens);
      });
    }
  });
}

describe('every command with --device webgpu (spawned)', () => {
  const golden = demoGolden(DRAFT);
  const code = golden.cases[1];
  const chat = golden.cases.find((c: DemoGoldenCase) => c.messages?.[0]?.content === 'Hello!')!;
  const model = ['--model', `models/${DRAFT}`, '--device', 'webgpu'];

  it('generate: stdout is the golden text; the load line names the model and the device', async () => {
    const r = await cli(['generate', ...model, '--prompt', code.prompt, '--temperature', '0', '--ignore-eos', '--max-tokens', '48']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(code.greedy_text);
    expect(ownLines(r.stderr)).toMatch(
      /^loaded models\/tiny-qwen2-py-draft \(.*; the reference week 2 model, on webgpu \(.+\)\) in [\d.]+ s\n\[prompt \d+ tokens, generated 48 tokens/,
    );
  });

  it('chat --message: the golden reply, up to <|im_end|>', async () => {
    const r = await cli(['chat', ...model, '--message', 'Hello!', '--tools', `models/${DRAFT}/tools.json`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${chat.greedy_text.split('<|im_end|>')[0]}\n`);
  });

  it('logits --out: the fixture golden logits within 1e-4; --week 1 runs the week 1 model there', async () => {
    const g = tc.loadSafetensors(join(ROOT, 'fixtures/models/qwen2-tiny-bf16/golden.safetensors'));
    const ids = Array.from(g.get('prompt1')!.toArray());
    for (const week of ['1', '2']) {
      const out = join(tmp, `logits-${week}.safetensors`);
      const r = await cli([
        'logits',
        '--model',
        'fixtures/models/qwen2-tiny-bf16',
        '--device',
        'webgpu',
        '--week',
        week,
        '--ids',
        ids.join(','),
        '--out',
        out,
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(new RegExp(`the reference week ${week} model(, no KV cache)?, on webgpu`));
      expectGolden(tc.expandDims(tc.loadSafetensors(out).get('logits')!, 0), tc.expandDims(g.get('prompt1.logits')!, 0), {
        atol: 1e-4,
        what: `week ${week}`,
        axes: ['b', 'l', 'v'],
      });
    }
  });

  it('batch: two golden prompts batched, each its golden text; demo: the code completion and the chat turns run', async () => {
    const prompts = join(tmp, 'prompts.jsonl');
    writeFileSync(
      prompts,
      `${golden.cases
        .slice(0, 2)
        .map((c) => JSON.stringify({ prompt: c.prompt, max_tokens: 12, ignore_eos: true }))
        .join('\n')}\n`,
    );
    const tokenizer = loadTokenizer(join(ROOT, 'models', DRAFT));
    const [batch, demo] = await Promise.all([cli(['batch', ...model, '--prompts', prompts]), runEntry('demo', model)]);
    expect(batch.code, batch.stderr).toBe(0);
    expect(batch.stderr).toMatch(/batch: 2 prompts on the reference week 2 model and scheduler, on webgpu/);
    const lines = batch.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    lines.forEach((l, i) => expect(l.text, `line ${i}`).toBe(tokenizer.decode(golden.cases[i].greedy.slice(0, 12))));
    expect(demo.code, demo.stderr).toBe(0);
    expect(demo.stdout).toMatch(/on the reference week 2 model \(with a KV cache\) on webgpu/);
    expect(demo.stdout).toMatch(/1\. Code completion[\s\S]*2\. Chat[\s\S]*assistant: Hello/);
  });

  it('sampling draws on the GPU what it draws on the CPU for a seed (top-p, temperature 0.8)', async () => {
    const sampled = [
      'generate',
      '--model',
      `models/${DRAFT}`,
      '--week',
      '2',
      '--prompt',
      code.prompt,
      '--temperature',
      '0.8',
      '--top-p',
      '0.9',
      '--seed',
      '7',
      '--max-tokens',
      '24',
      '--ignore-eos',
    ];
    const [onCpu, onGpu] = await Promise.all([cli(sampled), cli([...sampled, '--device', 'webgpu'])]);
    expect(onCpu.code, onCpu.stderr).toBe(0);
    expect(onGpu.code, onGpu.stderr).toBe(0);
    expect(onGpu.stdout, 'the same 24 tokens').toBe(onCpu.stdout);
  });

  it("--solution learner: the learner's model on the GPU, or the chapter that is missing", async () => {
    const r = await cli(['generate', '--solution', 'learner', ...model, '--prompt', 'def f(x):\n', '--max-tokens', '2']);
    if (r.code === 0) {
      expect(r.stderr).toMatch(/the learner's week \d model.*, on webgpu/);
    } else {
      expect(r.code, r.stderr).toBe(1);
      expect(ownLines(r.stderr)).toMatch(
        /^tiny-llm: the learner's chapter \d\.\d is not implemented yet; run with --solution reference or finish packages\/week\d\//,
      );
    }
  });

  it("serve: the model and its scheduler on the GPU in the server's worker; a completion is the golden text", async () => {
    const server = await spawnServer(model);
    try {
      const response = await fetch(`${server.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: code.prompt, max_tokens: 16, temperature: 0 }),
      });
      expect(response.status).toBe(200);
      const body = (await response.json()) as { choices: { text: string }[] };
      expect(body.choices[0].text).toBe(loadTokenizer(join(ROOT, 'models', DRAFT)).decode(code.greedy.slice(0, 16)));
      expect(server.log.join('\n')).toMatch(/the reference week 2 model and scheduler, on webgpu/);
    } finally {
      await server.stop();
    }
  });

  it('bench: prefill and decode tok/s next to the GPU ceilings measured in the same run', async () => {
    const json = join(tmp, 'bench.json');
    const r = await cli(['bench', ...model, '--prompt-len', '8', '--gen', '4', '--reps', '1', '--json', json]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /the reference week 2 model, on webgpu .*\n {2}ceilings \(measured now, on the GPU\): read bandwidth [\d.]+ GB\/s, GEMM f32 512\^3 [\d.]+ GFLOP\/s/,
    );
    const report = JSON.parse(readFileSync(json, 'utf8'));
    expect(report.device).toMatch(/^webgpu/);
    for (const key of ['prefill_tokens_per_s', 'decode_tokens_per_s', 'bandwidth_gb_s', 'gemm_gflops'])
      expect(report[key], key).toBeGreaterThan(0);
  });
});

describe('errors with --device webgpu: one line, no stack trace, never a hang', () => {
  /**
   * A model whose 4-bit embedding, dequantized, is past the device's largest binding. It declares a layer but
   * stores none: loading stops at the embedding, which the model builds first.
   */
  async function modelPastTheBindingLimit(): Promise<string> {
    const gpu = (await deviceBackend('webgpu')) as tc.WebGPUBackend;
    const limit = gpu.limits.maxStorageBufferBindingSize;
    const dir = join(tmp, 'too-big');
    mkdirSync(dir, { recursive: true });
    const [hidden, group] = [128, 64];
    // A 4-bit table of vocab x hidden values: a fraction of the limit on disk, 4 bytes a value once dequantized.
    const vocab = Math.ceil(limit / (4 * hidden) / 64) * 64 + 64;
    const words = new Uint32Array((vocab * hidden) / 8).fill(0x76543210);
    const groups = (vocab * hidden) / group;
    const half = (v: number) =>
      tc.tensor(new Float32Array(groups).fill(v), { shape: [vocab, hidden / group], dtype: 'bfloat16', device: tc.cpu });
    const norm = tc.tensor(new Float32Array(hidden).fill(1), { device: tc.cpu });
    tc.saveSafetensors(join(dir, 'model.safetensors'), {
      'model.embed_tokens.weight': tc.tensor(words, { shape: [vocab, hidden / 8], dtype: 'uint32', device: tc.cpu }),
      'model.embed_tokens.scales': half(0.01),
      'model.embed_tokens.biases': half(-0.04),
      'model.norm.weight': norm,
    });
    const config = {
      model_type: 'qwen2',
      hidden_size: hidden,
      intermediate_size: 256,
      num_hidden_layers: 1,
      num_attention_heads: 2,
      num_key_value_heads: 1,
      vocab_size: vocab,
      max_position_embeddings: 64,
      tie_word_embeddings: true,
      rope_theta: 10000,
      rms_norm_eps: 1e-6,
      quantization: { group_size: group, bits: 4 },
    };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    return dir;
  }

  it('no adapter, a model past the largest binding, a bad --device: each a one-line message naming the cause', async () => {
    const tooBig = await modelPastTheBindingLimit();
    const cases: [string, string[], Record<string, string>, number, RegExp][] = [
      [
        'no adapter',
        ['logits', '--device', 'webgpu', '--ids', '1,2'],
        { TINY_LLM_WEBGPU_BACKEND: 'd3d12' },
        1,
        /--device webgpu: no WebGPU adapter found \(tried d3d12: .*docs\/gpu\.md/,
      ],
      [
        'past the largest binding',
        ['logits', '--model', tooBig, '--device', 'webgpu', '--ids', '1,2'],
        {},
        1,
        /the model does not fit this GPU's maxStorageBufferBindingSize: dequantize: binding out of \d+ bytes exceeds .*; run it with --device cpu/,
      ],
      ['a bad --device', ['generate', '--prompt', 'x', '--device', 'cuda'], {}, 2, /--device must be one of cpu, webgpu, got cuda/],
      [
        '--config on the GPU',
        ['bench', '--config', 'fixtures/configs/Qwen2-0.5B-Instruct.json', '--device', 'webgpu'],
        {},
        2,
        /--config builds random weights for the engine on the CPU/,
      ],
      [
        '--batch on the GPU',
        ['bench', '--model', `models/${DRAFT}`, '--device', 'webgpu', '--batch', '2'],
        {},
        2,
        /--batch measures the engine on the CPU/,
      ],
    ];
    const results = await Promise.all(cases.map(([, args, env]) => cli(args, env)));
    for (const [i, [what, , , exit, message]] of cases.entries()) {
      const r = results[i];
      expect(r.code, `${what}: ${r.stderr}`).toBe(exit);
      expect(ownLines(r.stderr), what).toMatch(/^(loaded .*\n)?tiny-llm: [^\n]+$/);
      expect(r.stderr, what).toMatch(message);
      expect(r.stderr, what).not.toMatch(/\n\s+at .*\.ts:\d+/);
    }
  });

  it('an op the GPU backend lacks becomes a message naming it', async () => {
    const gpu = await deviceBackend('webgpu');
    let caught: unknown;
    try {
      tc.max(tc.tensor([1, 2, 3], { dtype: 'int32', device: gpu }));
    } catch (err) {
      caught = err;
    }
    const err = deviceErrorOf(caught);
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toBe(
      'max on int32 is not implemented on the webgpu backend, which runs this model; run it with --device cpu',
    );
  });
});

// The engine's command line (packages/engine/src): the generation loop against the demo models'
// golden.json (every prompt, in-process), the chat template against the golden chat prompts, and real CLI
// runs (spawned from the repository root, as `pnpm tiny-llm` runs it) for the output formats, the logits
// parity check and the errors. A spawn costs ~0.7 s, so most prompts run in-process and a few go through
// the CLI.
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tc from '@tiny-llm/tensor-core';
import { demoGolden, DEMO_MODELS, type DemoGoldenCase } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { weightTraffic, randomEntries, prefillFlopsPerToken } from '../src/bench.ts';
import { readToolsFile, renderChatPrompt } from '../src/chat.ts';
import { COMMANDS } from '../src/cli.ts';
import { parseFlags } from '../src/flags.ts';
import { UsageError } from '../src/errors.ts';
import { generate } from '../src/generate.ts';
import { expectGolden, goldenModel } from '@tiny-llm/grading';
import { loadModel, type ModelChoice } from '../src/registry.ts';
import { EngineQwen2, Week1Session } from '../src/session.ts';
import { Qwen2ModelWeek1 } from '@tiny-llm/reference/week1';
import { demoTools } from '@tiny-llm/reference/week3';
import { RandomWeights } from '../src/random-weights.ts';
import { Qwen2Model } from '../src/model/qwen2.ts';
import { cli, ROOT } from './support/cli.ts';

const MODELS = DEMO_MODELS;

const golden = demoGolden;

// Each test spawns the CLI a few times; the time limit only guards against a hang, as the spawn's does.
vi.setConfig({ testTimeout: 600_000 });

const tmp = mkdtempSync(join(tmpdir(), 'tiny-llm-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A copy of a model directory, to break. */
function copyModel(name: string, as: string): string {
  const dir = join(tmp, as);
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(join(ROOT, 'models', name))) copyFileSync(join(ROOT, 'models', name, f), join(dir, f));
  return dir;
}

describe('generate: the golden greedy text of every prompt of the demo models (in-process)', () => {
  // The engine on every demo model, the plain chapter model of week 2, and week 3's on the MoE model.
  const runs: [string, ModelChoice][] = [
    ...MODELS.map((name): [string, ModelChoice] => [name, {}]),
    ['tiny-qwen2-py', { solution: 'reference', week: 2 }],
    ['tiny-qwen2-moe-py', { solution: 'reference', week: 3 }],
  ];
  for (const [name, choice] of runs) {
    const what = choice.week ? ` (the reference week ${choice.week} model)` : '';
    it(`${name}${what}: 48 greedy tokens ignoring EOS, streamed, equal golden.json`, async () => {
      const dir = join(ROOT, 'models', name);
      const g = golden(name);
      const tokenizer = loadTokenizer(dir);
      const model = await loadModel(dir, choice);
      for (const c of g.cases) {
        const ids = tokenizer.encode(c.prompt);
        expect(ids, 'prompt ids').toEqual(c.ids);
        const chunks: string[] = [];
        const session = model.newSession();
        const r = await generate(model, session, tokenizer, ids, { maxTokens: g.max_new_tokens, ignoreEos: true, temperature: 0 }, (t) =>
          chunks.push(t),
        );
        session.dispose();
        expect(r.tokens, `${name}: ${JSON.stringify(c.prompt.slice(-40))}`).toEqual(c.greedy);
        expect(r.text).toBe(c.greedy_text);
        expect(chunks.join('')).toBe(c.greedy_text);
        expect(chunks.length).toBeGreaterThan(1);
        expect(r.stats.generatedTokens).toBe(48);
        expect(r.stats.stopReason).toBe('length');
      }
    });
  }

  it('stops at the first end-of-sequence id unless ignoreEos, and reuses a session prefix', async () => {
    const dir = join(ROOT, 'models', 'tiny-qwen2-py');
    const tokenizer = loadTokenizer(dir);
    const model = await loadModel(dir);
    const c = golden('tiny-qwen2-py').cases.find((k) => k.messages?.[0]?.content === 'Hello!')!;
    const eos = new Set(tokenizer.eosTokenIds);
    const stop = c.greedy.findIndex((id) => eos.has(id));
    const session = model.newSession();
    const r = await generate(model, session, tokenizer, c.ids, {});
    expect(r.tokens).toEqual(c.greedy.slice(0, stop));
    expect(r.stats.stopReason).toBe('eos');
    // The same prompt again on the same session: only the last prompt token is fed again, same output.
    const again = await generate(model, session, tokenizer, c.ids, {});
    expect(again.stats.reusedTokens).toBe(c.ids.length - 1);
    expect(again.tokens).toEqual(r.tokens);
    session.dispose();
  });
});

describe('the sessions of every model the registry runs', () => {
  it("a week 1 model's uncached session gives the golden text of a prompt", async () => {
    const dir = join(ROOT, 'models', 'tiny-qwen2-py-draft');
    const c = golden('tiny-qwen2-py-draft').cases[0];
    const tokenizer = loadTokenizer(dir);
    const uncached = new Week1Session(Qwen2ModelWeek1.load(dir), 'the reference week 1 model');
    const r = await generate(uncached, uncached.newSession(), tokenizer, c.ids, { maxTokens: 48, ignoreEos: true });
    expect(r.text).toBe(c.greedy_text);
  });

  for (const [what, choice] of [
    ['the engine', {}],
    ['the reference week 1 model', { solution: 'reference', week: 1 }],
    ['the reference week 2 model', { solution: 'reference', week: 2 }],
  ] as [string, ModelChoice][]) {
    it(`${what}: allLogits of every fixture prompt equal the golden logits (1e-4)`, async () => {
      const golden = goldenModel('qwen2-tiny');
      const model = await loadModel(golden.dir, choice);
      for (const p of golden.prompts)
        expectGolden(tc.expandDims(model.allLogits(p.ids), 0), tc.expandDims(p.logits, 0), {
          atol: 1e-4,
          what: `prompt ${p.index}`,
          axes: ['b', 'l', 'v'],
        });
    });
  }
});

describe('chat --run-tools: the built-in tools', () => {
  it("are the tools the demo models were trained with: their schemas are every demo model's tools.json", () => {
    const schemas = demoTools().map((t) => t.schema);
    for (const name of MODELS) expect(schemas, name).toEqual(readToolsFile(join(ROOT, 'models', name, 'tools.json')));
  });
});

describe('chat: the template renders the golden chat prompts byte for byte', () => {
  for (const name of MODELS) {
    it(`${name}: every chat case, with the model's tools.json`, () => {
      const dir = join(ROOT, 'models', name);
      const tokenizer = loadTokenizer(dir);
      const tools = readToolsFile(join(dir, 'tools.json'));
      const cases = golden(name).cases.filter((c) => c.kind === 'chat');
      expect(cases.length).toBeGreaterThan(0);
      for (const c of cases) {
        expect(renderChatPrompt(tokenizer, c.messages!, c.tools ? tools : undefined)).toBe(c.prompt);
      }
    });
  }
});

describe('the CLI (spawned)', () => {
  it('generate: stdout is exactly the golden text (a code prompt of each model, a chat prompt), stats on stderr', async () => {
    const runs: [string, DemoGoldenCase, string[]][] = MODELS.map((m) => [m, golden(m).cases[1], []]);
    runs.push(['tiny-qwen2-py', golden('tiny-qwen2-py').cases.find((c) => c.kind === 'chat')!, []]);
    runs.push(['tiny-qwen2-py', golden('tiny-qwen2-py').cases[2], ['--solution', 'reference', '--week', '2']]);
    const results = await Promise.all(
      runs.map(([model, c, choice]) =>
        cli([
          'generate',
          '--model',
          `models/${model}`,
          ...choice,
          '--prompt',
          c.prompt,
          '--temperature',
          '0',
          '--ignore-eos',
          '--max-tokens',
          '48',
        ]),
      ),
    );
    for (const [i, [, c]] of runs.entries()) {
      const r = results[i];
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe(c.greedy_text);
      expect(r.stderr).toMatch(/prompt \d+ tokens, generated 48 tokens; prefill [\d.]+ tok\/s, decode [\d.]+ tok\/s/);
    }
  });

  it('chat --print-prompt renders the golden prompt; chat --message prints the reply and stops at <|im_end|>', async () => {
    const c = golden('tiny-qwen2-py').cases.find((k) => k.messages?.[0]?.content === 'What is 37 times 12?')!;
    const [shown, reply] = await Promise.all([
      cli(['chat', '--message', 'What is 37 times 12?', '--tools', 'models/tiny-qwen2-py/tools.json', '--print-prompt']),
      cli(['chat', '--message', 'What is 37 times 12?', '--tools', 'models/tiny-qwen2-py/tools.json']),
    ]);
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toBe(c.prompt);
    expect(reply.code, reply.stderr).toBe(0);
    // The golden (made without stopping) goes on past <|im_end|>; the reply is the text before it.
    expect(reply.stdout).toBe(`${c.greedy_text.split('<|im_end|>')[0]}\n`);
    expect(reply.stdout).toContain('<tool_call>');
  });

  it('chat --run-tools: the call, the tool result and the answer; a tools file naming a tool that is not built in is refused', async () => {
    const unknown = join(tmp, 'unknown-tool.json');
    writeFileSync(unknown, JSON.stringify([{ type: 'function', function: { name: 'send_email', parameters: {} } }]));
    const [r, refused] = await Promise.all([
      cli(['chat', '--tools', 'models/tiny-qwen2-py/tools.json', '--run-tools', '--message', 'What is 37 times 12?']),
      cli(['chat', '--tools', unknown, '--run-tools', '--message', 'Hello!']),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(
      '<tool_call>\n{"name": "calculator", "arguments": {"expression": "37 * 12"}}\n</tool_call>\n[calculator: 444]\n37 times 12 is 444.\n',
    );
    expect(r.stderr, 'the second reply reuses the cache of the first').toMatch(/\(\d+ reused from the cache\)/);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      /^tiny-llm: --run-tools: no built-in tool runs "send_email" \(the built-in tools are calculator, get_weather, get_time\)\n$/,
    );
  });

  it('logits --ids writes [L, vocab] float32 equal to the fixture golden logits (atol 1e-4)', async () => {
    const g = tc.loadSafetensors(join(ROOT, 'fixtures/models/qwen2-tiny/golden.safetensors'));
    const ids = Array.from(g.get('prompt0')!.toArray());
    const out = join(tmp, 'logits.safetensors');
    const r = await cli(['logits', '--model', 'fixtures/models/qwen2-tiny', '--ids', ids.join(','), '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const logits = tc.loadSafetensors(out).get('logits')!;
    const expected = g.get('prompt0.logits')!;
    expect(logits.dtype).toBe('float32');
    expect(logits.shape).toEqual([ids.length, 512]);
    const a = logits.toArray();
    const b = expected.toArray();
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
    expect(worst).toBeLessThan(1e-4);
  });

  it('bad input: a one-line message, a non-zero exit (2 for usage errors), no stack trace', async () => {
    const truncated = copyModel('tiny-qwen2-py', 'truncated');
    const shard = join(truncated, 'model-00002-of-00003.safetensors');
    truncateSync(shard, Math.floor(statSync(shard).size / 2));
    const shortContext = copyModel('tiny-qwen2-py-draft', 'short-context');
    const badTools = join(tmp, 'bad-tools.json');
    writeFileSync(badTools, JSON.stringify({ name: 'calculator' }));
    const config = JSON.parse(readFileSync(join(shortContext, 'config.json'), 'utf8'));
    writeFileSync(join(shortContext, 'config.json'), JSON.stringify({ ...config, max_position_embeddings: 16 }));

    const cases: [string, string[], number, RegExp][] = [
      ['unknown flag', ['generate', '--prompt', 'x', '--bogus'], 2, /unknown flag --bogus/],
      ['missing value', ['generate', '--prompt'], 2, /--prompt needs a value/],
      ['unknown command', ['frobnicate'], 2, /unknown command "frobnicate"/],
      ['not a number', ['generate', '--prompt', 'x', '--max-tokens', 'many'], 2, /--max-tokens expects an integer/],
      ['missing model', ['generate', '--prompt', 'x', '--model', join(tmp, 'nowhere')], 1, /--model .*nowhere: no such directory/],
      ['not a model', ['generate', '--prompt', 'x', '--model', 'packages'], 1, /--model packages: not a model directory \(no config.json/],
      ['truncated shard', ['generate', '--prompt', 'x', '--model', truncated], 1, /model-00002-of-00003\.safetensors.*truncated/],
      [
        'id outside the vocabulary',
        ['logits', '--model', 'fixtures/models/qwen2-tiny', '--ids', '1,2,512'],
        1,
        /token id 512 is outside the vocabulary \(0\.\.511\)/,
      ],
      [
        'prompt longer than the context',
        ['generate', '--model', shortContext, '--prompt', 'x = 1\n'.repeat(20)],
        1,
        /the prompt has \d+ tokens, more than the model's context of 16/,
      ],
      ['a boolean flag given a value', ['generate', '--prompt', 'x', '--ignore-eos=yes'], 2, /--ignore-eos takes no value/],
      ['no --prompt', ['generate', '--max-tokens', '3'], 2, /generate: --prompt TEXT is required/],
      ['an empty prompt', ['generate', '--prompt', ''], 1, /the prompt is empty/],
      ['--print-prompt without --message', ['chat', '--print-prompt'], 2, /--print-prompt needs --message TEXT/],
      ['logits without ids', ['logits'], 2, /give the tokens as --ids 1,2,3 or as --prompt TEXT/],
      ['logits with malformed ids', ['logits', '--ids', '1,two,3'], 2, /--ids: expected a comma-separated list of token ids/],
      [
        'an unwritable --out',
        ['logits', '--ids', '1,2', '--out', join(tmp, 'no', 'such', 'dir', 'x.safetensors')],
        1,
        /--out .*x\.safetensors: cannot write it/,
      ],
      ['a missing --tools file', ['chat', '--message', 'hi', '--tools', join(tmp, 'nowhere.json')], 1, /--tools .*nowhere\.json/],
      ['a --tools file that is not a list of tools', ['chat', '--message', 'hi', '--tools', badTools], 1, /--tools .*bad-tools\.json/],
      ['--week 4', ['generate', '--prompt', 'x', '--week', '4'], 2, /--week must be one of 1, 2, 3/],
      ['convert without --out', ['convert', '--quantize', 'q4'], 2, /--quantize q4\|q8 and --out DIR are required/],
      ['convert to 3 bits', ['convert', '--quantize', 'q3', '--out', join(tmp, 'q3')], 2, /--quantize must be one of q4, q8, got q3/],
      [
        'convert of a quantized model',
        ['convert', '--model', 'fixtures/models/qwen2-tiny-4bit', '--quantize', 'q8', '--out', join(tmp, 'q8')],
        1,
        /already quantized \(4 bits, group 64\)/,
      ],
    ];
    const results = await Promise.all(cases.map(([, args]) => cli(args)));
    for (const [i, [what, , code, message]] of cases.entries()) {
      const r = results[i];
      expect(r.code, `${what}: ${r.stderr}`).toBe(code);
      expect(r.stderr, what).toMatch(message);
      expect(r.stderr, what).toMatch(/^(loaded .*\n)?tiny-llm: [^\n]+\n$/); // one line (after the load line, if any)
      expect(r.stderr, what).not.toMatch(/\n\s+at /); // no stack frames
      expect(r.stdout, what).toBe('');
    }
  });

  it("--solution learner: runs the learner's model, or says plainly which chapter is missing", async () => {
    for (const week of [[], ['--week', '1'], ['--week', '2'], ['--week', '3']]) {
      const r = await cli(['generate', '--solution', 'learner', ...week, '--prompt', 'def f(x):\n', '--max-tokens', '2']);
      const what = `--solution learner ${week.join(' ')}: ${r.stderr}`;
      if (r.code === 0) {
        // The learner's model is written: it generated, and said which model ran.
        expect(r.stderr, what).toMatch(/the learner's week \d model/);
        expect(r.stderr, what).toMatch(/generated \d+ tokens/);
      } else {
        expect(r.code, what).toBe(1);
        expect(r.stderr, what).toMatch(
          /^(loaded .*\n)?tiny-llm: the learner's chapter \d\.\d is not implemented yet; run with --solution reference or finish packages\/week\d\/src\/[\w-]+\.ts/,
        );
      }
    }
  });
});

describe('batch: many prompts through continuous batching', () => {
  const jsonl = (rows: object[]) => {
    const path = join(tmp, `prompts-${Math.random().toString(36).slice(2)}.jsonl`);
    writeFileSync(path, `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`);
    return path;
  };

  it('every golden prompt of the demo model, 4 at a time, chunks of 64: each line its golden text, in input order', async () => {
    const g = golden('tiny-qwen2-py');
    const prompts = jsonl(g.cases.map((c) => ({ prompt: c.prompt, max_tokens: 48, ignore_eos: true })));
    for (const choice of [[], ['--solution', 'reference', '--week', '2']]) {
      const r = await cli(['batch', ...choice, '--prompts', prompts, '--max-batch', '4', '--prefill-chunk', '64']);
      expect(r.code, r.stderr).toBe(0);
      const lines = r.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      expect(lines.map((l) => l.index)).toEqual(g.cases.map((_, i) => i));
      lines.forEach((l, i) => {
        expect(l.text, `line ${i} (${choice.join(' ') || 'the engine'})`).toBe(g.cases[i].greedy_text);
        expect([l.tokens, l.finish_reason]).toEqual([48, 'length']);
      });
      expect(r.stderr).toMatch(/\[7 prompts, 336 tokens generated in [\d.]+ s: [\d.]+ tok\/s\]/);
    }
  });

  it('bad input: a one-line message naming the file, the line and the field', async () => {
    const cases: [string, string[], RegExp][] = [
      ['no --prompts', ['batch'], /--prompts FILE.jsonl is required/],
      ['a missing file', ['batch', '--prompts', join(tmp, 'nowhere.jsonl')], /nowhere.jsonl: cannot read it \(ENOENT\)/],
      [
        'an unknown field',
        ['batch', '--prompts', jsonl([{ prompt: 'a' }, { prompt: 'b', max_token: 3 }])],
        /line 2: unknown field "max_token"/,
      ],
      ['a bad value', ['batch', '--prompts', jsonl([{ prompt: 'a', temperature: -1 }])], /line 1: bad value for "temperature": -1/],
      ['an empty prompt', ['batch', '--prompts', jsonl([{ prompt: '' }])], /prompt 0: the prompt is empty/],
      ['week 1 has no cache', ['batch', '--week', '1', '--prompts', jsonl([{ prompt: 'a' }])], /batching needs a model with a KV cache/],
      [
        'a KV cache too small for a request',
        ['batch', '--kv-cache-mb', '1', '--prompts', jsonl([{ prompt: 'a', max_tokens: 300 }])],
        /prompt 0: the request may reach 301 tokens .* the pool has 8 pages in all/,
      ],
      [
        'KV cache flags on week 2',
        ['batch', '--week', '2', '--no-prefix-cache', '--prompts', jsonl([{ prompt: 'a' }])],
        /--kv-cache-mb and --no-prefix-cache set the engine's paged KV cache/,
      ],
    ];
    const broken = join(tmp, 'broken.jsonl');
    writeFileSync(broken, '{"prompt": "a"}\n{"prompt": \n');
    cases.push(['a truncated line', ['batch', '--prompts', broken], /line 2: not JSON/]);
    const results = await Promise.all(cases.map(([, args]) => cli(args)));
    cases.forEach(([what, , message], i) => {
      expect(results[i].code, `${what}: ${results[i].stderr}`).not.toBe(0);
      expect(results[i].stderr, what).toMatch(message);
      expect(results[i].stderr, what).toMatch(/^(batch: .*\n)?tiny-llm: [^\n]+\n$/);
    });
  });
});

describe('flags, random weights, the bench accounting', () => {
  it('parseFlags: --flag value, --flag=value, booleans, types and ranges', () => {
    const spec = COMMANDS.generate.flags;
    expect(parseFlags('generate', ['--prompt', '--not-a-flag', '--top-p=0.9', '--ignore-eos', '--max-tokens', '5'], spec)).toEqual({
      prompt: '--not-a-flag',
      'top-p': 0.9,
      'ignore-eos': true,
      'max-tokens': 5,
    });
    expect(() => parseFlags('generate', ['--top-p', '1.5'], spec)).toThrow(UsageError);
    expect(() => parseFlags('generate', ['--max-tokens', '2.5'], spec)).toThrow(/integer/);
    expect(() => parseFlags('generate', ['--prompt', 'a', '--prompt', 'b'], spec)).toThrow(/twice/);
    expect(() => parseFlags('generate', ['stray'], spec)).toThrow(/unexpected argument/);
    expect(() => parseFlags('generate', ['--max-tokens', '--ignore-eos'], spec)).toThrow(/needs a value/);
    // Written with =, a value may be anything, even one of the command's flags.
    expect(parseFlags('generate', ['--prompt=--ignore-eos'], spec)).toEqual({ prompt: '--ignore-eos' });
    expect(() => parseFlags('generate', ['-p', 'x'], spec)).toThrow(/unknown flag -p/);
    expect(() => parseFlags('generate', ['--solution', 'mine'], spec)).toThrow(/--solution must be one of learner, reference, got mine/);
  });

  it('random weights of every dtype build a model whose logits are finite; q4/q8 dequantize to ~N(0, 0.02)', () => {
    const config = tc.parseModelConfig({
      model_type: 'qwen2',
      hidden_size: 128,
      intermediate_size: 256,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      vocab_size: 320,
      max_position_embeddings: 64,
      tie_word_embeddings: true,
      rope_theta: 1e6,
    });
    for (const dtype of ['f32', 'bf16', 'q4', 'q8'] as const) {
      const weights = new RandomWeights(config, { dtype, seed: 3 });
      const model = new EngineQwen2(Qwen2Model.fromWeights(config, weights.get));
      const logits = model.allLogits([1, 2, 3, 4, 5]);
      expect(logits.shape).toEqual([5, 320]);
      expect(Array.from(logits.toArray()).every(Number.isFinite), dtype).toBe(true);
      const embed = weights.get('model.embed_tokens.weight')!;
      const values = Array.from((embed instanceof tc.QuantizedWeight ? tc.dequantize(embed) : embed).toArray());
      const mean = values.reduce((a, b) => a + b, 0) / values.length;
      const std = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length);
      expect(Math.abs(mean), dtype).toBeLessThan(2e-3);
      expect(std, dtype).toBeGreaterThan(0.018);
      expect(std, dtype).toBeLessThan(0.022);
      expect(embed instanceof tc.QuantizedWeight, dtype).toBe(dtype === 'q4' || dtype === 'q8');
      // Seeded: the same seed gives the same values.
      const again = new RandomWeights(config, { dtype, seed: 3 }).get('model.layers.1.mlp.up_proj.weight')!;
      const first = weights.get('model.layers.1.mlp.up_proj.weight')!;
      const raw = (w: typeof first) => (w instanceof tc.QuantizedWeight ? w.weight : w).toArray();
      expect(raw(again)).toEqual(raw(first));
    }
  });

  it("Qwen2-0.5B's bytes per decoded token: ~0.99 GB in bf16, ~0.28 GB in q4 (docs/architecture.md, Performance)", () => {
    const config = tc.readModelConfig(join(ROOT, 'fixtures/configs/Qwen2-0.5B-Instruct.json'));
    const bf16 = weightTraffic(randomEntries(new RandomWeights(config, { dtype: 'bf16' })), config);
    const q4 = weightTraffic(randomEntries(new RandomWeights(config, { dtype: 'q4' })), config);
    expect(bf16.params / 1e6).toBeCloseTo(494, 0);
    expect(bf16.bytesPerToken / 1e9).toBeCloseTo(0.99, 1);
    expect(q4.bytesPerToken / 1e9).toBeCloseTo(0.28, 1);
    // Prefill: about 2 FLOPs per parameter, the tied head counted once per prompt.
    const flops = prefillFlopsPerToken(bf16, config, 128);
    expect(flops / (2 * bf16.params)).toBeGreaterThan(0.7);
    expect(flops / (2 * bf16.params)).toBeLessThan(1);
  });

  it.each([
    ['the engine', []],
    ['its tensor-parallel group', ['--tensor-parallel', '2']],
  ])('bench --batch, %s: the batch rate, the prefill rate measured between its steps, and their ratio', async (what, extra) => {
    const json = join(tmp, `bench-batch-${extra.length}.json`);
    const r = await cli(['bench', ...extra, '--prompt-len', '16', '--gen', '16', '--reps', '1', '--batch', '3', '--json', json]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /decode at batch 3: [\d.]+ tok\/s aggregate = [\d.]+ of the prefill rate measured between its steps \([\d.]+ tok\/s\)/,
    );
    const report = JSON.parse(readFileSync(json, 'utf8'));
    expect(report.batch).toBe(3);
    expect(report.batch_decode_tokens_per_s).toBeGreaterThan(0);
    expect(report.batch_prefill_tokens_per_s).toBeGreaterThan(0);
    expect(report.batch_decode_ratio_to_prefill).toBeCloseTo(report.batch_decode_tokens_per_s / report.batch_prefill_tokens_per_s, 6);
  });
});

// Keep the fixture paths honest: the tests above rely on them.
it('the demo models and fixtures are where the tests expect them', () => {
  for (const m of MODELS) expect(existsSync(join(ROOT, 'models', m, 'tools.json')), m).toBe(true);
  expect(existsSync(join(ROOT, 'fixtures/models/qwen2-tiny/golden.safetensors'))).toBe(true);
});

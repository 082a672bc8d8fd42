// Speculative decoding in the engine (chapter 3.4's solution on the engine's models, through generateSpeculative
// and `tiny-llm generate --draft-model`): the demo draft drafting for the demo model gives the target's golden
// greedy tokens of every prompt, in-process and through the CLI, with the acceptance in the stats; sampled, a
// seed repeats its output; and a draft that cannot serve (another tokenizer, another vocabulary, no KV cache,
// k <= 0) is a one-line error before anything is generated.
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { demoGolden } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { afterAll, describe, expect, it } from 'vitest';
import { generateSpeculative, type GenerateResult } from '../src/generate.ts';
import { loadModel } from '../src/registry.ts';
import { cli, ROOT } from './support/cli.ts';

const TARGET = join(ROOT, 'models/tiny-qwen2-py');
const DRAFT = join(ROOT, 'models/tiny-qwen2-py-draft');
const golden = demoGolden('tiny-qwen2-py');

async function runAll(it: AsyncGenerator<unknown, GenerateResult>): Promise<GenerateResult> {
  for (;;) {
    const step = await it.next();
    if (step.done) return step.value;
  }
}

describe('generateSpeculative: tiny-qwen2-py-draft drafting for tiny-qwen2-py (the engine)', () => {
  it("every golden prompt, k = 4, greedy: the target's own 48 tokens; the stats count what was drafted and kept", async () => {
    const [target, draft] = await Promise.all([loadModel(TARGET), loadModel(DRAFT)]);
    const tokenizer = loadTokenizer(TARGET);
    for (const c of golden.cases) {
      const r = await runAll(
        generateSpeculative(target, draft, tokenizer, c.ids, { maxTokens: golden.max_new_tokens, ignoreEos: true, numDraft: 4 }),
      );
      expect(r.tokens, `${c.kind} prompt of ${c.ids.length} tokens`).toEqual(c.greedy);
      expect(r.text).toBe(c.greedy_text);
      const s = r.stats.speculative!;
      expect(s.numDraft).toBe(4);
      expect(s.accepted, 'accepted <= drafted').toBeLessThanOrEqual(s.drafted);
      // Each round adds its accepted tokens and one of the target's; the last round may be cut at 48.
      expect(s.accepted + s.rounds, 'tokens of all rounds').toBeGreaterThanOrEqual(48);
      expect(s.accepted + s.rounds - 48, 'at most one round past the 48th token').toBeLessThanOrEqual(4);
    }
  });

  it('the week 2 and week 3 chapter models run it too; sampled with a seed, the output repeats', async () => {
    const tokenizer = loadTokenizer(TARGET);
    const c = golden.cases[0];
    for (const week of [2, 3] as const) {
      const [target, draft] = await Promise.all([
        loadModel(TARGET, { solution: 'reference', week }),
        loadModel(DRAFT, { solution: 'reference', week }),
      ]);
      const r = await runAll(generateSpeculative(target, draft, tokenizer, c.ids, { maxTokens: 24, ignoreEos: true, numDraft: 3 }));
      expect(r.tokens, `week ${week}`).toEqual(c.greedy.slice(0, 24));
    }
    const [target, draft] = await Promise.all([loadModel(TARGET), loadModel(DRAFT)]);
    const sampled = async () =>
      (await runAll(generateSpeculative(target, draft, tokenizer, c.ids, { maxTokens: 32, temperature: 0.8, seed: 5, numDraft: 3 })))
        .tokens;
    expect(await sampled(), 'the same seed, the same tokens').toEqual(await sampled());
  });

  it('a model without a KV cache cannot be rewound: a clear error', async () => {
    const [target, draft] = await Promise.all([loadModel(TARGET), loadModel(DRAFT, { solution: 'reference', week: 1 })]);
    await expect(generateSpeculative(target, draft, loadTokenizer(TARGET), [1, 2], { numDraft: 2 }).next()).rejects.toThrow(
      /needs models with a KV cache/,
    );
  });
});

// ---- the CLI ---------------------------------------------------------------------------------------------------

const tmp = mkdtempSync(join(tmpdir(), 'tiny-llm-speculative-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A copy of the draft model with one of its JSON files changed. */
// biome-ignore lint/suspicious/noExplicitAny: a model file's JSON, changed field by field
function draftWith(name: string, file: string, change: (json: Record<string, any>) => void): string {
  const dir = join(tmp, name);
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(DRAFT)) copyFileSync(join(DRAFT, f), join(dir, f));
  const json = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  change(json);
  writeFileSync(join(dir, file), JSON.stringify(json));
  return dir;
}

describe('tiny-llm generate --draft-model (spawned)', () => {
  it('prints the golden text, then the acceptance and the speed-up over the target alone', async () => {
    const c = golden.cases[2];
    const r = await cli([
      'generate',
      '--draft-model',
      'models/tiny-qwen2-py-draft',
      '--num-draft',
      '3',
      '--prompt',
      c.prompt,
      '--max-tokens',
      '48',
      '--ignore-eos',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(c.greedy_text);
    expect(r.stderr).toMatch(/generated 48 tokens; prefill [\d.]+ tok\/s, decode [\d.]+ tok\/s/);
    expect(r.stderr).toMatch(/speculative decoding, k = 3: \d+ of \d+ drafted tokens accepted \([\d.]+%\), [\d.]+ tokens per target pass/);
    expect(r.stderr).toMatch(/the target alone on this prompt: decode [\d.]+ tok\/s; speed-up [\d.]+x/);
  });

  it('bad input: a one-line error before anything is generated', async () => {
    const otherTokenizer = draftWith('other-tokenizer', 'tokenizer.json', (t) => {
      // Two tokens swap ids: the same size, another vocabulary.
      const vocab = t.model.vocab as Record<string, number>;
      const [a, b] = Object.keys(vocab).slice(300, 302);
      [vocab[a], vocab[b]] = [vocab[b], vocab[a]];
    });
    // The fixture model of 512 tokens with the demo tokenizer: the tokenizers agree, the vocabularies do not.
    const otherVocab = join(tmp, 'other-vocab');
    mkdirSync(otherVocab);
    for (const f of readdirSync(join(ROOT, 'fixtures/models/qwen2-tiny')))
      copyFileSync(join(ROOT, 'fixtures/models/qwen2-tiny', f), join(otherVocab, f));
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(DRAFT, f), join(otherVocab, f));
    const cases: [string, string[], number, RegExp][] = [
      ['k = 0', ['--draft-model', 'models/tiny-qwen2-py-draft', '--num-draft', '0'], 2, /--num-draft must be >= 1/],
      ['--num-draft alone', ['--num-draft', '2'], 2, /--num-draft needs --draft-model DIR/],
      ['no such draft', ['--draft-model', join(tmp, 'nowhere')], 1, /--draft-model .*nowhere: no such directory/],
      [
        'another tokenizer',
        ['--draft-model', otherTokenizer],
        1,
        /--draft-model .*other-tokenizer: its tokenizer is not the one of models\/tiny-qwen2-py/,
      ],
      ['another vocabulary size', ['--draft-model', otherVocab], 1, /the draft model's vocabulary has 512 tokens, the target's 8192/],
      [
        'a week 1 draft',
        ['--draft-model', 'models/tiny-qwen2-py-draft', '--solution', 'reference', '--week', '1'],
        1,
        /needs models with a KV cache/,
      ],
    ];
    const results = await Promise.all(cases.map(([, args]) => cli(['generate', '--prompt', 'def f(x):', ...args])));
    cases.forEach(([what, , code, message], i) => {
      const r = results[i];
      expect(r.code, `${what}: ${r.stderr}`).toBe(code);
      expect(r.stderr, what).toMatch(message);
      expect(r.stderr, what).toMatch(/^(loaded .*\n)*tiny-llm: [^\n]+\n$/);
      expect(r.stdout, `${what}: nothing generated`).toBe('');
    });
  });
});

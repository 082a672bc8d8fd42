// Chapter 1.6, graded: greedy generation with the week 1 model (no KV cache) on the two dense demo models in
// models/, against their golden.json: 48 greedy tokens per prompt and their text, computed by transformers in
// float32 from the same bf16 weights, without stopping at end-of-sequence tokens. The code prompts are raw
// text; the chat prompts are already rendered through the chat template (golden.json holds the rendered
// text), so every prompt goes to simpleGenerate as it is.
//
// Without a KV cache every step runs the whole sequence through the model again, so the ~270-token chat
// prompts take several seconds each: the slowest tests of week 1 (week 2's KV cache makes them fast).
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { demoGolden, MODELS_DIR, type DemoGoldenCase } from '@tiny-llm/tensor-core/testing';
import { argmaxAxisMistake, errorOf } from '@tiny-llm/grading';
import { loadTokenizer, type TinyTokenizer } from '@tiny-llm/tokenizer';
import { assert, describe, expect, it } from 'vitest';
import { Qwen2ModelWeek1, simpleGenerate } from '@solution/week1';

const MAX_TOKENS = 48;

/** Generated tokens against the golden ones: the first difference, as ids and text, and what it suggests. */
function expectTokens(got: readonly number[], c: DemoGoldenCase, tokenizer: TinyTokenizer): void {
  const t = c.greedy.findIndex((id, i) => got[i] !== id);
  if (t < 0 && got.length === c.greedy.length) return;
  const at = t < 0 ? got.length : t;
  const say = (id: number | undefined) => (id === undefined ? 'nothing' : `${id} ${JSON.stringify(tokenizer.decode([id]))}`);
  const why = argmaxAxisMistake(got, c.ids.length);
  assert.fail(
    `generated token ${at}: got ${say(got[at])}, expected ${say(c.greedy[at])} (after ${at} matching tokens)` +
      (why ? `.\nIt looks like ${why}` : ''),
  );
}

/** A short name for a prompt in the test titles. */
function titleOf(c: DemoGoldenCase): string {
  const text = c.kind === 'chat' ? (c.messages?.at(-1)?.content ?? '') : c.prompt;
  return `${c.kind} prompt ${JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}...` : text)} (${c.ids.length} tokens)`;
}

for (const name of ['tiny-qwen2-py', 'tiny-qwen2-py-draft']) {
  const dir = `${MODELS_DIR}${name}`;
  const golden = demoGolden(name);
  if (golden.max_new_tokens !== MAX_TOKENS) throw new Error(`${dir}/golden.json: expected ${MAX_TOKENS} new tokens per case`);
  const tokenizer = loadTokenizer(dir);
  // Loaded by the first test that needs it (a failed load fails each test with its own error).
  let loaded: Qwen2ModelWeek1 | undefined;
  const model = () => (loaded ??= Qwen2ModelWeek1.load(dir));

  describe(`1.6 generate: ${name}, greedy, ${MAX_TOKENS} tokens, ignoring EOS`, () => {
    for (const c of golden.cases) {
      it(`${titleOf(c)}: the golden tokens, the golden text, and the same text streamed`, () => {
        // The tokenizer is given (not part of the chapter): check that it reads the prompt as the golden did.
        expect(tokenizer.encode(c.prompt), 'the prompt ids (from the tokenizer package, not your code)').toEqual(c.ids);
        const chunks: string[] = [];
        const out = simpleGenerate(model(), tokenizer, c.prompt, {
          maxTokens: MAX_TOKENS,
          ignoreEos: true,
          onText: (text) => chunks.push(text),
        });
        expectTokens(out.tokens, c, tokenizer);
        expect(out.text, 'the generated text: decoded with special tokens kept, as the golden').toBe(c.greedy_text);
        expect(chunks.join(''), 'the text passed to onText, joined, must be the returned text').toBe(out.text);
        expect(chunks.length, 'onText must receive the text as it is generated, not all at the end').toBeGreaterThan(1);
      });
    }

    it('maxTokens: stops after that many tokens', () => {
      const c = golden.cases[0];
      const out = simpleGenerate(model(), tokenizer, c.prompt, { maxTokens: 5, ignoreEos: true });
      expectTokens(out.tokens, { ...c, greedy: c.greedy.slice(0, 5) }, tokenizer);
      expect(out.text).toBe(tokenizer.decode(c.greedy.slice(0, 5)));
    });
  });

  describe(`1.6 generate: ${name}, stopping at EOS`, () => {
    const eos = new Set(tokenizer.eosTokenIds);
    // The prompt whose golden run (made without stopping) reaches an end-of-sequence token soonest: the chat
    // model ends its answer to "Hello!" with <|im_end|> after 9 tokens (and its tool calls after ~25).
    const firstEos = (g: DemoGoldenCase) => g.greedy.findIndex((id) => eos.has(id));
    const candidates = golden.cases.filter((g) => firstEos(g) >= 0).sort((a, b) => firstEos(a) - firstEos(b));
    if (candidates.length === 0)
      throw new Error(`${dir}/golden.json: no case reaches one of the eos ids ${[...eos]}; the EOS test needs one`);
    const c = candidates[0];
    const stop = firstEos(c);

    it(`${titleOf(c)}: ends at the EOS token (after ${stop} tokens), with no text after it`, () => {
      const chunks: string[] = [];
      const out = simpleGenerate(model(), tokenizer, c.prompt, { maxTokens: MAX_TOKENS, onText: (text) => chunks.push(text) });
      const expected = c.greedy.slice(0, stop);
      expect(out.tokens, `the tokens before the EOS ${c.greedy[stop]} (which is not returned)`).toEqual(expected);
      expect(out.text).toBe(tokenizer.decode(expected));
      expect(chunks.join('')).toBe(out.text);
      // The golden text goes on past the EOS (it was made without stopping); none of that may appear.
      expect(c.greedy_text.startsWith(out.text)).toBe(true);
      expect(out.text.length).toBeLessThan(c.greedy_text.length);
    });
  });
}

/**
 * A model that plays a script: at each step its logits are one-hot at the next scripted token, whatever the
 * input. It stands in for Qwen2ModelWeek1 to test the generation loop alone.
 */
function scriptedModel(script: readonly number[], promptLength: number, vocab: number): Qwen2ModelWeek1 {
  const forward = (ids: Tensor): Tensor => {
    const [, l] = ids.shape;
    const logits = new Float32Array(l * vocab);
    const next = script[l - promptLength] ?? 0;
    logits[(l - 1) * vocab + next] = 1;
    return tc.tensor(logits, { shape: [1, l, vocab] });
  };
  return { forward } as unknown as Qwen2ModelWeek1;
}

describe('1.6 generate: the loop itself, on a scripted model', () => {
  const tokenizer = loadTokenizer(`${MODELS_DIR}tiny-qwen2-py`);
  const vocab = 151936;
  const prompt = 'x = ';
  const promptLength = tokenizer.encode(prompt).length;
  // Byte-level BPE has a token per byte: "é" is the two bytes C3 A9, written as the tokens "Ã" and "©".
  const byte = (token: string) => {
    const id = tokenizer.tokenToId(token);
    if (id === undefined) throw new Error(`the demo tokenizer has no token ${JSON.stringify(token)}`);
    return id;
  };

  it('streams a character split across tokens only once it is whole (no U+FFFD, no half characters)', () => {
    const script = [byte('Ã'), byte('©'), ...tokenizer.encode(' caf'), byte('Ã'), byte('©')];
    const chunks: string[] = [];
    const out = simpleGenerate(scriptedModel(script, promptLength, vocab), tokenizer, prompt, {
      maxTokens: script.length,
      ignoreEos: true,
      onText: (text) => chunks.push(text),
    });
    expect(out.tokens, 'the scripted tokens').toEqual(script);
    expect(out.text).toBe('é café');
    for (const chunk of chunks) {
      expect(
        chunk,
        `a streamed piece ${JSON.stringify(chunk)} holds a broken character: decoding one token at a time? Use tokenizer.detokenizer()`,
      ).not.toMatch(/\uFFFD/);
    }
    expect(chunks.join('')).toBe('é café');
  });

  it('an empty prompt: a RangeError that says so (there is no token to continue from)', () => {
    const error = errorOf(() => simpleGenerate(scriptedModel([], 0, vocab), tokenizer, '', { maxTokens: 3 }));
    expect(error, 'a RangeError').toBeInstanceOf(RangeError);
    expect(error.message).toMatch(/empty/);
  });

  it('picks every token with options.sampler when one is given', () => {
    const chosen = tokenizer.encode(' ok')[0];
    const seen: number[][] = [];
    const sampler = (logits: Tensor): Tensor => {
      seen.push([...logits.shape]);
      return tc.tensor([chosen], { dtype: 'int32' });
    };
    const script = tokenizer.encode(' something else entirely');
    const out = simpleGenerate(scriptedModel(script, promptLength, vocab), tokenizer, prompt, { maxTokens: 3, ignoreEos: true, sampler });
    expect(seen, "the sampler is called once per generated token, with the last position's logits [1, vocab]").toEqual([
      [1, vocab],
      [1, vocab],
      [1, vocab],
    ]);
    expect(out.tokens, "the sampler's picks, not the argmax").toEqual([chosen, chosen, chosen]);
  });
});

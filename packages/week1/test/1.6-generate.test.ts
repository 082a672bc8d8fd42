// Chapter 1.6, graded: greedy generation with the week 1 model (no KV cache) on the two dense demo models in
// models/, against their golden.json: 48 greedy tokens per prompt and their text, computed by transformers in
// float32 from the same bf16 weights, without stopping at end-of-sequence tokens. The code prompts are raw
// text; the chat prompts are already rendered through the chat template (golden.json holds the rendered
// text), so every prompt goes to simpleGenerate as it is.
//
// Without a KV cache every step runs the whole sequence through the model again, so the ~270-token chat
// prompts take several seconds each: the slowest tests of week 1 (week 2's KV cache makes them fast).
import { demoGolden, MODELS_DIR, type DemoGoldenCase } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { describe, expect, it } from 'vitest';
import { Qwen2ModelWeek1, simpleGenerate } from '@solution/week1';

const MAX_TOKENS = 48;

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
        expect(out.tokens, 'the generated token ids').toEqual(c.greedy);
        expect(out.text, 'the generated text: decoded with special tokens kept, as the golden').toBe(c.greedy_text);
        expect(chunks.join(''), 'the text passed to onText, joined, must be the returned text').toBe(out.text);
        expect(chunks.length, 'onText must receive the text as it is generated, not all at the end').toBeGreaterThan(1);
      });
    }

    it('maxTokens: stops after that many tokens', () => {
      const c = golden.cases[0];
      const out = simpleGenerate(model(), tokenizer, c.prompt, { maxTokens: 5, ignoreEos: true });
      expect(out.tokens).toEqual(c.greedy.slice(0, 5));
      expect(out.text).toBe(tokenizer.decode(c.greedy.slice(0, 5)));
    });
  });

  describe(`1.6 generate: ${name}, stopping at EOS`, () => {
    const eos = new Set(tokenizer.eosTokenIds);
    // The prompt whose golden run (made without stopping) reaches an end-of-sequence token soonest: the chat
    // model ends its answer to "Hello!" with <|im_end|> after 9 tokens (and its tool calls after ~25).
    const firstEos = (g: DemoGoldenCase) => g.greedy.findIndex((id) => eos.has(id));
    const candidates = golden.cases.filter((g) => firstEos(g) >= 0).sort((a, b) => firstEos(a) - firstEos(b));
    if (candidates.length === 0) throw new Error(`${dir}/golden.json: no case reaches one of the eos ids ${[...eos]}; the EOS test needs one`);
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

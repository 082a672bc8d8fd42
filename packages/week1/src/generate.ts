import type { TinyTokenizer } from '@tiny-llm/tokenizer';
import { NotImplemented } from './not-implemented.ts';
import type { Sampler } from './sampler.ts';
import type { Qwen2ModelWeek1 } from './qwen2-week1.ts';

export interface GenerateOptions {
  /** Picks the next token from the last position's logits [1, V]; greedy (tc.argmax(logits, -1)) by default. */
  sampler?: Sampler;
  /** The most tokens to generate (default 48). */
  maxTokens?: number;
  /** Keep going past end-of-sequence tokens (the goldens are generated that way). */
  ignoreEos?: boolean;
  /** Receives the text as it is generated, in pieces that end on whole characters. */
  onText?: (text: string) => void;
}

export interface GenerateResult {
  /** The generated text (not including the prompt, nor the end-of-sequence token that stopped it). */
  text: string;
  /** The generated token ids (not including the prompt, nor the end-of-sequence token that stopped it). */
  tokens: number[];
}

/**
 * Completes `prompt` as it is (no chat template: a chat prompt arrives already rendered).
 *
 * 1. ids = tokenizer.encode(prompt); an empty prompt (no ids) is a RangeError that says so: there is no
 *    token to continue from.
 * 2. Loop while fewer than maxTokens tokens are generated:
 *    - logits = model.forward(int32 tensor [1, L] of the prompt ids and the tokens generated so far);
 *    - keep the last position, `tc.slice(logits, [null, -1])` -> [1, V], and pick the next token with the
 *      sampler (`.item()` reads the number);
 *    - if it is one of tokenizer.eosTokenIds (and not ignoreEos), stop without adding it;
 *    - append it, push it into a detokenizer (`tokenizer.detokenizer()`, created once) and pass the text
 *      that push returns to onText (skip empty strings).
 * 3. At the end, flush the detokenizer (to onText too) and return the text and the tokens.
 * Run each step in `tc.tidy(() => ...)` (returning the token number) so that its tensors are freed.
 * There is no KV cache: every step runs the whole sequence again. Week 2 fixes that.
 */
export function simpleGenerate(
  model: Qwen2ModelWeek1,
  tokenizer: TinyTokenizer,
  prompt: string,
  options: GenerateOptions = {},
): GenerateResult {
  throw new NotImplemented('1.6', 'simpleGenerate');
}

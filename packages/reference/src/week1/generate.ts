// Chapter 1.6: generating text. Run the model on the prompt, pick the next token from the last position's
// logits, append it, and run the model again on the longer sequence, until an end-of-sequence token or the
// token budget. There is no KV cache yet, so every step recomputes the whole sequence (week 2 fixes that).
import * as tc from '@tiny-llm/tensor-core';
import type { TinyTokenizer } from '@tiny-llm/tokenizer';
import type { Sampler } from './sampler.ts';
import type { Qwen2ModelWeek1 } from './qwen2-week1.ts';

export interface GenerateOptions {
  /** Picks the next token from the last position's logits [1, vocab]; greedy (argmax) by default. */
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

const greedy: Sampler = (logits) => tc.argmax(logits, -1);

/**
 * Completes `prompt` as it is (no chat template: render one with tokenizer.applyChatTemplate first). Stops
 * after maxTokens tokens or at one of tokenizer.eosTokenIds (unless ignoreEos), and streams the text through
 * an incremental detokenizer to onText.
 */
export function simpleGenerate(
  model: Qwen2ModelWeek1,
  tokenizer: TinyTokenizer,
  prompt: string,
  options: GenerateOptions = {},
): GenerateResult {
  const { sampler = greedy, maxTokens = 48, ignoreEos = false, onText } = options;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) {
    throw new RangeError(`simpleGenerate: maxTokens must be an integer >= 0, got ${maxTokens}`);
  }
  const ids = tokenizer.encode(prompt);
  if (ids.length === 0) throw new RangeError('simpleGenerate: the prompt is empty (there is no token to continue from)');
  const eos = new Set(tokenizer.eosTokenIds);
  const detokenizer = tokenizer.detokenizer();
  const emit = (text: string) => {
    if (text && onText) onText(text);
  };
  const tokens: number[] = [];
  while (tokens.length < maxTokens) {
    const next = tc.tidy(() => {
      // The whole sequence again, every step: [1, L] -> logits [1, L, vocab]; only the last row matters.
      const logits = model.forward(tc.tensor([...ids, ...tokens], { dtype: 'int32', shape: [1, ids.length + tokens.length] }));
      const last = tc.slice(logits, [null, -1]); // [1, vocab]
      return sampler(last).item();
    });
    if (!ignoreEos && eos.has(next)) break;
    tokens.push(next);
    emit(detokenizer.push(next));
  }
  emit(detokenizer.flush());
  return { text: detokenizer.text, tokens };
}

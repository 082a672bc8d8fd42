// The engine's generation loop: prefill the prompt through a Session (reusing whatever prefix the session
// already holds), then sample one token at a time, stream the text through the incremental detokenizer, and
// stop at an end-of-sequence id, the token budget, or the model's context. Timing stats come with the result.
//
// generateTokens is an async generator (one event per token): the sampled token is read back from the model's
// device, which on a GPU means waiting for it (on the CPU the value is there at once). Callers choose how to
// drive it: the CLI writes each piece of text as it comes (streamGenerate also yields to the event loop between
// tokens, so that Ctrl-C and other I/O are served), and a server can run it in a worker.
import type { Tensor } from '@tiny-llm/tensor-core';
import type { TinyTokenizer } from '@tiny-llm/tokenizer';
import { makeSampler, type Sampler, type SamplerOptions } from '@tiny-llm/reference/week1';
import { UserError } from './errors.ts';
import type { EngineModel, Session } from './session.ts';

export interface GenerateOptions extends SamplerOptions {
  /** The most tokens to generate (default 256). */
  maxTokens?: number;
  /** Keep going past end-of-sequence ids (the goldens are made that way). */
  ignoreEos?: boolean;
  /** The ids that end generation (default: the tokenizer's eosTokenIds). */
  stopIds?: readonly number[];
  /** Picks each token from logits [1, V]; default makeSampler(options) (greedy at temperature 0). */
  sampler?: Sampler;
  /** Stops generation (reason 'aborted') at the next token. */
  signal?: AbortSignal;
}

export type StopReason = 'eos' | 'length' | 'context' | 'aborted';

export interface GenerateStats {
  /** Tokens of the prompt. */
  promptTokens: number;
  /** Of those, tokens whose cache the session already held (a chat's earlier turns): not prefilled again. */
  reusedTokens: number;
  /** Tokens generated (the end-of-sequence id that stopped generation is not counted). */
  generatedTokens: number;
  /** Time to the first token: prefill of the new prompt tokens plus sampling. */
  prefillSeconds: number;
  /** From the first token to the last. */
  decodeSeconds: number;
  /** New prompt tokens per second of prefill. */
  prefillTokensPerS: number;
  /** Tokens after the first per second of decode (0 when fewer than 2 tokens). */
  decodeTokensPerS: number;
  stopReason: StopReason;
}

export interface GenerateResult {
  /** The generated text (special tokens included, as the detokenizer decodes them). */
  text: string;
  tokens: number[];
  stats: GenerateStats;
}

export interface GenerateEvent {
  /** The generated token, or null for the final flush of the detokenizer. */
  token: number | null;
  /** The text this token completes ('' while a multi-byte character is still incomplete). */
  text: string;
}

/** Where a new prompt leaves the session's tokens: the length of the common prefix, minus at least one. */
function reusablePrefix(held: readonly number[], prompt: readonly number[]): number {
  let n = 0;
  while (n < held.length && n < prompt.length && held[n] === prompt[n]) n++;
  // At least one prompt token must be fed, to get the logits of the next token.
  return Math.min(n, prompt.length - 1);
}

/** Throws a UserError unless the prompt fits the model's context. */
export function checkPromptFits(model: EngineModel, promptIds: readonly number[]): void {
  const context = model.config.maxPositionEmbeddings;
  if (promptIds.length === 0) throw new UserError('the prompt is empty: there is no token to continue from');
  if (promptIds.length > context) {
    throw new UserError(
      `the prompt has ${promptIds.length} tokens, more than the model's context of ${context} (max_position_embeddings)`,
    );
  }
  const vocab = model.config.vocabSize;
  const bad = promptIds.find((id) => !Number.isInteger(id) || id < 0 || id >= vocab);
  if (bad !== undefined) throw new UserError(`token id ${bad} is outside the vocabulary (0..${vocab - 1})`);
}

/**
 * Generates after promptIds, one event per token. The session keeps the prompt and the generated tokens (all
 * but the last, which is never fed back), so the next call on it reuses them.
 */
export async function* generateTokens(
  model: EngineModel,
  session: Session,
  tokenizer: Pick<TinyTokenizer, 'eosTokenIds' | 'detokenizer'>,
  promptIds: readonly number[],
  options: GenerateOptions = {},
): AsyncGenerator<GenerateEvent, GenerateResult> {
  const maxTokens = options.maxTokens ?? 256;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new UserError(`max tokens must be an integer >= 0, got ${maxTokens}`);
  checkPromptFits(model, promptIds);
  const context = model.config.maxPositionEmbeddings;
  const sampler = options.sampler ?? makeSampler(options);
  const stop = new Set(options.ignoreEos ? [] : (options.stopIds ?? tokenizer.eosTokenIds));
  const detokenizer = tokenizer.detokenizer();

  const start = performance.now();
  const reused = reusablePrefix(session.tokens, promptIds);
  session.truncate(reused);
  // The one value read back per token (the logits stay on the model's device).
  const pick = async (logits: Tensor): Promise<number> => {
    let chosen: Tensor | undefined;
    try {
      chosen = sampler(logits);
      return (await chosen.data())[0];
    } finally {
      chosen?.dispose();
      logits.dispose();
    }
  };

  const tokens: number[] = [];
  let stopReason: StopReason = 'length';
  let firstTokenAt = start;
  let lastTokenAt = start;
  let next = maxTokens > 0 ? await pick(session.feed(promptIds.slice(reused))) : -1;
  firstTokenAt = lastTokenAt = performance.now();
  while (tokens.length < maxTokens) {
    if (stop.has(next)) {
      stopReason = 'eos';
      break;
    }
    tokens.push(next);
    lastTokenAt = performance.now();
    yield { token: next, text: detokenizer.push(next) };
    if (tokens.length >= maxTokens) break;
    if (options.signal?.aborted) {
      stopReason = 'aborted';
      break;
    }
    // The token just generated sits at position session.tokens.length: it must be inside the context.
    if (session.tokens.length >= context) {
      stopReason = 'context';
      break;
    }
    next = await pick(session.feed([next]));
  }
  const tail = detokenizer.flush();
  if (tail) yield { token: null, text: tail };

  const prefillSeconds = (firstTokenAt - start) / 1e3;
  const decodeSeconds = (lastTokenAt - firstTokenAt) / 1e3;
  const newPromptTokens = promptIds.length - reused;
  return {
    text: detokenizer.text,
    tokens,
    stats: {
      promptTokens: promptIds.length,
      reusedTokens: reused,
      generatedTokens: tokens.length,
      prefillSeconds,
      decodeSeconds,
      prefillTokensPerS: prefillSeconds > 0 ? newPromptTokens / prefillSeconds : 0,
      decodeTokensPerS: tokens.length > 1 && decodeSeconds > 0 ? (tokens.length - 1) / decodeSeconds : 0,
      stopReason,
    },
  };
}

/** Runs generateTokens to the end, passing each piece of text to onText. */
export async function generate(
  model: EngineModel,
  session: Session,
  tokenizer: Pick<TinyTokenizer, 'eosTokenIds' | 'detokenizer'>,
  promptIds: readonly number[],
  options: GenerateOptions = {},
  onText?: (text: string) => void,
): Promise<GenerateResult> {
  const it = generateTokens(model, session, tokenizer, promptIds, options);
  for (;;) {
    const step = await it.next();
    if (step.done) return step.value;
    if (step.value.text && onText) onText(step.value.text);
  }
}

/** The same, yielding to the event loop after each token (so a signal handler or a server stays responsive). */
export async function* streamGenerate(
  model: EngineModel,
  session: Session,
  tokenizer: Pick<TinyTokenizer, 'eosTokenIds' | 'detokenizer'>,
  promptIds: readonly number[],
  options: GenerateOptions = {},
): AsyncGenerator<GenerateEvent, GenerateResult> {
  const it = generateTokens(model, session, tokenizer, promptIds, options);
  for (;;) {
    const step = await it.next();
    if (step.done) return step.value;
    yield step.value;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** One line of stats for stderr. */
export function formatStats(s: GenerateStats): string {
  const reused = s.reusedTokens > 0 ? ` (${s.reusedTokens} reused from the cache)` : '';
  const prefill = `prefill ${s.prefillTokensPerS.toFixed(1)} tok/s`;
  const decode = s.generatedTokens > 1 ? `decode ${s.decodeTokensPerS.toFixed(1)} tok/s` : 'decode -';
  const reason = { eos: 'end of sequence', length: 'max tokens', context: "the model's context is full", aborted: 'interrupted' }[s.stopReason];
  return `prompt ${s.promptTokens} tokens${reused}, generated ${s.generatedTokens} tokens; ${prefill}, ${decode}; stopped: ${reason}`;
}

export { makeSampler, type Sampler, type SamplerOptions };

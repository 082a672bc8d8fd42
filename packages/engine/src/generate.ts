// The engine's generation loop: prefill the prompt through a Session (reusing whatever prefix the session
// already holds), then sample one token at a time, stream the text through the incremental detokenizer, and
// stop at an end-of-sequence id, the token budget, or the model's context. Timing stats come with the result.
// With a draft model (generateSpeculative), the tokens come from chapter 3.4's speculative decoding instead,
// through the same loop.
//
// generateTokens is an async generator (one event per token): the sampled token is read back from the model's
// device, which on a GPU means waiting for it (on the CPU the value is there at once). Callers choose how to
// drive it: the CLI writes each piece of text as it comes (streamGenerate also yields to the event loop between
// tokens, so that Ctrl-C and other I/O are served), and a server can run it in a worker.
import type { Tensor } from '@tiny-llm/tensor-core';
import type { TinyTokenizer } from '@tiny-llm/tokenizer';
import { makeSampler, type Sampler, type SamplerOptions } from '@tiny-llm/reference/week1';
import { speculativeDecode, type SpeculativeRound } from '@tiny-llm/reference/week3';
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
  /** With a draft model (generateSpeculative): what it proposed and what the target kept. */
  speculative?: SpeculativeStats;
}

export interface SpeculativeStats {
  /** k, the tokens drafted per round. */
  numDraft: number;
  /** Rounds, each one forward pass of the target. */
  rounds: number;
  /** Tokens the draft proposed, and of those the target kept. */
  drafted: number;
  accepted: number;
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
    throw new UserError(`the prompt has ${promptIds.length} tokens, more than the model's context of ${context} (max_position_embeddings)`);
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
  const maxTokens = checkMaxTokens(options);
  checkPromptFits(model, promptIds);
  const sampler = options.sampler ?? makeSampler(options);
  const start = performance.now();
  const reused = reusablePrefix(session.tokens, promptIds);
  session.truncate(reused);
  const source = sessionTokens(session, promptIds.slice(reused), sampler, model.config.maxPositionEmbeddings);
  return yield* emitTokens(source, tokenizer, { ...options, maxTokens }, { start, promptTokens: promptIds.length, reusedTokens: reused });
}

/** The token after each of the session's, one at a time; done when the next one would be past the context. */
async function* sessionTokens(
  session: Session,
  newPromptIds: readonly number[],
  sampler: Sampler,
  context: number,
): AsyncGenerator<number, void> {
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
  let next = await pick(session.feed(newPromptIds));
  for (;;) {
    yield next;
    // The token just generated sits at position session.tokens.length: it must be inside the context.
    if (session.tokens.length >= context) return;
    next = await pick(session.feed([next]));
  }
}

/**
 * Tokens the draft proposes per round unless told: on the demo pair (tiny-qwen2-py-draft for tiny-qwen2-py), on
 * the CPU, 2 was the fastest (bench/speculative.ts: the target's pass over k + 1 tokens grows with k, and the
 * draft keeps 96% of 2 guesses, 91% of 4).
 */
export const DEFAULT_NUM_DRAFT = 2;

export interface SpeculativeGenerateOptions extends GenerateOptions {
  /** k: the tokens the draft proposes per round (default 4). */
  numDraft?: number;
  /** The implementation of chapter 3.4 to run (default the reference's; the CLI passes the learner's). */
  decode?: typeof speculativeDecode;
}

/**
 * Generates after promptIds with `target`, `draft` proposing numDraft tokens a round (chapter 3.4): the
 * target's own output (exactly, greedy; in distribution, sampled), in fewer target passes. The stats say how
 * many drafted tokens were kept. Each call starts fresh caches (no session prefix is reused). Chapter 3.4 reads
 * the logits back as it goes (synchronously), so both models run on the CPU.
 */
export async function* generateSpeculative(
  target: EngineModel,
  draft: EngineModel,
  tokenizer: Pick<TinyTokenizer, 'eosTokenIds' | 'detokenizer'>,
  promptIds: readonly number[],
  options: SpeculativeGenerateOptions = {},
): AsyncGenerator<GenerateEvent, GenerateResult> {
  const maxTokens = checkMaxTokens(options);
  checkPromptFits(target, promptIds);
  const numDraft = options.numDraft ?? DEFAULT_NUM_DRAFT;
  for (const [which, m] of [
    ['target', target],
    ['draft', draft],
  ] as const) {
    if (!m.decoding)
      throw new UserError(`speculative decoding needs models with a KV cache to rewind in place; the ${which} (${m.description}) has none`);
    if (m.device !== 'cpu') throw new UserError(`speculative decoding runs on the CPU; the ${which} runs on ${m.device}`);
  }
  const decode = options.decode ?? speculativeDecode;
  let rounds: Generator<SpeculativeRound, void>;
  try {
    rounds = decode(target.decoding!, draft.decoding!, promptIds, { ...options, numDraft });
  } catch (err) {
    // Its arguments are checked before anything runs: a draft of another vocabulary, k <= 0.
    if (err instanceof RangeError) throw new UserError(err.message.replace(/^speculativeDecode: /, ''), { cause: err });
    throw err;
  }
  const speculative: SpeculativeStats = { numDraft, rounds: 0, drafted: 0, accepted: 0 };
  async function* tokensOf(): AsyncGenerator<number, void> {
    try {
      for (const round of rounds) {
        speculative.rounds++;
        speculative.drafted += round.drafted;
        speculative.accepted += round.accepted;
        yield* round.tokens;
      }
    } finally {
      // Stopped early (max tokens, end of sequence): the rounds free their caches.
      rounds.return();
    }
  }
  const start = performance.now();
  const result = yield* emitTokens(
    tokensOf(),
    tokenizer,
    { ...options, maxTokens },
    { start, promptTokens: promptIds.length, reusedTokens: 0 },
  );
  return { ...result, stats: { ...result.stats, speculative } };
}

function checkMaxTokens(options: GenerateOptions): number {
  const maxTokens = options.maxTokens ?? 256;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new UserError(`max tokens must be an integer >= 0, got ${maxTokens}`);
  return maxTokens;
}

/**
 * The loop around a source of tokens: stop at an end-of-sequence id, the token budget, the signal, or the end of
 * the source (the model's context is full); stream the text through the incremental detokenizer; time it.
 */
async function* emitTokens(
  source: AsyncIterator<number, void>,
  tokenizer: Pick<TinyTokenizer, 'eosTokenIds' | 'detokenizer'>,
  options: GenerateOptions & { maxTokens: number },
  prompt: { start: number; promptTokens: number; reusedTokens: number },
): AsyncGenerator<GenerateEvent, GenerateResult> {
  const { maxTokens } = options;
  const stop = new Set(options.ignoreEos ? [] : (options.stopIds ?? tokenizer.eosTokenIds));
  const detokenizer = tokenizer.detokenizer();
  const tokens: number[] = [];
  let stopReason: StopReason = 'length';
  let step = maxTokens > 0 ? await source.next() : null;
  const firstTokenAt = performance.now();
  let lastTokenAt = firstTokenAt;
  try {
    while (step && tokens.length < maxTokens) {
      if (step.done) {
        stopReason = 'context';
        break;
      }
      const next = step.value;
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
      step = await source.next();
    }
  } finally {
    await source.return?.();
  }
  const tail = detokenizer.flush();
  if (tail) yield { token: null, text: tail };

  const prefillSeconds = (firstTokenAt - prompt.start) / 1e3;
  const decodeSeconds = (lastTokenAt - firstTokenAt) / 1e3;
  const newPromptTokens = prompt.promptTokens - prompt.reusedTokens;
  return {
    text: detokenizer.text,
    tokens,
    stats: {
      promptTokens: prompt.promptTokens,
      reusedTokens: prompt.reusedTokens,
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
  const reason = { eos: 'end of sequence', length: 'max tokens', context: "the model's context is full", aborted: 'interrupted' }[
    s.stopReason
  ];
  return `prompt ${s.promptTokens} tokens${reused}, generated ${s.generatedTokens} tokens; ${prefill}, ${decode}; stopped: ${reason}`;
}

/** One line about a speculative run: how much of the draft the target kept. */
export function formatSpeculative(s: SpeculativeStats): string {
  const rate = s.drafted > 0 ? `${((100 * s.accepted) / s.drafted).toFixed(1)}%` : '-';
  const perPass = s.rounds > 0 ? ((s.accepted + s.rounds) / s.rounds).toFixed(2) : '-';
  return `speculative decoding, k = ${s.numDraft}: ${s.accepted} of ${s.drafted} drafted tokens accepted (${rate}), ${perPass} tokens per target pass`;
}

export { makeSampler, type Sampler, type SamplerOptions };

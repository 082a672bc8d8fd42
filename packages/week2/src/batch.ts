import type { Tensor } from '@tiny-llm/tensor-core';
import type { KvCache, AttentionCache, CachedKeysValues } from './kv-cache.ts';
import type { Qwen2ModelWeek2 } from './qwen2-week2.ts';
import { NotImplemented } from '@tiny-llm/week1/not-implemented';

/**
 * One layer's cache for a decode step over B requests, each with its own KvCache (row b is caches[b]). A row
 * with no request (null) takes part with no keys of its own: its output is discarded.
 */
export class BatchingKvCache implements AttentionCache {
  constructor(readonly caches: readonly (KvCache | null)[]) {}

  /**
   * k and v [B, Hkv, L, D]: row b's new keys and values go to caches[b]. Returns every row's keys and values
   * right-aligned in [B, Hkv, S, D] (S = the longest row: a shorter row is padded on the left) and the mask
   * [B, 1, L, S]: 0 where row b's query i sees a key (its own keys, causally), -Infinity on padding and on
   * keys after the query.
   */
  updateAndFetch(k: Tensor, v: Tensor): CachedKeysValues {
    throw new NotImplemented('2.6', 'BatchingKvCache.updateAndFetch');
  }
}

/** What the scheduler needs of a model. `Cache` is whatever holds one request's keys and values. */
export interface BatchModel<Cache> {
  readonly vocabSize: number;
  /** The most positions a request may reach (the model's context). */
  readonly maxPositions: number;
  /** An empty cache for one request. */
  newRequestCache(): Cache;
  /** Runs ids after the `offset` tokens in the request's cache, appending them; the last position's logits [1, V]. */
  prefill(ids: readonly number[], offset: number, cache: Cache): Tensor;
  /** One token per request, tokens[b] at positions[b], appended to caches[b]; logits [B, V]. */
  decode(tokens: readonly number[], positions: readonly number[], caches: readonly Cache[]): Tensor;
  /** Frees a request's cache. */
  release(cache: Cache): void;
}

/** The week 2 model as a BatchModel: a request's cache is a KvCache per layer. */
export class Week2BatchModel implements BatchModel<KvCache[]> {
  constructor(readonly model: Qwen2ModelWeek2) {}

  get vocabSize(): number {
    return this.model.config.vocabSize;
  }

  get maxPositions(): number {
    return this.model.config.maxPositionEmbeddings;
  }

  newRequestCache(): KvCache[] {
    return this.model.newCache();
  }

  /**
   * Runs ids after the `offset` tokens in the request's cache (its KvCache of each layer), appending them:
   * the model takes ids [1, L]. Returns the last position's logits [1, V].
   */
  prefill(ids: readonly number[], offset: number, cache: KvCache[]): Tensor {
    throw new NotImplemented('2.6', 'Week2BatchModel.prefill');
  }

  /**
   * One token per request: tokens[b] at positions[b], appended to the request's caches[b]. Layer i of the
   * batch reads the requests' caches of layer i through a BatchingKvCache; the model takes ids [B, 1] and
   * one offset per row. Returns logits [B, V].
   */
  decode(tokens: readonly number[], positions: readonly number[], caches: readonly KvCache[][]): Tensor {
    throw new NotImplemented('2.6', 'Week2BatchModel.decode');
  }

  release(cache: KvCache[]): void {
    for (const layer of cache) layer.dispose();
  }
}

/** A request to generate after a prompt. */
export interface GenerationRequest {
  promptIds: readonly number[];
  /** The most tokens to generate. */
  maxTokens: number;
  /** Ids that end the request (not emitted); default none. */
  stopIds?: readonly number[];
  /** Picks a token from logits [1, V] (int32 [1]); default greedy. */
  sampler?: (logits: Tensor) => Tensor;
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

/** What a scheduler step produced for one request: a token, and whether the request is done. */
export interface StepOutput {
  id: number;
  /** The token generated this step (null when the request ended without one: a stop id, a cancel). */
  token: number | null;
  /** Set when the request is done; its slot is free for the next step. */
  finishReason?: FinishReason;
}

export interface SchedulerOptions {
  /** Requests decoding together (the batch's rows). */
  maxBatch: number;
  /**
   * Chapter 2.7: prefill at most this many prompt tokens per step, shared by the prefilling requests oldest first
   * (default: no limit, every admitted prompt whole).
   */
  prefillChunk?: number;
}

/** A request in the scheduler: waiting, prefilling (its prompt partly in its cache), then decoding. */
export class Sequence<Cache> {
  readonly generated: number[] = [];
  /** Prompt tokens in the cache so far. */
  prefilled = 0;
  cache: Cache | null = null;
  /** The next token to feed (decoding): the last one sampled. */
  next = -1;

  constructor(
    readonly id: number,
    readonly request: GenerationRequest,
  ) {}

  get decoding(): boolean {
    return this.prefilled === this.request.promptIds.length;
  }

  /** Tokens in the cache: the prompt, and every generated token but the last (not fed yet). */
  get position(): number {
    return this.prefilled + Math.max(0, this.generated.length - 1);
  }
}

/** Continuous batching over a BatchModel. */
export class Scheduler<Cache> {
  protected readonly waiting: Sequence<Cache>[] = [];
  /** The running requests, at most maxBatch: prefilling ones first in admission order, then decoding. */
  protected readonly running: Sequence<Cache>[] = [];
  private nextId = 0;
  readonly maxBatch: number;
  readonly prefillChunk: number;

  constructor(
    readonly model: BatchModel<Cache>,
    options: SchedulerOptions,
  ) {
    if (!Number.isInteger(options.maxBatch) || options.maxBatch < 1)
      throw new RangeError(`Scheduler: maxBatch must be an integer >= 1, got ${options.maxBatch}`);
    const chunk = options.prefillChunk ?? Infinity;
    if (!(chunk >= 1) || (chunk !== Infinity && !Number.isInteger(chunk)))
      throw new RangeError(`Scheduler: prefillChunk must be an integer >= 1, got ${options.prefillChunk}`);
    this.maxBatch = options.maxBatch;
    this.prefillChunk = chunk;
  }

  /** Queues a request; returns its id. */
  submit(request: GenerationRequest): number {
    const n = request.promptIds.length;
    if (n === 0) throw new RangeError('Scheduler.submit: the prompt is empty: there is no token to continue from');
    if (n > this.model.maxPositions)
      throw new RangeError(`Scheduler.submit: the prompt has ${n} tokens, more than the model's ${this.model.maxPositions} positions`);
    if (!Number.isInteger(request.maxTokens) || request.maxTokens < 1)
      throw new RangeError(`Scheduler.submit: maxTokens must be an integer >= 1, got ${request.maxTokens}`);
    const bad = request.promptIds.find((id) => !Number.isInteger(id) || id < 0 || id >= this.model.vocabSize);
    if (bad !== undefined)
      throw new RangeError(`Scheduler.submit: token id ${bad} is outside the vocabulary (0..${this.model.vocabSize - 1})`);
    const sequence = new Sequence<Cache>(this.nextId++, request);
    this.waiting.push(sequence);
    return sequence.id;
  }

  /** Whether any request is waiting or running. */
  get idle(): boolean {
    return this.waiting.length === 0 && this.running.length === 0;
  }

  /** Requests running (prefilling or decoding) and waiting. */
  get counts(): { running: number; waiting: number } {
    return { running: this.running.length, waiting: this.waiting.length };
  }

  /** Ends a request wherever it is; the next step no longer runs it. Returns whether it was found. */
  cancel(id: number): boolean {
    throw new NotImplemented('2.6', 'Scheduler.cancel');
  }

  /**
   * One step of continuous batching. Returns what each request got this step.
   * 1. Admit: while fewer than maxBatch requests run and some wait, move the oldest waiting one into
   *    `running` with a fresh cache (this.model.newRequestCache()).
   * 2. Prefill: each running request whose prompt is not all in its cache, oldest first, prefills the rest of
   *    its prompt (from sequence.prefilled) with this.model.prefill. Chapter 2.7: the step prefills at most
   *    this.prefillChunk tokens in all; each request takes what is left of that budget, so a long prompt goes in
   *    chunks over several steps and short ones share a step. When a prompt is done, the last position's logits
   *    give the request's first token.
   * 3. Decode: every request that was decoding before this step gets one token, all in one this.model.decode
   *    call (its `next` token at its `position`).
   * A token is picked with the request's sampler (default greedy, tc.argmax(logits, -1)) and read with
   * `(await chosen.data())[0]`, which works on every backend (on a GPU, reading waits for the device: that is
   * why step is async). A request ends at one of its stopIds (emit { token: null, finishReason: 'stop' }), at
   * maxTokens, or when its next position would reach the model's maxPositions ('length'); then retire it: its
   * slot is free at the next step.
   */
  async step(): Promise<StepOutput[]> {
    throw new NotImplemented('2.6', 'Scheduler.step');
  }

  /** Frees a running request's slot and cache. */
  protected retire(index: number): void {
    const [sequence] = this.running.splice(index, 1);
    if (sequence.cache) this.model.release(sequence.cache);
    sequence.cache = null;
  }
}

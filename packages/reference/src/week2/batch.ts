// Chapters 2.6 and 2.7: continuous batching and chunked prefill.
//
// A decode step of one request reads every weight to produce one token: memory-bound, the arithmetic units
// mostly idle. A decode step of B requests reads the same weights once for B tokens. Continuous batching keeps
// B requests decoding together: a request that finishes leaves its slot at once, and a waiting one takes it at
// the next step, instead of the batch draining before a new one starts (static batching).
//
// The pieces:
// - BatchingKvCache: the layer cache of a decode step over B requests. Each request keeps its own KvCache;
//   this one appends each row's new key and value to its request's cache, and returns them all right-aligned
//   in one [B, Hkv, S, D] (S the longest request) with a mask that hides each row's padding.
// - BatchModel: what the scheduler needs of a model (prefill one request, decode a batch); Week2BatchModel is
//   it for Qwen2ModelWeek2 (the engine has its own, see packages/engine/src/batch-model.ts).
// - Scheduler: admits waiting requests into free slots, prefills them, decodes every running request one token
//   per step, retires the finished ones. With prefillChunk (chapter 2.7), a step prefills at most that many
//   prompt tokens, shared by the prefilling requests oldest first (vLLM's max_num_batched_tokens): a long prompt
//   is prefilled in chunks, one per step, between the decode steps of the running requests, which keep getting
//   a token every step instead of waiting for the whole prompt; short prompts arriving together are prefilled
//   together, so the last of them does not wait a decode step for each one before it.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import type { KvCache, AttentionCache, CachedKeysValues } from './kv-cache.ts';
import type { Qwen2ModelWeek2 } from './qwen2-week2.ts';

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
    const [b, hkv, l, d] = k.shape;
    if (b !== this.caches.length) {
      throw new RangeError(`BatchingKvCache.updateAndFetch: ${b} rows of keys for ${this.caches.length} requests (k ${k.describe()})`);
    }
    const rows = this.caches.map((cache, i) => {
      if (!cache) return null;
      const row: tc.SliceSpec[] = [[i, i + 1]];
      return cache.updateAndFetch(tc.slice(k, row), tc.slice(v, row)); // [1, Hkv, S_i, D]
    });
    const lengths = rows.map((r) => (r ? r.keys.shape[2] : l));
    const s = Math.max(...lengths);
    // Right-align each row: its new keys line up in the last L columns, whatever its length.
    const padded = (part: 'keys' | 'values') =>
      tc.concat(
        rows.map((r, i) => {
          const own = r ? r[part] : tc.zeros([1, hkv, l, d]);
          return lengths[i] === s ? own : tc.concat([tc.zeros([1, hkv, s - lengths[i], d]), own], 2);
        }),
        0,
      );
    const mask = new Float32Array(b * l * s);
    for (let i = 0; i < b; i++) {
      for (let q = 0; q < l; q++) {
        for (let j = 0; j < s; j++) {
          // Query q is column s - l + q; it sees the row's own keys (from s - length) up to itself.
          const visible = j >= s - lengths[i] && j <= s - l + q;
          mask[(i * l + q) * s + j] = visible ? 0 : -Infinity;
        }
      }
    }
    return { keys: padded('keys'), values: padded('values'), mask: tc.tensor(mask, { shape: [b, 1, l, s] }) };
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

  prefill(ids: readonly number[], offset: number, cache: KvCache[]): Tensor {
    return tc.tidy(() => {
      const logits = this.model.forward(tc.tensor([[...ids]], { dtype: 'int32' }), offset, cache); // [1, L, V]
      return tc.contiguous(tc.slice(logits, [null, -1])); // [1, V]
    });
  }

  decode(tokens: readonly number[], positions: readonly number[], caches: readonly KvCache[][]): Tensor {
    return tc.tidy(() => {
      // Layer i of the batch: the requests' caches of layer i.
      const layers = this.model.layers.map((_, i) => new BatchingKvCache(caches.map((c) => c[i])));
      const logits = this.model.forward(
        tc.tensor(
          tokens.map((t) => [t]),
          { dtype: 'int32' },
        ),
        positions,
        layers,
      ); // [B, 1, V]
      return tc.reshape(logits, [tokens.length, logits.shape[2]]);
    });
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
    const inWaiting = this.waiting.findIndex((s) => s.id === id);
    if (inWaiting >= 0) {
      this.waiting.splice(inWaiting, 1);
      return true;
    }
    const inRunning = this.running.findIndex((s) => s.id === id);
    if (inRunning < 0) return false;
    this.retire(inRunning);
    return true;
  }

  /**
   * One step: admit waiting requests into free slots, prefill (the prefilling requests' prompts, oldest first,
   * within the step's budget of prefillChunk tokens: chapter 2.7), and decode one token for every request that
   * was decoding already. Each running request gets at most one token per step. Asynchronous because the tokens
   * are read back from the model's device (on a GPU, reading waits for the device).
   */
  async step(): Promise<StepOutput[]> {
    this.admit();
    const decoding = this.running.filter((s) => s.decoding);
    const prefilling = this.running.filter((s) => !s.decoding);
    const outputs: StepOutput[] = [];
    let budget = this.prefillChunk;
    for (const sequence of prefilling) {
      if (budget === 0) break;
      const tokens = Math.min(budget, sequence.request.promptIds.length - sequence.prefilled);
      budget -= tokens;
      const first = await this.prefillStep(sequence, tokens);
      if (first) outputs.push(first);
    }
    if (decoding.length > 0) outputs.push(...(await this.decodeStep(decoding)));
    return outputs;
  }

  /** Moves waiting requests into the batch while there is room, in arrival order. */
  private admit(): void {
    while (this.running.length < this.maxBatch && this.waiting.length > 0) {
      const sequence = this.waiting.shift()!;
      sequence.cache = this.model.newRequestCache();
      this.running.push(sequence);
    }
  }

  /** Prefills the next `tokens` of a request's prompt; the last chunk's logits give its first token. */
  private async prefillStep(sequence: Sequence<Cache>, tokens: number): Promise<StepOutput | null> {
    const prompt = sequence.request.promptIds;
    const end = sequence.prefilled + tokens;
    const logits = this.model.prefill(prompt.slice(sequence.prefilled, end), sequence.prefilled, sequence.cache!);
    sequence.prefilled = end;
    if (sequence.decoding) return this.accept(sequence, logits);
    logits.dispose();
    return null;
  }

  /** One token for each of these requests, in one batched pass. */
  private async decodeStep(batch: Sequence<Cache>[]): Promise<StepOutput[]> {
    const logits = this.model.decode(
      batch.map((s) => s.next),
      batch.map((s) => s.position),
      batch.map((s) => s.cache!),
    ); // [B, V]
    const rows = tc.split(logits, batch.length, 0);
    logits.dispose();
    const outputs: StepOutput[] = [];
    for (const [i, s] of batch.entries()) outputs.push(await this.accept(s, rows[i]));
    return outputs;
  }

  /** Samples a request's next token from its logits [1, V]; retires the request when it is done. */
  private async accept(sequence: Sequence<Cache>, logits: Tensor): Promise<StepOutput> {
    const { request } = sequence;
    const chosen = request.sampler ? request.sampler(logits) : tc.argmax(logits, -1);
    // data() reads a tensor on any backend (item() only on the CPU).
    const token = (await chosen.data())[0];
    chosen.dispose();
    logits.dispose();
    if (request.stopIds?.includes(token)) {
      this.retire(this.running.indexOf(sequence));
      return { id: sequence.id, token: null, finishReason: 'stop' };
    }
    sequence.generated.push(token);
    sequence.next = token;
    // Done at the token budget, or when the next token to feed would be past the model's positions.
    const full = sequence.generated.length >= request.maxTokens || sequence.position >= this.model.maxPositions;
    if (full) this.retire(this.running.indexOf(sequence));
    return { id: sequence.id, token, finishReason: full ? 'length' : undefined };
  }

  /** Frees a running request's slot and cache. */
  protected retire(index: number): void {
    const [sequence] = this.running.splice(index, 1);
    if (sequence.cache) this.model.release(sequence.cache);
    sequence.cache = null;
  }
}

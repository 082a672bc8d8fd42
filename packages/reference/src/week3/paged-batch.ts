// Chapter 3.1: continuous batching on the paged KV cache.
//
// - PagedBatchModel: the week 2 model as chapter 2.6's BatchModel, with a block table in one shared PagePool as
//   each request's cache. A prefill runs through the unchanged week 2 model (PagedLayerCache writes the new
//   keys and values into the request's pages and gathers them); a decode step runs the B requests' tokens
//   through the projections together and attention through the block tables, in pagedAttention's kernel,
//   which reads every request's pages where they are.
// - PagedScheduler: chapter 2.6's Scheduler, with memory in the decisions. A request is admitted only when the
//   pool has the pages of its prompt (else it waits, and the requests behind it too); before each step, every
//   decoding request gets the page its next token needs, and when the pool is short the newest running request
//   is preempted: its pages are freed and it goes back to the head of the queue, to be recomputed from its
//   prompt and the tokens it has generated (vLLM's recompute preemption; nano-vllm's block_manager and
//   scheduler do the same).
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import type { RMSNorm } from '../week1/index.ts';
import {
  Qwen2ModelWeek2,
  Scheduler,
  Sequence,
  type BatchModel,
  type GenerationRequest,
  type Projection,
  type Qwen2TransformerBlock,
  type SchedulerOptions,
  type StepOutput,
} from '../week2/index.ts';
import { pagedAttention } from './paged-attention.ts';
import { type BlockTable, PagedLayerCache, PagePool, type PagePoolSize } from './paged-kv-cache.ts';

/** What PagedScheduler needs of a model: a BatchModel whose request caches are block tables in its pool. */
export interface PagedModel extends BatchModel<BlockTable> {
  readonly pool: PagePool;
}

/**
 * What a paged BatchModel shares with any other (PagedBatchModel here, the engine's EngineBatchModel): a pool
 * sized for the model's config, the block tables made in it, and what the scheduler reads off the config. Given.
 */
export abstract class PagedModelBase implements PagedModel {
  readonly pool: PagePool;

  /** `size`: the pages of the pool and their tokens; with a PrefixCache (chapter 3.2), requests share prefixes. */
  constructor(
    readonly config: ModelConfig,
    size: PagePoolSize,
  ) {
    this.pool = PagePool.forModel(config, size);
  }

  get vocabSize(): number {
    return this.config.vocabSize;
  }

  get maxPositions(): number {
    return this.config.maxPositionEmbeddings;
  }

  newRequestCache(): BlockTable {
    return this.pool.newTable();
  }

  release(table: BlockTable): void {
    table.release();
  }

  abstract prefill(ids: readonly number[], offset: number, table: BlockTable): Tensor;
  abstract decode(tokens: readonly number[], positions: readonly number[], tables: readonly BlockTable[]): Tensor;
}

/** The week 2 model on a paged KV cache. Given. */
export class PagedBatchModel extends PagedModelBase {
  constructor(
    readonly model: Qwen2ModelWeek2,
    size: PagePoolSize,
  ) {
    super(model.config, size);
  }

  static load(dir: string, size: PagePoolSize): PagedBatchModel {
    return new PagedBatchModel(Qwen2ModelWeek2.load(dir), size);
  }

  prefill(ids: readonly number[], offset: number, table: BlockTable): Tensor {
    if (offset !== table.length)
      throw new RangeError(
        `PagedBatchModel.prefill: ${ids.length} tokens at position ${offset}, but ${table.owner}'s block table holds ${table.length}`,
      );
    this.pool.prepare([table], ids.length);
    const layers = this.model.layers.map((_, i) => new PagedLayerCache(table, i));
    const logits = tc.tidy(() => {
      const all = this.model.forward(tc.tensor([[...ids]], { dtype: 'int32' }), offset, layers); // [1, L, V]
      return tc.contiguous(tc.slice(all, [null, -1])); // [1, V]
    });
    table.commit(ids);
    return logits;
  }

  decode(tokens: readonly number[], positions: readonly number[], tables: readonly BlockTable[]): Tensor {
    if (tokens.length === 0 || positions.length !== tokens.length || tables.length !== tokens.length) {
      throw new RangeError(
        `PagedBatchModel.decode: expected one position and one block table per token, got ${tokens.length} tokens, ${positions.length} positions, ${tables.length} tables`,
      );
    }
    tables.forEach((table, b) => {
      if (positions[b] !== table.length)
        throw new RangeError(
          `PagedBatchModel.decode: row ${b} is at position ${positions[b]}, but ${table.owner}'s block table holds ${table.length} tokens`,
        );
    });
    this.pool.prepare(tables, 1);
    const logits = tc.tidy(() => {
      let h = this.model.embedding.forward(
        tc.tensor(
          tokens.map((t) => [t]),
          { dtype: 'int32' },
        ),
      ); // [B, 1, E]
      this.model.layers.forEach((layer, i) => {
        const next = tc.tidy(() => this.decodeLayer(layer, i, h, positions, tables));
        h.dispose();
        h = next;
      });
      h = tc.reshape(this.model.norm.forward(h), [tokens.length, -1]);
      return this.model.lmHead ? this.model.lmHead.forward(h) : this.model.embedding.asLinear(h); // [B, V]
    });
    tables.forEach((table, b) => table.commit([tokens[b]]));
    return logits;
  }

  /**
   * One layer of a decode step, x [B, 1, E]: the week 2 layer, with its attention reading the block tables. Each
   * row's new key and value go to the slot at its position; the kernel then attends over its tokens, that one
   * included, in place.
   */
  private decodeLayer(
    layer: Qwen2TransformerBlock,
    index: number,
    x: Tensor,
    positions: readonly number[],
    tables: readonly BlockTable[],
  ): Tensor {
    const { shape, weights, rope } = layer.selfAttn;
    const [b, d] = [x.shape[0], shape.headDim];
    const normed = layer.inputLayerNorm.forward(x);
    const project = (w: Projection, heads: number, norm?: RMSNorm) => {
      const t = tc.reshape(w.forward(normed), [b, 1, heads, d]);
      return norm ? norm.forward(t) : t;
    };
    const q = rope.forward(project(weights.q, shape.numHeads, weights.qNorm), positions); // [B, 1, Hq, D]
    const k = rope.forward(project(weights.k, shape.numKvHeads, weights.kNorm), positions);
    const v = project(weights.v, shape.numKvHeads);
    const rowOf = (t: Tensor, r: number) => tc.transpose(tc.slice(t, [[r, r + 1]]), [0, 2, 1, 3]); // [1, Hkv, 1, D]
    tables.forEach((table, r) => this.pool.write(index, table, table.length, rowOf(k, r), rowOf(v, r)));
    const pages = tables.map((t) => t.pages);
    const lengths = tables.map((t) => t.length + 1);
    const attended = pagedAttention(tc.reshape(q, [b, shape.numHeads, d]), this.pool.keys[index], this.pool.values[index], pages, lengths);
    const h = tc.add(x, weights.o.forward(tc.reshape(attended, [b, 1, shape.numHeads * d])));
    return tc.add(h, layer.mlp.forward(layer.postAttentionLayerNorm.forward(h)));
  }
}

/** Continuous batching (chapter 2.6) that admits and preempts requests by the pages of its model's pool. */
export class PagedScheduler extends Scheduler<BlockTable> {
  /** Requests preempted so far (pages freed, to be recomputed): how often the pool ran short. */
  preemptions = 0;

  constructor(
    override readonly model: PagedModel,
    options: SchedulerOptions,
  ) {
    super(model, options);
  }

  /** Queues a request, refusing one that could not fit in the whole pool on its own. Given. */
  override submit(request: GenerationRequest): number {
    const { numPages, pageSize } = this.model.pool;
    const most = Math.min(request.promptIds.length + request.maxTokens, this.model.maxPositions);
    const pages = Math.ceil(most / pageSize);
    if (pages > numPages) {
      throw new RangeError(
        `PagedScheduler.submit: the request may reach ${most} tokens (a prompt of ${request.promptIds.length} and up to ${request.maxTokens} more), ` +
          `${pages} pages of ${pageSize}, but the pool has ${numPages} pages in all (${numPages * pageSize} tokens): make the pool larger or ask for fewer tokens`,
      );
    }
    return super.submit(request);
  }

  /** Chapter 2.6's step, after the memory decisions: room for the running requests first, then admission. Given. */
  override async step(): Promise<StepOutput[]> {
    this.makeRoom();
    this.admitWithPages();
    // 2.6's step admits whatever still waits, without asking the pool: those requests sit this step out.
    const held = this.waiting.splice(0);
    try {
      return await super.step();
    } finally {
      this.waiting.unshift(...held);
    }
  }

  /**
   * Every request that decodes this step writes one token: reserve the page it needs. While the pool has fewer
   * free pages than they need together, preempt the newest running request.
   */
  protected makeRoom(): void {
    for (;;) {
      const decoding = this.running.filter((s) => s.decoding);
      const needed = decoding.reduce((n, s) => n + s.cache!.pagesNeeded(s.position + 1), 0);
      if (needed <= this.model.pool.freePages) {
        for (const s of decoding) s.cache!.reserve(s.position + 1);
        return;
      }
      this.preempt(this.running.length - 1);
    }
  }

  /**
   * Admits the oldest waiting requests while a slot is free and the pool has the pages of their prompt (with
   * prefix caching, only the pages no cached prefix holds): the first that does not fit waits, and so do the
   * others behind it.
   */
  protected admitWithPages(): void {
    const pool = this.model.pool;
    while (this.running.length < this.maxBatch && this.waiting.length > 0) {
      const sequence = this.waiting[0];
      const prompt = sequence.request.promptIds;
      const table = this.model.newRequestCache();
      table.owner = `request ${sequence.id}`;
      const cached = pool.prefixCache?.attach(table, prompt) ?? 0;
      if (table.pagesNeeded(prompt.length) > pool.freePages) {
        table.release();
        return;
      }
      table.reserve(prompt.length);
      sequence.cache = table;
      sequence.prefilled = cached;
      this.running.push(this.waiting.shift()!);
    }
  }

  /**
   * Takes running request `index` out: its pages go back to the pool, and it goes back to the head of the
   * queue as a request whose prompt is its prompt and the tokens it generated, for what it has left to generate.
   * Admitted again, it recomputes them in one prefill and goes on where it stopped.
   */
  protected preempt(index: number): void {
    const sequence = this.running[index];
    this.retire(index);
    const { promptIds, maxTokens } = sequence.request;
    const resumed = {
      ...sequence.request,
      promptIds: [...promptIds, ...sequence.generated],
      maxTokens: maxTokens - sequence.generated.length,
    };
    this.waiting.unshift(new Sequence<BlockTable>(sequence.id, resumed));
    this.preemptions++;
  }
}

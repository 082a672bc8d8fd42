// Chapter 3.5: prefill and decode in separate workers.
//
// In one scheduler (chapter 2.7), every step runs a prefill chunk and the batch's decode step one after the
// other: a long prompt arriving adds its chunk's time to every running request's next token, again and again
// until it is prefilled. Disaggregated serving (DistServe, Splitwise, vLLM's disaggregated prefill) gives each
// phase a worker of its own, with its own model and page pool:
//
// - PrefillScheduler prefills prompts and samples each request's first token. A request whose prefill produced
//   its first token moves: handOff exports its pages (kv-transfer.ts) and frees them here.
// - DecodeScheduler receives handoffs; when a slot and the pages are free it imports one (admitArrivals), and
//   the request decodes from its first token as if it had been prefilled there. Chapter 3.1's PagedScheduler
//   does the rest: the pages of each next token, and preemption (a preempted request is recomputed here, as a
//   prompt of its prompt and the tokens it generated).
//
// Between the two, anything that carries a message: a function call in the tests, the server's threads in the
// engine (packages/engine/src/server/disaggregated-engine.ts).
import type { GenerationRequest, StepOutput } from '../week2/index.ts';
import { Sequence } from '../week2/index.ts';
import { exportPages, importPages, type KvTransfer } from './kv-transfer.ts';
import { PagedScheduler } from './paged-batch.ts';
import type { BlockTable } from './paged-kv-cache.ts';

/** A request leaving the prefill worker: what it asked for, the token its prefill produced, and its cache. */
export interface Handoff {
  /** The request's id on the prefill side; the decode side keeps it. */
  id: number;
  request: GenerationRequest;
  firstToken: number;
  transfer: KvTransfer;
}

/** Chapter 3.1's scheduler, prefilling only: a request leaves it once its first token is sampled. */
export class PrefillScheduler extends PagedScheduler {
  /**
   * The requests whose prefill is done and that go on (a request that ended at its first token is retired
   * already): for each, its prompt's pages exported and given back to this pool, and it is no longer running.
   * Call after each step, so that no request decodes here.
   */
  handOff(): Handoff[] {
    const moving = this.running.filter((s) => s.decoding);
    return moving.map((sequence) => {
      const transfer = exportPages(this.model.pool, sequence.cache!, sequence.position);
      this.retire(this.running.indexOf(sequence));
      return { id: sequence.id, request: sequence.request, firstToken: sequence.next, transfer };
    });
  }
}

/** Chapter 3.1's scheduler, decoding requests another worker prefilled. */
export class DecodeScheduler extends PagedScheduler {
  /** Handoffs received and not imported yet, oldest first. */
  protected readonly arrivals: Handoff[] = [];

  /** Requests come prefilled, through receive. Given. */
  override submit(_request: GenerationRequest): number {
    throw new RangeError('DecodeScheduler.submit: a decode worker takes requests another worker prefilled: receive(handoff)');
  }

  /** Queues a prefilled request; it decodes once admitArrivals imports it. Given. */
  receive(handoff: Handoff): void {
    const { request, transfer } = handoff;
    const most = request.promptIds.length + request.maxTokens;
    const pages = Math.ceil(Math.min(most, this.model.maxPositions) / this.model.pool.pageSize);
    if (pages > this.model.pool.numPages) {
      throw new RangeError(
        `DecodeScheduler.receive: request ${handoff.id} may reach ${most} tokens, ${pages} pages, but the pool has ${this.model.pool.numPages} pages in all`,
      );
    }
    if (transfer.numTokens !== request.promptIds.length) {
      throw new RangeError(
        `DecodeScheduler.receive: request ${handoff.id}'s transfer holds ${transfer.numTokens} tokens, its prompt has ${request.promptIds.length}`,
      );
    }
    this.arrivals.push(handoff);
  }

  override get idle(): boolean {
    return super.idle && this.arrivals.length === 0;
  }

  override get counts(): { running: number; waiting: number } {
    const { running, waiting } = super.counts;
    return { running, waiting: waiting + this.arrivals.length };
  }

  /** Ends a request wherever it is: not yet imported, waiting or running. Given. */
  override cancel(id: number): boolean {
    const arrived = this.arrivals.findIndex((h) => h.id === id);
    if (arrived < 0) return super.cancel(id);
    this.arrivals.splice(arrived, 1);
    return true;
  }

  /** Imports what arrived while there is room, then chapter 3.1's step decodes. Given. */
  override step(): Promise<StepOutput[]> {
    this.admitArrivals();
    return super.step();
  }

  /**
   * Imports the oldest arrivals while a slot is free and the pool has their pages (the first that does not fit
   * waits, and those behind it too): each becomes a running request that has prefilled its prompt, generated its
   * first token, and feeds it next.
   */
  protected admitArrivals(): void {
    const pool = this.model.pool;
    while (this.arrivals.length > 0 && this.running.length < this.maxBatch && this.waiting.length === 0) {
      const { id, request, firstToken, transfer } = this.arrivals[0];
      if (Math.ceil(transfer.numTokens / pool.pageSize) > pool.freePages) return;
      this.arrivals.shift();
      const sequence = new Sequence<BlockTable>(id, request);
      sequence.cache = importPages(pool, transfer, `request ${id}`);
      sequence.prefilled = request.promptIds.length;
      sequence.generated.push(firstToken);
      sequence.next = firstToken;
      this.running.push(sequence);
    }
  }
}

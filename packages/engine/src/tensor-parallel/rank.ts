// One rank of a tensor-parallel group: its model (rank-model.ts) and the caches it keeps for the group's
// sequences, by the ids the driver gives them. Rank 0 (the driver's thread) and the peers run the same
// commands through it, in the same order, so that their all-reduces pair up.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import type { RankCommand } from './protocol.ts';
import type { RankModel } from './rank-model.ts';

export class Rank {
  private readonly caches = new Map<number, unknown>();

  constructor(
    readonly model: RankModel<unknown>,
    readonly rank: number,
    /** The all-reduce the model runs through (the time-all-reduce command measures it alone). */
    private readonly allReduce: (partial: Tensor) => Tensor,
  ) {}

  /** Runs a command; rank 0 returns the logits of a forward pass or a decode step, every other result is null. */
  execute(command: RankCommand): Tensor | null {
    switch (command.type) {
      case 'open':
        this.caches.set(command.cache, this.model.newCache());
        return null;
      case 'forward':
        return this.model.forward(command.ids, command.offset, this.cacheOf(command.cache), command.lastOnly);
      case 'decode':
        return this.model.decode(
          command.tokens,
          command.caches.map((id) => this.cacheOf(id)),
        );
      case 'truncate':
        this.model.truncate(this.cacheOf(command.cache), command.length);
        return null;
      case 'release':
        this.model.release(this.cacheOf(command.cache));
        this.caches.delete(command.cache);
        return null;
      case 'time-all-reduce':
        this.timeAllReduce(command.rows, command.rounds);
        return null;
    }
  }

  /** Frees every cache (the group started its peers again: their halves of these caches are gone). */
  clear(): void {
    for (const cache of this.caches.values()) this.model.release(cache);
    this.caches.clear();
  }

  private cacheOf(id: number): unknown {
    if (!this.caches.has(id)) throw new Error(`rank ${this.rank}: no cache ${id} is open`);
    return this.caches.get(id);
  }

  /** `rounds` all-reduces of a [rows, hidden] float32 partial, as a layer's (the driver times the command). */
  private timeAllReduce(rows: number, rounds: number): void {
    const partial = tc.zeros([rows, this.model.config.hiddenSize]);
    for (let i = 0; i < rounds; i++) this.allReduce(partial).dispose();
    partial.dispose();
  }
}

// What the threads of a tensor-parallel group (chapter 3.6 in the engine) say to each other. Rank 0 runs on the
// thread that calls the model (the driver: group.ts); ranks 1..N-1 (the peers: peer.ts) each on a thread of
// their own, started and watched by a supervisor thread (supervisor.ts).
//
// The driver posts each command to every peer's port and runs it itself; a peer marks a command done in the
// shared `done` words (Atomics), which the driver waits on. A failure goes by message: a peer's on its port, a
// dead peer's from the supervisor.
import type { ModelConfig } from '@tiny-llm/tensor-core';
import type { RandomDType } from '../random-weights.ts';

/** Whose code each rank runs: the engine's model, or a solution's chapter 3.6 model (packages/week3 or the reference). */
export type RankCode = 'engine' | 'learner' | 'reference';

/** Where the weights come from: a model directory, or random weights of a config's shape (benchmarks). */
export type WeightsSpec = { modelDir: string } | { config: ModelConfig; dtype: RandomDType; seed: number };

/** Everything a rank needs to load its shard: plain data, cloned into each thread. */
export interface GroupSpec {
  weights: WeightsSpec;
  code: RankCode;
  worldSize: number;
  /** The engine's ranks multiply quantized weights by float32 activations (Qwen2LoadOptions.exact). */
  exact?: boolean;
}

/** What every rank runs, on the caches it keeps by id. */
export type RankCommand =
  | { type: 'open'; cache: number }
  | { type: 'forward'; cache: number; ids: number[]; offset: number; lastOnly: boolean }
  | { type: 'decode'; caches: number[]; tokens: number[] }
  | { type: 'truncate'; cache: number; length: number }
  | { type: 'release'; cache: number }
  | { type: 'time-all-reduce'; rows: number; rounds: number };

/** A failure planted in a peer for tests: at its k-th all-reduce from now, it throws or its thread exits. */
export interface Fault {
  afterAllReduces: number;
  how: 'throw' | 'exit';
}

/** Driver -> peer, on the peer's port. */
export type ToPeer = { seq: number; command: RankCommand } | { fault: Fault };

/** Peer -> driver (a command that failed on the peer), or supervisor -> driver (a peer's thread that ended). */
export type Report = { type: 'failed'; rank: number; message: string } | { type: 'died'; rank: number; reason: string };

/** The memory every thread of the group shares. */
export interface GroupMemory {
  /** The all-reduce's (SharedMemoryAllReduce.allocate). */
  allReduce: SharedArrayBuffer;
  /** Int32 per rank: the last command it finished (its seq), LOADING, or DEAD. Rank 0's word is unused. */
  done: SharedArrayBuffer;
}

export const LOADING = -1;
export const DEAD = -2;

/** Float32 values per rank's all-reduce slot, in rows of the hidden size: a decode step fits in one round. */
export const SLOT_ROWS = 64;

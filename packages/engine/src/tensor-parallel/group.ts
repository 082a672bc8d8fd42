// A tensor-parallel group (chapter 3.6 in the engine) as the thread that calls the model sees it. Rank 0 runs
// here, on this thread, so that the logits never cross threads; ranks 1..N-1 (the peers) run in threads of
// their own, behind a supervisor thread that watches them. Each call posts a command to the peers, runs it as
// rank 0, waits until every peer has finished it (Atomics.wait on the shared `done` words), and returns rank
// 0's logits.
//
// A failure of any rank fails the call: a rank that throws aborts the all-reduce, which wakes every rank
// waiting at a barrier; a peer whose thread ends is seen by the supervisor, which does the same. The call throws
// the first rank's error, and the group starts its peers again before the next call. Their caches are gone
// with them, so every cache of the group belongs to an older generation: a sequence that had one rebuilds it.
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import {
  DEAD,
  LOADING,
  SLOT_ROWS,
  type Fault,
  type GroupMemory,
  type GroupSpec,
  type RankCommand,
  type Report,
  type ToPeer,
} from './protocol.ts';
import { Rank } from './rank.ts';
import { allReduceClass, loadRankModel, tensorAllReduce, type GroupAllReduce, type GroupAllReduceClass } from './rank-model.ts';

/** A sequence's cache on every rank of a group: its id, valid while the group's peers are the ones that opened it. */
export interface CacheHandle {
  readonly id: number;
  readonly generation: number;
}

/** The threads of one start of the peers, and the memory they share with rank 0. */
interface Peers {
  supervisor: Worker;
  /** Rank r's command port at r - 1. */
  ports: MessagePort[];
  /** Deaths, from the supervisor. */
  reports: MessagePort;
  done: Int32Array;
  allReduce: GroupAllReduce;
}

const isAborted = (err: unknown) => (err as Error)?.name === 'TensorParallelAborted';

export class TensorParallelGroup {
  readonly config: ModelConfig;
  private peers!: Peers;
  private reduce!: (partial: Tensor) => Tensor;
  private rank0!: Rank;
  private seq = 0;
  private nextCache = 1;
  /** Counts the starts of the peers: a cache handle of an older generation is gone. */
  private generation = 0;
  /** Set by a failed call: the peers start again before the next one. */
  private broken = false;

  private constructor(
    readonly spec: GroupSpec,
    private readonly SharedMemoryAllReduce: GroupAllReduceClass,
    config: ModelConfig,
  ) {
    this.config = config;
  }

  /**
   * Loads rank 0 on this thread (a shard that cannot load fails here, before any thread starts), then starts
   * the peers and waits until each has loaded its shard.
   */
  static async start(spec: GroupSpec): Promise<TensorParallelGroup> {
    const SharedMemoryAllReduce = await allReduceClass(spec.code);
    let group: TensorParallelGroup | null = null;
    const model = await loadRankModel(spec, { rank: 0, worldSize: spec.worldSize }, (partial) => group!.reduce(partial));
    group = new TensorParallelGroup(spec, SharedMemoryAllReduce, model.config);
    group.rank0 = new Rank(model, 0, (partial) => group!.reduce(partial));
    group.startPeers();
    return group;
  }

  get worldSize(): number {
    return this.spec.worldSize;
  }

  /** A new, empty cache on every rank. */
  open(): CacheHandle {
    const id = this.nextCache++;
    this.run({ type: 'open', cache: id });
    return { id, generation: this.generation };
  }

  /** Whether a cache still exists (the peers that hold its shards have not been started again since). */
  isLive(cache: CacheHandle): boolean {
    return cache.generation === this.generation && !this.broken;
  }

  /** ids after `offset` cached tokens -> rank 0's logits: [1, vocab] if lastOnly, else [L, vocab]. */
  forward(cache: CacheHandle, ids: readonly number[], offset: number, lastOnly: boolean): Tensor {
    this.checkTokens(ids, offset + ids.length);
    return this.run({ type: 'forward', cache: this.idOf(cache), ids: [...ids], offset, lastOnly })!;
  }

  /** tokens[b] after the tokens of caches[b] -> the logits [B, vocab]. */
  decode(caches: readonly CacheHandle[], tokens: readonly number[], positions: readonly number[]): Tensor {
    this.checkTokens(tokens, Math.max(...positions) + 1);
    return this.run({ type: 'decode', caches: caches.map((c) => this.idOf(c)), tokens: [...tokens] })!;
  }

  truncate(cache: CacheHandle, length: number): void {
    this.run({ type: 'truncate', cache: this.idOf(cache), length });
  }

  /** Frees a cache on every rank (nothing to do for one the peers already lost). */
  release(cache: CacheHandle): void {
    if (this.isLive(cache)) this.run({ type: 'release', cache: cache.id });
  }

  /** Seconds per all-reduce of a [rows, hidden] float32 partial over the group, the mean of `rounds`. */
  timeAllReduce(rows: number, rounds: number): number {
    const t0 = performance.now();
    this.run({ type: 'time-all-reduce', rows, rounds });
    return (performance.now() - t0) / 1e3 / rounds;
  }

  /** Plants a failure in a peer (for tests): it throws, or its thread exits, at its k-th all-reduce from now. */
  plantFault(rank: number, fault: Fault): void {
    if (!(rank >= 1 && rank < this.worldSize)) throw new RangeError(`plantFault: rank ${rank} is not a peer (1..${this.worldSize - 1})`);
    this.peers.ports[rank - 1].postMessage({ fault } satisfies ToPeer);
  }

  /** Stops the peers' threads and frees rank 0's caches. */
  async close(): Promise<void> {
    this.rank0.clear();
    await this.peers.supervisor.terminate();
  }

  private idOf(cache: CacheHandle): number {
    if (!this.isLive(cache)) {
      throw new Error("tensor parallelism: this sequence's cache was lost when the group restarted after a failure (open a new one)");
    }
    return cache.id;
  }

  /** Token ids and positions are checked here, once, rather than failing on every rank. */
  private checkTokens(ids: readonly number[], end: number): void {
    const { vocabSize, maxPositionEmbeddings } = this.config;
    const bad = ids.find((id) => !(Number.isInteger(id) && id >= 0 && id < vocabSize));
    if (bad !== undefined)
      throw new RangeError(
        `tensor parallelism: token id ${bad} is outside the vocabulary (vocab_size ${vocabSize}: ids 0..${vocabSize - 1})`,
      );
    if (end > maxPositionEmbeddings)
      throw new RangeError(`tensor parallelism: position ${end - 1} is past the model's ${maxPositionEmbeddings} positions`);
  }

  /** Runs a command on every rank; rank 0's result. See the top of the file for failures. */
  private run(command: RankCommand): Tensor | null {
    if (this.broken || this.peerDied()) this.restartPeers();
    const seq = ++this.seq;
    for (const port of this.peers.ports) port.postMessage({ seq, command } satisfies ToPeer);
    let result: Tensor | null = null;
    let rank0Error: unknown = null;
    try {
      result = this.rank0.execute(command);
    } catch (err) {
      rank0Error = err;
      if (!isAborted(err)) this.peers.allReduce.abort(); // wake the peers waiting for rank 0 at a barrier
    }
    this.waitForPeers(seq);
    const reports = this.takeReports();
    if (rank0Error === null && reports.length === 0 && !this.peers.allReduce.aborted) return result;
    result?.dispose();
    this.broken = true;
    if (rank0Error !== null && !isAborted(rank0Error)) throw rank0Error;
    const first = reports[0];
    const what = first
      ? `rank ${first.rank} ${first.type === 'died' ? `died (${first.reason})` : `failed: ${first.message}`}`
      : 'a rank failed';
    throw new Error(`tensor parallelism: ${what}, during a ${command.type} command; the group starts its peers again for the next one`);
  }

  /** Starts the peers and waits until each has loaded its shard; throws if one cannot. */
  private startPeers(): void {
    const n = this.worldSize;
    const memory: GroupMemory = {
      allReduce: this.SharedMemoryAllReduce.allocate(n, SLOT_ROWS * this.config.hiddenSize),
      done: new SharedArrayBuffer(4 * n),
    };
    const done = new Int32Array(memory.done).fill(LOADING);
    const channels = Array.from({ length: n - 1 }, () => new MessageChannel());
    const reports = new MessageChannel();
    const theirs = [...channels.map((c) => c.port2), reports.port2];
    const supervisor = new Worker(new URL('./thread-entry.mjs', import.meta.url), {
      workerData: { script: './supervisor.ts', spec: this.spec, memory, ports: channels.map((c) => c.port2), reports: reports.port2 },
      transferList: theirs,
    });
    // The group's threads must not keep a finished command-line run alive.
    supervisor.unref();
    const allReduce = new this.SharedMemoryAllReduce(memory.allReduce, 0, n);
    this.peers = { supervisor, ports: channels.map((c) => c.port1), reports: reports.port1, done, allReduce };
    this.reduce = tensorAllReduce(allReduce);
    for (let r = 1; r < n; r++) {
      while (Atomics.load(done, r) === LOADING) Atomics.wait(done, r, LOADING);
    }
    if (this.peerDied()) {
      const why = this.takeReports().map((r) => `rank ${r.rank}: ${r.type === 'died' ? r.reason : r.message}`);
      this.broken = true;
      throw new Error(`tensor parallelism: a peer could not load its shard (${why.join('; ') || 'no reason given'})`);
    }
  }

  /** The failure is over: the old peers go (and their caches); new ones start, rank 0 frees its caches to match. */
  private restartPeers(): void {
    void this.peers.supervisor.terminate();
    this.rank0.clear();
    this.generation++;
    this.startPeers();
    this.broken = false;
  }

  private peerDied(): boolean {
    return this.peers.done.some((v, r) => r > 0 && v === DEAD);
  }

  /** Waits until every live peer has finished command `seq`. */
  private waitForPeers(seq: number): void {
    const { done } = this.peers;
    for (let r = 1; r < this.worldSize; r++) {
      for (let v = Atomics.load(done, r); v < seq && v !== DEAD; v = Atomics.load(done, r)) Atomics.wait(done, r, v);
    }
  }

  /** The failures the peers and the supervisor reported since the last call, in the order they came. */
  private takeReports(): Report[] {
    const reports: Report[] = [];
    for (const port of [...this.peers.ports, this.peers.reports]) {
      for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) reports.push(m.message as Report);
    }
    return reports;
  }
}

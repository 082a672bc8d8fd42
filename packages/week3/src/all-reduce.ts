// Chapter 3.6: the all-reduce of tensor parallelism, over memory that the ranks' threads share.
// Read docs/week3/3.6-tensor-parallelism.md, then replace each `throw` with your code. The memory's layout,
// abort() and waitWhile() are given.
//
// N ranks (threads) each hold a partial result of the same shape; after the all-reduce every rank holds the
// sum of all N. The memory is one SharedArrayBuffer: a few control words, then one slot of float32 per rank.
//
//   allReduce(data):  write data into my slot  ->  barrier  ->  sum the N slots, rank 0's first  ->  barrier
//
// The first barrier makes every slot hold this round's values before anyone reads; the second keeps a rank
// that is done from writing its next round into its slot while a slower peer still reads this one. Every
// rank adds the slots in the same order, so that every rank ends with the same bits (float addition is not
// associative: ranks that each added their own slot first would drift apart, layer after layer).
//
// The barrier counts arrivals; the last rank to arrive resets the count and moves the generation on, which
// wakes the others (Atomics.wait on the generation word). abort() wakes everyone with an error instead: a rank
// that fails mid-pass must not leave its peers waiting for it forever.
import { NotImplemented } from '@tiny-llm/week1/not-implemented';

/** The control words, in Int32 units at the start of the buffer. */
const ARRIVED = 0;
const GENERATION = 1;
const ABORTED = 2;
const CONTROL_WORDS = 4;

/** Thrown in every rank waiting at a barrier of a group that was aborted (a rank failed). */
export class TensorParallelAborted extends Error {
  constructor() {
    super('the tensor-parallel group was aborted: another rank failed');
    this.name = 'TensorParallelAborted';
  }
}

export class SharedMemoryAllReduce {
  /** Float32 values per rank's slot: longer data is reduced a slot at a time. */
  readonly slotSize: number;
  private readonly control: Int32Array;
  private readonly slots: Float32Array;

  /** The shared memory of a group of `worldSize` ranks, with slots of `slotSize` float32 values. */
  static allocate(worldSize: number, slotSize: number): SharedArrayBuffer {
    if (!Number.isInteger(worldSize) || worldSize < 1)
      throw new RangeError(`SharedMemoryAllReduce: worldSize must be an integer >= 1, got ${worldSize}`);
    if (!Number.isInteger(slotSize) || slotSize < 1)
      throw new RangeError(`SharedMemoryAllReduce: slotSize must be an integer >= 1, got ${slotSize}`);
    return new SharedArrayBuffer(4 * (CONTROL_WORDS + worldSize * slotSize));
  }

  /** Rank `rank`'s view of the group's memory (each rank's thread makes its own, over the same buffer). */
  constructor(
    readonly shared: SharedArrayBuffer,
    readonly rank: number,
    readonly worldSize: number,
  ) {
    this.slotSize = (shared.byteLength / 4 - CONTROL_WORDS) / worldSize;
    if (!Number.isInteger(this.slotSize) || this.slotSize < 1) {
      throw new RangeError(
        `SharedMemoryAllReduce: a buffer of ${shared.byteLength} bytes is not one of ${worldSize} ranks (use SharedMemoryAllReduce.allocate)`,
      );
    }
    if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize)
      throw new RangeError(`SharedMemoryAllReduce: rank ${rank} is not in [0, ${worldSize})`);
    this.control = new Int32Array(shared, 0, CONTROL_WORDS);
    this.slots = new Float32Array(shared, 4 * CONTROL_WORDS, worldSize * this.slotSize);
  }

  /** Rank r's slot. */
  slot(r: number): Float32Array {
    return this.slots.subarray(r * this.slotSize, (r + 1) * this.slotSize);
  }

  /**
   * Returns once every rank of the group has called barrier() as many times as this one. Count the arrivals in
   * control[ARRIVED] (Atomics.add); the last rank to arrive sets the count back to 0 and moves
   * control[GENERATION] on (Atomics.add, then Atomics.notify); the others wait for the generation to change
   * with this.waitWhile(GENERATION, generation), which also wakes them if the group is aborted.
   */
  barrier(): void {
    throw new NotImplemented('3.6', 'SharedMemoryAllReduce.barrier');
  }

  /**
   * data becomes the sum of every rank's data (each rank calls it with data of the same length): write it into
   * this rank's slot, wait for every rank to have written, add the N slots in the same order on every rank,
   * and wait again before the slot can be written with the next values. Data longer than a slot goes a slot
   * at a time.
   */
  allReduce(data: Float32Array): void {
    throw new NotImplemented('3.6', 'SharedMemoryAllReduce.allReduce');
  }

  /**
   * Wakes every rank waiting at a barrier, and makes every later wait throw TensorParallelAborted, until
   * reset(). Any thread that can see the buffer may call it (a rank that failed, or whoever saw it die).
   */
  abort(): void {
    Atomics.store(this.control, ABORTED, 1);
    // Moving the generation on wakes the waiters, and makes one that is about to wait return at once.
    Atomics.add(this.control, GENERATION, 1);
    Atomics.notify(this.control, GENERATION);
  }

  get aborted(): boolean {
    return Atomics.load(this.control, ABORTED) !== 0;
  }

  /** Blocks while control[index] holds `value`; throws TensorParallelAborted once the group is aborted. */
  protected waitWhile(index: number, value: number): void {
    for (;;) {
      // abort() sets the flag before it moves the word: a changed word is checked against the flag first.
      const changed = Atomics.load(this.control, index) !== value;
      if (this.aborted) throw new TensorParallelAborted();
      if (changed) return;
      Atomics.wait(this.control, index, value);
    }
  }
}

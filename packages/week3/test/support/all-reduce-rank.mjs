// One rank of the shared-memory all-reduce tests (test/3.6-tensor-parallelism.test.ts), in a worker thread. It
// imports the all-reduce under test by path (workerData.modulePath: the learner's file or the reference's, as
// the test's solution switch says), runs its task and posts one message: what it saw, or the error it threw.
//
// Tasks:
//   rounds   `rounds` all-reduces of `length` values; rank r's element i at round k (from 1) is
//            k * 2^(r + 4) + i, so a sum that read a rank's slot a round early or late is off by that rank's
//            2^(r + 4) (grading's explainRoundError). Random pauses before each call shake out races. Posts the
//            first wrong sum, if any.
//   random   `rounds` all-reduces of random floats; posts every input and every result (bits compared by the test).
//   abort    rank `abortRank` calls abort() at round `abortAt`; the others must throw instead of waiting.
import { parentPort, workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
const { modulePath, shared, rank, worldSize, task } = workerData;

/** Busy-waits up to `micros` microseconds (a thread that sleeps would yield the core, a race needs both running). */
function pause(micros) {
  const until = performance.now() + Math.random() * micros * 1e-3;
  while (performance.now() < until);
}

/** A small seeded generator (mulberry32): the same floats for the same seed. */
function generator(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
  };
}

function rounds(group) {
  const data = new Float32Array(task.length);
  for (let k = 1; k <= task.rounds; k++) {
    for (let i = 0; i < data.length; i++) data[i] = k * 2 ** (rank + 4) + i;
    pause(task.pauseMicros);
    group.allReduce(data);
    for (let i = 0; i < data.length; i++) {
      const expected = k * (2 ** (worldSize + 4) - 16) + worldSize * i;
      if (data[i] !== expected) return { type: 'wrong', round: k, index: i, got: data[i], expected };
    }
  }
  return { type: 'done' };
}

function random(group) {
  const next = generator(1000 * task.seed + rank);
  const inputs = [];
  const results = [];
  for (let k = 0; k < task.rounds; k++) {
    const data = Float32Array.from({ length: task.length }, () => next() * 10 ** Math.floor(next() * 8 - 3));
    inputs.push(Float32Array.from(data));
    pause(task.pauseMicros);
    group.allReduce(data);
    results.push(data);
  }
  return { type: 'done', inputs, results };
}

function abort(group) {
  const data = new Float32Array(task.length);
  for (let k = 0; ; k++) {
    if (rank === task.abortRank && k === task.abortAt) {
      group.abort();
      return { type: 'done' };
    }
    group.allReduce(data);
  }
}

try {
  const { SharedMemoryAllReduce } = await import(modulePath);
  const group = new SharedMemoryAllReduce(shared, rank, worldSize);
  const run = { rounds, random, abort }[task.kind];
  parentPort.postMessage(run(group));
} catch (err) {
  parentPort.postMessage({ type: 'error', name: err?.name, message: String(err?.message ?? err) });
}

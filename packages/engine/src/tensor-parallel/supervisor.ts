// The supervisor of a tensor-parallel group's peers, in a thread of its own: it starts them and watches them.
// While a pass runs, the driver (rank 0) blocks in Atomics.wait, at a barrier or waiting for the peers to
// finish, so it cannot hear a thread's 'exit' event; this thread does nothing else, so it hears it at once. It
// then aborts the all-reduce on the dead rank's behalf (every rank waiting at a barrier wakes and throws),
// says why, and marks the rank dead in the `done` words (which wakes the driver if it waits there; the
// reason is posted first, so that the driver finds it when it wakes).
import type { MessagePort } from 'node:worker_threads';
import { Worker, workerData } from 'node:worker_threads';
import { DEAD, type GroupMemory, type GroupSpec, type Report } from './protocol.ts';
import { allReduceClass } from './rank-model.ts';

interface SupervisorData {
  spec: GroupSpec;
  memory: GroupMemory;
  /** Each peer's command port, for ranks 1..N-1. */
  ports: MessagePort[];
  /** Where deaths are reported to the driver. */
  reports: MessagePort;
}

const { spec, memory, ports, reports } = workerData as SupervisorData;
const SharedMemoryAllReduce = await allReduceClass(spec.code);
const done = new Int32Array(memory.done);

ports.forEach((port, i) => {
  const rank = i + 1;
  const peer = new Worker(new URL('./thread-entry.mjs', import.meta.url), {
    workerData: { script: './peer.ts', spec, memory, rank, port },
    transferList: [port],
  });
  let error: string | null = null;
  peer.on('error', (err) => (error = err.message));
  peer.on('exit', (code) => {
    new SharedMemoryAllReduce(memory.allReduce, rank, spec.worldSize).abort();
    reports.postMessage({ type: 'died', rank, reason: error ?? `its thread exited with code ${code}` } satisfies Report);
    Atomics.store(done, rank, DEAD);
    Atomics.notify(done, rank);
  });
});

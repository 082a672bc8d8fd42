// A peer of a tensor-parallel group (ranks 1..N-1), in a thread of its own, started by the supervisor. It
// loads its shard of the model, then runs the driver's commands in the order they come and marks each one
// done in the shared `done` words. A command that fails here is reported on the port and aborts the
// all-reduce, so that no rank waits at a barrier for this one; a rank woken that way has nothing to report.
import type { MessagePort } from 'node:worker_threads';
import { workerData } from 'node:worker_threads';
import type { Tensor } from '@tiny-llm/tensor-core';
import { oneLine } from '../errors.ts';
import type { Fault, GroupMemory, GroupSpec, Report, ToPeer } from './protocol.ts';
import { Rank } from './rank.ts';
import { allReduceClass, loadRankModel, tensorAllReduce } from './rank-model.ts';

interface PeerData {
  spec: GroupSpec;
  memory: GroupMemory;
  rank: number;
  port: MessagePort;
}

const { spec, memory, rank, port } = workerData as PeerData;
const SharedMemoryAllReduce = await allReduceClass(spec.code);
const group = new SharedMemoryAllReduce(memory.allReduce, rank, spec.worldSize);
const done = new Int32Array(memory.done);
const reduce = tensorAllReduce(group);

// A planted fault (tests): counts this rank's all-reduces, and fails at the chosen one.
let fault: Fault | null = null;
let allReduces = 0;
const allReduce = (partial: Tensor): Tensor => {
  if (fault && ++allReduces === fault.afterAllReduces) {
    if (fault.how === 'exit') process.exit(1);
    throw new Error(`a fault planted in rank ${rank} at its all-reduce ${allReduces}`);
  }
  return reduce(partial);
};

const markDone = (seq: number) => {
  Atomics.store(done, rank, seq);
  Atomics.notify(done, rank);
};

// A shard that cannot load throws here: the supervisor hears it as this thread's error and reports it.
const self = new Rank(await loadRankModel(spec, { rank, worldSize: spec.worldSize }, allReduce), rank, allReduce);
markDone(0);

port.on('message', (message: ToPeer) => {
  if ('fault' in message) {
    fault = message.fault;
    allReduces = 0;
    return;
  }
  try {
    self.execute(message.command)?.dispose();
  } catch (err) {
    if (!group.aborted) {
      port.postMessage({ type: 'failed', rank, message: oneLine(err) } satisfies Report);
      group.abort();
    }
  }
  markDone(message.seq);
});

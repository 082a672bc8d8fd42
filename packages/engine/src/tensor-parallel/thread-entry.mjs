// The entry of a tensor-parallel group's threads (the supervisor, the peers): Node 20 does not carry tsx's loader
// into a worker by its flags, so the thread registers it itself, then runs the TypeScript file workerData.script.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(new URL(workerData.script, import.meta.url).href);

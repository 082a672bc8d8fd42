// The worker thread's entry: Node 20 does not carry tsx's loader into a worker by its flags, so the worker
// registers it itself, then runs the TypeScript worker.
import { register } from 'tsx/esm/api';

register();
await import('./worker.ts');

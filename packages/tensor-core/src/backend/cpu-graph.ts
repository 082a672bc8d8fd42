// A CpuGraph is a run of native kernel calls recorded once (CpuBackend.capture) and made again on demand, with
// no JavaScript between them: the CPU's counterpart of a CUDA graph. A model's one-token decode step is dozens of
// small kernels, each reached through op wrappers, output allocations, views and scopes; on a small model that
// JavaScript took as long as the kernels. Replaying the recorded calls keeps only the kernels.
//
// A replay repeats the calls exactly as recorded: the same buffers, the same numbers. So it is only valid while
// what fn read outside its own temporaries still has the same buffers (weights, a KV cache that has not grown),
// and only for work whose calls do not depend on values (no branch on data read back in JavaScript). Nor is
// what JavaScript writes part of the recording: a tensor fn makes from an array holds the array's values at
// the capture only, and its buffer may serve another temporary of fn once it is freed. Such an input must stay
// alive for the whole of fn (made by the caller, or at fn's start), and the caller writes it before each
// replay. What changes between replays is the contents of those buffers (the next
// token id written into an input tensor) and, where the caller knows a call's argument changes (a position),
// that argument, set in `calls` before replay().
import type { NativeCall } from '../extension.ts';

export class CpuGraph<T> {
  constructor(
    /** What the recorded function returned: its outputs, which every replay writes again. */
    readonly result: T,
    /** The recorded calls, in order; a caller may change an argument in place before a replay. */
    readonly calls: readonly NativeCall[],
  ) {}

  /** Makes every recorded call again, in order. */
  replay(): void {
    for (const { kernel, args } of this.calls) kernel(...args);
  }
}

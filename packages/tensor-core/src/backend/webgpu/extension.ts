// Running another package's WGSL kernel on tensor-core's GPU tensors: the GPU counterpart of the C++
// extension SDK (native/include/tiny_llm/extension.h). The course's GPU chapters write their kernels so.
//
// The kernel is a WgslKernel (entry point `main`). It binds tensors by binding name, each seen from its first
// element, and takes its scalar arguments as a `struct Params` bound as a uniform; override constants and
// the number of workgroups come with the call. The README's "Writing GPU kernels" section is the guide.
import { itemSize, type DType } from '../../dtype.ts';
import { contiguousStrides, sizeOf } from '../../shape.ts';
import type { Tensor } from '../../tensor.ts';
import { copy } from './elementwise.ts';
import type { GpuRuntime } from './runtime.ts';
import type { ParamValues, WgslKernel } from './shader.ts';
import { isContiguous, type View } from './views.ts';

export interface KernelArgs {
  /**
   * A tensor for every storage binding of the kernel, by binding name. Bindings declared `var<storage,
   * read>` are inputs; `var<storage, read_write>` ones are outputs (and may be read too).
   */
  tensors: Record<string, Tensor>;
  /** The fields of the kernel's `struct Params`, by name (numbers, or arrays for vectors). */
  params?: ParamValues;
  /** Values of the kernel's `override` constants (workgroup sizes, tile sizes, ...). */
  constants?: Record<string, number>;
  /** Workgroups to dispatch: a count along x, or [x, y, z]. */
  workgroups: number | readonly number[];
}

/**
 * Dispatches `kernel` (see KernelArgs). Each tensor is bound so that the kernel sees its elements, row-major,
 * from index 0 of its binding: a tensor that is not contiguous, or whose first element does not start a
 * bindable range (minStorageBufferOffsetAlignment), goes through a contiguous copy, and an output so copied
 * is written back into its view after the kernel. For a binding declared as words (array<u32>, or
 * array<atomic<u32>> to write), the accessors of shader.ts are generated for the tensor's dtype.
 */
export function runKernel(rt: GpuRuntime, kernel: WgslKernel, args: KernelArgs, view: (op: string, t: Tensor) => View): void {
  const op = kernel.name;
  const buffers: Record<string, { buffer: GPUBuffer; offset: number; size: number }> = {};
  const dtypes: Record<string, DType> = {};
  const writeBacks: [View, View][] = [];
  const temporaries: GPUBuffer[] = [];
  const outputs = new Set<GPUBuffer>();
  const storages = new Map<GPUBuffer, string>();
  for (const [name, tensor] of Object.entries(args.tensors)) {
    const binding = kernel.bindings.get(name);
    if (!binding || binding.kind === 'uniform') throw new Error(`${op}: the kernel has no storage binding ${name}`);
    const v = view(op, tensor);
    // Two names for one storage that the kernel writes would alias (the copies below would hide it).
    const other = storages.get(v.buffer);
    if (other !== undefined && (binding.kind === 'storage' || outputs.has(v.buffer))) {
      throw new Error(`${op}: ${name} and ${other} share storage, and the kernel writes one of them`);
    }
    storages.set(v.buffer, name);
    if (binding.kind === 'storage') outputs.add(v.buffer);

    let bound = v;
    const byteOffset = v.offset * itemSize(v.dtype);
    if (!isContiguous(v) || byteOffset % rt.limits.minStorageBufferOffsetAlignment !== 0) {
      bound = { ...v, buffer: rt.createBuffer(op, sizeOf(v.shape) * itemSize(v.dtype)), strides: contiguousStrides(v.shape), offset: 0 };
      temporaries.push(bound.buffer);
      copy(rt, v, bound);
      if (binding.kind === 'storage') writeBacks.push([bound, v]);
    }
    const start = bound.offset * itemSize(v.dtype);
    const size = Math.max(4, Math.ceil((sizeOf(v.shape) * itemSize(v.dtype)) / 4) * 4);
    buffers[name] = { buffer: bound.buffer, offset: start, size: Math.min(size, bound.buffer.size - start) };
    if (binding.type === 'array<u32>' || binding.type === 'array<atomic<u32>>') dtypes[name] = v.dtype;
  }
  const workgroups = typeof args.workgroups === 'number' ? [args.workgroups] : args.workgroups;
  rt.dispatch(op, kernel, { buffers, dtypes, params: args.params, constants: args.constants, workgroups });
  for (const [from, to] of writeBacks) copy(rt, from, to);
  for (const buffer of temporaries) rt.destroyLater(buffer);
}

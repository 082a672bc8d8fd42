// What every GPU kernel goes through: buffers within the device's limits, pipelines compiled once per kernel
// variant, uniform blocks of parameters, batched submission, reading back, and the errors kernels report.
//
// Kernels are recorded into one pending compute pass and submitted together (on read, flush(), or every
// MAX_PENDING dispatches), because a queue submit per op costs more than most small ops themselves.
// Dispatches within one pass see each other's writes: WebGPU orders them like separate submits.
import { DeviceLimitError } from '../backend.ts';
import type { DType } from '../../dtype.ts';
import { accessors, type ParamValues, type WgslKernel } from './shader.ts';

/** Dispatches recorded before the pending pass is submitted anyway. */
const MAX_PENDING = 128;
/** Distinct parameter blocks kept on the device (decode repeats the same shapes every token). */
const MAX_PARAM_BUFFERS = 512;

// GPUBufferUsage / GPUMapMode / GPUShaderStage values (fixed by the spec), so that nothing has to be
// installed on globalThis.
export const USAGE = { MAP_READ: 0x1, COPY_SRC: 0x4, COPY_DST: 0x8, UNIFORM: 0x40, STORAGE: 0x80 } as const;
const MAP_MODE_READ = 0x1;
const SHADER_STAGE_COMPUTE = 0x4;

/** A range of a buffer to bind (offset a multiple of minStorageBufferOffsetAlignment). */
export interface BufferRange {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

export interface Dispatch {
  /** The entry point (default `main`). */
  entryPoint?: string;
  /** Values of the kernel's `override` constants. */
  constants?: Record<string, number>;
  /** The dtypes of the kernel's typed bindings (see shader.ts): the runtime generates their accessors. */
  dtypes?: Record<string, DType>;
  /** A buffer for every storage binding of the kernel, by binding name. */
  buffers: Record<string, GPUBuffer | BufferRange>;
  /** The fields of the kernel's `struct Params`, by name. */
  params?: ParamValues;
  /** Workgroups along x, y and z. */
  workgroups: readonly number[];
}

interface KernelPipelines {
  layout: GPUPipelineLayout;
  bindGroupLayout: GPUBindGroupLayout;
  variants: Map<string, GPUComputePipeline>;
}

export class GpuRuntime {
  readonly device: GPUDevice;
  readonly limits: GPUSupportedLimits;
  /** Invocations per workgroup the kernels may use: the device's limit, or a lower cap. */
  readonly invocations: number;
  /**
   * Where kernels report a bad index (take): the first failure's [code, index, position, limit]. It is
   * checked, and cleared, whenever data is read back, so the error reaches the caller at the next read.
   */
  readonly checks: GPUBuffer;
  private readonly indexCheckOps: string[] = [];
  private readonly kernels = new Map<WgslKernel, KernelPipelines>();
  private readonly paramBuffers = new Map<string, GPUBuffer>();
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private pendingDispatches = 0;
  /** Buffers released while recorded commands still use them: destroyed after the next submit. */
  private destroyAfterSubmit: GPUBuffer[] = [];
  private firstError: string | null = null;
  private destroyed = false;

  constructor(device: GPUDevice, maxInvocations = Infinity) {
    this.device = device;
    this.limits = device.limits;
    this.invocations = Math.min(maxInvocations, this.limits.maxComputeInvocationsPerWorkgroup, this.limits.maxComputeWorkgroupSizeX);
    this.checks = device.createBuffer({ size: 16, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST });
    // Validation errors arrive asynchronously; keep the first and throw it from the next read.
    device.addEventListener('uncapturederror', (event) => {
      this.firstError ??= (event as GPUUncapturedErrorEvent).error.message;
    });
    device.lost.then((info) => {
      if (!this.destroyed) this.firstError ??= `device lost: ${info.message}`;
    });
  }

  get isDestroyed(): boolean {
    return this.destroyed;
  }

  assertAlive(op: string): void {
    if (this.destroyed) throw new Error(`${op}: the webgpu backend has been destroyed`);
  }

  /** A storage buffer of at least `byteLength` bytes, rounded up to whole words (shaders read u32s). */
  createBuffer(op: string, byteLength: number): GPUBuffer {
    this.assertAlive(op);
    const size = Math.max(4, roundUp(byteLength, 4));
    if (size > this.limits.maxBufferSize) {
      throw new DeviceLimitError(
        `${op}: ${byteLength} bytes exceed this device's maxBufferSize (${this.limits.maxBufferSize})`,
        'maxBufferSize',
      );
    }
    return this.device.createBuffer({ size, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST });
  }

  /** Destroys a buffer once the commands recorded so far no longer need it. */
  destroyLater(buffer: GPUBuffer): void {
    if (this.encoder) this.destroyAfterSubmit.push(buffer);
    else buffer.destroy();
  }

  /** Workgroups for `groups` along x, spilling into y past the device's per-dimension limit. */
  grid(groups: number, z = 1): [number, number, number] {
    const x = Math.max(1, Math.min(groups, this.limits.maxComputeWorkgroupsPerDimension));
    return [x, Math.ceil(groups / x), z];
  }

  /**
   * The code a kernel writes into `checks` when it finds an index out of range, for ops that check
   * indices on the GPU; the error message then names `op`.
   */
  indexCheckCode(op: string): number {
    let i = this.indexCheckOps.indexOf(op);
    if (i < 0) i = this.indexCheckOps.push(op) - 1;
    return i + 1;
  }

  /** Records one dispatch of a variant of `kernel`. Validates what WebGPU would only report later. */
  dispatch(op: string, kernel: WgslKernel, d: Dispatch): void {
    this.assertAlive(op);
    const entries: GPUBindGroupEntry[] = [];
    for (const name of Object.keys(d.buffers)) {
      if (!kernel.bindings.has(name)) throw new Error(`${op}: kernel ${kernel.name} has no binding ${name}`);
    }
    const writable: GPUBuffer[] = [];
    const bound: GPUBuffer[] = [];
    for (const b of kernel.bindings.values()) {
      if (b.kind === 'uniform') continue;
      const given = d.buffers[b.name];
      if (!given) throw new Error(`${op}: kernel ${kernel.name} needs a buffer for binding ${b.name}`);
      const range = 'buffer' in given ? given : { buffer: given, offset: 0, size: given.size };
      if (range.size > this.limits.maxStorageBufferBindingSize) {
        throw new DeviceLimitError(
          `${op}: binding ${b.name} of ${range.size} bytes exceeds this device's maxStorageBufferBindingSize ` +
            `(${this.limits.maxStorageBufferBindingSize})`,
          'maxStorageBufferBindingSize',
        );
      }
      (b.kind === 'storage' ? writable : bound).push(range.buffer);
      entries.push({ binding: b.binding, resource: range });
    }
    // A buffer written by a kernel may not be bound twice in one dispatch (WebGPU forbids the aliasing).
    for (const [i, w] of writable.entries()) {
      if (bound.includes(w) || writable.indexOf(w) !== i) {
        throw new Error(`${op}: the output shares storage with an input, which webgpu kernels cannot write`);
      }
    }
    const [x, y = 1, z = 1] = d.workgroups;
    const maxGroups = this.limits.maxComputeWorkgroupsPerDimension;
    if ([x, y, z].some((g) => g > maxGroups)) {
      throw new DeviceLimitError(
        `${op}: ${[x, y, z].join(' x ')} workgroups exceed this device's maxComputeWorkgroupsPerDimension (${maxGroups})`,
        'maxComputeWorkgroupsPerDimension',
      );
    }
    if (x * y * z === 0) return;
    if (kernel.paramsBinding) {
      const binding = kernel.bindings.get(kernel.paramsBinding)!.binding;
      entries.push({ binding, resource: { buffer: this.paramBuffer(kernel.packParams(d.params ?? {})) } });
    }
    const { pipeline, bindGroupLayout } = this.pipeline(kernel, d.entryPoint ?? 'main', d.constants ?? {}, d.dtypes ?? {});
    const bindGroup = this.device.createBindGroup({ layout: bindGroupLayout, entries });
    if (!this.encoder) {
      this.encoder = this.device.createCommandEncoder();
      this.pass = this.encoder.beginComputePass();
    }
    this.pass!.setPipeline(pipeline);
    this.pass!.setBindGroup(0, bindGroup);
    this.pass!.dispatchWorkgroups(x, y, z);
    if (++this.pendingDispatches >= MAX_PENDING) this.flush();
  }

  /** Submits the recorded kernels now (reads do it themselves). */
  flush(): void {
    if (!this.encoder) return;
    this.pass!.end();
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.pass = null;
    this.pendingDispatches = 0;
    for (const buffer of this.destroyAfterSubmit) buffer.destroy();
    this.destroyAfterSubmit = [];
  }

  /**
   * Bytes [byteOffset, byteOffset + byteLength) of `buffer`, once every recorded kernel has run. Throws the
   * first error a kernel or the device reported since the last read.
   */
  async read(op: string, buffer: GPUBuffer, byteOffset: number, byteLength: number): Promise<ArrayBuffer> {
    // copyBufferToBuffer takes 4-byte aligned offsets and sizes: copy the enclosing words, slice after.
    const start = byteOffset & ~3;
    const size = roundUp(byteOffset + byteLength, 4) - start;
    // The checks words travel in the same staging buffer, after the data.
    const staging = this.device.createBuffer({ size: size + 16, usage: USAGE.MAP_READ | USAGE.COPY_DST });
    this.flush();
    const encoder = this.device.createCommandEncoder();
    if (size > 0) encoder.copyBufferToBuffer(buffer, start, staging, 0, size);
    encoder.copyBufferToBuffer(this.checks, 0, staging, size, 16);
    encoder.clearBuffer(this.checks);
    this.device.queue.submit([encoder.finish()]);
    try {
      await staging.mapAsync(MAP_MODE_READ);
      const mapped = staging.getMappedRange();
      const bytes = mapped.slice(byteOffset - start, byteOffset - start + byteLength);
      const [code, index, position, limit] = new Uint32Array(mapped.slice(size, size + 16));
      staging.unmap();
      this.throwDeviceError(op);
      if (code !== 0) {
        const by = this.indexCheckOps[code - 1] ?? 'a kernel';
        throw new RangeError(
          `${by}: index ${index | 0} at position ${position} is out of range for an axis of ${limit} ` +
            `(found on the GPU, reported at this read)`,
        );
      }
      return bytes;
    } finally {
      staging.destroy();
    }
  }

  destroy(): void {
    if (this.destroyed) return;
    this.flush();
    for (const buffer of this.paramBuffers.values()) buffer.destroy();
    this.paramBuffers.clear();
    this.kernels.clear();
    this.checks.destroy();
    this.destroyed = true;
  }

  private throwDeviceError(op: string): void {
    if (this.firstError === null) return;
    const message = this.firstError;
    this.firstError = null;
    throw new Error(`${op}: a webgpu kernel failed: ${message}`);
  }

  /** The compiled variant (cached): the kernel's source plus the accessors of its typed bindings. */
  private pipeline(kernel: WgslKernel, entryPoint: string, constants: Record<string, number>, dtypes: Record<string, DType>) {
    let entry = this.kernels.get(kernel);
    if (!entry) {
      // An explicit layout from the declared bindings, so that a binding the entry point does not use
      // (a variant that skips it) still takes its buffer.
      const bindGroupLayout = this.device.createBindGroupLayout({
        label: kernel.name,
        entries: [...kernel.bindings.values()].map((b) => ({
          binding: b.binding,
          visibility: SHADER_STAGE_COMPUTE,
          buffer: { type: b.kind },
        })),
      });
      const layout = this.device.createPipelineLayout({ label: kernel.name, bindGroupLayouts: [bindGroupLayout] });
      entry = { layout, bindGroupLayout, variants: new Map() };
      this.kernels.set(kernel, entry);
    }
    const key = JSON.stringify([entryPoint, Object.entries(constants).sort(), Object.entries(dtypes).sort()]);
    let pipeline = entry.variants.get(key);
    if (!pipeline) {
      const label = `${kernel.name}${key}`;
      const code = kernel.code + accessors(kernel, dtypes);
      const shader = this.device.createShaderModule({ label, code });
      pipeline = this.device.createComputePipeline({
        label,
        layout: entry.layout,
        compute: { module: shader, entryPoint, constants },
      });
      entry.variants.set(key, pipeline);
    }
    return { pipeline, bindGroupLayout: entry.bindGroupLayout };
  }

  /** A uniform buffer holding these bytes, shared by every dispatch with the same values. */
  private paramBuffer(bytes: ArrayBuffer): GPUBuffer {
    const key = Array.from(new Uint32Array(bytes)).join(',');
    let buffer = this.paramBuffers.get(key);
    if (buffer) {
      // Re-insert, so that the Map's order is least recently used first.
      this.paramBuffers.delete(key);
      this.paramBuffers.set(key, buffer);
      return buffer;
    }
    buffer = this.device.createBuffer({ size: bytes.byteLength, usage: USAGE.UNIFORM, mappedAtCreation: true });
    new Uint8Array(buffer.getMappedRange()).set(new Uint8Array(bytes));
    buffer.unmap();
    this.paramBuffers.set(key, buffer);
    if (this.paramBuffers.size > MAX_PARAM_BUFFERS) {
      const [oldestKey, oldest] = this.paramBuffers.entries().next().value!;
      this.paramBuffers.delete(oldestKey);
      this.destroyLater(oldest);
    }
    return buffer;
  }
}

export const roundUp = (n: number, multiple: number) => Math.ceil(n / multiple) * multiple;

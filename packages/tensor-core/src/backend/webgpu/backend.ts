// The WebGPU backend (docs/architecture.md, "tensor-core"): storage is a GPUBuffer, kernels are WGSL compute shaders (kernels/*.wgsl)
// run by Dawn: Vulkan, Metal or D3D12 on a real GPU, Mesa's software GLES in CI. This class holds the
// memory and hands each kernel of the Backend interface to the file of its op family.
import { itemSize, storageView, type DType, type StorageArray } from '../../dtype.ts';
import { contiguousStrides, sizeOf } from '../../shape.ts';
import type { QuantizedWeight } from '../../io/quantized.ts';
import type { Tensor } from '../../tensor.ts';
import type { Backend, BinaryOp, ReduceOp, Storage, UnaryOp } from '../backend.ts';
import * as elementwise from './elementwise.ts';
import { runKernel, type KernelArgs } from './extension.ts';
import * as fast from './fast.ts';
import * as gather from './gather.ts';
import * as linalg from './matmul.ts';
import * as rows from './reduce.ts';
import { GpuRuntime } from './runtime.ts';
import { kernel, type WgslKernel } from './shader.ts';
import { isContiguous, type View } from './views.ts';

export interface WebGPUBackendOptions {
  /** Caps the invocations per workgroup the kernels use (defaults to the device limit). */
  maxInvocations?: number;
  /** Destroy the device in destroy(); false for a backend that shares another one's device. */
  ownsDevice?: boolean;
  /** Called once by destroy() (initWebGPU uses it to forget its instance). */
  onDestroy?: () => void;
  adapterName?: string;
}

export class GpuStorage implements Storage {
  refs = 0;
  released = false;
  constructor(
    readonly backend: WebGPUBackend,
    readonly buffer: GPUBuffer,
    /** The logical size; the buffer itself is rounded up to whole 4-byte words. */
    readonly byteLength: number,
  ) {}
}

export class WebGPUBackend implements Backend {
  readonly name = 'webgpu';
  readonly device: GPUDevice;
  /** The adapter and the Dawn backend it came from, for logs. */
  readonly adapterName: string;
  /** Pipelines, parameter blocks and submission (runtime.ts); extension kernels run through it too. */
  readonly runtime: GpuRuntime;

  private readonly ownsDevice: boolean;
  private readonly onDestroy?: () => void;

  constructor(device: GPUDevice, options: WebGPUBackendOptions = {}) {
    this.device = device;
    this.runtime = new GpuRuntime(device, options.maxInvocations);
    this.ownsDevice = options.ownsDevice ?? false;
    this.onDestroy = options.onDestroy;
    this.adapterName = options.adapterName ?? 'unknown adapter';
  }

  /** The device's limits (maxStorageBufferBindingSize, maxBufferSize, ...). */
  get limits(): GPUSupportedLimits {
    return this.runtime.limits;
  }

  /** Submits the recorded kernels now (reads do it themselves). */
  flush(): void {
    this.runtime.flush();
  }

  /** Frees the device (when this backend created it) and everything on it; the backend is unusable after. */
  destroy(): void {
    if (this.runtime.isDestroyed) return;
    this.runtime.destroy();
    if (this.ownsDevice) this.device.destroy();
    this.onDestroy?.();
  }

  // ---- memory

  allocate(dtype: DType, size: number): GpuStorage {
    const byteLength = size * itemSize(dtype);
    return new GpuStorage(this, this.runtime.createBuffer('allocate', byteLength), byteLength);
  }

  upload(data: StorageArray): GpuStorage {
    const buffer = this.runtime.createBuffer('upload', data.byteLength);
    const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    // writeBuffer takes whole words: copy the tail into a padded word when the length is not a multiple of 4.
    const whole = data.byteLength & ~3;
    if (whole > 0) this.device.queue.writeBuffer(buffer, 0, bytes, 0, whole);
    if (whole < data.byteLength) {
      const tail = new Uint8Array(4);
      tail.set(bytes.subarray(whole));
      this.device.queue.writeBuffer(buffer, whole, tail);
    }
    return new GpuStorage(this, buffer, data.byteLength);
  }

  release(storage: Storage): void {
    const s = storage as GpuStorage;
    if (s.released) return;
    s.released = true;
    if (this.runtime.isDestroyed) return;
    this.runtime.destroyLater(s.buffer);
  }

  async read(x: Tensor): Promise<StorageArray> {
    const v = this.view('read', x);
    const size = itemSize(v.dtype);
    const n = sizeOf(v.shape);
    // A strided view is gathered into a contiguous temporary first.
    const src = isContiguous(v) || n === 0 ? v : this.contiguousCopy('read', v);
    try {
      return storageView(v.dtype, await this.runtime.read('read', src.buffer, src.offset * size, n * size));
    } finally {
      if (src !== v) src.buffer.destroy();
    }
  }

  // ---- kernels

  unary(op: UnaryOp, x: Tensor, out: Tensor): void {
    elementwise.unary(this.runtime, op, this.view(op, x), this.view(op, out));
  }

  binary(op: BinaryOp, a: Tensor, b: Tensor, out: Tensor): void {
    elementwise.binary(this.runtime, op, this.view(op, a), this.view(op, b), this.view(op, out));
  }

  where(cond: Tensor, a: Tensor, b: Tensor, out: Tensor): void {
    const [vc, va, vb, vo] = [cond, a, b, out].map((t) => this.view('where', t));
    elementwise.where(this.runtime, vc, va, vb, vo);
  }

  matmul(a: Tensor, b: Tensor, out: Tensor): void {
    const [va, vb, vo] = [a, b, out].map((t) => this.view('matmul', t));
    linalg.matmul(this.runtime, va, vb, vo);
  }

  reduce(op: ReduceOp, x: Tensor, out: Tensor): void {
    rows.reduce(this.runtime, op, this.view(op, x), this.view(op, out));
  }
  softmax(x: Tensor, out: Tensor): void {
    rows.reduce(this.runtime, 'softmax', this.view('softmax', x), this.view('softmax', out));
  }
  cumsum(x: Tensor, out: Tensor): void {
    rows.cumsum(this.runtime, this.view('cumsum', x), this.view('cumsum', out));
  }
  argsort(x: Tensor, out: Tensor, descending: boolean): void {
    rows.argsort(this.runtime, this.view('argsort', x), this.view('argsort', out), descending);
  }
  take(table: Tensor, indices: Tensor, out: Tensor): void {
    const [vt, vi, vo] = [table, indices, out].map((t) => this.view('take', t));
    gather.take(this.runtime, vt, vi, vo);
  }
  takeAlongAxis(x: Tensor, indices: Tensor, out: Tensor): void {
    const [vx, vi, vo] = [x, indices, out].map((t) => this.view('takeAlongAxis', t));
    gather.takeAlongAxis(this.runtime, vx, vi, vo);
  }
  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void {
    const [vx, vw, vo] = [x, weight, out].map((t) => this.view('rmsNorm', t));
    fast.rmsNorm(this.runtime, vx, vw, eps, vo);
  }
  rope(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, traditional: boolean, out: Tensor): void {
    const [vx, vc, vs, vp, vo] = [x, cos, sin, positions, out].map((t) => this.view('rope', t));
    fast.rope(this.runtime, vx, vc, vs, vp, traditional, vo);
  }
  sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | 'causal' | null, scale: number, out: Tensor): void {
    const [vq, vk, vv, vo] = [q, k, v, out].map((t) => this.view('sdpa', t));
    const vm = mask === null || mask === 'causal' ? mask : this.view('sdpa', mask);
    fast.sdpa(this.runtime, vq, vk, vv, vm, scale, vo);
  }
  quantizedMatmul(x: Tensor, w: QuantizedWeight, out: Tensor): void {
    const op = 'quantizedMatmul';
    const [words, scales, biases] = [w.weight, w.scales, w.biases].map((t) => this.view(op, t));
    // The kernels read the words and the groups as contiguous rows, scales and biases at one offset: other
    // views are copied first.
    const copies: View[] = [];
    const copied = (v: View) => {
      copies.push(this.contiguousCopy(op, v));
      return copies[copies.length - 1];
    };
    const aligned = isContiguous(scales) && isContiguous(biases) && scales.offset === biases.offset;
    linalg.quantizedMatmul(
      this.runtime,
      this.view(op, x),
      {
        words: isContiguous(words) ? words : copied(words),
        scales: aligned ? scales : copied(scales),
        biases: aligned ? biases : copied(biases),
        bits: w.bits,
        groupSize: w.groupSize,
      },
      this.view(op, out),
    );
    for (const c of copies) this.runtime.destroyLater(c.buffer);
  }
  dequantize(w: QuantizedWeight, out: Tensor): void {
    const count = out.size;
    if (count === 0) return;
    const wg = Math.min(256, this.runtime.invocations);
    this.run(kernel('dequantize'), {
      tensors: { words: w.weight, scales: w.scales, biases: w.biases, out },
      params: { count, k: w.inFeatures, bits: w.bits, group_size: w.groupSize },
      constants: { WG: wg },
      workgroups: this.runtime.grid(Math.ceil(count / wg)),
    });
  }

  // ---- kernels of other packages

  /**
   * Runs a WGSL kernel written outside tensor-core on tensors of this backend: the tensors bound by binding
   * name, params and override constants by name (extension.ts; the README's "Writing GPU kernels").
   */
  run(kernel: WgslKernel, args: KernelArgs): void {
    runKernel(this.runtime, kernel, args, (op, t) => this.view(op, t));
  }

  // ---- internals

  /** A contiguous copy of a view in a new buffer (the caller destroys it). */
  private contiguousCopy(op: string, v: View): View {
    const buffer = this.runtime.createBuffer(op, sizeOf(v.shape) * itemSize(v.dtype));
    const copy = { buffer, dtype: v.dtype, shape: v.shape, strides: contiguousStrides(v.shape), offset: 0 };
    elementwise.copy(this.runtime, v, copy);
    return copy;
  }

  /** The tensor as kernels see it; checks that it is alive and lives on this backend. */
  view(op: string, t: Tensor): View {
    this.runtime.assertAlive(op);
    t.assertLive(op);
    const s = t.storage;
    if (!(s instanceof GpuStorage) || s.backend !== this) {
      throw new Error(`${op}: the tensor ${t.describe()} lives on the ${t.backend.name} backend, not this webgpu backend`);
    }
    return { buffer: s.buffer, dtype: t.dtype, shape: t.shape, strides: t.strides, offset: t.offset };
  }
}

// The CPU backend: storage is an ArrayBuffer, kernels are the C++ addon's (native/src/*.cc).
import { itemSize, storageView, type DType, type StorageArray } from '../dtype.ts';
import type { QuantizedWeight } from '../io/quantized.ts';
import { dequantizeInto } from '../io/quantized-layout.ts';
import { recordNativeCalls } from '../extension.ts';
import { native } from '../native.ts';
import { Tensor } from '../tensor.ts';
import type { Backend, BinaryOp, ReduceOp, Storage, UnaryOp } from './backend.ts';
import { BINARY_OPS, REDUCE_OPS, UNARY_OPS } from './backend.ts';
import { CpuGraph } from './cpu-graph.ts';

export class CpuStorage implements Storage {
  refs = 0;
  released = false;
  constructor(
    readonly backend: Backend,
    public buffer: ArrayBuffer,
    readonly byteOffset: number,
    readonly byteLength: number,
    /** The pool the buffer came from and goes back to on release; null for wrapped (mmap'd, user) memory. */
    readonly pool: BufferPool | null,
  ) {}

  get pooled(): boolean {
    return this.pool !== null;
  }
}

// Freshly allocated ArrayBuffers are zero-filled page by page on first touch, which is slow in this VM
// (docs/architecture.md, "tensor-core"), and even a small one costs microseconds, as much as the small kernel that fills it. Buffers
// of released tensors are kept per size and handed out again: a decode step that runs in tidy() allocates
// nothing new after the first token. The pool holds at most POOL_MAX_BYTES, and POOL_MAX_PER_SIZE buffers
// of one size.
const POOL_MAX_BYTES = 1 << 30;
const POOL_MAX_PER_SIZE = 64;

// Where a tensor starts in its buffer: at a multiple of 64 bytes, a cache line and an AVX-512 register. An
// ArrayBuffer's memory comes from malloc, 16 bytes past a 64-byte line or 48 or none, as it falls: a row of a
// tensor that starts mid-line straddles lines, and every 64-byte load of it touches two. (The decode attention
// kernel over a cache-resident KV buffer took 22-25 us aligned and 29-35 us not, from one process to the next.)
// So each buffer is ALIGNMENT bytes longer than its tensor, which starts at the buffer's first aligned address.
const ALIGNMENT = 64;
// Held here rather than looked up on `native` per call: a pool refill is bookkeeping, not a kernel call of the
// work a CpuGraph records.
const bytesToAlignment: (buffer: ArrayBuffer, alignment: number) => number = native.bytesToAlignment;

interface Block {
  buffer: ArrayBuffer;
  byteOffset: number;
}

export class BufferPool {
  private free = new Map<number, Block[]>();
  private bytes = 0;

  take(byteLength: number): Block {
    const block = this.free.get(byteLength)?.pop();
    if (block) {
      this.bytes -= byteLength;
      return block;
    }
    const buffer = new ArrayBuffer(byteLength + ALIGNMENT);
    return { buffer, byteOffset: bytesToAlignment(buffer, ALIGNMENT) };
  }

  give(block: Block, byteLength: number): void {
    let list = this.free.get(byteLength);
    if (!list) this.free.set(byteLength, (list = []));
    if (list.length >= POOL_MAX_PER_SIZE || this.bytes + byteLength > POOL_MAX_BYTES) return;
    list.push(block);
    this.bytes += byteLength;
  }
}

const UNARY_CODE = Object.fromEntries(UNARY_OPS.map((op, i) => [op, i])) as Record<UnaryOp, number>;
const BINARY_CODE = Object.fromEntries(BINARY_OPS.map((op, i) => [op, i])) as Record<BinaryOp, number>;
const REDUCE_CODE = Object.fromEntries(REDUCE_OPS.map((op, i) => [op, i])) as Record<ReduceOp, number>;

/**
 * The products of the CPU's large matmuls: 'float32', or 'bfloat16' (see CpuBackend.setMatmulPrecision).
 */
export type MatmulPrecision = 'float32' | 'bfloat16';

/** Bytes held by the tensors the CPU backend allocated (not wrapped or mapped memory, not the pool's free list). */
export interface MemoryInfo {
  liveBytes: number;
  /** The most liveBytes has been since the start or the last resetPeak(). */
  peakBytes: number;
}

class CpuBackend implements Backend {
  readonly name = 'cpu';
  private pool = new BufferPool();
  private liveBytes = 0;
  private peakBytes = 0;

  allocate(dtype: DType, size: number): CpuStorage {
    const byteLength = Math.max(size * itemSize(dtype), 0);
    this.liveBytes += byteLength;
    this.peakBytes = Math.max(this.peakBytes, this.liveBytes);
    const { buffer, byteOffset } = this.pool.take(byteLength);
    return new CpuStorage(this, buffer, byteOffset, byteLength, this.pool);
  }

  /** What the tensors alive now hold, and the high-water mark: how a model's temporaries are measured. */
  memory(): MemoryInfo {
    return { liveBytes: this.liveBytes, peakBytes: this.peakBytes };
  }

  /** Starts a new high-water mark at the current live bytes. */
  resetPeak(): void {
    this.peakBytes = this.liveBytes;
  }

  /**
   * How matmuls of more than 16 rows (prefill) multiply a bfloat16 weight passed in its linear layout (W [N, K]
   * as transpose(W)): 'float32' (the default) multiplies float32 activations by the weights widened exactly, so
   * results are float32 arithmetic; 'bfloat16' rounds the activations to bfloat16 and multiplies pairs with
   * AVX-512 BF16 (vdpbf16ps), about 1.8x the rate, sums still float32 but each product off by up to 2^-9. It
   * takes effect only where cpuFeatures() has avx512bf16 at level avx512; elsewhere, and for every other matmul,
   * products stay float32. Process-wide: it also applies to other addons' calls of tl::matmul.
   */
  setMatmulPrecision(precision: MatmulPrecision): void {
    native.setMatmulPrecision(precision);
  }

  matmulPrecision(): MatmulPrecision {
    return native.matmulPrecision();
  }

  /**
   * Runs fn once and returns what it returned with the native kernel calls it made, as a CpuGraph that can make
   * them again (see cpu-graph.ts). The tensors fn allocates come from a pool of the graph's own, so that the
   * buffers its calls write stay the graph's: once fn has disposed of its temporaries, no other tensor is ever
   * handed one of them.
   */
  capture<T>(fn: () => T): CpuGraph<T> {
    const shared = this.pool;
    this.pool = new BufferPool();
    try {
      const { result, calls } = recordNativeCalls(fn);
      return new CpuGraph(result, calls);
    } finally {
      this.pool = shared;
    }
  }

  /** Storage over memory that already exists (a file mapping, a user's buffer): no copy. */
  wrap(buffer: ArrayBuffer, byteOffset = 0, byteLength = buffer.byteLength - byteOffset): CpuStorage {
    return new CpuStorage(this, buffer, byteOffset, byteLength, null);
  }

  /**
   * Lets the operating system take back the resident pages under a contiguous tensor that is a view of a mapped
   * file (a checkpoint opened by loadSafetensors), once its values have been copied elsewhere: a page touched again
   * is read from the file again, with the same values. Returns the bytes let go: 0 for any other memory, which
   * this never touches.
   */
  releaseFilePages(x: Tensor): number {
    const s = x.storage as CpuStorage;
    if (s.pooled || !x.isContiguous || x.size === 0) return 0;
    const size = itemSize(x.dtype);
    return Number(native.releaseMappedPages(s.buffer, s.byteOffset + x.offset * size, x.size * size));
  }

  upload(data: StorageArray): CpuStorage {
    const storage = this.allocate('uint8', data.byteLength);
    new Uint8Array(storage.buffer, storage.byteOffset, data.byteLength).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    return storage;
  }

  release(storage: Storage): void {
    const s = storage as CpuStorage;
    s.released = true;
    if (s.pool) {
      this.liveBytes -= s.byteLength;
      s.pool.give({ buffer: s.buffer, byteOffset: s.byteOffset }, s.byteLength);
    }
    s.buffer = new ArrayBuffer(0);
  }

  readSync(x: Tensor): StorageArray {
    const s = x.storage as CpuStorage;
    if (x.isContiguous) {
      // A copy, so that the caller may keep it after the tensor's buffer is reused.
      const start = s.byteOffset + x.offset * itemSize(x.dtype);
      return storageView(x.dtype, s.buffer.slice(start, start + x.size * itemSize(x.dtype)));
    }
    const out = new Tensor(this.allocate(x.dtype, x.size), x.dtype, x.shape);
    this.unary('copy', x, out);
    const { buffer, byteOffset } = out.storage as CpuStorage;
    const data = storageView(x.dtype, buffer.slice(byteOffset, byteOffset + x.size * itemSize(x.dtype)));
    out.dispose();
    return data;
  }

  async read(x: Tensor): Promise<StorageArray> {
    return this.readSync(x);
  }

  unary(op: UnaryOp, x: Tensor, out: Tensor): void {
    native.unary(UNARY_CODE[op], x.native(), out.native());
  }
  binary(op: BinaryOp, a: Tensor, b: Tensor, out: Tensor): void {
    native.binary(BINARY_CODE[op], a.native(), b.native(), out.native());
  }
  where(cond: Tensor, a: Tensor, b: Tensor, out: Tensor): void {
    native.where(cond.native(), a.native(), b.native(), out.native());
  }
  reduce(op: ReduceOp, x: Tensor, out: Tensor): void {
    native.reduce(REDUCE_CODE[op], x.native(), out.native());
  }
  softmax(x: Tensor, out: Tensor): void {
    native.softmax(x.native(), out.native());
  }
  cumsum(x: Tensor, out: Tensor): void {
    native.cumsum(x.native(), out.native());
  }
  argsort(x: Tensor, out: Tensor, descending: boolean): void {
    native.argsort(x.native(), out.native(), descending);
  }
  matmul(a: Tensor, b: Tensor, out: Tensor): void {
    native.matmul(a.native(), b.native(), out.native());
  }
  take(table: Tensor, indices: Tensor, out: Tensor): void {
    native.take(table.native(), indices.native(), out.native());
  }
  takeAlongAxis(x: Tensor, indices: Tensor, out: Tensor): void {
    // Rare and small (top-k and top-p in sampling): a loop over the values in storage form, bits copied.
    const values = this.readSync(x);
    const idx = this.readSync(indices);
    const storage = out.storage as CpuStorage;
    const dst = storageView(out.dtype, storage.buffer, storage.byteOffset + out.offset * itemSize(out.dtype), out.size);
    const n = x.shape[x.ndim - 1];
    const k = indices.shape[indices.ndim - 1];
    for (let p = 0; p < idx.length; p++) {
      const i = idx[p];
      if (i < 0 || i >= n) throw new RangeError(`takeAlongAxis: index ${i} at position ${p} is out of range for an axis of ${n}`);
      dst[p] = values[((p - (p % k)) / k) * n + i];
    }
  }
  quantizedMatmul(x: Tensor, w: QuantizedWeight, out: Tensor): void {
    // The plain composition: the whole float32 weight, then the GEMM on its transposed view. (The kernel that
    // dequantizes as it streams the weight is chapter 2.2's, with the course's solutions.)
    const [n, k] = w.shape;
    const storage = this.allocate('float32', n * k);
    const values = storageView('float32', storage.buffer, storage.byteOffset, n * k) as Float32Array;
    dequantizeInto(w.weight.toArray(), w.scales.toArray(), w.biases.toArray(), w.bits, w.groupSize, k, values);
    const weightT = new Tensor(storage, 'float32', [k, n], [1, k]);
    native.matmul(x.native(), weightT.native(), out.native());
    weightT.dispose();
  }
  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void {
    native.rmsNorm(x.native(), weight.native(), eps, out.native());
  }
  rope(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, traditional: boolean, out: Tensor): void {
    native.rope(x.native(), cos.native(), sin.native(), positions.native(), traditional, out.native());
  }
}

export const cpu = new CpuBackend();
export type { CpuBackend };

// The Tensor: a dtype, a shape and strides over a backend's storage. Views share storage; ops live in ops/.
import type { Backend, Storage } from './backend/backend.ts';
import { DTYPE_CODE, itemSize, type DType, type StorageArray, type ValueArray } from './dtype.ts';
import { contiguousStrides, formatShape, sizeOf } from './shape.ts';
import { trackInScope } from './scope.ts';

/**
 * What native kernels receive for a tensor (parsed by tl::to_tensor_ref in the extension SDK): the storage
 * and a descriptor [byteOffset, dtype code, ndim, ...shape, ...strides]. Numbers in one typed array, since
 * reading named properties from C++ costs more than a small kernel.
 */
export type NativeView = [ArrayBuffer, Float64Array];

export class Tensor {
  readonly storage: Storage;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Strides in elements; 0 marks a broadcast dimension. */
  readonly strides: readonly number[];
  /** Offset of the first element in the storage, in elements. */
  readonly offset: number;
  private disposed = false;
  private nativeView?: NativeView;

  constructor(storage: Storage, dtype: DType, shape: readonly number[], strides?: readonly number[], offset = 0) {
    this.storage = storage;
    this.dtype = dtype;
    this.shape = shape;
    this.strides = strides ?? contiguousStrides(shape);
    this.offset = offset;
    storage.refs++;
    trackInScope(this);
  }

  get backend(): Backend {
    return this.storage.backend;
  }
  get ndim(): number {
    return this.shape.length;
  }
  get size(): number {
    return sizeOf(this.shape);
  }
  get isDisposed(): boolean {
    return this.disposed;
  }

  /** True when the elements are laid out in row-major order with no gaps (size-1 dims may have any stride). */
  get isContiguous(): boolean {
    let expected = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.strides[i] !== expected) return false;
      expected *= this.shape[i];
    }
    return true;
  }

  /** A view with other shape/strides/offset over the same storage. */
  view(shape: readonly number[], strides: readonly number[], offset = this.offset): Tensor {
    this.assertLive('view');
    return new Tensor(this.storage, this.dtype, shape, strides, offset);
  }

  /** The descriptor a native kernel takes (CPU tensors only). */
  native(): NativeView {
    this.assertLive('native');
    if (this.nativeView) return this.nativeView;
    const storage = this.storage as Storage & { buffer?: ArrayBuffer; byteOffset?: number };
    if (!storage.buffer) {
      throw new Error(`native: the tensor ${this.describe()} lives on the ${this.backend.name} backend, not the CPU`);
    }
    const byteOffset = (storage.byteOffset ?? 0) + this.offset * itemSize(this.dtype);
    const meta = new Float64Array([byteOffset, DTYPE_CODE[this.dtype], this.ndim, ...this.shape, ...this.strides]);
    return (this.nativeView = [storage.buffer, meta]);
  }

  /**
   * The values, contiguous, as a typed array (bf16/f16 widened to Float32Array). Synchronous, so CPU only;
   * `await t.data()` works on every backend.
   */
  toArray(): ValueArray {
    this.assertLive('toArray');
    const read = this.backend.readSync;
    if (!read) {
      throw new Error(`toArray: ${this.describe()} is on the ${this.backend.name} backend; use \`await t.data()\``);
    }
    return widen(this.dtype, read.call(this.backend, this));
  }

  /** The values, contiguous, as a typed array (bf16/f16 widened to Float32Array), from any backend. */
  async data(): Promise<ValueArray> {
    this.assertLive('data');
    return widen(this.dtype, await this.backend.read(this));
  }

  /** The single value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) throw new RangeError(`item: expected a tensor with one element, got ${this.describe()}`);
    return this.toArray()[0];
  }

  /** Nested JavaScript arrays of the values (for printing and small tests). */
  toList(): unknown {
    const flat = Array.from(this.toArray() as ArrayLike<number>);
    const build = (dim: number, start: number): unknown => {
      if (dim === this.ndim) return flat[start];
      const step = sizeOf(this.shape.slice(dim + 1));
      return Array.from({ length: this.shape[dim] }, (_, i) => build(dim + 1, start + i * step));
    };
    return build(0, 0);
  }

  /** Frees this tensor's hold on its storage; the storage goes back to the backend when no view is left. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (--this.storage.refs === 0) this.backend.release(this.storage);
  }

  describe(): string {
    return `${this.dtype}${formatShape(this.shape)}`;
  }

  toString(): string {
    return `Tensor(${this.describe()} on ${this.backend.name})`;
  }

  assertLive(op: string): void {
    if (this.disposed || this.storage.released) {
      throw new Error(`${op}: the tensor ${this.describe()} has been disposed`);
    }
  }
}

/** Half-precision words become float32 values; other dtypes are returned as they are. */
function widen(dtype: DType, data: StorageArray): ValueArray {
  if (dtype !== 'float16' && dtype !== 'bfloat16') return data as ValueArray;
  const words = data as Uint16Array;
  const out = new Float32Array(words.length);
  if (dtype === 'bfloat16') {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < words.length; i++) bits[i] = words[i] << 16;
  } else {
    for (let i = 0; i < words.length; i++) out[i] = f16BitsToNumber(words[i]);
  }
  return out;
}

export function f16BitsToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  if (exp === 0) return sign * mant * 2 ** -24;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

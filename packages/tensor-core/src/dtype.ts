// Element types, their storage, and the rules for combining them.

export type DType = 'float32' | 'float16' | 'bfloat16' | 'int32' | 'uint32' | 'uint8' | 'bool';

export const DTYPES: readonly DType[] = ['float32', 'float16', 'bfloat16', 'int32', 'uint32', 'uint8', 'bool'];

/** The codes the native backend uses (tl::DType in native/include/tiny_llm/extension.h). */
export const DTYPE_CODE: Record<DType, number> = {
  float32: 0,
  float16: 1,
  bfloat16: 2,
  int32: 3,
  uint32: 4,
  uint8: 5,
  bool: 6,
};

/** float16 and bfloat16 are stored as their raw 16-bit patterns. */
export type StorageArray = Float32Array | Uint16Array | Int32Array | Uint32Array | Uint8Array;

/** What `toArray()` returns: half-precision values come back widened to float32. */
export type ValueArray = Float32Array | Int32Array | Uint32Array | Uint8Array;

export function itemSize(dtype: DType): number {
  switch (dtype) {
    case 'float32':
    case 'int32':
    case 'uint32':
      return 4;
    case 'float16':
    case 'bfloat16':
      return 2;
    default:
      return 1;
  }
}

export function isFloating(dtype: DType): boolean {
  return dtype === 'float32' || dtype === 'float16' || dtype === 'bfloat16';
}

export function assertDType(dtype: unknown, where: string): DType {
  if (typeof dtype === 'string' && (DTYPES as readonly string[]).includes(dtype)) return dtype as DType;
  throw new TypeError(`${where}: unknown dtype ${JSON.stringify(dtype)} (expected one of ${DTYPES.join(', ')})`);
}

/** A typed array of `length` elements laid over `buffer` in the storage form of `dtype`. */
export function storageView(dtype: DType, buffer: ArrayBuffer, byteOffset = 0, length?: number): StorageArray {
  switch (dtype) {
    case 'float32':
      return new Float32Array(buffer, byteOffset, length);
    case 'float16':
    case 'bfloat16':
      return new Uint16Array(buffer, byteOffset, length);
    case 'int32':
      return new Int32Array(buffer, byteOffset, length);
    case 'uint32':
      return new Uint32Array(buffer, byteOffset, length);
    default:
      return new Uint8Array(buffer, byteOffset, length);
  }
}

// Promotion follows the usual "the wider kind wins" rule: bool < integers < floats. Two different
// half-precision formats meet in float32, since neither holds the other.
const KIND_RANK: Record<DType, number> = {
  bool: 0,
  uint8: 1,
  uint32: 2,
  int32: 3,
  bfloat16: 4,
  float16: 4,
  float32: 5,
};

export function promoteTypes(a: DType, b: DType): DType {
  if (a === b) return a;
  if (KIND_RANK[a] === KIND_RANK[b]) return a === 'uint32' || b === 'uint32' ? 'int32' : 'float32';
  return KIND_RANK[a] > KIND_RANK[b] ? a : b;
}

/** The dtype a float-valued function (exp, sqrt, division...) returns for an input of `dtype`. */
export function floatResultType(dtype: DType): DType {
  return isFloating(dtype) ? dtype : 'float32';
}

// Shape arithmetic shared by every op: sizes, strides, axes and broadcasting.

export type Shape = readonly number[];

export function sizeOf(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function contiguousStrides(shape: Shape): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

export function formatShape(shape: Shape): string {
  return `[${shape.join(', ')}]`;
}

export function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Resolves a possibly negative axis against `ndim`, naming the op in the error. */
export function normalizeAxis(axis: number, ndim: number, op: string): number {
  if (!Number.isInteger(axis) || axis < -ndim || axis >= ndim) {
    throw new RangeError(`${op}: axis ${axis} is out of range for a tensor of ${ndim} dimension(s)`);
  }
  return axis < 0 ? axis + ndim : axis;
}

/** The shape two shapes broadcast to (numpy rules), or an error naming the op and both shapes. */
export function broadcastShapes(op: string, ...shapes: Shape[]): number[] {
  const ndim = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(ndim).fill(1);
  for (const shape of shapes) {
    for (let i = 0; i < shape.length; i++) {
      const o = ndim - shape.length + i;
      const d = shape[i];
      if (d === out[o] || d === 1) continue;
      if (out[o] === 1) {
        out[o] = d;
        continue;
      }
      throw new RangeError(`${op}: shapes ${shapes.map(formatShape).join(' and ')} cannot be broadcast together`);
    }
  }
  return out;
}

export function checkShape(shape: Shape, op: string): number[] {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`${op}: invalid shape ${formatShape(shape)}`);
  }
  return [...shape];
}

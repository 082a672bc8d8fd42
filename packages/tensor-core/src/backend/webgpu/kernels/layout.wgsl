// Strided walks and large grids, shared by the kernels.
//
// A layout is up to MAX_DIMS dims (innermost last, padded in front with size-1 dims) that up to four tensors
// walk together: shape[d / 4][d % 4] is the size of dim d, and component t of strides[d] is tensor t's stride
// along it, in elements (0 where the tensor is broadcast, negative for reversed slices). Adjacent dims that
// every tensor walks as one are merged on the CPU first, so most views need one or two dims here.

const MAX_DIMS = 6u;

// The element offsets (relative to each tensor's first element) of flat index i of a row-major walk over the
// innermost `ndim` dims. The outermost walked dim takes what is left of i, so it needs no division.
fn walk(i: u32, ndim: u32, shape: array<vec4<u32>, 2>, strides: array<vec4<i32>, 6>) -> vec4<i32> {
  var rest = i;
  var offsets = vec4<i32>(0);
  for (var k = 0u; k < ndim; k++) {
    let d = MAX_DIMS - 1u - k;
    var c = rest;
    if (k + 1u < ndim) {
      let size = shape[d / 4u][d % 4u];
      c = rest % size;
      rest = rest / size;
    }
    offsets += i32(c) * strides[d];
  }
  return offsets;
}

// The rows of a view, for the kernels over its last axis (reduce, cumsum, argsort, rms_norm): `count` rows of
// `n` elements `stride` apart; row r starts at element offset + walk(r) over the leading dims (only x's
// strides, component 0, are used).
struct Rows {
  count: u32,
  n: u32,
  offset: i32,
  stride: i32,
  shape: array<vec4<u32>, 2>,
  strides: array<vec4<i32>, 6>,
}

// The first element of row r, walking `ndim` leading dims.
fn row_start(rows: Rows, ndim: u32, r: u32) -> i32 {
  return rows.offset + walk(r, ndim, rows.shape, rows.strides).x;
}

// Grids of more than 65535 workgroups do not fit in x: dispatches spread them over y, flattened here.
fn flat_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return wid.y * nwg.x + wid.x;
}

// CUDA kernel for ai.groupmamba::DepthwiseConv v1 (see ../SPEC.md §9).
//
// For every (n, c) plane of X [N, C, H, W] (or of X [N, H, W, C]: channels-last, below): a K×K
// depthwise cross-correlation (stride 1, zero padding K/2) of x̃ = X + InputBias[c] (inside the
// image; the padding stays zero), plus B[c], then act ∈ {identity, SiLU, exact GELU}; FP32
// arithmetic, Y rounded to T once. X and Y of type T (FP32, FP16, BF16); W [C, 1, K, K], B and
// InputBias [C] FP32. K odd, 1 to 7 (a template parameter).
//
// Why this shape of kernel (NCHW: depthwise_conv_kernel): the op is a memory-bound stencil (each element of X is read once and
// each of Y written once; K² FMAs and an activation per output), and GroupMamba's planes are small
// (7×7 to 56×56), so:
//   * A block iteration stages a tile of input into shared memory as FP32, with the input bias
//     added and zeros outside the image, so the compute loop has no bounds checks: G whole
//     (n, c) planes (consecutive in memory) when a plane is small (7×7: G = 32, 14×14: 8, 28×28:
//     2), else one tile of `tile_h` rows × `tile_w` (≤ GM_DWCONV_MAX_TILE_W) columns of one plane
//     (56×56: two tiles of 28 whole rows), sized so a block makes about GM_DWCONV_TARGET_OUTPUTS
//     outputs. The staged rows are the tile's rows plus K/2 above and below; each staged row has
//     4 columns left of the tile (≥ K/2, and the interior stays 16-byte aligned) and 4 right (+ 4
//     more when that makes the row stride a multiple of 8 floats), and the tiles of a plane group
//     are 8 mod 16 floats apart: the window loads of neighbouring strips, rows and small planes then
//     fall on different banks (7×7 and 14×14: conflict-free 16-byte loads).
//   * Staging loads are the widest vector (16 bytes' worth, else 8, 4, one element) that divides W
//     and to which X is aligned, so a vector never straddles a row or the image's right edge;
//     kStageUnroll loads per thread are in flight before their shared-memory stores. The halo
//     columns (image columns left and right of a tile: zeros unless the plane is cut into column
//     tiles) are single elements. The tile's channel weights and bias go to shared memory too.
//   * Each thread then computes a strip of kRunH × kRunW = 4 × 4 outputs: it walks the strip's
//     4 + K − 1 input rows once, reading each row's 4 + K − 1 values with at most three
//     shared-memory loads (one 16-byte load and two narrower ones), and adds every row into the
//     up to K output rows of the strip that use it (vertical reuse in registers, horizontal reuse
//     within the loaded window). The taps are summed in row-major order from B, like the reference.
//   * Outputs are stored 4 (or 2) at a time when W and Y allow it, else one by one; output rows
//     and columns past the image (the strips are padded to multiples of 4) are computed but not
//     stored.
//   * Blocks of 32 to 256 threads (one strip each, or a loop), a grid-stride loop over block
//     iterations with 64-bit plane offsets; index decompositions inside a block use precomputed
//     multiply-shift divisions. Dynamic shared memory ≤ GM_DWCONV_MAX_SMEM_BYTES (no opt-in call),
//     no allocation, no synchronisation but __syncthreads: safe inside CUDA graphs; the host side
//     makes no runtime call but the launch and cudaGetLastError.
//
// Channels-last (channels_last = 1: X and Y [N, H, W, C], the same W, B, InputBias and math):
// depthwise_conv_nhwc_kernel. Here consecutive channels are adjacent in memory, so a warp's lanes take
// consecutive channel vectors and every load and store is a coalesced vector along C, with no shared
// memory and no barrier. Staging to shared memory would buy nothing (nothing to transpose) and costs
// what makes the NCHW kernel slow in FP16: per element it is bound by instructions (at FP16's 4 bytes
// an element, 2.3 TB/s is ~575 G outputs/s, ~50 issue slots an output on an H100, of which the K² = 9
// FMAs and the activation, ~20 for SiLU's expf and IEEE division, ~26 for erff, are fixed), so the
// design keeps the rest per element small:
//   * A thread computes a strip: V channels (a vector: at most 2 in FP32 and 4 in FP16/BF16 for K ≤ 3,
//     GM_DWCONV_NHWC_VEC/_VEC16; the widest that divides C and to which X and Y are aligned, as narrow
//     as 1 for odd C) × rows (K ≤ 3: 4 in FP32, 2 in FP16/BF16; 2 for K = 5, 1 for K = 7) × a whole
//     image row (or a segment of one, when the launch
//     would otherwise have fewer than GM_DWCONV_NHWC_TARGET_THREADS threads). Its V·K² weights (one
//     vector load per tap: W's channels are contiguous), bias and input bias live in registers.
//   * It walks the window (rows + K − 1 image rows, K − 1 more columns than outputs) column by column,
//     each window column loaded one column ahead of its use: one predicated vector load per row
//     (inline PTX ld.global.nc, zeros outside the image, no branch; the compiler's `if (ok) load`
//     became a branch per load, which serialised them), widened to FP32 once, the input bias added by
//     one FMA (× 1 inside the image, × 0 in the padding rows and columns), and added into the K output
//     columns that use it. Each input element is read and converted once per strip: (rows + K − 1) /
//     rows times per output along the height (1.5 at 4 rows, 2 at 2) and once along the width; vertical
//     neighbours' overlapping rows come from L1/L2.
//   * The sums of output column o live in slot o mod K, with the column loop unrolled K times so the
//     slots (K · rows · V sums: 24 at K = 3, either way) and the window-column buffers are registers, never
//     copied; column o is finished (activation, rounding to T, predicated stores of its rows inside
//     the image) after window column o + K − 1. The taps are summed column by column (kc outer, kr
//     inner) from B; the first one is fmaf(w, x, B), so no slot is ever reset. (SPEC §9 leaves the
//     order free; the bound of the checks does not depend on it.)
//   * Row k of a window column is the column pointer + k · W·C elements as one mad.wide.u32 (32-bit
//     strides) rather than a chain of 64-bit pointer adds; image rows of 2^32 elements or more take a
//     64-bit-stride copy of the code with V = 1. Strip indices are split with FastDiv below 2^31
//     strips, 64-bit divisions above.
//   * Blocks of at most 256 threads: blockDim.x channel vectors (≤ 32, the slices of C as even as they
//     go, so C = 348 in 2s is 6 slices of 29 lanes, none idle) × blockDim.y strips, consecutive down
//     the image (their overlapping window rows meet in L1); blockIdx.x = slice + slices · strip group,
//     a grid-stride loop over strip groups with 64-bit offsets; every block keeps its slice (the grid
//     is a whole number of slices). The vector width and the activation are uniform switches outside
//     the strip loop (one inlined copy of the strip code each). ≤ 128 registers at K ≤ 5
//     (__launch_bounds__ min 2 blocks of 256), no spills; K = 7 (V = 1, one row) may take more.
//
// The file also compiles with NVRTC (__CUDACC_RTC__: device code only, no host launcher), which is
// how sm_72 (Jetson Xavier, dropped by CUDA 13) is checked: scripts/check_cuda_build.sh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#ifdef __CUDACC_RTC__
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef long long int64_t;
typedef unsigned long long uintptr_t;
#else
#include <cuda_runtime.h>
#include <stdint.h>
#endif

// Tuning knobs (compile-time). GM_DWCONV_TARGET_OUTPUTS: outputs a block iteration aims at (picks
// G and the tile height; larger = fewer halo rows re-read and fewer barriers, fewer blocks).
// GM_DWCONV_MAX_VEC_BYTES: widest global load/store (16; 4 or 2 for testing the narrow paths).
// GM_DWCONV_MAX_TILE_W: widest tile (wider images are cut into column tiles; small values test
// that path). GM_DWCONV_MAX_SMEM_BYTES: shared memory per block (≤ 48 KiB: no opt-in needed).
// GM_DWCONV_MAX_GRID: most blocks per launch (the grid-stride loop covers the rest).
#ifndef GM_DWCONV_TARGET_OUTPUTS
#define GM_DWCONV_TARGET_OUTPUTS 2048
#endif
#ifndef GM_DWCONV_MAX_VEC_BYTES
#define GM_DWCONV_MAX_VEC_BYTES 16
#endif
#ifndef GM_DWCONV_MAX_TILE_W
#define GM_DWCONV_MAX_TILE_W 128
#endif
#ifndef GM_DWCONV_MAX_SMEM_BYTES
#define GM_DWCONV_MAX_SMEM_BYTES 32768
#endif
#ifndef GM_DWCONV_MAX_GRID
#define GM_DWCONV_MAX_GRID (1 << 30)
#endif
// Channels-last path: GM_DWCONV_NHWC_VEC / GM_DWCONV_NHWC_ROWS: most channels per thread (4, 2 or 1;
// K = 5 takes at most 2, K = 7 1) and output rows per thread (1 to 8) for FP32, and _VEC16 / _ROWS16
// for FP16 and BF16 (measured on the H100, benchmarks/h100-dwconv-nhwc/: 4 × 2 is 7-16 % faster than
// 2 × 4 in FP16 on tiny's shapes; in FP32 it spills and is slower on the 56² maps).
// GM_DWCONV_NHWC_TARGET_THREADS: image rows are cut into column segments until a launch has about
// this many threads.
#ifndef GM_DWCONV_NHWC_VEC
#define GM_DWCONV_NHWC_VEC 2
#endif
#ifndef GM_DWCONV_NHWC_ROWS
#define GM_DWCONV_NHWC_ROWS 4
#endif
#ifndef GM_DWCONV_NHWC_VEC16
#define GM_DWCONV_NHWC_VEC16 4
#endif
#ifndef GM_DWCONV_NHWC_ROWS16
#define GM_DWCONV_NHWC_ROWS16 2
#endif
#ifndef GM_DWCONV_NHWC_TARGET_THREADS
#define GM_DWCONV_NHWC_TARGET_THREADS (1 << 17)
#endif
#ifndef GM_DWCONV_NHWC_MIN_BLOCKS
#define GM_DWCONV_NHWC_MIN_BLOCKS 2
#endif

namespace {

constexpr int kMaxThreads = 256;
constexpr int kMaxKernel = 7;  // MAX_KERNEL in plugins/src/dwconv.rs
constexpr int kRunW = 4;       // output columns per thread
constexpr int kRunH = 4;       // output rows per thread
constexpr int kPadL = 4;       // staged columns left of a tile: ≥ K/2, and a multiple of 4 (alignment)
constexpr int kPadR = 4;       // staged columns right of a tile: ≥ K/2 (the window reads up to 4 past it)
constexpr int kStageUnroll = 4;  // global loads per thread in flight while staging
static_assert(kMaxKernel / 2 <= kPadL && kMaxKernel / 2 <= kPadR, "the halo must fit the padding");
static_assert(GM_DWCONV_MAX_TILE_W % 8 == 0 && GM_DWCONV_MAX_TILE_W >= 8, "tile width: a multiple of 8");
static_assert(GM_DWCONV_MAX_SMEM_BYTES <= 48 * 1024 && GM_DWCONV_MAX_SMEM_BYTES >= 8192, "bad smem limit");
static_assert(GM_DWCONV_TARGET_OUTPUTS >= 16, "bad GM_DWCONV_TARGET_OUTPUTS");

enum Activation { kNone = 0, kSilu = 1, kGelu = 2 };

#include "element_io.cuh"

// Stores V staged FP32 values to shared memory (aligned to min(V, 4)·4 bytes).
template <int V>
__device__ __forceinline__ void store_shared(float* dst, const float* v) {
  if constexpr (V == 1) {
    dst[0] = v[0];
  } else if constexpr (V == 2) {
    *reinterpret_cast<float2*>(dst) = make_float2(v[0], v[1]);
  } else {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      *reinterpret_cast<float4*>(dst + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
    }
  }
}

// SiLU as the reference (plugins/src/norm.rs): v / (1 + e^−v), accurate expf (not __expf).
__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

// Exact GELU, v/2 · (1 + erf(v/√2)) with the accurate erff (≤ 2 ulp), as PyTorch's CUDA GELU; the
// reference (plugins/src/dwconv.rs) uses erfc in float64: the difference is within an ulp or two of
// the result but for large negative v, where both are ≈ 0 (absolute error ≲ 1e-7·|v|).
__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

// n / d for 0 ≤ n < 2^31 and 1 ≤ d ≤ 2^31 as a multiply-high, an add and a shift (the magic number
// is computed on the host: make_fast_div).
struct FastDiv {
  uint32_t magic;
  uint32_t shift;
  __device__ __forceinline__ int div(int n) const {
    return int((__umulhi(uint32_t(n), magic) + uint32_t(n)) >> shift);
  }
};

struct ConvParams {
  const void* x;
  const float* w;
  const float* b;
  const float* input_bias;  // null: no input bias
  void* y;
  int64_t planes;           // N · C
  int64_t plane_len;        // H · W
  int64_t tiles_per_plane;  // tiles_y · tiles_x
  int64_t iters;            // block iterations: ceil(planes / group), or planes · tiles_per_plane
  int height, width, channels;
  int activation;           // Activation
  int tile_h;               // output rows of a tile (a multiple of kRunH; ≥ H for whole planes)
  int tile_w;               // columns of a tile (a multiple of kRunW and of vec)
  int tiles_x;
  int group;                // planes per block iteration (> 1 only when a tile is a whole plane)
  int smem_rows;            // staged rows of a tile: tile_h + K − 1
  int smem_w;               // staged row stride: kPadL + tile_w + kPadR, + 4 if that is a multiple of 8
  int tile_stride;          // floats per staged tile: smem_rows · smem_w, padded to 8 mod 16
  int runs;                 // strips across a tile: tile_w / kRunW
  int strips;               // strips of a tile: tile_h / kRunH · runs
  int vpr;                  // vectors of `vec` elements per staged row: tile_w / vec
  int vec;                  // elements per staging load (1, 2, 4, 8)
  int store_vec;            // elements per output store (1, 2, 4)
  FastDiv by_vpr, by_rows, by_strips, by_runs;
};

// What one block iteration covers: `count` tiles at the same (y0, x0) of planes plane .. plane +
// count − 1, the first of channel `channel`.
struct Tile {
  int64_t plane;
  int count;
  int y0, x0;
  int channel;
};

// Floats per channel in the shared weights: the K² taps and the bias, padded to whole float4s.
__host__ __device__ constexpr int weight_stride(int k) { return (k * k + 1 + 3) / 4 * 4; }

__device__ __forceinline__ int channel_of(const ConvParams& p, const Tile& t, int g) {
  int c = t.channel + g;  // < channels + group: no overflow
  if (c >= p.channels) c %= p.channels;
  return c;
}

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

// Stages the tiles' interior columns (rows y0 − K/2 … y0 + tile_h + K/2 − 1, columns x0 …
// x0 + tile_w − 1) as FP32 with the input bias added; zeros outside the image.
template <typename T, int K, int V>
__device__ __forceinline__ void stage_interior(const ConvParams& p, const Tile& t, float* tiles) {
  constexpr int R = K / 2;
  const int items = t.count * p.smem_rows * p.vpr;
  const int nthreads = int(blockDim.x);
  const T* gx = static_cast<const T*>(p.x);
  for (int base = int(threadIdx.x); base < items; base += kStageUnroll * nthreads) {
    float v[kStageUnroll][V];
    int dst[kStageUnroll];
    float bias[kStageUnroll];
    // All loads first (predicated), then the adds and stores: kStageUnroll loads in flight.
#pragma unroll
    for (int u = 0; u < kStageUnroll; ++u) {
      const int j = base + u * nthreads;
      dst[u] = -1;
      bias[u] = 0.0f;
#pragma unroll
      for (int k = 0; k < V; ++k) v[u][k] = 0.0f;
      if (j < items) {
        const int row = p.by_vpr.div(j);  // tile · smem_rows + staged row
        const int q = j - row * p.vpr;
        const int g = p.by_rows.div(row);
        const int r = row - g * p.smem_rows;
        const int y = t.y0 - R + r;
        const int x = t.x0 + q * V;
        dst[u] = g * p.tile_stride + r * p.smem_w + kPadL + q * V;
        if (y >= 0 && y < p.height && x < p.width) {  // x + V ≤ W: V divides W and x
          load_vec<T, V>(gx + (t.plane + g) * p.plane_len + int64_t(y) * p.width + x, v[u]);
          if (p.input_bias != nullptr) bias[u] = __ldg(p.input_bias + channel_of(p, t, g));
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kStageUnroll; ++u) {
      if (dst[u] >= 0) {
#pragma unroll
        for (int k = 0; k < V; ++k) v[u][k] += bias[u];  // outside: 0 + 0
        store_shared<V>(tiles + dst[u], v[u]);
      }
    }
  }
}

// Stages the K/2 columns left and right of the tiles (image columns x0 − K/2 … x0 − 1 and x0 +
// tile_w … x0 + tile_w + K/2 − 1): zeros unless the plane is cut into column tiles.
template <typename T, int K>
__device__ __forceinline__ void stage_halo(const ConvParams& p, const Tile& t, float* tiles) {
  constexpr int R = K / 2;
  if constexpr (R > 0) {
    const int items = t.count * p.smem_rows * 2 * R;
    const T* gx = static_cast<const T*>(p.x);
    for (int j = int(threadIdx.x); j < items; j += int(blockDim.x)) {
      const int row = j / (2 * R);
      const int h = j - row * (2 * R);
      const int g = p.by_rows.div(row);
      const int r = row - g * p.smem_rows;
      const int y = t.y0 - R + r;
      const int col = h < R ? h - R : p.tile_w + (h - R);  // relative to x0
      const int x = t.x0 + col;
      float v = 0.0f;
      if (y >= 0 && y < p.height && x >= 0 && x < p.width) {
        load_vec<T, 1>(gx + (t.plane + g) * p.plane_len + int64_t(y) * p.width + x, &v);
        if (p.input_bias != nullptr) v += __ldg(p.input_bias + channel_of(p, t, g));
      }
      tiles[g * p.tile_stride + r * p.smem_w + kPadL + col] = v;
    }
  }
}

// The 4 + K − 1 staged values a strip's row needs: win[i] = row[i] for i in [4 − K/2, 8 + K/2),
// `row` 16-byte aligned (the strip's first output column is row + kPadL); one 16-byte load for the
// middle four, one narrower load (or a 16-byte one, R = 3) on each side.
template <int R>
__device__ __forceinline__ void load_window(const float* row, float* win) {
  const float4 mid = *reinterpret_cast<const float4*>(row + 4);
  win[4] = mid.x;
  win[5] = mid.y;
  win[6] = mid.z;
  win[7] = mid.w;
  if constexpr (R == 1) {
    win[3] = row[3];
    win[8] = row[8];
  } else if constexpr (R == 2) {
    const float2 l = *reinterpret_cast<const float2*>(row + 2);
    const float2 r = *reinterpret_cast<const float2*>(row + 8);
    win[2] = l.x;
    win[3] = l.y;
    win[8] = r.x;
    win[9] = r.y;
  } else if constexpr (R == 3) {
    const float4 l = *reinterpret_cast<const float4*>(row);
    const float4 r = *reinterpret_cast<const float4*>(row + 8);
    win[1] = l.y;
    win[2] = l.z;
    win[3] = l.w;
    win[8] = r.x;
    win[9] = r.y;
    win[10] = r.z;
  }
}

template <int Act>
__device__ __forceinline__ void activate(const float* acc, float* out) {
#pragma unroll
  for (int j = 0; j < kRunW; ++j) {
    out[j] = Act == kSilu ? silu(acc[j]) : Act == kGelu ? gelu(acc[j]) : acc[j];
  }
}

// Rounds a strip row to T and stores its first `cols` (1 … 4) values at dst, `width` (1, 2, 4:
// ConvParams::store_vec) elements per store.
template <typename T>
__device__ __forceinline__ void store_run(T* dst, const float* o, int cols, int width) {
  if (cols == kRunW && width == 4) {
    store_vec<T, 4>(dst, o);
  } else if (width >= 2) {  // W even and x0 + 4m even: cols is 2 or 4
    store_vec<T, 2>(dst, o);
    if (cols > 2) store_vec<T, 2>(dst + 2, o + 2);
  } else {
#pragma unroll
    for (int j = 0; j < kRunW; ++j) {
      if (j < cols) store_vec<T, 1>(dst + j, o + j);
    }
  }
}

// Strip s of the block iteration: outputs rows y0 + 4·sy … + 3, columns x0 + 4·m … + 3 of tile g.
template <typename T, int K>
__device__ __forceinline__ void compute_strip(const ConvParams& p, const Tile& t, const float* tiles,
                                              const float* weights, int s) {
  constexpr int R = K / 2;
  constexpr int kTaps = K * K;
  constexpr int kWS = weight_stride(K);
  const int g = p.by_strips.div(s);
  const int rem = s - g * p.strips;
  const int sy = p.by_runs.div(rem);
  const int m = rem - sy * p.runs;
  const int x = t.x0 + m * kRunW;
  const int y = t.y0 + sy * kRunH;
  const int cols = imin(kRunW, p.width - x);   // ≤ 0: a strip past the image (last column tile)
  const int rows = imin(kRunH, p.height - y);  // ≤ 0: past the image (padded tile)
  if (cols <= 0 || rows <= 0) return;

  float wk[kWS];
#pragma unroll
  for (int i = 0; i < kWS; i += 4) {
    const float4 q = *reinterpret_cast<const float4*>(weights + g * kWS + i);
    wk[i] = q.x;
    wk[i + 1] = q.y;
    wk[i + 2] = q.z;
    wk[i + 3] = q.w;
  }
  float acc[kRunH][kRunW];
#pragma unroll
  for (int i = 0; i < kRunH; ++i) {
#pragma unroll
    for (int j = 0; j < kRunW; ++j) acc[i][j] = wk[kTaps];  // B[c]
  }
  // Staged row sy·4 + r of the tile is image row y − K/2 + r: it feeds output row i with tap row r − i.
  const float* src = tiles + g * p.tile_stride + sy * kRunH * p.smem_w + m * kRunW;
#pragma unroll
  for (int r = 0; r < kRunH + K - 1; ++r) {
    float win[12];
    load_window<R>(src + r * p.smem_w, win);
#pragma unroll
    for (int i = 0; i < kRunH; ++i) {
      const int kr = r - i;
      if (kr >= 0 && kr < K) {
#pragma unroll
        for (int j = 0; j < kRunW; ++j) {
#pragma unroll
          for (int kc = 0; kc < K; ++kc) acc[i][j] = fmaf(wk[kr * K + kc], win[kPadL - R + j + kc], acc[i][j]);
        }
      }
    }
  }

  T* out = static_cast<T*>(p.y) + (t.plane + g) * p.plane_len + int64_t(y) * p.width + x;
#pragma unroll
  for (int i = 0; i < kRunH; ++i) {
    if (i < rows) {
      float o[kRunW];
      if (p.activation == kSilu) {
        activate<kSilu>(acc[i], o);
      } else if (p.activation == kGelu) {
        activate<kGelu>(acc[i], o);
      } else {
        activate<kNone>(acc[i], o);
      }
      store_run<T>(out + int64_t(i) * p.width, o, cols, p.store_vec);
    }
  }
}

template <typename T, int K>
__global__ void __launch_bounds__(kMaxThreads) depthwise_conv_kernel(ConvParams p) {
  static_assert(K % 2 == 1 && K >= 1 && K <= kMaxKernel, "bad instantiation");
  constexpr int kTaps = K * K;
  constexpr int kWS = weight_stride(K);
  extern __shared__ float4 smem4[];  // float4: 16-byte aligned
  float* tiles = reinterpret_cast<float*>(smem4);
  float* weights = tiles + p.group * p.tile_stride;  // a multiple of 4 floats: aligned
  const int tid = int(threadIdx.x);
  const int nthreads = int(blockDim.x);

  // The bound is the same for every thread of the block: all reach the barriers together.
  for (int64_t it = blockIdx.x; it < p.iters; it += gridDim.x) {
    Tile t;
    if (p.tiles_per_plane == 1) {
      t.plane = it * p.group;
      const int64_t left = p.planes - t.plane;
      t.count = left < p.group ? int(left) : p.group;
      t.y0 = 0;
      t.x0 = 0;
    } else {
      t.plane = it / p.tiles_per_plane;
      const int64_t tile = it - t.plane * p.tiles_per_plane;
      const int64_t ty = tile / p.tiles_x;
      t.count = 1;
      t.y0 = int(ty) * p.tile_h;
      t.x0 = int(tile - ty * p.tiles_x) * p.tile_w;
    }
    t.channel = int(t.plane % p.channels);

    // Weights and bias of the tiles' channels.
    for (int i = tid; i < t.count * (kTaps + 1); i += nthreads) {
      const int g = i / (kTaps + 1);
      const int k = i - g * (kTaps + 1);
      const int c = channel_of(p, t, g);
      weights[g * kWS + k] = k < kTaps ? __ldg(p.w + int64_t(c) * kTaps + k) : __ldg(p.b + c);
    }
    switch (p.vec) {
      case 8:
        if constexpr (sizeof(T) == 2) stage_interior<T, K, 8>(p, t, tiles);
        break;
      case 4: stage_interior<T, K, 4>(p, t, tiles); break;
      case 2: stage_interior<T, K, 2>(p, t, tiles); break;
      default: stage_interior<T, K, 1>(p, t, tiles); break;
    }
    stage_halo<T, K>(p, t, tiles);
    __syncthreads();

    const int strips = t.count * p.strips;
    for (int s = tid; s < strips; s += nthreads) compute_strip<T, K>(p, t, tiles, weights, s);
    __syncthreads();  // the next iteration overwrites the tiles
  }
}

// ----------------------------------------------------------------------------------------------
// Channels-last: X and Y [N, H, W, C] (see the file header).

constexpr int kNhwcThreads = 256;  // threads per block (at most)
constexpr int kNhwcLanes = 32;     // channel vectors per block row (at most): a warp's worth
static_assert(GM_DWCONV_NHWC_ROWS >= 1 && GM_DWCONV_NHWC_ROWS <= 8, "bad GM_DWCONV_NHWC_ROWS");
static_assert(GM_DWCONV_NHWC_ROWS16 >= 1 && GM_DWCONV_NHWC_ROWS16 <= 8, "bad GM_DWCONV_NHWC_ROWS16");
static_assert(GM_DWCONV_NHWC_VEC == 1 || GM_DWCONV_NHWC_VEC == 2 || GM_DWCONV_NHWC_VEC == 4,
              "bad GM_DWCONV_NHWC_VEC");
static_assert(GM_DWCONV_NHWC_VEC16 == 1 || GM_DWCONV_NHWC_VEC16 == 2 || GM_DWCONV_NHWC_VEC16 == 4,
              "bad GM_DWCONV_NHWC_VEC16");

// Most channels per thread (before C and alignment) and output rows per thread for kernel size k and
// elements of `elem` bytes: a thread keeps V·K² weights and K·rows·V sums in registers (K = 5: V ≤ 2,
// at most 2 rows; K = 7: V = 1, 1 row).
__host__ __device__ constexpr int nhwc_max_vec(int k, int elem) {
  return k > 3 ? 1 : elem == 4 ? GM_DWCONV_NHWC_VEC : GM_DWCONV_NHWC_VEC16;
}
__host__ __device__ constexpr int nhwc_rows(int k, int elem) {
  return k <= 3 ? (elem == 4 ? GM_DWCONV_NHWC_ROWS : GM_DWCONV_NHWC_ROWS16)
                : k == 5 ? (nhwc_rows(3, elem) < 2 ? nhwc_rows(3, elem) : 2) : 1;
}

struct NhwcParams {
  const void* x;
  const float* w;
  const float* b;
  const float* input_bias;  // null: no input bias
  void* y;
  int64_t units;    // strips per channel vector: N · segs · bands
  int64_t ublocks;  // groups of blockDim.y consecutive strips: ceil(units / blockDim.y)
  int64_t row_len;  // elements per image row: W · C
  int height, width, channels;
  int activation;   // Activation
  int vec;          // channels per thread (1, 2, 4): divides C; X and Y aligned to it
  int w_vec;        // W aligned to vec floats: the weights load as vec-wide vectors
  int small;        // units < 2^31: strip indices split with FastDiv
  int wide;         // W · C ≥ 2^32: 64-bit strides (vec = 1)
  int slices;       // channel slices of blockDim.x vectors (the blocks' fastest index)
  int bands;        // strips down an image: ceil(H / nhwc_rows(K, element size))
  int segs;         // column segments across an image
  int seg_w;        // columns per segment (the last one: the rest)
  FastDiv by_bands, by_segs;
};

// V consecutive elements of T as 32-bit words (a 2-byte vector in the low half of one word).
template <typename T, int V>
struct RawVec {
  static constexpr int kBytes = int(sizeof(T)) * V;
  static constexpr int kWords = kBytes < 4 ? 1 : kBytes / 4;
  static_assert(kBytes == 2 || kBytes == 4 || kBytes == 8 || kBytes == 16, "unsupported vector");
  uint32_t w[kWords];
};

// Loads V elements (aligned to their size) if `pred`, else zeros, as one predicated load through the
// read-only data path (ld.global.nc: it may move past the kernel's stores, as Y does not alias X).
// Inline PTX, because the compiler turns `if (pred) load` into a branch around each load.
template <typename T, int V>
__device__ __forceinline__ void load_raw_if(const T* src, bool pred, RawVec<T, V>& r) {
  constexpr int kBytes = RawVec<T, V>::kBytes;
  const int on = pred ? 1 : 0;
  if constexpr (kBytes == 2) {
    unsigned short h;
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %2, 0;\n\tmov.b16 %0, 0;\n\t"
        "@p ld.global.nc.b16 %0, [%1];\n\t}"
        : "=h"(h)
        : "l"(src), "r"(on));
    r.w[0] = h;
  } else if constexpr (kBytes == 4) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %2, 0;\n\tmov.b32 %0, 0;\n\t"
        "@p ld.global.nc.b32 %0, [%1];\n\t}"
        : "=r"(r.w[0])
        : "l"(src), "r"(on));
  } else if constexpr (kBytes == 8) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %3, 0;\n\tmov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\t"
        "@p ld.global.nc.v2.b32 {%0, %1}, [%2];\n\t}"
        : "=r"(r.w[0]), "=r"(r.w[1])
        : "l"(src), "r"(on));
  } else {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %5, 0;\n\tmov.b32 %0, 0;\n\tmov.b32 %1, 0;\n\t"
        "mov.b32 %2, 0;\n\tmov.b32 %3, 0;\n\t@p ld.global.nc.v4.b32 {%0, %1, %2, %3}, [%4];\n\t}"
        : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3])
        : "l"(src), "r"(on));
  }
}

// The V elements of a RawVec as floats.
template <typename T, int V>
__device__ __forceinline__ void widen(const RawVec<T, V>& r, float* dst) {
  unpack_words<T, V>(r.w, dst);
}

// Rounds V floats to T and stores them if `pred` (one predicated store; aligned to V elements).
template <typename T, int V>
__device__ __forceinline__ void store_if(T* dst, bool pred, const float* src) {
  constexpr int kBytes = int(sizeof(T)) * V;
  static_assert(kBytes == 2 || kBytes == 4 || kBytes == 8 || kBytes == 16, "unsupported vector");
  const int on = pred ? 1 : 0;
  uint32_t w[kBytes < 4 ? 1 : kBytes / 4];
  pack_words<T, V>(src, w);
  if constexpr (kBytes == 2) {
    const unsigned short h = static_cast<unsigned short>(w[0]);
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %2, 0;\n\t@p st.global.b16 [%0], %1;\n\t}"
                 :: "l"(dst), "h"(h), "r"(on) : "memory");
  } else if constexpr (kBytes == 4) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %2, 0;\n\t@p st.global.b32 [%0], %1;\n\t}"
                 :: "l"(dst), "r"(w[0]), "r"(on) : "memory");
  } else if constexpr (kBytes == 8) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %3, 0;\n\t@p st.global.v2.b32 [%0], {%1, %2};\n\t}"
                 :: "l"(dst), "r"(w[0]), "r"(w[1]), "r"(on) : "memory");
  } else {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %5, 0;\n\t@p st.global.v4.b32 [%0], {%1, %2, %3, %4};\n\t}"
                 :: "l"(dst), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]), "r"(on) : "memory");
  }
}

// ptr + k·stride elements as one IMAD.WIDE.U32 (stride < 2^32 elements; k a small constant): the
// compiler would otherwise chain 64-bit adds (two instructions each) from row to row.
template <typename T>
__device__ __forceinline__ T* step_ptr(T* ptr, uint32_t stride, int k) {
  if (k == 0) return ptr;
  uint64_t out;
  asm("mad.wide.u32 %0, %1, %2, %3;" : "=l"(out) : "r"(stride), "r"(uint32_t(k * int(sizeof(T)))), "l"(ptr));
  return reinterpret_cast<T*>(out);
}
template <typename T>
__device__ __forceinline__ T* step_ptr(T* ptr, uint64_t stride, int k) {
  return ptr + stride * uint64_t(k);
}

// The V·K² weights of channels c … c + V − 1 (contiguous in W [C, 1, K, K]) as wk[tap][channel]:
// K² vec-wide loads when W is aligned to them, else one float at a time.
template <int K, int V>
__device__ __forceinline__ void load_nhwc_weights(const NhwcParams& p, int c, float (&wk)[K * K][V]) {
  constexpr int kTaps = K * K;
  float f[V * kTaps];
  const float* src = p.w + int64_t(c) * kTaps;
  if (V > 1 && p.w_vec) {
#pragma unroll
    for (int i = 0; i < kTaps; ++i) {
      if constexpr (V == 4) {
        const float4 q = __ldg(reinterpret_cast<const float4*>(src) + i);
        f[4 * i] = q.x;
        f[4 * i + 1] = q.y;
        f[4 * i + 2] = q.z;
        f[4 * i + 3] = q.w;
      } else if constexpr (V == 2) {
        const float2 q = __ldg(reinterpret_cast<const float2*>(src) + i);
        f[2 * i] = q.x;
        f[2 * i + 1] = q.y;
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < V * kTaps; ++i) f[i] = __ldg(src + i);
  }
#pragma unroll
  for (int t = 0; t < kTaps; ++t) {
#pragma unroll
    for (int v = 0; v < V; ++v) wk[t][v] = f[v * kTaps + t];
  }
}

// Every strip of this thread's channel vector (normally one): output rows y0 … y0 + nhwc_rows(K, ·) − 1
// (those inside the image), columns xs … xs + seg_w − 1 (idem) of image n, channels c … c + V − 1.
// The strip's input window (K − 1 more rows and columns) is read column by column, one column ahead
// of its use: each vector once (predicated loads: zeros outside the image), widened to FP32 with the
// input bias added inside the image, and added into the K output columns that use it. The sums of
// output column o live in slot o mod K, window column w in buffer w mod U (the loop is unrolled
// U = K times, 2 for K = 1, so slots and buffers are registers);
// column o is finished (activation, rounding, store) after window column o + K − 1. Output (i, o)
// gets tap (kr, kc) from window row i + kr of column o + kc: the taps are summed column by column
// from B (kc outer, kr inner; the first one is fmaf(w, x, B)). Strides are `Stride`: uint32_t (one
// IMAD.WIDE an address) unless an image row has 2^32 elements or more (uint64_t).
template <typename T, int K, int V, int Act, typename Stride>
__device__ __forceinline__ void nhwc_strips(const NhwcParams& p) {
  constexpr int R = K / 2;
  constexpr int TH = nhwc_rows(K, int(sizeof(T)));
  constexpr int IH = TH + K - 1;  // window rows
  const int cv = int(blockIdx.x % unsigned(p.slices)) * int(blockDim.x) + int(threadIdx.x);
  const int c = cv * V;
  if (c >= p.channels) return;  // the last slice's spare lanes (no barrier in this kernel)

  float wk[K * K][V];
  load_nhwc_weights<K, V>(p, c, wk);
  float bias[V];
  float ib[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    bias[v] = __ldg(p.b + c + v);
    ib[v] = p.input_bias != nullptr ? __ldg(p.input_bias + c + v) : 0.0f;
  }
  const Stride C = Stride(p.channels);
  const Stride row_len = Stride(p.row_len);

  const int64_t step = int64_t(gridDim.x / unsigned(p.slices));
  for (int64_t ub = int64_t(blockIdx.x / unsigned(p.slices)); ub < p.ublocks; ub += step) {
    const int64_t unit = ub * int64_t(blockDim.y) + int64_t(threadIdx.y);
    if (unit >= p.units) break;  // later groups only go further
    int64_t n;
    int band, seg;
    if (p.small) {
      const int u = int(unit);
      const int ns = p.by_bands.div(u);  // n · segs + seg
      band = u - ns * p.bands;
      const int ni = p.by_segs.div(ns);
      seg = ns - ni * p.segs;
      n = ni;
    } else {
      const int64_t ns = unit / p.bands;
      band = int(unit - ns * p.bands);
      n = ns / p.segs;
      seg = int(ns - n * p.segs);
    }
    const int y0 = band * TH;
    const int xs = seg * p.seg_w;
    const int rows = imin(TH, p.height - y0);                 // output rows inside the image
    const int ncols = imin(p.seg_w, p.width - xs) + (K - 1);  // window columns
    // Window row r is image row y0 − R + r, window column w image column xs − R + w.
    bool row_ok[IH];
    float row_in[IH];  // 1 inside the image, 0 in the padding rows
#pragma unroll
    for (int r = 0; r < IH; ++r) {
      row_ok[r] = unsigned(y0 - R + r) < unsigned(p.height);
      row_in[r] = row_ok[r] ? 1.0f : 0.0f;
    }
    // Window column w (row 0) and output column w − (K − 1) (row 0): may point before X and Y.
    const T* col = static_cast<const T*>(p.x) + ((n * p.height + (y0 - R)) * p.width + (xs - R)) * p.channels + c;
    T* out = static_cast<T*>(p.y) + ((n * p.height + y0) * p.width + xs - (K - 1)) * p.channels + c;

    float acc[K][TH][V];  // slot s: output columns ≡ s mod K
    // Window column w is in win[w mod U]: the loop is unrolled U times (a multiple of K, and ≥ 2 so
    // that column w + 1 loads into another buffer), so buffers, like slots, are registers, no copies.
    constexpr int U = K == 1 ? 2 : K;
    RawVec<T, V> win[U][IH];
    bool cur_ok = unsigned(xs - R) < unsigned(p.width);
#pragma unroll
    for (int r = 0; r < IH; ++r) load_raw_if<T, V>(step_ptr(col, row_len, r), row_ok[r] && cur_ok, win[0][r]);
    int w = 0;
    for (;;) {
#pragma unroll
      for (int u = 0; u < U; ++u) {  // w ≡ u mod U
        const RawVec<T, V>(&cur)[IH] = win[u];
        // Window column w + 1 in flight while column w is used.
        const T* next = step_ptr(col, C, 1);
        const bool next_ok = w + 1 < ncols && unsigned(xs - R + w + 1) < unsigned(p.width);
#pragma unroll
        for (int r = 0; r < IH; ++r) {
          load_raw_if<T, V>(step_ptr(next, row_len, r), row_ok[r] && next_ok, win[(u + 1) % U][r]);
        }
        // x + InputBias inside the image, zeros (loaded as such) in the padding: one FMA an element.
        float ibc[V];
#pragma unroll
        for (int v = 0; v < V; ++v) ibc[v] = cur_ok ? ib[v] : 0.0f;
#pragma unroll
        for (int r = 0; r < IH; ++r) {
          float xv[V];
          widen<T, V>(cur[r], xv);
#pragma unroll
          for (int v = 0; v < V; ++v) xv[v] = fmaf(ibc[v], row_in[r], xv[v]);  // no InputBias: + 0
#pragma unroll
          for (int kc = 0; kc < K; ++kc) {
            const int s = (u - kc + U) % K;  // output column w − kc
#pragma unroll
            for (int i = 0; i < TH; ++i) {
              const int kr = r - i;
              if (kr < 0 || kr >= K) continue;
#pragma unroll
              for (int v = 0; v < V; ++v) {
                acc[s][i][v] = fmaf(wk[kr * K + kc][v], xv[v], kc == 0 && kr == 0 ? bias[v] : acc[s][i][v]);
              }
            }
          }
        }
        // Output column w − (K − 1) (slot (u + 1) mod K) has all its window columns.
        if (w >= K - 1) {
          const int s = (u + 1) % K;
#pragma unroll
          for (int i = 0; i < TH; ++i) {
            float o[V];
#pragma unroll
            for (int v = 0; v < V; ++v) {
              const float a = acc[s][i][v];
              o[v] = Act == kSilu ? silu(a) : Act == kGelu ? gelu(a) : a;
            }
            store_if<T, V>(step_ptr(out, row_len, i), i < rows, o);
          }
        }
        out = step_ptr(out, C, 1);
        cur_ok = next_ok;
        col = next;
        if (++w >= ncols) break;
      }
      if (w >= ncols) break;
    }
  }
}

template <typename T, int K, int V, typename Stride>
__device__ __forceinline__ void nhwc_strips_act(const NhwcParams& p) {
  if (p.activation == kSilu) {
    nhwc_strips<T, K, V, kSilu, Stride>(p);
  } else if (p.activation == kGelu) {
    nhwc_strips<T, K, V, kGelu, Stride>(p);
  } else {
    nhwc_strips<T, K, V, kNone, Stride>(p);
  }
}

template <typename T, int K, int V>
__device__ __forceinline__ void nhwc_strips_vec(const NhwcParams& p) {
  if constexpr (V <= nhwc_max_vec(K, int(sizeof(T)))) nhwc_strips_act<T, K, V, uint32_t>(p);
}

// Block: blockDim.x channel vectors × blockDim.y consecutive strips; blockIdx.x = slice + slices ·
// strip group. The vector width is a uniform switch (one inlined copy of the strip code each), the
// activation a uniform branch per output column.
template <typename T, int K>
__global__ void __launch_bounds__(kNhwcThreads, K <= 5 ? GM_DWCONV_NHWC_MIN_BLOCKS : 1)
    depthwise_conv_nhwc_kernel(NhwcParams p) {
  static_assert(K % 2 == 1 && K >= 1 && K <= kMaxKernel, "bad instantiation");
  if (p.wide) {
    nhwc_strips_act<T, K, 1, uint64_t>(p);  // image rows of 2^32 elements or more: 64-bit strides, V = 1
    return;
  }
  switch (p.vec) {
    case 4: nhwc_strips_vec<T, K, 4>(p); break;
    case 2: nhwc_strips_vec<T, K, 2>(p); break;
    default: nhwc_strips_vec<T, K, 1>(p); break;
  }
}

// ----------------------------------------------------------------------------------------------
// Host side.
#ifndef __CUDACC_RTC__

constexpr int64_t kMaxSide = int64_t(1) << 30;  // H, W, C: tile coordinates and channels in int

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % uintptr_t(bytes) == 0; }

// Floats per staged tile of `rows` rows: padded to 8 mod 16 (2 mod 4 in 16-byte units), so that the
// 16-byte window loads of a quarter warp spread over the banks when it spans two small planes (7×7:
// 2 planes × 2 strip rows × 2 strips, told apart by the plane stride, the row stride ≡ 4 mod 8
// units and the strip).
int64_t padded_tile_stride(int64_t rows, int smem_w) {
  int64_t s = rows * smem_w;
  while ((s / 4) % 4 != 2) s += 4;
  return s;
}

// Magic number and shift for FastDiv::div by d (1 ≤ d ≤ 2^31): the round-up method (as PyTorch's
// IntDivider), exact for every dividend below 2^31.
FastDiv make_fast_div(uint32_t d) {
  uint32_t shift = 0;
  while ((uint64_t(1) << shift) < d) ++shift;
  const uint64_t magic = ((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1;
  return FastDiv{uint32_t(magic), shift};
}

// Fills the launch geometry of `p` (its pointers and sizes set) for kernel size k and element size
// `elem`; returns the threads per block and the dynamic shared memory.
void plan_conv(ConvParams& p, int k, int elem, int* threads, size_t* smem_bytes) {
  const int r = k / 2;
  const int64_t ws = weight_stride(k);
  const int64_t cap = GM_DWCONV_MAX_SMEM_BYTES / 4;  // floats
  const int64_t target = GM_DWCONV_TARGET_OUTPUTS;

  // Widest staging load that divides W (a vector never straddles a row or the image's edge) and
  // to which X is aligned; 1, 2, 4 elements, or 8 of a 2-byte type.
  p.vec = 1;
  for (int v = GM_DWCONV_MAX_VEC_BYTES / elem; v > 1; v /= 2) {
    if (v <= 8 && p.width % v == 0 && aligned(p.x, v * elem)) {
      p.vec = v;
      break;
    }
  }
  p.store_vec = 1;
  for (int v = 4; v > 1; v /= 2) {
    if (v * elem <= GM_DWCONV_MAX_VEC_BYTES && p.width % v == 0 && aligned(p.y, v * elem)) {
      p.store_vec = v;
      break;
    }
  }

  // Columns: the whole (padded) width, or column tiles of GM_DWCONV_MAX_TILE_W.
  const int64_t padded_w = round_up(p.width, kRunW);  // a multiple of vec (8 divides W when vec = 8)
  if (padded_w <= GM_DWCONV_MAX_TILE_W) {
    p.tile_w = int(padded_w);
    p.tiles_x = 1;
  } else {
    p.tile_w = GM_DWCONV_MAX_TILE_W;
    p.tiles_x = int(ceil_div(p.width, p.tile_w));
  }
  p.smem_w = kPadL + p.tile_w + kPadR;
  if (p.smem_w % 8 == 0) p.smem_w += 4;  // row stride ≡ 4 mod 8 floats: strip rows on other banks

  // Rows: G whole planes per block when a plane is small, else tiles of about `target` outputs.
  const int64_t padded_h = round_up(p.height, kRunH);
  const int64_t plane_floats = padded_tile_stride(padded_h + 2 * r, p.smem_w) + ws;
  int64_t tiles_y = 1;
  if (p.tiles_x == 1 && padded_h * p.tile_w <= target && plane_floats <= cap) {
    int64_t group = target / (padded_h * p.tile_w);
    if (group > cap / plane_floats) group = cap / plane_floats;
    if (group > p.planes) group = p.planes;
    p.group = int(group);
    p.tile_h = int(padded_h);
  } else {
    p.group = 1;
    // Most rows that fit the cap: ≥ 8 (smem_w ≤ 140, cap ≥ 2048 floats; 52 at the default cap).
    const int64_t most = ((cap - ws - 12) / p.smem_w - 2 * r) / kRunH * kRunH;
    int64_t th = target / p.tile_w / kRunH * kRunH;
    if (th > most) th = most;
    if (th < kRunH) th = kRunH;
    tiles_y = ceil_div(p.height, th);
    th = round_up(ceil_div(p.height, tiles_y), kRunH);  // the same tile count, rows spread evenly
    tiles_y = ceil_div(p.height, th);
    p.tile_h = int(th);
  }
  p.smem_rows = p.tile_h + 2 * r;
  p.tile_stride = int(padded_tile_stride(p.smem_rows, p.smem_w));
  p.runs = p.tile_w / kRunW;
  p.strips = p.tile_h / kRunH * p.runs;
  p.vpr = p.tile_w / p.vec;
  p.tiles_per_plane = tiles_y * p.tiles_x;
  p.iters = p.tiles_per_plane == 1 ? ceil_div(p.planes, p.group) : p.planes * p.tiles_per_plane;
  p.by_vpr = make_fast_div(uint32_t(p.vpr));
  p.by_rows = make_fast_div(uint32_t(p.smem_rows));
  p.by_strips = make_fast_div(uint32_t(p.strips));
  p.by_runs = make_fast_div(uint32_t(p.runs));

  const int64_t strips = int64_t(p.group) * p.strips;
  *threads = int(strips >= kMaxThreads ? kMaxThreads : round_up(strips, 32));
  *smem_bytes = size_t(int64_t(p.group) * (p.tile_stride + ws) * 4);
}

template <typename T, int K>
cudaError_t launch_conv(const ConvParams& p, int threads, size_t smem, cudaStream_t stream) {
  int64_t blocks = p.iters;
  if (blocks > GM_DWCONV_MAX_GRID) blocks = GM_DWCONV_MAX_GRID;
  depthwise_conv_kernel<T, K><<<unsigned(blocks), threads, smem, stream>>>(p);
  return cudaGetLastError();
}

// Calls launch(KernelSize<K>{}) for the run-time kernel size k (1, 3, 5, 7: the instantiated kernels);
// any other k is cudaErrorInvalidValue. One dispatch for both layouts' launchers.
template <int K>
struct KernelSize {
  static constexpr int value = K;
};
template <typename Launch>
cudaError_t with_kernel_size(int k, Launch launch) {
  switch (k) {
    case 1: return launch(KernelSize<1>{});
    case 3: return launch(KernelSize<3>{});
    case 5: return launch(KernelSize<5>{});
    case 7: return launch(KernelSize<7>{});
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_conv_k(int k, const ConvParams& p, int threads, size_t smem, cudaStream_t stream) {
  return with_kernel_size(k, [&](auto size) { return launch_conv<T, decltype(size)::value>(p, threads, smem, stream); });
}

// Fills the launch geometry of `p` (its pointers, sizes and activation set) for n images, kernel
// size k and element size `elem`: the block shape and the grid.
void plan_nhwc(NhwcParams& p, int64_t n, int k, int elem, dim3* block, int64_t* grid) {
  // Channels per thread: the widest of 4, 2, 1 (≤ nhwc_max_vec(k), ≤ GM_DWCONV_MAX_VEC_BYTES) that
  // divides C and to which X and Y are aligned.
  int most = nhwc_max_vec(k, elem);
  while (most > 1 && most * elem > GM_DWCONV_MAX_VEC_BYTES) most /= 2;
  p.vec = 1;
  for (int v = most; v > 1; v /= 2) {
    if (p.channels % v == 0 && aligned(p.x, v * elem) && aligned(p.y, v * elem)) {
      p.vec = v;
      break;
    }
  }
  // Image rows of 2^32 elements or more: 64-bit strides, one channel per thread (a rare, slow path).
  p.wide = p.row_len >= (int64_t(1) << 32) ? 1 : 0;
  if (p.wide) p.vec = 1;
  p.w_vec = aligned(p.w, 4 * p.vec) ? 1 : 0;

  // Slices of at most kNhwcLanes channel vectors, as even as they go (C = 348 in 2s: 174 vectors,
  // 6 slices of 29, no idle lane); blockDim.y strips per block.
  const int64_t vecs = p.channels / p.vec;
  const int64_t slices = ceil_div(vecs, kNhwcLanes);
  const int64_t lanes = ceil_div(vecs, slices);
  const int64_t strips_per_block = kNhwcThreads / lanes;
  p.slices = int(slices);
  *block = dim3(unsigned(lanes), unsigned(strips_per_block), 1);

  // Strips: nhwc_rows(k, elem) rows × a whole image row, cut into segments while the launch has fewer than
  // GM_DWCONV_NHWC_TARGET_THREADS threads (segments of at least 8 columns).
  p.bands = int(ceil_div(p.height, nhwc_rows(k, elem)));
  const int64_t threads = n * p.bands * vecs;  // ≤ N·H·C: no overflow
  int64_t segs = ceil_div(GM_DWCONV_NHWC_TARGET_THREADS, threads);
  const int64_t most_segs = ceil_div(p.width, 8);
  if (segs > most_segs) segs = most_segs;
  if (segs < 1) segs = 1;
  p.seg_w = int(ceil_div(p.width, segs));
  p.segs = int(ceil_div(p.width, p.seg_w));
  p.units = n * p.segs * p.bands;  // ≤ N·H·W: no overflow
  p.ublocks = ceil_div(p.units, strips_per_block);
  p.small = p.units < (int64_t(1) << 31) ? 1 : 0;
  p.by_bands = make_fast_div(uint32_t(p.bands));
  p.by_segs = make_fast_div(uint32_t(p.segs));
  // The grid is a whole number of slices (every block keeps its slice in the grid-stride loop).
  int64_t groups = GM_DWCONV_MAX_GRID / slices;
  if (groups < 1) groups = 1;
  if (groups > p.ublocks) groups = p.ublocks;
  *grid = slices * groups;  // ≤ max(2^25, GM_DWCONV_MAX_GRID)
}

template <typename T, int K>
cudaError_t launch_nhwc(const NhwcParams& p, dim3 block, int64_t grid, cudaStream_t stream) {
  depthwise_conv_nhwc_kernel<T, K><<<unsigned(grid), block, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_nhwc_k(int k, const NhwcParams& p, dim3 block, int64_t grid, cudaStream_t stream) {
  return with_kernel_size(k, [&](auto size) { return launch_nhwc<T, decltype(size)::value>(p, block, grid, stream); });
}

#endif  // __CUDACC_RTC__
}  // namespace

#ifndef __CUDACC_RTC__

extern "C" {

// Element types of X and Y (the same codes as gm_selective_scan_cuda).
enum GmConvDtype { GM_CONV_F32 = 0, GM_CONV_F16 = 1, GM_CONV_BF16 = 2 };

// Launches DepthwiseConv on `stream`: X and Y are n × c × h × w_ (channels_last = 0) or n × h × w_ × c
// (channels_last = 1) row-major device arrays of the type `dtype`, W c × k × k FP32 values (k odd,
// 1 … 7), B c FP32 values, InputBias (null: none) c FP32 values; `activation` 0 none, 1 SiLU,
// 2 GELU. Returns a cudaError_t (0 = success); invalid arguments (also channels_last other than 0
// or 1, c, h or w_ above 2^30) give cudaErrorInvalidValue. Y must not alias an input. An empty X
// (n, c, h or w_ = 0) launches nothing.
int gm_depthwise_conv_cuda(int dtype, const void* x, const float* w, const float* b, const float* input_bias,
                           void* y, int64_t n, int64_t c, int64_t h, int64_t w_, int64_t k, int activation,
                           int channels_last, cudaStream_t stream) {
  if (dtype != GM_CONV_F32 && dtype != GM_CONV_F16 && dtype != GM_CONV_BF16) return cudaErrorInvalidValue;
  if (n < 0 || c < 0 || h < 0 || w_ < 0) return cudaErrorInvalidValue;
  if (k < 1 || k > kMaxKernel || k % 2 == 0) return cudaErrorInvalidValue;
  if (activation != kNone && activation != kSilu && activation != kGelu) return cudaErrorInvalidValue;
  if (channels_last != 0 && channels_last != 1) return cudaErrorInvalidValue;
  if (n == 0 || c == 0 || h == 0 || w_ == 0) return cudaSuccess;
  if (h > kMaxSide || w_ > kMaxSide || c > kMaxSide) return cudaErrorInvalidValue;
  if (n > INT64_MAX / c || h > INT64_MAX / w_ || n * c > INT64_MAX / (h * w_)) return cudaErrorInvalidValue;
  if (x == nullptr || w == nullptr || b == nullptr || y == nullptr) return cudaErrorInvalidValue;

  if (channels_last == 1) {
    NhwcParams q{};
    q.x = x;
    q.w = w;
    q.b = b;
    q.input_bias = input_bias;
    q.y = y;
    q.row_len = w_ * c;
    q.height = int(h);
    q.width = int(w_);
    q.channels = int(c);
    q.activation = activation;
    dim3 block;
    int64_t grid = 0;
    plan_nhwc(q, n, int(k), dtype == GM_CONV_F32 ? 4 : 2, &block, &grid);
    switch (dtype) {
      case GM_CONV_F32: return int(launch_nhwc_k<float>(int(k), q, block, grid, stream));
      case GM_CONV_F16: return int(launch_nhwc_k<__half>(int(k), q, block, grid, stream));
      default: return int(launch_nhwc_k<__nv_bfloat16>(int(k), q, block, grid, stream));
    }
  }

  ConvParams p{};
  p.x = x;
  p.w = w;
  p.b = b;
  p.input_bias = input_bias;
  p.y = y;
  p.planes = n * c;
  p.plane_len = h * w_;
  p.height = int(h);
  p.width = int(w_);
  p.channels = int(c);
  p.activation = activation;
  int threads = 0;
  size_t smem = 0;
  plan_conv(p, int(k), dtype == GM_CONV_F32 ? 4 : 2, &threads, &smem);
  switch (dtype) {
    case GM_CONV_F32: return int(launch_conv_k<float>(int(k), p, threads, smem, stream));
    case GM_CONV_F16: return int(launch_conv_k<__half>(int(k), p, threads, smem, stream));
    default: return int(launch_conv_k<__nv_bfloat16>(int(k), p, threads, smem, stream));
  }
}

}  // extern "C"
#endif  // __CUDACC_RTC__

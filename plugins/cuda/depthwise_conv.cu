// CUDA kernel for ai.groupmamba::DepthwiseConv v1 (see ../SPEC.md §9).
//
// For every (n, c) plane of X [N, C, H, W]: a K×K depthwise cross-correlation (stride 1, zero padding
// K/2) of x̃ = X + InputBias[c] (inside the image; the padding stays zero), plus B[c], then
// act ∈ {identity, SiLU, exact GELU}; FP32 arithmetic, Y rounded to T once. X and Y of type T (FP32,
// FP16, BF16); W [C, 1, K, K], B and InputBias [C] FP32. K odd, 1 to 7 (a template parameter).
//
// Why this shape of kernel: the op is a memory-bound stencil (each element of X is read once and
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

template <typename T>
cudaError_t launch_conv_k(int k, const ConvParams& p, int threads, size_t smem, cudaStream_t stream) {
  switch (k) {
    case 1: return launch_conv<T, 1>(p, threads, smem, stream);
    case 3: return launch_conv<T, 3>(p, threads, smem, stream);
    case 5: return launch_conv<T, 5>(p, threads, smem, stream);
    case 7: return launch_conv<T, 7>(p, threads, smem, stream);
    default: return cudaErrorInvalidValue;
  }
}

#endif  // __CUDACC_RTC__
}  // namespace

#ifndef __CUDACC_RTC__

extern "C" {

// Element types of X and Y (the same codes as gm_selective_scan_cuda).
enum GmConvDtype { GM_CONV_F32 = 0, GM_CONV_F16 = 1, GM_CONV_BF16 = 2 };

// Launches DepthwiseConv on `stream`: X and Y are n × c × h × w_ row-major device arrays of the
// type `dtype`, W c × k × k FP32 values (k odd, 1 … 7), B c FP32 values, InputBias (null: none) c
// FP32 values; `activation` 0 none, 1 SiLU, 2 GELU. Returns a cudaError_t (0 = success); invalid
// arguments (also c, h or w_ above 2^30) give cudaErrorInvalidValue. Y must not alias an input. An
// empty X (n, c, h or w_ = 0) launches nothing.
int gm_depthwise_conv_cuda(int dtype, const void* x, const float* w, const float* b, const float* input_bias,
                           void* y, int64_t n, int64_t c, int64_t h, int64_t w_, int64_t k, int activation,
                           cudaStream_t stream) {
  if (dtype != GM_CONV_F32 && dtype != GM_CONV_F16 && dtype != GM_CONV_BF16) return cudaErrorInvalidValue;
  if (n < 0 || c < 0 || h < 0 || w_ < 0) return cudaErrorInvalidValue;
  if (k < 1 || k > kMaxKernel || k % 2 == 0) return cudaErrorInvalidValue;
  if (activation != kNone && activation != kSilu && activation != kGelu) return cudaErrorInvalidValue;
  if (n == 0 || c == 0 || h == 0 || w_ == 0) return cudaSuccess;
  if (h > kMaxSide || w_ > kMaxSide || c > kMaxSide) return cudaErrorInvalidValue;
  if (n > INT64_MAX / c || h > INT64_MAX / w_ || n * c > INT64_MAX / (h * w_)) return cudaErrorInvalidValue;
  if (x == nullptr || w == nullptr || b == nullptr || y == nullptr) return cudaErrorInvalidValue;

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

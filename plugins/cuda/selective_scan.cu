// CUDA kernel for ai.groupmamba::SelectiveScan v1 (see ../SPEC.md).
//
// GroupMamba's scan: d_state = 1, so every (image n, channel c) is an independent scalar
// first-order linear recurrence  h_t = a_t·h_{t-1} + b_t,  y_t = C_t·h_t + D_c·u_t  with
// a_t = exp(Δ_t·A_c), b_t = Δ_t·B_t·u_t, Δ_t = softplus(delta_t + bias_c), visited in the
// channel group's direction (→ ↓ ← ↑) over the row-major H×W map. Nothing is permuted in memory:
// the kernel maps each step to its row-major offset.
//
// Work split: one warp per (n, c) sequence. The sequence is cut into tiles of 32·K steps; lane l
// owns K consecutive steps of a tile. Each lane folds its K steps into one affine map
// (a, b) (h ↦ a·h + b), the warp composes the maps with a shuffle scan, the carry from the
// previous tile enters, and each lane replays its K steps to write y. State and arithmetic are
// FP32 whatever the input type (FP32, FP16, BF16).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kWarp = 32;
constexpr int kStepsPerLane = 4;  // K
constexpr int kTile = kWarp * kStepsPerLane;
constexpr int kWarpsPerBlock = 4;
constexpr float kSoftplusThreshold = 20.0f;
constexpr int kMaxGroups = 32;  // directions are packed 2 bits per group in one uint64

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// softplus with the official kernel's threshold: x if x > 20 else log1p(exp(x)).
__device__ __forceinline__ float softplus(float x) {
  return x > kSoftplusThreshold ? x : log1pf(expf(x));
}

// Row-major offset of scan step s for a direction (0 →, 1 ↓, 2 ←, 3 ↑) on an h×w map.
__device__ __forceinline__ int64_t step_offset(int dir, int64_t s, int64_t len, int64_t h, int64_t w) {
  if (dir >= 2) s = len - 1 - s;      // ← and ↑ are the reverses of → and ↓
  if ((dir & 1) == 0) return s;       // row-major: the step is the offset
  const int64_t col = s / h;          // column-major: s = col·h + row
  const int64_t row = s - col * h;
  return row * w + col;
}

struct Params {
  const void* u;
  const void* delta;
  const float* A;
  const void* B;
  const void* C;
  const float* D;
  const float* delta_bias;
  void* y;
  int64_t batch, channels, groups, height, width;
  uint64_t directions;  // 2 bits per group
};

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
selective_scan_kernel(Params p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t seq = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (seq >= p.batch * p.channels) return;  // whole warps exit together
  const int64_t n = seq / p.channels;
  const int64_t c = seq - n * p.channels;
  const int64_t group_width = p.channels / p.groups;
  const int64_t g = c / group_width;
  const int dir = int((p.directions >> (2 * g)) & 3);
  const int64_t len = p.height * p.width;

  const T* u = static_cast<const T*>(p.u) + seq * len;
  const T* delta = static_cast<const T*>(p.delta) + seq * len;
  const T* Bg = static_cast<const T*>(p.B) + (n * p.groups + g) * len;
  const T* Cg = static_cast<const T*>(p.C) + (n * p.groups + g) * len;
  T* y = static_cast<T*>(p.y) + seq * len;
  const float A = p.A[c];
  const float Dc = p.D[c];
  const float bias = p.delta_bias[c];

  float carry = 0.0f;  // state after the previous tile
  for (int64_t tile = 0; tile < len; tile += kTile) {
    const int64_t first = tile + int64_t(lane) * kStepsPerLane;
    float a[kStepsPerLane], b[kStepsPerLane], uu[kStepsPerLane], cc[kStepsPerLane];
    int64_t off[kStepsPerLane];
#pragma unroll
    for (int i = 0; i < kStepsPerLane; ++i) {
      const int64_t s = first + i;
      if (s < len) {
        off[i] = step_offset(dir, s, len, p.height, p.width);
        uu[i] = to_float(u[off[i]]);
        const float dt = softplus(to_float(delta[off[i]]) + bias);
        a[i] = expf(dt * A);
        b[i] = dt * to_float(Bg[off[i]]) * uu[i];
        cc[i] = to_float(Cg[off[i]]);
      } else {  // identity map past the end
        off[i] = -1;
        a[i] = 1.0f;
        b[i] = 0.0f;
        uu[i] = 0.0f;
        cc[i] = 0.0f;
      }
    }
    // This lane's K steps as one affine map h ↦ ma·h + mb.
    float ma = a[0], mb = b[0];
#pragma unroll
    for (int i = 1; i < kStepsPerLane; ++i) {
      mb = a[i] * mb + b[i];
      ma = a[i] * ma;
    }
    // Inclusive scan of the maps over lanes: lane l holds lanes 0..l composed.
#pragma unroll
    for (int d = 1; d < kWarp; d *= 2) {
      const float pa = __shfl_up_sync(0xffffffffu, ma, d);
      const float pb = __shfl_up_sync(0xffffffffu, mb, d);
      if (lane >= d) {
        mb = ma * pb + mb;
        ma = ma * pa;
      }
    }
    // Exclusive prefix → the state entering this lane's first step.
    float ea = __shfl_up_sync(0xffffffffu, ma, 1);
    float eb = __shfl_up_sync(0xffffffffu, mb, 1);
    if (lane == 0) {
      ea = 1.0f;
      eb = 0.0f;
    }
    float h = ea * carry + eb;
#pragma unroll
    for (int i = 0; i < kStepsPerLane; ++i) {
      h = a[i] * h + b[i];
      if (off[i] >= 0) y[off[i]] = from_float<T>(cc[i] * h + Dc * uu[i]);
    }
    const float ta = __shfl_sync(0xffffffffu, ma, kWarp - 1);
    const float tb = __shfl_sync(0xffffffffu, mb, kWarp - 1);
    carry = ta * carry + tb;
  }
}

}  // namespace

extern "C" {

// Element types of u, delta, B, C and y.
enum GmScanDtype { GM_SCAN_F32 = 0, GM_SCAN_F16 = 1, GM_SCAN_BF16 = 2 };

// Launches the scan on `stream`. Returns a cudaError_t (0 = success); invalid arguments give
// cudaErrorInvalidValue. All pointers are device pointers; `directions` is a host array of
// `groups` values in {0, 1, 2, 3}.
int gm_selective_scan_cuda(int dtype, const void* u, const void* delta, const float* A, const void* B,
                           const void* C, const float* D, const float* delta_bias, void* y, int64_t batch,
                           int64_t channels, int64_t groups, int64_t height, int64_t width,
                           const int64_t* directions, cudaStream_t stream) {
  if (batch < 0 || channels <= 0 || groups <= 0 || groups > kMaxGroups || channels % groups != 0 ||
      height <= 0 || width <= 0) {
    return cudaErrorInvalidValue;
  }
  Params p{u, delta, A, B, C, D, delta_bias, y, batch, channels, groups, height, width, 0};
  for (int64_t g = 0; g < groups; ++g) {
    if (directions[g] < 0 || directions[g] > 3) return cudaErrorInvalidValue;
    p.directions |= uint64_t(directions[g]) << (2 * g);
  }
  const int64_t sequences = batch * channels;
  if (sequences == 0) return cudaSuccess;
  const dim3 grid(unsigned((sequences + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const dim3 block(kWarpsPerBlock * kWarp);
  switch (dtype) {
    case GM_SCAN_F32: selective_scan_kernel<float><<<grid, block, 0, stream>>>(p); break;
    case GM_SCAN_F16: selective_scan_kernel<__half><<<grid, block, 0, stream>>>(p); break;
    case GM_SCAN_BF16: selective_scan_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(p); break;
    default: return cudaErrorInvalidValue;
  }
  return int(cudaGetLastError());
}

}  // extern "C"

// CUDA kernel for ai.groupmamba::GroupedLayerNorm v1 (see ../SPEC.md §8).
//
// For every row r of X (all axes but the last, flattened) and group k of d = C / groups contiguous
// channels: μ and the biased σ² over the group in FP32 (two passes over values held in registers),
// y = ((x − μ)·rsqrt(σ² + ε)·Scale + Bias)·g with g = 1, Gate or Gate·sigmoid(Gate), rounded to T
// once. Inputs and output of type T (FP32, FP16, BF16); Scale and Bias FP32.
//
// Why this shape of kernel: the op is memory-bound (each element is read once and written once; a
// few tens of FLOPs), and GroupMamba's groups are small (d = 16 to 448), so a block or even a
// warp per row would leave most lanes idle. Instead:
//   * Unit = one (row, group): d contiguous elements; consecutive units are consecutive in memory
//     (unit u starts at element u·d, its channels at (u mod groups)·d).
//   * A team of `team` lanes (power of two, 1..32, aligned inside the warp) owns a unit. The unit
//     is cut into chunks of V elements, one load each (V = 16 bytes' worth, else 4, else 1: the
//     widest that divides d and to which all pointers are aligned); chunk c belongs to lane
//     c mod team at step c / team, so at every step a team reads one contiguous piece and the
//     32/team teams of a warp read neighbouring units: whole warps touch contiguous memory. Each lane keeps its PER = V·steps
//     values (4, 8, 16 or 32: a template parameter, so they stay in registers) for both passes and
//     the output, so X (and Gate, loaded up front with X) is read from memory exactly once.
//   * team = smallest power of two ≥ d / max(GM_NORM_MIN_PER_LANE, V), at most 32: every lane holds
//     at least one full vector and at least GM_NORM_MIN_PER_LANE values (d = 64: FP32 8 lanes of
//     two float4, FP16 8 lanes of one 16-byte vector; d = 448: 32 lanes of 16 values).
//   * Sums are team-wide butterflies (__shfl_xor_sync with offsets team/2 … 1, which stay inside an
//     aligned team); every lane of the warp runs them, also lanes whose unit is past the end (their
//     loads are predicated off, the loop bound is the same for the whole block), so the full-warp
//     mask is always right. The butterfly leaves the same bits in every lane of a team.
//   * 256-thread blocks, 256 / team units per block, a grid-stride loop with 64-bit offsets
//     (rows·channels can exceed 2^31). No shared memory, no synchronisation, no allocation: safe
//     inside CUDA graphs; the host side makes no runtime call but the launch and cudaGetLastError.
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

// Tuning knobs (compile-time). GM_NORM_MIN_PER_LANE: values each lane holds at least (picks the
// team size; larger = smaller teams, fewer shuffles per value, less contiguous warp accesses).
// GM_NORM_MAX_VEC_BYTES: widest load (16; 4 or 2 for testing the narrow paths). GM_NORM_MAX_GRID:
// most blocks per launch (the grid-stride loop covers the rest; small values test that loop).
// 8 by measurement (H100, tiny's batch-128 norm shapes, benchmarks/h100-norm-kernel/): against 4,
// FP32 2.33 -> 2.90 TB/s (C = 64) and 1.76 -> 2.20 (C = 348, 4 groups), FP16 unchanged (±3 %);
// 16 loses on the gated shapes.
#ifndef GM_NORM_MIN_PER_LANE
#define GM_NORM_MIN_PER_LANE 8
#endif
#ifndef GM_NORM_MAX_VEC_BYTES
#define GM_NORM_MAX_VEC_BYTES 16
#endif
#ifndef GM_NORM_MAX_GRID
#define GM_NORM_MAX_GRID (1 << 30)
#endif

namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kMaxGroupWidth = 1024;  // d; MAX_GROUP_WIDTH in plugins/src/norm.rs
constexpr int kMaxPerLane = 32;       // values per lane at d = 1024, team = 32
static_assert(kMaxGroupWidth <= kWarp * kMaxPerLane, "a unit must fit one warp's registers");
static_assert(GM_NORM_MIN_PER_LANE >= 1 && GM_NORM_MIN_PER_LANE <= kMaxPerLane, "bad GM_NORM_MIN_PER_LANE");

enum GateMode { kNoGate = 0, kGate = 1, kSiluGate = 2 };

#include "element_io.cuh"

// V consecutive FP32 values of Scale or Bias (aligned to min(V, 4)·4 bytes): 16-byte loads at most.
template <int V>
__device__ __forceinline__ void load_params(const float* src, float* dst) {
  constexpr int kStep = V < 4 ? V : 4;
#pragma unroll
  for (int i = 0; i < V; i += kStep) load_vec<float, kStep>(src + i, dst + i);
}

// Sum over an aligned team of 2^team_shift lanes; every lane of the warp must call it (full mask).
__device__ __forceinline__ float team_sum(float v, int team_shift) {
  for (int m = (1 << team_shift) >> 1; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// SiLU as the reference (plugins/src/norm.rs): v / (1 + e^−v), accurate expf (not __expf).
__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }

struct NormParams {
  const void* x;
  const float* scale;
  const float* bias;
  const void* gate;  // null when gate_mode = kNoGate
  void* y;
  int64_t units;   // rows · groups
  int d;           // channels per group
  int groups;
  int chunks;      // d / V
  int team_shift;  // team = 1 << team_shift lanes per unit
  float epsilon;
  int gate_mode;   // GateMode
};

// V: elements per load; PER: values per lane (V · steps).
template <typename T, int V, int PER>
__global__ void __launch_bounds__(kThreads) grouped_layer_norm_kernel(NormParams p) {
  static_assert(PER % V == 0 && PER <= kMaxPerLane, "bad instantiation");
  constexpr int kSteps = PER / V;
  const int team = 1 << p.team_shift;
  const int t = int(threadIdx.x) & (team - 1);         // lane inside the team
  const int local = int(threadIdx.x) >> p.team_shift;  // unit inside the block's batch
  const int64_t per_block = kThreads >> p.team_shift;
  const int64_t stride = int64_t(gridDim.x) * per_block;
  // Group of the batch's first unit, kept up to date incrementally (no 64-bit division per unit).
  int group0 = int((int64_t(blockIdx.x) * per_block) % p.groups);
  const int group_stride = int(stride % p.groups);
  const T* gx = static_cast<const T*>(p.x);
  const T* gg = static_cast<const T*>(p.gate);
  T* gy = static_cast<T*>(p.y);

  // The bound is the same for every thread of the block: all lanes reach the shuffles together.
  for (int64_t base = int64_t(blockIdx.x) * per_block; base < p.units; base += stride) {
    const int64_t unit = base + local;
    const bool live = unit < p.units;
    const int64_t start = unit * p.d;
    float v[PER];
    float g[PER];
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int c = s * team + t;
      if (live && c < p.chunks) {
        load_vec<T, V>(gx + start + int64_t(c) * V, v + s * V);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) v[s * V + k] = 0.0f;  // adds nothing to the sum
      }
    }
    if (p.gate_mode != kNoGate) {  // issued before the reductions: X and Gate loads in flight together
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        const int c = s * team + t;
        if (live && c < p.chunks) {
          load_vec<T, V>(gg + start + int64_t(c) * V, g + s * V);
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) g[s * V + k] = 0.0f;
        }
      }
    }
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < PER; ++i) sum += v[i];
    const float mean = team_sum(sum, p.team_shift) / float(p.d);
    float sq = 0.0f;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (s * team + t < p.chunks) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float e = v[s * V + k] - mean;
          sq = fmaf(e, e, sq);
        }
      }
    }
    const float rstd = rsqrtf(team_sum(sq, p.team_shift) / float(p.d) + p.epsilon);
    if (live) {
      int group = group0 + local;  // < groups + 256: no overflow (groups ≤ 2^30)
      if (group >= p.groups) group %= p.groups;
      const int64_t channel0 = int64_t(group) * p.d;
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        const int c = s * team + t;
        if (c < p.chunks) {
          float sc[V], bi[V], out[V];
          load_params<V>(p.scale + channel0 + c * V, sc);
          load_params<V>(p.bias + channel0 + c * V, bi);
#pragma unroll
          for (int k = 0; k < V; ++k) {
            float r = fmaf((v[s * V + k] - mean) * rstd, sc[k], bi[k]);
            if (p.gate_mode == kGate) {
              r *= g[s * V + k];
            } else if (p.gate_mode == kSiluGate) {
              r *= silu(g[s * V + k]);
            }
            out[k] = r;
          }
          store_vec<T, V>(gy + start + int64_t(c) * V, out);
        }
      }
    }
    group0 += group_stride;
    if (group0 >= p.groups) group0 -= p.groups;
  }
}

// ----------------------------------------------------------------------------------------------
// Host side.
#ifndef __CUDACC_RTC__

constexpr int kMaxGroups = 1 << 30;  // group index arithmetic in int (group0 + local)

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int pow2_at_least(int64_t n) {
  int p = 1;
  while (p < n) p *= 2;
  return p;
}

bool aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % uintptr_t(bytes) == 0; }

// How a launch covers a unit: V elements per load, 2^team_shift lanes, PER values per lane.
struct NormPlan {
  int vec, team_shift, per;
};

// Widest vector (≤ GM_NORM_MAX_VEC_BYTES; 1, 4 or 8 elements: the instantiated ones) that divides
// d and to which X, Y, Gate (elements of `elem` bytes) and Scale, Bias (FP32) are aligned; then the
// team and the values per lane.
NormPlan plan_norm(int d, int elem, const void* x, const float* scale, const float* bias, const void* gate,
                   const void* y) {
  int vec = 1;
  for (int v = GM_NORM_MAX_VEC_BYTES / elem; v > 1; v /= 2) {
    if (v != 4 && v != 8) continue;  // V = 2 is not instantiated: it falls back to V = 1
    const int bytes = v * elem, param_bytes = 4 * (v < 4 ? v : 4);
    if (d % v == 0 && aligned(x, bytes) && aligned(y, bytes) && (gate == nullptr || aligned(gate, bytes)) &&
        aligned(scale, param_bytes) && aligned(bias, param_bytes)) {
      vec = v;
      break;
    }
  }
  const int chunks = d / vec;
  const int least = GM_NORM_MIN_PER_LANE > vec ? GM_NORM_MIN_PER_LANE : vec;
  int team = pow2_at_least(ceil_div(d, least));
  if (team > kWarp) team = kWarp;
  int team_shift = 0;
  while ((1 << team_shift) < team) ++team_shift;
  const int steps = int(ceil_div(chunks, team));
  int per = pow2_at_least(int64_t(steps) * vec);
  if (per < 4) per = 4;
  return NormPlan{vec, team_shift, per};
}

template <typename T, int V, int PER>
cudaError_t launch_norm(const NormParams& p, cudaStream_t stream) {
  const int64_t per_block = kThreads >> p.team_shift;
  int64_t blocks = ceil_div(p.units, per_block);
  if (blocks > GM_NORM_MAX_GRID) blocks = GM_NORM_MAX_GRID;
  grouped_layer_norm_kernel<T, V, PER><<<unsigned(blocks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int V>
cudaError_t launch_norm_per(int per, const NormParams& p, cudaStream_t stream) {
  switch (per) {
    case 4:
      if constexpr (V <= 4) {
        return launch_norm<T, V, 4>(p, stream);
      } else {
        return cudaErrorInvalidConfiguration;  // the planner never asks: PER ≥ V
      }
    case 8: return launch_norm<T, V, 8>(p, stream);
    case 16: return launch_norm<T, V, 16>(p, stream);
    case 32: return launch_norm<T, V, 32>(p, stream);
    default: return cudaErrorInvalidConfiguration;
  }
}

template <typename T>
cudaError_t launch_norm_vec(const NormPlan& plan, const NormParams& p, cudaStream_t stream) {
  switch (plan.vec) {
    case 1: return launch_norm_per<T, 1>(plan.per, p, stream);
    case 4: return launch_norm_per<T, 4>(plan.per, p, stream);
    case 8:  // 16 bytes of a 2-byte type
      if constexpr (sizeof(T) == 2) {
        return launch_norm_per<T, 8>(plan.per, p, stream);
      } else {
        return cudaErrorInvalidConfiguration;
      }
    default: return cudaErrorInvalidConfiguration;
  }
}

#endif  // __CUDACC_RTC__
}  // namespace

#ifndef __CUDACC_RTC__

extern "C" {

// Element types of X, Gate and Y (the same codes as gm_selective_scan_cuda).
enum GmNormDtype { GM_NORM_F32 = 0, GM_NORM_F16 = 1, GM_NORM_BF16 = 2 };

// Launches GroupedLayerNorm on `stream`: X, Gate (null: no gate) and Y are `rows` × `channels`
// row-major device arrays of the type `dtype`, Scale and Bias `channels` FP32 values; `gate_silu`
// = 1 multiplies by Gate·sigmoid(Gate) instead of Gate. Returns a cudaError_t (0 = success);
// invalid arguments give cudaErrorInvalidValue. Y must not alias an input. rows = 0 (or
// channels = 0) launches nothing.
int gm_grouped_layer_norm_cuda(int dtype, const void* x, const float* scale, const float* bias, const void* gate,
                               void* y, int64_t rows, int64_t channels, int64_t groups, float epsilon,
                               int gate_silu, cudaStream_t stream) {
  if (dtype != GM_NORM_F32 && dtype != GM_NORM_F16 && dtype != GM_NORM_BF16) return cudaErrorInvalidValue;
  if (rows < 0 || channels < 0 || groups <= 0 || groups > kMaxGroups || channels % groups != 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t d = channels / groups;
  if (d > kMaxGroupWidth) return cudaErrorInvalidValue;
  if (!(epsilon >= 0.0f && epsilon <= 3.402823466e38f)) return cudaErrorInvalidValue;  // NaN, < 0, inf
  if (gate_silu != 0 && gate_silu != 1) return cudaErrorInvalidValue;
  if (rows == 0 || channels == 0) return cudaSuccess;
  if (rows > INT64_MAX / channels) return cudaErrorInvalidValue;
  if (x == nullptr || scale == nullptr || bias == nullptr || y == nullptr) return cudaErrorInvalidValue;

  const int elem = dtype == GM_NORM_F32 ? 4 : 2;
  const NormPlan plan = plan_norm(int(d), elem, x, scale, bias, gate, y);
  const int gate_mode = gate == nullptr ? kNoGate : gate_silu ? kSiluGate : kGate;
  const NormParams p{x, scale, bias, gate, y, rows * groups, int(d), int(groups), int(d) / plan.vec,
                     plan.team_shift, epsilon, gate_mode};
  switch (dtype) {
    case GM_NORM_F32: return int(launch_norm_vec<float>(plan, p, stream));
    case GM_NORM_F16: return int(launch_norm_vec<__half>(plan, p, stream));
    default: return int(launch_norm_vec<__nv_bfloat16>(plan, p, stream));
  }
}

}  // extern "C"
#endif  // __CUDACC_RTC__

// CUDA kernel for ai.groupmamba::SelectiveScan v1 (see ../SPEC.md).
//
// GroupMamba's scan: d_state = 1, so every (image n, channel c) is an independent scalar
// first-order linear recurrence  h_t = a_t·h_{t-1} + b_t,  y_t = C_t·h_t + D_c·u_t  with
// a_t = exp(Δ_t·A_c), b_t = Δ_t·B_t·u_t, Δ_t = softplus(delta_t + bias_c), visited in the
// channel group's direction (→ ↓ ← ↑) over the row-major H×W map. Nothing is permuted in memory:
// the kernel maps each step to its row-major offset. State and arithmetic are FP32 whatever the
// input type (FP32, FP16, BF16).
//
// Staged kernel (used whenever two stages of a work item fit in shared memory):
//   * Work item = P consecutive channels (planes) of one (image n, group g): one direction, one
//     B/C map. The P·L elements of u and delta are contiguous in memory, as are the L elements of
//     B[n,g] and C[n,g]. Persistent blocks (as many as fit on the GPU) each take a contiguous
//     range of items. Shared memory holds two (u, delta) stages and one (B, C) map: while item i
//     is scanned, item i+1's copies are in flight. On sm_90 each array's 16-byte-aligned middle is
//     one bulk copy (copy engine, completion on an mbarrier) issued by one thread; elsewhere
//     (sm_87) 16-byte cp.async per thread. The unaligned first/last few elements go through 4-byte
//     cp.async (FP32) or registers (2-byte types). The map is reloaded only when (n, g) changes.
//     Global traffic is fully coalesced whatever the direction.
//   * Each plane is cut into segments of K (7, 14 or 28: GM_SCAN_K28) consecutive scan steps
//     on one line: a piece of a row (directions → ←) or of a column (↓ ↑). Thread s of a plane
//     owns segment s in scan order, reads its steps from shared memory (lanes walk neighbouring
//     pieces or columns), computes a = exp(Δ·A) and b = Δ·B·u once, keeps them in registers and
//     folds them into one affine map h ↦ ma·h + mb.
//   * One block-wide scan of the maps in thread order (warp shuffles, then one warp over the warp
//     totals), segmented at plane starts so that nothing (not even NaN) crosses planes, gives every
//     segment its entering state.
//   * Each thread replays its steps and writes y (type T) over its own u elements in shared memory;
//     the block then stores y with 16-byte streaming stores.
//   * Small planes in 2-byte types (odd L ≤ 64, e.g. 7×7): one thread walks a whole plane instead
//     (K = kWholePlane: one pass, no segments, no block scan), since with 7-step segments the
//     per-item work outweighed the scan itself (ncu: ~147 instructions per element).
//   u, delta are read once, y written once; B, C once per (image, group) per block.
// Kernel v1 (one warp per sequence, tiles of 128 steps, shuffle scan with carry) remains as the
// fallback for planes too large for shared memory (L > 65535 or two stages > the opt-in limit).
//
// The file also compiles with NVRTC (__CUDACC_RTC__: device code only, no host launcher), which is
// how sm_72 (Jetson Xavier, dropped by CUDA 13) is checked: scripts/check_cuda_build.sh. Below
// sm_80 there is no cp.async: stage copies are plain loads and stores (no overlap, same results).
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

// Tuning knobs (compile-time): threads per block the planner aims at; per segment length K, the
// largest block and the registers per thread (K = 7: FP32 and planes 14 does not divide; K = 14:
// 2-byte types, 4 blocks of 224 threads per multiprocessor); GM_SCAN_FORCE_K = 7 or 14 forces a
// segment length; GM_SCAN_BULK = 0 uses per-thread cp.async on sm_90 too. Measured on H100 with
// benchmarks/h100-scan-kernel.md's variants.
#ifndef GM_SCAN_TARGET_THREADS
#define GM_SCAN_TARGET_THREADS 448
#endif
#ifndef GM_SCAN_MAXT7
#define GM_SCAN_MAXT7 448
#endif
#ifndef GM_SCAN_REGS7
#define GM_SCAN_REGS7 48
#endif
#ifndef GM_SCAN_MAXT14
#define GM_SCAN_MAXT14 256
#endif
#ifndef GM_SCAN_REGS14
#define GM_SCAN_REGS14 64
#endif
#ifndef GM_SCAN_FORCE_K
#define GM_SCAN_FORCE_K 0
#endif
#ifndef GM_SCAN_SEQ_MAX_LEN  // 2-byte planes of odd length up to this: one thread per plane (0: never)
#define GM_SCAN_SEQ_MAX_LEN 64
#endif
#ifndef GM_SCAN_MAXT_SEQ
#define GM_SCAN_MAXT_SEQ 128
#endif
#ifndef GM_SCAN_REGS_SEQ
#define GM_SCAN_REGS_SEQ 40
#endif
// GM_SCAN_K28 = 1 (default): 2-byte types use segments of K = 28 on planes
// whose H and W are multiples of 28 (GroupMamba's 56×56 and 28×28 stages). Why: at K = 14 the
// per-item work of a thread (next item's copy issue and edge loads, the mbarrier wait, span and
// segment bookkeeping, the two-barrier block scan, the copy-out) costs about as many instructions as
// its 14 steps (SASS: ~22 per step to compose, ~10 to replay, ~400 per thread per item); K = 28
// spreads it over twice the steps. The price is registers (a[28], b[28] stay in registers between
// compose and replay): GM_SCAN_REGS28 per thread (96: no spills; 88 spills), blocks of at most
// GM_SCAN_MAXT28 threads (224: 3 blocks, 21 warps per multiprocessor at 56×56 and 28×28, limited by
// both registers and shared memory, against 4 blocks, 28 warps at K = 14). Only full segments (K
// divides H and W) take this path, so the partial-segment code is never used for 28. H100, f16 graph
// TB/s: 56² 1.94 → 2.10, 28² 1.63 → 1.84; 128-thread blocks were worse, and FP32 at K = 28 lost on 56²
// (2.53 → 2.40), so FP32 never takes it (benchmarks/h100-scan-kernel.md).
#ifndef GM_SCAN_K28
#define GM_SCAN_K28 1
#endif
#ifndef GM_SCAN_MAXT28
#define GM_SCAN_MAXT28 224
#endif
#ifndef GM_SCAN_REGS28
#define GM_SCAN_REGS28 96
#endif
#ifndef GM_SCAN_SYNC_COPIES  // 1: plain loads/stores for the stage copies, as below sm_80 (for testing that path)
#define GM_SCAN_SYNC_COPIES 0
#endif
#ifndef GM_SCAN_BULK  // 1: on sm_90, stage copies as bulk copies (copy engine) instead of per-thread cp.async
#define GM_SCAN_BULK 1
#endif

namespace {

constexpr int kWarp = 32;
constexpr float kSoftplusThreshold = 20.0f;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kMaxGroups = 32;  // directions are packed 2 bits per group in one uint64
constexpr int kMaxThreads = 512;  // staged kernel's largest block, any K
// Segment length K = 0: one thread scans a whole plane (small planes; no block scan).
constexpr int kWholePlane = 0;
// Launch bounds of the staged kernel per segment length.
constexpr int max_threads_for(int k) {
  return k == 7 ? GM_SCAN_MAXT7 : k == 14 ? GM_SCAN_MAXT14 : k == 28 ? GM_SCAN_MAXT28 : GM_SCAN_MAXT_SEQ;
}
constexpr int max_regs_for(int k) {
  return k == 7 ? GM_SCAN_REGS7 : k == 14 ? GM_SCAN_REGS14 : k == 28 ? GM_SCAN_REGS28 : GM_SCAN_REGS_SEQ;
}
static_assert(GM_SCAN_MAXT7 <= kMaxThreads && GM_SCAN_MAXT14 <= kMaxThreads && GM_SCAN_MAXT28 <= kMaxThreads &&
                  GM_SCAN_MAXT_SEQ <= kMaxThreads,
              "block too large");

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// softplus with the official kernel's threshold: x if x > 20 else log1p(exp(x)) (v1, accurate libm).
__device__ __forceinline__ float softplus(float x) {
  return x > kSoftplusThreshold ? x : log1pf(expf(x));
}

// 2^x, one MUFU instruction; results below 2^-126 flush to 0 (they only ever multiply a state or
// add to a softplus whose other term is far larger).
__device__ __forceinline__ float fast_exp2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float fast_log2(float x) {
  float r;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// softplus for FP32 inputs, a few ulp: x > 20 → x, else max(x, 0) + log1p(e) with e = exp(-|x|) in
// (0, 1]; log1p(e) = 2·atanh(s) = 2s(1 + s²/3 + s⁴/5 + …), s = e/(2+e) ≤ 1/3, series cut after
// s¹²/13 (next term < 2e-8 relative). NaN stays NaN, -inf gives 0.
__device__ __forceinline__ float softplus_f32(float x) {
  const float e = fast_exp2(-fabsf(x) * kLog2e);
  const float s = __fdividef(e, 2.0f + e);
  const float z = s * s;
  float q = 1.0f / 13.0f;
  q = fmaf(q, z, 1.0f / 11.0f);
  q = fmaf(q, z, 1.0f / 9.0f);
  q = fmaf(q, z, 1.0f / 7.0f);
  q = fmaf(q, z, 1.0f / 5.0f);
  q = fmaf(q, z, 1.0f / 3.0f);
  q = fmaf(q, z, 1.0f);
  const float r = fmaxf(x, 0.0f) + 2.0f * s * q;
  return x > kSoftplusThreshold ? x : r;
}
// softplus for FP16/BF16 inputs (y is rounded to 11 or 8 significant bits, ~1e3 times coarser
// than this): ln2·log2(1 + 2^(x·log2e)), absolute error ≲ 2e-7.
__device__ __forceinline__ float softplus_lowp(float x) {
  const float r = fast_log2(1.0f + fast_exp2(x * kLog2e)) * kLn2;
  return x > kSoftplusThreshold ? x : r;
}
template <typename T> __device__ __forceinline__ float softplus_for(float x) { return softplus_lowp(x); }
template <> __device__ __forceinline__ float softplus_for<float>(float x) { return softplus_f32(x); }

// ----------------------------------------------------------------------------------------------
// ----------------------------------------------------------------------------------------------
// Staged, pipelined kernel.

struct ScanPlan {
  const void* u;
  const void* delta;
  const float* A;
  const void* B;
  const void* C;
  const float* D;
  const float* delta_bias;
  void* y;
  int channels, groups, height, width, len;
  int group_width;             // channels per group
  int planes;                  // P: planes per item (the last item of a group may have fewer)
  int chunks;                  // items per (image, group)
  int items;                   // batch · groups · chunks
  int tp;                      // threads per plane
  float inv_tp;
  int ppl_row, ppl_col;        // pieces per line: row directions (pieces of a row), column ones
  float inv_ppl_row, inv_ppl_col;
  int seg_row, seg_col;        // segments per plane = H·ppl_row, W·ppl_col
  int cap_plane, cap_map;      // elements of a stage's u (= delta) and B (= C) arrays, 16-byte multiples
  int full;                    // H and W multiples of K: every segment has K steps
  uint64_t directions;         // 2 bits per group
};

// x / d for 0 ≤ x < 2^16 and 1 ≤ d < 2^16, given inv = 1/d (float): (x + ½)/d is at least ½/d away
// from an integer and the float error is below (x + ½)/d · 2.4e-7, so truncation is exact.
__device__ __forceinline__ int small_div(int x, float inv) {
  return __float2int_rz((float(x) + 0.5f) * inv);
}

#if !defined(__CUDA_ARCH__) || (__CUDA_ARCH__ >= 800 && !GM_SCAN_SYNC_COPIES)
[[maybe_unused]] __device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_prev() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
#else  // before Ampere: synchronous copies, nothing to wait for
[[maybe_unused]] __device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
}
__device__ __forceinline__ void cp_async_commit() {}
__device__ __forceinline__ void cp_async_wait_prev() {}
#endif

// Work items: P planes (channels c0..c0+planes-1) of one image n and group g, in (n, g, chunk) order.
struct Cursor {
  int n, g, chunk;
};
__device__ __forceinline__ Cursor cursor_at(const ScanPlan& p, int item) {
  Cursor c;
  c.chunk = item % p.chunks;
  const int ng = item / p.chunks;
  c.g = ng % p.groups;
  c.n = ng / p.groups;
  return c;
}
__device__ __forceinline__ void advance(const ScanPlan& p, Cursor& c) {
  if (++c.chunk == p.chunks) {
    c.chunk = 0;
    if (++c.g == p.groups) {
      c.g = 0;
      ++c.n;
    }
  }
}
struct Item {
  int64_t e0;  // element offset of the first plane in u / delta / y
  int64_t m0;  // element offset of the (n, g) map in B / C
  int c0, planes, dir;
};
__device__ __forceinline__ Item item_of(const ScanPlan& p, const Cursor& c) {
  Item it;
  it.c0 = c.g * p.group_width + c.chunk * p.planes;
  it.planes = min(p.planes, p.group_width - c.chunk * p.planes);
  it.dir = int((p.directions >> (2 * c.g)) & 3);
  it.e0 = (int64_t(c.n) * p.channels + it.c0) * int64_t(p.len);
  it.m0 = (int64_t(c.n) * p.groups + c.g) * int64_t(p.len);
  return it;
}

// A global array segment and its place in shared memory: element i of g goes to s + i, s = array +
// shift with shift = g's misalignment in elements, so both sides of every 16-byte chunk are aligned.
template <typename T>
struct Span {
  const T* g;
  T* s;
  int count, head, nvec, tail;
};
template <typename T>
__device__ __forceinline__ Span<T> make_span(const T* g, T* array, int count) {
  constexpr int V = 16 / sizeof(T);
  Span<T> sp;
  const int shift = int((reinterpret_cast<uintptr_t>(g) & 15) / sizeof(T));
  sp.g = g;
  sp.s = array + shift;
  sp.count = count;
  sp.head = min((V - shift) % V, count);
  sp.nvec = (count - sp.head) / V;
  sp.tail = sp.head + sp.nvec * V;
  return sp;
}
template <typename T>
__device__ __forceinline__ T* staged_at(const T* g, T* array) {
  return array + (reinterpret_cast<uintptr_t>(g) & 15) / sizeof(T);
}

__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
#if !defined(__CUDA_ARCH__) || (__CUDA_ARCH__ >= 800 && !GM_SCAN_SYNC_COPIES)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem) : "memory");
#else
  *static_cast<uint32_t*>(smem) = *static_cast<const uint32_t*>(gmem);
#endif
}
__device__ __forceinline__ uint32_t raw_bits(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint32_t raw_bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
template <typename T> __device__ __forceinline__ T from_bits(uint32_t v);
template <> __device__ __forceinline__ __half from_bits<__half>(uint32_t v) {
  return __ushort_as_half(static_cast<unsigned short>(v));
}
template <> __device__ __forceinline__ __nv_bfloat16 from_bits<__nv_bfloat16>(uint32_t v) {
  return __ushort_as_bfloat16(static_cast<unsigned short>(v));
}

// Copies for a span: its aligned middle in 16-byte chunks, and the elements before the first /
// after the last chunk (fewer than 16 bytes each): 4-byte cp.async for FP32; for 2-byte types they
// are loaded into the returned word (head in the low, tail in the high 16 bits), which store_edges
// writes to shared memory later, when the loads are done.
template <typename T>
__device__ __forceinline__ void issue_middle(const Span<T>& sp, int tid, int nthr) {
  constexpr int V = 16 / sizeof(T);
  for (int v = tid; v < sp.nvec; v += nthr) cp_async16(sp.s + sp.head + v * V, sp.g + sp.head + v * V);
}
template <typename T>
__device__ __forceinline__ uint32_t issue_edges(const Span<T>& sp, int tid) {
  uint32_t w = 0;
  if constexpr (sizeof(T) == 4) {
    if (tid < sp.head) cp_async4(sp.s + tid, sp.g + tid);
    if (tid < sp.count - sp.tail) cp_async4(sp.s + sp.tail + tid, sp.g + sp.tail + tid);
  } else {
    if (tid < sp.head) w = raw_bits(sp.g[tid]);
    if (tid < sp.count - sp.tail) w |= raw_bits(sp.g[sp.tail + tid]) << 16;
  }
  return w;
}
template <typename T>
__device__ __forceinline__ uint32_t issue_span(const Span<T>& sp, int tid, int nthr) {
  issue_middle(sp, tid, nthr);
  return issue_edges(sp, tid);
}

// Hopper: the middle of a span as one bulk copy (copy engine) completing on an mbarrier, issued by
// one thread, instead of one cp.async per 16 bytes per thread.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && GM_SCAN_BULK
#define GM_SCAN_USE_BULK 1
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred done;\n WAIT_%=:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra WAIT_%=;\n}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
template <typename T>
__device__ __forceinline__ void issue_middle_bulk(const Span<T>& sp, uint64_t* bar) {
  if (sp.nvec <= 0) return;
  const uint32_t bytes = uint32_t(sp.nvec) * 16u;
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   smem_u32(sp.s + sp.head)),
               "l"(sp.g + sp.head), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}
#else
#define GM_SCAN_USE_BULK 0
#endif

template <typename T>
__device__ __forceinline__ void store_edges(const Span<T>& sp, uint32_t w, int tid) {
  if constexpr (sizeof(T) == 2) {
    if (tid < sp.head) sp.s[tid] = from_bits<T>(w & 0xffffu);
    if (tid < sp.count - sp.tail) sp.s[sp.tail + tid] = from_bits<T>(w >> 16);
  }
}

// Stores count elements from shared memory d[0..count) to g.
template <typename T>
__device__ __forceinline__ void store_out(T* g, const T* d, int count, int tid, int nthr) {
  constexpr int V = 16 / sizeof(T);
  const int shift = int((reinterpret_cast<uintptr_t>(g) & 15) / sizeof(T));
  const int shift_s = int((reinterpret_cast<uintptr_t>(d) & 15) / sizeof(T));
  if (shift != shift_s) {  // y not aligned like u: element by element
    for (int i = tid; i < count; i += nthr) g[i] = d[i];
    return;
  }
  const int head = min((V - shift) % V, count);
  const int nvec = (count - head) / V;
  const int tail = head + nvec * V;
  for (int v = tid; v < nvec; v += nthr) {
    __stcs(reinterpret_cast<uint4*>(g + head) + v, *(reinterpret_cast<const uint4*>(d + head) + v));
  }
  if (tid < head) g[tid] = d[tid];
  if (tid < count - tail) g[tail + tid] = d[tail + tid];
}

// Block-wide scan of the threads' affine maps (ma, mb) in thread order, segmented by planes:
// thread t is segment s = t mod tp of its plane, planes start at s = 0 with h = 0. Returns the
// state entering this thread's segment. Maps are never composed across a plane start, so
// nothing (not even a NaN or an infinity) leaks from one plane into the next. Two __syncthreads.
__device__ __forceinline__ float block_scan_state(float ma, float mb, int s, int tp, float inv_tp,
                                                  float2* warp_maps) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  // After the step of distance d, lane l holds threads [l - 2d + 1, l] composed, cut at a plane
  // start: the range so far, [l - d + 1, l], holds a start exactly when s < d.
#pragma unroll
  for (int d = 1; d < kWarp; d *= 2) {
    const float pa = __shfl_up_sync(0xffffffffu, ma, d);
    const float pb = __shfl_up_sync(0xffffffffu, mb, d);
    if (lane >= d && s >= d) {
      mb = fmaf(ma, pb, mb);
      ma = ma * pa;
    }
  }
  if (lane == kWarp - 1) warp_maps[warp] = make_float2(ma, mb);
  __syncthreads();
  const int nwarps = (blockDim.x + kWarp - 1) / kWarp;
  if (warp == 0) {
    float2 v = lane < nwarps ? warp_maps[lane] : make_float2(1.0f, 0.0f);
    // Warps [w - d + 1, w] hold a plane start exactly when the segment index of warp w's last
    // thread is below 32·d.
    const int t_last = lane * kWarp + kWarp - 1;
    const int s_last = t_last - tp * small_div(t_last, inv_tp);
#pragma unroll
    for (int d = 1; d < kWarp; d *= 2) {
      const float pa = __shfl_up_sync(0xffffffffu, v.x, d);
      const float pb = __shfl_up_sync(0xffffffffu, v.y, d);
      if (lane >= d && s_last >= kWarp * d) {
        v.y = fmaf(v.x, pb, v.y);
        v.x = v.x * pa;
      }
    }
    if (lane < nwarps) warp_maps[lane] = v;
  }
  __syncthreads();
  const float eb = __shfl_up_sync(0xffffffffu, mb, 1);
  const float ea = __shfl_up_sync(0xffffffffu, ma, 1);
  if (s == 0) return 0.0f;
  if (s <= lane) return eb;  // the plane starts in this warp: lanes from its start, from h = 0
  // The plane started in an earlier warp (so warp > 0): state entering this warp, then lanes 0..l-1.
  const float hw = warp_maps[warp - 1].y;
  return lane == 0 ? hw : fmaf(ea, hw, eb);
}

// One item's scan for one direction, its arrays staged: each thread takes one segment (≤ K steps on
// one line), composes it, joins the block scan, replays it and writes y over u in shared memory.
// Segment elements are indexed m = 0..K-1 in memory order (stride 1 along a row, W down a column);
// reverse directions walk m downwards. Unless FULL (every segment has K steps), elements m ≥ steps
// are identities: the compose reads staged data past the segment (the stage is over-allocated for
// that) and the replay neither reads past its own elements nor writes them.
template <typename T, int K, bool COL, bool REV, bool FULL>
__device__ __forceinline__ void scan_item(const ScanPlan& p, T* us, const T* ds, const T* bs, const T* cs, int j,
                                          int s, int planes, int c0, float2* warp_maps) {
  constexpr int R = 7;  // replay loads this many steps ahead of their stores
  static_assert(K % R == 0, "K must be a multiple of 7");
  const int segs = COL ? p.seg_col : p.seg_row;
  const bool active = j < planes && s < segs;
  int first = 0, steps = 0, plane_off = 0;  // idle threads: plane 0, position 0, no steps
  float A2 = 0.0f, Dc = 0.0f, bias = 0.0f;
  if (active) {
    const int sseg = REV ? segs - 1 - s : s;  // ← ↑ take → ↓'s segments from the end
    const int ppl = COL ? p.ppl_col : p.ppl_row;
    const int line = small_div(sseg, COL ? p.inv_ppl_col : p.inv_ppl_row);
    const int piece = sseg - line * ppl;
    if (!COL) {
      first = line * p.width + piece * K;
      steps = FULL ? K : min(K, p.width - piece * K);
    } else {
      first = piece * K * p.width + line;
      steps = FULL ? K : min(K, p.height - piece * K);
    }
    plane_off = j * p.len;
    const int c = c0 + j;
    A2 = __ldg(p.A + c) * kLog2e;
    Dc = __ldg(p.D + c);
    bias = __ldg(p.delta_bias + c);
  }
  const int ms = COL ? p.width : 1;
  const int last = steps > 0 ? steps - 1 : 0;
  T* const u_s = us + plane_off + first;
  const T* const d_s = ds + plane_off + first;
  const T* const b_s = bs + first;
  const T* const c_s = cs + first;

  float a[K], b[K];
#pragma unroll
  for (int m = 0; m < K; ++m) {
    const float uu = to_float(u_s[m * ms]);
    const float dt = softplus_for<T>(to_float(d_s[m * ms]) + bias);
    const float am = fast_exp2(dt * A2);
    const float bm = dt * to_float(b_s[m * ms]) * uu;
    a[m] = (FULL || m < steps) ? am : 1.0f;
    b[m] = (FULL || m < steps) ? bm : 0.0f;
  }
  float ma = 1.0f, mb = 0.0f;
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int m = REV ? K - 1 - i : i;
    mb = fmaf(a[m], mb, b[m]);
    ma = a[m] * ma;
  }
  float h = block_scan_state(ma, mb, s, p.tp, p.inv_tp, warp_maps);
  if (!active) return;
  // Replay in groups of R steps (scan order): loads of a group, then its stores of y over u. Each
  // element belongs to this thread alone; m ≥ steps reads the segment's last element and stores nothing.
#pragma unroll
  for (int gi = 0; gi < K / R; ++gi) {
    float uu[R], cc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int i = gi * R + r;
      const int m = REV ? K - 1 - i : i;
      const int q = (FULL ? m : min(m, last)) * ms;
      uu[r] = to_float(u_s[q]);
      cc[r] = to_float(c_s[q]);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int i = gi * R + r;
      const int m = REV ? K - 1 - i : i;
      h = fmaf(a[m], h, b[m]);
      if (FULL || m < steps) u_s[m * ms] = from_float<T>(fmaf(cc[r], h, Dc * uu[r]));
    }
  }
}

// One plane per thread (K = kWholePlane), for small planes: the thread walks its plane in scan
// order, one pass, writing y over u as it goes; no segments, no block scan, no barrier. All threads
// of an item take the same step at once, so a warp reads addresses one plane (len elements) apart:
// conflict-free in shared memory when len is odd (the planner's condition).
template <typename T, bool COL, bool REV>
__device__ __forceinline__ void scan_whole_plane(const ScanPlan& p, T* us, const T* ds, const T* bs, const T* cs,
                                                 int j, int planes, int c0) {
  if (j >= planes) return;
  const int c = c0 + j;
  const float A2 = __ldg(p.A + c) * kLog2e;
  const float Dc = __ldg(p.D + c);
  const float bias = __ldg(p.delta_bias + c);
  T* const u_s = us + j * p.len;
  const T* const d_s = ds + j * p.len;
  // Lines (rows for → ←, columns for ↓ ↑) in scan order, and steps along each.
  const int lines = COL ? p.width : p.height;
  const int along = COL ? p.height : p.width;
  const int stride = COL ? p.width : 1;       // between steps of a line
  const int line_stride = COL ? 1 : p.width;  // between lines
  float h = 0.0f;
  for (int li = 0; li < lines; ++li) {
    const int line = REV ? lines - 1 - li : li;
    int q = line * line_stride + (REV ? (along - 1) * stride : 0);
    const int step = REV ? -stride : stride;
#pragma unroll 7
    for (int i = 0; i < along; ++i, q += step) {
      const float uu = to_float(u_s[q]);
      const float dt = softplus_for<T>(to_float(d_s[q]) + bias);
      const float a = fast_exp2(dt * A2);
      h = fmaf(a, h, dt * to_float(bs[q]) * uu);
      u_s[q] = from_float<T>(fmaf(to_float(cs[q]), h, Dc * uu));
    }
  }
}

template <typename T>
__device__ __forceinline__ void scan_whole_plane_dir(const ScanPlan& p, int dir, T* us, const T* ds, const T* bs,
                                                     const T* cs, int j, int planes, int c0) {
  switch (dir) {
    case 0: scan_whole_plane<T, false, false>(p, us, ds, bs, cs, j, planes, c0); break;
    case 1: scan_whole_plane<T, true, false>(p, us, ds, bs, cs, j, planes, c0); break;
    case 2: scan_whole_plane<T, false, true>(p, us, ds, bs, cs, j, planes, c0); break;
    default: scan_whole_plane<T, true, true>(p, us, ds, bs, cs, j, planes, c0); break;
  }
}

template <typename T, int K, bool FULL>
__device__ __forceinline__ void scan_item_dir(const ScanPlan& p, int dir, T* us, const T* ds, const T* bs,
                                              const T* cs, int j, int s, int planes, int c0, float2* warp_maps) {
  switch (dir) {
    case 0: scan_item<T, K, false, false, FULL>(p, us, ds, bs, cs, j, s, planes, c0, warp_maps); break;
    case 1: scan_item<T, K, true, false, FULL>(p, us, ds, bs, cs, j, s, planes, c0, warp_maps); break;
    case 2: scan_item<T, K, false, true, FULL>(p, us, ds, bs, cs, j, s, planes, c0, warp_maps); break;
    default: scan_item<T, K, true, true, FULL>(p, us, ds, bs, cs, j, s, planes, c0, warp_maps); break;
  }
}

// Persistent blocks, each over a contiguous range of items. Shared memory: two stages of (u, delta),
// so that the next item's copies (cp.async) are in flight while the current one is scanned, and one
// (B, C) map, reloaded when the next item belongs to another (image, group).
template <typename T, int K>
__global__ void __launch_bounds__(max_threads_for(K)) __maxnreg__(max_regs_for(K))
    scan_staged_kernel(const ScanPlan p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float2 warp_maps[kMaxThreads / kWarp];
  T* const stages = reinterpret_cast<T*>(smem_raw);  // stage k: u at 2k·cap_plane, delta after it
  T* const bmap = stages + 4 * p.cap_plane;
  T* const cmap = bmap + p.cap_map;
  const T* const gu = static_cast<const T*>(p.u);
  const T* const gd = static_cast<const T*>(p.delta);
  const T* const gb = static_cast<const T*>(p.B);
  const T* const gc = static_cast<const T*>(p.C);
  const int tid = threadIdx.x;
  const int nthr = blockDim.x;
  const int j = small_div(tid, p.inv_tp);  // plane of this thread within an item
  const int s = tid - j * p.tp;            // its segment, in scan order

#if GM_SCAN_USE_BULK
  __shared__ uint64_t bars[2];  // stage k's middles landed (phase parity: (it >> 1) & 1)
  if (tid == 0) {
    mbar_init(&bars[0]);
    mbar_init(&bars[1]);
    fence_barrier_init();
  }
  __syncthreads();
#endif
  const int per = (p.items + gridDim.x - 1) / gridDim.x;
  int item = blockIdx.x * per;
  const int end = min(item + per, p.items);
  if (item >= end) return;
  Cursor cur = cursor_at(p, item);
  uint32_t pend_u = 0, pend_d = 0;
  {
    const Item ci = item_of(p, cur);
    const int count = ci.planes * p.len;
    const Span<T> su = make_span(gu + ci.e0, stages, count);
    const Span<T> sd = make_span(gd + ci.e0, stages + p.cap_plane, count);
    const Span<T> sb = make_span(gb + ci.m0, bmap, p.len);
    const Span<T> sc = make_span(gc + ci.m0, cmap, p.len);
#if GM_SCAN_USE_BULK
    if (tid == 0) {
      issue_middle_bulk(su, &bars[0]);
      issue_middle_bulk(sd, &bars[0]);
      issue_middle_bulk(sb, &bars[0]);
      issue_middle_bulk(sc, &bars[0]);
      mbar_arrive(&bars[0]);
    }
    store_edges(su, issue_edges(su, tid), tid);
    store_edges(sd, issue_edges(sd, tid), tid);
    store_edges(sb, issue_edges(sb, tid), tid);
    store_edges(sc, issue_edges(sc, tid), tid);
#else
    store_edges(su, issue_span(su, tid, nthr), tid);
    store_edges(sd, issue_span(sd, tid, nthr), tid);
    store_edges(sb, issue_span(sb, tid, nthr), tid);
    store_edges(sc, issue_span(sc, tid, nthr), tid);
#endif
    cp_async_commit();
  }
  for (int it = 0; item < end; ++it, ++item) {
    T* const ubuf = stages + (it & 1) * 2 * p.cap_plane;
    T* const nbuf = stages + ((it + 1) & 1) * 2 * p.cap_plane;
    Cursor nc = cur;
    advance(p, nc);
    const bool has_next = item + 1 < end;
    if (has_next) {
      const Item ni = item_of(p, nc);
      const int count = ni.planes * p.len;
      const Span<T> nu = make_span(gu + ni.e0, nbuf, count);
      const Span<T> nd = make_span(gd + ni.e0, nbuf + p.cap_plane, count);
#if GM_SCAN_USE_BULK
      if (tid == 0) {  // nbuf's last readers passed the barrier that ended the previous iteration
        fence_proxy_async();
        issue_middle_bulk(nu, &bars[(it + 1) & 1]);
        issue_middle_bulk(nd, &bars[(it + 1) & 1]);
      }
      pend_u = issue_edges(nu, tid);
      pend_d = issue_edges(nd, tid);
#else
      pend_u = issue_span(nu, tid, nthr);
      pend_d = issue_span(nd, tid, nthr);
#endif
    }
    cp_async_commit();
    cp_async_wait_prev();  // this item's cp.async copies and its map (all groups but the newest) landed
#if GM_SCAN_USE_BULK
    mbar_wait(&bars[it & 1], (it >> 1) & 1);
#endif
    __syncthreads();
    const Item ci = item_of(p, cur);
    T* const us = staged_at(gu + ci.e0, ubuf);
    const T* const ds = staged_at(gd + ci.e0, ubuf + p.cap_plane);
    const T* const bs = staged_at(gb + ci.m0, bmap);
    const T* const cs = staged_at(gc + ci.m0, cmap);
    if constexpr (K == kWholePlane) {
      scan_whole_plane_dir<T>(p, ci.dir, us, ds, bs, cs, j, ci.planes, ci.c0);
    } else if constexpr (K == 28) {  // the planner gives K = 28 only full segments
      scan_item_dir<T, K, true>(p, ci.dir, us, ds, bs, cs, j, s, ci.planes, ci.c0, warp_maps);
    } else if (p.full) {
      scan_item_dir<T, K, true>(p, ci.dir, us, ds, bs, cs, j, s, ci.planes, ci.c0, warp_maps);
    } else {
      scan_item_dir<T, K, false>(p, ci.dir, us, ds, bs, cs, j, s, ci.planes, ci.c0, warp_maps);
    }
    __syncthreads();  // y is in us; the map is no longer read
    store_out(static_cast<T*>(p.y) + ci.e0, us, ci.planes * p.len, tid, nthr);
    if (has_next) {
      const Item ni = item_of(p, nc);
      if (ni.m0 != ci.m0) {  // next map: its edges are loaded and stored at once (rare)
        const Span<T> sb = make_span(gb + ni.m0, bmap, p.len);
        const Span<T> sc = make_span(gc + ni.m0, cmap, p.len);
#if GM_SCAN_USE_BULK
        if (tid == 0) {
          fence_proxy_async();
          issue_middle_bulk(sb, &bars[(it + 1) & 1]);
          issue_middle_bulk(sc, &bars[(it + 1) & 1]);
        }
        store_edges(sb, issue_edges(sb, tid), tid);
        store_edges(sc, issue_edges(sc, tid), tid);
#else
        store_edges(sb, issue_span(sb, tid, nthr), tid);
        store_edges(sc, issue_span(sc, tid, nthr), tid);
#endif
        cp_async_commit();
      }
      const int count = ni.planes * p.len;
      store_edges(make_span(gu + ni.e0, nbuf, count), pend_u, tid);
      store_edges(make_span(gd + ni.e0, nbuf + p.cap_plane, count), pend_d, tid);
#if GM_SCAN_USE_BULK
      if (tid == 0) mbar_arrive(&bars[(it + 1) & 1]);  // all of the next item's copies are issued
#endif
    }
    __syncthreads();  // ubuf is free for the item after next
    cur = nc;
  }
}

// Fallback kernel (v1): one warp per (n, c) sequence. The sequence is cut into tiles of 32·K
// steps; lane l owns K consecutive steps of a tile. Each lane folds its K steps into one affine
// map, the warp composes the maps with a shuffle scan, the carry from the previous tile enters,
// and each lane replays its K steps to write y.

constexpr int kStepsPerLane = 4;  // K
constexpr int kTile = kWarp * kStepsPerLane;
constexpr int kWarpsPerBlock = 4;

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

// ----------------------------------------------------------------------------------------------
// Host side.
#ifndef __CUDACC_RTC__

int ceil_div(int a, int b) { return (a + b - 1) / b; }

constexpr int kMaxDevices = 64;

struct DeviceInfo {
  int sms = 0;
  int max_smem = 0;  // largest dynamic shared memory a block may opt into
};

const DeviceInfo* device_info() {
  static DeviceInfo cached[kMaxDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return nullptr;
  DeviceInfo& d = cached[dev];
  if (d.sms == 0) {
    int sms = 0, smem = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
      return nullptr;
    }
    d.max_smem = smem;
    d.sms = sms;
  }
  return &d;
}

// Resident blocks per multiprocessor of a kernel for a block size and shared memory; raises the
// kernel's dynamic shared-memory limit when needed. Cached per device for the last configuration
// asked (cache: one per kernel), so that graph capture after an uncaptured first call of a
// configuration makes no runtime calls but the launch.
struct OccupancyEntry {
  int threads = 0, smem = 0, blocks = 0, smem_set = 0;
};
template <typename Kernel>
int resident_blocks(Kernel kernel, int threads, int smem, OccupancyEntry* cache) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return 0;
  OccupancyEntry& e = cache[dev];
  if (e.threads == threads && e.smem == smem && e.blocks > 0) return e.blocks;
  if (smem > 48 * 1024 && e.smem_set < smem) {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess) return 0;
    e.smem_set = smem;
  }
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem) != cudaSuccess) return 0;
  e.threads = threads;
  e.smem = smem;
  e.blocks = blocks;
  return blocks;
}

template <typename T, int K>
cudaError_t launch_staged(const ScanPlan& p, int threads, int smem, int sms, cudaStream_t stream) {
  static OccupancyEntry cache[kMaxDevices];  // one per <T, K>
  const int per_sm = resident_blocks(scan_staged_kernel<T, K>, threads, smem, cache);
  if (per_sm <= 0) return cudaErrorInvalidConfiguration;
  const int64_t resident = int64_t(per_sm) * sms;
  const unsigned grid = unsigned(p.items < resident ? p.items : resident);
  scan_staged_kernel<T, K><<<grid, threads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_staged_k(int k, const ScanPlan& p, int threads, int smem, int sms, cudaStream_t stream) {
  switch (k) {
    case 7: return launch_staged<T, 7>(p, threads, smem, sms, stream);
    case 14: return launch_staged<T, 14>(p, threads, smem, sms, stream);
#if GM_SCAN_K28
    case 28:  // 2-byte types only (the planner's rule); FP32 gets no K = 28 kernel
      if constexpr (sizeof(T) == 2) {
        return launch_staged<T, 28>(p, threads, smem, sms, stream);
      } else {
        return cudaErrorInvalidConfiguration;
      }
#endif
    default: return launch_staged<T, kWholePlane>(p, threads, smem, sms, stream);
  }
}

// Plans the staged kernel for a shape. Returns false where it does not apply (then v1 runs).
bool plan_staged(ScanPlan& p, int64_t batch, int64_t channels, int64_t groups, int64_t height, int64_t width,
                 int elem, int max_smem, int* k_out, int* threads_out, int* smem_out) {
  if (height * width > 65535 || batch * groups * channels > (int64_t(1) << 30)) return false;
  const int h = int(height), w = int(width), len = h * w;
  const int gw = int(channels / groups);
  // Segment length: 2-byte types prefer 14 (half the per-thread overhead per step), FP32 prefers 7
  // (registers); a length that divides H and W (no partial segments) wins.
  // Small planes of odd length in 2-byte types: one thread per plane (K = kWholePlane) first, which
  // spends no per-item work on segments and block scans (odd: conflict-free shared-memory reads).
  // H100, 128×448×7×7: f16 0.96 → 1.76 TB/s (L2-warm), 0.95 → 1.29 (from DRAM); FP32 is not
  // better on it (1.91 → 2.02 warm, 1.60 → 1.47 from DRAM: twice the shared memory per plane,
  // fewer blocks in flight), so FP32 keeps the segments.
  const int pref[2] = {elem == 2 ? 14 : 7, elem == 2 ? 7 : 14};
  int ks[4], nk = 0;
  if (elem == 2 && GM_SCAN_SEQ_MAX_LEN > 0 && GM_SCAN_FORCE_K == 0 && len <= GM_SCAN_SEQ_MAX_LEN &&
      len % 2 == 1) {
    ks[nk++] = kWholePlane;
  }
  if (GM_SCAN_K28 && elem == 2 && h % 28 == 0 && w % 28 == 0) ks[nk++] = 28;  // full segments only
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < 2; ++i) {
      const bool divides = h % pref[i] == 0 && w % pref[i] == 0;
      if (divides == (pass == 0)) ks[nk++] = pref[i];
    }
  }
  const int vec = 16 / elem;
  for (int ki = 0; ki < nk; ++ki) {
    const int k = ks[ki];
    if (GM_SCAN_FORCE_K != 0 && k != GM_SCAN_FORCE_K) continue;
    const bool whole = k == kWholePlane;
    const int ppl_row = whole ? 1 : ceil_div(w, k), ppl_col = whole ? 1 : ceil_div(h, k);
    const int seg_row = h * ppl_row, seg_col = w * ppl_col;
    const int tp = whole ? 1 : seg_row > seg_col ? seg_row : seg_col;
    const int max_threads = max_threads_for(k);
    if (ceil_div(tp, kWarp) * kWarp > max_threads) continue;
    const bool full = whole || (h % k == 0 && w % k == 0);
    const int slack = full ? 0 : (k - 1) * w + k;  // compose reads past a partial segment's end
    int planes = GM_SCAN_TARGET_THREADS / tp;
    if (planes > max_threads / tp) planes = max_threads / tp;
    if (planes < 1) planes = 1;
    if (planes > gw) planes = gw;
    int chunks = 0, cap_plane = 0, cap_map = 0, bytes = 0;
    for (;;) {  // balance the items of a group, then shrink until it fits shared memory
      chunks = ceil_div(gw, planes);
      planes = ceil_div(gw, chunks);
      cap_plane = ceil_div(planes * len + vec + slack, vec) * vec;
      cap_map = ceil_div(len + vec + slack, vec) * vec;
      bytes = (4 * cap_plane + 2 * cap_map) * elem;  // two (u, delta) stages, one (B, C) map
      if (bytes <= max_smem || planes == 1) break;
      planes = planes / 2;
    }
    if (bytes > max_smem) continue;
    const int64_t items = batch * groups * chunks;
    if (items > (int64_t(1) << 30)) continue;
    p.channels = int(channels);
    p.groups = int(groups);
    p.height = h;
    p.width = w;
    p.len = len;
    p.group_width = gw;
    p.planes = planes;
    p.chunks = chunks;
    p.items = int(items);
    p.tp = tp;
    p.inv_tp = 1.0f / float(tp);
    p.ppl_row = ppl_row;
    p.ppl_col = ppl_col;
    p.inv_ppl_row = 1.0f / float(ppl_row);
    p.inv_ppl_col = 1.0f / float(ppl_col);
    p.seg_row = seg_row;
    p.seg_col = seg_col;
    p.cap_plane = cap_plane;
    p.cap_map = cap_map;
    p.full = full ? 1 : 0;
    *k_out = k;
    const int threads = ceil_div(planes * tp, kWarp) * kWarp;
    *threads_out = threads < kWarp ? kWarp : threads;
    *smem_out = bytes;
    return true;
  }
  return false;
}

#endif  // __CUDACC_RTC__
}  // namespace

#ifndef __CUDACC_RTC__

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
  if (dtype != GM_SCAN_F32 && dtype != GM_SCAN_F16 && dtype != GM_SCAN_BF16) return cudaErrorInvalidValue;
  uint64_t dirs = 0;
  for (int64_t g = 0; g < groups; ++g) {
    if (directions[g] < 0 || directions[g] > 3) return cudaErrorInvalidValue;
    dirs |= uint64_t(directions[g]) << (2 * g);
  }
  const int64_t sequences = batch * channels;
  if (sequences == 0) return cudaSuccess;

  const int elem = dtype == GM_SCAN_F32 ? 4 : 2;
  const DeviceInfo* info = device_info();
  if (info == nullptr) return int(cudaGetLastError());
  ScanPlan sp{u, delta, A, B, C, D, delta_bias, y};
  sp.directions = dirs;
  int k = 0, threads = 0, smem = 0;
  if (plan_staged(sp, batch, channels, groups, height, width, elem, info->max_smem, &k, &threads, &smem)) {
    switch (dtype) {
      case GM_SCAN_F32: return int(launch_staged_k<float>(k, sp, threads, smem, info->sms, stream));
      case GM_SCAN_F16: return int(launch_staged_k<__half>(k, sp, threads, smem, info->sms, stream));
      default: return int(launch_staged_k<__nv_bfloat16>(k, sp, threads, smem, info->sms, stream));
    }
  }

  Params p{u, delta, A, B, C, D, delta_bias, y, batch, channels, groups, height, width, dirs};
  const dim3 grid1(unsigned((sequences + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const dim3 block1(kWarpsPerBlock * kWarp);
  switch (dtype) {
    case GM_SCAN_F32: selective_scan_kernel<float><<<grid1, block1, 0, stream>>>(p); break;
    case GM_SCAN_F16: selective_scan_kernel<__half><<<grid1, block1, 0, stream>>>(p); break;
    default: selective_scan_kernel<__nv_bfloat16><<<grid1, block1, 0, stream>>>(p); break;
  }
  return int(cudaGetLastError());
}

}  // extern "C"
#endif  // __CUDACC_RTC__

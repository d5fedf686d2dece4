// Element types ↔ float32 for the CUDA kernels (layer_norm.cu, depthwise_conv.cu): one element's
// bits as a 32-bit word, and V consecutive elements loaded or stored as one 2- to 16-byte access.
// Included inside each kernel file's anonymous namespace (internal linkage per file); needs
// cuda_fp16.h, cuda_bf16.h and uint32_t first. Compiles with nvcc and NVRTC alike.
#pragma once

// Element bits ↔ float: FP32 as a 32-bit word, FP16/BF16 as the low 16 bits of one.
template <typename T> __device__ __forceinline__ float bits_to_float(uint32_t b);
template <> __device__ __forceinline__ float bits_to_float<float>(uint32_t b) { return __uint_as_float(b); }
template <> __device__ __forceinline__ float bits_to_float<__half>(uint32_t b) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
}
template <> __device__ __forceinline__ float bits_to_float<__nv_bfloat16>(uint32_t b) {
  return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(b)));
}
template <typename T> __device__ __forceinline__ uint32_t float_to_bits(float v);
template <> __device__ __forceinline__ uint32_t float_to_bits<float>(float v) { return __float_as_uint(v); }
template <> __device__ __forceinline__ uint32_t float_to_bits<__half>(float v) {
  return __half_as_ushort(__float2half_rn(v));
}
template <> __device__ __forceinline__ uint32_t float_to_bits<__nv_bfloat16>(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// V consecutive elements as 32-bit words, as memory holds them (FP16/BF16: two a word, the first in the
// low half; a single 16-bit element in the low half of one word) ↔ V floats. Shared by the plain
// accesses below and the kernels' own (e.g. predicated) loads and stores.
template <typename T, int V>
__device__ __forceinline__ void unpack_words(const uint32_t* w, float* dst) {
#pragma unroll
  for (int k = 0; k < V; ++k) {
    dst[k] = sizeof(T) == 4 ? bits_to_float<T>(w[k]) : bits_to_float<T>((w[k / 2] >> (16 * (k & 1))) & 0xffffu);
  }
}
template <typename T, int V>
__device__ __forceinline__ void pack_words(const float* src, uint32_t* w) {
  if constexpr (sizeof(T) == 2 && V == 1) {
    w[0] = float_to_bits<T>(src[0]);
  } else {
#pragma unroll
    for (int i = 0; i < int(sizeof(T)) * V / 4; ++i) {
      w[i] = sizeof(T) == 4 ? float_to_bits<T>(src[i])
                            : float_to_bits<T>(src[2 * i]) | (float_to_bits<T>(src[2 * i + 1]) << 16);
    }
  }
}

// Loads V consecutive elements (V·sizeof(T) bytes, aligned to that) as one load and widens them.
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* src, float* dst) {
  constexpr int kBytes = int(sizeof(T)) * V;
  static_assert(kBytes == 2 || kBytes == 4 || kBytes == 8 || kBytes == 16, "unsupported vector");
  if constexpr (kBytes == 2) {
    dst[0] = bits_to_float<T>(*reinterpret_cast<const unsigned short*>(src));
  } else {
    uint32_t w[kBytes / 4];
    if constexpr (kBytes == 4) {
      w[0] = *reinterpret_cast<const uint32_t*>(src);
    } else if constexpr (kBytes == 8) {
      const uint2 q = *reinterpret_cast<const uint2*>(src);
      w[0] = q.x;
      w[1] = q.y;
    } else {
      const uint4 q = *reinterpret_cast<const uint4*>(src);
      w[0] = q.x;
      w[1] = q.y;
      w[2] = q.z;
      w[3] = q.w;
    }
    unpack_words<T, V>(w, dst);
  }
}

// Rounds V values to T and stores them as one store (same alignment as load_vec).
template <typename T, int V>
__device__ __forceinline__ void store_vec(T* dst, const float* src) {
  constexpr int kBytes = int(sizeof(T)) * V;
  static_assert(kBytes == 2 || kBytes == 4 || kBytes == 8 || kBytes == 16, "unsupported vector");
  if constexpr (kBytes == 2) {
    *reinterpret_cast<unsigned short*>(dst) = static_cast<unsigned short>(float_to_bits<T>(src[0]));
  } else {
    uint32_t w[kBytes / 4];
    pack_words<T, V>(src, w);
    if constexpr (kBytes == 4) {
      *reinterpret_cast<uint32_t*>(dst) = w[0];
    } else if constexpr (kBytes == 8) {
      *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

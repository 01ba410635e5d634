#pragma once
// Few-row linear layers for decoding on a CPU: y[r, o] = sum_k x[r, k] * W[o, k] for a few rows r (used by
// rows.cpp, one call per layer, and step.cpp, a whole decoding step).
//
// Decoding reads every weight once per step, so its speed is the memory bandwidth. BLAS's sgemm packs
// the weight for more than one row (a second read and a write of it), and a dequantise-then-matmul
// writes a full-precision copy; here each weight row is read once, straight from its stored format
// (fp32, int8 with a scale per row, or int4 in llmkit's grouped layout), for all rows of x at once.
// Plain C++ with GCC vector types (8 floats): -march=native picks the widest instructions the CPU has.
#include <cstdint>
#include <cstring>

typedef float v8 __attribute__((vector_size(32)));
typedef int8_t c8 __attribute__((vector_size(8)));
typedef uint8_t u8 __attribute__((vector_size(8)));

static inline v8 load(const float* p) { v8 v; std::memcpy(&v, p, sizeof v); return v; }
static inline c8 load_c(const int8_t* p) { c8 v; std::memcpy(&v, p, sizeof v); return v; }
static inline u8 load_u(const uint8_t* p) { u8 v; std::memcpy(&v, p, sizeof v); return v; }
// int8 and int4 codes to floats: with AVX2 by its widening conversions (GCC turns the generic form into
// one scalar conversion per element)
#if defined(__AVX2__)
#include <immintrin.h>
static inline v8 codes_i8(const int8_t* p) {
  __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return (v8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}
static inline void codes_i4(const uint8_t* p, v8& low, v8& high) {
  __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i eight = _mm256_set1_epi32(8);
  low = (v8)_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(b, _mm256_set1_epi32(15)), eight));
  high = (v8)_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(b, 4), eight));
}
#else
static inline v8 codes_i8(const int8_t* p) { return __builtin_convertvector(load_c(p), v8); }
static inline void codes_i4(const uint8_t* p, v8& low, v8& high) {
  const v8 eight = {8, 8, 8, 8, 8, 8, 8, 8};
  u8 b = load_u(p);
  low = __builtin_convertvector(b & 15, v8) - eight;
  high = __builtin_convertvector(b >> 4, v8) - eight;
}
#endif

// a * b + c: one rounding where the CPU has FMA. The library is built with -ffp-contract=off, so the compiler
// fuses nothing on its own (its choices could differ between the rows=1 and rows=2 versions of a loop).
#if defined(__FMA__)
#include <immintrin.h>
static inline v8 fmadd(v8 a, v8 b, v8 c) { return (v8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#else
static inline v8 fmadd(v8 a, v8 b, v8 c) { return a * b + c; }
#endif

static inline float hsum(v8 v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

// A weight row's next 8 values as floats: fp32 as stored, int8 codes converted (their row scale comes after).
static inline v8 weights(const float* p) { return load(p); }
static inline v8 weights(const int8_t* p) { return codes_i8(p); }

// Each output is summed in one fixed order whatever the number of rows, so a row's result never depends on
// what else is in its batch: four interleaved chains over the inputs (one chain would wait on the FMA's
// latency), then the tail. Rows of x go three at a time (12 sums stay in registers).
static const int CHAINS = 4;

// fp32 (scale null) or int8 with one scale per output row
template <int R, typename W>
static void dense_rows(const float* x, int64_t in, const W* w, const float* scale, int64_t out, float* y,
                       int64_t lo, int64_t hi) {
  for (int64_t o = lo; o < hi; ++o) {
    const W* wr = w + o * in;
    v8 acc[R][CHAINS] = {};
    int64_t k = 0;
    for (; k + 8 * CHAINS <= in; k += 8 * CHAINS)
      for (int u = 0; u < CHAINS; ++u) {
        v8 wv = weights(wr + k + 8 * u);
        for (int r = 0; r < R; ++r) acc[r][u] = fmadd(load(x + r * in + k + 8 * u), wv, acc[r][u]);
      }
    for (; k + 8 <= in; k += 8) {
      v8 wv = weights(wr + k);
      for (int r = 0; r < R; ++r) acc[r][0] = fmadd(load(x + r * in + k), wv, acc[r][0]);
    }
    for (int r = 0; r < R; ++r) {
      float s = hsum((acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]));
      for (int64_t j = k; j < in; ++j) s += x[r * in + j] * static_cast<float>(wr[j]);
      y[r * out + o] = scale ? s * scale[o] : s;
    }
  }
}

// int4: within each group of `group` inputs, byte j holds input j in its low nibble and input j + group/2 in
// its high nibble, as codes 1..15 for -7..7 (see llmkit/quant/weight_only.py); one scale per group. The
// chains: the low and the high nibbles' sums, each over two interleaved halves of the group's bytes.
template <int R>
static void i4_rows(const float* x, int64_t in, const uint8_t* p, const float* scale, int64_t group, int64_t out,
                    float* y, int64_t lo, int64_t hi) {
  const int64_t half = group / 2, groups = in / group;
  for (int64_t o = lo; o < hi; ++o) {
    const uint8_t* pr = p + o * (in / 2);
    const float* sr = scale + o * groups;
    v8 acc[R] = {};
    for (int64_t g = 0; g < groups; ++g) {
      v8 part[R][4] = {};
      int64_t j = 0;
      for (; j + 16 <= half; j += 16)
        for (int u = 0; u < 2; ++u) {
          v8 low, high;
          codes_i4(pr + g * half + j + 8 * u, low, high);
          for (int r = 0; r < R; ++r) {
            const float* xr = x + r * in + g * group + j + 8 * u;
            part[r][u] = fmadd(load(xr), low, part[r][u]);
            part[r][2 + u] = fmadd(load(xr + half), high, part[r][2 + u]);
          }
        }
      for (; j < half; j += 8) {
        v8 low, high;
        codes_i4(pr + g * half + j, low, high);
        for (int r = 0; r < R; ++r) {
          const float* xr = x + r * in + g * group + j;
          part[r][0] = fmadd(load(xr), low, part[r][0]);
          part[r][2] = fmadd(load(xr + half), high, part[r][2]);
        }
      }
      for (int r = 0; r < R; ++r) {
        const v8 s = {sr[g], sr[g], sr[g], sr[g], sr[g], sr[g], sr[g], sr[g]};
        acc[r] = fmadd((part[r][0] + part[r][1]) + (part[r][2] + part[r][3]), s, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[r * out + o] = hsum(acc[r]);
  }
}

// One weight in any of the stored formats: kind 0 fp32 (out, in); 1 int8 codes (out, in) and a scale per
// output row; 2 int4 codes (out, in/2) in llmkit's grouped layout and a scale per group. Bias may be null.
struct Weight {
  int64_t kind;
  const void* w;
  const float* scale;
  const float* bias;
  int64_t in, out, group;
};

template <int R>
static inline void weight_rows(const Weight& W, const float* x, float* y, int64_t lo, int64_t hi) {
  if (W.kind == 0)
    dense_rows<R>(x, W.in, static_cast<const float*>(W.w), nullptr, W.out, y, lo, hi);
  else if (W.kind == 1)
    dense_rows<R>(x, W.in, static_cast<const int8_t*>(W.w), W.scale, W.out, y, lo, hi);
  else
    i4_rows<R>(x, W.in, static_cast<const uint8_t*>(W.w), W.scale, W.group, W.out, y, lo, hi);
}

// Output rows [lo, hi) of y = x W^T (+ bias) for all `rows` rows of x, three rows of x at a time (the block's
// weights stay in cache between them).
static inline void weight_block(const Weight& W, const float* x, int64_t rows, float* y, int64_t lo, int64_t hi) {
  for (int64_t r0 = 0; r0 < rows; r0 += 3) {
    const float* xr = x + r0 * W.in;
    float* yr = y + r0 * W.out;
    switch (rows - r0 < 3 ? rows - r0 : 3) {
      case 1: weight_rows<1>(W, xr, yr, lo, hi); break;
      case 2: weight_rows<2>(W, xr, yr, lo, hi); break;
      default: weight_rows<3>(W, xr, yr, lo, hi); break;
    }
  }
  if (W.bias)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = lo; o < hi; ++o) y[r * W.out + o] += W.bias[o];
}

static const int64_t BLOCK = 16;  // output rows per unit of work shared among the threads

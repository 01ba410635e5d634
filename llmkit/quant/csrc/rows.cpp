// Few-row linear layers for decoding on a CPU: y[r, o] = sum_k x[r, k] * W[o, k] for a few rows r.
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

static inline float hsum(v8 v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

// A weight row's next 8 values as floats: fp32 as stored, int8 codes converted (their row scale comes after).
static inline v8 weights(const float* p) { return load(p); }
static inline v8 weights(const int8_t* p) { return codes_i8(p); }

// fp32 (scale null) or int8 with one scale per output row
template <int R, typename W>
static void dense_rows(const float* x, int64_t in, const W* w, const float* scale, int64_t out, float* y,
                       int64_t lo, int64_t hi) {
  for (int64_t o = lo; o < hi; ++o) {
    const W* wr = w + o * in;
    v8 acc[R] = {};
    int64_t k = 0;
    for (; k + 8 <= in; k += 8) {
      v8 wv = weights(wr + k);
      for (int r = 0; r < R; ++r) acc[r] += load(x + r * in + k) * wv;
    }
    for (int r = 0; r < R; ++r) {
      float s = hsum(acc[r]);
      for (int64_t j = k; j < in; ++j) s += x[r * in + j] * static_cast<float>(wr[j]);
      y[r * out + o] = scale ? s * scale[o] : s;
    }
  }
}

// int4: within each group of `group` inputs, byte j holds input j in its low nibble and input j + group/2 in
// its high nibble, as codes 1..15 for -7..7 (see llmkit/quant/weight_only.py); one scale per group.
template <int R>
static void i4_rows(const float* x, int64_t in, const uint8_t* p, const float* scale, int64_t group, int64_t out,
                    float* y, int64_t lo, int64_t hi) {
  const int64_t half = group / 2, groups = in / group;
  for (int64_t o = lo; o < hi; ++o) {
    const uint8_t* pr = p + o * (in / 2);
    const float* sr = scale + o * groups;
    v8 acc[R] = {};
    for (int64_t g = 0; g < groups; ++g) {
      v8 part[R] = {};
      for (int64_t j = 0; j < half; j += 8) {
        v8 low, high;
        codes_i4(pr + g * half + j, low, high);
        for (int r = 0; r < R; ++r) {
          const float* xr = x + r * in + g * group;
          part[r] += load(xr + j) * low + load(xr + half + j) * high;
        }
      }
      for (int r = 0; r < R; ++r) acc[r] += part[r] * sr[g];
    }
    for (int r = 0; r < R; ++r) y[r * out + o] = hsum(acc[r]);
  }
}

#define DISPATCH(CALL)                        \
  switch (chunk) {                             \
    case 1: CALL(1); break;                   \
    case 2: CALL(2); break;                   \
    case 3: CALL(3); break;                   \
    case 4: CALL(4); break;                   \
    case 5: CALL(5); break;                   \
    case 6: CALL(6); break;                   \
    case 7: CALL(7); break;                   \
    default: CALL(8); break;                  \
  }

// Output rows are split among the threads in blocks of 16, each block taking the input rows 8 at a time
// (for int4, group must be a multiple of 16).
extern "C" {
void rows_f32(const float* x, int64_t rows, int64_t in, const float* w, int64_t out, float* y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t lo = 0; lo < out; lo += 16) {
    int64_t hi = lo + 16 < out ? lo + 16 : out;
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {  // 8 rows at a time; the block's weights stay in cache
      const int64_t chunk = rows - r0 < 8 ? rows - r0 : 8;
#define CALL(R) dense_rows<R>(x + r0 * in, in, w, nullptr, out, y + r0 * out, lo, hi)
      DISPATCH(CALL)
#undef CALL
    }
  }
}

void rows_i8(const float* x, int64_t rows, int64_t in, const int8_t* q, const float* scale, int64_t out, float* y,
             int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t lo = 0; lo < out; lo += 16) {
    int64_t hi = lo + 16 < out ? lo + 16 : out;
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {  // 8 rows at a time; the block's weights stay in cache
      const int64_t chunk = rows - r0 < 8 ? rows - r0 : 8;
#define CALL(R) dense_rows<R>(x + r0 * in, in, q, scale, out, y + r0 * out, lo, hi)
      DISPATCH(CALL)
#undef CALL
    }
  }
}

void rows_i4(const float* x, int64_t rows, int64_t in, const uint8_t* p, const float* scale, int64_t group,
             int64_t out, float* y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t lo = 0; lo < out; lo += 16) {
    int64_t hi = lo + 16 < out ? lo + 16 : out;
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {  // 8 rows at a time; the block's weights stay in cache
      const int64_t chunk = rows - r0 < 8 ? rows - r0 : 8;
#define CALL(R) i4_rows<R>(x + r0 * in, in, p, scale, group, out, y + r0 * out, lo, hi)
      DISPATCH(CALL)
#undef CALL
    }
  }
}
}

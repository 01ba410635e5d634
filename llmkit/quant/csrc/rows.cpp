// Entry points of the few-row linear kernels (rows.h) for llmkit/quant/kernels.py: y = x W^T for a few
// rows of x, the output rows split among the threads in blocks.
#include "rows.h"

static void run(const Weight& W, const float* x, int64_t rows, float* y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t lo = 0; lo < W.out; lo += BLOCK) weight_block(W, x, rows, y, lo, lo + BLOCK < W.out ? lo + BLOCK : W.out);
}

extern "C" {
void rows_f32(const float* x, int64_t rows, int64_t in, const float* w, int64_t out, float* y, int threads) {
  run(Weight{0, w, nullptr, nullptr, in, out, 0}, x, rows, y, threads);
}

void rows_i8(const float* x, int64_t rows, int64_t in, const int8_t* q, const float* scale, int64_t out, float* y,
             int threads) {
  run(Weight{1, q, scale, nullptr, in, out, 0}, x, rows, y, threads);
}

void rows_i4(const float* x, int64_t rows, int64_t in, const uint8_t* p, const float* scale, int64_t group,
             int64_t out, float* y, int threads) {
  run(Weight{2, p, scale, nullptr, in, out, group}, x, rows, y, threads);
}
}

// One decoding step of a decoder-only transformer, whole, on a CPU: the embedding of each row's token, every
// block (norm, q/k/v, rotary positions, the KV cache write, attention over the cache, o_proj, norm, MLP) and
// the head, for a few rows that each add one token at its own position (llmkit/models/decode_step.py), over a
// contiguous KV cache (models/cache.py) or the serving engine's paged one (infer/blocks.py).
//
// Why: a 30-layer model 576 wide (SmolLM2-135M) runs ~400 small torch operators per token, and their
// dispatch costs more than reading the weights. Here the whole step is one call and one parallel region;
// the threads share each weight's output blocks and meet at a barrier between dependent parts. The
// arithmetic is the module path's (models/layers.py), in fp32; weights are read in their stored format by
// the kernels of rows.h.
#include <cmath>

#include "rows.h"

struct Norm {
  int64_t kind;  // 0 RMSNorm, 1 LayerNorm
  const float* w;
  const float* b;  // LayerNorm's bias, or null
  double eps;
};

struct Layer {
  Norm attn_norm;
  Weight q, k, v, o;
  Norm mlp_norm;
  Weight gate, up, down;  // gate.w null: a plain MLP, down(act(up(x)))
  int64_t window;         // attends to the last `window` positions; 0: to all of them
};

struct Model {
  int64_t dim, n_heads, n_kv_heads, head_dim, hidden, n_layers, max_len, rows;
  int64_t activation;  // 0 silu, 1 gelu (erf), 2 gelu (tanh), 3 relu
  double attn_scale;
  const float* embed;      // (vocab, dim)
  const float* positions;  // learned position embeddings (positions, dim), or null
  const float* cos;        // rotary tables (positions, head_dim), or null
  const float* sin;
  Norm final_norm;
  Weight head;
  // The cache: contiguous (block_size 0) as KVCache's (layers, rows, kv_heads, max_len, head_dim), or paged
  // (block_size > 0) as BlockPool's (layers, slots, kv_heads, head_dim), position p of a row in slot
  // blocks[p / block_size] * block_size + p % block_size of that row's block table.
  float* cache_k;
  float* cache_v;
  int64_t block_size, slots;
  const Layer* layers;
  // scratch: x, xn, tmp (rows, dim); q, att (rows, n_heads * head_dim); k, v (rows, kv_heads * head_dim);
  // h1, h2 (rows, hidden); scores (rows * n_heads, max_len), max_len bounding every row's positions
  float *x, *xn, *tmp, *q, *k, *v, *att, *h1, *h2, *scores;
};

static inline float dot(const float* a, const float* b, int64_t n) {
  v8 acc = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = fmadd(load(a + i), load(b + i), acc);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

static void norm_row(const Norm& n, const float* x, float* y, int64_t dim) {
  if (n.kind == 0) {
    const float r = 1.0f / std::sqrt(dot(x, x, dim) / dim + static_cast<float>(n.eps));
    for (int64_t i = 0; i < dim; ++i) y[i] = x[i] * r * n.w[i];
    return;
  }
  float mean = 0.f;
  for (int64_t i = 0; i < dim; ++i) mean += x[i];
  mean /= dim;
  float var = 0.f;
  for (int64_t i = 0; i < dim; ++i) var += (x[i] - mean) * (x[i] - mean);
  const float r = 1.0f / std::sqrt(var / dim + static_cast<float>(n.eps));
  for (int64_t i = 0; i < dim; ++i) y[i] = (x[i] - mean) * r * n.w[i] + (n.b ? n.b[i] : 0.f);
}

// y_i = x W_i^T (+ bias_i) for weights that read the same input (q/k/v, gate/up): all their output blocks
// are shared among the threads at once. Called inside the parallel region; ends with a barrier.
static void linears(const Weight* const* W, float* const* y, int n, const float* x, int64_t rows) {
  int64_t blocks[4] = {}, total = 0;
  for (int i = 0; i < n; ++i) total += blocks[i] = (W[i]->out + BLOCK - 1) / BLOCK;
#pragma omp for schedule(static)
  for (int64_t b = 0; b < total; ++b) {
    int i = 0;
    int64_t j = b;
    while (j >= blocks[i]) j -= blocks[i++];
    const int64_t lo = j * BLOCK, hi = lo + BLOCK < W[i]->out ? lo + BLOCK : W[i]->out;
    weight_block(*W[i], x, rows, y[i], lo, hi);
  }
}

static void linear(const Weight& W, float* y, const float* x, int64_t rows) {
  const Weight* w[1] = {&W};
  float* out[1] = {y};
  linears(w, out, 1, x, rows);
}

// HF's "rotate half" layout: element i pairs with element i + head_dim / 2
static inline void rope(float* x, const float* c, const float* s, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * c[i] - b * s[i];
    x[i + half] = b * c[i + half] + a * s[i + half];
  }
}

// e^x for 8 floats (Cephes' expf: a degree-6 polynomial on x - n ln 2, scaled by 2^n), within 2 ulp of
// std::exp; the activations and the softmax take most of a step's exponentials.
#if defined(__AVX2__)
static inline v8 vexp(v8 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447505531f);
  __m256 v = _mm256_max_ps(_mm256_min_ps((__m256)x, hi), lo);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v = _mm256_sub_ps(v, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
  v = _mm256_sub_ps(v, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  static const float coef[] = {1.3981999507E-3f, 8.3334519073E-3f, 4.1665795894E-2f, 1.6666665459E-1f,
                               5.0000001201E-1f};
  for (float c : coef) p = _mm256_add_ps(_mm256_mul_ps(p, v), _mm256_set1_ps(c));
  p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, v), v), v), _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return (v8)_mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#else
static inline v8 vexp(v8 x) {
  v8 y;
  for (int i = 0; i < 8; ++i) y[i] = std::exp(x[i]);
  return y;
}
#endif

// silu(x) = x sigmoid(x); GPT-2's tanh GELU 0.5 x (1 + tanh(y)) = x sigmoid(2y); exact GELU by erf; ReLU
static inline v8 activate8(v8 x, int64_t kind) {
  const v8 one = {1, 1, 1, 1, 1, 1, 1, 1};
  if (kind == 0) return x / (one + vexp(-x));
  if (kind == 2) {
    const v8 y = x + 0.044715f * x * x * x;
    return x / (one + vexp(-1.5957691216057308f * y));
  }
  v8 out;
  for (int i = 0; i < 8; ++i)
    out[i] = kind == 1 ? 0.5f * x[i] * (1.0f + std::erf(x[i] * static_cast<float>(M_SQRT1_2)))
                       : (x[i] > 0.f ? x[i] : 0.f);
  return out;
}

// h1 = act(h1) (* h2 for a gated MLP), `n` a multiple of 8 (the hidden width of every model served)
static void mlp_act(float* h1, const float* h2, int64_t n, int64_t kind) {
#pragma omp for schedule(static)
  for (int64_t i = 0; i < n; i += 8) {
    v8 a = activate8(load(h1 + i), kind);
    if (h2) a *= load(h2 + i);
    std::memcpy(h1 + i, &a, sizeof a);
  }
}

// Where (row r, kv head g, position p) of one layer's keys or values sits, from the layer's start.
struct Where {
  const Model* m;
  const int64_t* blocks;  // the rows' block tables (paged), max_blocks each
  int64_t max_blocks;
  int64_t operator()(int64_t r, int64_t g, int64_t p) const {
    const int64_t d = m->head_dim, nkv = m->n_kv_heads;
    if (!m->block_size) return ((r * nkv + g) * m->max_len + p) * d;
    const int64_t slot = blocks[r * max_blocks + p / m->block_size] * m->block_size + p % m->block_size;
    return (slot * nkv + g) * d;
  }
  int64_t layer() const {
    const int64_t per = m->block_size ? m->slots : m->rows * m->max_len;
    return per * m->n_kv_heads * m->head_dim;
  }
};

// One query head of row r over its cached positions [start, pos]: softmax(q K^T * scale) V.
static void attend(const float* q, const float* K, const float* V, const Where& at, int64_t r, int64_t g, float* s,
                   float* out, int64_t start, int64_t pos, int64_t d, float scale) {
  float top = -INFINITY;
  for (int64_t p = start; p <= pos; ++p) {
    s[p] = dot(q, K + at(r, g, p), d) * scale;
    top = s[p] > top ? s[p] : top;
  }
  const v8 top8 = {top, top, top, top, top, top, top, top};
  int64_t p = start;
  for (; p + 8 <= pos + 1; p += 8) {
    v8 e = vexp(load(s + p) - top8);
    std::memcpy(s + p, &e, sizeof e);
  }
  for (; p <= pos; ++p) s[p] = std::exp(s[p] - top);
  float sum = 0.f;
  for (p = start; p <= pos; ++p) sum += s[p];
  for (int64_t i = 0; i < d; ++i) out[i] = 0.f;
  for (int64_t p = start; p <= pos; ++p) {
    const float w = s[p];
    const float* vp = V + at(r, g, p);
    for (int64_t i = 0; i < d; ++i) out[i] += w * vp[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < d; ++i) out[i] *= inv;
}

static void add(float* x, const float* y, int64_t n) {
#pragma omp for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

extern "C" {
// Rows r = 0 .. rows - 1 (rows <= m->rows) add tokens[r] at position positions[r] (the cache holds the row's
// positions before it; a paged cache also has the slot of this one); logits (rows, vocab) receive the head's
// output. blocks: the rows' block tables, max_blocks each (a paged cache), else null.
void decode_step(const Model* m, int64_t rows, const int64_t* tokens, const int64_t* positions,
                 const int64_t* blocks, int64_t max_blocks, float* logits, int threads) {
  const int64_t dim = m->dim, d = m->head_dim, nh = m->n_heads, nkv = m->n_kv_heads;
  const int64_t per_kv = nh / nkv;
  const float scale = static_cast<float>(m->attn_scale);
  const Where at{m, blocks, max_blocks};
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* e = m->embed + tokens[r] * dim;
      const float* pe = m->positions ? m->positions + positions[r] * dim : nullptr;
      for (int64_t i = 0; i < dim; ++i) m->x[r * dim + i] = e[i] + (pe ? pe[i] : 0.f);
    }
    for (int64_t l = 0; l < m->n_layers; ++l) {
      const Layer& L = m->layers[l];
      float* const K = m->cache_k + l * at.layer();
      float* const V = m->cache_v + l * at.layer();
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) norm_row(L.attn_norm, m->x + r * dim, m->xn + r * dim, dim);
      {
        const Weight* w[3] = {&L.q, &L.k, &L.v};
        float* out[3] = {m->q, m->k, m->v};
        linears(w, out, 3, m->xn, rows);
      }
#pragma omp for schedule(static)
      for (int64_t rg = 0; rg < rows * nkv; ++rg) {  // rotate this step's keys; write keys and values
        const int64_t r = rg / nkv, g = rg % nkv, pos = positions[r];
        float* k = m->k + rg * d;
        if (m->cos) rope(k, m->cos + pos * d, m->sin + pos * d, d);
        std::memcpy(K + at(r, g, pos), k, d * sizeof(float));
        std::memcpy(V + at(r, g, pos), m->v + rg * d, d * sizeof(float));
      }
#pragma omp for schedule(static)
      for (int64_t rh = 0; rh < rows * nh; ++rh) {
        const int64_t r = rh / nh, h = rh % nh, pos = positions[r];
        const int64_t start = L.window && pos + 1 > L.window ? pos + 1 - L.window : 0;
        float* q = m->q + rh * d;
        if (m->cos) rope(q, m->cos + pos * d, m->sin + pos * d, d);
        attend(q, K, V, at, r, h / per_kv, m->scores + rh * m->max_len, m->att + rh * d, start, pos, d, scale);
      }
      linear(L.o, m->tmp, m->att, rows);
      add(m->x, m->tmp, rows * dim);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) norm_row(L.mlp_norm, m->x + r * dim, m->xn + r * dim, dim);
      const int64_t hid = rows * m->hidden;
      if (L.gate.w) {
        const Weight* w[2] = {&L.gate, &L.up};
        float* out[2] = {m->h1, m->h2};
        linears(w, out, 2, m->xn, rows);
        mlp_act(m->h1, m->h2, hid, m->activation);
      } else {
        linear(L.up, m->h1, m->xn, rows);
        mlp_act(m->h1, nullptr, hid, m->activation);
      }
      linear(L.down, m->tmp, m->h1, rows);
      add(m->x, m->tmp, rows * dim);
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) norm_row(m->final_norm, m->x + r * dim, m->xn + r * dim, dim);
    linear(m->head, logits, m->xn, rows);
  }
}
}

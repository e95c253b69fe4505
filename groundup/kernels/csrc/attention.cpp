// groundup::decode_attention: one query a head against a cache of keys and values, the decode step's attention.
// A single query costs little arithmetic (H x S x D x 2), so a general kernel's setup and threading dominate it;
// here each head is one pass: scores, softmax with its maximum subtracted, the weighted sum of values. Heads run
// on torch's threads only when the cache is long enough to pay for waking them.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "blocks.h"

namespace gu {
namespace {

template <typename T>
inline float as_float(T v) { return static_cast<float>(v); }

// dot(q, k) over d values, q float, k of the cache's type; and y += p v
template <typename T>
float dot_generic(const float* q, const T* k, int64_t d) {
  float s = 0.f;
  for (int64_t i = 0; i < d; ++i) s += q[i] * as_float(k[i]);
  return s;
}

template <typename T>
void axpy_generic(float p, const T* v, float* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += p * as_float(v[i]);
}

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 float dot_avx2(const float* q, const float* k, int64_t d) {
  __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a);
    b = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(k + i + 8), b);
  }
  a = _mm256_add_ps(a, b);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float r = _mm_cvtss_f32(s);
  for (; i < d; ++i) r += q[i] * k[i];
  return r;
}

AVX2 void axpy_avx2(float p, const float* v, float* y, int64_t d) {
  const __m256 pp = _mm256_set1_ps(p);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(pp, _mm256_loadu_ps(v + i), _mm256_loadu_ps(y + i)));
  for (; i < d; ++i) y[i] += p * v[i];
}

// e^x for eight floats: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 Taylor polynomial (relative error
// below 2e-7 there), 2^n put into the exponent bits; below -87 (and -inf) the result is 0
AVX2 __m256 exp8(__m256 x) {
  const __m256 hidden = _mm256_cmp_ps(x, _mm256_set1_ps(-87.f), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.f)), _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, with ln2 split in two so the product loses nothing
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 720.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(hidden, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

// scores[s] <- exp(scores[s] - m) (hidden keys hold -inf, so 0); returns their sum
AVX2 float exp_sum_avx2(float* scores, int64_t n, float m) {
  const __m256 mm = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + i), mm));
    _mm256_storeu_ps(scores + i, p);
    acc = _mm256_add_ps(acc, p);
  }
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float total = _mm_cvtss_f32(s);
  for (; i < n; ++i) total += (scores[i] = std::exp(scores[i] - m));
  return total;
}

struct Geometry {
  int64_t B, H, K, S, D;
  int64_t qs[3], ks[3], vs[3];  // strides (batch, head, position) in elements; the head dim is contiguous
};

template <typename T>
void one_head(const Geometry& g, int64_t bh, const float* q, const T* k, const T* v, const bool* visible,
              float scale, float cap, float* out, std::vector<float>& scores, bool avx2) {
  const int64_t b = bh / g.H, h = bh % g.H, kv = h / (g.H / g.K);
  const float* qh = q + b * g.qs[0] + h * g.qs[1];
  const T* kh = k + b * g.ks[0] + kv * g.ks[1];
  const T* vh = v + b * g.vs[0] + kv * g.vs[1];
  const bool* vis = visible + b * g.S;
  float m = -INFINITY;
  for (int64_t s = 0; s < g.S; ++s) {
    if (!vis[s]) {
      scores[s] = -INFINITY;
      continue;
    }
    float x;
    if constexpr (std::is_same_v<T, float>) x = avx2 ? dot_avx2(qh, kh + s * g.ks[2], g.D) : dot_generic(qh, kh + s * g.ks[2], g.D);
    else x = dot_generic(qh, kh + s * g.ks[2], g.D);
    x *= scale;
    if (cap > 0.f) x = cap * std::tanh(x / cap);
    scores[s] = x;
    m = std::max(m, x);
  }
  float* o = out + bh * g.D;
  std::fill(o, o + g.D, 0.f);
  if (m == -INFINITY) return;  // no visible key: zeros, as a fully hidden row of the other kernels is not NaN
  float total = 0.f;
  if (avx2) {
    total = exp_sum_avx2(scores.data(), g.S, m);
  } else {
    for (int64_t s = 0; s < g.S; ++s) total += (scores[s] = vis[s] ? std::exp(scores[s] - m) : 0.f);
  }
  for (int64_t s = 0; s < g.S; ++s) {
    if (!vis[s]) continue;
    const float p = scores[s];
    if constexpr (std::is_same_v<T, float>) {
      if (avx2) axpy_avx2(p, vh + s * g.vs[2], o, g.D);
      else axpy_generic(p, vh + s * g.vs[2], o, g.D);
    } else {
      axpy_generic(p, vh + s * g.vs[2], o, g.D);
    }
  }
  const float inv = 1.f / total;
  for (int64_t i = 0; i < g.D; ++i) o[i] *= inv;
}

// q [B, H, 1, D], k and v [B, K, S, D] (float32 or bfloat16, head dim contiguous), visible [B, S] bool:
// softmax(cap tanh(scale q k^T / cap)) v over the visible keys -> [B, H, 1, D] float32
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& visible,
                            double scale, double cap) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1, "decode_attention: q [B, H, 1, D], "
              "k and v [B, K, S, D], got ", q.sizes(), " ", k.sizes(), " ", v.sizes());
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.stride(3) == 1, "decode_attention: q must be float32 with a contiguous head dim");
  TORCH_CHECK(k.scalar_type() == v.scalar_type() && (k.scalar_type() == at::kFloat || k.scalar_type() == at::kBFloat16)
              && k.stride(3) == 1 && v.stride(3) == 1, "decode_attention: k and v float32 or bfloat16, head dim contiguous");
  TORCH_CHECK(visible.dim() == 2 && visible.scalar_type() == at::kBool && visible.is_contiguous()
              && visible.size(0) == q.size(0) && visible.size(1) == k.size(2), "decode_attention: visible must be bool [B, S]");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0 && v.sizes() == k.sizes() && k.size(3) == q.size(3)
              && k.size(0) == q.size(0), "decode_attention: heads or shapes disagree");
  Geometry g{q.size(0), q.size(1), k.size(1), k.size(2), q.size(3), {}, {}, {}};
  for (int i = 0; i < 3; ++i) g.qs[i] = q.stride(i), g.ks[i] = k.stride(i), g.vs[i] = v.stride(i);
  at::Tensor out = at::empty({g.B, g.H, 1, g.D}, q.options());
  const bool avx2 = cpu_has_avx2();
  // a thread is worth waking for about 64k multiply-adds of work
  const int64_t per_head = g.S * g.D * 2;
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(per_head, 1));
  const float sc = static_cast<float>(scale), cp = static_cast<float>(cap);
  at::parallel_for(0, g.B * g.H, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(g.S);
    for (int64_t bh = begin; bh < end; ++bh) {
      if (k.scalar_type() == at::kFloat)
        one_head<float>(g, bh, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), visible.data_ptr<bool>(),
                        sc, cp, out.data_ptr<float>(), scores, avx2);
      else
        one_head<c10::BFloat16>(g, bh, q.data_ptr<float>(), k.data_ptr<c10::BFloat16>(), v.data_ptr<c10::BFloat16>(),
                                visible.data_ptr<bool>(), sc, cp, out.data_ptr<float>(), scores, avx2);
    }
  });
  return out;
}

}  // namespace
}  // namespace gu

TORCH_LIBRARY_FRAGMENT(groundup, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor visible, float scale, float cap) -> Tensor");
}

TORCH_LIBRARY_IMPL(groundup, CPU, m) { m.impl("decode_attention", &gu::decode_attention); }

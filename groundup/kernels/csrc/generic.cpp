// The portable variant: plain C++ for every format, the reference the vector variants are tested against and
// the path on CPUs without AVX2. Integer sums are exact; each block's sum is scaled in float as the vector
// variants scale theirs.
#include <cmath>

#include "blocks.h"

namespace gu {
namespace {

void quantize_a8(const float* x, uint8_t* out, int64_t k) {
  A8Row y(out, k / 32);
  for (int64_t b = 0; b < k / 32; ++b, x += 32) {
    float amax = 0.f;
    for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[i]));
    const float d = amax / 127.f;
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    int sum = 0;
    for (int i = 0; i < 32; ++i) {
      const int q = static_cast<int>(std::nearbyint(x[i] * id));  // to nearest, ties to even
      y.qs[32 * b + i] = static_cast<int8_t>(q);
      sum += q;
    }
    y.d[b] = round_through_half(d);
    y.s[b] = round_through_half(d * static_cast<float>(sum));
    y.sum[b] = sum;
  }
}

void quantize_ak(const float* x, uint8_t* out, int64_t k) {
  AK* y = reinterpret_cast<AK*>(out);
  for (int64_t b = 0; b < k / 256; ++b, x += 256) {
    float amax = 0.f, max = 0.f;  // the value of largest magnitude, with its sign
    for (int i = 0; i < 256; ++i) {
      if (std::fabs(x[i]) > amax) {
        amax = std::fabs(x[i]);
        max = x[i];
      }
    }
    if (amax == 0.f) {
      std::memset(&y[b], 0, sizeof(AK));
      continue;
    }
    const float iscale = -127.f / max;
    for (int i = 0; i < 256; ++i) {
      const int q = static_cast<int>(std::nearbyint(iscale * x[i]));
      y[b].qs[i] = static_cast<int8_t>(q > 127 ? 127 : q);
    }
    for (int j = 0; j < 16; ++j) {
      int s = 0;
      for (int i = 0; i < 16; ++i) s += y[b].qs[16 * j + i];
      y[b].bsums[j] = static_cast<int16_t>(s);
    }
    y[b].d = 1.f / iscale;
  }
}

// Codes of one 32-value block as signed or unsigned integers, with the block's scale and minimum:
// value i = d * q[i] + m.
void legacy_codes(int type, const uint8_t* b, int* q, float* d, float* m) {
  *d = half_to_float(read_u16(b));
  *m = 0.f;
  switch (type) {
    case Q8_0:
      for (int i = 0; i < 32; ++i) q[i] = static_cast<int8_t>(b[2 + i]);
      return;
    case Q4_0:
      for (int i = 0; i < 16; ++i) q[i] = (b[2 + i] & 0xF) - 8, q[i + 16] = (b[2 + i] >> 4) - 8;
      return;
    case Q4_1:
      *m = half_to_float(read_u16(b + 2));
      for (int i = 0; i < 16; ++i) q[i] = b[4 + i] & 0xF, q[i + 16] = b[4 + i] >> 4;
      return;
    default: {  // Q5_0, Q5_1: a fifth bit per value, bit i of a little-endian uint32
      const bool one = type == Q5_1;
      const uint8_t* qh = b + (one ? 4 : 2);
      const uint8_t* qs = qh + 4;
      uint32_t h;
      std::memcpy(&h, qh, 4);
      if (one) *m = half_to_float(read_u16(b + 2));
      for (int i = 0; i < 16; ++i) {
        q[i] = (qs[i] & 0xF) | (((h >> i) & 1) << 4);
        q[i + 16] = (qs[i] >> 4) | (((h >> (i + 16)) & 1) << 4);
      }
      if (!one)
        for (int i = 0; i < 32; ++i) q[i] -= 16;
    }
  }
}

void dot_legacy(int type, const uint8_t* w, const uint8_t* a, int64_t stride, int rows, int64_t k, float* out) {
  const int bytes = block_bytes(type);
  for (int j = 0; j < rows; ++j) out[j] = 0.f;
  int q[32];
  for (int64_t b = 0; b < k / 32; ++b) {
    float d, m;
    legacy_codes(type, w + b * bytes, q, &d, &m);
    for (int j = 0; j < rows; ++j) {
      const A8View x(a + j * stride, k / 32);
      int sum = 0;
      for (int i = 0; i < 32; ++i) sum += q[i] * x.qs[32 * b + i];
      out[j] += d * x.d[b] * static_cast<float>(sum) + m * x.s[b];
    }
  }
}

// Codes of one k-quant super-block: value i = scale[i / sub] * q[i] - minimum[i / sub] (sub = 32; 16 for Q6_K,
// whose minimum is 32 * scale, applied as q - 32).
void k_codes(int type, const uint8_t* b, int* q, float* scale, float* minimum) {
  if (type == Q6_K) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    const float d = half_to_float(read_u16(b + 208));
    for (int half = 0; half < 2; ++half) {
      for (int l = 0; l < 32; ++l) {
        int* o = q + 128 * half + l;
        const uint8_t lo = ql[64 * half + l], hi = ql[64 * half + 32 + l], h = qh[32 * half + l];
        o[0] = ((lo & 0xF) | ((h & 3) << 4)) - 32;
        o[32] = ((hi & 0xF) | (((h >> 2) & 3) << 4)) - 32;
        o[64] = ((lo >> 4) | (((h >> 4) & 3) << 4)) - 32;
        o[96] = ((hi >> 4) | (((h >> 6) & 3) << 4)) - 32;
      }
    }
    for (int s = 0; s < 16; ++s) scale[s] = d * sc[s], minimum[s] = 0.f;
    return;
  }
  const float d = half_to_float(read_u16(b)), dmin = half_to_float(read_u16(b + 2));
  const uint8_t* qs = b + (type == Q4_K ? 16 : 48);
  for (int j = 0; j < 8; ++j) {
    int sc, mn;
    scale_min_k4(b + 4, j, &sc, &mn);
    scale[j] = d * sc;
    minimum[j] = dmin * mn;
    for (int l = 0; l < 32; ++l) {
      const uint8_t byte = qs[32 * (j / 2) + l];
      int v = j % 2 ? byte >> 4 : byte & 0xF;
      if (type == Q5_K) v |= ((b[16 + l] >> j) & 1) << 4;
      q[32 * j + l] = v;
    }
  }
}

void dot_k(int type, const uint8_t* w, const uint8_t* a, int64_t stride, int rows, int64_t k, float* out) {
  const int bytes = block_bytes(type), sub = type == Q6_K ? 16 : 32;
  for (int j = 0; j < rows; ++j) out[j] = 0.f;
  int q[256];
  float scale[16], minimum[16];
  for (int64_t b = 0; b < k / 256; ++b) {
    k_codes(type, w + b * bytes, q, scale, minimum);
    for (int j = 0; j < rows; ++j) {
      const AK& x = reinterpret_cast<const AK*>(a + j * stride)[b];
      float acc = 0.f;
      for (int s = 0; s < 256 / sub; ++s) {
        int sum = 0, bsum = 0;
        for (int i = s * sub; i < (s + 1) * sub; ++i) sum += q[i] * x.qs[i];
        for (int t = s * sub / 16; t < (s + 1) * sub / 16; ++t) bsum += x.bsums[t];
        acc += scale[s] * static_cast<float>(sum) - minimum[s] * static_cast<float>(bsum);
      }
      out[j] += x.d * acc;
    }
  }
}

template <int T>
void dot_float(const uint8_t* w, const uint8_t* a, int64_t stride, int rows, int64_t k, float* out) {
  for (int j = 0; j < rows; ++j) {
    const float* x = reinterpret_cast<const float*>(a + j * stride);
    float acc = 0.f;
    for (int64_t i = 0; i < k; ++i) {
      const float v = T == F32 ? reinterpret_cast<const float*>(w)[i]
                    : T == F16 ? half_to_float(read_u16(w + 2 * i)) : bf16_to_float(read_u16(w + 2 * i));
      acc += v * x[i];
    }
    out[j] = acc;
  }
}

template <int T>
void dot_legacy_t(const uint8_t* w, const uint8_t* a, int64_t s, int r, int64_t k, float* o) { dot_legacy(T, w, a, s, r, k, o); }
template <int T>
void dot_k_t(const uint8_t* w, const uint8_t* a, int64_t s, int r, int64_t k, float* o) { dot_k(T, w, a, s, r, k, o); }

}  // namespace

void fill_generic(Variant* v) {
  v->name = "generic";
  v->quantize_a8 = quantize_a8;
  v->quantize_ak = quantize_ak;
  v->dot[F32] = dot_float<F32>;
  v->dot[F16] = dot_float<F16>;
  v->dot[BF16] = dot_float<BF16>;
  v->dot[Q4_0] = dot_legacy_t<Q4_0>;
  v->dot[Q4_1] = dot_legacy_t<Q4_1>;
  v->dot[Q5_0] = dot_legacy_t<Q5_0>;
  v->dot[Q5_1] = dot_legacy_t<Q5_1>;
  v->dot[Q8_0] = dot_legacy_t<Q8_0>;
  v->dot[Q4_K] = dot_k_t<Q4_K>;
  v->dot[Q5_K] = dot_k_t<Q5_K>;
  v->dot[Q6_K] = dot_k_t<Q6_K>;
}

}  // namespace gu

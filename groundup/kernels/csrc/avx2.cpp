// The AVX2 variant (with FMA and F16C): every function carries the target attribute, so this file builds with
// any x86-64 compiler flags and runs only where the CPU reports the three extensions.
//
// Integer products use vpmaddubsw, which multiplies unsigned bytes by signed bytes and adds pairs into int16:
// a format with unsigned codes (Q4_1, Q5_1, the k-quants) feeds its codes directly and accounts for its
// minimum through the activation's sums; one with signed codes (Q4_0, Q5_0, Q8_0) moves the weight's sign onto
// the activation (|w| * sign(w) a). Each block's int32 sums are scaled in float once per block (per super-block
// for the k-quants, whose sub-block scales are applied as int16 by vpmaddwd).
#include <immintrin.h>

#include <cmath>

#include "blocks.h"

#define AVX2 __attribute__((target("avx2,fma,f16c")))

namespace gu {
namespace {

AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AVX2 inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

AVX2 inline float half(uint16_t h) { return _cvtsh_ss(h); }

// 16 bytes of two 4-bit codes each -> 32 bytes: the low nibbles first, then the high ones (the legacy order)
AVX2 inline __m256i nibbles(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// A little-endian uint32 of bits -> 32 bytes, 0xFF where bit i is set
AVX2 inline __m256i bit_bytes(const uint8_t* p) {
  uint32_t h;
  std::memcpy(&h, p, 4);
  const __m256i which = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(h)), which);  // byte i: byte i/8
  const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));   // byte i: bit i%8
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

AVX2 inline __m256i sum_pairs(__m256i i16) { return _mm256_madd_epi16(i16, _mm256_set1_epi16(1)); }

AVX2 void quantize_a8(const float* x, uint8_t* out, int64_t k) {
  A8Row y(out, k / 32);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < k / 32; ++b, x += 32) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float mx = _mm_cvtss_f32(m);
    const float d = mx / 127.f;
    const __m256 id = _mm256_set1_ps(mx != 0.f ? 127.f / mx : 0.f);
    __m256i q[4];
    for (int i = 0; i < 4; ++i)
      q[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const int sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    // int32 -> int8: the packs interleave 128-bit lanes, the permute puts the 32 codes back in order
    const __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y.qs + 32 * b), p8);
    y.d[b] = round_through_half(d);
    y.s[b] = round_through_half(d * static_cast<float>(sum));
    y.sum[b] = sum;
  }
}

// The codes of one legacy block as 32 bytes: unsigned, the format's offset (Q4_0: 8, Q5_0: 16) left to the
// caller; Q8_0's signed
template <int T>
AVX2 inline __m256i legacy_codes(const uint8_t* b) {
  if constexpr (T == Q8_0) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
  if constexpr (T == Q4_0) return nibbles(b + 2);
  if constexpr (T == Q4_1) return nibbles(b + 4);
  if constexpr (T == Q5_0) return _mm256_or_si256(nibbles(b + 6), _mm256_and_si256(bit_bytes(b + 2), _mm256_set1_epi8(0x10)));
  if constexpr (T == Q5_1) return _mm256_or_si256(nibbles(b + 8), _mm256_and_si256(bit_bytes(b + 4), _mm256_set1_epi8(0x10)));
  return _mm256_setzero_si256();
}

template <int T>
constexpr int legacy_offset() { return T == Q4_0 ? 8 : T == Q5_0 ? 16 : 0; }

// Eight int32 vectors -> one: lane i holds the sum of vector i's lanes
AVX2 inline __m256i reduce8(const __m256i* p) {
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
  // a: [0 1 2 3 | 0 1 2 3] (per 128-bit half), b: [4 5 6 7 | 4 5 6 7]: add the halves
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

// The fp16 at byte `offset` of eight consecutive blocks, as float32
template <int BYTES>
AVX2 inline __m256 halves8(const uint8_t* blk, int offset) {
  __m128i v = _mm_cvtsi32_si128(read_u16(blk + offset));
  v = _mm_insert_epi16(v, read_u16(blk + BYTES + offset), 1);
  v = _mm_insert_epi16(v, read_u16(blk + 2 * BYTES + offset), 2);
  v = _mm_insert_epi16(v, read_u16(blk + 3 * BYTES + offset), 3);
  v = _mm_insert_epi16(v, read_u16(blk + 4 * BYTES + offset), 4);
  v = _mm_insert_epi16(v, read_u16(blk + 5 * BYTES + offset), 5);
  v = _mm_insert_epi16(v, read_u16(blk + 6 * BYTES + offset), 6);
  v = _mm_insert_epi16(v, read_u16(blk + 7 * BYTES + offset), 7);
  return _mm256_cvtph_ps(v);
}

// One legacy block's integer sum against activation block b, as eight int32 partial sums (their total is
// sum(code * a), less the format's offset times sum(a) where it has one)
template <int T>
AVX2 inline __m256i legacy_sums(__m256i q, __m256i aq, const A8View& x, int64_t b) {
  __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * b));
  if constexpr (T == Q8_0) y = _mm256_sign_epi8(y, q);
  return sum_pairs(_mm256_maddubs_epi16(aq, y));
}

// One activation row's integer sums against eight blocks' codes (q; aq the codes as maddubs takes them): lane i
// holds block b + i's sum(code * a), less the format's offset times sum(a)
template <int T>
AVX2 inline __m256i group_sums(const __m256i* q, const __m256i* aq, const A8View& x, int64_t b) {
  constexpr int offset = legacy_offset<T>();
  __m256i p[8];
  for (int i = 0; i < 8; ++i) p[i] = legacy_sums<T>(q[i], aq[i], x, b + i);
  const __m256i sums = reduce8(p);
  if constexpr (offset == 0) return sums;
  return _mm256_sub_epi32(sums, _mm256_mullo_epi32(_mm256_set1_epi32(offset),
                                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.sum + b))));
}

// The codes of eight consecutive blocks, as they are and as maddubs takes them (signed codes: |w|, the sign
// moved onto the activation)
template <int T>
AVX2 inline void group_codes(const uint8_t* blk, __m256i* q, __m256i* aq) {
  for (int i = 0; i < 8; ++i) {
    q[i] = legacy_codes<T>(blk + i * block_bytes(T));
    aq[i] = T == Q8_0 ? _mm256_sign_epi8(q[i], q[i]) : q[i];
  }
}

// Legacy formats, R activation rows: blocks go eight at a time, so their integer sums are gathered into one
// vector (lane i: block i) and scaled by one vector of eight weight scales times eight activation scales.
template <int T, int R>
AVX2 inline void legacy_group(const uint8_t* blk, const uint8_t* a, int64_t stride, int64_t nb, int64_t b,
                              __m256* acc, __m256* mins) {
  constexpr bool has_min = T == Q4_1 || T == Q5_1;
  constexpr int bytes = block_bytes(T);
  __m256i q[8], aq[8];
  group_codes<T>(blk, q, aq);
  const __m256 wd = halves8<bytes>(blk, 0);
  __m256 wm = _mm256_setzero_ps();
  if constexpr (has_min) wm = halves8<bytes>(blk, 2);
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) {
    const A8View x(a + j * stride, nb);
    const __m256i sums = group_sums<T>(q, aq, x, b);
    const __m256 scale = _mm256_mul_ps(wd, _mm256_loadu_ps(x.d + b));
    acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[j]);
    if constexpr (has_min) mins[j] = _mm256_fmadd_ps(wm, _mm256_loadu_ps(x.s + b), mins[j]);
  }
}

// The blocks past the last group of eight, one at a time: each block's eight partial sums are scaled by its
// own weight scale times activation scale into `tail` (reduced with the groups' at the end); the offset and
// minimum terms go to the scalar `mins`
template <int T, int R>
AVX2 inline void legacy_block(const uint8_t* blk, const uint8_t* a, int64_t stride, int64_t nb, int64_t b,
                              __m256* tail, float* mins) {
  constexpr bool is_signed = T == Q8_0;
  constexpr int offset = legacy_offset<T>();
  const __m256i q = legacy_codes<T>(blk), aq = is_signed ? _mm256_sign_epi8(q, q) : q;
  const float wd = half(read_u16(blk));
  for (int j = 0; j < R; ++j) {
    const A8View x(a + j * stride, nb);
    const __m256 s = _mm256_cvtepi32_ps(legacy_sums<T>(q, aq, x, b));
    // the offset's share, d_w d_a offset sum(a), comes off the scalar rest
    const float off = offset != 0 ? static_cast<float>(offset * x.sum[b]) : 0.f;
    tail[j] = _mm256_fmadd_ps(s, _mm256_set1_ps(wd * x.d[b]), tail[j]);
    mins[j] -= off * wd * x.d[b];
    if constexpr (T == Q4_1 || T == Q5_1) mins[j] += half(read_u16(blk + 2)) * x.s[b];
  }
}

template <int T, int R>
AVX2 void dot_legacy_rows(const uint8_t* w, const uint8_t* a, int64_t stride, int64_t k, float* out) {
  constexpr int bytes = block_bytes(T);
  const int64_t nb = k / 32;
  __m256 acc[R], mins[R];
  for (int j = 0; j < R; ++j) acc[j] = mins[j] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) legacy_group<T, R>(w + b * bytes, a, stride, nb, b, acc, mins);
  float rest[R] = {};
  for (; b < nb; ++b) legacy_block<T, R>(w + b * bytes, a, stride, nb, b, acc, rest);
  for (int j = 0; j < R; ++j) out[j] = hsum(_mm256_add_ps(acc[j], mins[j])) + rest[j];
}

// W_ROWS weight rows against one activation row: per group of eight blocks the activation's codes and scales
// are loaded once and each row's integer sums reduced as in legacy_group; the tail blocks go one at a time.
template <int T>
AVX2 void dot_legacy_wrows(const uint8_t* w, int64_t w_stride, const uint8_t* a, int64_t k, float* out) {
  constexpr bool has_min = T == Q4_1 || T == Q5_1;
  constexpr int bytes = block_bytes(T);
  const int64_t nb = k / 32;
  const A8View x(a, nb);
  __m256 acc[W_ROWS], mins[W_ROWS];
  for (int r = 0; r < W_ROWS; ++r) acc[r] = mins[r] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    const __m256 xd = _mm256_loadu_ps(x.d + b);
    __m256 xs = _mm256_setzero_ps();
    if constexpr (has_min) xs = _mm256_loadu_ps(x.s + b);
    for (int r = 0; r < W_ROWS; ++r) {
      const uint8_t* blk = w + r * w_stride + b * bytes;
      // the four rows are four streams from memory, which the hardware prefetchers follow poorly: ask for each
      // row's next group while this one is multiplied (a prefetch never faults, even past the matrix's end)
      for (int line = 0; line < 8 * bytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(blk + 8 * bytes + line), _MM_HINT_T0);
      __m256i q[8], aq[8];
      group_codes<T>(blk, q, aq);
      const __m256i sums = group_sums<T>(q, aq, x, b);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(halves8<bytes>(blk, 0), xd), acc[r]);
      if constexpr (has_min) mins[r] = _mm256_fmadd_ps(halves8<bytes>(blk, 2), xs, mins[r]);
    }
  }
  float rest[W_ROWS] = {};
  for (; b < nb; ++b)
    for (int r = 0; r < W_ROWS; ++r) legacy_block<T, 1>(w + r * w_stride + b * bytes, a, 0, nb, b, acc + r, rest + r);
  // summed in dot_legacy_rows' order, so a row's result does not depend on which path computed it
  for (int r = 0; r < W_ROWS; ++r) out[r] = hsum(_mm256_add_ps(acc[r], mins[r])) + rest[r];
}

// Sum over one super-block of scale_s * sum(q * a) for Q4_K / Q5_K (8 sub-blocks of 32, unsigned codes)
template <int T>
AVX2 inline __m256i k4_sums(const uint8_t* blk, const int8_t* aq, const int* sc) {
  const uint8_t* qs = blk + (T == Q4_K ? 16 : 48);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256i hb = T == Q5_K ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16)) : _mm256_setzero_si256();
  __m256i sum = _mm256_setzero_si256();
  for (int c = 0; c < 4; ++c) {  // 64 values: 32 bytes, low nibbles sub-block 2c, high ones 2c + 1
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
    __m256i lo = _mm256_and_si256(raw, low4);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
    if constexpr (T == Q5_K) {  // bit 2c of qh[l] is value l's fifth bit in sub-block 2c, bit 2c + 1 in 2c + 1
      const __m256i one = _mm256_set1_epi8(1);
      lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
      hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4));
      hb = _mm256_srli_epi16(hb, 2);
    }
    const __m256i ylo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + 64 * c));
    const __m256i yhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + 64 * c + 32));
    const __m256i plo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, ylo), _mm256_set1_epi16(static_cast<short>(sc[2 * c])));
    const __m256i phi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, yhi), _mm256_set1_epi16(static_cast<short>(sc[2 * c + 1])));
    sum = _mm256_add_epi32(sum, _mm256_add_epi32(plo, phi));
  }
  return sum;
}

template <int T, int R>
AVX2 void dot_k4_rows(const uint8_t* w, const uint8_t* a, int64_t stride, int64_t k, float* out) {
  constexpr int bytes = block_bytes(T);
  __m256 acc[R];
  float mins[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps(), mins[j] = 0.f;
  for (int64_t b = 0; b < k / 256; ++b) {
    const uint8_t* blk = w + b * bytes;
    const float d = half(read_u16(blk)), dmin = half(read_u16(blk + 2));
    int sc[8], mn[8];
    for (int s = 0; s < 8; ++s) scale_min_k4(blk + 4, s, &sc[s], &mn[s]);
    for (int j = 0; j < R; ++j) {
      const AK& x = reinterpret_cast<const AK*>(a + j * stride)[b];
      const __m256i s32 = k4_sums<T>(blk, x.qs, sc);
      acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(s32), acc[j]);
      int msum = 0;
      for (int s = 0; s < 8; ++s) msum += mn[s] * (x.bsums[2 * s] + x.bsums[2 * s + 1]);
      mins[j] += dmin * x.d * static_cast<float>(msum);
    }
  }
  for (int j = 0; j < R; ++j) out[j] = hsum(acc[j]) - mins[j];
}

// Q6_K: sum over one super-block of scale_s * sum((q - 32) a), the 32 applied through the activation's bsums
AVX2 inline __m256i q6_sums(const uint8_t* blk, const int8_t* aq) {
  const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
  const __m256i low4 = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(3);
  __m256i sum = _mm256_setzero_si256();
  for (int h = 0; h < 2; ++h) {  // halves of 128 values: ql 64 bytes, qh 32 bytes
    const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h));
    const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h + 32));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
    const __m256i q[4] = {
        _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_slli_epi16(_mm256_and_si256(qh, two), 4)),
        _mm256_or_si256(_mm256_and_si256(l1, low4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two), 4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two), 4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two), 4))};
    for (int c = 0; c < 4; ++c) {  // 32 values, scales 2c and 2c + 1 of this half (16 values each)
      const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + 128 * h + 32 * c));
      const __m256i scales = _mm256_set_m128i(_mm_set1_epi16(sc[8 * h + 2 * c + 1]), _mm_set1_epi16(sc[8 * h + 2 * c]));
      sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(q[c], y), scales));
    }
  }
  return sum;
}

template <int R>
AVX2 void dot_q6k_rows(const uint8_t* w, const uint8_t* a, int64_t stride, int64_t k, float* out) {
  __m256 acc[R];
  float offs[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps(), offs[j] = 0.f;
  for (int64_t b = 0; b < k / 256; ++b) {
    const uint8_t* blk = w + b * 210;
    const float d = half(read_u16(blk + 208));
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)));
    for (int j = 0; j < R; ++j) {
      const AK& x = reinterpret_cast<const AK*>(a + j * stride)[b];
      const __m256i s32 = q6_sums(blk, x.qs);
      acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(s32), acc[j]);
      const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
      offs[j] += 32.f * d * x.d * static_cast<float>(hsum_i32(_mm256_madd_epi16(sc16, bs)));
    }
  }
  for (int j = 0; j < R; ++j) out[j] = hsum(acc[j]) - offs[j];
}

template <int T>
AVX2 inline __m256 load8(const uint8_t* w, int64_t i) {
  if constexpr (T == F32) return _mm256_loadu_ps(reinterpret_cast<const float*>(w) + i);
  if constexpr (T == F16) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * i)));
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * i));  // bf16: the top half of fp32
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <int T, int R>
AVX2 void dot_float_rows(const uint8_t* w, const uint8_t* a, int64_t stride, int64_t k, float* out) {
  __m256 acc[R][2];
  for (int j = 0; j < R; ++j) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m256 w0 = load8<T>(w, i), w1 = load8<T>(w, i + 8);
    for (int j = 0; j < R; ++j) {
      const float* x = reinterpret_cast<const float*>(a + j * stride) + i;
      acc[j][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc[j][0]);
      acc[j][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), acc[j][1]);
    }
  }
  for (int j = 0; j < R; ++j) {
    float s = hsum(_mm256_add_ps(acc[j][0], acc[j][1]));
    const float* x = reinterpret_cast<const float*>(a + j * stride);
    for (int64_t t = i; t < k; ++t)
      s += (T == F32 ? reinterpret_cast<const float*>(w)[t] : T == F16 ? half(read_u16(w + 2 * t))
                                                                       : bf16_to_float(read_u16(w + 2 * t))) * x[t];
    out[j] = s;
  }
}

// One dot function per format: the row count picks the unrolled instance
template <template <int> class K>
void dot_rows(const uint8_t* w, const uint8_t* a, int64_t stride, int rows, int64_t k, float* out) {
  switch (rows) {
    case 1: K<1>::run(w, a, stride, k, out); break;
    case 2: K<2>::run(w, a, stride, k, out); break;
    case 3: K<3>::run(w, a, stride, k, out); break;
    default: K<4>::run(w, a, stride, k, out);
  }
}

template <int T> struct Legacy { template <int R> struct K { static void run(const uint8_t* w, const uint8_t* a, int64_t s, int64_t k, float* o) { dot_legacy_rows<T, R>(w, a, s, k, o); } }; };
template <int T> struct K4 { template <int R> struct K { static void run(const uint8_t* w, const uint8_t* a, int64_t s, int64_t k, float* o) { dot_k4_rows<T, R>(w, a, s, k, o); } }; };
template <int R> struct Q6 { static void run(const uint8_t* w, const uint8_t* a, int64_t s, int64_t k, float* o) { dot_q6k_rows<R>(w, a, s, k, o); } };
template <int T> struct Flt { template <int R> struct K { static void run(const uint8_t* w, const uint8_t* a, int64_t s, int64_t k, float* o) { dot_float_rows<T, R>(w, a, s, k, o); } }; };

}  // namespace

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

void fill_avx2(Variant* v) {
  fill_generic(v);  // Q8_K quantization stays the portable one: once per product, a small share of the time
  v->name = "avx2";
  v->quantize_a8 = quantize_a8;
  v->dot[F32] = dot_rows<Flt<F32>::K>;
  v->dot[F16] = dot_rows<Flt<F16>::K>;
  v->dot[BF16] = dot_rows<Flt<BF16>::K>;
  v->dot[Q4_0] = dot_rows<Legacy<Q4_0>::K>;
  v->dot[Q4_1] = dot_rows<Legacy<Q4_1>::K>;
  v->dot[Q5_0] = dot_rows<Legacy<Q5_0>::K>;
  v->dot[Q5_1] = dot_rows<Legacy<Q5_1>::K>;
  v->dot[Q8_0] = dot_rows<Legacy<Q8_0>::K>;
  v->dot_w[Q4_0] = dot_legacy_wrows<Q4_0>;
  v->dot_w[Q4_1] = dot_legacy_wrows<Q4_1>;
  v->dot_w[Q5_0] = dot_legacy_wrows<Q5_0>;
  v->dot_w[Q5_1] = dot_legacy_wrows<Q5_1>;
  v->dot_w[Q8_0] = dot_legacy_wrows<Q8_0>;
  v->dot[Q4_K] = dot_rows<K4<Q4_K>::K>;
  v->dot[Q5_K] = dot_rows<K4<Q5_K>::K>;
  v->dot[Q6_K] = dot_rows<Q6>;
}

}  // namespace gu

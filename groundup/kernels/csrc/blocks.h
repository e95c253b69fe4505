// The block formats the products read, the 8-bit activation blocks they multiply them with, and the table of
// one instruction-set variant's functions. Weight blocks are llama.cpp's (ggml's) byte layouts, read as the
// file stores them; activation blocks are groundup's own (aligned, scales already as float).
#pragma once
#include <cstdint>
#include <cstring>

namespace gu {

// ggml type ids of the weight formats the products read
enum : int { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13,
             Q6_K = 14, BF16 = 30 };

// A row of activation blocks of 32 values, paired with the 32-value weight formats: the nb scales d, the nb
// sums s, the nb integer sums of the codes, then the nb x 32 codes (44 bytes a block). d is rounded through
// fp16 and s = fp16(d * sum q), as llama.cpp's Q8_0 / Q8_1 hold them, so a product equals one computed from
// those. Scales apart from codes: a kernel loads eight blocks' scales with one instruction; the integer sums
// let a format with an offset (Q4_0: q - 8) multiply its unsigned codes and subtract offset * sum once.
constexpr int A8_BYTES = 44;
struct A8Row {
  float* d;
  float* s;
  int32_t* sum;
  int8_t* qs;  // block b at qs + 32 b
  A8Row(uint8_t* row, int64_t nb)
      : d(reinterpret_cast<float*>(row)), s(reinterpret_cast<float*>(row) + nb),
        sum(reinterpret_cast<int32_t*>(row) + 2 * nb), qs(reinterpret_cast<int8_t*>(row + 12 * nb)) {}
};
struct A8View {
  const float* d;
  const float* s;
  const int32_t* sum;
  const int8_t* qs;
  A8View(const uint8_t* row, int64_t nb)
      : d(reinterpret_cast<const float*>(row)), s(reinterpret_cast<const float*>(row) + nb),
        sum(reinterpret_cast<const int32_t*>(row) + 2 * nb), qs(reinterpret_cast<const int8_t*>(row + 12 * nb)) {}
};

// One activation super-block of 256 values, paired with the k-quants (llama.cpp's Q8_K): sums of every 16
// codes, for the k-quants' minima and Q6_K's offset of 32.
struct AK {
  float d;
  int16_t bsums[16];
  int8_t qs[256];
};
static_assert(sizeof(AK) == 292, "AK is 292 bytes");

inline float half_to_float(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
}

inline float round_through_half(float x) { return static_cast<float>(static_cast<_Float16>(x)); }

inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t read_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// 6-bit scale and minimum j (0..7) of a Q4_K / Q5_K super-block's 12 packed bytes
inline void scale_min_k4(const uint8_t* s, int j, int* scale, int* minimum) {
  if (j < 4) {
    *scale = s[j] & 63;
    *minimum = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *minimum = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Bytes of one weight block and the values it holds.
constexpr int block_values(int type) { return type == Q4_K || type == Q5_K || type == Q6_K ? 256 : type <= F16 || type == BF16 ? 1 : 32; }
constexpr int block_bytes(int type) {
  switch (type) {
    case F32: return 4;
    case F16: case BF16: return 2;
    case Q4_0: return 18;
    case Q4_1: return 20;
    case Q5_0: return 22;
    case Q5_1: return 24;
    case Q8_0: return 34;
    case Q4_K: return 144;
    case Q5_K: return 176;
    case Q6_K: return 210;
    default: return 0;
  }
}

// Which activation a weight format multiplies: 0 float32 rows, 1 rows of 32-value blocks, 2 AK super-blocks.
inline int activation_kind(int type) {
  if (type == F32 || type == F16 || type == BF16) return 0;
  return type == Q4_K || type == Q5_K || type == Q6_K ? 2 : 1;
}

constexpr int MAX_ROWS = 4;  // activation rows one call of a dot function multiplies a weight row with

// dot(w, a, a_stride, rows, k, out): one weight row w (k values) against `rows` (1..MAX_ROWS) activation rows
// starting at a, each a_stride bytes apart; out[j] = sum_i w_i a_ji.
using DotFn = void (*)(const uint8_t* w, const uint8_t* a, int64_t a_stride, int rows, int64_t k, float* out);
// dot_w(w, w_stride, a, k, out): W_ROWS weight rows (w_stride bytes apart) against one activation row, the
// decode step's case: the activation's blocks and scales are loaded once for all of them; out[r] = sum_i w_ri a_i.
constexpr int W_ROWS = 4;
using DotWFn = void (*)(const uint8_t* w, int64_t w_stride, const uint8_t* a, int64_t k, float* out);
using QuantizeFn = void (*)(const float* x, uint8_t* y, int64_t k);

// One instruction-set variant: its quantizers, a dot function per weight type (null: not offered) and,
// optionally, a W_ROWS-weight-row one for single activation rows.
struct Variant {
  const char* name;
  QuantizeFn quantize_a8;
  QuantizeFn quantize_ak;
  DotFn dot[31];
  DotWFn dot_w[31];
};

void fill_generic(Variant* v);
void fill_avx2(Variant* v);
bool cpu_has_avx2();

}  // namespace gu

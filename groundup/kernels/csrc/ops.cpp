// The torch operators over the variants: groundup::ggml_mm (x times a matrix stored as ggml blocks),
// groundup::quantize_activations (the 8-bit activation blocks, for the tests), groundup::use_variant.
// Threads come from torch's pool (at::parallel_for), so torch.set_num_threads governs them.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "blocks.h"

namespace gu {
namespace {

std::vector<Variant> build_variants() {
  std::vector<Variant> out;
  Variant g{};
  fill_generic(&g);
  out.push_back(g);
  if (cpu_has_avx2()) {
    Variant v{};
    fill_avx2(&v);
    out.push_back(v);
  }
  return out;
}

const std::vector<Variant>& variants() {
  static const std::vector<Variant> all = build_variants();
  return all;
}

std::atomic<int> active{-1};

const Variant& current() {
  int i = active.load();
  if (i < 0) {
    i = static_cast<int>(variants().size()) - 1;  // the widest the CPU has
    active.store(i);
  }
  return variants()[i];
}

// The activation rows as the blocks type `type` multiplies: [M, bytes] uint8 (a float copy for float types)
at::Tensor activations(const at::Tensor& x, int kind, const Variant& v) {
  const int64_t m = x.size(0), k = x.size(1);
  if (kind == 0) return x;
  const int64_t per = kind == 1 ? 32 : 256, bytes = kind == 1 ? A8_BYTES : static_cast<int64_t>(sizeof(AK));
  at::Tensor out = at::empty({m, k / per * bytes}, x.options().dtype(at::kByte));
  const float* src = x.data_ptr<float>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const QuantizeFn q = kind == 1 ? v.quantize_a8 : v.quantize_ak;
  at::parallel_for(0, m, 8, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) q(src + r * k, dst + r * out.size(1), k);
  });
  return out;
}

void check_input(const at::Tensor& x, int64_t type) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "groundup::ggml_mm: x must be a contiguous float32 CPU matrix [M, K], got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(type >= 0 && type < 31 && block_bytes(static_cast<int>(type)) > 0 && current().dot[type] != nullptr,
              "groundup::ggml_mm: ggml type ", type, " is not supported");
  TORCH_CHECK(x.size(1) % block_values(static_cast<int>(type)) == 0, "groundup::ggml_mm: K=", x.size(1),
              " is not a multiple of the block of type ", type, " (", block_values(static_cast<int>(type)), ")");
}

at::Tensor ggml_mm(const at::Tensor& x, const at::Tensor& w, int64_t type) {
  check_input(x, type);
  const int t = static_cast<int>(type);
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  const int64_t row_bytes = k / block_values(t) * block_bytes(t);
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() && w.size(1) == row_bytes,
              "groundup::ggml_mm: blocks must be contiguous uint8 [N, ", row_bytes, "] for K=", k, ", got ", w.sizes());
  const Variant& v = current();
  const at::Tensor a = activations(x, activation_kind(t), v);
  const int64_t stride = a.size(1) * a.element_size();
  at::Tensor y = at::empty({m, n}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const uint8_t* ap = static_cast<const uint8_t*>(a.data_ptr());
  float* yp = y.data_ptr<float>();
  const DotFn dot = v.dot[t];
  constexpr int64_t TILE = 8;  // weight rows kept hot in L1 while every group of activation rows passes them
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    float tmp[MAX_ROWS];
    for (int64_t n0 = begin; n0 < end; n0 += TILE) {
      const int64_t n1 = std::min(end, n0 + TILE);
      for (int64_t r = 0; r < m; r += MAX_ROWS) {
        const int rows = static_cast<int>(std::min<int64_t>(MAX_ROWS, m - r));
        for (int64_t c = n0; c < n1; ++c) {
          dot(wp + c * row_bytes, ap + r * stride, stride, rows, k, tmp);
          for (int j = 0; j < rows; ++j) yp[(r + j) * n + c] = tmp[j];
        }
      }
    }
  });
  return y;
}

at::Tensor quantize_activations(const at::Tensor& x, int64_t kind) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be contiguous float32 [M, K]");
  TORCH_CHECK(kind == 1 || kind == 2, "kind must be 1 (32-value blocks) or 2 (256-value super-blocks)");
  TORCH_CHECK(x.size(1) % (kind == 1 ? 32 : 256) == 0, "K=", x.size(1), " is not a multiple of the block");
  return activations(x, static_cast<int>(kind), current());
}

// Select a variant by name ("" keeps the current one); returns the active name. Names: generic, avx2.
std::string use_variant(const std::string& name) {
  if (!name.empty()) {
    const auto& all = variants();
    auto it = std::find_if(all.begin(), all.end(), [&](const Variant& v) { return name == v.name; });
    TORCH_CHECK(it != all.end(), "kernel variant '", name, "' is not available on this CPU");
    active.store(static_cast<int>(it - all.begin()));
  }
  return current().name;
}

std::vector<std::string> available() {
  std::vector<std::string> out;
  for (const auto& v : variants()) out.emplace_back(v.name);
  return out;
}

}  // namespace
}  // namespace gu

TORCH_LIBRARY(groundup, m) {
  m.def("ggml_mm(Tensor x, Tensor blocks, int type) -> Tensor");
  m.def("quantize_activations(Tensor x, int kind) -> Tensor");
  m.def("use_variant(str name) -> str");
  m.def("available_variants() -> str[]");
}

TORCH_LIBRARY_IMPL(groundup, CPU, m) {
  m.impl("ggml_mm", &gu::ggml_mm);
  m.impl("quantize_activations", &gu::quantize_activations);
}

TORCH_LIBRARY_IMPL(groundup, CatchAll, m) {
  m.impl("use_variant", &gu::use_variant);
  m.impl("available_variants", &gu::available);
}

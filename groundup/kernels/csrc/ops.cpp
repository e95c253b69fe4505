// The torch operators over the variants: groundup::ggml_mm (x times a matrix stored as ggml blocks),
// groundup::ggml_mm_many (x times several such matrices, quantized once),
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

// One product's operands: rows [begin, end) of y = x W^T are computed by multiply_rows
struct Product {
  const uint8_t* w;  // the matrix's blocks, row_bytes a row
  int64_t row_bytes;
  const uint8_t* a;  // the activation rows (8-bit blocks or float), stride bytes apart
  int64_t stride;
  float* y;  // [m, n]
  int64_t m, n, k;
  DotFn dot;
  DotWFn dot_w;
};

void multiply_rows(const Product& p, int64_t begin, int64_t end) {
  if (p.m == 1 && p.dot_w != nullptr) {  // decode: W_ROWS weight rows at a time share the activation's loads
    int64_t c = begin;
    for (; c + W_ROWS <= end; c += W_ROWS) p.dot_w(p.w + c * p.row_bytes, p.row_bytes, p.a, p.k, p.y + c);
    for (; c < end; ++c) p.dot(p.w + c * p.row_bytes, p.a, p.stride, 1, p.k, p.y + c);
    return;
  }
  constexpr int64_t TILE = 8;  // weight rows kept hot in L1 while every group of activation rows passes them
  float tmp[MAX_ROWS];
  for (int64_t n0 = begin; n0 < end; n0 += TILE) {
    const int64_t n1 = std::min(end, n0 + TILE);
    for (int64_t r = 0; r < p.m; r += MAX_ROWS) {
      const int rows = static_cast<int>(std::min<int64_t>(MAX_ROWS, p.m - r));
      for (int64_t c = n0; c < n1; ++c) {
        p.dot(p.w + c * p.row_bytes, p.a + r * p.stride, p.stride, rows, p.k, tmp);
        for (int j = 0; j < rows; ++j) p.y[(r + j) * p.n + c] = tmp[j];
      }
    }
  }
}

// The checked operands of x times one matrix; `acts` caches the activation rows by kind, so products that
// share x quantize it once
Product product(const at::Tensor& x, const at::Tensor& w, int64_t type, at::Tensor (&acts)[3], at::Tensor& y) {
  check_input(x, type);
  const int t = static_cast<int>(type);
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  const int64_t row_bytes = k / block_values(t) * block_bytes(t);
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() && w.size(1) == row_bytes,
              "groundup::ggml_mm: blocks must be contiguous uint8 [N, ", row_bytes, "] for K=", k, ", got ", w.sizes());
  const Variant& v = current();
  const int kind = activation_kind(t);
  if (!acts[kind].defined()) acts[kind] = activations(x, kind, v);
  const at::Tensor& a = acts[kind];
  y = at::empty({m, n}, x.options());
  return Product{w.data_ptr<uint8_t>(), row_bytes, static_cast<const uint8_t*>(a.data_ptr()),
                 a.size(1) * static_cast<int64_t>(a.element_size()), y.data_ptr<float>(), m, n, k, v.dot[t], v.dot_w[t]};
}

at::Tensor ggml_mm(const at::Tensor& x, const at::Tensor& w, int64_t type) {
  at::Tensor acts[3], y;
  const Product p = product(x, w, type, acts, y);
  at::parallel_for(0, p.n, 16, [&](int64_t begin, int64_t end) { multiply_rows(p, begin, end); });
  return y;
}

// x times several matrices (q, k and v; gate and up): the activations quantized once, and one parallel
// region over all their rows, in chunks, so small matrices do not each pay a fork and join
std::vector<at::Tensor> ggml_mm_many(const at::Tensor& x, at::TensorList ws, at::IntArrayRef types) {
  TORCH_CHECK(!ws.empty() && ws.size() == types.size(), "groundup::ggml_mm_many: give one type per matrix, got ",
              ws.size(), " matrices and ", types.size(), " types");
  at::Tensor acts[3];
  std::vector<at::Tensor> ys(ws.size());
  std::vector<Product> ps;
  for (size_t i = 0; i < ws.size(); ++i) ps.push_back(product(x, ws[i], types[i], acts, ys[i]));
  constexpr int64_t CHUNK = 32;  // rows a task: a multiple of W_ROWS
  std::vector<std::pair<size_t, int64_t>> tasks;  // (matrix, first row)
  for (size_t i = 0; i < ps.size(); ++i)
    for (int64_t r = 0; r < ps[i].n; r += CHUNK) tasks.emplace_back(i, r);
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const Product& p = ps[tasks[t].first];
      multiply_rows(p, tasks[t].second, std::min(p.n, tasks[t].second + CHUNK));
    }
  });
  return ys;
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
  m.def("ggml_mm_many(Tensor x, Tensor[] blocks, int[] types) -> Tensor[]");
  m.def("quantize_activations(Tensor x, int kind) -> Tensor");
  m.def("use_variant(str name) -> str");
  m.def("available_variants() -> str[]");
}

TORCH_LIBRARY_IMPL(groundup, CPU, m) {
  m.impl("ggml_mm", &gu::ggml_mm);
  m.impl("ggml_mm_many", &gu::ggml_mm_many);
  m.impl("quantize_activations", &gu::quantize_activations);
}

TORCH_LIBRARY_IMPL(groundup, CatchAll, m) {
  m.impl("use_variant", &gu::use_variant);
  m.impl("available_variants", &gu::available);
}

// bf16 linear layers for CPU decode: y (M, N) = x (M, K) @ W^T (+ bias), weights streamed once per call.
//
// Why by hand: at the row counts of decode and verify (M = 1..64) a step is bound by streaming the weights, and
// oneDNN's bf16 GEMM measured ~12 GB/s on that shape (SmolLM2-135M: 21.6 ms of a 35 ms step for 269 MB) against
// ~20 GB/s for llama.cpp's kernels on the same core.
//
// Layout: W (N, K) is packed once at load into groups of 64 outputs, `packed (G, K/2, 64, 2)` bf16 with
// G = ceil(N / 64) (padding outputs are zero): entry [g, p, j, s] = W[64 g + j, 2 p + s]. One group is one sequential
// stream of K * 128 bytes, read as K/2 steps of four 64-byte vectors (16 outputs x one k-pair each).
//
// Numerics: every output is one fp32 accumulator fed k-pair by k-pair in order (AVX512-BF16 `vdpbf16ps`: exact
// products, round-to-nearest sums), plus the bias in fp32, rounded once to bf16. That sequence does not depend on M,
// on which rows share a tile, or on how threads split the groups, so a row's result is the same bits in any batch
// (the batch invariance engine/models/invariant_attention.py relies on).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels.h"

namespace specserve_native {
namespace {

constexpr int64_t kGroup = 64;  // outputs per group: four zmm of 16 fp32 accumulators
constexpr int kMaxRows = 6;     // rows per tile: 6 x 4 accumulators + 4 weight vectors + 1 broadcast <= 32 zmm

#define SPECSERVE_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// One tile: `MR` rows of x against one 64-output group. x rows are `ldx` elements apart; `w` points at the group.
template <int MR>
SPECSERVE_AVX512_BF16 inline void tile(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t kp_count,
                                       const float* bias, uint16_t* out, int64_t ldo, int64_t n_valid) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp_count; ++p) {
    const uint16_t* wp = w + p * (kGroup * 2);
    __m512bh wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(wp + j * 32);
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + r * ldx + 2 * p, sizeof(pair));  // (x[2p], x[2p+1]) as one 32-bit lane
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv[j], xb);
    }
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t n0 = j * 16;
    if (n0 >= n_valid) break;
    const __mmask16 keep = n_valid - n0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n_valid - n0)) - 1);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(keep, bias + n0) : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) {
      const __m256bh y = _mm512_cvtneps_pbh(_mm512_add_ps(acc[r][j], b));
      _mm256_mask_storeu_epi16(out + r * ldo + n0, keep, (__m256i)y);
    }
  }
}

SPECSERVE_AVX512_BF16 void tile_rows(int rows, const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t kp_count,
                                     const float* bias, uint16_t* out, int64_t ldo, int64_t n_valid) {
  switch (rows) {
    case 1: return tile<1>(x, ldx, w, kp_count, bias, out, ldo, n_valid);
    case 2: return tile<2>(x, ldx, w, kp_count, bias, out, ldo, n_valid);
    case 3: return tile<3>(x, ldx, w, kp_count, bias, out, ldo, n_valid);
    case 4: return tile<4>(x, ldx, w, kp_count, bias, out, ldo, n_valid);
    case 5: return tile<5>(x, ldx, w, kp_count, bias, out, ldo, n_valid);
    default: return tile<6>(x, ldx, w, kp_count, bias, out, ldo, n_valid);
  }
}

}  // namespace

bool cpu_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

void linear_into(const uint16_t* x, int64_t ldx, int64_t rows, const uint16_t* packed, int64_t k,
                 const float* bias, int64_t n_out, uint16_t* y, int64_t ldy) {
  const int64_t kp_count = k / 2, groups = (n_out + kGroup - 1) / kGroup, group_elems = kp_count * kGroup * 2;
  // Threads split the groups; every tile of a group re-reads its weights from cache, not memory.
  at::parallel_for(0, groups, 1, [&](int64_t g_begin, int64_t g_end) {
    for (int64_t g = g_begin; g < g_end; ++g) {
      const int64_t n0 = g * kGroup, n_valid = std::min(kGroup, n_out - n0);
      for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows) {
        const int mr = static_cast<int>(std::min<int64_t>(kMaxRows, rows - r0));
        tile_rows(mr, x + r0 * ldx, ldx, packed + g * group_elems, kp_count, bias ? bias + n0 : nullptr,
                  y + r0 * ldy + n0, ldy, n_valid);
      }
    }
  });
}

namespace {

// x (M, K) bf16, packed (G, K/2, 64, 2) bf16, bias (N,) fp32 or none -> (M, N) bf16.
at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                       int64_t n_out) {
  TORCH_CHECK(cpu_supported(), "specserve::linear_bf16 needs AVX512-BF16");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.device().is_cpu(), "x must be 2-D bf16 on CPU");
  TORCH_CHECK(packed.dim() == 4 && packed.scalar_type() == at::kBFloat16 && packed.is_contiguous() &&
                  packed.size(2) == kGroup && packed.size(3) == 2,
              "packed must be a contiguous (G, K/2, 64, 2) bf16 tensor from pack_weight");
  const int64_t rows = x.size(0), k = x.size(1), groups = packed.size(0), kp_count = packed.size(1);
  TORCH_CHECK(k == 2 * kp_count, "x has K = ", k, ", the packed weight K = ", 2 * kp_count);
  TORCH_CHECK(n_out > (groups - 1) * kGroup && n_out <= groups * kGroup, "n_out does not match the packed weight");
  TORCH_CHECK(x.stride(1) == 1, "x rows must be contiguous");
  const float* bias_ptr = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n_out,
                "bias must be a contiguous (N,) float32 tensor");
    bias_ptr = bias->data_ptr<float>();
  }
  at::Tensor out = at::empty({rows, n_out}, x.options());
  if (rows == 0) return out;
  linear_into(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), x.stride(0), rows,
              reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>()), k, bias_ptr, n_out,
              reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()), n_out);
  return out;
}

bool supported() { return cpu_supported(); }

}  // namespace
}  // namespace specserve_native

TORCH_LIBRARY_FRAGMENT(specserve_native, m) {
  m.def("linear_bf16(Tensor x, Tensor packed, Tensor? bias, int n_out) -> Tensor", &specserve_native::linear_bf16);
  m.def("supported() -> bool", &specserve_native::supported);
}

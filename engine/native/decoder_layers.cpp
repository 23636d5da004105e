// The decoder layers of a Llama-family model in one call: the torch runner's bf16 CPU step without the interpreter.
//
// Per layer, for T tokens (all rows of a step, flattened; token i belongs to KV slot slots[i] at positions[i]):
//   h = rmsnorm(x) -> bf16;  qkv = h W_qkv^T;  RoPE on the q and k heads;  K/V written to the cache;
//   a = attention(q, cache[slot, :, 0..pos]);  x += a W_o^T;  h = rmsnorm(x);  x += (silu(g) * u) W_down^T
// with x the fp32 residual stream (T, hidden) updated in place, and bf16 weights through linear_into.
//
// Why one call: the eager step spends ~35 small ATen ops per layer between its matmuls, with interpreter time between
// each (SmolLM2-135M, 30 layers: ~11 ms of a 23 ms batch-1 step once the matmuls streamed at memory speed).
//
// Numerics (the same at every batch size, verify length and prefill chunking, because every token row and every
// (token, query head) pair runs the same instruction sequence whoever shares the call):
// - RMSNorm: sum of squares in 16 fp32 lanes in order, lanes summed in a fixed tree, x * rsqrt(mean + eps) * w in
//   fp32, rounded once to bf16;
// - RoPE in fp32 on the bf16 q/k, rounded once; cos/sin in fp32 from position * inv_freq (std::cos / std::sin);
// - scores q.k in fp32 (exact bf16 products, `vdpbf16ps`), times 1/sqrt(D); softmax in fp32 with a fixed
//   polynomial exp; out = sum_t p_t v_t / sum_t p_t in fp32, keys in order, rounded once to bf16;
// - silu(g) * u in fp32, rounded once.
// A padding token (position == scratch) writes its K/V to the scratch position like the eager path and attends
// nothing: its output row is zeros and is never read.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace specserve_native {
namespace {

#define SPECSERVE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

SPECSERVE_AVX512 inline __m512 load_bf16(const uint16_t* p) {  // 16 bf16 -> 16 fp32 (exact)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

SPECSERVE_AVX512 inline void store_bf16(uint16_t* p, __m512 v) {  // 16 fp32 -> 16 bf16, round to nearest even
  _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh(v));
}

inline uint16_t to_bf16(float f) {  // scalar round to nearest even (finite inputs)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

inline float from_bf16(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// exp(x) for x <= 0 (softmax after subtracting the max): 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], p of degree 6
// (Cephes' expf coefficients); ~2 ulp. Inputs below -87 give 0.
SPECSERVE_AVX512 inline __m512 exp_nonpositive(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(~tiny, _mm512_scalef_ps(p, n));
}

// out (hidden,) bf16 = x * rsqrt(mean(x^2) + eps) * w; hidden % 16 == 0.
SPECSERVE_AVX512 void rmsnorm_row(const float* x, const float* w, int64_t hidden, float eps, uint16_t* out) {
  __m512 ss = _mm512_setzero_ps();
  for (int64_t d = 0; d < hidden; d += 16) {
    const __m512 v = _mm512_loadu_ps(x + d);
    ss = _mm512_fmadd_ps(v, v, ss);
  }
  const float inv = 1.0f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(hidden) + eps);
  const __m512 s = _mm512_set1_ps(inv);
  for (int64_t d = 0; d < hidden; d += 16)
    store_bf16(out + d, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + d), s), _mm512_loadu_ps(w + d)));
}

// In place on one head (D,) bf16: out[d] = x[d] c[d] - x[d + D/2] s[d]; out[d + D/2] = x[d + D/2] c[d] + x[d] s[d].
inline void rope_head(uint16_t* x, const float* c, const float* s, int64_t half) {
  for (int64_t d = 0; d < half; ++d) {
    const float a = from_bf16(x[d]), b = from_bf16(x[d + half]);
    const float ra = a * c[d] - b * s[d], rb = b * c[d] + a * s[d];
    x[d] = to_bf16(ra);
    x[d + half] = to_bf16(rb);
  }
}

// x (hidden,) += y (hidden,) bf16, widened exactly.
SPECSERVE_AVX512 void add_bf16_row(float* x, const uint16_t* y, int64_t hidden) {
  for (int64_t d = 0; d < hidden; d += 16) _mm512_storeu_ps(x + d, _mm512_add_ps(_mm512_loadu_ps(x + d), load_bf16(y + d)));
}

// NOTE: the lambdas given to at::parallel_for do not inherit a target attribute, so they only call attributed functions.
void add_bf16_rows(float* x, const uint16_t* y, int64_t rows, int64_t hidden) {
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) add_bf16_row(x + r * hidden, y + r * hidden, hidden);
  });
}

// act (I,) bf16 = silu(g) * u in fp32 from one row gu (2I,) bf16 = [g | u].
SPECSERVE_AVX512 void silu_mul_row(const uint16_t* g, int64_t inter, uint16_t* act) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t d = 0; d < inter; d += 16) {
    const __m512 gv = load_bf16(g + d), uv = load_bf16(g + inter + d);
    // silu(g) = g * sigmoid(g); e = exp(-|g|) keeps the argument non-positive, then the sigmoid's two branches
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(gv)));
    const __m512 sig_pos = _mm512_div_ps(one, _mm512_add_ps(one, e));  // g >= 0: 1 / (1 + e^-g)
    const __m512 sig_neg = _mm512_div_ps(e, _mm512_add_ps(one, e));    // g < 0: e^g / (1 + e^g)
    const __mmask16 neg = _mm512_cmp_ps_mask(gv, _mm512_setzero_ps(), _CMP_LT_OQ);
    store_bf16(act + d, _mm512_mul_ps(_mm512_mul_ps(gv, _mm512_mask_mov_ps(sig_pos, neg, sig_neg)), uv));
  }
}

void silu_mul_rows(const uint16_t* gu, int64_t rows, int64_t inter, uint16_t* act) {
  at::parallel_for(0, rows, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) silu_mul_row(gu + r * 2 * inter, inter, act + r * inter);
  });
}

// One token, one KV head: the G query heads sharing it attend keys 0..last of their slot.
// q (G, D) bf16 (rotated) -> out (G, D) bf16; keys/values (T_cap, D) bf16 for this slot and head; D % 32 == 0.
SPECSERVE_AVX512 void attend(const uint16_t* q, int64_t groups, const uint16_t* keys, const uint16_t* values,
                             int64_t last, int64_t dim, float scale, float* scores, uint16_t* out) {
  const int64_t n = last + 1, n_pad = (n + 15) / 16 * 16;
  for (int64_t g = 0; g < groups; ++g) {
    const uint16_t* qg = q + g * dim;
    float* sc = scores + g * n_pad;
    for (int64_t t = 0; t < n; ++t) {  // scores: D/32 pair-dot-products per key, in order
      const uint16_t* k = keys + t * dim;
      __m512 acc = _mm512_setzero_ps();
      for (int64_t d = 0; d < dim; d += 32)
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(k + d), (__m512bh)_mm512_loadu_si512(qg + d));
      sc[t] = _mm512_reduce_add_ps(acc) * scale;
    }
    for (int64_t t = n; t < n_pad; ++t) sc[t] = -INFINITY;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t t = 0; t < n_pad; t += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(sc + t));
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t t = 0; t < n_pad; t += 16) {
      const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sc + t), m));  // padded lanes: exp(-inf) = 0
      _mm512_storeu_ps(sc + t, e);
      sum = _mm512_add_ps(sum, e);
    }
    const float inv_sum = 1.0f / _mm512_reduce_add_ps(sum);
    __m512 acc[8];  // dim <= 128
    const int64_t nv = dim / 16;
    for (int64_t j = 0; j < nv; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; ++t) {
      const __m512 p = _mm512_set1_ps(sc[t]);
      const uint16_t* v = values + t * dim;
      for (int64_t j = 0; j < nv; ++j) acc[j] = _mm512_fmadd_ps(p, load_bf16(v + 16 * j), acc[j]);
    }
    const __m512 is = _mm512_set1_ps(inv_sum);
    for (int64_t j = 0; j < nv; ++j) store_bf16(out + g * dim + 16 * j, _mm512_mul_ps(acc[j], is));
  }
}

struct Shapes {
  int64_t tokens, hidden, heads, kv_heads, dim, inter, qkv, slots_cap, t_cap;
};

void check_inputs(const at::Tensor& x, const at::Tensor& slots, const at::Tensor& positions,
                  const at::Tensor& k_cache, const at::Tensor& v_cache, int64_t heads, int64_t kv_heads,
                  int64_t dim) {
  TORCH_CHECK(cpu_supported(), "specserve::decoder_layers needs AVX512-BF16");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be (T, hidden) fp32");
  TORCH_CHECK(slots.scalar_type() == at::kLong && positions.scalar_type() == at::kLong && slots.is_contiguous() &&
                  positions.is_contiguous() && slots.numel() == x.size(0) && positions.numel() == x.size(0),
              "slots and positions must be contiguous (T,) int64");
  TORCH_CHECK(k_cache.dim() == 5 && k_cache.scalar_type() == at::kBFloat16 && k_cache.is_contiguous() &&
                  v_cache.sizes() == k_cache.sizes() && v_cache.is_contiguous() &&
                  v_cache.scalar_type() == at::kBFloat16,
              "caches must be contiguous (layers, slots, kv_heads, T, D) bf16");
  TORCH_CHECK(k_cache.size(2) == kv_heads && k_cache.size(4) == dim, "cache heads/dim do not match the model");
  TORCH_CHECK(dim % 32 == 0 && dim <= 128 && heads % kv_heads == 0 && x.size(1) % 16 == 0,
              "shapes not covered (need head_dim % 32 == 0, <= 128, hidden % 16 == 0)");
}

// Per layer l: norms[2l], norms[2l+1] fp32 (hidden,); packed[4l..4l+3] = qkv, o, gate_up, down from pack_weight;
// biases[4l..4l+3] fp32 or empty; n_out[4l..4l+3] their output sizes.
void decoder_layers(at::Tensor x, const at::Tensor& slots, const at::Tensor& positions, const at::Tensor& inv_freq,
                    at::Tensor k_cache, at::Tensor v_cache, at::TensorList norms, at::TensorList packed,
                    at::TensorList biases, at::IntArrayRef n_out, int64_t heads, int64_t kv_heads, int64_t dim,
                    double eps, int64_t scratch_pos) {
  check_inputs(x, slots, positions, k_cache, v_cache, heads, kv_heads, dim);
  const int64_t layers = k_cache.size(0);
  TORCH_CHECK(norms.size() == static_cast<size_t>(2 * layers) && packed.size() == static_cast<size_t>(4 * layers) &&
                  biases.size() == packed.size() && n_out.size() == packed.size(),
              "expected 2 norms and 4 linears per layer");
  TORCH_CHECK(inv_freq.scalar_type() == at::kFloat && inv_freq.numel() == dim / 2, "inv_freq must be (D/2,) fp32");
  Shapes s{x.size(0), x.size(1), heads, kv_heads, dim, n_out[2] / 2, n_out[0], k_cache.size(1), k_cache.size(3)};
  TORCH_CHECK(s.qkv == (heads + 2 * kv_heads) * dim && n_out[1] == s.hidden && n_out[3] == s.hidden &&
                  s.inter % 16 == 0,
              "linear sizes do not match the attention shapes");
  const int64_t T = s.tokens, half = dim / 2, groups = heads / kv_heads;
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t i = 0; i < T; ++i)
    TORCH_CHECK(slot[i] >= 0 && slot[i] < s.slots_cap && pos[i] >= 0 && pos[i] < s.t_cap && pos[i] <= scratch_pos,
                "token ", i, " has slot ", slot[i], " position ", pos[i], " outside the cache");

  // cos/sin (T, D/2) fp32, once for every layer.
  std::vector<float> cos_t(T * half), sin_t(T * half);
  const float* inv = inv_freq.data_ptr<float>();
  for (int64_t i = 0; i < T; ++i)
    for (int64_t d = 0; d < half; ++d) {
      const float a = static_cast<float>(pos[i]) * inv[d];
      cos_t[i * half + d] = std::cos(a);
      sin_t[i * half + d] = std::sin(a);
    }
  int64_t max_pos = 0;
  for (int64_t i = 0; i < T; ++i)
    if (pos[i] != scratch_pos && pos[i] > max_pos) max_pos = pos[i];
  const int64_t n_pad = (max_pos + 1 + 15) / 16 * 16;

  auto bf16 = x.options().dtype(at::kBFloat16);
  at::Tensor h = at::empty({T, s.hidden}, bf16), qkv = at::empty({T, s.qkv}, bf16);
  at::Tensor attn = at::empty({T, heads * dim}, bf16), proj = at::empty({T, s.hidden}, bf16);
  at::Tensor gu = at::empty({T, 2 * s.inter}, bf16), act = at::empty({T, s.inter}, bf16);
  auto u16 = [](const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); };
  auto cu16 = [](const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); };
  auto bias_of = [&](int64_t i) -> const float* {
    const at::Tensor& b = biases[i];
    if (!b.defined() || b.numel() == 0) return nullptr;
    TORCH_CHECK(b.scalar_type() == at::kFloat && b.is_contiguous() && b.numel() == n_out[i], "bad bias ", i);
    return b.data_ptr<float>();
  };
  float* xp = x.data_ptr<float>();
  uint16_t *hp = u16(h), *qkvp = u16(qkv), *attnp = u16(attn), *projp = u16(proj), *gup = u16(gu), *actp = u16(act);
  uint16_t *kc = u16(k_cache), *vc = u16(v_cache);
  const int64_t slot_stride = kv_heads * s.t_cap * dim, layer_stride = s.slots_cap * slot_stride;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));

  for (int64_t l = 0; l < layers; ++l) {
    const float* w_in = norms[2 * l].data_ptr<float>();
    const float* w_post = norms[2 * l + 1].data_ptr<float>();
    at::parallel_for(0, T, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) rmsnorm_row(xp + r * s.hidden, w_in, s.hidden, eps, hp + r * s.hidden);
    });
    linear_into(hp, s.hidden, T, cu16(packed[4 * l]), s.hidden, bias_of(4 * l), s.qkv, qkvp, s.qkv);
    uint16_t* kl = kc + l * layer_stride;
    uint16_t* vl = vc + l * layer_stride;
    // RoPE on the q and k heads, then this layer's K/V into the cache (before any read: a chunk sees itself).
    at::parallel_for(0, T, 4, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        uint16_t* row = qkvp + i * s.qkv;
        for (int64_t hd = 0; hd < heads + kv_heads; ++hd)
          rope_head(row + hd * dim, &cos_t[i * half], &sin_t[i * half], half);
        for (int64_t kh = 0; kh < kv_heads; ++kh) {
          const int64_t off = slot[i] * slot_stride + (kh * s.t_cap + pos[i]) * dim;
          std::memcpy(kl + off, row + (heads + kh) * dim, dim * sizeof(uint16_t));
          std::memcpy(vl + off, row + (heads + kv_heads + kh) * dim, dim * sizeof(uint16_t));
        }
      }
    });
    at::parallel_for(0, T * kv_heads, 1, [&](int64_t w0, int64_t w1) {
      std::vector<float> scores(groups * n_pad);
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t i = w / kv_heads, kh = w % kv_heads;
        uint16_t* out = attnp + i * heads * dim + kh * groups * dim;
        if (pos[i] == scratch_pos) {  // padding: attends nothing, its row is never read
          std::memset(out, 0, groups * dim * sizeof(uint16_t));
          continue;
        }
        const int64_t base = slot[i] * slot_stride + kh * s.t_cap * dim;
        attend(qkvp + i * s.qkv + kh * groups * dim, groups, kl + base, vl + base, pos[i], dim, scale,
               scores.data(), out);
      }
    });
    linear_into(attnp, heads * dim, T, cu16(packed[4 * l + 1]), heads * dim, bias_of(4 * l + 1), s.hidden, projp,
                s.hidden);
    add_bf16_rows(xp, projp, T, s.hidden);
    at::parallel_for(0, T, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) rmsnorm_row(xp + r * s.hidden, w_post, s.hidden, eps, hp + r * s.hidden);
    });
    linear_into(hp, s.hidden, T, cu16(packed[4 * l + 2]), s.hidden, bias_of(4 * l + 2), 2 * s.inter, gup,
                2 * s.inter);
    silu_mul_rows(gup, T, s.inter, actp);
    linear_into(actp, s.inter, T, cu16(packed[4 * l + 3]), s.inter, bias_of(4 * l + 3), s.hidden, projp, s.hidden);
    add_bf16_rows(xp, projp, T, s.hidden);
  }
}

// (T, hidden) fp32 -> (T, hidden) bf16 rmsnorm rows, the final norm before the head.
at::Tensor rmsnorm_bf16(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(cpu_supported(), "specserve::rmsnorm_bf16 needs AVX512-BF16");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.size(1) % 16 == 0 &&
                  w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == x.size(1),
              "rmsnorm_bf16 needs contiguous (T, hidden) fp32 x, hidden % 16 == 0, and an fp32 weight");
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const int64_t hidden = x.size(1);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, x.size(0), 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) rmsnorm_row(xp + r * hidden, wp, hidden, eps, op + r * hidden);
  });
  return out;
}

}  // namespace
}  // namespace specserve_native

TORCH_LIBRARY_FRAGMENT(specserve_native, m) {
  m.def(
      "decoder_layers(Tensor(a!) x, Tensor slots, Tensor positions, Tensor inv_freq, Tensor(b!) k_cache, "
      "Tensor(c!) v_cache, Tensor[] norms, Tensor[] packed, Tensor[] biases, int[] n_out, int heads, int kv_heads, "
      "int head_dim, float eps, int scratch_pos) -> ()",
      &specserve_native::decoder_layers);
  m.def("rmsnorm_bf16(Tensor x, Tensor w, float eps) -> Tensor", &specserve_native::rmsnorm_bf16);
}

// Shared declarations of the hand-written CPU kernels (see linear_bf16.cpp and decoder_layers.cpp).
#pragma once

#include <cstdint>

namespace specserve_native {

// y (rows, n_out) bf16 = x (rows, K) bf16 @ W^T + bias; W packed by engine/native/linear.py `pack_weight` into
// (ceil(n_out / 64), K / 2, 64, 2). x rows are `ldx` elements apart, y rows `ldy`. Threads split the output groups.
void linear_into(const uint16_t* x, int64_t ldx, int64_t rows, const uint16_t* packed, int64_t k,
                 const float* bias, int64_t n_out, uint16_t* y, int64_t ldy);

bool cpu_supported();

}  // namespace specserve_native

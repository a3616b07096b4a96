// lowp's CPU passes in C++: per-row and per-tensor int8 quantization, and the int8 GEMM epilogue, each one loop
// over its tensor where the pure-torch backend takes five to seven torch ops (a pass over memory and ~3 us of
// Python each). Bit-exact with lowp_ops.reference: the same float32 operations in the same order (no FMA
// contraction: built with -ffp-contract=off), round half to even (std::nearbyint in the default rounding mode),
// NaN and ±inf as the reference maps them. Built on first use by lowp_ops/cpu/native.py.
// ATen's vector types take their instruction set from CPU_CAPABILITY_*, which ATen's build sets per kernel file:
// here it follows what the compiler targets (-march=native on the machine that builds it), else scalar code.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2
#endif
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <vector>
#include <cmath>
#include <cstring>
#include <limits>

namespace {

// elements per parallel task: below it one thread does the work (an OpenMP fork and join costs a few us,
// more than a batch-1 layer's pass)
constexpr int64_t kGrain = 32768;
using Vec = at::vec::Vectorized<float>;
using IVec = at::vec::Vectorized<int32_t>;
constexpr int64_t kW = Vec::size();

// f(v) over n floats of src into dst, a vector at a time (the tail with partial loads and stores)
template <typename F>
inline void map(const float* src, float* dst, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kW <= n; i += kW) f(Vec::loadu(src + i)).store(dst + i);
  if (i < n) f(Vec::loadu(src + i, n - i)).store(dst + i, n - i);
}

// clamp(round_half_even(v) + zero_point, qmin, qmax) with NaN -> zero_point and ±inf saturating, as
// lowp_ops.cpu.quantize._round_clamp (nan_to_num, round, add, clamp); the result holds integers
inline Vec encode(Vec v, float zero_point, float qmin, float qmax) {
  v = Vec::blendv(v, Vec(0.0f), v.isnan());
  return at::vec::clamp(v.round() + Vec(zero_point), Vec(qmin), Vec(qmax));
}

// integral floats in [-128, 127] -> int8 (a loop the compiler vectorizes)
inline void narrow(const float* src, int8_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<int8_t>(static_cast<int32_t>(src[i]));
}

// x (M, K) float32, contiguous -> (q int8 (M, K), scale float32 (M,)): dynamic symmetric per row,
// scale = max(max(-min(row, 0), max(row, 0)) / 127, min_scale), NaN for a row holding NaN or ±inf
// (reference.quantize_rows with INT8_PER_TOKEN; lowp_ops.cpu.quantize.quantize_rows)
std::vector<at::Tensor> quantize_rows_dynamic(const at::Tensor& x, double min_scale) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "lowp native: x (M, K) float32");
  const int64_t M = x.size(0), K = x.size(1);
  auto q = at::empty({M, K}, x.options().dtype(at::kChar));
  auto scale = at::empty({M}, x.options());
  const float* xp = x.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  const float floor = static_cast<float>(min_scale);
  at::parallel_for(0, M, std::max<int64_t>(1, kGrain / std::max<int64_t>(K, 1)), [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(K);
    for (int64_t m = begin; m < end; ++m) {
      const float* row = xp + m * K;
      // the range widened to contain 0, and Σ v · 0: NaN once a NaN or ±inf passed, else 0
      Vec lo(0.0f), hi(0.0f), poison(0.0f);
      int64_t k = 0;
      for (; k + kW <= K; k += kW) {
        const Vec v = Vec::loadu(row + k);
        lo = at::vec::minimum(lo, v), hi = at::vec::maximum(hi, v), poison = poison + v * Vec(0.0f);
      }
      if (k < K) {  // the partial load fills with zeros, which change neither
        const Vec v = Vec::loadu(row + k, K - k);
        lo = at::vec::minimum(lo, v), hi = at::vec::maximum(hi, v), poison = poison + v * Vec(0.0f);
      }
      float l = 0.0f, h = 0.0f, p = 0.0f;
      float lanes[3][kW];
      lo.store(lanes[0]), hi.store(lanes[1]), poison.store(lanes[2]);
      for (int64_t i = 0; i < kW; ++i) l = std::min(l, lanes[0][i]), h = std::max(h, lanes[1][i]), p += lanes[2][i];
      float s = std::max(-l, h) / 127.0f;
      s = s < floor ? floor : s;
      if (p != 0.0f) s = std::numeric_limits<float>::quiet_NaN();
      sp[m] = s;
      const float inv = 1.0f / s;
      map(row, buffer.data(), K, [&](Vec v) { return encode(v * Vec(inv), 0.0f, -127.0f, 127.0f); });
      narrow(buffer.data(), qp + m * K, K);
    }
  });
  return {q, scale};
}

// x float32, any shape and strides -> int8 of x's shape in `memory_format` order:
// clamp(round_half_even(x · (1/scale)) + zero_point, -128, 127) (INT8_AFFINE, static per tensor)
at::Tensor quantize_per_tensor(const at::Tensor& x, double scale, int64_t zero_point, bool channels_last) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "lowp native: x float32");
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor src = x.contiguous(format);  // a no-op when x is in that order already
  auto q = at::empty(x.sizes(), x.options().dtype(at::kChar), format);
  const float inv = 1.0f / static_cast<float>(scale);
  const float zp = static_cast<float>(zero_point);
  const float* xp = src.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(end - begin);
    map(xp + begin, buffer.data(), end - begin, [&](Vec v) { return encode(v * Vec(inv), zp, -128.0f, 127.0f); });
    narrow(buffer.data(), qp + begin, end - begin);
  });
  return q;
}

// acc (M, N) int32 -> y float32 (M, N), or int8 requantized when out_scale > 0:
//   y = ((acc − a_zp[m] · b_sum[n]) · a_scale[m]) · b_scale[n] + bias[n], then none / relu / relu6
// (reference.gemm_epilogue's order of float32 operations). a_scale / a_zp: M values or one; b_scale: N or one;
// bias, b_sum: N values; empty tensors for absent ones. activation: 0 none, 1 relu, 2 relu6.
// acc may also be float32 holding integers (oneDNN's int8 matmul with unit scales, zero point already subtracted):
// it is then checked on the way, and an empty tensor comes back if a value reaches 2^24, beyond which float32
// holds no exact integer (the caller takes the int32 path instead).
at::Tensor gemm_epilogue(const at::Tensor& acc, const at::Tensor& a_scale, const at::Tensor& b_scale,
                         const at::Tensor& bias, const at::Tensor& a_zp, const at::Tensor& b_sum, int64_t activation,
                         double out_scale, int64_t out_zero_point) {
  const bool exact = acc.scalar_type() == at::kInt;
  TORCH_CHECK(acc.dim() == 2 && (exact || acc.scalar_type() == at::kFloat) && acc.is_contiguous(),
              "lowp native: acc (M, N) int32 or float32");
  TORCH_CHECK(exact || !a_zp.numel(), "lowp native: a float acc has its zero point subtracted already");
  const int64_t M = acc.size(0), N = acc.size(1);
  const bool requant = out_scale > 0;
  auto y = at::empty({M, N}, acc.options().dtype(requant ? at::kChar : at::kFloat));
  const int32_t* ap = exact ? acc.data_ptr<int32_t>() : nullptr;
  const float* af = exact ? nullptr : acc.data_ptr<float>();
  std::atomic<bool> inexact{false};
  const float* as = a_scale.numel() ? a_scale.data_ptr<float>() : nullptr;
  const float* bs = b_scale.numel() ? b_scale.data_ptr<float>() : nullptr;
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int32_t* zp = a_zp.numel() ? a_zp.data_ptr<int32_t>() : nullptr;
  const int32_t* sum = b_sum.numel() ? b_sum.data_ptr<int32_t>() : nullptr;
  const int64_t as_step = a_scale.numel() == 1 ? 0 : 1, bs_step = b_scale.numel() == 1 ? 0 : 1;
  const int64_t zp_step = a_zp.numel() == 1 ? 0 : 1;
  int8_t* yq = requant ? y.data_ptr<int8_t>() : nullptr;
  float* yf = requant ? nullptr : y.data_ptr<float>();
  const float inv_out = requant ? 1.0f / static_cast<float>(out_scale) : 0.0f;
  const float out_zp = static_cast<float>(out_zero_point);
  at::parallel_for(0, M, std::max<int64_t>(1, kGrain / std::max<int64_t>(N, 1)), [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(requant ? N : 0);
    const Vec zero(0.0f), six(6.0f), inv(inv_out);
    Vec largest(0.0f);  // of |float acc|
    for (int64_t m = begin; m < end; ++m) {
      const int32_t* row = exact ? ap + m * N : nullptr;
      const float* row_f = exact ? nullptr : af + m * N;
      const IVec row_zp(zp ? zp[m * zp_step] : 0);
      const Vec row_scale(as ? as[m * as_step] : 1.0f);
      float* v = requant ? buffer.data() : yf + m * N;
      // one pass: each vector of the row through every step, in the reference's order
      auto step = [&](int64_t n, int64_t count) {
        const bool full = count == kW;
        Vec y;
        if (exact) {
          IVec a = full ? IVec::loadu(row + n) : IVec::loadu(row + n, count);
          if (zp) a = a - row_zp * (full ? IVec::loadu(sum + n) : IVec::loadu(sum + n, count));
          y = at::vec::convert_to_fp_of_same_size<float>(a);
        } else {
          y = full ? Vec::loadu(row_f + n) : Vec::loadu(row_f + n, count);
          largest = at::vec::maximum(largest, y.abs());
        }
        if (as) y = y * row_scale;
        if (bs) y = y * (bs_step == 0 ? Vec(bs[0]) : full ? Vec::loadu(bs + n) : Vec::loadu(bs + n, count));
        if (bp) y = y + (full ? Vec::loadu(bp + n) : Vec::loadu(bp + n, count));
        if (activation == 1) y = Vec::blendv(y, zero, y < zero);  // NaN stays NaN, -0 stays -0, as torch.relu
        if (activation == 2) y = Vec::blendv(Vec::blendv(y, zero, y < zero), six, y > six);  // torch.clamp(y, 0, 6)
        if (requant) y = encode(y * inv, out_zp, -128.0f, 127.0f);
        full ? y.store(v + n) : y.store(v + n, count);
      };
      int64_t n = 0;
      for (; n + kW <= N; n += kW) step(n, kW);
      if (n < N) step(n, N - n);
      if (requant) narrow(v, yq + m * N, N);
    }
    float lanes[kW];
    largest.store(lanes);
    for (int64_t i = 0; i < kW; ++i) {
      if (!(lanes[i] < 16777216.0f)) inexact = true;  // 2^24
    }
  });
  return inexact ? at::empty({0}, y.options()) : y;
}

// x (N, C, H, W) int8 channels_last -> its patches (N·OH·OW, R·S·C) int8, rows in (n, oh, ow) order, columns in
// (r, s, c) order (a channels_last weight's), out-of-bounds taps filled with pad_value (x's zero point)
at::Tensor im2col(const at::Tensor& x, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                  int64_t dh, int64_t dw, int64_t pad_value) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kChar && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "lowp native: x (N, C, H, W) int8 channels_last");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = (H + 2 * ph - dh * (R - 1) - 1) / sh + 1, OW = (W + 2 * pw - dw * (S - 1) - 1) / sw + 1;
  auto out = at::empty({N * OH * OW, R * S * C}, x.options().memory_format(at::MemoryFormat::Contiguous));
  const int8_t* xp = x.data_ptr<int8_t>();
  int8_t* op = out.data_ptr<int8_t>();
  const int64_t cols = R * S * C;
  at::parallel_for(0, N * OH * OW, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)),
                   [&](int64_t begin, int64_t end) {
    // bytes from src to dst: a loop for the few bytes of a stem's taps (a call would cost more), memcpy beyond
    auto copy = [](int8_t* dst, const int8_t* src, int64_t bytes) {
      if (bytes < 16) {
        for (int64_t i = 0; i < bytes; ++i) dst[i] = src[i];
      } else {
        std::memcpy(dst, src, bytes);
      }
    };
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / (OH * OW), oh = row / OW % OH, ow = row % OW;
      const int64_t ih0 = oh * sh - ph, iw0 = ow * sw - pw;
      int8_t* dst = op + row * cols;
      // a window wholly inside x with dilation 1 along W: each of its R rows is S·C contiguous bytes of x
      if (dw == 1 && ih0 >= 0 && ih0 + (R - 1) * dh < H && iw0 >= 0 && iw0 + S - 1 < W) {
        for (int64_t r = 0; r < R; ++r, dst += S * C) copy(dst, xp + ((n * H + ih0 + r * dh) * W + iw0) * C, S * C);
        continue;
      }
      for (int64_t r = 0; r < R; ++r) {
        const int64_t ih = ih0 + r * dh;
        for (int64_t s = 0; s < S; ++s, dst += C) {
          const int64_t iw = iw0 + s * dw;
          if (ih < 0 || ih >= H || iw < 0 || iw >= W) {
            std::memset(dst, static_cast<int>(pad_value), C);
          } else {
            copy(dst, xp + ((n * H + ih) * W + iw) * C, C);
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quantize_rows_dynamic", &quantize_rows_dynamic);
  m.def("quantize_per_tensor", &quantize_per_tensor);
  m.def("gemm_epilogue", &gemm_epilogue);
  m.def("im2col", &im2col);
  m.def("vector_width", [] { return kW; }, "floats per vector register in this build (1: scalar code)");
}

// lowp's CPU passes in C++: per-row and per-tensor int8 quantization, and the int8 GEMM epilogue, each one loop
// over its tensor where the pure-torch backend takes five to seven torch ops (a pass over memory and ~3 us of
// Python each); im2col; the int8 max-pool; the int8 residual add; and Plan, a module's whole int8 layer in one
// call. Bit-exact with lowp_ops.reference: the same float32 operations in the same order (no FMA contraction: built
// with -ffp-contract=off), round half to even (std::nearbyint in the default rounding mode), NaN and ±inf as the
// reference maps them. Built on first use by lowp_ops/cpu/native.py.
// ATen's vector types take their instruction set from CPU_CAPABILITY_*, which ATen's build sets per kernel file:
// here it follows what the compiler targets (-march=native on the machine that builds it), else scalar code.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2
#endif
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <optional>
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
#ifdef CPU_CAPABILITY_AVX512  // the same steps on mask registers (ATen's blendv goes through a vector mask)
  __m512 x = v;
  x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x, _mm512_setzero_ps());
  x = _mm512_add_ps(_mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), _mm512_set1_ps(zero_point));
  return _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(qmin)), _mm512_set1_ps(qmax));
#else
  v = Vec::blendv(v, Vec(0.0f), v.isnan());
  return at::vec::clamp(v.round() + Vec(zero_point), Vec(qmin), Vec(qmax));
#endif
}

// count (<= kW) integral floats of v in [-128, 127] -> int8 at dst
inline void store_int8(Vec v, int8_t* dst, int64_t count) {
// AVX-512: convert and pack in registers (the compiler's narrowing loop shuffled bytes: ~20 % of an epilogue)
#ifdef CPU_CAPABILITY_AVX512
  const __m128i q = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v));
  count == kW ? _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), q)
              : _mm_mask_storeu_epi8(dst, static_cast<__mmask16>((1u << count) - 1), q);
#else
  float lanes[kW];
  v.store(lanes);
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<int8_t>(static_cast<int32_t>(lanes[i]));
#endif
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

// The GEMM epilogue's operands: y = ((acc − a_zp[m] · b_sum[n]) · a_scale[m]) · b_scale[n] + bias[n], then
// activation (0 none, 1 relu, 2 relu6), then requantized to int8 when out_scale > 0. A null pointer: the term is
// absent; a step of 0: one value for every row (a_scale, a_zp) or column (b_scale).
struct Epilogue {
  const float* a_scale = nullptr;
  int64_t a_step = 1;
  const float* b_scale = nullptr;
  int64_t b_step = 1;
  const float* bias = nullptr;
  const int32_t* a_zp = nullptr;
  int64_t zp_step = 1;
  const int32_t* b_sum = nullptr;
  int64_t activation = 0;
  float out_scale = -1.0f;
  float out_zp = 0.0f;
};

// One row of the epilogue after the accumulator: the same float32 operations in the reference's order, a vector of
// columns at a time. A row is int32 (exact), or float32 holding integers (oneDNN's int8 matmul with unit scales,
// zero point already subtracted; `largest` then collects |acc| for the caller's 2^24 check).
class EpilogueRow {
 public:
  EpilogueRow(const Epilogue& e, int64_t N) : e_(e), N_(N), requant_(e.out_scale > 0),
      inv_(requant_ ? 1.0f / e.out_scale : 0.0f) {
    if (e.a_zp && e.zp_step == 0) {  // one zero point: its products with the column sums, once
      zp_sums_.resize(N);
      for (int64_t n = 0; n < N; ++n) zp_sums_[n] = e.a_zp[0] * e.b_sum[n];
    }
  }

  // row m of acc (int32 row, or float32 row_f) -> out_f (float32) or out_q (int8), with the row's a_scale and
  // zero point (Epilogue's pointers and steps)
  void operator()(int64_t m, const int32_t* row, const float* row_f, float* out_f, int8_t* out_q) {
    const IVec row_zp(e_.a_zp ? e_.a_zp[m * e_.zp_step] : 0);
    const Vec row_scale(e_.a_scale ? e_.a_scale[m * e_.a_step] : 1.0f);
    const int32_t* zp_sums = zp_sums_.empty() ? nullptr : zp_sums_.data();
    const Vec zero(0.0f), six(6.0f), inv(inv_);
    auto step = [&](int64_t n, int64_t count) {
      const bool full = count == kW;
      Vec y;
      if (row) {
        IVec a = full ? IVec::loadu(row + n) : IVec::loadu(row + n, count);
        if (zp_sums) {
          a = a - (full ? IVec::loadu(zp_sums + n) : IVec::loadu(zp_sums + n, count));
        } else if (e_.a_zp) {
          a = a - row_zp * (full ? IVec::loadu(e_.b_sum + n) : IVec::loadu(e_.b_sum + n, count));
        }
        y = at::vec::convert_to_fp_of_same_size<float>(a);
      } else {
        y = full ? Vec::loadu(row_f + n) : Vec::loadu(row_f + n, count);
        largest = at::vec::maximum(largest, y.abs());
      }
      if (e_.a_scale) y = y * row_scale;
      if (e_.b_scale) {
        y = y * (e_.b_step == 0 ? Vec(e_.b_scale[0]) : full ? Vec::loadu(e_.b_scale + n)
                                                            : Vec::loadu(e_.b_scale + n, count));
      }
      if (e_.bias) y = y + (full ? Vec::loadu(e_.bias + n) : Vec::loadu(e_.bias + n, count));
      if (e_.activation == 1) y = Vec::blendv(y, zero, y < zero);  // NaN stays NaN, -0 stays -0, as torch.relu
      if (e_.activation == 2) y = Vec::blendv(Vec::blendv(y, zero, y < zero), six, y > six);  // clamp(y, 0, 6)
      if (requant_) {
        store_int8(encode(y * inv, e_.out_zp, -128.0f, 127.0f), out_q + n, count);
      } else {
        full ? y.store(out_f + n) : y.store(out_f + n, count);
      }
    };
    int64_t n = 0;
    for (; n + kW <= N_; n += kW) step(n, kW);
    if (n < N_) step(n, N_ - n);
  }

  Vec largest{0.0f};  // of |float acc| over the rows seen

 private:
  const Epilogue& e_;
  int64_t N_;
  bool requant_;
  float inv_;
  std::vector<int32_t> zp_sums_;  // a_zp · b_sum for a per-tensor zero point (int32 arithmetic, as the reference's)
};

// acc (M, N) int32 -> y float32 (M, N), or int8 requantized (reference.gemm_epilogue's order of float32 operations).
// acc may also be float32 holding integers (oneDNN's int8 matmul with unit scales, zero point already subtracted):
// it is then checked on the way, and an empty tensor comes back if a value reaches 2^24, beyond which float32
// holds no exact integer (the caller takes the int32 path instead).
at::Tensor run_epilogue(const at::Tensor& acc, const Epilogue& e) {
  const bool exact = acc.scalar_type() == at::kInt;
  TORCH_CHECK(acc.dim() == 2 && (exact || acc.scalar_type() == at::kFloat) && acc.is_contiguous(),
              "lowp native: acc (M, N) int32 or float32");
  TORCH_CHECK(exact || !e.a_zp, "lowp native: a float acc has its zero point subtracted already");
  const int64_t M = acc.size(0), N = acc.size(1);
  const bool requant = e.out_scale > 0;
  auto y = at::empty({M, N}, acc.options().dtype(requant ? at::kChar : at::kFloat));
  const int32_t* ap = exact ? acc.data_ptr<int32_t>() : nullptr;
  const float* af = exact ? nullptr : acc.data_ptr<float>();
  int8_t* yq = requant ? y.data_ptr<int8_t>() : nullptr;
  float* yf = requant ? nullptr : y.data_ptr<float>();
  std::atomic<bool> inexact{false};
  at::parallel_for(0, M, std::max<int64_t>(1, kGrain / std::max<int64_t>(N, 1)), [&](int64_t begin, int64_t end) {
    EpilogueRow finish(e, N);
    for (int64_t m = begin; m < end; ++m) {
      finish(m, exact ? ap + m * N : nullptr, exact ? nullptr : af + m * N, requant ? nullptr : yf + m * N,
             requant ? yq + m * N : nullptr);
    }
    float lanes[kW];
    finish.largest.store(lanes);
    for (int64_t i = 0; i < kW; ++i) {
      if (!(lanes[i] < 16777216.0f)) inexact = true;  // 2^24
    }
  });
  return inexact ? at::empty({0}, y.options()) : y;
}

// int8_add (kernels/add.py): a, b int8 of one shape, both contiguous in one memory format (their codes one flat run
// in the same order) -> int8 in that format,
// clamp(round(act((a − za)·sa + (b − zb)·sb) · (1/so)) + zo): the kernel's float32 operations in its order
at::Tensor add_int8(const at::Tensor& a, const at::Tensor& b, double a_scale, int64_t a_zp, double b_scale,
                    int64_t b_zp, double out_scale, int64_t out_zp, int64_t activation) {
  const auto format = a.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(a.scalar_type() == at::kChar && b.scalar_type() == at::kChar && a.sizes() == b.sizes() &&
                  a.is_contiguous(format) && b.is_contiguous(format),
              "lowp native: add_int8 takes two int8 tensors of one shape, contiguous in one memory format");
  auto y = at::empty_like(a, format);
  const int8_t* pa = a.data_ptr<int8_t>();
  const int8_t* pb = b.data_ptr<int8_t>();
  int8_t* py = y.data_ptr<int8_t>();
  const float sa = static_cast<float>(a_scale), sb = static_cast<float>(b_scale);
  const float inv_out = 1.0f / static_cast<float>(out_scale), zo = static_cast<float>(out_zp);
  const int32_t za = static_cast<int32_t>(a_zp), zb = static_cast<int32_t>(b_zp);
  // One branch-free loop the compiler vectorizes (restrict pointers: int8 stores may alias anything else). The
  // activation is folded into the clamp, which may come before rounding (integer bounds, monotone rounding):
  // relu(v)·(1/so) = max(v·(1/so), 0) and min(v, 6)·(1/so) = min(v·(1/so), 6·(1/so)) in float32 (rounding is
  // monotone). A branch per code kept it scalar: (1, 256, 56, 56) ~0.2 ms, now ~0.1 (CI machine, 2 threads).
  float lo = -128.0f - zo, hi = 127.0f - zo;
  if (activation >= 1) lo = std::max(lo, 0.0f);
  if (activation == 2) hi = std::min(hi, 6.0f * inv_out);
  const int32_t zo_int = static_cast<int32_t>(out_zp);
  at::parallel_for(0, a.numel(), kGrain, [=](int64_t begin, int64_t end) {
    const int8_t* __restrict qa = pa;
    const int8_t* __restrict qb = pb;
    int8_t* __restrict q = py;
    for (int64_t i = begin; i < end; ++i) {
      float v = static_cast<float>(qa[i] - za) * sa + static_cast<float>(qb[i] - zb) * sb;
      v = v * inv_out;
      v = v < lo ? lo : (v > hi ? hi : v);
      q[i] = static_cast<int8_t>(static_cast<int32_t>(std::rint(v)) + zo_int);  // rint: half to even, as nearbyint
    }
  });
  return y;
}

// The epilogue's operands from Python's tensors: a_scale / a_zp one value, or one per row (per image, for
// conv_direct); b_scale: one, or one per column; bias, b_sum: one per column; empty tensors for absent ones;
// out_scale > 0 requantizes.
Epilogue epilogue_of(const at::Tensor& a_scale, const at::Tensor& b_scale, const at::Tensor& bias,
                     const at::Tensor& a_zp, const at::Tensor& b_sum, int64_t activation, double out_scale,
                     int64_t out_zero_point) {
  Epilogue e;
  e.a_scale = a_scale.numel() ? a_scale.data_ptr<float>() : nullptr;
  e.a_step = a_scale.numel() == 1 ? 0 : 1;
  e.b_scale = b_scale.numel() ? b_scale.data_ptr<float>() : nullptr;
  e.b_step = b_scale.numel() == 1 ? 0 : 1;
  e.bias = bias.numel() ? bias.data_ptr<float>() : nullptr;
  e.a_zp = a_zp.numel() ? a_zp.data_ptr<int32_t>() : nullptr;
  e.zp_step = a_zp.numel() == 1 ? 0 : 1;
  e.b_sum = b_sum.numel() ? b_sum.data_ptr<int32_t>() : nullptr;
  e.activation = activation;
  e.out_scale = static_cast<float>(out_scale);
  e.out_zp = static_cast<float>(out_zero_point);
  return e;
}

// gemm_epilogue from Python (lowp_ops.cpu.gemm.fused_epilogue): acc (M, N), the epilogue's tensors as epilogue_of's
at::Tensor gemm_epilogue(const at::Tensor& acc, const at::Tensor& a_scale, const at::Tensor& b_scale,
                         const at::Tensor& bias, const at::Tensor& a_zp, const at::Tensor& b_sum, int64_t activation,
                         double out_scale, int64_t out_zero_point) {
  return run_epilogue(acc, epilogue_of(a_scale, b_scale, bias, a_zp, b_sum, activation, out_scale, out_zero_point));
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
    // the output pixel (n, oh, ow) stepped along rather than divided out of each row: ~1 us of a batch-1 conv's
    // 8-10 (576-784 rows; CI machine, 2026-12-06)
    int64_t n = begin / (OH * OW), oh = begin / OW % OH, ow = begin % OW;
    const auto next_pixel = [&] {
      if (++ow == OW) ow = 0, oh = oh + 1 == OH ? (++n, 0) : oh + 1;
    };
    for (int64_t row = begin; row < end; ++row, next_pixel()) {
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


// A convolution with few taps per output (R·S·C <= kDirectMaxTaps: a network's first layer on 1 or 3 channels) run
// directly: per output pixel, its taps as floats times a (taps, K) float32 weight table, a vector of output channels
// at a time, then the GEMM epilogue on the row, with no im2col and no GEMM call: at small sizes it costs a fraction
// of those routes' fixed costs (below). Past them the int8 dot products of oneDNN win (an FMA does a quarter of
// their work): ConvNet's conv1 at batch 256 takes 2.6 ms here, 1.3 in oneDNN. Exact: every product and partial sum
// is an integer of magnitude < 2^24 (taps · 128 · 128), which float32 holds, so the sum is torch._int_mm's int32 one;
// the epilogue then runs on it as on any accumulator (EpilogueRow), bit-exact with the reference.
constexpr int64_t kDirectMaxTaps = 64;
// ... and the pixels · taps · K up to which it beats the other routes (per pixel it spends taps · K / kW FMAs where
// an int8 dot product does four times the work; below this oneDNN's and _int_mm's fixed costs lose). us on the CI
// machine (2 threads, 2026-12-06), direct / im2col + _int_mm (Python route, ~8 us of it Python) / oneDNN, int8 out:
//   (1, 1, 28, 28) -> 32, 3x3: 21 / 47 / 110;  (8, 1, 28, 28) -> 32: 80 / 111 / 144
//   (1, 3, 28, 28) -> 64, 3x3: 30 / 53 / 114;  (1, 3, 64, 64) -> 64: 134 / 124 / 147;  (1, 7, 28, 28) -> 64: 52 / 49
//   (256, 1, 28, 28) -> 32 (ConvNet conv1 at batch 256): 2550 / 3250 / 1330
constexpr int64_t kDirectMaxWork = int64_t{1} << 22;

// whether conv_direct is the route for a convolution (groups 1) of `pixels` outputs, `taps` = R·S·C, K channels
inline bool direct_route(int64_t pixels, int64_t taps, int64_t K) {
  return taps <= kDirectMaxTaps && pixels * taps * K <= kDirectMaxWork;
}

// w int8 (K, C, R, S), any layout -> the direct convolution's table, float32 (R·S·C, K rounded up to a vector):
// row (r, s, c) holds w[:, c, r, s], zeros past K
at::Tensor direct_weight(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 4 && w.scalar_type() == at::kChar, "lowp native: w (K, C, R, S) int8");
  const int64_t K = w.size(0), taps = w.size(1) * w.size(2) * w.size(3);
  TORCH_CHECK(taps <= kDirectMaxTaps, "lowp native: direct convolution of at most ", kDirectMaxTaps, " taps");
  const int64_t padded = (K + kW - 1) / kW * kW;
  auto table = at::zeros({taps, padded}, w.options().dtype(at::kFloat));
  table.narrow(1, 0, K).copy_(w.permute({2, 3, 1, 0}).reshape({taps, K}));
  return table;
}

constexpr int64_t kDirectPixels = 8;

// conv_direct's inner step: the sums of kDirectPixels pixels (their taps at base[p][offsets[p][t]]) for the one or
// two vectors of channels at column k of the (taps, KP) table, as int32 into acc (kDirectPixels rows of KP);
// uniform: every pixel's offsets are offsets[0]
template <bool uniform>
inline void sums(const float* const* base, const int64_t* const* offsets, const float* table, int64_t KP, int64_t k,
                 int64_t taps, int32_t* acc) {
  const bool pair = k + kW < KP;  // KP is a whole number of vectors: a pair, or the last one alone
  Vec a[kDirectPixels][2];
  for (int64_t p = 0; p < kDirectPixels; ++p) a[p][0] = a[p][1] = Vec(0.0f);
  for (int64_t t = 0; t < taps; ++t) {
    const Vec w0 = Vec::loadu(table + t * KP + k), w1 = pair ? Vec::loadu(table + t * KP + k + kW) : Vec(0.0f);
    const int64_t shared = uniform ? offsets[0][t] : 0;
    for (int64_t p = 0; p < kDirectPixels; ++p) {
      const Vec tap(base[p][uniform ? shared : offsets[p][t]]);
      a[p][0] = at::vec::fmadd(tap, w0, a[p][0]);
      a[p][1] = at::vec::fmadd(tap, w1, a[p][1]);
    }
  }
  for (int64_t p = 0; p < kDirectPixels; ++p) {
    at::vec::convert_to_int_of_same_size(a[p][0]).store(acc + p * KP + k);
    if (pair) at::vec::convert_to_int_of_same_size(a[p][1]).store(acc + p * KP + k + kW);
  }
}

// x (N, C, H, W) int8 channels_last, table = direct_weight(w) -> the convolution's accumulator through the epilogue
// e (its a_scale: one, or one per image; its a_zp: one): (N·OH·OW, K) float32 or int8 (out_scale > 0), rows in
// (n, oh, ow) order, i.e. the NHWC output. Out-of-bounds taps read pad_value (x's zero point, which the epilogue's
// a_zp · b_sum term cancels), as im2col pads.
at::Tensor conv_direct(const at::Tensor& x, const at::Tensor& table, int64_t K, int64_t R, int64_t S, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t pad_value,
                       const Epilogue& e) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kChar && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "lowp native: x (N, C, H, W) int8 channels_last");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), taps = R * S * C;
  TORCH_CHECK(table.scalar_type() == at::kFloat && table.is_contiguous() && table.dim() == 2 &&
                  table.size(0) == taps && table.size(1) % kW == 0 && table.size(1) >= K,
              "lowp native: the table of direct_weight(w)");
  const int64_t OH = (H + 2 * ph - dh * (R - 1) - 1) / sh + 1, OW = (W + 2 * pw - dw * (S - 1) - 1) / sw + 1;
  const int64_t P = OH * OW, KP = table.size(1);
  const bool requant = e.out_scale > 0;
  auto y = at::empty({N * P, K}, x.options().dtype(requant ? at::kChar : at::kFloat));
  const int8_t* xp = x.data_ptr<int8_t>();
  const float* wp = table.data_ptr<float>();
  int8_t* yq = requant ? y.data_ptr<int8_t>() : nullptr;
  float* yf = requant ? nullptr : y.data_ptr<float>();
  // x's codes as floats once (NHWC, like x), each tap then one broadcast load: ih0, iw0 the window's corner, an
  // inside window's tap t at ((ih0·W + iw0)·C + inside[t]); a window over the border has its taps copied (pad_value
  // where out of bounds) to a scratch row, read at t
  const at::Tensor xf = x.to(at::kFloat);
  const float* xv = xf.data_ptr<float>();
  std::vector<int64_t> inside(taps), identity(taps), nowhere(taps, 0);
  for (int64_t r = 0, t = 0; r < R; ++r) {
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t c = 0; c < C; ++c, ++t) inside[t] = (r * dh * W + s * dw) * C + c, identity[t] = t;
    }
  }
  // kDirectPixels pixels x 2 vectors of channels per step (sums): 2·kDirectPixels independent sums in registers
  // (one pixel's two would wait on the FMA latency every tap), each weight vector loaded once for the pixels
  // ~2^17 multiply-adds a task: ConvNet conv1 at batch 1 (676 pixels) on both threads, 21 -> 16-19 us a call
  const int64_t grain = std::max<int64_t>(kDirectPixels, (kGrain << 2) / std::max<int64_t>(taps * K, 1));
  at::parallel_for(0, N * P, grain, [&](int64_t begin, int64_t end) {
    EpilogueRow finish(e, K);
    std::vector<float> scratch(kDirectPixels * taps);
    std::vector<int32_t> acc(kDirectPixels * KP);
    const float zero_row[1] = {0.0f};
    int64_t n = begin / P, oh = begin % P / OW, ow = begin % OW;  // the next pixel, stepped along
    for (int64_t px0 = begin; px0 < end; px0 += kDirectPixels) {
      const int64_t count = std::min(kDirectPixels, end - px0);
      int64_t images[kDirectPixels];
      const float* base[kDirectPixels];
      const int64_t* offsets[kDirectPixels];
      for (int64_t p = 0; p < kDirectPixels; ++p) {
        if (p >= count) {  // a short last tile: its missing pixels read zeros
          base[p] = zero_row, offsets[p] = nowhere.data();
          continue;
        }
        const int64_t ih0 = oh * sh - ph, iw0 = ow * sw - pw;
        images[p] = n;
        if (ih0 >= 0 && ih0 + (R - 1) * dh < H && iw0 >= 0 && iw0 + (S - 1) * dw < W) {
          base[p] = xv + ((n * H + ih0) * W + iw0) * C, offsets[p] = inside.data();
        } else {
          float* dst = scratch.data() + p * taps;
          for (int64_t r = 0; r < R; ++r) {
            const int64_t ih = ih0 + r * dh;
            for (int64_t s = 0; s < S; ++s, dst += C) {
              const int64_t iw = iw0 + s * dw;
              const bool in = ih >= 0 && ih < H && iw >= 0 && iw < W;
              for (int64_t c = 0; c < C; ++c) dst[c] = in ? xv[((n * H + ih) * W + iw) * C + c] : pad_value;
            }
          }
          base[p] = scratch.data() + p * taps, offsets[p] = identity.data();
        }
        if (++ow == OW) ow = 0, oh = oh + 1 == OH ? (++n, 0) : oh + 1;
      }
      // a tile of inside windows reads every pixel's taps at the same offsets: one offset load per tap
      const bool uniform = std::all_of(offsets, offsets + kDirectPixels, [&](auto o) { return o == inside.data(); });
      for (int64_t k = 0; k < KP; k += 2 * kW) {
        uniform ? sums<true>(base, offsets, wp, KP, k, taps, acc.data()) : sums<false>(base, offsets, wp, KP, k,
                                                                                      taps, acc.data());
      }
      for (int64_t p = 0; p < count; ++p) {
        const int64_t px = px0 + p;
        finish(images[p], acc.data() + p * KP, nullptr, requant ? nullptr : yf + px * K,
               requant ? yq + px * K : nullptr);
      }
    }
  });
  return y;
}

// conv_direct from Python (lowp_ops/cpu/conv.py): the epilogue's tensors as epilogue_of's (a_scale one, or one per
// image; a_zp one or none)
at::Tensor conv_direct_py(const at::Tensor& x, const at::Tensor& table, int64_t K, int64_t R, int64_t S, int64_t sh,
                          int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t pad_value,
                          const at::Tensor& a_scale, const at::Tensor& b_scale, const at::Tensor& bias,
                          const at::Tensor& a_zp, const at::Tensor& b_sum, int64_t activation, double out_scale,
                          int64_t out_zero_point) {
  return conv_direct(x, table, K, R, S, sh, sw, ph, pw, dh, dw, pad_value,
                     epilogue_of(a_scale, b_scale, bias, a_zp, b_sum, activation, out_scale, out_zero_point));
}

// the 8 x 8 bytes at src (row stride src_stride) transposed to dst (row stride dst_stride): each row one 64-bit
// word (little-endian: byte j is column j), transposed in three swaps of 4x4, 2x2 and 1x1 blocks
inline void transpose8x8(const int8_t* src, int64_t src_stride, int8_t* dst, int64_t dst_stride) {
  uint64_t r[8];
  for (int i = 0; i < 8; ++i) std::memcpy(&r[i], src + i * src_stride, 8);
  auto swap = [&](int i, int j, int shift, uint64_t mask) {
    const uint64_t t = ((r[i] >> shift) ^ r[j]) & mask;
    r[i] ^= t << shift;
    r[j] ^= t;
  };
  for (int i = 0; i < 4; ++i) swap(i, i + 4, 32, 0x00000000FFFFFFFFull);
  for (int i : {0, 1, 4, 5}) swap(i, i + 2, 16, 0x0000FFFF0000FFFFull);
  for (int i : {0, 2, 4, 6}) swap(i, i + 1, 8, 0x00FF00FF00FF00FFull);
  for (int i = 0; i < 8; ++i) std::memcpy(dst + i * dst_stride, &r[i], 8);
}

// x (N, C, H, W) int8 channels_last -> its max-pool (N, C, OH, OW) int8, channels_last or contiguous
// (lowp_ops/cpu/pool.py): per output pixel, the channel-wise max over the window's in-bounds taps (at least one:
// PyTorch's padding rule), each tap a contiguous run of C codes, a vector of channels at a time. A contiguous output
// is made a tile of kPoolTile pixels at a time, transposed on its way out 8 x 8 codes at a time, so that each channel
// plane gets runs of 8 bytes: ConvNet's (256, 64, 24, 24) 2x2 pool 0.71-0.79 ms, where the channels_last pool takes
// 0.36-0.39 (a flatten's copy after it took 1.5 more under load), gathering a run a byte at a time 1.3-1.5, and
// scattering each pixel's C codes 3.2 (CI machine, 2 threads, 2026-12-06)
at::Tensor max_pool2d(const at::Tensor& x, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                      int64_t dh, int64_t dw, int64_t OH, int64_t OW, bool channels_last) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kChar && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "lowp native: x (N, C, H, W) int8 channels_last");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = OH * OW;
  auto y = at::empty({N, C, OH, OW}, x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                              : at::MemoryFormat::Contiguous));
  const int8_t* xp = x.data_ptr<int8_t>();
  int8_t* yp = y.data_ptr<int8_t>();
  using CVec = at::vec::Vectorized<int8_t>;
  constexpr int64_t kCW = CVec::size();
  constexpr int64_t kPoolTile = 64;
  // output pixel p of image n -> its C codes at out
  auto pool = [&](int64_t n, int64_t p, int8_t* out, std::vector<const int8_t*>& taps) {
    const int64_t oh = p / OW, ow = p % OW;
    int64_t count = 0;  // the window's in-bounds taps, each a run of C codes
    for (int64_t i = 0; i < KH; ++i) {
      const int64_t h = oh * sh - ph + i * dh;
      for (int64_t j = 0; j < KW && h >= 0 && h < H; ++j) {
        const int64_t w = ow * sw - pw + j * dw;
        if (w >= 0 && w < W) taps[count++] = xp + ((n * H + h) * W + w) * C;
      }
    }
    int64_t c = 0;
    for (; c + kCW <= C; c += kCW) {  // a vector of channels kept in a register over the taps
      CVec best(std::numeric_limits<int8_t>::min());
      for (int64_t t = 0; t < count; ++t) best = at::vec::maximum(best, CVec::loadu(taps[t] + c));
      best.store(out + c);
    }
    for (; c < C; ++c) {
      int8_t best = std::numeric_limits<int8_t>::min();
      for (int64_t t = 0; t < count; ++t) best = std::max(best, taps[t][c]);
      out[c] = best;
    }
  };
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(C * KH * KW, 1));
  if (channels_last) {
    at::parallel_for(0, N * P, grain, [&](int64_t begin, int64_t end) {
      std::vector<const int8_t*> taps(KH * KW);
      for (int64_t px = begin; px < end; ++px) pool(px / P, px % P, yp + px * C, taps);
    });
    return y;
  }
  const int64_t tiles = (P + kPoolTile - 1) / kPoolTile;
  at::parallel_for(0, N * tiles, std::max<int64_t>(1, grain / kPoolTile), [&](int64_t begin, int64_t end) {
    std::vector<const int8_t*> taps(KH * KW);
    std::vector<int8_t> tile(kPoolTile * C);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / tiles, p0 = t % tiles * kPoolTile, count = std::min(kPoolTile, P - p0);
      for (int64_t q = 0; q < count; ++q) pool(n, p0 + q, tile.data() + q * C, taps);
      // y[n, c, p0 : p0 + count] for each c: the tile transposed 8 pixels x 8 channels at a time, in registers
      int8_t* out = yp + n * C * P + p0;
      const int64_t C8 = C / 8 * 8, count8 = count / 8 * 8;
      for (int64_t c = 0; c < C8; c += 8) {
        for (int64_t q = 0; q < count8; q += 8) transpose8x8(tile.data() + q * C + c, C, out + c * P + q, P);
      }
      for (int64_t c = 0; c < C; ++c) {  // what the 8 x 8 blocks left: channels past C8, pixels past count8
        for (int64_t q = c < C8 ? count8 : 0; q < count; ++q) out[c * P + q] = tile[q * C + c];
      }
    }
  });
  return y;
}

// ------------------------------------------------------------------------------------------------ eager plans
// A module calls its op with the same constant arguments every time (its weight, scales, zero points, geometry).
// A Plan holds those arguments, checked once by the op's own validation in Python (lowp_ops/ops/_common.py, Lane),
// and per call checks only that each is still the same object (a tensor also at the same version: an in-place
// write moves it) and that x is one it serves; then it runs the native CPU backend's route for the call (quantize,
// im2col, torch._int_mm, the epilogue) without returning to Python: the same functions the Python route calls, so
// the output is the same, bit for bit. A call it does not serve returns None and takes the Python route.
// Served: int8_linear (float32 x), int8_mm (int8 a) and int8_conv2d (float32 or int8 x, groups 1) with per-tensor
// static or dynamic activation scales, none / relu / relu6, float32 or int8 output, on the routes that use
// torch._int_mm (lowp_ops/cpu/gemm.py: M = 1 or N·K below its qlinear threshold; lowp_ops/cpu/conv.py: N·OH·OW <=
// 2048 output pixels) or conv_direct (direct_route).

enum class Op { kLinear = 0, kMm = 1, kConv = 2 };

constexpr int64_t kGemmMaxPixels = 2048;                 // lowp_ops/cpu/conv.py's _GEMM_MAX_PIXELS
constexpr double kMinScale = 1.1754943508222875e-38;      // 2^-126, lowp_ops.quant.MIN_SCALE

// an argument as a CPU tensor of `dtype` with `numel` elements (-1: any), contiguous; or undefined for None
bool as_tensor(PyObject* arg, at::ScalarType dtype, int64_t numel, at::Tensor& out) {
  if (arg == Py_None) return true;
  if (!THPVariable_Check(arg)) return false;
  const at::Tensor& t = THPVariable_Unpack(arg);
  if (t.device().type() != at::kCPU || t.scalar_type() != dtype || (numel >= 0 && t.numel() != numel) ||
      t.is_inference()) {
    return false;
  }
  out = t;
  return true;
}

class Plan {
 public:
  // args: the op's arguments, x first, as the Lane passes them; out_dtype: the output dtype the op's validation
  // resolved them to; qlinear_min_weight: N·K from which lowp_ops/cpu/gemm.py takes oneDNN's qlinear at M >= 2 (a
  // route this plan leaves to Python). weak: hold the argument tensors by weak reference (a plan kept for calls
  // whose caller owns the tensors, lowp_ops.int8_linear & co.: the plan must not keep them alive); such a plan only
  // runs on the same tensors given again (run), which it then reads from the call. None where not served.
  static py::object make(int64_t op, const py::tuple& args, const py::object& out_dtype, int64_t qlinear_min_weight,
                         bool weak) {
    auto plan = std::make_unique<Plan>();
    plan->qlinear_min_weight_ = qlinear_min_weight;
    return plan->build(static_cast<Op>(op), args, out_dtype.ptr(), weak) ? py::cast(std::move(plan)) : py::none();
  }

  // the op's output for these arguments, or None where this plan does not serve them
  py::object run(const py::tuple& args) {
    if (!same(args)) return py::none();
    if (!weak_) return run_x(PyTuple_GET_ITEM(args.ptr(), 0));
    PyObject* x = PyTuple_GET_ITEM(args.ptr(), 0);
    if (!THPVariable_CheckExact(x) || !plain(THPVariable_Unpack(x))) return py::none();
    auto arg = [&](size_t i) { return i ? THPVariable_Unpack(PyTuple_GET_ITEM(args.ptr(), i)) : at::Tensor(); };
    return wrap(compute(THPVariable_Unpack(x), bind(arg(w_at_), arg(w_scale_at_), arg(bias_at_), arg(w_sum_at_))));
  }

  // the op's output for x with the arguments the plan holds, or None where it does not serve x or a held tensor was
  // written since (its version moved, or its data was swapped through .data): for an owner that drops its plan
  // whenever it changes an argument otherwise (lowp_ops/nn/_base.py, _QuantModule)
  py::object run_x(PyObject* arg) {
    if (weak_ || !THPVariable_CheckExact(arg) || !current()) return py::none();
    const at::Tensor& x = THPVariable_Unpack(arg);
    return plain(x) ? wrap(compute(x, operands_)) : py::none();
  }

  int64_t op() const { return static_cast<int64_t>(op_); }

  // lowp_ops/ops/_common.py's _eager_plain but for torch.compile (which Python checks): a plain CPU tensor (not a
  // functorch wrapper: those are TensorImpl subclasses), no autograd through the op, no dispatch or torch-function
  // mode, no torch.jit.trace
  static bool plain(const at::Tensor& x) {
    return x.device().type() == at::kCPU && typeid(*x.unsafeGetTensorImpl()) == typeid(c10::TensorImpl) &&
           !(x.requires_grad() && at::GradMode::is_enabled()) && c10::impl::TorchDispatchModeTLS::stack_len() == 0 &&
           !at::impl::torch_function_mode_enabled() && !torch::jit::tracer::isTracing();
  }

 private:
  bool build(Op op, const py::tuple& args, PyObject* resolved, bool weak) {
    op_ = op;
    const size_t n = op == Op::kConv ? 15 : 11;
    if (args.size() != n) return false;
    auto arg = [&](size_t i) { return PyTuple_GET_ITEM(args.ptr(), i); };
    // the arguments' positions in each op's schema (lowp_ops/ops/int8.py, conv.py)
    size_t w, w_scale, bias, x_scale, x_zp, w_sum, act, out_scale, out_zp;
    if (op == Op::kLinear) {
      w = 1, w_scale = 2, bias = 3, x_scale = 4, x_zp = 5, w_sum = 6, act = 7, out_scale = 9, out_zp = 10;
    } else if (op == Op::kMm) {
      w = 1, x_scale = 2, w_scale = 3, bias = 4, x_zp = 5, w_sum = 6, act = 7, out_scale = 9, out_zp = 10;
    } else {
      w = 1, x_scale = 6, w_scale = 7, bias = 8, x_zp = 9, w_sum = 10, act = 11, out_scale = 13, out_zp = 14;
    }
    at::Tensor weight, in_scale, in_zp, o_scale, o_zp;
    at::Tensor scales, bias_t, sums;
    if (!as_tensor(arg(w), at::kChar, -1, weight) || !weight.defined() || weight.numel() == 0) return false;
    const int64_t N = weight.size(0);
    if (!as_tensor(arg(w_scale), at::kFloat, -1, scales) || !scales.defined() || !scales.is_contiguous() ||
        (scales.numel() != N && scales.numel() != 1) || !as_tensor(arg(bias), at::kFloat, N, bias_t) ||
        (bias_t.defined() && !bias_t.is_contiguous()) || !as_tensor(arg(x_scale), at::kFloat, 1, in_scale) ||
        !as_tensor(arg(x_zp), at::kInt, 1, in_zp) || !as_tensor(arg(w_sum), at::kInt, N, sums) ||
        !as_tensor(arg(out_scale), at::kFloat, 1, o_scale) || !as_tensor(arg(out_zp), at::kInt, 1, o_zp)) {
      return false;
    }
    if (in_zp.defined() != sums.defined() || (sums.defined() && !sums.is_contiguous())) return false;
    if (op == Op::kMm && !in_scale.defined()) return false;  // int8 a: static scales only
    // activation and output dtype
    if (!PyUnicode_Check(arg(act)) || !THPDtype_Check(resolved)) return false;
    const std::string activation = PyUnicode_AsUTF8(arg(act));
    if (activation == "none") {
      epilogue_.activation = 0;
    } else if (activation == "relu") {
      epilogue_.activation = 1;
    } else if (activation == "relu6") {
      epilogue_.activation = 2;
    } else {
      return false;  // gelu: torch's, after the C++ pass, in Python
    }
    const auto out = reinterpret_cast<THPDtype*>(resolved)->scalar_type;
    if (out != at::kFloat && !(out == at::kChar && o_scale.defined())) return false;
    if (out == at::kChar) {
      epilogue_.out_scale = o_scale.item<float>();
      epilogue_.out_zp = o_zp.defined() ? static_cast<float>(o_zp.item<int32_t>()) : 0.0f;
    }
    if (in_scale.defined()) {
      static_ = true;
      in_scale_ = in_scale.item<float>();
      in_zp_ = in_zp.defined() ? in_zp.item<int32_t>() : 0;
    }
    // the weight as torch._int_mm's (K, N) operand
    if (op == Op::kConv) {
      auto geometry = [&](size_t i, int64_t& a, int64_t& b) {
        py::sequence s = py::reinterpret_borrow<py::sequence>(arg(i));
        if (s.size() != 2) return false;
        a = s[0].cast<int64_t>(), b = s[1].cast<int64_t>();
        return true;
      };
      if (weight.dim() != 4 || !weight.is_contiguous(at::MemoryFormat::ChannelsLast) ||
          !geometry(2, sh_, sw_) || !geometry(3, ph_, pw_) || !geometry(4, dh_, dw_) ||
          py::reinterpret_borrow<py::object>(arg(5)).cast<int64_t>() != 1) {
        return false;
      }
      C_ = weight.size(1), R_ = weight.size(2), S_ = weight.size(3);
      K_ = C_ * R_ * S_;
    } else {
      if (weight.dim() != 2 || !weight.is_contiguous()) return false;
      K_ = weight.size(1);
    }
    if (K_ < 2) return false;  // torch._int_mm is wrong for K = 1 (lowp_ops/cpu/gemm.py): the Python route
    if (op == Op::kConv && K_ <= kDirectMaxTaps) table_ = direct_weight(weight);
    N_ = N;
    epilogue_.b_step = scales.numel() == 1 ? 0 : 1;
    epilogue_.a_step = epilogue_.zp_step = 0;
    weak_ = weak;
    w_at_ = w, w_scale_at_ = w_scale, bias_at_ = bias_t.defined() ? bias : 0, w_sum_at_ = sums.defined() ? w_sum : 0;
    if (!weak) operands_ = bind(weight, scales, bias_t, sums);
    // what run() compares: every argument after x; the tensors' identities, shapes, versions and data
    for (size_t i = 1; i < n; ++i) {
      PyObject* a = arg(i);
      if (!THPVariable_Check(a)) {
        held_.push_back(py::reinterpret_borrow<py::object>(a));
        continue;
      }
      const at::Tensor& t = THPVariable_Unpack(a);
      held_.push_back(weak ? py::object() : py::reinterpret_borrow<py::object>(a));  // null: a weakly held tensor
      Held h{weak ? at::Tensor() : t, std::nullopt, t.unsafeGetTensorImpl(), t._version(), t.data_ptr(),
             t.sizes().vec(), t.strides().vec()};
      if (weak) h.weak.emplace(t.getIntrusivePtr());
      tensors_.push_back(std::move(h));
    }
    return true;
  }

  // The tensors the GEMM reads, from the weight (N, K) or (K, C, R, S) channels_last, its scales (N,) or (1,), the
  // bias (N,) and the weight's row sums (N,) (undefined: absent).
  struct Operands {
    at::Tensor w_t, w_scale, bias, w_sum, table;  // table: conv_direct's, for a conv with few taps
  };

  // table_, made once by build() from the weight (a weakly held plan runs only on that weight, unwritten)
  Operands bind(const at::Tensor& weight, const at::Tensor& w_scale, const at::Tensor& bias,
                const at::Tensor& w_sum) const {
    return {transposed(weight), w_scale, bias, w_sum, table_};
  }

  // torch._int_mm's (K, N) operand, strides (1, K), over the weight's codes: (N, K) row-major, or a channels_last
  // conv weight, whose codes are the same (N, R·S·C) matrix. Made without the dispatcher (weight.t() costs ~0.5 us
  // there, a tenth of a batch-1 call that reuses a plan on the caller's tensors; build() checked the layout, and
  // same() / current() the strides since).
  at::Tensor transposed(const at::Tensor& weight) const {
    auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(weight.storage()), weight.key_set(), weight.dtype());
    const int64_t sizes[] = {K_, N_}, strides[] = {1, K_};
    impl->set_sizes_and_strides(c10::IntArrayRef(sizes), c10::IntArrayRef(strides), weight.storage_offset());
    return at::Tensor(std::move(impl));
  }

  at::Tensor compute(const at::Tensor& x, const Operands& o) const {
    return op_ == Op::kConv ? conv(x, o) : linear(x, o);
  }

  static py::object wrap(at::Tensor y) {
    return y.defined() ? py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(y))) : py::none();
  }

  // every held tensor unwritten since: the same shape, version and data (a strongly held plan)
  bool current() const {
    for (const auto& h : tensors_) {
      if (!h.matches(h.tensor)) return false;
    }
    return true;
  }

  // every argument after x is the one validated: the same tensor objects, unwritten, and equal other values. A
  // weakly held tensor is compared by its TensorImpl: the weak reference keeps that address from being reused.
  bool same(const py::tuple& args) const {
    if (static_cast<size_t>(PyTuple_GET_SIZE(args.ptr())) != held_.size() + 1) return false;
    for (size_t i = 0, t = 0; i < held_.size(); ++i) {
      PyObject* a = PyTuple_GET_ITEM(args.ptr(), i + 1);
      if (!held_[i]) {
        if (!THPVariable_Check(a) || !tensors_[t++].matches(THPVariable_Unpack(a))) return false;
      } else if (THPVariable_Check(held_[i].ptr())) {
        if (a != held_[i].ptr()) return false;
        ++t;
      } else if (a != held_[i].ptr()) {
        const int equal = PyObject_RichCompareBool(a, held_[i].ptr(), Py_EQ);
        if (equal != 1) {
          PyErr_Clear();
          return false;
        }
      }
    }
    return true;
  }

  // the GEMM and its epilogue on q (rows, K) int8, with x's scale (one value: a_scale / zero point per tensor) or
  // the per-row scales of dynamic quantization
  at::Tensor gemm(const at::Tensor& q, const float* a_scale, int64_t a_step, const Operands& o) const {
    return run_epilogue(at::_int_mm(q, o.w_t), epilogue(a_scale, a_step, o));
  }

  Epilogue epilogue(const float* a_scale, int64_t a_step, const Operands& o) const {
    Epilogue e = epilogue_;
    e.a_scale = a_scale, e.a_step = a_step;
    e.b_scale = o.w_scale.data_ptr<float>();
    e.bias = o.bias.defined() ? o.bias.data_ptr<float>() : nullptr;
    if (o.w_sum.defined()) e.b_sum = o.w_sum.data_ptr<int32_t>(), e.a_zp = &in_zp_, e.zp_step = 0;
    return e;
  }

  // int8_linear / int8_mm: x (..., K) float32 / int8, contiguous
  at::Tensor linear(const at::Tensor& x, const Operands& o) const {
    const auto dtype = op_ == Op::kLinear ? at::kFloat : at::kChar;
    if (x.scalar_type() != dtype || x.dim() < 1 || x.size(-1) != K_ || !x.is_contiguous()) return {};
    const int64_t M = x.numel() / K_;
    if (M == 0 || (M >= 2 && N_ * K_ >= qlinear_min_weight_)) return {};  // oneDNN's qlinear route, in Python
    const at::Tensor x2 = x.view({M, K_});
    at::Tensor y;
    if (op_ == Op::kMm) {
      y = gemm(x2, &in_scale_, 0, o);
    } else if (static_) {
      y = gemm(quantize_per_tensor(x2, in_scale_, in_zp_, false), &in_scale_, 0, o);
    } else {
      const auto qs = quantize_rows_dynamic(x2, kMinScale);
      y = gemm(qs[0], qs[1].data_ptr<float>(), 1, o);
    }
    auto shape = x.sizes().vec();
    shape.back() = N_;
    return y.view(shape);
  }

  // int8_conv2d: x (N, C, H, W) float32 (any layout) or int8 channels_last -> (N, K, OH, OW) channels_last
  at::Tensor conv(const at::Tensor& x, const Operands& o) const {
    if (x.dim() != 4 || x.size(1) != C_ || (x.scalar_type() != at::kFloat && x.scalar_type() != at::kChar)) return {};
    if (x.scalar_type() == at::kChar && !static_) return {};
    const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
    const int64_t OH = (H + 2 * ph_ - dh_ * (R_ - 1) - 1) / sh_ + 1, OW = (W + 2 * pw_ - dw_ * (S_ - 1) - 1) / sw_ + 1;
    if (H + 2 * ph_ < dh_ * (R_ - 1) + 1 || W + 2 * pw_ < dw_ * (S_ - 1) + 1) return {};  // the op says why
    const bool direct = direct_route(B * OH * OW, K_, N_);
    if (B * OH * OW == 0 || (B * OH * OW > kGemmMaxPixels && !direct) || x.numel() == 0) {
      return {};  // oneDNN's route, in Python
    }
    at::Tensor q;
    float scale = in_scale_;
    if (x.scalar_type() == at::kChar) {
      q = x.contiguous(at::MemoryFormat::ChannelsLast);
    } else {
      if (!static_) {  // one symmetric scale for the call (lowp_ops.cpu.quantize.per_tensor_qparams)
        // in memory order: at::aminmax copies a channels_last x to NCHW first (reference.in_memory_order)
        const bool nhwc = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
        const auto range = at::aminmax(nhwc ? x.permute({0, 2, 3, 1}) : x);
        const double lo = std::get<0>(range).item<float>(), hi = std::get<1>(range).item<float>();
        if (!std::isfinite(lo) || !std::isfinite(hi)) return {};  // poisons the bias: the Python route
        scale = static_cast<float>(std::max(-lo, hi) / 127.0);
        scale = std::max(scale, static_cast<float>(kMinScale));
      }
      q = quantize_per_tensor(x, scale, static_ ? in_zp_ : 0, true);
    }
    const int64_t pad = static_ ? in_zp_ : 0;
    const at::Tensor y = direct ? conv_direct(q, o.table, N_, R_, S_, sh_, sw_, ph_, pw_, dh_, dw_, pad,
                                              epilogue(&scale, 0, o))
                                : gemm(im2col(q, R_, S_, sh_, sw_, ph_, pw_, dh_, dw_, pad), &scale, 0, o);
    return y.view({B, OH, OW, N_}).permute({0, 3, 1, 2});
  }

  Op op_ = Op::kLinear;
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  struct Held {
    at::Tensor tensor;           // a strongly held plan's
    std::optional<Weak> weak;    // a weakly held plan's
    const c10::TensorImpl* impl;
    uint32_t version;
    const void* data;
    std::vector<int64_t> sizes, strides;

    bool matches(const at::Tensor& t) const {
      return t.unsafeGetTensorImpl() == impl && t._version() == version && t.data_ptr() == data &&
             t.sizes() == sizes && t.strides() == strides;
    }
  };
  std::vector<py::object> held_;  // the arguments after x (null for a weakly held tensor)
  std::vector<Held> tensors_;     // the tensors among them, as validated
  Operands operands_;             // a strongly held plan's
  bool weak_ = false;
  size_t w_at_ = 0, w_scale_at_ = 0, bias_at_ = 0, w_sum_at_ = 0;  // the operands' positions in args (0: absent)
  Epilogue epilogue_;
  bool static_ = false;
  float in_scale_ = 1.0f;
  int32_t in_zp_ = 0;
  int64_t qlinear_min_weight_ = 0;
  int64_t K_ = 0, N_ = 0, C_ = 0, R_ = 1, S_ = 1, sh_ = 1, sw_ = 1, ph_ = 0, pw_ = 0, dh_ = 1, dw_ = 1;
  at::Tensor table_;  // conv_direct's weight table (direct_weight), for a conv with few taps
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quantize_rows_dynamic", &quantize_rows_dynamic);
  m.def("quantize_per_tensor", &quantize_per_tensor);
  m.def("gemm_epilogue", &gemm_epilogue);
  m.def("im2col", &im2col);
  m.def("direct_weight", &direct_weight);
  m.def("conv_direct", &conv_direct_py);
  m.def("direct_route", &direct_route, "direct_route(pixels, taps, K): whether conv_direct is the route");
  m.attr("DIRECT_MAX_TAPS") = kDirectMaxTaps;
  m.def("max_pool2d", &max_pool2d);
  m.def("add_int8", &add_int8);
  py::class_<Plan>(m, "Plan")
      .def_static("make", &Plan::make,
                  "Plan.make(op, args, out_dtype, qlinear_min_weight, weak=False): op 0 int8_linear, 1 int8_mm, "
                  "2 int8_conv2d; weak: hold the tensors weakly (run only); None if not served",
                  py::arg("op"), py::arg("args"), py::arg("out_dtype"), py::arg("qlinear_min_weight"),
                  py::arg("weak") = false)
      .def("run", &Plan::run, "run(args) -> the op's output, or None where this plan does not serve the call")
      .def("run_x", [](Plan& p, py::handle x) { return p.run_x(x.ptr()); },
           "run_x(x) -> the op's output for x with the held arguments, or None")
      .def_property_readonly("op", &Plan::op);
  m.def("vector_width", [] { return kW; }, "floats per vector register in this build (1: scalar code)");
}

// Fused batch norm (training statistics + normalisation) + optional residual add + ReLU,
// forward and backward, for channels_last fp32 and bf16 activations on CPU (issue 25).
//
// Why by hand: on an AMX CPU the convolutions of a bf16 ResNet-20 step are only 35% of it;
// batch norm, ReLU, the residual adds, the gradient sums and the bf16/fp32 casts of the
// fp32 residual stream are over half, each an eager op making its own pass over the same
// activations (docs/cpu-profile.md). Here one block's bn2 -> (+ shortcut) -> ReLU (and the
// bf16 copy of the result that the next convolution reads) is one statistics pass and one
// normalisation pass; its backward two passes. Inductor fuses the same ops but makes the
// step slower on these CPUs (0.60x on AMX, 0.85x on AVX2: docs/cpu-profile.md).
//
// Layout: a channels_last N x C x H x W tensor is an [M = N*H*W, C] matrix with C
// contiguous, so every inner loop runs over channels and vectorises across them. The
// loops are plain C++ that GCC auto-vectorises (-O3 -march=native, built per CPU by
// reslab.kernels); bf16 <-> fp32 conversions are bit operations (round to nearest even,
// NaN kept, exactly as c10::BFloat16) so that they vectorise too. Rows are split over
// at::parallel_for (torch's own OpenMP pool and thread count), one chunk per thread with
// its own partial sums, combined in double in a fixed order (deterministic for a given
// thread count).
//
// Numerics follow ATen's batch norm: statistics in fp32/double from the input's values;
// y = x * (w * invstd) + (b - mean * w * invstd); biased variance for normalisation,
// unbiased for running_var; running = momentum * batch + (1 - momentum) * running. With a
// residual, the normalised value is rounded to the input's dtype first (eager's bn2
// returns bf16 under autocast), then added to the fp32 shortcut in fp32 (blocks._combine),
// and ReLU'd; the backward rounds the masked gradient to bf16 for batch norm's part as the
// eager cast's backward does, and hands the shortcut the fp32 one.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using bf16_t = uint16_t;

inline float load(float v) { return v; }
inline float load(bf16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  r = f != f ? 0x7FC0u : r;  // a select, not a branch (vectorises)
  return static_cast<bf16_t>(r);
}

template <typename T> inline T store(float f);
template <> inline float store<float>(float f) { return f; }
template <> inline bf16_t store<bf16_t>(float f) { return to_bf16(f); }

// The value as the input's dtype would hold it (eager's bf16 bn2 output / gradient).
template <typename T> inline float round_as(float f) { return load(store<T>(f)); }

template <typename T> T* data_of(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// Rows [0, M) split into at most one chunk per thread; f(chunk, begin, end).
template <typename F>
void for_chunks(int64_t M, int64_t nchunks, const F& f) {
  int64_t per = (M + nchunks - 1) / nchunks;
  at::parallel_for(0, nchunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      int64_t r0 = k * per, r1 = std::min(M, r0 + per);
      if (r0 < r1) f(k, r0, r1);
    }
  });
}

int64_t chunks_for(int64_t M) {
  // About 256 rows at least per chunk: below that a thread costs more than it saves.
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), M / 256));
}

constexpr int64_t kBlock = 64;  // rows summed in fp32 before folding into double

// The inner loops are row helpers with __restrict pointers and `omp simd` channel loops:
// written inline in the parallel lambdas (pointers captured by reference, ternaries that
// guard loads) GCC kept them scalar, reloading the captured pointers every element, and the
// backward ran ~10x slower than eager. Every select below reads both sides unconditionally
// so that it becomes a vector blend.
#define RESLAB_SIMD _Pragma("omp simd")

// ---- forward statistics: shifted sums (shift = row 0) against cancellation -----------
template <typename T, int CC>
void stats_rows(const T* __restrict x, const float* __restrict sh, float* __restrict a,
                float* __restrict b, int64_t rb, int64_t re, int64_t Cr) {
  const int64_t C = CC ? CC : Cr;
  for (int64_t r = rb; r < re; ++r) {
    const T* __restrict row = x + r * C;
    RESLAB_SIMD
    for (int64_t c = 0; c < C; ++c) {
      float d = load(row[c]) - sh[c];
      a[c] += d;
      b[c] += d * d;
    }
  }
}

template <typename T, int CC>
void stats(const T* x, int64_t M, int64_t Cr, double* mean, double* var) {
  const int64_t C = CC ? CC : Cr;
  int64_t nchunks = chunks_for(M);
  std::vector<float> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = load(x[c]);
  std::vector<double> s1(nchunks * C, 0.0), s2(nchunks * C, 0.0);
  for_chunks(M, nchunks, [&](int64_t k, int64_t r0, int64_t r1) {
    std::vector<float> av(C), bv(C);
    float* a = av.data();
    float* b = bv.data();
    double* d1 = &s1[k * C];
    double* d2 = &s2[k * C];
    const float* sh = shift.data();
    for (int64_t rb = r0; rb < r1; rb += kBlock) {
      int64_t re = std::min(r1, rb + kBlock);
      for (int64_t c = 0; c < C; ++c) a[c] = b[c] = 0.f;
      stats_rows<T, CC>(x, sh, a, b, rb, re, C);
      for (int64_t c = 0; c < C; ++c) { d1[c] += a[c]; d2[c] += b[c]; }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double t1 = 0, t2 = 0;
    for (int64_t k = 0; k < nchunks; ++k) { t1 += s1[k * C + c]; t2 += s2[k * C + c]; }
    double m1 = t1 / M;
    mean[c] = shift[c] + m1;
    var[c] = std::max(0.0, t2 / M - m1 * m1);
  }
}

// ---- forward normalisation (+ residual) + ReLU ----------------------------------------
template <typename T, int CC>
void norm_rows(const T* __restrict x, const float* __restrict scale,
               const float* __restrict shift, T* __restrict y, int64_t r0, int64_t r1,
               int64_t Cr) {
  const int64_t C = CC ? CC : Cr;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * C;
    T* __restrict yr = y + r * C;
    RESLAB_SIMD
    for (int64_t c = 0; c < C; ++c) {
      float v = std::fma(load(xr[c]), scale[c], shift[c]);
      yr[c] = store<T>(v < 0.f ? 0.f : v);  // NaN stays NaN, as torch.relu
    }
  }
}

template <typename T, int CC>
void norm_res_rows(const T* __restrict x, const float* __restrict scale,
                   const float* __restrict shift, const float* __restrict res,
                   float* __restrict y, bf16_t* __restrict y_low, int64_t r0, int64_t r1,
                   int64_t Cr) {
  const int64_t C = CC ? CC : Cr;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * C;
    const float* __restrict rr = res + r * C;
    float* __restrict yr = y + r * C;
    if (y_low != nullptr) {
      bf16_t* __restrict lr = y_low + r * C;
      RESLAB_SIMD
      for (int64_t c = 0; c < C; ++c) {
        float v = round_as<T>(std::fma(load(xr[c]), scale[c], shift[c])) + rr[c];
        v = v < 0.f ? 0.f : v;
        yr[c] = v;
        lr[c] = to_bf16(v);
      }
    } else {
      RESLAB_SIMD
      for (int64_t c = 0; c < C; ++c) {
        float v = round_as<T>(std::fma(load(xr[c]), scale[c], shift[c])) + rr[c];
        yr[c] = v < 0.f ? 0.f : v;
      }
    }
  }
}

template <typename T, int CC>
void normalise(const T* x, const float* scale, const float* shift, const float* res,
               void* y, bf16_t* y_low, int64_t M, int64_t Cr) {
  const int64_t C = CC ? CC : Cr;
  for_chunks(M, chunks_for(M), [&](int64_t, int64_t r0, int64_t r1) {
    if (res == nullptr) {  // y = relu(bn(x)), in x's dtype
      norm_rows<T, CC>(x, scale, shift, static_cast<T*>(y), r0, r1, C);
    } else {  // y = relu(round(bn(x)) + res), fp32; y_low its bf16 copy
      norm_res_rows<T, CC>(x, scale, shift, res, static_cast<float*>(y), y_low, r0, r1, C);
    }
  });
}

// ---- backward ----------------------------------------------------------------------------
// g: the gradient at batch norm's output (ReLU's mask applied; rounded to T with a
// residual). Pass 1: sum g and sum g * (x - mean) per channel (with a residual, also the
// shortcut's gradient, written to gres); pass 2: dx.
template <typename T, typename G, int CC>
void sums_rows(const T* __restrict x, const G* __restrict gy, const float* __restrict scale,
               const float* __restrict shift, const float* __restrict mean,
               float* __restrict a, float* __restrict b, int64_t rb, int64_t re,
               int64_t Cr) {
  const int64_t C = CC ? CC : Cr;
  for (int64_t r = rb; r < re; ++r) {
    const T* __restrict xr = x + r * C;
    const G* __restrict gr = gy + r * C;
    RESLAB_SIMD
    for (int64_t c = 0; c < C; ++c) {  // no residual: ReLU's mask from the pre-activation
      float xv = load(xr[c]);
      float gv = load(gr[c]);
      float pre = std::fma(xv, scale[c], shift[c]);
      float g = pre > 0.f ? gv : 0.f;
      a[c] += g;
      b[c] += g * (xv - mean[c]);
    }
  }
}

template <typename T, typename G, int CC>
void sums_res_rows(const T* __restrict x, const G* __restrict gy,
                   const bf16_t* __restrict glow, const float* __restrict y,
                   const float* __restrict mean, float* __restrict gres,
                   float* __restrict a, float* __restrict b, int64_t rb, int64_t re,
                   int64_t Cr) {
  // residual: mask from the fp32 output; gradients of y and y_low summed (autograd's add)
  const int64_t C = CC ? CC : Cr;
  for (int64_t r = rb; r < re; ++r) {
    const T* __restrict xr = x + r * C;
    const float* __restrict yr = y + r * C;
    float* __restrict gr = gres + r * C;
    const G* __restrict gyr = gy + r * C;
    if (glow != nullptr) {
      const bf16_t* __restrict gl = glow + r * C;
      RESLAB_SIMD
      for (int64_t c = 0; c < C; ++c) {
        float gs = load(gyr[c]) + load(gl[c]);
        float g = yr[c] > 0.f ? gs : 0.f;
        gr[c] = g;
        float gb = round_as<T>(g);
        a[c] += gb;
        b[c] += gb * (load(xr[c]) - mean[c]);
      }
    } else {
      RESLAB_SIMD
      for (int64_t c = 0; c < C; ++c) {
        float gs = load(gyr[c]);
        float g = yr[c] > 0.f ? gs : 0.f;
        gr[c] = g;
        float gb = round_as<T>(g);
        a[c] += gb;
        b[c] += gb * (load(xr[c]) - mean[c]);
      }
    }
  }
}

template <typename T, typename G, int CC>
void backward_sums(const T* x, const G* gy, const bf16_t* glow, const float* y,
                   const float* scale, const float* shift, const float* mean, float* gres,
                   int64_t M, int64_t Cr, double* sg, double* sgx) {
  const int64_t C = CC ? CC : Cr;
  int64_t nchunks = chunks_for(M);
  std::vector<double> p1(nchunks * C, 0.0), p2(nchunks * C, 0.0);
  for_chunks(M, nchunks, [&](int64_t k, int64_t r0, int64_t r1) {
    std::vector<float> av(C), bv(C);
    float* a = av.data();
    float* b = bv.data();
    double* d1 = &p1[k * C];
    double* d2 = &p2[k * C];
    for (int64_t rb = r0; rb < r1; rb += kBlock) {
      int64_t re = std::min(r1, rb + kBlock);
      for (int64_t c = 0; c < C; ++c) a[c] = b[c] = 0.f;
      if (y == nullptr)
        sums_rows<T, G, CC>(x, gy, scale, shift, mean, a, b, rb, re, C);
      else
        sums_res_rows<T, G, CC>(x, gy, glow, y, mean, gres, a, b, rb, re, C);
      for (int64_t c = 0; c < C; ++c) { d1[c] += a[c]; d2[c] += b[c]; }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double t1 = 0, t2 = 0;
    for (int64_t k = 0; k < nchunks; ++k) { t1 += p1[k * C + c]; t2 += p2[k * C + c]; }
    sg[c] = t1;
    sgx[c] = t2;
  }
}

// dx = (g - mean(g) - (x - mean) * k) * invstd * w, k = sum(g (x - mean)) invstd^2 / M
// (ATen's batch_norm_cpu_backward, channels_last).
template <typename T, typename G, int CC>
void dx_rows(const T* __restrict x, const G* __restrict gy, const float* __restrict scale,
             const float* __restrict shift, const float* __restrict mean,
             const float* __restrict gmean, const float* __restrict k,
             const float* __restrict a, T* __restrict dx, int64_t r0, int64_t r1,
             int64_t Cr) {
  const int64_t C = CC ? CC : Cr;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * C;
    const G* __restrict gr = gy + r * C;
    T* __restrict dr = dx + r * C;
    RESLAB_SIMD
    for (int64_t c = 0; c < C; ++c) {
      float xv = load(xr[c]);
      float gv = load(gr[c]);
      float pre = std::fma(xv, scale[c], shift[c]);
      float g = pre > 0.f ? gv : 0.f;
      dr[c] = store<T>((g - gmean[c] - (xv - mean[c]) * k[c]) * a[c]);
    }
  }
}

template <typename T, int CC>
void dx_res_rows(const T* __restrict x, const float* __restrict gres,
                 const float* __restrict mean, const float* __restrict gmean,
                 const float* __restrict k, const float* __restrict a, T* __restrict dx,
                 int64_t r0, int64_t r1, int64_t Cr) {
  const int64_t C = CC ? CC : Cr;
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict xr = x + r * C;
    const float* __restrict gr = gres + r * C;
    T* __restrict dr = dx + r * C;
    RESLAB_SIMD
    for (int64_t c = 0; c < C; ++c) {
      float xv = load(xr[c]);
      float g = round_as<T>(gr[c]);
      dr[c] = store<T>((g - gmean[c] - (xv - mean[c]) * k[c]) * a[c]);
    }
  }
}

template <typename T, typename G, int CC>
void backward_dx(const T* x, const G* gy, const float* gres, const float* scale,
                 const float* shift, const float* mean, const float* gmean, const float* k,
                 const float* a, T* dx, int64_t M, int64_t Cr) {
  const int64_t C = CC ? CC : Cr;
  for_chunks(M, chunks_for(M), [&](int64_t, int64_t r0, int64_t r1) {
    if (gres == nullptr)
      dx_rows<T, G, CC>(x, gy, scale, shift, mean, gmean, k, a, dx, r0, r1, C);
    else
      dx_res_rows<T, CC>(x, gres, mean, gmean, k, a, dx, r0, r1, C);
  });
}

// One channel count known at compile time unrolls the inner loops fully (16/32/64: the
// CIFAR nets' widths); any other runs the same loops with a runtime count.
template <template <int> class F, typename... Args>
void by_width(int64_t C, Args&&... args) {
  switch (C) {
    case 16: F<16>::run(std::forward<Args>(args)...); break;
    case 32: F<32>::run(std::forward<Args>(args)...); break;
    case 64: F<64>::run(std::forward<Args>(args)...); break;
    default: F<0>::run(std::forward<Args>(args)...); break;
  }
}

template <typename T> struct Stats {
  template <int CC> struct W {
    static void run(const T* x, int64_t M, int64_t C, double* m, double* v) {
      stats<T, CC>(x, M, C, m, v);
    }
  };
};
template <typename T> struct Norm {
  template <int CC> struct W {
    static void run(const T* x, const float* s, const float* b, const float* res, void* y,
                    bf16_t* yl, int64_t M, int64_t C) {
      normalise<T, CC>(x, s, b, res, y, yl, M, C);
    }
  };
};
template <typename T, typename G> struct Sums {
  template <int CC> struct W {
    static void run(const T* x, const G* gy, const bf16_t* gl, const float* y,
                    const float* s, const float* b, const float* mean, float* gres,
                    int64_t M, int64_t C, double* sg, double* sgx) {
      backward_sums<T, G, CC>(x, gy, gl, y, s, b, mean, gres, M, C, sg, sgx);
    }
  };
};
template <typename T, typename G> struct Dx {
  template <int CC> struct W {
    static void run(const T* x, const G* gy, const float* gres, const float* s,
                    const float* b, const float* mean, const float* gm, const float* k,
                    const float* a, T* dx, int64_t M, int64_t C) {
      backward_dx<T, G, CC>(x, gy, gres, s, b, mean, gm, k, a, dx, M, C);
    }
  };
};

void check_input(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "fused batch norm: CPU tensors only");
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "fused batch norm: a channels_last N x C x H x W tensor expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "fused batch norm: fp32 or bf16 activations only");
}

at::Tensor channels_last(const at::Tensor& t) {
  return t.contiguous(at::MemoryFormat::ChannelsLast);
}

bool is_bf16(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16; }

// scale = w * invstd, shift = b - mean * scale (fp32, per channel).
void affine(const at::Tensor& weight, const at::Tensor& bias, const float* mean,
            const float* invstd, int64_t C, float* scale, float* shift) {
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = w[c] * invstd[c];
    shift[c] = b[c] - mean[c] * scale[c];
  }
}

}  // namespace

// -> [y, y_low (undefined unless want_low), mean, invstd]; updates the running statistics.
std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& bias, const c10::optional<at::Tensor>& res_,
                                const c10::optional<at::Tensor>& running_mean,
                                const c10::optional<at::Tensor>& running_var, double momentum,
                                double eps, bool want_low) {
  check_input(x);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat &&
                  weight.is_contiguous() && bias.is_contiguous(),
              "fused batch norm: contiguous fp32 weight and bias expected");
  const int64_t C = x.size(1), M = x.numel() / std::max<int64_t>(C, 1);
  TORCH_CHECK(M > 1, "fused batch norm: more than one value per channel expected");
  std::vector<double> mean(C), var(C);
  if (is_bf16(x)) {
    by_width<Stats<bf16_t>::W>(C, data_of<bf16_t>(x), M, C, mean.data(), var.data());
  } else {
    by_width<Stats<float>::W>(C, x.data_ptr<float>(), M, C, mean.data(), var.data());
  }
  auto fopts = x.options().dtype(at::kFloat);
  at::Tensor mean_t = at::empty({C}, fopts), invstd_t = at::empty({C}, fopts);
  float* mf = mean_t.data_ptr<float>();
  float* isf = invstd_t.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    mf[c] = static_cast<float>(mean[c]);
    isf[c] = static_cast<float>(1.0 / std::sqrt(var[c] + eps));
  }
  if (running_mean.has_value() && running_mean->defined()) {
    float* rm = running_mean->data_ptr<float>();
    for (int64_t c = 0; c < C; ++c)
      rm[c] = static_cast<float>(momentum * mean[c] + (1 - momentum) * rm[c]);
  }
  if (running_var.has_value() && running_var->defined()) {
    float* rv = running_var->data_ptr<float>();
    double unbias = static_cast<double>(M) / (M - 1);
    for (int64_t c = 0; c < C; ++c)
      rv[c] = static_cast<float>(momentum * var[c] * unbias + (1 - momentum) * rv[c]);
  }
  std::vector<float> scale(C), shift(C);
  affine(weight, bias, mf, isf, C, scale.data(), shift.data());
  const bool has_res = res_.has_value() && res_->defined();
  at::Tensor res, y, y_low;
  if (has_res) {
    TORCH_CHECK(res_->scalar_type() == at::kFloat && res_->sizes() == x.sizes(),
                "fused batch norm: an fp32 residual of the input's shape expected");
    res = channels_last(*res_);
    y = at::empty_like(x, fopts, at::MemoryFormat::ChannelsLast);
    if (want_low)
      y_low = at::empty_like(x, x.options().dtype(at::kBFloat16), at::MemoryFormat::ChannelsLast);
  } else {
    y = at::empty_like(x, x.options(), at::MemoryFormat::ChannelsLast);
  }
  const float* rp = has_res ? res.data_ptr<float>() : nullptr;
  bf16_t* lp = y_low.defined() ? data_of<bf16_t>(y_low) : nullptr;
  if (is_bf16(x)) {
    by_width<Norm<bf16_t>::W>(C, data_of<bf16_t>(x), scale.data(), shift.data(), rp,
                              y.data_ptr(), lp, M, C);
  } else {
    by_width<Norm<float>::W>(C, x.data_ptr<float>(), scale.data(), shift.data(), rp,
                             y.data_ptr(), lp, M, C);
  }
  return {y, y_low, mean_t, invstd_t};
}

namespace {

template <typename T, typename G>
void backward_impl(const at::Tensor& x, const G* gy, const bf16_t* gl, const float* yp,
                   const float* scale, const float* shift, const float* mean,
                   float* gres, at::Tensor& dx, const float* invstd, const float* w,
                   int64_t M, int64_t C, float* dw, float* db) {
  std::vector<double> sg(C), sgx(C);
  const T* xp = data_of<T>(x);
  by_width<Sums<T, G>::template W>(C, xp, gy, gl, yp, scale, shift, mean, gres, M, C,
                                   sg.data(), sgx.data());
  std::vector<float> gmean(C), k(C), a(C);
  for (int64_t c = 0; c < C; ++c) {
    gmean[c] = static_cast<float>(sg[c] / M);
    k[c] = static_cast<float>(sgx[c] * invstd[c] * invstd[c] / M);
    a[c] = invstd[c] * w[c];
    dw[c] = static_cast<float>(sgx[c] * invstd[c]);
    db[c] = static_cast<float>(sg[c]);
  }
  by_width<Dx<T, G>::template W>(C, xp, gy, gres, scale, shift, mean, gmean.data(),
                                 k.data(), a.data(), data_of<T>(dx), M, C);
}

}  // namespace

// -> [dx, dweight, dbias, dresidual (undefined without a residual)]. y: the forward's fp32
// output when it had a residual (ReLU's mask), else undefined (the mask is recomputed
// from x). grad_y / grad_low may be undefined (unused outputs).
std::vector<at::Tensor> backward(const c10::optional<at::Tensor>& grad_y_,
                                 const c10::optional<at::Tensor>& grad_low_,
                                 const at::Tensor& x, const c10::optional<at::Tensor>& y_,
                                 const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& mean, const at::Tensor& invstd) {
  check_input(x);
  const int64_t C = x.size(1), M = x.numel() / std::max<int64_t>(C, 1);
  const bool has_res = y_.has_value() && y_->defined();
  at::Tensor gy, gl, y, gres;
  if (grad_y_.has_value() && grad_y_->defined()) gy = channels_last(*grad_y_);
  else  // an unused output: a zero gradient (rare; keeps the loops free of branches)
    gy = at::zeros_like(x, x.options().dtype(has_res ? at::kFloat : x.scalar_type()),
                        at::MemoryFormat::ChannelsLast);
  if (grad_low_.has_value() && grad_low_->defined()) gl = channels_last(*grad_low_);
  if (has_res) {
    y = channels_last(*y_);
    TORCH_CHECK(!gy.defined() || gy.scalar_type() == at::kFloat, "fp32 grad_y expected");
    gres = at::empty_like(y, y.options(), at::MemoryFormat::ChannelsLast);
  } else {
    TORCH_CHECK(!gy.defined() || gy.scalar_type() == x.scalar_type(),
                "grad_y of the input's dtype expected");
  }
  std::vector<float> scale(C), shift(C);
  affine(weight, bias, mean.data_ptr<float>(), invstd.data_ptr<float>(), C, scale.data(),
         shift.data());
  at::Tensor dx = at::empty_like(x, x.options(), at::MemoryFormat::ChannelsLast);
  at::Tensor dw = at::empty({C}, weight.options()), db = at::empty({C}, weight.options());
  const bf16_t* glp = gl.defined() ? data_of<bf16_t>(gl) : nullptr;
  const float* yp = has_res ? y.data_ptr<float>() : nullptr;
  float* grp = has_res ? gres.data_ptr<float>() : nullptr;
  const float* mp = mean.data_ptr<float>();
  const float* ip = invstd.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* dwp = dw.data_ptr<float>();
  float* dbp = db.data_ptr<float>();
  // The incoming gradient is fp32 with a residual, else of x's dtype.
  if (is_bf16(x)) {
    if (has_res) {
      backward_impl<bf16_t, float>(x, gy.data_ptr<float>(), glp, yp,
                                   scale.data(), shift.data(), mp, grp, dx, ip, wp, M, C,
                                   dwp, dbp);
    } else {
      backward_impl<bf16_t, bf16_t>(x, data_of<bf16_t>(gy), glp, yp,
                                    scale.data(), shift.data(), mp, grp, dx, ip, wp, M, C,
                                    dwp, dbp);
    }
  } else {
    backward_impl<float, float>(x, gy.data_ptr<float>(), glp, yp,
                                scale.data(), shift.data(), mp, grp, dx, ip, wp, M, C, dwp,
                                dbp);
  }
  return {dx, dw, db, gres};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "reslab: fused batch norm + residual add + ReLU for channels_last CPU training";
  m.def("forward", &forward, "batch norm (training) [+ residual] + ReLU, forward");
  m.def("backward", &backward, "batch norm (training) [+ residual] + ReLU, backward");
}

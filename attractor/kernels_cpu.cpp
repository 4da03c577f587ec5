// Fused CPU kernels for the block's elementwise parts, forward and backward: RMSNorm, QK-norm +
// RoPE on q and k, ReLU^2. Each reads its inputs once and writes its output once, where eager
// PyTorch makes one pass over memory per op (and differentiates composites op by op). Built on
// first use by attractor/kernels.py, which documents when they run; the autograd Functions around
// them are in attractor/layers.py, with the eager formulas they must match.
//
// Registered as torch.ops.attractor_cpu.*; float32 and float64 on CPU. The row loops are plain
// functions taking restrict pointers by value: inside at::parallel_for's lambda, with sizes and
// pointers captured by reference, gcc reloaded them per row and the QK kernel ran 10x slower.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

constexpr int64_t kGrain = 16384;  // least elements per task of at::parallel_for

int64_t grain_of(int64_t per_item) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(per_item, 1)); }

// ---- RMSNorm over rows of n contiguous values: y = x r, r = 1 / sqrt(mean(x^2) + eps)

template <typename T>
T sum_of_squares(const T* __restrict x, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += x[j] * x[j];
  return s;
}

template <typename T>
void rms_norm_rows(const T* __restrict x, T* __restrict y, T* __restrict r, int64_t rows, int64_t n) {
  const T eps = std::numeric_limits<T>::epsilon();
  for (int64_t i = 0; i < rows; ++i, x += n, y += n) {
    const T ri = T(1) / std::sqrt(sum_of_squares(x, n) / n + eps);
    r[i] = ri;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = x[j] * ri;
  }
}

// dL/dx = r (g - y mean(g y))
template <typename T>
void rms_norm_backward_rows(const T* __restrict g, const T* __restrict y, const T* __restrict r, T* __restrict dx,
                            int64_t rows, int64_t n) {
  for (int64_t i = 0; i < rows; ++i, g += n, y += n, dx += n) {
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += g[j] * y[j];
    const T ri = r[i], c = ri * s / n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dx[j] = ri * g[j] - c * y[j];
  }
}

// ---- QK-norm then RoPE for one head vector of K values at one position. The tables hold
// cos = [c, c] and sin = [-s, s] for the position, so out[j] = (x[j] cos[j] + x[j +- K/2] sin[j]) r.

template <typename T>
T norm_rotary_vec(const T* __restrict x, const T* __restrict cos, const T* __restrict sin, T* __restrict out,
                  int64_t K) {
  const T r = T(1) / std::sqrt(sum_of_squares(x, K) / K + std::numeric_limits<T>::epsilon());
  const int64_t half = K / 2;
#pragma omp simd
  for (int64_t j = 0; j < half; ++j) {
    out[j] = (x[j] * cos[j] + x[j + half] * sin[j]) * r;
    out[j + half] = (x[j + half] * cos[j + half] + x[j] * sin[j + half]) * r;
  }
  return r;
}

// The backward for one head vector: g' = rotation^T g, g'[j] = cos[j] g[j] + sin[j +- K/2] g[j +- K/2];
// with y = x r, dL/dx = r (g' - y mean(g' y)) = r g' - x r^3 mean(g' x).
template <typename T>
void norm_rotary_backward_vec(const T* __restrict g, const T* __restrict x, T r, const T* __restrict cos,
                              const T* __restrict sin, T* __restrict dx, T* __restrict rotated, int64_t K) {
  const int64_t half = K / 2;
  T dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < half; ++j) {
    const T lo = cos[j] * g[j] + sin[j + half] * g[j + half];
    const T hi = cos[j + half] * g[j + half] + sin[j] * g[j];
    rotated[j] = lo;
    rotated[j + half] = hi;
    dot += lo * x[j] + hi * x[j + half];
  }
  const T c = r * r * r * dot / K;
#pragma omp simd
  for (int64_t j = 0; j < K; ++j) dx[j] = r * rotated[j] - c * x[j];
}

// ---- ReLU^2 and its backward 2 relu(x) g, elementwise. Both operands are read whatever the
// sign, so gcc can vectorize the select (a conditional read of g would be a branch).

template <typename T>
void relu_square_elems(const T* __restrict x, T* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i] > 0 ? x[i] : T(0);
    y[i] = v * v;
  }
}

template <typename T>
void relu_square_backward_elems(const T* __restrict x, const T* __restrict g, T* __restrict dx, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i] > 0 ? x[i] : T(0);
    dx[i] = 2 * v * g[i];
  }
}

// ---- the ops: checks, allocation, dispatch on float / double, work split over heads or rows

void check_cpu_float(const Tensor& t, const char* op) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble), op,
              ": CPU float32 or float64 tensors only, got ", t.scalar_type(), " on ", t.device());
}

void check_like(const Tensor& t, const Tensor& ref, const char* op, const char* what) {
  TORCH_CHECK(t.sizes() == ref.sizes() && t.scalar_type() == ref.scalar_type() && t.device() == ref.device(), op,
              ": ", what, " must have the shape, dtype and device of the input");
}

std::tuple<Tensor, Tensor> rms_norm(const Tensor& x_) {
  check_cpu_float(x_, "rms_norm");
  TORCH_CHECK(x_.dim() >= 1, "rms_norm: x needs a last dim");
  const Tensor x = x_.contiguous();
  const int64_t n = x.size(-1), rows = n ? x.numel() / n : 0;
  auto r_shape = x.sizes().vec();
  r_shape.back() = 1;
  Tensor y = at::empty_like(x), r = at::empty(r_shape, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t *yp = y.data_ptr<scalar_t>(), *rp = r.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_of(n), [=](int64_t begin, int64_t end) {
      rms_norm_rows(xp + begin * n, yp + begin * n, rp + begin, end - begin, n);
    });
  });
  return {y, r};
}

Tensor rms_norm_backward(const Tensor& g_, const Tensor& y_, const Tensor& r_) {
  check_cpu_float(y_, "rms_norm_backward");
  check_like(g_, y_, "rms_norm_backward", "g");
  const Tensor g = g_.contiguous(), y = y_.contiguous(), r = r_.contiguous();
  const int64_t n = y.size(-1), rows = n ? y.numel() / n : 0;
  TORCH_CHECK(r.numel() == rows && r.scalar_type() == y.scalar_type(),
              "rms_norm_backward: r must hold one value per row, in y's dtype");
  Tensor dx = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "rms_norm_backward", [&] {
    const scalar_t *gp = g.const_data_ptr<scalar_t>(), *yp = y.const_data_ptr<scalar_t>();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_of(n), [=](int64_t begin, int64_t end) {
      rms_norm_backward_rows(gp + begin * n, yp + begin * n, rp + begin, dp + begin * n, end - begin, n);
    });
  });
  return dx;
}

// q, k and v come from the (B, T, 3D) output of the qkv projection: channels [q heads | k heads |
// v heads], last stride 1, any strides on B and T. The kernels walk it position by position, so
// it is read in order whatever its strides; q, k and the gradients are (B, H, T, K) with strides.
struct QKVLayout {
  int64_t B, T, H, K, sb, st;
};

QKVLayout qkv_layout(const Tensor& qkv, const Tensor& cos, const Tensor& sin, int64_t n_head, const char* op) {
  check_cpu_float(qkv, op);
  TORCH_CHECK(qkv.dim() == 3 && (qkv.size(2) == 1 || qkv.stride(2) == 1), op,
              ": qkv must be (B, T, 3D) with last stride 1");
  TORCH_CHECK(n_head >= 1 && qkv.size(2) % (3 * n_head) == 0, op, ": 3D = ", qkv.size(2),
              " is not a multiple of 3 n_head = ", 3 * n_head);
  const int64_t K = qkv.size(2) / (3 * n_head);
  TORCH_CHECK(K % 2 == 0, op, ": rotary embeddings need an even head size, got ", K);
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 2 && cos.size(0) == qkv.size(1) && cos.size(1) == K &&
                  cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == qkv.scalar_type() &&
                  sin.scalar_type() == qkv.scalar_type() && cos.device() == qkv.device() && sin.device() == qkv.device(),
              op, ": the tables must be contiguous (T, K) tensors of qkv's dtype and device");
  return {qkv.size(0), qkv.size(1), n_head, K, qkv.stride(0), qkv.stride(1)};
}

// Strides of a (B, H, T, K) tensor with rows of K contiguous values: element (b, h, t, 0) at
// b s[0] + h s[1] + t s[2].
struct Strides4 {
  int64_t s[3];
  explicit Strides4(const Tensor& t) : s{t.stride(0), t.stride(1), t.stride(2)} {}
  int64_t at(int64_t b, int64_t h, int64_t t) const { return b * s[0] + h * s[1] + t * s[2]; }
};

// (q, k, r): q and k normed and rotated, (B, H, T, K) laid out as (B, T, H, K) like attention's own
// views of a projection (its output then comes back in the layout the next projection reads);
// r (2, B, H, T) the norms' scales.
std::tuple<Tensor, Tensor, Tensor> norm_rotary(const Tensor& qkv, const Tensor& cos, const Tensor& sin,
                                               int64_t n_head) {
  const QKVLayout L = qkv_layout(qkv, cos, sin, n_head, "norm_rotary");
  Tensor q = at::empty({L.B, L.T, L.H, L.K}, qkv.options()).transpose(1, 2), k = at::empty_like(q);
  Tensor r = at::empty({2, L.B, L.H, L.T}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "norm_rotary", [&] {
    const scalar_t* xp = qkv.const_data_ptr<scalar_t>();
    const scalar_t *cp = cos.const_data_ptr<scalar_t>(), *sp = sin.const_data_ptr<scalar_t>();
    scalar_t* outs[2] = {q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>()};
    scalar_t* rp = r.data_ptr<scalar_t>();
    const Strides4 os(q);
    at::parallel_for(0, L.B * L.T, grain_of(2 * L.H * L.K), [=](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / L.T, t = i % L.T;
        const scalar_t* x = xp + b * L.sb + t * L.st;
        for (int64_t s = 0; s < 2; ++s) {
          for (int64_t h = 0; h < L.H; ++h, x += L.K) {
            rp[((s * L.B + b) * L.H + h) * L.T + t] =
                norm_rotary_vec(x, cp + t * L.K, sp + t * L.K, outs[s] + os.at(b, h, t), L.K);
          }
        }
      }
    });
  });
  return {q, k, r};
}

// dL/dqkv (B, T, 3D) contiguous from dL/dq, dL/dk and dL/dv (B, H, T, K), any strides but the last:
// the norm and rotation's backward for q and k, a copy for v. One write of the whole gradient,
// where autograd would stack q and k's and concatenate v's.
Tensor norm_rotary_backward(const Tensor& gq_, const Tensor& gk_, const Tensor& gv_, const Tensor& qkv,
                            const Tensor& r_, const Tensor& cos, const Tensor& sin, int64_t n_head) {
  const QKVLayout L = qkv_layout(qkv, cos, sin, n_head, "norm_rotary_backward");
  const std::vector<int64_t> g_shape{L.B, L.H, L.T, L.K}, r_shape{2, L.B, L.H, L.T};
  const Tensor* grads[3] = {&gq_, &gk_, &gv_};
  Tensor g[3];
  for (int s = 0; s < 3; ++s) {
    TORCH_CHECK(grads[s]->sizes() == g_shape && grads[s]->scalar_type() == qkv.scalar_type(),
                "norm_rotary_backward: the gradients must be (B, H, T, K) in qkv's dtype");
    g[s] = grads[s]->stride(3) == 1 ? *grads[s] : grads[s]->contiguous();  // strided rows are fine
  }
  const Tensor r = r_.contiguous();
  TORCH_CHECK(r.sizes() == r_shape && r.scalar_type() == qkv.scalar_type(),
              "norm_rotary_backward: r must be (2, B, H, T) in qkv's dtype");
  const int64_t width = 3 * L.H * L.K;
  Tensor dx = at::empty({L.B, L.T, width}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "norm_rotary_backward", [&] {
    const scalar_t* gp[3] = {g[0].const_data_ptr<scalar_t>(), g[1].const_data_ptr<scalar_t>(),
                             g[2].const_data_ptr<scalar_t>()};
    const Strides4 gs[3] = {Strides4(g[0]), Strides4(g[1]), Strides4(g[2])};
    const scalar_t *xp = qkv.const_data_ptr<scalar_t>(), *rp = r.const_data_ptr<scalar_t>();
    const scalar_t *cp = cos.const_data_ptr<scalar_t>(), *sp = sin.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, L.B * L.T, grain_of(width), [=](int64_t begin, int64_t end) {
      std::vector<scalar_t> rotated(L.K);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / L.T, t = i % L.T;
        const scalar_t* x = xp + b * L.sb + t * L.st;
        scalar_t* d = dp + i * width;
        for (int64_t s = 0; s < 2; ++s) {
          for (int64_t h = 0; h < L.H; ++h, x += L.K, d += L.K) {
            norm_rotary_backward_vec(gp[s] + gs[s].at(b, h, t), x, rp[((s * L.B + b) * L.H + h) * L.T + t],
                                     cp + t * L.K, sp + t * L.K, d, rotated.data(), L.K);
          }
        }
        for (int64_t h = 0; h < L.H; ++h, d += L.K) {
          const scalar_t* gv = gp[2] + gs[2].at(b, h, t);
          std::copy(gv, gv + L.K, d);
        }
      }
    });
  });
  return dx;
}

Tensor relu_square(const Tensor& x_) {
  check_cpu_float(x_, "relu_square");
  const Tensor x = x_.contiguous();
  Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "relu_square", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [=](int64_t begin, int64_t end) {
      relu_square_elems(xp + begin, yp + begin, end - begin);
    });
  });
  return y;
}

Tensor relu_square_backward(const Tensor& x_, const Tensor& g_) {
  check_cpu_float(x_, "relu_square_backward");
  check_like(g_, x_, "relu_square_backward", "g");
  const Tensor x = x_.contiguous(), g = g_.contiguous();
  Tensor dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "relu_square_backward", [&] {
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *gp = g.const_data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [=](int64_t begin, int64_t end) {
      relu_square_backward_elems(xp + begin, gp + begin, dp + begin, end - begin);
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY(attractor_cpu, m) {
  m.def("rms_norm(Tensor x) -> (Tensor, Tensor)", &rms_norm);
  m.def("rms_norm_backward(Tensor g, Tensor y, Tensor r) -> Tensor", &rms_norm_backward);
  m.def("norm_rotary(Tensor qkv, Tensor cos, Tensor sin, int n_head) -> (Tensor, Tensor, Tensor)", &norm_rotary);
  m.def("norm_rotary_backward(Tensor gq, Tensor gk, Tensor gv, Tensor qkv, Tensor r, Tensor cos, Tensor sin, "
        "int n_head) -> Tensor", &norm_rotary_backward);
  m.def("relu_square(Tensor x) -> Tensor", &relu_square);
  m.def("relu_square_backward(Tensor x, Tensor g) -> Tensor", &relu_square_backward);
}

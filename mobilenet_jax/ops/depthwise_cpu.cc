// Depthwise k x k convolution on CPU, NHWC, float32: forward, input gradient and
// kernel gradient, registered with XLA through the FFI (jax.ffi). Also the full
// convolution of an input with a few channels (the stem's image), forward and
// kernel gradient (`NarrowConv`, below).
//
// Why: XLA's CPU grouped convolution is ~10x slower than TensorFlow's depthwise
// kernel, and the pure-JAX k*k shifted form is ~5x slower under autodiff because
// XLA makes one pass over the activations per tap (docs/performance.md). These
// loops make one pass: every output row reads its k*k input rows while they are
// in cache, the innermost loop runs over contiguous channels (vectorised by the
// compiler), and rows are split over XLA's threads.
//
// Shapes: x (N, H, W, C); kernel (KH, KW, 1, C * M); y (N, OH, OW, C * M), where
// output channel c * M + q reads input channel c (lax's feature_group_count=C).
// `stride`, `dilation`, `pad_top`, `pad_left` are attributes; H, W come from the
// operands and OH, OW from the result, so any padding (SAME, VALID, explicit) works.
// With dilation (rate) r, tap i reads input row oh * stride + i * r - pad_top: the
// atrous convolution of output-stride 8/16 backbones (TF-slim, DeepLab). Only the
// tap offsets change, so any rate runs as fast as rate 1.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t n, h, w, c, m, kh, kw, oh, ow, stride, rate, pad_top, pad_left;
  int64_t cm() const { return c * m; }
};

// Runs fn(begin, end, worker) over [0, total) in `workers` contiguous chunks, on
// XLA's intra-op thread pool: XLA's own threads would otherwise spin beside ours on
// the same cores. The caller takes chunks too and waits only for chunks already
// taken, so it finishes even when no pool thread is free; the shared state outlives
// the call for tasks that start late and find nothing left.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t total, int64_t workers, F fn) {
  workers = std::max<int64_t>(1, std::min(workers, total));
  if (workers == 1) {
    fn(0, total, 0);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto state = std::make_shared<State>();
  const int64_t chunk = (total + workers - 1) / workers;
  auto run = [state, chunk, total, workers, &fn] {
    for (int64_t w; (w = state->next.fetch_add(1)) < workers;) {
      fn(std::min(total, w * chunk), std::min(total, (w + 1) * chunk), w);
      if (state->done.fetch_add(1) + 1 == workers) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->finished.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < workers; ++t) pool.Schedule([run] { run(); });
  run();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] { return state->done.load() == workers; });
}

// acc[c * m + q] += a[c] * b[c * m + q]
inline void MulAccBroadcast(float* __restrict acc, const float* __restrict a,
                            const float* __restrict b, int64_t c, int64_t m) {
  if (m == 1) {
    for (int64_t i = 0; i < c; ++i) acc[i] += a[i] * b[i];
    return;
  }
  for (int64_t i = 0; i < c; ++i)
    for (int64_t q = 0; q < m; ++q) acc[i * m + q] += a[i] * b[i * m + q];
}

// acc[c] += sum_q a[c * m + q] * b[c * m + q]  (depth multiplier m > 1 only)
inline void MulAccReduce(float* __restrict acc, const float* __restrict a,
                         const float* __restrict b, int64_t c, int64_t m) {
  for (int64_t i = 0; i < c; ++i) {
    float s = 0.f;
    for (int64_t q = 0; q < m; ++q) s += a[i * m + q] * b[i * m + q];
    acc[i] += s;
  }
}

// The input row and column an output position's tap (i, j) reads, or -1.
inline int64_t InputIndex(int64_t out, int64_t tap, int64_t stride, int64_t rate, int64_t pad,
                          int64_t size) {
  int64_t in = out * stride + tap * rate - pad;
  return (in < 0 || in >= size) ? -1 : in;
}

// Calls fn(input pixel, output column, tap index) for every tap of output row
// `row` (batch * OH + oh) that reads inside the input x.
template <typename F>
void ForEachTap(const Geometry& g, const float* x, int64_t row, F fn) {
  const int64_t b = row / g.oh, oh = row % g.oh;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = InputIndex(oh, i, g.stride, g.rate, g.pad_top, g.h);
    if (ih < 0) continue;
    const float* xrow = x + (b * g.h + ih) * g.w * g.c;
    for (int64_t ow = 0; ow < g.ow; ++ow) {
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t iw = InputIndex(ow, j, g.stride, g.rate, g.pad_left, g.w);
        if (iw >= 0) fn(xrow + iw * g.c, ow, i * g.kw + j);
      }
    }
  }
}

// Eight floats in one vector register (AVX; two SSE/NEON registers elsewhere).
typedef float V8 __attribute__((vector_size(32)));
inline V8 Load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store8(float* p, V8 v) { std::memcpy(p, &v, sizeof v); }

// A per-channel scale and bias and an activation, applied where a value passes
// through registers anyway instead of in a pass of its own: batch norm folded into
// the kernel at inference leaves a bias on each output (the epilogue) and, from the
// previous layer, one on each input row (the prologue); in training the previous
// layer's batch norm is a scale and a shift from the batch's statistics (the
// prologue, applied again where the kernel gradient reads the rows).
enum Activation : int64_t { kLinear = 0, kRelu = 1, kRelu6 = 2 };
struct BiasAct {
  const float* bias = nullptr;  // nullptr: none (gradients, the plain forward pass)
  int64_t activation = kLinear;
  const float* scale = nullptr;  // nullptr: 1
};
inline V8 Finish(V8 s, const BiasAct& e, int64_t c) {
  if (e.scale) s *= Load8(e.scale + c);
  s += Load8(e.bias + c);
  if (e.activation != kLinear) s = s > V8{} ? s : V8{};
  if (e.activation == kRelu6) s = s < V8{} + 6.f ? s : V8{} + 6.f;
  return s;
}
inline float Finish(float s, const BiasAct& e, int64_t c) {
  if (e.scale) s *= e.scale[c];
  s += e.bias[c];
  if (e.activation != kLinear) s = std::max(s, 0.f);
  if (e.activation == kRelu6) s = std::min(s, 6.f);
  return s;
}

// In training the batch norm after the layer, as its backward pass needs it: the
// gradient by this layer's output y, from dz (the gradient by act(y * a + b), the
// batch norm's activated output), is dy = a * dz where the activation passes it
// (recomputed from y) + c1 + c2 * y, c1 and c2 holding the batch statistics' part.
// Applied as the gradient's rows are read, so dy is never stored.
struct GradPrologue {
  const float* y = nullptr;  // nullptr: none (dz is dy)
  const float *a = nullptr, *b = nullptr, *c1 = nullptr, *c2 = nullptr;
  int64_t activation = kLinear;
};
inline V8 Passes(V8 pre, int64_t activation, V8 v) {
  if (activation == kRelu6) return (pre > V8{}) & (pre < V8{} + 6.f) ? v : V8{};
  if (activation == kRelu) return pre > V8{} ? v : V8{};
  return v;
}
inline float Passes(float pre, int64_t activation, float v) {
  if (activation == kRelu6) return pre > 0.f && pre < 6.f ? v : 0.f;
  if (activation == kRelu) return pre > 0.f ? v : 0.f;
  return v;
}
// How far ahead (floats) the channel sums, which stream through their tensors, ask
// for them: 8 KB. The hardware prefetcher alone left such loops waiting on memory
// (the training forward pass of a 112x112x96 input: ~10% faster with it).
constexpr int64_t kAhead = 2048;
// The passes that read a few rows, then compute on them from cache, leave memory idle
// while they compute. So where they read a row they ask for the row they will read
// next into L2 (prefetch locality 1): the input `kRowsAhead` rows on (a stride-2 output
// row reads two new input rows), and dz and y one output row on. On the Zen 4 EPYC
// a training step of a 32x112x112x96, stride-2 depthwise layer with its batch norms
// took 36 ms instead of 42 (docs/performance.md, "Rows read ahead").
constexpr int64_t kRowsAhead = 2;

// The pixel stride (floats) of rows the passes keep in buffers of their own (input
// rows through a prologue, dy rows, the kernel's taps). A multiple of 256 channels
// (1 KB) puts a pixel's values, and a tap's, in the same few of L1's 64 sets as its
// neighbours', so the taps of one block of channels evict each other: at 32x14x14x512
// the backward pass took 1.3-1.4x as long as at 504 channels. A cache line of padding
// spreads them over every set (docs/performance.md, "Rows padded against cache-set
// conflicts").
inline int64_t PaddedStride(int64_t c) { return c % 256 == 0 ? c + 16 : c; }

// A depth-multiplier-1 kernel's taps (C floats each), PaddedStride(C) floats apart:
// copied where that is not C.
class KernelTaps {
 public:
  KernelTaps(const float* k, int64_t taps, int64_t c) : ld_(PaddedStride(c)), data_(k) {
    if (ld_ == c) return;
    copy_.assign(taps * ld_, 0.f);
    for (int64_t t = 0; t < taps; ++t)
      std::memcpy(copy_.data() + t * ld_, k + t * c, sizeof(float) * c);
    data_ = copy_.data();
  }
  const float* Tap(int64_t t) const { return data_ + t * ld_; }

 private:
  int64_t ld_;
  const float* data_;
  std::vector<float> copy_;
};

// dy of `n` channels from rows dz and y (GradPrologue); `ahead` floats further on,
// the next row's values are asked for into L2.
void GradRow(float* __restrict dy, const float* dz, const float* y, const GradPrologue& p,
             int64_t n, int64_t ahead) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    __builtin_prefetch(dz + c + ahead, 0, 1);
    __builtin_prefetch(y + c + ahead, 0, 1);
    const V8 yv = Load8(y + c), a = Load8(p.a + c);
    const V8 g = Passes(yv * a + Load8(p.b + c), p.activation, Load8(dz + c) * a);
    Store8(dy + c, g + Load8(p.c1 + c) + Load8(p.c2 + c) * yv);
  }
  for (; c < n; ++c)
    dy[c] = Passes(y[c] * p.a[c] + p.b[c], p.activation, dz[c] * p.a[c]) + p.c1[c] +
            p.c2[c] * y[c];
}

// Per-channel sums of v and v * x over rows, v = src where act(x * scale + shift)
// passes the gradient (`mask`; src itself with none): each row's block of channels
// summed in registers, rows added in double per worker, so a sum over a whole batch
// keeps its precision. With `dst`, v times the mask's scale (the gradient by x, where
// v is the one by x * scale + shift) is stored there.
class ChannelSums {
 public:
  ChannelSums(int64_t workers, int64_t channels)
      : c_(channels), partial_(workers, std::vector<double>(2 * channels, 0.0)),
        row_(workers, std::vector<float>(2 * channels)) {}

  // AddRow without dst, for a row read from memory: pixel by pixel in the order memory
  // holds it, the row's sums in a per-worker buffer (in L1), each channel's pixels
  // summed in the same order as AddRow's. AddRow's blocks of channels each sweep the
  // row a whole pixel apart, a stream per pixel, more than the hardware prefetcher
  // follows (32x56x56x128: 24 GB/s, against XLA's sum at 35; docs/performance.md,
  // "Channel sums in the order of memory").
  void AddRowInOrder(int64_t worker, const float* src, const float* x, const BiasAct& mask,
                     int64_t width) {
    if (c_ <= 32) return AddRow(worker, src, nullptr, x, mask, width);
    const int64_t c = c_, vector_channels = c / 8 * 8;
    const BiasAct e = mask;  // in registers, not reloaded through the reference
    float* s1 = row_[worker].data();
    float* s2 = s1 + c;
    std::fill(s1, s1 + 2 * c, 0.f);
    for (int64_t p = 0; p < width * c; p += c) {
      int64_t i = 0;
      for (; i < vector_channels; i += 8) {
        __builtin_prefetch(x + p + i + kAhead);
        __builtin_prefetch(src + p + i + kAhead);
        const V8 xv = Load8(x + p + i);
        V8 v = Load8(src + p + i);
        if (e.bias)
          v = Passes(xv * (e.scale ? Load8(e.scale + i) : V8{} + 1.f) + Load8(e.bias + i),
                     e.activation, v);
        Store8(s1 + i, Load8(s1 + i) + v);
        Store8(s2 + i, Load8(s2 + i) + v * xv);
      }
      for (; i < c; ++i) {
        const float xv = x[p + i];
        const float v = Masked(xv, src[p + i], e, i);
        s1[i] += v, s2[i] += v * xv;
      }
    }
    double* acc = partial_[worker].data();
    for (int64_t i = 0; i < 2 * c; ++i) acc[i] += s1[i];
  }

  void AddRow(int64_t worker, const float* src, float* dst, const float* x, const BiasAct& mask,
              int64_t width) {
    double* acc = partial_[worker].data();
    int64_t i = 0;
    for (; i + 32 <= c_; i += 32) AddBlock<4>(acc, i, src, dst, x, mask, width);
    for (; i + 8 <= c_; i += 8) AddBlock<1>(acc, i, src, dst, x, mask, width);
    for (; i < c_; ++i) {
      float s1 = 0.f, s2 = 0.f;
      for (int64_t p = i; p < width * c_; p += c_) {
        const float xv = x[p];
        const float v = Masked(xv, src[p], mask, i);
        if (dst) dst[p] = mask.scale ? v * mask.scale[i] : v;
        s1 += v, s2 += v * xv;
      }
      acc[i] += s1, acc[c_ + i] += s2;
    }
  }

  // sums[0..C) = sum of v, sums[C..2C) = sum of v * x.
  void Write(float* sums) const {
    for (int64_t i = 0; i < 2 * c_; ++i) {
      double total = 0.0;
      for (const auto& p : partial_) total += p[i];
      sums[i] = static_cast<float>(total);
    }
  }

 private:
  // v where act(x * scale + shift) passes the gradient at channel i (v with no mask).
  static float Masked(float xv, float v, const BiasAct& e, int64_t i) {
    return e.bias ? Passes((e.scale ? xv * e.scale[i] : xv) + e.bias[i], e.activation, v) : v;
  }

  // Channels [i, i + 8 * U) of one row, its sums in 2 * U registers.
  template <int U>
  void AddBlock(double* acc, int64_t i, const float* src, float* dst, const float* x,
                const BiasAct& mask, int64_t width) const {
    V8 s1[U] = {}, s2[U] = {}, a[U], b[U];
    for (int u = 0; u < U; ++u) {
      a[u] = mask.scale ? Load8(mask.scale + i + 8 * u) : V8{} + 1.f;
      b[u] = mask.bias ? Load8(mask.bias + i + 8 * u) : V8{};
    }
    for (int64_t p = i; p < width * c_; p += c_) {
      for (int u = 0; u < U; ++u) {
        __builtin_prefetch(x + p + 8 * u + kAhead);
        __builtin_prefetch(src + p + 8 * u + kAhead);
        const V8 xv = Load8(x + p + 8 * u);
        V8 v = Load8(src + p + 8 * u);
        if (mask.bias) v = Passes(xv * a[u] + b[u], mask.activation, v);
        if (dst) Store8(dst + p + 8 * u, v * a[u]);  // a: the scale, or 1
        s1[u] += v, s2[u] += v * xv;
      }
    }
    for (int u = 0; u < U; ++u)
      for (int l = 0; l < 8; ++l)
        acc[i + 8 * u + l] += s1[u][l], acc[c_ + i + 8 * u + l] += s2[u][l];
  }

  int64_t c_;
  std::vector<std::vector<double>> partial_;
  std::vector<std::vector<float>> row_;
};

// out[c] = sum over taps t of a[t][c] * b[t][c], for c < n, each output written
// once (through the epilogue, if any). Four independent accumulators per step hide
// the multiply-add latency.
void DotTaps(float* __restrict out, const float* const* a, const float* const* b, int64_t taps,
             int64_t n, const BiasAct& e) {
  int64_t c = 0;
  for (; c + 32 <= n; c += 32) {
    V8 s[4] = {};
    for (int64_t t = 0; t < taps; ++t) {
      const float *pa = a[t] + c, *pb = b[t] + c;
      for (int u = 0; u < 4; ++u) s[u] += Load8(pa + 8 * u) * Load8(pb + 8 * u);
    }
    for (int u = 0; u < 4; ++u)
      Store8(out + c + 8 * u, e.bias ? Finish(s[u], e, c + 8 * u) : s[u]);
  }
  for (; c + 8 <= n; c += 8) {
    V8 s0 = {};
    for (int64_t t = 0; t < taps; ++t) s0 += Load8(a[t] + c) * Load8(b[t] + c);
    Store8(out + c, e.bias ? Finish(s0, e, c) : s0);
  }
  for (; c < n; ++c) {
    float s0 = 0.f;
    for (int64_t t = 0; t < taps; ++t) s0 += a[t][c] * b[t][c];
    out[c] = e.bias ? Finish(s0, e, c) : s0;
  }
}

// The (tap, position) pairs along one axis that connect output `out` to the input
// (forward), or input `in` to the outputs that read it (input gradient).
struct TapPair {
  int64_t tap, pos;
};
int64_t InputsOf(int64_t out, int64_t k, int64_t stride, int64_t rate, int64_t pad,
                 int64_t size, TapPair* pairs) {
  int64_t count = 0;
  for (int64_t t = 0; t < k; ++t) {
    const int64_t in = out * stride + t * rate - pad;
    if (in >= 0 && in < size) pairs[count++] = {t, in};
  }
  return count;
}
int64_t OutputsOf(int64_t in, int64_t k, int64_t stride, int64_t rate, int64_t pad,
                  int64_t size, TapPair* pairs) {
  int64_t count = 0;
  for (int64_t t = 0; t < k; ++t) {
    const int64_t u = in + pad - t * rate;
    if (u >= 0 && u % stride == 0 && u / stride < size) pairs[count++] = {t, u / stride};
  }
  return count;
}

// Source rows as the taps read them: straight from the source, or, with a
// prologue (the previous layer's batch-norm scale, shift and activation, not yet
// applied), activated into a per-thread cache of as many rows as the kernel has,
// so each row is activated once while consecutive output rows share it.
class SourceRows {
 public:
  SourceRows(const float* src, int64_t row_size, int64_t channels, const BiasAct& prologue,
             int64_t slots)
      : src_(src), row_size_(row_size), channels_(channels), prologue_(prologue),
        ld_(Cached() ? PaddedStride(channels) : channels), tags_(Cached() ? slots : 0, -1),
        used_(tags_.size()), cache_(Cached() ? slots * (row_size / channels) * ld_ : 0) {}

  // The pixel stride (floats) of the rows Get points to.
  int64_t stride() const { return ld_; }

  // Pointers to source rows `index[0..n)` (row numbers in the whole source).
  void Get(const int64_t* index, int64_t n, const float** rows) {
    if (!Cached()) {
      for (int64_t i = 0; i < n; ++i) rows[i] = src_ + index[i] * row_size_;
      return;
    }
    std::fill(used_.begin(), used_.end(), false);
    for (int64_t i = 0; i < n; ++i) {  // rows already activated
      rows[i] = nullptr;
      for (size_t s = 0; s < tags_.size(); ++s)
        if (tags_[s] == index[i]) rows[i] = Slot(s), used_[s] = true;
    }
    for (int64_t i = 0; i < n; ++i) {  // the others, into slots no output row needs now
      if (rows[i]) continue;
      size_t s = 0;
      while (used_[s]) ++s;
      Activate(Slot(s), index[i] * row_size_);
      tags_[s] = index[i], used_[s] = true, rows[i] = Slot(s);
    }
  }

 private:
  bool Cached() const { return prologue_.bias != nullptr; }
  float* Slot(size_t s) { return cache_.data() + s * (row_size_ / channels_) * ld_; }
  void Activate(float* dst, int64_t offset) const {
    const float* src = src_ + offset;
    const BiasAct e = prologue_;  // in registers, not reloaded through `this`
    for (int64_t p = 0, q = 0; p < row_size_; p += channels_, q += ld_) {
      int64_t c = 0;
      for (; c + 8 <= channels_; c += 8) {
        __builtin_prefetch(src + p + c + kRowsAhead * row_size_, 0, 1);
        Store8(dst + q + c, Finish(Load8(src + p + c), e, c));
      }
      for (; c < channels_; ++c) dst[q + c] = Finish(src[p + c], e, c);
    }
  }
  const float* src_;
  int64_t row_size_, channels_;
  BiasAct prologue_;
  int64_t ld_;
  std::vector<int64_t> tags_;
  std::vector<bool> used_;
  std::vector<float> cache_;
};

// The columns of a row whose kw taps all fall inside the source, in order: column o
// reads source column o * step + off + j * dj for tap j (the forward pass: step =
// stride, dj = rate; the input gradient at stride 1: step 1, dj = -rate). Found by
// asking `cols_of`, so it agrees with the edge columns' path by construction.
struct Interior {
  int64_t lo = 0, hi = 0, step = 1, off = 0, dj = 1;
};
template <typename ColsOf>
Interior FindInterior(int64_t n_cols, int64_t kw, int64_t step, int64_t off, int64_t dj,
                      ColsOf cols_of) {
  Interior in{0, 0, step, off, dj};
  std::vector<TapPair> pairs(kw);
  auto regular = [&](int64_t o) {
    if (cols_of(o, pairs.data()) != kw) return false;
    for (int64_t j = 0; j < kw; ++j)
      if (pairs[j].tap != j || pairs[j].pos != o * step + off + j * dj) return false;
    return true;
  };
  while (in.lo < n_cols && !regular(in.lo)) ++in.lo;
  in.hi = in.lo;
  while (in.hi < n_cols && regular(in.hi)) ++in.hi;
  return in;
}

// The forward pass's column pairs (output column -> input columns), which the
// kernel gradient reads by too, and their interior.
inline auto ForwardColumns(const Geometry& g) {
  return [&g](int64_t ow, TapPair* p) {
    return InputsOf(ow, g.kw, g.stride, g.rate, g.pad_left, g.w, p);
  };
}
inline Interior ForwardInterior(const Geometry& g) {
  return FindInterior(g.ow, g.kw, g.stride, -g.pad_left, g.rate, ForwardColumns(g));
}

// Runs fn(std::integral_constant<int, NR>) for nr = 1..3 rows of 3-tap kernels, the
// shapes the interior loops below are compiled for; false for others.
template <typename F>
bool WithRows(int64_t nr, int64_t kw, F fn) {
  if (kw != 3) return false;
  switch (nr) {
    case 1: fn(std::integral_constant<int, 1>{}); return true;
    case 2: fn(std::integral_constant<int, 2>{}); return true;
    case 3: fn(std::integral_constant<int, 3>{}); return true;
    default: return false;
  }
}

// out[o] = sum over the NR x 3 taps of rows[i][o * step + off + j * dj] * w[i][j], for
// the interior columns (the rows' pixels `ld` floats apart, out's `channels`), 8
// channels at a time with their NR x 3 weights held in registers, two pixels at a
// time (two independent chains of multiply-adds), taps summed in DotTaps' order. Used
// where a pixel has at most kFewChannels (DotTaps spends its time there setting up
// each pixel's taps: at 32x112x112x32 on an AVX2 CPU, 17 -> 11 ms) and on long rows
// (UseInterior).
constexpr int64_t kFewChannels = 32;
template <int NR>
void InteriorRow(float* __restrict out, const float* const* row_ptr, int64_t ld,
                 const float* const* w, const Interior& in, int64_t channels,
                 const BiasAct& epilogue) {
  // Locals, not reloads through pointers the stores to `out` might alias.
  const float* rows[NR];
  for (int i = 0; i < NR; ++i) rows[i] = row_ptr[i];
  const BiasAct e = epilogue;
  const int64_t lo = in.lo, hi = in.hi, step = in.step * ld, dj = in.dj * ld;
  const int64_t first = (lo * in.step + in.off) * ld, vector_channels = channels / 8 * 8;
  auto finish = [&](V8 s, int64_t c) { return e.bias ? Finish(s, e, c) : s; };
  for (int64_t c = 0; c < vector_channels; c += 8) {
    V8 k[NR][3];
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < 3; ++j) k[i][j] = Load8(w[3 * i + j] + c);
    int64_t o = lo, p = first + c;
    for (; o + 2 <= hi; o += 2, p += 2 * step) {
      V8 s0 = {}, s1 = {};
      for (int i = 0; i < NR; ++i)
        for (int j = 0; j < 3; ++j) {
          s0 += Load8(rows[i] + p + j * dj) * k[i][j];
          s1 += Load8(rows[i] + p + step + j * dj) * k[i][j];
        }
      Store8(out + o * channels + c, finish(s0, c));
      Store8(out + (o + 1) * channels + c, finish(s1, c));
    }
    if (o < hi) {
      V8 s0 = {};
      for (int i = 0; i < NR; ++i)
        for (int j = 0; j < 3; ++j) s0 += Load8(rows[i] + p + j * dj) * k[i][j];
      Store8(out + o * channels + c, finish(s0, c));
    }
  }
  for (int64_t c = vector_channels; c < channels; ++c) {
    for (int64_t o = lo, p = first + c; o < hi; ++o, p += step) {
      float s0 = 0.f;
      for (int i = 0; i < NR; ++i)
        for (int j = 0; j < 3; ++j) s0 += rows[i][p + j * dj] * w[3 * i + j][c];
      out[o * channels + c] = e.bias ? Finish(s0, e, c) : s0;
    }
  }
}

// Depth multiplier 1 (every MobileNet layer): each output pixel's channels are one
// DotTaps over the valid taps, so every output is written once from registers.
// `rows_of` / `cols_of` give the pairs of a row / column; `src` rows pass through
// the prologue `pro` if it has one (the forward pass at inference).
// `row_done(worker, row, out_row)` runs on each finished output row while it is in
// cache (the input gradient through a prologue masks and sums it there, the forward
// pass in training takes batch norm's sums). `grad` transforms `src` rows (the
// input gradient of a layer whose batch norm follows it).
struct NoRowHook {
  void operator()(int64_t, int64_t, float*) const {}
};

// Pointers one row's DotTaps calls reuse.
struct RowScratch {
  explicit RowScratch(const Geometry& g)
      : cols(g.kw), a(g.kh * g.kw), b(g.kh * g.kw), w(g.kh * g.kw) {}
  std::vector<TapPair> cols;
  std::vector<const float*> a, b, w;
};

// One output row: out_row[c] = sum over the row pairs rows[0..nr) (tap, source row
// row_ptr[i], its pixels `ld` floats apart) and the column pairs cols_of(c) of source
// values times kernel taps, through the epilogue `e`; the interior columns by
// InteriorRow where it applies.
template <typename ColsOf>
void GatherRow(const Geometry& g, const TapPair* rows, int64_t nr, const float* const* row_ptr,
               int64_t ld, int64_t n_cols, ColsOf cols_of, const Interior& interior,
               bool use_interior, const KernelTaps& k, float* out_row, const BiasAct& e,
               RowScratch& s) {
  const bool fast = use_interior && WithRows(nr, g.kw, [&](auto rows_c) {
    for (int64_t i = 0; i < nr; ++i)
      for (int64_t j = 0; j < 3; ++j) s.w[i * 3 + j] = k.Tap(rows[i].tap * 3 + j);
    InteriorRow<decltype(rows_c)::value>(out_row, row_ptr, ld, s.w.data(), interior, g.c, e);
  });
  for (int64_t c = 0; c < n_cols; ++c) {
    if (fast && c == interior.lo) c = interior.hi;  // done above
    if (c == n_cols) break;
    const int64_t nc = cols_of(c, s.cols.data());
    int64_t taps = 0;
    for (int64_t i = 0; i < nr; ++i) {
      for (int64_t j = 0; j < nc; ++j, ++taps) {
        s.a[taps] = row_ptr[i] + s.cols[j].pos * ld;
        s.b[taps] = k.Tap(rows[i].tap * g.kw + s.cols[j].tap);
      }
    }
    DotTaps(out_row + c * g.c, s.a.data(), s.b.data(), taps, g.c, e);
  }
}

// Whether a pass over rows of `n_cols` columns takes InteriorRow's path: few channels,
// or rows long enough that holding the taps' weights in registers across the row pays
// for sweeping it once per 8 channels. On a Zen 4 EPYC the forward pass at 56x56x144
// took 7.6 ms instead of 10.8, at 28x28x192 2.6 instead of 3.4; at 14 and 7 columns
// it was slower (docs/performance.md).
constexpr int64_t kLongRow = 28;
inline bool UseInterior(const Geometry& g, int64_t n_cols, const Interior& interior) {
  return (g.c <= kFewChannels || n_cols >= kLongRow) && interior.hi > interior.lo;
}

template <typename RowsOf, typename ColsOf, typename RowDone = NoRowHook>
void GatherTaps(ffi::ThreadPool& pool, const Geometry& g, int64_t n_rows, int64_t n_cols,
                RowsOf rows_of, ColsOf cols_of, const Interior& interior, const float* src,
                int64_t src_rows, int64_t src_cols, const float* k, float* out,
                const BiasAct& e = {}, const BiasAct& pro = {}, RowDone row_done = {}) {
  const bool use_interior = UseInterior(g, n_cols, interior);
  const KernelTaps taps(k, g.kh * g.kw, g.c);
  ParallelFor(pool, g.n * n_rows, pool.num_threads(), [&](int64_t begin, int64_t end,
                                                          int64_t worker) {
    std::vector<TapPair> rows(g.kh);
    std::vector<const float*> row_ptr(g.kh);
    std::vector<int64_t> row_index(g.kh);
    SourceRows source(src, src_cols * g.c, g.c, pro, g.kh);
    RowScratch scratch(g);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t batch = row / n_rows, r = row % n_rows;
      const int64_t nr = rows_of(r, rows.data());
      for (int64_t i = 0; i < nr; ++i) row_index[i] = batch * src_rows + rows[i].pos;
      source.Get(row_index.data(), nr, row_ptr.data());
      float* out_row = out + row * n_cols * g.c;
      GatherRow(g, rows.data(), nr, row_ptr.data(), source.stride(), n_cols, cols_of, interior,
                use_interior, taps, out_row, e, scratch);
      row_done(worker, row, out_row);
    }
  });
}

// With a prologue (depth multiplier 1 only), y = conv(act(x * scale + shift), k).
template <typename RowDone = NoRowHook>
void Forward(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* k, float* y,
             const BiasAct& e = {}, const BiasAct& pro = {}, RowDone row_done = {}) {
  if (g.m == 1) {
    GatherTaps(
        pool, g, g.oh, g.ow,
        [&](int64_t oh, TapPair* p) {
          return InputsOf(oh, g.kh, g.stride, g.rate, g.pad_top, g.h, p);
        },
        ForwardColumns(g), ForwardInterior(g), x, g.h, g.w, k, y, e, pro, row_done);
    return;
  }
  const int64_t cm = g.cm();
  ParallelFor(pool, g.n * g.oh, pool.num_threads(), [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t row = begin; row < end; ++row) {
      float* yrow = y + row * g.ow * cm;
      std::memset(yrow, 0, sizeof(float) * g.ow * cm);
      ForEachTap(g, x, row, [&](const float* xp, int64_t ow, int64_t tap) {
        MulAccBroadcast(yrow + ow * cm, xp, k + tap * cm, g.c, g.m);
      });
      if (e.bias)  // while the row is in cache
        for (int64_t i = 0; i < g.ow * cm; ++i) yrow[i] = Finish(yrow[i], e, i % cm);
    }
  });
}

// The input gradient's column pairs (input column -> the output columns that read
// it), and their interior: strided, an input column's taps alternate with its
// parity, so there is none.
inline auto InputGradColumns(const Geometry& g) {
  return [&g](int64_t iw, TapPair* p) {
    return OutputsOf(iw, g.kw, g.stride, g.rate, g.pad_left, g.ow, p);
  };
}
inline Interior InputGradInterior(const Geometry& g) {
  return g.stride == 1 ? FindInterior(g.w, g.kw, 1, g.pad_left, -g.rate, InputGradColumns(g))
                       : Interior{};
}

// dx[b, ih, iw] = sum over taps (i, j) whose output (oh, ow) reads (ih, iw).
void InputGrad(ffi::ThreadPool& pool, const Geometry& g, const float* dy, const float* k,
               float* dx) {
  if (g.m == 1) {
    GatherTaps(
        pool, g, g.h, g.w,
        [&](int64_t ih, TapPair* p) {
          return OutputsOf(ih, g.kh, g.stride, g.rate, g.pad_top, g.oh, p);
        },
        InputGradColumns(g), InputGradInterior(g), dy, g.oh, g.ow, k, dx);
    return;
  }
  const int64_t cm = g.cm();
  ParallelFor(pool, g.n * g.h, pool.num_threads(), [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.h, ih = row % g.h;
      float* dxrow = dx + row * g.w * g.c;
      std::memset(dxrow, 0, sizeof(float) * g.w * g.c);
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t t = ih + g.pad_top - i * g.rate;
        if (t < 0 || t % g.stride != 0 || t / g.stride >= g.oh) continue;
        const float* dyrow = dy + (b * g.oh + t / g.stride) * g.ow * cm;
        for (int64_t iw = 0; iw < g.w; ++iw) {
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t u = iw + g.pad_left - j * g.rate;
            if (u < 0 || u % g.stride != 0 || u / g.stride >= g.ow) continue;
            MulAccReduce(dxrow + iw * g.c, dyrow + (u / g.stride) * cm,
                         k + (i * g.kw + j) * cm, g.c, g.m);
          }
        }
      }
    }
  });
}

// The kernel gradient's interior columns of one output row (depth multiplier 1):
// acc[(tap[i] * 3 + j) * C + c] += sum over them of rows[i][o * step + off + j * dj]
// * dy[o], 8 channels at a time with the NR x 3 sums in registers, so each
// multiply-add loads one value where MulAccBroadcast loads two and stores one.
template <int NR>
void InteriorKernelGrad(float* acc, const float* const* rows, int64_t ld, const TapPair* tap,
                        const float* dy, int64_t dy_ld, const Interior& in, int64_t channels) {
  const int64_t dj = in.dj * ld, vector_channels = channels / 8 * 8;
  for (int64_t c = 0; c < vector_channels; c += 8) {
    V8 s[NR][3] = {};
    for (int64_t o = in.lo; o < in.hi; ++o) {
      const int64_t p = (o * in.step + in.off) * ld + c;
      const V8 d = Load8(dy + o * dy_ld + c);
      for (int i = 0; i < NR; ++i)
        for (int j = 0; j < 3; ++j) s[i][j] += Load8(rows[i] + p + j * dj) * d;
    }
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < 3; ++j) {
        float* a = acc + (tap[i].tap * 3 + j) * channels + c;
        Store8(a, Load8(a) + s[i][j]);
      }
  }
  for (int64_t c = vector_channels; c < channels; ++c) {
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < 3; ++j) {
        float s1 = 0.f;
        for (int64_t o = in.lo; o < in.hi; ++o)
          s1 += rows[i][(o * in.step + in.off) * ld + c + j * dj] * dy[o * dy_ld + c];
        acc[(tap[i].tap * 3 + j) * channels + c] += s1;
      }
  }
}

// dst[i] = sum over threads of partial[t][i], for i < size.
void SumPartials(float* dst, const std::vector<std::vector<float>>& partial, int64_t size) {
  std::memcpy(dst, partial[0].data(), sizeof(float) * size);
  for (size_t t = 1; t < partial.size(); ++t)
    for (int64_t i = 0; i < size; ++i) dst[i] += partial[t][i];
}

// acc[(tap * kw + j) * C * M + ...] += one output row's kernel-gradient products:
// the source rows row_ptr[0..nr) (taps rows[i].tap) times that output row's dy.
void KernelGradRow(const Geometry& g, float* acc, const TapPair* rows, int64_t nr,
                   const float* const* row_ptr, int64_t ld, const float* dyrow, int64_t dy_ld,
                   const Interior& interior) {
  const int64_t cm = g.cm();
  const bool fast = interior.hi > interior.lo && WithRows(nr, g.kw, [&](auto rows_c) {
    InteriorKernelGrad<decltype(rows_c)::value>(acc, row_ptr, ld, rows, dyrow, dy_ld, interior,
                                                g.c);
  });
  for (int64_t i = 0; i < nr; ++i) {
    for (int64_t ow = 0; ow < g.ow; ++ow) {
      if (fast && ow == interior.lo) ow = interior.hi;  // done above
      if (ow == g.ow) break;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t iw = InputIndex(ow, j, g.stride, g.rate, g.pad_left, g.w);
        if (iw >= 0)
          MulAccBroadcast(acc + (rows[i].tap * g.kw + j) * cm, row_ptr[i] + iw * ld,
                          dyrow + ow * dy_ld, g.c, g.m);
      }
    }
  }
}

// Workers for a pass over `rows` rows (or blocks) that keeps one accumulator each.
inline int64_t Workers(ffi::ThreadPool& pool, int64_t rows) {
  return std::max<int64_t>(1, std::min(pool.num_threads(), rows));
}

// dk[i, j] = sum over (b, oh, ow) of x[b, ih, iw] * dy[b, oh, ow]: one pass over dy,
// one accumulator per thread, summed at the end.
void KernelGrad(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* dy,
                float* dk) {
  const int64_t cm = g.cm(), taps = g.kh * g.kw, workers = Workers(pool, g.n * g.oh);
  std::vector<std::vector<float>> partial(workers, std::vector<float>(taps * cm, 0.f));
  const Interior interior = g.m == 1 ? ForwardInterior(g) : Interior{};
  ParallelFor(pool, g.n * g.oh, workers, [&](int64_t begin, int64_t end, int64_t worker) {
    std::vector<TapPair> rows(g.kh);
    std::vector<const float*> row_ptr(g.kh);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.oh, oh = row % g.oh;
      const int64_t nr = InputsOf(oh, g.kh, g.stride, g.rate, g.pad_top, g.h, rows.data());
      for (int64_t i = 0; i < nr; ++i) row_ptr[i] = x + (b * g.h + rows[i].pos) * g.w * g.c;
      KernelGradRow(g, partial[worker].data(), rows.data(), nr, row_ptr.data(), g.c,
                    dy + row * g.ow * cm, cm, interior);
    }
  });
  SumPartials(dk, partial, taps * cm);
}

// Both gradients of y = conv(act(x * scale + shift), k) (depth multiplier 1) in one
// sweep over the output rows, dy from dz through a gradient prologue if any:
//   dk as KernelGrad computes it from the activated input x';
//   dx' = the input gradient where the prologue's activation passes it (recomputed
//   from x), else 0, and sums[c] = sum of dx', sums[C + c] = sum of dx' * x: what the
//   scale's and shift's gradients, and batch norm's backward pass, need;
//   dx = dx' * scale (dx' with no scale), the gradient by x, stored.
// Each worker makes an output row's dy once, into a ring of the last few rows, adds
// the row's kernel-gradient products, then computes every input row that this
// output row is the last to read (all its readers' dy rows are in the ring), masks
// it and takes its sums while it is in cache. Two separate passes read dz, y and x
// twice and made dy twice (docs/performance.md).
void BackwardThroughPrologue(ffi::ThreadPool& pool, const Geometry& g, const float* dz,
                             const float* k, const float* x, const BiasAct& pro,
                             const GradPrologue& grad, float* dx, float* dk, float* sums) {
  const int64_t c = g.c, dy_row = g.ow * c, x_row = g.w * c;
  // Per image: the input rows each output row reads last; the rows no output reads
  // (their gradient is 0); and the most consecutive dy rows one input row needs.
  std::vector<std::vector<int64_t>> last_read_by(g.oh);
  std::vector<int64_t> unread;
  int64_t ring = 1;
  std::vector<TapPair> pairs(g.kh);
  for (int64_t ih = 0; ih < g.h; ++ih) {
    const int64_t n = OutputsOf(ih, g.kh, g.stride, g.rate, g.pad_top, g.oh, pairs.data());
    if (n == 0) {
      unread.push_back(ih);
      continue;
    }
    int64_t first = pairs[0].pos, last = pairs[0].pos;
    for (int64_t i = 1; i < n; ++i)
      first = std::min(first, pairs[i].pos), last = std::max(last, pairs[i].pos);
    last_read_by[last].push_back(ih);
    ring = std::max(ring, last - first + 1);
  }
  const Interior forward = ForwardInterior(g), backward = InputGradInterior(g);
  const bool use_interior = UseInterior(g, g.w, backward);
  const int64_t workers = Workers(pool, g.n * g.oh);
  std::vector<std::vector<float>> partial(workers, std::vector<float>(g.kh * g.kw * c, 0.f));
  ChannelSums totals(workers, c);
  const KernelTaps taps(k, g.kh * g.kw, c);
  // dy rows made here are PaddedStride(C) floats a pixel; dz's are C.
  const int64_t dy_ld = grad.y ? PaddedStride(c) : c;
  ParallelFor(pool, g.n * g.oh, workers, [&](int64_t begin, int64_t end, int64_t worker) {
    std::vector<float> made(grad.y ? ring * g.ow * dy_ld : 0);
    std::vector<const float*> dy(ring);  // output row u's dy at u % ring
    auto make_dy = [&](int64_t b, int64_t u) {
      const int64_t at = (b * g.oh + u) * dy_row;
      if (!grad.y) {
        dy[u % ring] = dz + at;
        return;
      }
      float* row = made.data() + (u % ring) * g.ow * dy_ld;
      for (int64_t p = 0, q = 0; p < dy_row; p += c, q += dy_ld)
        GradRow(row + q, dz + at + p, grad.y + at + p, grad, c, dy_row);
      dy[u % ring] = row;
    };
    std::vector<TapPair> rows(g.kh), readers(g.kh);
    std::vector<int64_t> row_index(g.kh);
    std::vector<const float*> row_ptr(g.kh), reader_ptr(g.kh);
    SourceRows source(x, x_row, c, pro, g.kh);
    RowScratch scratch(g);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.oh, oh = row % g.oh;
      if (row == begin)  // the rows before this worker's first that its input rows read
        for (int64_t u = std::max<int64_t>(0, oh - ring + 1); u < oh; ++u) make_dy(b, u);
      make_dy(b, oh);
      const int64_t nr = InputsOf(oh, g.kh, g.stride, g.rate, g.pad_top, g.h, rows.data());
      for (int64_t i = 0; i < nr; ++i) row_index[i] = b * g.h + rows[i].pos;
      source.Get(row_index.data(), nr, row_ptr.data());
      KernelGradRow(g, partial[worker].data(), rows.data(), nr, row_ptr.data(), source.stride(),
                    dy[oh % ring], dy_ld, forward);
      for (int64_t ih : last_read_by[oh]) {
        const int64_t n = OutputsOf(ih, g.kh, g.stride, g.rate, g.pad_top, g.oh, readers.data());
        for (int64_t i = 0; i < n; ++i) reader_ptr[i] = dy[readers[i].pos % ring];
        float* out = dx + (b * g.h + ih) * x_row;
        GatherRow(g, readers.data(), n, reader_ptr.data(), dy_ld, g.w, InputGradColumns(g),
                  backward, use_interior, taps, out, {}, scratch);
        totals.AddRow(worker, out, out, x + (b * g.h + ih) * x_row, pro, g.w);
      }
    }
  });
  for (int64_t b = 0; b < g.n; ++b)
    for (int64_t ih : unread) std::memset(dx + (b * g.h + ih) * x_row, 0, sizeof(float) * x_row);
  SumPartials(dk, partial, g.kh * g.kw * c);
  totals.Write(sums);
}

// A k x k convolution of a narrow input (an image's few channels: the stem) to F
// features, computed directly. XLA's convolution handles 3 input channels badly,
// and image patches times the kernel pay a copy of every pixel's k*k*C values and a
// matrix product with a contraction only 27 deep (docs/performance.md). Here each
// output pixel sums its valid taps' products in vector registers, 32 features at a
// time, each input value broadcast once; the kernel (KH*KW*C*F floats) stays in L1.

// The taps of output pixel (b, oh, ow) that read inside x: the input pixel's values
// xs[t] and the kernel rows' offset offs[t] (tap * C * F). Returns their number.
int64_t NarrowTaps(const Geometry& g, const float* x, int64_t features, int64_t b, int64_t oh,
                   int64_t ow, const float** xs, int64_t* offs) {
  int64_t n = 0;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = InputIndex(oh, i, g.stride, g.rate, g.pad_top, g.h);
    if (ih < 0) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t iw = InputIndex(ow, j, g.stride, g.rate, g.pad_left, g.w);
      if (iw < 0) continue;
      xs[n] = x + ((b * g.h + ih) * g.w + iw) * g.c;
      offs[n++] = (i * g.kw + j) * g.c * features;
    }
  }
  return n;
}

// out[p * F + f] = sum over taps t and channels c of xs[t][at + p * step + c] *
// k[offs[t] + c * F + f], for P adjacent output pixels (whose taps' inputs are
// `step` floats apart) and the 8 * NB features from f. P pixels' sums are
// independent chains, so the FMAs' latency overlaps and each kernel load serves P.
template <int NB, int P>
void NarrowDot(float* out, const float* const* xs, int64_t at, int64_t step,
               const int64_t* offs, int64_t taps, const float* k, int64_t c, int64_t features) {
  V8 acc[P][NB] = {};
  for (int64_t t = 0; t < taps; ++t) {
    const float* xt = xs[t] + at;
    const float* kt = k + offs[t];
    for (int64_t ci = 0; ci < c; ++ci) {
      V8 v[P];
      for (int p = 0; p < P; ++p) v[p] = V8{} + xt[p * step + ci];
      for (int q = 0; q < NB; ++q) {
        const V8 w = Load8(kt + ci * features + 8 * q);
        for (int p = 0; p < P; ++p) acc[p][q] += v[p] * w;
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < NB; ++q) Store8(out + p * features + 8 * q, acc[p][q]);
}

// NarrowDot over all F features of P pixels, 32 at a time, then 8-wide and scalar.
template <int P>
void NarrowPixels(float* out, const float* const* xs, int64_t at, int64_t step,
                  const int64_t* offs, int64_t taps, const float* k, int64_t c,
                  int64_t features) {
  int64_t f = 0;
  for (; f + 32 <= features; f += 32)
    NarrowDot<4, P>(out + f, xs, at, step, offs, taps, k + f, c, features);
  for (; f + 8 <= features; f += 8)
    NarrowDot<1, P>(out + f, xs, at, step, offs, taps, k + f, c, features);
  for (; f < features; ++f) {
    for (int p = 0; p < P; ++p) {
      float s = 0.f;
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t ci = 0; ci < c; ++ci)
          s += xs[t][at + p * step + ci] * k[offs[t] + ci * features + f];
      out[p * features + f] = s;
    }
  }
}

// y[b, oh, ow, f] = sum over (i, j) inside x and c of x[b, ih, iw, c] * k[i, j, c, f]:
// a row's interior columns two pixels at a time (their taps found once per row),
// its edges one.
void NarrowConv(ffi::ThreadPool& pool, const Geometry& g, const float* x, const float* k,
                float* y, int64_t features) {
  const Interior in = ForwardInterior(g);  // columns whose taps all read inside x
  const int64_t lo = in.lo, hi = in.hi, step = g.stride * g.c;
  ParallelFor(pool, g.n * g.oh, pool.num_threads(), [&](int64_t begin, int64_t end, int64_t) {
    std::vector<const float*> xs(g.kh * g.kw);
    std::vector<int64_t> offs(g.kh * g.kw);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.oh, oh = row % g.oh;
      float* out = y + row * g.ow * features;
      int64_t ow = 0;
      if (hi - lo >= 2) {
        const int64_t taps = NarrowTaps(g, x, features, b, oh, lo, xs.data(), offs.data());
        for (ow = lo; ow + 2 <= hi; ow += 2)
          NarrowPixels<2>(out + ow * features, xs.data(), (ow - lo) * step, step, offs.data(),
                          taps, k, g.c, features);
      }
      const int64_t done = ow;  // interior columns [lo, done) are done
      for (ow = 0; ow < g.ow; ++ow) {
        if (ow == lo && done > lo) ow = done;
        if (ow == g.ow) break;
        const int64_t taps = NarrowTaps(g, x, features, b, oh, ow, xs.data(), offs.data());
        NarrowPixels<1>(out + ow * features, xs.data(), 0, step, offs.data(), taps, k, g.c,
                        features);
      }
    }
  });
}

// acc[offs[p] + f] += sum over n output columns o of xs[p][o * step] * d[o * F + f],
// for P (tap, channel) pairs and the 8 * NB features from f: the sums of one row's
// interior columns kept in registers, each dy load serving P pairs.
template <int NB, int P>
void NarrowGradSums(float* acc, const float* const* xs, const int64_t* offs, int64_t step,
                    const float* d, int64_t features, int64_t n) {
  V8 sum[P][NB] = {};
  for (int64_t o = 0; o < n; ++o) {
    V8 v[P];
    for (int p = 0; p < P; ++p) v[p] = V8{} + xs[p][o * step];
    for (int q = 0; q < NB; ++q) {
      const V8 dv = Load8(d + o * features + 8 * q);
      for (int p = 0; p < P; ++p) sum[p][q] += v[p] * dv;
    }
  }
  for (int p = 0; p < P; ++p)
    for (int q = 0; q < NB; ++q) {
      float* a = acc + offs[p] + 8 * q;
      Store8(a, Load8(a) + sum[p][q]);
    }
}

// NarrowGradSums over every (tap, channel) pair, two at a time, and all F features.
template <int NB>
void NarrowGradPairs(float* acc, const float* const* xs, const int64_t* offs, int64_t pairs,
                     int64_t step, const float* d, int64_t features, int64_t n) {
  int64_t p = 0;
  for (; p + 2 <= pairs; p += 2)
    NarrowGradSums<NB, 2>(acc, xs + p, offs + p, step, d, features, n);
  if (p < pairs) NarrowGradSums<NB, 1>(acc, xs + p, offs + p, step, d, features, n);
}

// dk[i, j, c, f] = sum over output pixels of x[b, ih, iw, c] * dy[b, oh, ow, f], into
// one accumulator per thread (KH*KW*C*F floats, in L1), summed at the end. A row's
// interior columns are summed in registers per (tap, channel) pair; its edge
// columns, whose taps differ, add each pixel's products to the accumulator.
void NarrowKernelGrad(ffi::ThreadPool& pool, const Geometry& g, const float* x,
                      const float* dy, float* dk, int64_t features) {
  const int64_t size = g.kh * g.kw * g.c * features, f8 = features / 8 * 8;
  const Interior in = ForwardInterior(g);  // columns whose taps all read inside x
  const int64_t lo = in.lo, hi = in.hi, step = g.stride * g.c, taps_max = g.kh * g.kw;
  const int64_t workers = Workers(pool, g.n * g.oh);
  std::vector<std::vector<float>> partial(workers, std::vector<float>(size, 0.f));
  ParallelFor(pool, g.n * g.oh, workers, [&](int64_t begin, int64_t end, int64_t worker) {
    float* acc = partial[worker].data();
    std::vector<const float*> xs(taps_max), pair_x(taps_max * g.c);
    std::vector<int64_t> offs(taps_max), pair_off(taps_max * g.c);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.oh, oh = row % g.oh;
      const float* dyrow = dy + row * g.ow * features;
      for (int64_t ow = 0; ow < g.ow; ++ow) {
        if (ow == lo && hi > lo) {  // the interior, in registers
          const int64_t taps = NarrowTaps(g, x, features, b, oh, lo, xs.data(), offs.data());
          int64_t pairs = 0;
          for (int64_t t = 0; t < taps; ++t)
            for (int64_t ci = 0; ci < g.c; ++ci, ++pairs) {
              pair_x[pairs] = xs[t] + ci;
              pair_off[pairs] = offs[t] + ci * features;
            }
          const float* d = dyrow + lo * features;
          int64_t f = 0;
          for (; f + 32 <= features; f += 32)
            NarrowGradPairs<4>(acc + f, pair_x.data(), pair_off.data(), pairs, step, d + f,
                               features, hi - lo);
          for (; f + 8 <= features; f += 8)
            NarrowGradPairs<1>(acc + f, pair_x.data(), pair_off.data(), pairs, step, d + f,
                               features, hi - lo);
          for (; f < features; ++f)
            for (int64_t p = 0; p < pairs; ++p)
              for (int64_t o = 0; o < hi - lo; ++o)
                acc[pair_off[p] + f] += pair_x[p][o * step] * d[o * features + f];
          ow = hi - 1;
          continue;
        }
        const float* d = dyrow + ow * features;
        const int64_t taps = NarrowTaps(g, x, features, b, oh, ow, xs.data(), offs.data());
        for (int64_t t = 0; t < taps; ++t) {
          for (int64_t ci = 0; ci < g.c; ++ci) {
            const float v = xs[t][ci];
            float* a = acc + offs[t] + ci * features;
            for (int64_t f = 0; f < f8; f += 8) Store8(a + f, Load8(a + f) + v * Load8(d + f));
            for (int64_t f = f8; f < features; ++f) a[f] += v * d[f];
          }
        }
      }
    }
  });
  SumPartials(dk, partial, size);
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

// x: (N, H, W, C), kernel: (KH, KW, 1, C*M), y: (N, OH, OW, C*M).
Geometry FromShapes(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel,
                    ffi::Span<const int64_t> y, int64_t stride, int64_t rate,
                    int64_t pad_top, int64_t pad_left) {
  return Geometry{x[0], x[1], x[2], x[3], kernel[3] / x[3], kernel[0], kernel[1],
                  y[1], y[2], stride, rate, pad_top, pad_left};
}

// Keeps v in a register: else GCC folds its load into every multiply-add that reads
// it, one load per FMA (x86 with AVX; elsewhere nothing).
inline void InRegister(V8& v) {
#ifdef __AVX__
  __asm__("" : "+x"(v));
#else
  (void)v;
#endif
}

// dk[c, f] = sum over pixels p of x[p, c] * dy[p, f]: a 1x1 convolution's kernel
// gradient. XLA's dot is slow at these long, thin contractions when C and F are
// small and the pixels many (V2's 32 -> 16 projection at 112x112, batch 32: 9.7 ms
// against this loop's 2.4). Here KB channels by 8 * NB features of the sums stay in
// registers while a block of pixels (in L1) is read once per tile.
template <int KB, int NB>
void PointwiseGradTile(float* acc, const float* x, const float* dy, int64_t pixels,
                       int64_t channels, int64_t features) {
  V8 sum[KB][NB] = {};
  for (int64_t p = 0; p < pixels; ++p) {
    V8 d[NB];
    for (int q = 0; q < NB; ++q) {
      d[q] = Load8(dy + p * features + 8 * q);
      InRegister(d[q]);
    }
    for (int k = 0; k < KB; ++k) {
      const float xv = x[p * channels + k];
      const V8 v = {xv, xv, xv, xv, xv, xv, xv, xv};  // a broadcast, not 0 + x
      for (int q = 0; q < NB; ++q) sum[k][q] += v * d[q];
    }
  }
  for (int k = 0; k < KB; ++k)
    for (int q = 0; q < NB; ++q) {
      float* a = acc + k * features + 8 * q;
      Store8(a, Load8(a) + sum[k][q]);
    }
}

#ifdef __AVX512F__
constexpr bool kWideRegisters = true;  // 32 vector registers, not 16
#else
constexpr bool kWideRegisters = false;
#endif

// Features [f, f + 8 * NB) of one block of pixels, for every channel: KB channels a
// tile, as many sums as the registers hold beside NB loads of dy and a broadcast.
template <int NB>
void PointwiseGradFeatures(float* acc, const float* x, const float* dy, int64_t pixels,
                           int64_t channels, int64_t features) {
  constexpr int KB = kWideRegisters && NB <= 3 ? 8 : 4;
  int64_t c = 0;
  for (; c + KB <= channels; c += KB)
    PointwiseGradTile<KB, NB>(acc + c * features, x + c, dy, pixels, channels, features);
  for (; c + 4 <= channels; c += 4)
    PointwiseGradTile<4, NB>(acc + c * features, x + c, dy, pixels, channels, features);
  for (; c < channels; ++c)
    PointwiseGradTile<1, NB>(acc + c * features, x + c, dy, pixels, channels, features);
}

// Every tile of one block of pixels.
void PointwiseGradBlock(float* acc, const float* x, const float* dy, int64_t pixels,
                        int64_t channels, int64_t features) {
  int64_t f = 0;
  if (kWideRegisters) {
    for (; f + 32 <= features; f += 32)
      PointwiseGradFeatures<4>(acc + f, x, dy + f, pixels, channels, features);
    if (f + 24 <= features) {
      PointwiseGradFeatures<3>(acc + f, x, dy + f, pixels, channels, features);
      f += 24;
    }
  }
  for (; f + 16 <= features; f += 16)
    PointwiseGradFeatures<2>(acc + f, x, dy + f, pixels, channels, features);
  for (; f + 8 <= features; f += 8)
    PointwiseGradFeatures<1>(acc + f, x, dy + f, pixels, channels, features);
  for (; f < features; ++f)
    for (int64_t p = 0; p < pixels; ++p)
      for (int64_t c = 0; c < channels; ++c)
        acc[c * features + f] += x[p * channels + c] * dy[p * features + f];
}

void PointwiseKernelGradSums(ffi::ThreadPool& pool, const float* x, const float* dy, float* dk,
                             int64_t pixels, int64_t channels, int64_t features) {
  constexpr int64_t kBlock = 32;  // pixels a tile reads: (C + F) * 128 bytes, in L1
  const int64_t blocks = (pixels + kBlock - 1) / kBlock, size = channels * features;
  const int64_t workers = Workers(pool, blocks);
  std::vector<std::vector<float>> partial(workers, std::vector<float>(size, 0.f));
  ParallelFor(pool, blocks, workers, [&](int64_t begin, int64_t end, int64_t worker) {
    float* acc = partial[worker].data();
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * kBlock, n = std::min(kBlock, pixels - p0);
      PointwiseGradBlock(acc, x + p0 * channels, dy + p0 * features, n, channels, features);
    }
  });
  SumPartials(dk, partial, size);
}

// dx[p, c] = sum over f of dy[p, f] * kt[f, c] for P pixels (kt: the kernel
// transposed, F x C): 32 channels of P pixels' sums in registers, each of the
// kernel's loads serving the P pixels.
template <int P>
void PointwiseInputGradPixels(float* dx, const float* dy, const float* kt, int64_t channels,
                              int64_t features) {
  int64_t c = 0;
  for (; c + 32 <= channels; c += 32) {
    V8 sum[P][4] = {};
    for (int64_t f = 0; f < features; ++f) {
      V8 w[4];
      for (int u = 0; u < 4; ++u) w[u] = Load8(kt + f * channels + c + 8 * u);
      for (int p = 0; p < P; ++p) {
        const float dv = dy[p * features + f];
        const V8 v = {dv, dv, dv, dv, dv, dv, dv, dv};
        for (int u = 0; u < 4; ++u) sum[p][u] += v * w[u];
      }
    }
    for (int p = 0; p < P; ++p)
      for (int u = 0; u < 4; ++u) Store8(dx + p * channels + c + 8 * u, sum[p][u]);
  }
  for (; c + 8 <= channels; c += 8) {
    V8 sum[P] = {};
    for (int64_t f = 0; f < features; ++f) {
      const V8 w = Load8(kt + f * channels + c);
      for (int p = 0; p < P; ++p) sum[p] += (V8{} + dy[p * features + f]) * w;
    }
    for (int p = 0; p < P; ++p) Store8(dx + p * channels + c, sum[p]);
  }
  for (; c < channels; ++c)
    for (int p = 0; p < P; ++p) {
      float sum = 0.f;
      for (int64_t f = 0; f < features; ++f) sum += dy[p * features + f] * kt[f * channels + c];
      dx[p * channels + c] = sum;
    }
}

// Both gradients of y = x @ k (x (P, C), k (C, F)) whose sums (of y and y * y: batch
// norm's statistics, batchnorm.native_sums) are an output too: from the cotangents
// dz of y and (d0, d1) of the sums, dy = dz + d0 + 2 * d1 * y. One pass over blocks
// of 32 pixels makes each block's dy in L1, adds its kernel-gradient products
// (PointwiseGradBlock) and computes its rows of dx = dy k^T. XLA made dy in a pass of
// its own (reading dz and y, writing dy) and read it once per product, the two products
// at once on the two cores (docs/performance.md, "One pass for a 1x1 layer's
// gradients").
void PointwiseBackwardThroughSums(ffi::ThreadPool& pool, const float* x, const float* k,
                                  const float* dz, const float* y, const float* d0,
                                  const float* d1, float* dx, float* dk, int64_t pixels,
                                  int64_t channels, int64_t features) {
  constexpr int64_t kBlock = 32;
  const int64_t blocks = (pixels + kBlock - 1) / kBlock, size = channels * features;
  const int64_t workers = Workers(pool, blocks);
  std::vector<float> kt(size), two_d1(features);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t f = 0; f < features; ++f) kt[f * channels + c] = k[c * features + f];
  for (int64_t f = 0; f < features; ++f) two_d1[f] = 2.f * d1[f];
  std::vector<std::vector<float>> partial(workers, std::vector<float>(size, 0.f));
  ParallelFor(pool, blocks, workers, [&](int64_t begin, int64_t end, int64_t worker) {
    std::vector<float> dy(kBlock * features);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * kBlock, n = std::min(kBlock, pixels - p0);
      const float *zb = dz + p0 * features, *yb = y + p0 * features;
      for (int64_t i = 0; i < n * features; i += features) {
        int64_t f = 0;
        for (; f + 8 <= features; f += 8)
          Store8(dy.data() + i + f, Load8(zb + i + f) + Load8(d0 + f) +
                                        Load8(two_d1.data() + f) * Load8(yb + i + f));
        for (; f < features; ++f) dy[i + f] = zb[i + f] + d0[f] + two_d1[f] * yb[i + f];
      }
      PointwiseGradBlock(partial[worker].data(), x + p0 * channels, dy.data(), n, channels,
                         features);
      float* dxb = dx + p0 * channels;
      int64_t p = 0;
      if (kWideRegisters)  // 4 pixels' sums take 16 of the 32 registers
        for (; p + 4 <= n; p += 4)
          PointwiseInputGradPixels<4>(dxb + p * channels, dy.data() + p * features, kt.data(),
                                      channels, features);
      for (; p + 2 <= n; p += 2)
        PointwiseInputGradPixels<2>(dxb + p * channels, dy.data() + p * features, kt.data(),
                                    channels, features);
      for (; p < n; ++p)
        PointwiseInputGradPixels<1>(dxb + p * channels, dy.data() + p * features, kt.data(),
                                    channels, features);
    }
  });
  SumPartials(dk, partial, size);
}

ffi::Error CheckRanks(size_t a, size_t b, size_t c) {
  if (a != 4 || b != 4 || c != 4)
    return ffi::Error::InvalidArgument("depthwise_cpu: operands must be rank 4 (NHWC, HWIO)");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, F32 x, F32 k, F32Out y, int64_t stride, int64_t rate,
                       int64_t pad_top, int64_t pad_left) {
  auto dx = x.dimensions(), dk = k.dimensions(), dy = y->dimensions();
  if (auto e = CheckRanks(dx.size(), dk.size(), dy.size()); e.failure()) return e;
  Forward(pool, FromShapes(dx, dk, dy, stride, rate, pad_top, pad_left), x.typed_data(),
          k.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

// Activation codes 0 linear, 1 ReLU, 2 ReLU6 (enum Activation).
ffi::Error CheckActivation(int64_t activation) {
  if (activation < kLinear || activation > kRelu6)
    return ffi::Error::InvalidArgument("depthwise_cpu: activations are 0, 1 or 2");
  return ffi::Error::Success();
}

// The prologue's operands (scale, shift: see ForwardFusedImpl) checked, and as a BiasAct.
ffi::Error CheckPrologue(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k, F32& scale,
                         F32& shift, int64_t input_activation) {
  const int64_t c = x[3];
  const bool prologue = shift.element_count() != 0;
  if (prologue ? (shift.element_count() != c || k[3] != c ||
                  (scale.element_count() != 0 && scale.element_count() != c))
               : scale.element_count() != 0)
    return ffi::Error::InvalidArgument(
        "depthwise_cpu: shift must be empty or have the input's channels (depth multiplier "
        "1), and scale empty or the same, only with a shift");
  return CheckActivation(input_activation);
}

BiasAct Prologue(F32& scale, F32& shift, int64_t input_activation) {
  if (shift.element_count() == 0) return {};
  return {shift.typed_data(), input_activation,
          scale.element_count() ? scale.typed_data() : nullptr};
}

// The forward pass with batch norms applied on the way: y = act(conv(pre(x * scale +
// shift), k) + bias). scale and shift (C,) and pre are the previous layer's (an empty
// shift: x is used as it is; an empty scale: 1), bias (C*M,) and act this layer's (an
// empty bias: none). Inference, batch norms folded, passes a shift and a bias; training
// a scale and a shift from the batch's statistics and no bias. Activations 0 linear,
// 1 ReLU, 2 ReLU6.
ffi::Error ForwardFusedImpl(ffi::ThreadPool pool, F32 x, F32 scale, F32 shift, F32 k, F32 bias,
                            F32Out y, int64_t stride, int64_t rate, int64_t pad_top,
                            int64_t pad_left, int64_t input_activation, int64_t activation) {
  auto dx = x.dimensions(), dk = k.dimensions(), dy = y->dimensions();
  if (auto e = CheckRanks(dx.size(), dk.size(), dy.size()); e.failure()) return e;
  if (auto e = CheckPrologue(dx, dk, scale, shift, input_activation); e.failure()) return e;
  if (bias.element_count() != 0 && bias.element_count() != dk[3])
    return ffi::Error::InvalidArgument(
        "depthwise_cpu: bias must be empty or have the output's channels");
  if (auto e = CheckActivation(activation); e.failure()) return e;
  const BiasAct epilogue{bias.element_count() ? bias.typed_data() : nullptr, activation};
  Forward(pool, FromShapes(dx, dk, dy, stride, rate, pad_top, pad_left), x.typed_data(),
          k.typed_data(), y->typed_data(), epilogue, Prologue(scale, shift, input_activation));
  return ffi::Error::Success();
}

// The forward pass of training with the batch norm after the layer: y = conv(pre(x *
// scale + shift), k) as ForwardFusedImpl (no bias), and that batch norm's sums (2, C)
// taken while each output row is in cache: sum of y, sum of y * y.
ffi::Error ForwardStatsImpl(ffi::ThreadPool pool, F32 x, F32 scale, F32 shift, F32 k,
                            F32Out y, F32Out sums, int64_t stride, int64_t rate,
                            int64_t pad_top, int64_t pad_left, int64_t input_activation) {
  auto dx = x.dimensions(), dk = k.dimensions(), dy = y->dimensions();
  if (auto e = CheckRanks(dx.size(), dk.size(), dy.size()); e.failure()) return e;
  if (auto e = CheckPrologue(dx, dk, scale, shift, input_activation); e.failure()) return e;
  if (dk[3] != dx[3] || sums->element_count() != static_cast<size_t>(2 * dx[3]))
    return ffi::Error::InvalidArgument(
        "depthwise_cpu: statistics need depth multiplier 1 and sums of (2, C)");
  const Geometry g = FromShapes(dx, dk, dy, stride, rate, pad_top, pad_left);
  ChannelSums totals(pool.num_threads() + 1, g.c);
  Forward(pool, g, x.typed_data(), k.typed_data(), y->typed_data(), {},
          Prologue(scale, shift, input_activation),
          [&](int64_t worker, int64_t, float* out) {
            totals.AddRow(worker, out, nullptr, out, {}, g.ow);
          });
  totals.Write(sums->typed_data());
  return ffi::Error::Success();
}

// The gradient prologue's operands: y (the layer's output; empty: none), and a, b,
// c1, c2 of its channels (GradPrologue), checked, and as a GradPrologue.
ffi::Error CheckGrad(ffi::Span<const int64_t> out, F32& y, F32& a, F32& b, F32& c1, F32& c2,
                     int64_t activation) {
  if (y.element_count() == 0) return ffi::Error::Success();
  size_t size = 1;
  for (int64_t d : out) size *= d;
  const size_t c = out[out.size() - 1];
  if (y.element_count() != size || a.element_count() != c || b.element_count() != c ||
      c1.element_count() != c || c2.element_count() != c)
    return ffi::Error::InvalidArgument(
        "depthwise_cpu: the gradient prologue needs y of the output's shape and a, b, c1, "
        "c2 of its channels");
  return CheckActivation(activation);
}

GradPrologue Grad(F32& y, F32& a, F32& b, F32& c1, F32& c2, int64_t activation) {
  if (y.element_count() == 0) return {};
  return {y.typed_data(), a.typed_data(), b.typed_data(), c1.typed_data(), c2.typed_data(),
          activation};
}

// Per-channel sums (2, C) of v and of v * y, v = dz where act(y * a + b) passes the
// gradient, in one pass over dz and y (any rank, channels last): batch norm's backward
// sums, and (dz = y, a = 1, b = 0, linear) its statistics, sum of y and of y * y.
ffi::Error ChannelSumsImpl(ffi::ThreadPool pool, F32 dz, F32 y, F32 a, F32 b, F32Out sums,
                           int64_t activation) {
  auto shape = dz.dimensions();
  const int64_t c = shape.size() < 2 ? 0 : shape[shape.size() - 1];
  if (c == 0 || y.element_count() != dz.element_count() ||
      a.element_count() != static_cast<size_t>(c) ||
      b.element_count() != static_cast<size_t>(c) ||
      sums->element_count() != static_cast<size_t>(2 * c))
    return ffi::Error::InvalidArgument(
        "channel_sums: dz and y of one shape, a and b of its channels, sums (2, C)");
  if (auto e = CheckActivation(activation); e.failure()) return e;
  const int64_t width = shape[shape.size() - 2];
  const int64_t rows = dz.element_count() / (width * c);
  ChannelSums totals(pool.num_threads() + 1, c);
  const BiasAct mask{b.typed_data(), activation, a.typed_data()};
  ParallelFor(pool, rows, pool.num_threads(), [&](int64_t begin, int64_t end, int64_t worker) {
    for (int64_t row = begin; row < end; ++row)
      totals.AddRowInOrder(worker, dz.typed_data() + row * width * c,
                           y.typed_data() + row * width * c, mask, width);
  });
  totals.Write(sums->typed_data());
  return ffi::Error::Success();
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, F32 dy, F32 k, F32Out dx, int64_t stride,
                         int64_t rate, int64_t pad_top, int64_t pad_left) {
  auto sx = dx->dimensions(), sk = k.dimensions(), sy = dy.dimensions();
  if (auto e = CheckRanks(sx.size(), sk.size(), sy.size()); e.failure()) return e;
  InputGrad(pool, FromShapes(sx, sk, sy, stride, rate, pad_top, pad_left), dy.typed_data(),
            k.typed_data(), dx->typed_data());
  return ffi::Error::Success();
}

ffi::Error KernelGradImpl(ffi::ThreadPool pool, F32 x, F32 dy, F32Out dk, int64_t stride,
                          int64_t rate, int64_t pad_top, int64_t pad_left) {
  auto sx = x.dimensions(), sk = dk->dimensions(), sy = dy.dimensions();
  if (auto e = CheckRanks(sx.size(), sk.size(), sy.size()); e.failure()) return e;
  KernelGrad(pool, FromShapes(sx, sk, sy, stride, rate, pad_top, pad_left), x.typed_data(),
             dy.typed_data(), dk->typed_data());
  return ffi::Error::Success();
}

// Both gradients of the fused forward pass through its prologue, as
// BackwardThroughPrologue says: dk, dx (N, H, W, C) and sums (2, C); dy from dz
// through the gradient prologue (y, a, b, c1, c2; empty y: dz is dy).
ffi::Error BackwardFusedImpl(ffi::ThreadPool pool, F32 dz, F32 y, F32 a, F32 b, F32 c1,
                             F32 c2, F32 k, F32 x, F32 scale, F32 shift, F32Out dk, F32Out dx,
                             F32Out sums, int64_t stride, int64_t rate, int64_t pad_top,
                             int64_t pad_left, int64_t input_activation, int64_t activation) {
  auto sx = x.dimensions(), sk = k.dimensions(), sy = dz.dimensions();
  if (auto e = CheckRanks(sx.size(), sk.size(), sy.size()); e.failure()) return e;
  if (auto e = CheckPrologue(sx, sk, scale, shift, input_activation); e.failure()) return e;
  if (auto e = CheckGrad(sy, y, a, b, c1, c2, activation); e.failure()) return e;
  if (shift.element_count() == 0 || sk[3] != sx[3] ||
      sums->element_count() != static_cast<size_t>(2 * sx[3]))
    return ffi::Error::InvalidArgument(
        "depthwise_cpu: the fused backward pass needs a shift, depth multiplier 1 and sums "
        "of (2, C)");
  BackwardThroughPrologue(pool, FromShapes(sx, sk, sy, stride, rate, pad_top, pad_left),
                          dz.typed_data(), k.typed_data(), x.typed_data(),
                          Prologue(scale, shift, input_activation),
                          Grad(y, a, b, c1, c2, activation), dx->typed_data(),
                          dk->typed_data(), sums->typed_data());
  return ffi::Error::Success();
}

// x: (N, H, W, C), k: (KH, KW, C, F), y: (N, OH, OW, F).
ffi::Error CheckNarrow(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                       ffi::Span<const int64_t> y) {
  if (auto e = CheckRanks(x.size(), k.size(), y.size()); e.failure()) return e;
  if (k[2] != x[3] || k[3] != y[3] || y[0] != x[0])
    return ffi::Error::InvalidArgument("narrow_conv_cpu: need x (N, H, W, C), k (KH, KW, C, F) "
                                       "and y (N, OH, OW, F)");
  return ffi::Error::Success();
}
Geometry NarrowGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                        ffi::Span<const int64_t> y, int64_t stride, int64_t rate,
                        int64_t pad_top, int64_t pad_left) {
  return Geometry{x[0], x[1], x[2], x[3], 1, k[0], k[1], y[1], y[2], stride, rate, pad_top,
                  pad_left};
}

ffi::Error NarrowConvImpl(ffi::ThreadPool pool, F32 x, F32 k, F32Out y, int64_t stride,
                          int64_t rate, int64_t pad_top, int64_t pad_left) {
  auto sx = x.dimensions(), sk = k.dimensions(), sy = y->dimensions();
  if (auto e = CheckNarrow(sx, sk, sy); e.failure()) return e;
  NarrowConv(pool, NarrowGeometry(sx, sk, sy, stride, rate, pad_top, pad_left), x.typed_data(),
             k.typed_data(), y->typed_data(), sy[3]);
  return ffi::Error::Success();
}

// x: (N, H, W, C), dy: (N, OH, OW, F), dk: (KH, KW, C, F).
ffi::Error NarrowConvKernelGradImpl(ffi::ThreadPool pool, F32 x, F32 dy, F32Out dk,
                                    int64_t stride, int64_t rate, int64_t pad_top,
                                    int64_t pad_left) {
  auto sx = x.dimensions(), sy = dy.dimensions(), sk = dk->dimensions();
  if (auto e = CheckNarrow(sx, sk, sy); e.failure()) return e;
  NarrowKernelGrad(pool, NarrowGeometry(sx, sk, sy, stride, rate, pad_top, pad_left),
                   x.typed_data(), dy.typed_data(), dk->typed_data(), sy[3]);
  return ffi::Error::Success();
}

// x: (P, C), k: (C, F), dz and y: (P, F), d0 and d1: (F); dx: (P, C), dk: (C, F).
ffi::Error PointwiseBackwardSumsImpl(ffi::ThreadPool pool, F32 x, F32 k, F32 dz, F32 y, F32 d0,
                                     F32 d1, F32Out dx, F32Out dk) {
  auto sx = x.dimensions(), sk = k.dimensions(), sz = dz.dimensions();
  if (sx.size() != 2 || sk.size() != 2 || sz.size() != 2 || sk[0] != sx[1] ||
      sz[0] != sx[0] || sz[1] != sk[1] || y.element_count() != dz.element_count() ||
      d0.element_count() != static_cast<size_t>(sk[1]) ||
      d1.element_count() != static_cast<size_t>(sk[1]) ||
      dx->element_count() != x.element_count() || dk->element_count() != k.element_count())
    return ffi::Error::InvalidArgument(
        "pointwise_backward_sums_cpu: need x (P, C), k (C, F), dz and y (P, F), d0 and d1 "
        "(F), dx (P, C) and dk (C, F)");
  PointwiseBackwardThroughSums(pool, x.typed_data(), k.typed_data(), dz.typed_data(),
                               y.typed_data(), d0.typed_data(), d1.typed_data(),
                               dx->typed_data(), dk->typed_data(), sx[0], sx[1], sk[1]);
  return ffi::Error::Success();
}

// x: (P, C), dy: (P, F), dk: (C, F).
ffi::Error PointwiseKernelGradImpl(ffi::ThreadPool pool, F32 x, F32 dy, F32Out dk) {
  auto sx = x.dimensions(), sy = dy.dimensions(), sk = dk->dimensions();
  if (sx.size() != 2 || sy.size() != 2 || sk.size() != 2 || sy[0] != sx[0] ||
      sk[0] != sx[1] || sk[1] != sy[1])
    return ffi::Error::InvalidArgument("pointwise_kernel_grad_cpu: need x (P, C), dy (P, F) "
                                       "and dk (C, F)");
  PointwiseKernelGradSums(pool, x.typed_data(), dy.typed_data(), dk->typed_data(), sx[0],
                          sx[1], sy[1]);
  return ffi::Error::Success();
}

}  // namespace

#define GEOMETRY_ATTRS()       \
  Attr<int64_t>("stride")      \
      .Attr<int64_t>("dilation") \
      .Attr<int64_t>("pad_top")  \
      .Attr<int64_t>("pad_left")
#define DEPTHWISE_BINDING() \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Ret<F32>().GEOMETRY_ATTRS()

XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseForward, ForwardImpl, DEPTHWISE_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseForwardFused, ForwardFusedImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .GEOMETRY_ATTRS()
                                  .Attr<int64_t>("input_activation")
                                  .Attr<int64_t>("activation"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseForwardStats, ForwardStatsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .GEOMETRY_ATTRS()
                                  .Attr<int64_t>("input_activation"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(MaskedChannelSums, ChannelSumsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Attr<int64_t>("activation"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseInputGrad, InputGradImpl,
                              DEPTHWISE_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseKernelGrad, KernelGradImpl,
                              DEPTHWISE_BINDING());
// The gradient prologue's operands (y, a, b, c1, c2).
#define GRAD_PROLOGUE_ARGS() Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
// (dz, y, a, b, c1, c2, kernel, x, scale, shift) -> (dkernel, dx', sums).
XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseBackwardFused, BackwardFusedImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()
                                  .GRAD_PROLOGUE_ARGS()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>()
                                  .GEOMETRY_ATTRS()
                                  .Attr<int64_t>("input_activation")
                                  .Attr<int64_t>("activation"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(NarrowConvForward, NarrowConvImpl, DEPTHWISE_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(NarrowConvKernelGrad, NarrowConvKernelGradImpl,
                              DEPTHWISE_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    PointwiseKernelGrad, PointwiseKernelGradImpl,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(PointwiseBackwardSums, PointwiseBackwardSumsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Arg<F32>()
                                  .Ret<F32>()
                                  .Ret<F32>());

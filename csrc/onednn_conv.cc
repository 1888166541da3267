// oneDNN convolutions as XLA FFI custom calls on the CPU: the forward pass, its input
// gradient and its kernel gradient (alone, or with the bias gradient in the same pass
// over the output gradient), for 2-D NHWC activations and HWIO kernels (grouped:
// [kh, kw, C / groups, O]), float32 or bfloat16. Loaded and registered by
// catsdogs_jax/models/onednn.py, which also checks which convolutions fit.
//
// oneDNN picks its fastest kernel when it may choose the kernel's memory layout
// (format_tag::any), so the kernel (or its gradient) is reordered from JAX's HWIO on
// every call: a small cost beside the convolution. Activations stay NHWC, which oneDNN's
// brgemm convolutions read directly. Primitives are built once per shape and cached.

#include <array>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum class Kind : int64_t { kForward, kInputGrad, kKernelGrad, kKernelBiasGrad };

// Everything a primitive depends on: which pass, shapes, strides, padding, groups, dtype.
struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, stride_h, stride_w, pad_top, pad_left, pad_bottom,
      pad_right, groups;
  memory::data_type dtype;
};

using Key = std::array<int64_t, 18>;

struct KeyHash {
  size_t operator()(const Key& key) const {
    size_t h = 0;
    for (int64_t v : key) h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

Key MakeKey(Kind kind, const Geometry& g) {
  return {static_cast<int64_t>(kind), g.n, g.h, g.w, g.c, g.kh, g.kw, g.o, g.oh, g.ow,
          g.stride_h, g.stride_w, g.pad_top, g.pad_left, g.pad_bottom, g.pad_right, g.groups,
          static_cast<int64_t>(g.dtype)};
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One stream per XLA thread: streams are cheap to keep, not to make per call.
dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

memory::desc Activations(const Geometry& g, int64_t h, int64_t w, int64_t channels) {
  return memory::desc({g.n, channels, h, w}, g.dtype, memory::format_tag::nhwc);
}

// JAX's kernel [kh, kw, C / groups, O], output channels grouped outermost: oneDNN's
// hwio, or hwigo (dims g, O / g, C / g, kh, kw) with groups.
memory::desc Kernel(const Geometry& g, memory::format_tag tag, memory::data_type dtype) {
  if (g.groups == 1) {
    return memory::desc({g.o, g.c, g.kh, g.kw}, dtype,
                        tag == memory::format_tag::any ? tag : memory::format_tag::hwio);
  }
  return memory::desc({g.groups, g.o / g.groups, g.c / g.groups, g.kh, g.kw}, dtype,
                      tag == memory::format_tag::any ? tag : memory::format_tag::hwigo);
}

// A cached primitive, the kernel layout it wants and the reorder to or from JAX's.
struct Conv {
  dnnl::primitive primitive;
  memory::desc kernel;       // the primitive's kernel (or kernel gradient) layout
  memory::desc user_kernel;  // JAX's layout
  memory::desc bias;         // the bias gradient's, [O] (kKernelBiasGrad)
  memory::desc scratchpad;
  bool reorder = false;
  dnnl::reorder reorder_kernel;
};

memory::desc Bias(const Geometry& g, memory::data_type dtype) {
  return memory::desc({g.o}, dtype, memory::format_tag::a);
}

// The forward pass, also the hint each backward pass is built from (with the bias when it
// computes the bias gradient, so that the two describe the same convolution).
dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g,
                                                      const dnnl::primitive_attr& attr,
                                                      const memory::desc& bias) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Activations(g, g.h, g.w, g.c), Kernel(g, memory::format_tag::any, g.dtype), bias,
      Activations(g, g.oh, g.ow, g.o), {g.stride_h, g.stride_w}, {g.pad_top, g.pad_left},
      {g.pad_bottom, g.pad_right}, attr);
}

std::shared_ptr<Conv> Build(Kind kind, const Geometry& g, memory::data_type kernel_dtype) {
  dnnl::primitive_attr attr;
  // Scratchpads per call: the same primitive may run on several XLA threads at once.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto conv = std::make_shared<Conv>();
  conv->user_kernel = Kernel(g, memory::format_tag::hwio, kernel_dtype);
  if (kind == Kind::kKernelBiasGrad) conv->bias = Bias(g, kernel_dtype);
  auto forward = ForwardDesc(g, attr, conv->bias);
  if (kind == Kind::kForward) {
    conv->primitive = dnnl::convolution_forward(forward);
    conv->kernel = forward.weights_desc();
    conv->scratchpad = forward.scratchpad_desc();
  } else if (kind == Kind::kInputGrad) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, Activations(g, g.h, g.w, g.c),
        Kernel(g, memory::format_tag::any, g.dtype), Activations(g, g.oh, g.ow, g.o),
        {g.stride_h, g.stride_w}, {g.pad_top, g.pad_left}, {g.pad_bottom, g.pad_right}, forward,
        attr);
    conv->primitive = dnnl::convolution_backward_data(pd);
    conv->kernel = pd.weights_desc();
    conv->scratchpad = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, Activations(g, g.h, g.w, g.c),
        Kernel(g, memory::format_tag::any, kernel_dtype), conv->bias,
        Activations(g, g.oh, g.ow, g.o),
        {g.stride_h, g.stride_w}, {g.pad_top, g.pad_left}, {g.pad_bottom, g.pad_right}, forward,
        attr);
    conv->primitive = dnnl::convolution_backward_weights(pd);
    conv->kernel = pd.diff_weights_desc();
    conv->scratchpad = pd.scratchpad_desc();
  }
  conv->reorder = conv->kernel != conv->user_kernel;
  if (conv->reorder) {
    conv->reorder_kernel =
        kind == Kind::kKernelGrad || kind == Kind::kKernelBiasGrad
            ? dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), conv->kernel, Engine(),
                                                          conv->user_kernel))
            : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), conv->user_kernel, Engine(),
                                                          conv->kernel));
  }
  return conv;
}

std::shared_ptr<Conv> Cached(Kind kind, const Geometry& g, memory::data_type kernel_dtype) {
  static std::mutex mutex;
  static std::unordered_map<Key, std::shared_ptr<Conv>, KeyHash> cache;
  Key key = MakeKey(kind, g);
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = cache.find(key);
    if (found != cache.end()) return found->second;
  }
  auto conv = Build(kind, g, kernel_dtype);  // outside the lock: building takes milliseconds
  std::lock_guard<std::mutex> lock(mutex);
  return cache.emplace(key, conv).first->second;
}

// A buffer each XLA thread keeps between calls, grown as needed. oneDNN allocates the
// memory it is not handed on every call, which the kernel then faults in 4 KB at a time:
// VGG16's reordered kernels alone took 44,000 page faults per train step (8% of it).
// A call runs to completion on its thread, so the next call on that thread may reuse it.
class ThreadBuffer {
 public:
  ~ThreadBuffer() { std::free(data_); }
  void* Get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 4095) / 4096 * 4096;
      data_ = std::aligned_alloc(4096, size_);
      if (data_ == nullptr) {
        size_ = 0;
        throw dnnl::error(dnnl_out_of_memory, "could not allocate a work buffer");
      }
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

memory ThreadMemory(const memory::desc& desc, ThreadBuffer& buffer) {
  return memory(desc, Engine(), buffer.Get(desc.get_size()));
}

ffi::ErrorOr<memory::data_type> DnnlType(ffi::DataType dtype) {
  switch (dtype) {
    case ffi::DataType::F32:
      return memory::data_type::f32;
    case ffi::DataType::BF16:
      return memory::data_type::bf16;
    default:
      return ffi::Unexpected(
          ffi::Error::InvalidArgument("oneDNN convolution: only float32 and bfloat16"));
  }
}

// Shapes from the NHWC input, HWIO kernel and NHWC output buffers.
ffi::ErrorOr<Geometry> MakeGeometry(ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions w,
                                    ffi::AnyBuffer::Dimensions y, ffi::DataType dtype,
                                    int64_t stride_h, int64_t stride_w, int64_t pad_top,
                                    int64_t pad_left, int64_t pad_bottom, int64_t pad_right,
                                    int64_t groups) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("oneDNN convolution: 4-D NHWC and HWIO buffers expected"));
  }
  auto dnnl_type = DnnlType(dtype);
  if (dnnl_type.has_error()) return ffi::Unexpected(dnnl_type.error());
  Geometry g{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], stride_h, stride_w,
             pad_top, pad_left, pad_bottom, pad_right, groups, dnnl_type.value()};
  if (groups < 1 || g.c != w[2] * groups || g.o % groups != 0 || y[0] != g.n || y[3] != g.o) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("oneDNN convolution: shapes do not match the groups"));
  }
  return g;
}

ffi::Error Run(Kind kind, const Geometry& g, memory::data_type kernel_dtype, void* x, void* kernel,
               void* y, void* bias = nullptr) {
  try {
    auto conv = Cached(kind, g, kernel_dtype);
    dnnl::stream& stream = Stream();
    memory x_mem(Activations(g, g.h, g.w, g.c), Engine(), x);
    memory y_mem(Activations(g, g.oh, g.ow, g.o), Engine(), y);
    memory user_kernel(conv->user_kernel, Engine(), kernel);
    thread_local ThreadBuffer kernel_buffer, scratchpad_buffer;
    memory kernel_mem = conv->reorder ? ThreadMemory(conv->kernel, kernel_buffer) : user_kernel;
    memory scratchpad = ThreadMemory(conv->scratchpad, scratchpad_buffer);
    if (kind == Kind::kForward) {
      if (conv->reorder) conv->reorder_kernel.execute(stream, user_kernel, kernel_mem);
      conv->primitive.execute(stream, {{DNNL_ARG_SRC, x_mem},
                                       {DNNL_ARG_WEIGHTS, kernel_mem},
                                       {DNNL_ARG_DST, y_mem},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (kind == Kind::kInputGrad) {
      if (conv->reorder) conv->reorder_kernel.execute(stream, user_kernel, kernel_mem);
      conv->primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, x_mem},
                                       {DNNL_ARG_WEIGHTS, kernel_mem},
                                       {DNNL_ARG_DIFF_DST, y_mem},
                                       {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      std::unordered_map<int, memory> args{{DNNL_ARG_SRC, x_mem},
                                           {DNNL_ARG_DIFF_WEIGHTS, kernel_mem},
                                           {DNNL_ARG_DIFF_DST, y_mem},
                                           {DNNL_ARG_SCRATCHPAD, scratchpad}};
      if (kind == Kind::kKernelBiasGrad) {
        args.emplace(DNNL_ARG_DIFF_BIAS, memory(conv->bias, Engine(), bias));
      }
      conv->primitive.execute(stream, args);
      if (conv->reorder) conv->reorder_kernel.execute(stream, kernel_mem, user_kernel);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

#define CONV_ATTRS                                                                  \
  int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_left, int64_t pad_bottom, \
      int64_t pad_right, int64_t groups
#define CONV_ARGS stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, groups

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y, CONV_ATTRS) {
  auto g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), x.element_type(),
                        CONV_ARGS);
  if (g.has_error()) return g.error();
  return Run(Kind::kForward, g.value(), g.value().dtype, x.untyped_data(), w.untyped_data(),
             y->untyped_data());
}

ffi::Error InputGrad(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                     CONV_ATTRS) {
  auto g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), dy.element_type(),
                        CONV_ARGS);
  if (g.has_error()) return g.error();
  return Run(Kind::kInputGrad, g.value(), g.value().dtype, dx->untyped_data(), w.untyped_data(),
             dy.untyped_data());
}

ffi::Error KernelGrad(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                      CONV_ATTRS) {
  auto g = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), x.element_type(),
                        CONV_ARGS);
  if (g.has_error()) return g.error();
  auto kernel_dtype = DnnlType(dw->element_type());
  if (kernel_dtype.has_error()) return kernel_dtype.error();
  return Run(Kind::kKernelGrad, g.value(), kernel_dtype.value(), x.untyped_data(),
             dw->untyped_data(), dy.untyped_data());
}

// The kernel and bias gradients in one pass: db is dy summed over batch and space.
ffi::Error KernelBiasGrad(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                          ffi::Result<ffi::AnyBuffer> db, CONV_ATTRS) {
  auto g = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), x.element_type(),
                        CONV_ARGS);
  if (g.has_error()) return g.error();
  auto kernel_dtype = DnnlType(dw->element_type());
  if (kernel_dtype.has_error()) return kernel_dtype.error();
  if (db->element_type() != dw->element_type() || db->dimensions().size() != 1 ||
      db->dimensions()[0] != g.value().o) {
    return ffi::Error::InvalidArgument(
        "oneDNN convolution: the bias gradient must be [O], in the kernel gradient's dtype");
  }
  return Run(Kind::kKernelBiasGrad, g.value(), kernel_dtype.value(), x.untyped_data(),
             dw->untyped_data(), dy.untyped_data(), db->untyped_data());
}

}  // namespace

#define CONV_ATTR_BINDING                \
      Attr<int64_t>("stride_h")         \
      .Attr<int64_t>("stride_w")         \
      .Attr<int64_t>("pad_top")          \
      .Attr<int64_t>("pad_left")         \
      .Attr<int64_t>("pad_bottom")       \
      .Attr<int64_t>("pad_right")        \
      .Attr<int64_t>("groups")

#define CONV_BINDING \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().CONV_ATTR_BINDING

// The library is built with hidden symbols; these five are its interface.
#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    OnednnConvForward, Forward,
    CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    OnednnConvInputGrad, InputGrad,
    CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    OnednnConvKernelGrad, KernelGrad,
    CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    OnednnConvKernelBiasGrad, KernelBiasGrad,
    ffi::Ffi::Bind()
        .Arg<ffi::AnyBuffer>()
        .Arg<ffi::AnyBuffer>()
        .Ret<ffi::AnyBuffer>()
        .Ret<ffi::AnyBuffer>()
        .CONV_ATTR_BINDING);

// Says the library loaded and which oneDNN it was built against ("3.13.0").
extern "C" const char* OnednnConvVersion() {
  static std::string version = [] {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
           std::to_string(v->patch);
  }();
  return version.c_str();
}

// Creates the CPU engine: "" if it works, else why not (this oneDNN runs its CPU engine
// on a SYCL CPU device, which needs the OpenCL CPU runtime it depends on).
extern "C" const char* OnednnConvCheck() {
  static std::string error = [] {
    try {
      Engine();
      return std::string();
    } catch (const dnnl::error& e) {
      return std::string(e.what());
    }
  }();
  return error.c_str();
}

#pragma GCC visibility pop

// What every fused-update OpKernel shares: lock the variables of the call in
// address order, check every input, then hand out writable tensors.
//
// All checks (dtype, initialization, shapes, the same variable twice, scalar
// hyperparameters) run before the first write, so a bad call fails with
// InvalidArgument and leaves every variable as it was. The kernels' math is
// not here: ops only translate tensors into raw pointers for csrc/cpu/ and
// csrc/cuda/.
//
// GPU ops use Device = GpuDevice (below), never Eigen::GpuDevice (DESIGN.md:
// CUDA 13 against TF's CUDA 12 build): TF's copy-on-write helper needs an
// Eigen device, so for the GPU the copy is the `copy` function the op passes
// (a device-to-device copy on the op's stream).
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/radix_sort.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

#define FUSEDOPT_REQUIRE(cond, error) \
  do {                                \
    if (!(cond)) return (error);      \
  } while (0)

namespace fusedopt {
namespace tf = ::tensorflow;

// The Device of GPU ops: a plain tag, no Eigen device behind it.
struct GpuDevice {};

// Copies `from` into the freshly allocated `to` (same dtype and shape).
using BufferCopy = std::function<absl::Status(const tf::Tensor& from, tf::Tensor* to)>;

template <typename Device, typename T>
class FusedUpdate {
  // TF's helper copies-on-write with an Eigen device functor; GPU ops copy
  // with copy_ instead.
  static constexpr bool kEigenCopy = !std::is_same<Device, GpuDevice>::value;

 public:
  // var_lists: names of the `N * resource` inputs, updated in place.
  // grad_list: name of the `N * T` dense gradient input.
  // scalars: names of the 0-d hyperparameter inputs.
  // copy: the copy-on-write copy, required with Device = GpuDevice.
  FusedUpdate(tf::OpKernelContext* ctx, std::vector<std::string> var_lists,
              std::string grad_list, std::vector<std::string> scalars,
              BufferCopy copy = nullptr)
      : ctx_(ctx),
        var_lists_(std::move(var_lists)),
        grad_list_(std::move(grad_list)),
        scalars_(std::move(scalars)),
        copy_(std::move(copy)) {}

  // Locks and validates. On error nothing has been written. On success,
  // variables() and grads() are ready and the locks are held until this object
  // is destroyed.
  absl::Status Prepare() {
    ranges_.clear();
    size_t count = 0;
    for (const std::string& name : var_lists_) {
      int start, stop;
      TF_RETURN_IF_ERROR(ctx_->op_kernel().InputRange(name, &start, &stop));
      ranges_.push_back({start, stop});
      count += static_cast<size_t>(stop - start);
    }
    int gstart, gstop;
    TF_RETURN_IF_ERROR(ctx_->op_kernel().InputRange(grad_list_, &gstart, &gstop));
    // The scalars' shapes, not their values: like the stock TF/Keras ops the
    // fused ops accept any value and propagate a NaN (the fused SGD folds a
    // global-norm scale that Keras makes NaN into lr); ranges are checked
    // where users pass numbers (the optimizers' arguments, fusedopt.kernels).
    for (const std::string& name : scalars_) {
      const tf::Tensor* t;
      TF_RETURN_IF_ERROR(ctx_->input(name, &t));
      FUSEDOPT_REQUIRE(tf::TensorShapeUtils::IsScalar(t->shape()),
                         tf::errors::InvalidArgument(
                             name, " must be a scalar (0-d tensor), got shape ",
                             t->shape().DebugString()));
    }
    // One lookup per variable (a handle whose variable does not exist, e.g. a
    // VarHandleOp never assigned, is refused naming the input). vars_ is in
    // input order: list by list.
    vars_.clear();
    vars_.reserve(count);
    for (size_t l = 0; l < ranges_.size(); ++l) {
      for (int i = ranges_[l].first; i < ranges_[l].second; ++i) {
        // The op declares these inputs as resources, so the element type is
        // known: the handle is read without flat<>'s out-of-line checks.
        const tf::Tensor& input = ctx_->input(i);
        FUSEDOPT_REQUIRE(input.dtype() == tf::DT_RESOURCE && input.NumElements() == 1,
                         tf::errors::InvalidArgument(
                             var_lists_[l], "[", i - ranges_[l].first,
                             "] must be one resource handle, got a ",
                             tf::DataTypeString(input.dtype()), " tensor of shape ",
                             input.shape().DebugString()));
        const auto& handle = *static_cast<const tf::ResourceHandle*>(input.data());
        tf::core::RefCountPtr<tf::Var> var;
        const absl::Status s = tf::LookupResource(ctx_, handle, &var);
        FUSEDOPT_REQUIRE(s.ok(), tf::errors::InvalidArgument(
                                     Label(i), " is not initialized or was deleted (",
                                     s.message(), ")"));
        vars_.push_back(std::move(var));
      }
    }
    // The locks, each distinct mutex once, in address order (as TF's
    // MaybeLockVariableInputMutexesInOrder, with fewer lookups and handle
    // copies). The same sort finds a variable given twice: each variable has
    // its own mutex. earlier[k]: the first position of vars_[k]'s variable
    // when that is before k, else -1.
    std::vector<std::pair<tsl::mutex*, int>> by_mutex;
    by_mutex.reserve(count);
    for (size_t k = 0; k < count; ++k) by_mutex.push_back({vars_[k]->mu(), static_cast<int>(k)});
    sort_by_address(by_mutex, [](const std::pair<tsl::mutex*, int>& x) {
      return reinterpret_cast<uintptr_t>(x.first);
    });
    std::vector<int> earlier(count, -1);
    locked_.clear();
    for (size_t begin = 0, end; begin < count; begin = end) {
      tsl::mutex* mu = by_mutex[begin].first;
      int first = by_mutex[begin].second;
      for (end = begin + 1; end < count && by_mutex[end].first == mu; ++end) {
        first = std::min(first, by_mutex[end].second);
      }
      for (size_t k = begin; k < end; ++k) {
        if (by_mutex[k].second != first) earlier[by_mutex[k].second] = first;
      }
      mu->lock();
      locked_.push_back(mu);
    }

    // Every check, before any copy-on-write or update, in input order.
    const tf::DataType dtype = tf::DataTypeToEnum<T>::v();
    size_t position = 0;  // in vars_
    for (size_t l = 0; l < var_lists_.size(); ++l) {
      for (int i = ranges_[l].first; i < ranges_[l].second; ++i, ++position) {
        const int k = i - ranges_[l].first;
        tf::Var* var = vars_[position].get();
        FUSEDOPT_REQUIRE(var->is_initialized,
                         tf::errors::InvalidArgument(Label(i), " is not initialized"));
        const tf::Tensor* value = var->tensor();
        FUSEDOPT_REQUIRE(value->dtype() == dtype,
                         tf::errors::InvalidArgument(
                             Label(i), " has dtype ", tf::DataTypeString(value->dtype()),
                             " but the op was called with T=", tf::DataTypeString(dtype)));
        const tf::Tensor& grad = ctx_->input(gstart + k);
        FUSEDOPT_REQUIRE(value->shape() == grad.shape(),
                         tf::errors::InvalidArgument(
                             Label(i), " has shape ", value->shape().DebugString(), " but ",
                             grad_list_, "[", k, "] has shape ", grad.shape().DebugString()));
        FUSEDOPT_REQUIRE(earlier[position] < 0,
                         tf::errors::InvalidArgument(
                             Label(i), " and ", Label(InputOf(earlier[position])),
                             " are the same variable; each may appear once"));
      }
    }

    // Copy-on-write where a reader still holds the old buffer, then collect.
    variables_.resize(var_lists_.size());
    position = 0;
    for (size_t l = 0; l < var_lists_.size(); ++l) {
      variables_[l].clear();
      variables_[l].reserve(static_cast<size_t>(ranges_[l].second - ranges_[l].first));
      for (int i = ranges_[l].first; i < ranges_[l].second; ++i, ++position) {
        tf::Tensor t;
        TF_RETURN_IF_ERROR(WritableTensor(vars_[position].get(), &t));
        variables_[l].push_back(std::move(t));
      }
    }
    grads_.clear();
    grads_.reserve(static_cast<size_t>(gstop - gstart));
    for (int i = gstart; i < gstop; ++i) grads_.push_back(ctx_->input(i));
    return absl::OkStatus();
  }

  ~FusedUpdate() {
    for (auto it = locked_.rbegin(); it != locked_.rend(); ++it) (*it)->unlock();
  }
  FusedUpdate(const FusedUpdate&) = delete;
  FusedUpdate& operator=(const FusedUpdate&) = delete;

  // variables()[list][i]: the writable tensor of var_lists[list][i].
  std::vector<std::vector<tf::Tensor>>& variables() { return variables_; }
  const std::vector<tf::Tensor>& grads() const { return grads_; }

  T Scalar(const std::string& name) const {
    const tf::Tensor* t;
    TF_CHECK_OK(ctx_->input(name, &t));
    return t->scalar<T>()();
  }

 private:
  // The variable's tensor, copied first where a reader still holds its buffer
  // (the lock is held): TF's PrepareToUpdateVariable, or for GPU ops the same
  // logic with copy_ for the copy.
  absl::Status WritableTensor(tf::Var* var, tf::Tensor* out) {
    tf::Tensor* value = var->tensor();
    if constexpr (kEigenCopy) {
      TF_RETURN_IF_ERROR((tf::PrepareToUpdateVariable<Device, T>(
          ctx_, value, var->copy_on_read_mode.load())));
    } else {
      FUSEDOPT_REQUIRE(copy_ != nullptr,
                       tf::errors::Internal("FusedUpdate<GpuDevice>: no copy function"));
      if (var->copy_on_read_mode.load() || !value->RefCountIsOne()) {
        tf::Tensor copy;
        TF_RETURN_IF_ERROR(ctx_->allocate_temp(value->dtype(), value->shape(), &copy));
        TF_RETURN_IF_ERROR(copy_(*value, &copy));
        *value = copy;
      }
    }
    *out = *value;
    return absl::OkStatus();
  }

  // The flat input index of position k of vars_ (list by list).
  int InputOf(int k) const {
    for (const auto& [start, stop] : ranges_) {
      if (k < stop - start) return start + k;
      k -= stop - start;
    }
    return -1;
  }

  // "m[2] (variable 'dense/kernel/m')" for flat input index `input`.
  std::string Label(int input) const {
    for (size_t l = 0; l < ranges_.size(); ++l) {
      if (input >= ranges_[l].first && input < ranges_[l].second) {
        return var_lists_[l] + "[" + std::to_string(input - ranges_[l].first) +
               "] (variable '" + tf::HandleFromInput(ctx_, input).name() + "')";
      }
    }
    return "input " + std::to_string(input);
  }

  tf::OpKernelContext* ctx_;
  std::vector<std::string> var_lists_;
  std::string grad_list_;
  std::vector<std::string> scalars_;
  BufferCopy copy_;
  std::vector<std::pair<int, int>> ranges_;
  // Unlocked by the destructor (in reverse order), before the members go and
  // with them the references that keep the variables (and their mutexes) alive.
  std::vector<tf::core::RefCountPtr<tf::Var>> vars_;
  std::vector<tsl::mutex*> locked_;
  std::vector<std::vector<tf::Tensor>> variables_;
  std::vector<tf::Tensor> grads_;
};

// Shape function part: each named hyperparameter input is a scalar (FusedUpdate
// checks the same at run time, for shapes unknown when the graph is built).
inline absl::Status ScalarInputsShape(tf::shape_inference::InferenceContext* c,
                                      const std::vector<std::string>& names) {
  tf::shape_inference::ShapeHandle unused;
  for (const std::string& name : names) {
    std::vector<tf::shape_inference::ShapeHandle> shapes;
    TF_RETURN_IF_ERROR(c->input(name, &shapes));
    TF_RETURN_IF_ERROR(c->WithRank(shapes[0], 0, &unused));
  }
  return absl::OkStatus();
}

// TF's intra-op thread pool as a ParallelFor: one contiguous shard per thread
// the work is worth (cpu/parallel.h), none handed to the pool when that is one.
inline ParallelFor TfParallelFor(tf::OpKernelContext* ctx) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return [pool](int64_t n, int64_t cost, const TaskRange& fn) {
    const int64_t shards =
        std::min<int64_t>(n, useful_threads(n * cost, std::max(1, pool->NumThreads())));
    if (shards <= 1) {
      if (n > 0) fn(0, n);
      return;
    }
    const int64_t block = (n + shards - 1) / shards;
    pool->ParallelFor(n, tsl::thread::ThreadPool::SchedulingParams::Fixed(block), fn);
  };
}

}  // namespace fusedopt

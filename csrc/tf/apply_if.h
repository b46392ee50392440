// The optional `apply_if` input of the fused update ops.
//
//   apply_if: G * bool, G = 0 or 1
//
// With G = 0 the op always updates. With G = 1 it updates only where
// apply_if[0] is true; when it is false the op still checks every input (a bad
// call fails the same either way) but writes nothing. The Keras optimizers'
// skip_nonfinite passes the FusedoptAllFinite result here: a predicate as an
// input costs one scalar read, where a cond around the update would route
// every variable handle of the step through a switch.
#pragma once

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace fusedopt {

#define FUSEDOPT_APPLY_IF_INPUT "apply_if: G * bool"
#define FUSEDOPT_APPLY_IF_ATTR "G: int >= 0 = 0"

// Shape function part: G <= 1 and apply_if[0] a scalar.
inline absl::Status ApplyIfShape(::tensorflow::shape_inference::InferenceContext* c) {
  std::vector<::tensorflow::shape_inference::ShapeHandle> shapes;
  TF_RETURN_IF_ERROR(c->input("apply_if", &shapes));
  if (shapes.size() > 1) {
    return ::tensorflow::errors::InvalidArgument(
        "apply_if takes at most one predicate, got ", shapes.size());
  }
  ::tensorflow::shape_inference::ShapeHandle unused;
  if (!shapes.empty() && !c->WithRank(shapes[0], 0, &unused).ok()) {
    return ::tensorflow::errors::InvalidArgument("apply_if[0] must be a scalar bool, got shape ",
                                                 c->DebugString(shapes[0]));
  }
  return absl::OkStatus();
}

// Reads the predicate (true without one); checks it like the other inputs,
// before any write.
inline absl::Status ReadApplyIf(::tensorflow::OpKernelContext* ctx, bool* apply) {
  namespace tf = ::tensorflow;
  tf::OpInputList list;
  TF_RETURN_IF_ERROR(ctx->input_list("apply_if", &list));
  *apply = true;
  if (list.size() == 0) return absl::OkStatus();
  if (list.size() > 1) {
    return tf::errors::InvalidArgument("apply_if takes at most one predicate, got ",
                                       list.size());
  }
  if (!tf::TensorShapeUtils::IsScalar(list[0].shape())) {
    return tf::errors::InvalidArgument("apply_if[0] must be a scalar bool, got shape ",
                                       list[0].shape().DebugString());
  }
  *apply = list[0].scalar<bool>()();
  return absl::OkStatus();
}

}  // namespace fusedopt

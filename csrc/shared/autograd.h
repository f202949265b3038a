// Shared pieces of the autograd registrations.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <optional>

namespace fastops {

// Autograd kernel for the `*_backward` ops: they are not differentiable themselves, so double
// backward through a fastops op raises this error instead of silently returning wrong gradients.
void backward_is_not_differentiable(const c10::OperatorHandle& op, torch::jit::Stack* stack);

inline torch::CppFunction not_differentiable() {
  return torch::CppFunction::makeFromBoxedFunction<&backward_is_not_differentiable>();
}

// For the backward of a node: the `*_backward` op's autograd kernel (not_differentiable)
// only raises under grad mode (create_graph=True, double backward); otherwise it redispatches
// below autograd through a boxed call: the typed call boxed for it, then unboxed again for the
// kernel, about 20k instructions per call, more than a tiny backward itself. A backward that
// holds this guard while calling its op goes below autograd directly when grad mode is off, and
// through that kernel (and its error) when it is on.
class BelowAutogradUnlessGradMode {
 public:
  BelowAutogradUnlessGradMode() {
    if (!at::GradMode::is_enabled()) guard_.emplace();
  }

 private:
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard_;
};

// Converts a node's "gradient not requested" results: backward ops return
// empty tensors for gradients that output_mask did not ask for.
inline torch::autograd::Variable grad_or_undefined(bool needed, const at::Tensor& grad) {
  return needed ? grad : torch::autograd::Variable();
}

// Whether a call must build an autograd graph node: grad mode is on and a tensor argument
// requires grad. Otherwise the autograd kernels record nothing (no node, no saved tensors).
inline bool requires_grad(const at::Tensor& tensor) {
  return tensor.defined() && tensor.requires_grad();
}
inline bool requires_grad(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() && requires_grad(*tensor);
}
template <typename... Tensors>
bool needs_graph(const Tensors&... tensors) {
  return at::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

// The graph node of a fastops op, as torch's generated nodes are: the forward's saved state in
// plain members (SavedVariable for tensors), one edge per tensor argument, one gradient input per
// differentiable output. torch::autograd::Function's CppNode keeps that state in an
// AutogradContext (a string-keyed map of IValues, sets of outputs) and wraps every output
// generically: most of the ~10 us that a tiny max_pool2d forward + backward cost above torch's
// (benchmarks/NOTES.md, "Autograd nodes").
class OpNode : public torch::autograd::Node {
 public:
  explicit OpNode(const char* name) : name_(name) {}
  std::string name() const override { return name_; }

  // After a backward without retain_graph: the saved tensors go; another backward raises.
  void release_variables() final {
    std::lock_guard<std::mutex> lock(mutex_);
    released_ = true;
    release_saved();
  }

 protected:
  virtual void release_saved() = 0;

  // Whether backward must compute the gradient of edge i < N (false for an edge without a
  // gradient consumer, or pruned by torch.autograd.grad's `inputs`).
  template <size_t N>
  std::array<bool, N> needed_grads() const {
    std::array<bool, N> mask{};
    for (size_t i = 0; i < N; ++i) mask[i] = task_should_compute_output(i);
    return mask;
  }

  // A saved tensor (an output of the forward saved with is_output=true included, which needs
  // this node to rebuild its history).
  at::Tensor unpack(const torch::autograd::SavedVariable& saved) { return saved.unpack(getptr()); }

  // The forward's input gradients, one per edge (undefined where not needed), from the
  // gradients of its differentiable outputs.
  virtual torch::autograd::variable_list backward(torch::autograd::variable_list&& grads) = 0;

 private:
  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) final {
    std::lock_guard<std::mutex> lock(mutex_);
    // Raised even where nothing was saved (dropout's node), as torch::autograd::Function's are.
    TORCH_CHECK(!released_, torch::autograd::ERR_BACKWARD_TWICE);
    // No gradient flows in (an undefined one: torch's convention for zeros), none flows out.
    if (std::none_of(grads.begin(), grads.end(), [](const at::Tensor& g) { return g.defined(); }))
      return torch::autograd::variable_list(num_outputs());
    return backward(std::move(grads));
  }

  const char* name_;
  bool released_ = false;
};

// A node of type NodeT with an edge to each of `inputs` (tensors or optional tensors; an absent
// or undefined one gets an invalid edge): the order of NodeT::backward's gradients.
template <class NodeT, class... Inputs>
c10::intrusive_ptr<NodeT> make_node(const Inputs&... inputs) {
  auto node = c10::make_intrusive<NodeT>();
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  return node;
}

// Forward-mode AD (dual tensors) is not implemented by fastops ops: torch's error for an op
// without a forward derivative, instead of outputs silently without a tangent.
inline bool has_forward_grad(const at::Tensor& tensor) {
  return tensor.defined() && tensor._fw_grad(/*level=*/0).defined();
}
inline bool has_forward_grad(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() && has_forward_grad(*tensor);
}
template <typename... Tensors>
void check_no_forward_grad(const char* op, const Tensors&... tensors) {
  TORCH_CHECK(!(has_forward_grad(tensors) || ...), "Trying to use forward AD with ", op,
              " that does not support it.");
}

// A node's saved tensor that is an optional argument of its backward op (undefined: absent).
inline std::optional<at::Tensor> optional_tensor(const at::Tensor& saved) {
  return saved.defined() ? std::optional<at::Tensor>(saved) : std::nullopt;
}

}  // namespace fastops

// ATen ops tch does not bind (its generator skips fused and foreach ops):
// AdamW through ATen's fused kernel, and gradient clipping by the global norm
// with foreach norms, neither waiting on the host.
//
// Tensors arrive as tch's handles (each an at::Tensor*). Every function
// returns nullptr on success, or a message the caller frees with demix_free.
#include <ATen/ATen.h>
#include <ATen/Functions.h>
#include <c10/core/GradMode.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

std::vector<at::Tensor> list(at::Tensor** ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}

char* message(const std::exception& e) {
  std::string s = e.what();
  // Only the first line: the rest is a C++ backtrace.
  auto nl = s.find('\n');
  if (nl != std::string::npos) s = s.substr(0, nl);
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

}  // namespace

extern "C" {

void demix_free(char* p) { std::free(p); }

// One AdamW update of `n` parameters that share a weight decay, in place:
// PyTorch's AdamW(fused=True) without amsgrad. `steps` hold the update
// number each parameter reaches with this call (float scalars on the
// parameters' device).
char* demix_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                        at::Tensor** exp_avg_sqs, at::Tensor** steps, size_t n, double lr,
                        double beta1, double beta2, double weight_decay, double eps) {
  try {
    if (n == 0) return nullptr;
    c10::NoGradGuard no_grad;
    at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                      /*max_exp_avg_sqs=*/{}, list(steps, n), lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    return nullptr;
  } catch (const std::exception& e) {
    return message(e);
  }
}

// The global L2 norm of `n` gradients into *total (a new float scalar on
// their device), and the gradients scaled down in place to `max_norm` when
// above it (max_norm <= 0: no clipping). Nothing is read back to the host.
char* demix_clip_grad_norm(at::Tensor** grads, size_t n, double max_norm, at::Tensor** total) {
  try {
    c10::NoGradGuard no_grad;
    auto gs = list(grads, n);
    auto norms = at::_foreach_norm(gs, 2);
    for (auto& x : norms) x = x.to(at::kFloat);
    auto t = at::linalg_vector_norm(at::stack(norms), 2);
    if (max_norm > 0) {
      // min(1, max_norm / (total + 1e-6)), as torch.nn.utils.clip_grad_norm_.
      auto coef = at::clamp_max(max_norm / (t + 1e-6), 1.0);
      at::_foreach_mul_(gs, coef);
    }
    *total = new at::Tensor(t);
    return nullptr;
  } catch (const std::exception& e) {
    return message(e);
  }
}

}  // extern "C"

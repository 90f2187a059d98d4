"""A memory-lean causal-LM loss: cross-entropy fused with the output projection, chunked over tokens.

The plain loss materialises `tokens × vocabulary` logits (and a float32 copy, and their gradient): at
8 × 2048 tokens and a 128k vocabulary that is 8 GB per copy, often more than the rest of a LoRA step.
Here the logits of at most `chunk_size` tokens exist at a time. Each chunk's gradient with respect to
its hidden states (and its share of the head's weight gradient) is computed in the forward pass, as in
Liger Kernel and Apple's cut-cross-entropy, so nothing of size `tokens × vocabulary` is kept for
backward; backward only scales the stored gradients. Positions that are not targets (the prompt, in
sft most of the tokens) are dropped before the matmul.

`causal_lm_loss` gets the final hidden states by hooking the model's output embedding for the duration
of one ordinary `model(...)` call, rather than by calling the backbone module directly: the call still
goes through every wrapper around the model (DDP, whose gradient sync is armed by its own forward;
FSDP and DeepSpeed ZeRO-3, which gather the head's weight only inside it; accelerate's autocast), and a
model that transforms its hidden states before the head is honoured. Models that transform the logits
after the head, or whose head is adapted, are refused (None) and take the plain path.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.data.tokenize import IGNORE_INDEX
from tunelab.training.batch import model_inputs

# 1024 tokens × a 128k vocabulary is 512 MB of float32 logits per chunk; a smaller chunk saves memory
# but cuts the matmuls so thin that the GPU (or the CPU's BLAS) runs below its speed.
DEFAULT_CHUNK_SIZE = 1024

# Config fields of transformers models that change the logits after the head (Gemma 2/3 and nanochat
# soft-capping, Cohere's logit_scale, Granite's and HyperCLOVA X's logits_scaling). A fused loss would
# skip the change, so these models take the plain path. The check after the forward catches others.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


# ---------------------------------------------------------------------------------------------
# The fused loss on flat tensors


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """sum_i CE(hidden[i] @ weight.T + bias, targets[i]) over targets != ignore_index, as a float32 scalar.

    hidden [N, H], weight [V, H], bias [V] or None, targets [N]. Equal to `F.cross_entropy(F.linear(
    hidden, weight, bias).float(), targets, ignore_index=ignore_index, reduction="sum")`, gradients
    included, with peak extra memory of about chunk_size × V instead of N × V.
    """
    _check_shapes(hidden, weight, bias, targets)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    # The Function cannot tell from inside whether autograd will want its gradients (its
    # `needs_input_grad` ignores no_grad mode), so it is told: evaluation then skips two of three matmuls.
    grad_on = torch.is_grad_enabled()
    needs = tuple(grad_on and t is not None and t.requires_grad for t in (hidden, weight, bias))
    loss: torch.Tensor = _ChunkedLinearCrossEntropy.apply(
        hidden, weight, bias, targets, chunk_size, ignore_index, _compute_dtype(hidden, weight), needs
    )
    return loss


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Liger's Triton kernel on CUDA when `liger_kernel` is installed, else the chunked loss above."""
    liger = _liger_loss() if hidden.is_cuda else None
    if liger is not None:  # untested here: no GPU and no liger_kernel on the machine this was written on
        return liger(hidden, weight, targets, bias, ignore_index=ignore_index, reduction="sum").float()
    return chunked_linear_cross_entropy(
        hidden, weight, bias, targets, chunk_size=chunk_size, ignore_index=ignore_index
    )


@functools.cache
def _liger_loss() -> Callable[..., torch.Tensor] | None:
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def _check_shapes(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.size(1) != weight.size(1):
        raise ValueError(
            f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)}, {tuple(weight.shape)}"
        )
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match hidden {tuple(hidden.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias {tuple(bias.shape)} does not match weight {tuple(weight.shape)}")


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the plain path's head matmul would run in: autocast's if it is on, else the operands'."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_size: int,
        ignore_index: int,
        compute_dtype: torch.dtype,
        needs: tuple[bool, bool, bool],
    ) -> torch.Tensor:
        need_hidden, need_weight, need_bias = needs
        # Autocast off: the dtypes are chosen explicitly, and the in-place gradient sums need them to match.
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            b = None if bias is None else bias.to(compute_dtype)
            sums = _GradSums(
                hidden=torch.zeros_like(hidden) if need_hidden else None,
                weight=torch.zeros_like(w) if need_weight else None,
                bias=torch.zeros(w.size(0), dtype=torch.float32, device=w.device) if need_bias else None,
            )
            kept = (targets != ignore_index).nonzero().squeeze(1)  # only these rows cost a matmul
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, kept.numel(), chunk_size):
                rows = kept[start : start + chunk_size]
                loss += _chunk(hidden, rows, targets.index_select(0, rows), w, b, sums)
        ctx.save_for_backward(
            sums.hidden,
            None if sums.weight is None else sums.weight.to(weight.dtype),
            None if sums.bias is None or bias is None else sums.bias.to(bias.dtype),
        )
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # d(s · loss)/dx = s · dloss/dx: the gradients were stored in forward, only the scale s is new.
        # A 0-dim float32 factor keeps each gradient's dtype and is applied at float precision.
        grads = tuple(None if g is None else g * grad_loss for g in ctx.saved_tensors)
        return (*grads, None, None, None, None, None)


@dataclass
class _GradSums:
    """Gradients summed over chunks; None where autograd wants none (a frozen head, no bias, no_grad)."""

    hidden: torch.Tensor | None  # [N, H], in hidden's dtype
    weight: torch.Tensor | None  # [V, H], in the compute dtype
    bias: torch.Tensor | None  # [V], float32

    def wanted(self) -> bool:
        return any(g is not None for g in (self.hidden, self.weight, self.bias))


def _chunk(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    sums: _GradSums,
) -> torch.Tensor:
    """The summed loss of some target rows of `hidden`; adds their gradients into `sums`.

    A function of its own so that the chunk's [chunk, V] buffer is freed on return, before the next
    chunk allocates its own (a loop variable would keep two alive at once).
    """
    h = hidden.index_select(0, rows).to(w.dtype)
    logits = F.linear(h, w, b).float()  # the only vocabulary-sized buffer
    loss, grad_logits = _cross_entropy(logits, targets, sums.wanted())
    if grad_logits is None:
        return loss
    if sums.bias is not None:
        sums.bias += grad_logits.sum(0)
    g = grad_logits.to(w.dtype)  # as the plain path's gradient reaches its head matmul
    if sums.hidden is not None:
        sums.hidden.index_copy_(0, rows, (g @ w).to(sums.hidden.dtype))
    if sums.weight is not None:
        sums.weight.addmm_(g.t(), h)
    return loss


def _cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed CE of float32 logits [c, V] and, if asked, d(sum CE)/d logits = softmax − one_hot.

    Worked in place of the logits, so a chunk holds one vocabulary-sized buffer (logsumexp and
    log_softmax would each allocate another).
    """
    target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    top = logits.amax(dim=-1, keepdim=True)
    exp = logits.sub_(top).exp_()  # exp(logit − max) ≤ 1: cannot overflow
    total = exp.sum(dim=-1, keepdim=True)
    loss = (top + total.log()).squeeze(1).sub(target_logit).sum()  # logsumexp − target logit
    if not with_grad:
        return loss, None
    grad = exp.div_(total)
    grad[torch.arange(targets.numel(), device=targets.device), targets] -= 1.0
    return loss, grad


# ---------------------------------------------------------------------------------------------
# The fused loss on a causal LM


def causal_lm_loss(
    model: Any, batch: dict[str, torch.Tensor], *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, int] | None:
    """(summed next-token CE over labels != IGNORE_INDEX, number of targets), without full logits.

    Position t predicts label t + 1, as in `objectives.causal_lm`. None when the model is not one this
    loss is known to be exact for (see `output_head`): the caller then takes the plain logits path.
    """

    head = output_head(model)
    if head is None:
        return None
    labels = batch["labels"]
    is_target = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][is_target]
    intercept = _HeadIntercept(head, labels.shape, is_target, targets, chunk_size)
    with intercept:
        out = model(**model_inputs(batch), use_cache=False)
    if intercept.loss is None or not _untouched(out.logits, intercept.loss, head):
        warnings.warn(
            f"{type(model).__name__}: the fused causal-LM loss did not apply (the head saw other shapes, or "
            "the logits are changed after it); using the plain loss, which runs the model a second time",
            stacklevel=2,
        )
        return None
    # out.logits, not intercept.loss: a DDP wrapper may have routed the output through its own autograd
    # node (find_unused_parameters / static_graph), and the backward pass must go through it.
    return out.logits, int(targets.numel())


def output_head(model: Any) -> torch.nn.Linear | None:
    """The model's output projection if the fused loss is exact for it, else None.

    Refused: torch.compile'd models (hooks added per call would recompile), peft prompt learning
    (virtual tokens shift the hidden states against the labels), heads that are not a plain Linear
    (a LoRA or IA3 layer, peft's modules_to_save copy, a quantised layer), and models that change the
    logits after the head (LOGIT_TRANSFORMS). Tied input/output embeddings are fine.
    """
    from accelerate.utils import extract_model_from_parallel

    inner = extract_model_from_parallel(model)  # peel DDP / FSDP / DeepSpeed; the hooks go on submodules
    if isinstance(getattr(inner, "_orig_mod", None), torch.nn.Module):
        return None
    peft_configs = getattr(inner, "peft_config", None) or {}
    if any(getattr(c, "is_prompt_learning", False) for c in peft_configs.values()):
        return None
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    if _transforms_logits(getattr(base, "config", None)):
        return None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return head if type(head) is torch.nn.Linear else None  # exact type: bitsandbytes layers subclass it


def _transforms_logits(config: Any) -> bool:
    if config is None:
        return True
    configs = [config]
    if hasattr(config, "get_text_config"):  # multimodal configs keep the language model's in a sub-config
        configs.append(config.get_text_config())
    return any(getattr(c, name, None) is not None for c in configs for name in LOGIT_TRANSFORMS)


class _HeadIntercept:
    """While active, the head computes the loss instead of the logits, inside the model's own forward.

    A pre-hook takes the final hidden states and hands the head an empty slice of them (so its own
    matmul costs nothing); a forward hook, put first so that it runs while wrappers such as ZeRO-3 still
    hold the gathered weight, returns the fused loss as the head's output, and the model returns it as
    `logits`. If the hidden states do not line up with the labels, both hooks stand aside.
    """

    def __init__(
        self,
        head: torch.nn.Linear,
        label_shape: torch.Size,
        is_target: torch.Tensor,
        targets: torch.Tensor,
        chunk_size: int,
    ) -> None:
        self.head, self.label_shape, self.is_target, self.targets = head, label_shape, is_target, targets
        self.chunk_size = chunk_size
        self.hidden: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        self.handles: list[Any] = []

    def __enter__(self) -> _HeadIntercept:
        self.handles = [
            self.head.register_forward_pre_hook(self._take_hidden),
            self.head.register_forward_hook(self._loss_for_logits, prepend=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.hidden = None  # drop the reference: the autograd graph keeps what backward needs

    def _take_hidden(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        hidden = args[0] if len(args) == 1 else None
        if self.loss is not None or not self._aligned(hidden):
            return None  # a second call, or not [batch, length, H] aligned with the labels: stand aside
        assert isinstance(hidden, torch.Tensor)
        self.hidden = hidden
        return (hidden[:, :0],)

    def _aligned(self, hidden: Any) -> bool:
        return isinstance(hidden, torch.Tensor) and hidden.dim() == 3 and hidden.shape[:2] == self.label_shape

    def _loss_for_logits(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if self.hidden is None:
            return None
        hidden, self.hidden = self.hidden, None
        # Position t predicts label t + 1: the last position predicts nothing.
        selected = hidden[:, :-1][self.is_target]
        self.loss = fused_linear_cross_entropy(
            selected, self.head.weight, self.head.bias, self.targets, chunk_size=self.chunk_size
        )
        return self.loss


# Heads whose model was seen to return the head's output unchanged. Comparing values reads them on the
# host (a device sync), so it is done on a model's first step only: what a model does to its logits
# after the head is fixed by its code and config, not by the batch.
_VERIFIED_HEADS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def _untouched(returned: Any, loss: torch.Tensor, head: torch.nn.Module) -> bool:
    """Did the model hand back the head's output as it was? A model that scales or caps its logits
    after the head (one LOGIT_TRANSFORMS does not know) would have changed the value."""
    if not (
        isinstance(returned, torch.Tensor) and returned.shape == loss.shape and returned.dtype == loss.dtype
    ):
        return False
    if head in _VERIFIED_HEADS:
        return True
    if not torch.equal(returned.detach(), loss.detach()):
        return False
    _VERIFIED_HEADS.add(head)
    return True

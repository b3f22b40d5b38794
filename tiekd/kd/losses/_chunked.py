"""Chunked, memory-light evaluation of per-token losses over `[..., V]` logits.

Every loss in this package is a sum over the kept (non-pad, optionally masked) positions of a term
that depends only on that position's logits row. So the whole `[tokens, V]` softmax is never needed at
once: `ChunkedTokenLoss` walks the kept rows a chunk at a time, and a per-chunk function loads the
chunk's rows in float32 (float64 stays float64) and returns the chunk's loss sum and, when the student
needs a gradient, its analytic gradient w.r.t. those rows.

The gradient is computed in the same pass as the loss and written into one `[tokens, V]` buffer in
the logits' dtype, which becomes the logits' gradient (fusing backward into forward as Liger-Kernel's
fused linear cross-entropy does). Extra memory is a few `[chunk, V]` float32 temporaries; neither the
student nor the teacher logits are saved for backward. Backward only scales the buffer: in place,
unless the graph is being kept (retain_graph, gradcheck), where it returns a scaled copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

# ~30.5 MiB per float32 temporary: under glibc's 32 MiB mmap ceiling, so on CPU the chunk buffers are
# reused from the heap instead of being page-faulted in afresh for every chunk
DEFAULT_CHUNK_ELEMENTS = 8_000_000


def default_chunk_size(vocab: int) -> int:
    """Tokens per chunk when none is given: about DEFAULT_CHUNK_ELEMENTS logits (1000 at V = 8000)."""
    return max(1, DEFAULT_CHUNK_ELEMENTS // vocab)


def token_count(target: Tensor, pad_id: int) -> Tensor:
    """Number of non-pad positions in `target`, as a 0-dim int64 tensor (no host sync).

    Divide the summed losses of this package by it to get the per-token mean.
    """
    return (target != pad_id).sum()


@dataclass
class Chunk:
    """One chunk of kept rows: `rows` is a slice (no padding anywhere) or an index tensor."""

    flat_student: Tensor  # [tokens, V], all positions
    flat_teacher: Optional[Tensor]
    rows: "slice | Tensor"
    dtype: torch.dtype  # compute dtype
    grad_view: Optional[Tensor] = None  # these rows of the gradient buffer, if writable directly

    def _load(self, flat: Tensor) -> Tensor:
        chunk = flat[self.rows] if isinstance(self.rows, slice) else flat.index_select(0, self.rows)
        return chunk.to(self.dtype)

    def student(self) -> Tensor:
        """[C, V] student logits in the compute dtype; may be a view: never modify in place."""
        return self._load(self.flat_student)

    def teacher(self) -> Tensor:
        """[C, V] teacher logits in the compute dtype; may be a view: never modify in place."""
        return self._load(self.flat_teacher)

    def grad_out(self, scratch: Tensor) -> Tensor:
        """Where to write the chunk's gradient: straight into the gradient buffer when these rows are
        a slice of it in the compute dtype (saves a copy), else `scratch`, a [C, V] tensor of the
        compute dtype that the caller no longer needs."""
        if self.grad_view is not None and self.grad_view.dtype == scratch.dtype:
            return self.grad_view
        return scratch


# (chunk, gold ids [C], need_grad) -> (chunk loss sum, 0-dim; d(sum)/d(student rows) [C, V] or None);
# the gradient should be built in `chunk.grad_out(...)`
ChunkFn = Callable[[Chunk, Tensor, bool], "tuple[Tensor, Optional[Tensor]]"]


def check_shapes(student_logits: Tensor, target: Tensor, teacher_logits: Tensor | None = None) -> None:
    """Raise a ValueError naming the mismatch when logits and target shapes disagree."""
    if student_logits.dim() < 1 or student_logits.shape[:-1] != target.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} must be target shape "
            f"{tuple(target.shape)} plus a trailing vocab dim. Fix: pass logits [..., V] and gold ids [...]"
        )
    if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} != student_logits "
            f"{tuple(student_logits.shape)}. Fix: teacher and student must share the vocabulary and "
            f"run on the same decoder input"
        )
    if not student_logits.is_floating_point() or target.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"expected float logits and int64 gold ids, got {student_logits.dtype} and {target.dtype}"
        )


def kept_positions(target: Tensor, pad_id: int, mask: Tensor | None) -> Tensor:
    """Bool `[...]`: positions that enter the sum (target != pad_id, and `mask` where given)."""
    keep = target != pad_id
    if mask is not None:
        if mask.shape != target.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor shaped like target {tuple(target.shape)}, got "
                f"{mask.dtype} {tuple(mask.shape)}. Fix: pass e.g. selective_token_mask(...) output"
            )
        keep = keep & mask
    return keep


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64 (tests, gradcheck), else float32 (fp32/bf16/fp16 logits)."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


class ChunkedTokenLoss(torch.autograd.Function):
    """Sum of `chunk_fn` over the kept rows, with the gradient built chunk by chunk in forward.

    First-order only (`once_differentiable`); gradients flow to the student logits only.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, target, keep, chunk_fn, chunk_size):
        vocab = student_logits.shape[-1]
        flat_student = student_logits.reshape(-1, vocab)  # a view for contiguous logits
        flat_teacher = None if teacher_logits is None else teacher_logits.reshape(-1, vocab)
        flat_target = target.reshape(-1).long()  # gather/scatter need int64
        flat_keep = keep.reshape(-1)
        # the only host syncs (nonzero); the chunk loop below then runs without any
        kept_rows = flat_keep.nonzero().squeeze(1)
        no_padding = kept_rows.numel() == flat_keep.numel()  # then chunks are plain slices: no gathers
        dtype = compute_dtype(student_logits, teacher_logits)
        need_grad = ctx.needs_input_grad[0]

        grad = None
        if need_grad:
            grad = torch.empty_like(flat_student)  # every row is written below: kept ones per chunk
            if not no_padding:
                grad.index_fill_(0, (~flat_keep).nonzero().squeeze(1), 0.0)
        total = torch.zeros((), dtype=dtype, device=student_logits.device)
        # the chunk math picks its own precision: autocast would run its einsum in bf16
        with torch.autocast(student_logits.device.type, enabled=False):
            for start in range(0, kept_rows.numel(), chunk_size):
                if no_padding:
                    rows = slice(start, start + chunk_size)
                    gold, grad_view = flat_target[rows], None if grad is None else grad[rows]
                else:
                    rows = kept_rows[start : start + chunk_size]
                    gold, grad_view = flat_target.index_select(0, rows), None
                chunk = Chunk(flat_student, flat_teacher, rows, dtype, grad_view)
                chunk_loss, chunk_grad = chunk_fn(chunk, gold, need_grad)
                total += chunk_loss
                if not need_grad or chunk_grad is grad_view:
                    continue  # no gradient wanted, or already written in place
                if no_padding:
                    grad[rows] = chunk_grad
                else:
                    grad.index_copy_(0, rows, chunk_grad.to(grad.dtype))
                del chunk_grad

        ctx.logits_shape = student_logits.shape
        if need_grad:
            ctx.save_for_backward(grad)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if _graph_is_kept():
            # retain_graph=True (or gradcheck): the buffer must survive for the next backward
            grad = grad * grad_output
        else:
            grad.mul_(grad_output)  # last use of the buffer: scale in place, no second [tokens, V]
        return grad.view(ctx.logits_shape), None, None, None, None, None


def _graph_is_kept() -> bool:
    """True when the running backward keeps the graph (retain_graph / create_graph).

    Reads the engine flag PyTorch's own AOT autograd uses for the same decision (whether saved
    buffers may be donated); a torch build without it is assumed to keep the graph, always correct.
    """
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep_graph is None else bool(keep_graph())


def chunked_loss(
    chunk_fn: ChunkFn,
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    target: Tensor,
    pad_id: int,
    mask: Tensor | None,
    chunk_size: int | None,
) -> Tensor:
    """Validate inputs, then sum `chunk_fn` over kept positions (see `ChunkedTokenLoss`)."""
    check_shapes(student_logits, target, teacher_logits)
    chunk_size = default_chunk_size(student_logits.shape[-1]) if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 token, got {chunk_size}")
    keep = kept_positions(target, pad_id, mask)
    if teacher_logits is not None:
        teacher_logits = teacher_logits.detach()  # the teacher is never trained through these losses
    if not torch.is_grad_enabled():
        student_logits = student_logits.detach()  # under no_grad, skip building the gradient buffer
    return ChunkedTokenLoss.apply(student_logits, teacher_logits, target, keep, chunk_fn, chunk_size)

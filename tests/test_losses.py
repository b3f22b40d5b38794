"""tiekd.kd.losses against naive full-tensor references written straight from docs/method.md §2-9."""

from __future__ import annotations

import pytest
import torch

from tiekd.kd.losses import (
    jsd_loss,
    kd_without_correlation_loss,
    kd_without_top1_loss,
    label_smoothed_ce,
    reverse_kl_loss,
    selective_token_mask,
    skew_kl_loss,
    skew_reverse_kl_loss,
    tie_kd_loss,
    token_count,
    topk_kd_loss,
    tvd_loss,
    word_kd_loss,
)

PAD = 1
B, T, V = 3, 7, 23


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tensors here are tiny: waking a second OpenMP thread per op costs more than the op, and
    # milliseconds per op on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- naive references (float64, full tensors)


def naive_ls_ce(z, teacher, target, eps=0.1):
    log_p = z.log_softmax(-1)
    eps_i = eps / (z.shape[-1] - 1)
    nll = -log_p.gather(-1, target[..., None]).squeeze(-1)
    smooth = -log_p.sum(-1)
    per_pos = (1 - eps - eps_i) * nll + eps_i * smooth
    return per_pos[target != PAD].sum()


def naive_word_kd(z, teacher, target):
    log_p, q = z.log_softmax(-1), teacher.softmax(-1)
    kl = (q * (q.log() - log_p)).sum(-1)
    return kl[target != PAD].sum()


def naive_tie_kd(z, teacher, target, k=5, use_ranking=True):
    p, q = z.softmax(-1), teacher.softmax(-1)
    loss = (q * ((q + 1e-6).log() - (p + 1e-6).log())).sum(-1)
    if use_ranking:
        t_ids = q.argsort(-1, descending=True)[..., :k]  # t_1..t_k
        s_ids = p.argsort(-1, descending=True)[..., :k]  # s_1..s_k
        p_t, q_t = p.gather(-1, t_ids), q.gather(-1, t_ids)
        p_s, q_s = p.gather(-1, s_ids), q.gather(-1, s_ids)
        for j in range(k):
            loss = loss + torch.relu(p_t[..., j] - p_t[..., 0])
        for i in range(k):
            for j in range(k):
                loss = loss + (q_t[..., i] > q_s[..., j]) * torch.relu(p_s[..., j] - p_t[..., i])
    return loss[target != PAD].sum()


def naive_kl_only_tie_kd(z, teacher, target):
    return naive_tie_kd(z, teacher, target, use_ranking=False)


def naive_without_correlation(z, teacher, target):
    log_p, q = z.log_softmax(-1), teacher.softmax(-1)
    top1 = q.argmax(-1, keepdim=True)
    per_pos = -q.gather(-1, top1) * log_p.gather(-1, top1)
    return per_pos.squeeze(-1)[target != PAD].sum()


def naive_without_top1(z, teacher, target):
    log_p, q = z.log_softmax(-1), teacher.softmax(-1)
    top1 = q.argmax(-1, keepdim=True)
    q_moved = q.scatter(-1, top1, 0.0).scatter_add(-1, target[..., None], q.gather(-1, top1))
    kl = (q_moved * ((q_moved + 1e-6).log() - log_p)).sum(-1)
    return kl[target != PAD].sum()


def naive_topk(z, teacher, target, k=5):
    log_p, q = z.log_softmax(-1), teacher.softmax(-1)
    q_top, ids = q.topk(k, -1)
    return -(q_top * log_p.gather(-1, ids)).sum(-1)[target != PAD].sum()


def _kl(a, b):
    """sum_v a_v (log a_v - log b_v) per position, from probabilities (float64, full tensors)."""
    return (a * (a.log() - b.log())).sum(-1)


def naive_reverse_kl(z, teacher, target):
    p, q = z.softmax(-1), teacher.softmax(-1)
    return _kl(p, q)[target != PAD].sum()


def naive_jsd(z, teacher, target, beta=0.5):
    p, q = z.softmax(-1), teacher.softmax(-1)
    m = beta * q + (1 - beta) * p
    return (beta * _kl(q, m) + (1 - beta) * _kl(p, m))[target != PAD].sum()


def naive_tvd(z, teacher, target):
    p, q = z.softmax(-1), teacher.softmax(-1)
    return (0.5 * (p - q).abs().sum(-1))[target != PAD].sum()


def naive_skew_kl(z, teacher, target, alpha=0.1):
    p, q = z.softmax(-1), teacher.softmax(-1)
    return _kl(q, alpha * q + (1 - alpha) * p)[target != PAD].sum()


def naive_skew_reverse_kl(z, teacher, target, alpha=0.1):
    p, q = z.softmax(-1), teacher.softmax(-1)
    return _kl(p, alpha * p + (1 - alpha) * q)[target != PAD].sum()


def ours_ls_ce(z, teacher, target, **kw):
    return label_smoothed_ce(z, target, PAD, 0.1, **kw)


def ours_kl_only_tie_kd(z, teacher, target, **kw):
    return tie_kd_loss(z, teacher, target, PAD, use_ranking=False, **kw)


CASES = {
    "ls_ce": (ours_ls_ce, naive_ls_ce),
    "word_kd": (lambda z, t, y, **kw: word_kd_loss(z, t, y, PAD, **kw), naive_word_kd),
    "tie_kd": (lambda z, t, y, **kw: tie_kd_loss(z, t, y, PAD, **kw), naive_tie_kd),
    "tie_kd_kl_only": (ours_kl_only_tie_kd, naive_kl_only_tie_kd),
    "without_correlation": (
        lambda z, t, y, **kw: kd_without_correlation_loss(z, t, y, PAD, **kw),
        naive_without_correlation,
    ),
    "without_top1": (lambda z, t, y, **kw: kd_without_top1_loss(z, t, y, PAD, **kw), naive_without_top1),
    "topk": (lambda z, t, y, **kw: topk_kd_loss(z, t, y, PAD, **kw), naive_topk),
    "reverse_kl": (lambda z, t, y, **kw: reverse_kl_loss(z, t, y, PAD, **kw), naive_reverse_kl),
    "jsd": (lambda z, t, y, **kw: jsd_loss(z, t, y, PAD, **kw), naive_jsd),
    "jsd_0.9": (lambda z, t, y, **kw: jsd_loss(z, t, y, PAD, beta=0.9, **kw),
                lambda z, t, y: naive_jsd(z, t, y, beta=0.9)),
    "tvd": (lambda z, t, y, **kw: tvd_loss(z, t, y, PAD, **kw), naive_tvd),
    "skew_kl": (lambda z, t, y, **kw: skew_kl_loss(z, t, y, PAD, **kw), naive_skew_kl),
    "skew_reverse_kl": (lambda z, t, y, **kw: skew_reverse_kl_loss(z, t, y, PAD, **kw), naive_skew_reverse_kl),
    "skew_reverse_kl_0.3": (lambda z, t, y, **kw: skew_reverse_kl_loss(z, t, y, PAD, alpha=0.3, **kw),
                            lambda z, t, y: naive_skew_reverse_kl(z, t, y, alpha=0.3)),
}


def make_batch(b=B, t=T, v=V, seed=0, dtype=torch.float64, padding=True):
    gen = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(b, t, v, generator=gen)).to(dtype)
    teacher = (3 * torch.randn(b, t, v, generator=gen)).to(dtype)
    target = torch.randint(2, v, (b, t), generator=gen)
    if padding:  # right padding; without any, chunks are plain slices (another code path)
        target[0, -2:] = PAD
        if b > 2:
            target[2, -4:] = PAD
    # make the teacher's top-1 the gold token at some positions, as in real data
    teacher[1, :3].scatter_(-1, target[1, :3, None], 20.0)
    return student, teacher, target


def value_and_grad(fn, student, teacher, target, scale=0.37, **kw):
    z = student.detach().clone().requires_grad_(True)
    loss = fn(z, teacher, target, **kw)
    (scale * loss).backward()  # a non-unit upstream gradient exercises backward's scaling
    return loss.detach(), z.grad


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("padding", [True, False])
@pytest.mark.parametrize("name", CASES)
def test_matches_naive_reference(name, padding):
    ours, naive = CASES[name]
    student, teacher, target = make_batch(padding=padding)
    inputs = student.clone(), teacher.clone()
    value, grad = value_and_grad(ours, student, teacher, target, chunk_size=8)
    ref_value, ref_grad = value_and_grad(naive, student, teacher, target)
    assert value.dtype == torch.float64 and value.dim() == 0
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(student, inputs[0]) and torch.equal(teacher, inputs[1])  # inputs untouched


@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name):
    ours, _ = CASES[name]
    student, teacher, target = make_batch(b=2, t=3, v=7, seed=1)
    target[1, 2] = PAD
    z = student.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ours(x, teacher, target, chunk_size=2), (z,))


@pytest.mark.parametrize("padding", [True, False])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("chunk_size", [1, 5])
def test_chunking_does_not_change_result(name, chunk_size, padding):
    ours, _ = CASES[name]
    student, teacher, target = make_batch(seed=2, padding=padding)
    value, grad = value_and_grad(ours, student, teacher, target, chunk_size=chunk_size)
    ref_value, ref_grad = value_and_grad(ours, student, teacher, target, chunk_size=10_000)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_padding_positions_contribute_nothing(name):
    ours, _ = CASES[name]
    student, teacher, target = make_batch(seed=3)
    value, grad = value_and_grad(ours, student, teacher, target)
    pad = target == PAD
    student2, teacher2 = student.clone(), teacher.clone()
    student2[pad] = 1e4 * torch.randn_like(student2[pad])
    student2[pad, 0] = float("nan")  # garbage at pads must not leak into the sum
    teacher2[pad] = -1e4
    value2, grad2 = value_and_grad(ours, student2, teacher2, target)
    torch.testing.assert_close(value2, value)
    torch.testing.assert_close(grad2, grad)
    assert (grad[pad] == 0).all()


@pytest.mark.parametrize("name", CASES)
def test_mask_restricts_positions(name):
    ours, naive = CASES[name]
    student, teacher, target = make_batch(seed=4)
    mask = torch.rand(target.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    value, grad = value_and_grad(ours, student, teacher, target, mask=mask)
    masked_target = target.masked_fill(~mask, PAD)  # the naive references skip PAD positions
    ref_value, ref_grad = value_and_grad(naive, student, teacher, masked_target)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("name", [n for n in CASES if n != "ls_ce"])
def test_teacher_gets_no_gradient(name):
    ours, _ = CASES[name]
    student, teacher, target = make_batch(seed=5)
    z, t = student.requires_grad_(True), teacher.requires_grad_(True)
    ours(z, t, target).backward()
    assert t.grad is None
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("padding", [True, False])
@pytest.mark.parametrize("name", CASES)
def test_bfloat16_logits(name, padding):
    ours, _ = CASES[name]
    student, teacher, target = make_batch(seed=6, dtype=torch.float32, padding=padding)
    value32, grad32 = value_and_grad(ours, student, teacher, target)
    value16, grad16 = value_and_grad(ours, student.bfloat16(), teacher.bfloat16(), target)
    assert value16.dtype == torch.float32 and grad16.dtype == torch.bfloat16
    # bf16 rounds the logits themselves (8 mantissa bits of a value ~3-20)
    torch.testing.assert_close(value16, value32, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(grad16.float(), grad32, rtol=0, atol=3e-2)


def test_tie_kd_ranking_zero_when_student_equals_teacher():
    student, teacher, target = make_batch(seed=7)
    with_rank = tie_kd_loss(teacher, teacher, target, PAD)
    kl_only = tie_kd_loss(teacher, teacher, target, PAD, use_ranking=False)
    assert with_rank == kl_only
    assert abs(kl_only.item()) < 1e-9  # KL(q || q) = 0 with the same smoothed logs on both sides


def test_tie_kd_ranking_hand_made_case():
    # teacher order 0 > 1 > 2 > 3 > 4 > 5; the student ranks token 1 above the teacher's top-1 (0)
    teacher = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    student = torch.tensor([[3.0, 5.0, 1.0, 0.0, -1.0, -2.0]], dtype=torch.float64)
    target = torch.tensor([2])
    p = student.softmax(-1)[0]
    ranking = tie_kd_loss(student, teacher, target, PAD) - tie_kd_loss(
        student, teacher, target, PAD, use_ranking=False
    )
    # R_intra: only j with t_j = 1 is active; R_inter: only the pair (t_1 = 0, s_1 = 1)
    expected = 2 * (p[1] - p[0])
    assert ranking > 0
    torch.testing.assert_close(ranking, expected)


def test_without_top1_is_kl_when_teacher_top1_is_gold():
    student, teacher, target = make_batch(seed=8)
    target = teacher.argmax(-1)  # t_1 == gold everywhere: q' == q
    target[0, -1] = PAD
    ours = kd_without_top1_loss(student, teacher, target, PAD)
    q = teacher.softmax(-1)
    ref = (q * ((q + 1e-6).log() - student.log_softmax(-1))).sum(-1)[target != PAD].sum()
    torch.testing.assert_close(ours, ref)


def test_selective_mask_selects_hardest_half():
    student, _, target = make_batch(b=4, t=9, seed=9)
    target[3, 5:] = PAD
    mask = selective_token_mask(student, target, PAD, ratio=0.5)
    nonpad = target != PAD
    n = int(nonpad.sum())
    ce = torch.nn.functional.cross_entropy(student.transpose(1, 2), target, reduction="none")
    assert mask.dtype == torch.bool and mask.shape == target.shape
    assert not (mask & ~nonpad).any()
    assert int(mask.sum()) == int(n * 0.5 + 0.5)
    assert ce[mask].min() > ce[nonpad & ~mask].max()
    hardest = torch.zeros(n, dtype=torch.bool)
    hardest[ce[nonpad].argsort(descending=True)[: int(mask.sum())]] = True
    assert torch.equal(mask[nonpad], hardest)


def test_selective_mask_with_kd_loss():
    student, teacher, target = make_batch(seed=10)
    mask = selective_token_mask(student, target, PAD, ratio=0.5)
    selected = word_kd_loss(student, teacher, target, PAD, mask=mask)
    torch.testing.assert_close(selected, naive_word_kd(student, teacher, target.masked_fill(~mask, PAD)))


def test_token_count_and_all_pad_batch():
    student, teacher, target = make_batch()
    assert int(token_count(target, PAD)) == B * T - 6
    all_pad = torch.full_like(target, PAD)
    z = student.requires_grad_(True)
    loss = tie_kd_loss(z, teacher, all_pad, PAD)
    loss.backward()
    assert loss.item() == 0 and (z.grad == 0).all()


def test_no_grad_inputs_and_errors():
    student, teacher, target = make_batch()
    with torch.no_grad():
        value = word_kd_loss(student, teacher, target, PAD)
    torch.testing.assert_close(value, naive_word_kd(student, teacher, target))
    with pytest.raises(ValueError, match="teacher_logits"):
        word_kd_loss(student, teacher[:, :-1], target, PAD)
    with pytest.raises(ValueError, match="target shape"):
        label_smoothed_ce(student, target[:, :-1], PAD)


def test_retain_graph_backward_twice():
    student, teacher, target = make_batch()
    _, once = value_and_grad(CASES["tie_kd"][0], student, teacher, target, scale=1.0)
    z = student.detach().clone().requires_grad_(True)
    loss = tie_kd_loss(z, teacher, target, PAD)
    loss.backward(retain_graph=True)  # the gradient buffer must survive for the second pass
    (0.5 * loss).backward()
    torch.testing.assert_close(z.grad, 1.5 * once)


def test_inference_mode_teacher_and_autocast():
    student, teacher, target = make_batch(dtype=torch.float32)
    _, ref_grad = value_and_grad(CASES["tie_kd"][0], student, teacher, target, scale=1.0)
    with torch.inference_mode():  # how the trainer runs the teacher: no clone needed
        frozen_teacher = teacher.clone()
    z = student.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # must not lower the loss's own precision
        tie_kd_loss(z, frozen_teacher, target, PAD).backward()
    torch.testing.assert_close(z.grad, ref_grad)


def test_no_grad_mode_builds_no_gradient():
    student, teacher, target = make_batch()
    z = student.requires_grad_(True)
    with torch.no_grad():
        value = tie_kd_loss(z, teacher, target, PAD)
    assert not value.requires_grad
    torch.testing.assert_close(value, naive_tie_kd(student.detach(), teacher, target))


@pytest.mark.parametrize("name", ["ls_ce", "word_kd", "tie_kd"])
def test_float32_matches_float64_reference(name):
    ours, naive = CASES[name]
    student, teacher, target = make_batch(b=4, t=16, v=2000, seed=11)
    value, grad = value_and_grad(ours, student.float(), teacher.float(), target, chunk_size=10)
    ref_value, ref_grad = value_and_grad(naive, student, teacher, target)
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=1e-5 * ref_grad.abs().max().item())


def test_divergence_limits_and_arguments():
    """The family's special cases: skew KL at alpha 0 is word-KD, skew reverse KL at 0 the reverse KL;
    every divergence is 0 when student and teacher agree; out-of-range parameters are refused."""
    student, teacher, target = make_batch(seed=5)
    torch.testing.assert_close(skew_kl_loss(student, teacher, target, PAD, alpha=0.0),
                               word_kd_loss(student, teacher, target, PAD))
    torch.testing.assert_close(skew_reverse_kl_loss(student, teacher, target, PAD, alpha=0.0),
                               reverse_kl_loss(student, teacher, target, PAD))
    for loss in (reverse_kl_loss, jsd_loss, tvd_loss, skew_kl_loss, skew_reverse_kl_loss):
        assert loss(student, student + 5.0, target, PAD).abs() < 1e-10  # same softmax
        assert loss(student, teacher, target, PAD) > 0
    # TVD lies in [0, 1] per position; JSD_0.5 below log 2
    kept = (target != PAD).sum()
    assert tvd_loss(student, teacher, target, PAD) <= kept
    assert jsd_loss(student, teacher, target, PAD) <= kept * torch.log(torch.tensor(2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta"):
        jsd_loss(student, teacher, target, PAD, beta=1.0)
    with pytest.raises(ValueError, match="alpha"):
        skew_kl_loss(student, teacher, target, PAD, alpha=1.0)


def test_divergences_survive_a_teacher_with_zero_probabilities():
    """A -inf teacher logit (q_v = 0) gives finite values and gradients for the bounded divergences and
    the skewed ones (their mixture keeps m_v > 0); the plain reverse KL is then truly infinite."""
    student, teacher, target = make_batch(seed=6)
    teacher[..., :3] = float("-inf")
    for name in ("jsd", "tvd", "skew_kl", "skew_reverse_kl"):
        ours, naive = CASES[name]
        value, grad = value_and_grad(ours, student, teacher, target)
        assert torch.isfinite(value) and torch.isfinite(grad).all(), name
        # the limit of a teacher logit going to -inf: the same loss with a merely very low one
        nearly = teacher.clone()
        nearly[..., :3] = teacher[..., 3:].amax(-1, keepdim=True) - 60.0
        ref_value, ref_grad = value_and_grad(naive, student, nearly, target)
        torch.testing.assert_close(value, ref_value, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-9)
    assert reverse_kl_loss(student, teacher, target, PAD) == float("inf")

"""Top-1 agreement and teacher-gold overlap of a student and a teacher (docs/method.md §10).

All statistics are teacher-forced on the gold target, over non-pad positions:
- top-1 agreement: share of positions where argmax p (student) = argmax q (teacher);
- teacher-gold overlap: share where argmax q = gold, overall and in bins of the teacher's top-1
  probability q[t_1] (default edges 1/3 and 2/3: low, mid, high confidence);
- student-gold accuracy: share where argmax p = gold;
- top-k overlap: mean |top-k(p) ∩ top-k(q)| / k.
The paper (Zhang et al. 2023, §3) uses these to show that KD's benefit comes from the teacher's top-1
and that the teacher's top-1 mostly duplicates the gold token.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from ..errors import TiekdError

# torch is imported where it is used: the command line builds its parser from this module and
# `tiekd --help` should not wait seconds for torch
if typing.TYPE_CHECKING:
    import torch


def agreement_statistics(student, teacher, tokenizer, sources: list[str] | None, targets: list[str] | None,
                         topk: int = 5, bin_edges: tuple[float, ...] = (1 / 3, 2 / 3), max_tokens: int = 4096,
                         device: str | torch.device = "cpu", corpus=None) -> dict:
    """Teacher-forced agreement statistics over a parallel corpus (see module docstring): `sources` and
    `targets` as text, or `corpus`, pairs already as ids (e.g. a prepared split read from disk,
    tiekd.data.binarized.load_corpus)."""
    import torch

    from ..data.batching import collate, encode_texts, make_batches, EncodedCorpus
    from ..kd.objectives import shift_right

    with torch.inference_mode():
        pad = tokenizer.pad_token_id
        if corpus is None:
            corpus = EncodedCorpus(encode_texts(tokenizer, sources), encode_texts(tokenizer, targets, target=True),
                                   pad)
        edges = torch.tensor(bin_edges)
        n_bins = len(bin_edges) + 1
        counts = {name: torch.zeros((), dtype=torch.float64) for name in ("tokens", "agree", "teacher_gold", "student_gold", "topk_overlap")}
        bin_tokens = torch.zeros(n_bins, dtype=torch.float64)
        bin_teacher_gold = torch.zeros(n_bins, dtype=torch.float64)
        bin_agree = torch.zeros(n_bins, dtype=torch.float64)
        student.eval(), teacher.eval()
        start = student.config.decoder_start_token_id
        for ids in make_batches(corpus, max_tokens):
            batch = collate(corpus, ids).to(device)
            decoder_input = shift_right(batch.labels, start)
            kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=decoder_input)
            student_logits = student(**kwargs).logits.float()
            teacher_logits = teacher(**kwargs).logits.float()
            keep = batch.labels != pad
            gold = batch.labels[keep]
            s_logits, t_logits = student_logits[keep], teacher_logits[keep]
            s_top1, t_top1 = s_logits.argmax(-1), t_logits.argmax(-1)
            t_conf = torch.softmax(t_logits, -1).gather(-1, t_top1[:, None]).squeeze(-1).cpu()
            s_topk, t_topk = s_logits.topk(topk, -1).indices, t_logits.topk(topk, -1).indices
            overlap = (s_topk[:, :, None] == t_topk[:, None, :]).any(-1).float().sum(-1) / topk
            agree, teacher_gold = (s_top1 == t_top1).cpu().double(), (t_top1 == gold).cpu().double()
            counts["tokens"] += gold.numel()
            counts["agree"] += agree.sum()
            counts["teacher_gold"] += teacher_gold.sum()
            counts["student_gold"] += (s_top1 == gold).double().sum().cpu()
            counts["topk_overlap"] += overlap.double().sum().cpu()
            bins = torch.bucketize(t_conf, edges)
            bin_tokens += torch.bincount(bins, minlength=n_bins).double()
            bin_teacher_gold += torch.bincount(bins, weights=teacher_gold, minlength=n_bins)
            bin_agree += torch.bincount(bins, weights=agree, minlength=n_bins)
    total = float(counts["tokens"])
    if total == 0:
        raise TiekdError("no target tokens to analyse. Fix: pass a non-empty split")
    labels = _bin_labels(bin_edges)
    return {
        "tokens": int(total),
        "top1_agreement": float(counts["agree"]) / total,
        "teacher_gold_overlap": float(counts["teacher_gold"]) / total,
        "student_gold_accuracy": float(counts["student_gold"]) / total,
        f"top{topk}_overlap": float(counts["topk_overlap"]) / total,
        "topk": topk,
        "by_teacher_confidence": [
            {"bin": labels[b], "share_of_tokens": float(bin_tokens[b]) / total,
             "teacher_gold_overlap": float(bin_teacher_gold[b] / bin_tokens[b]) if bin_tokens[b] else None,
             "top1_agreement": float(bin_agree[b] / bin_tokens[b]) if bin_tokens[b] else None}
            for b in range(n_bins)],
    }


def _bin_labels(edges: tuple[float, ...]) -> list[str]:
    points = [0.0, *edges, 1.0]
    return [f"q(t1) in [{points[i]:.2f}, {points[i + 1]:.2f}{']' if i == len(points) - 2 else ')'}"
            for i in range(len(points) - 1)]


def format_summary(stats: dict) -> str:
    k = stats["topk"]
    lines = [f"tokens analysed:          {stats['tokens']}",
             f"top-1 agreement (s = t):  {100 * stats['top1_agreement']:.2f}%",
             f"teacher top-1 = gold:     {100 * stats['teacher_gold_overlap']:.2f}%",
             f"student top-1 = gold:     {100 * stats['student_gold_accuracy']:.2f}%",
             f"top-{k} overlap:            {100 * stats[f'top{k}_overlap']:.2f}%",
             "by teacher confidence:"]
    for row in stats["by_teacher_confidence"]:
        overlap = "-" if row["teacher_gold_overlap"] is None else f"{100 * row['teacher_gold_overlap']:.2f}%"
        agree = "-" if row["top1_agreement"] is None else f"{100 * row['top1_agreement']:.2f}%"
        lines.append(f"  {row['bin']:24} {100 * row['share_of_tokens']:6.2f}% of tokens; "
                     f"teacher = gold {overlap}; student = teacher {agree}")
    return "\n".join(lines)


def plot_statistics(stats: dict, path: Path, title: str = "") -> Path:
    """Bar charts: overall agreement figures and teacher-gold overlap by confidence bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = stats["topk"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["student = teacher\n(top-1)", "teacher = gold", "student = gold", f"top-{k} overlap"]
    values = [stats["top1_agreement"], stats["teacher_gold_overlap"], stats["student_gold_accuracy"],
              stats[f"top{k}_overlap"]]
    left.bar(names, [100 * v for v in values], color=["#4c72b0", "#dd8452", "#55a868", "#8172b3"])
    left.set_ylabel("% of target tokens")
    left.set_ylim(0, 100)
    left.set_title("agreement (teacher-forced on gold)")
    rows = stats["by_teacher_confidence"]
    labels = [row["bin"].replace("q(t1) in ", "") for row in rows]
    right.bar(labels, [100 * (row["teacher_gold_overlap"] or 0) for row in rows], color="#dd8452", label="teacher = gold")
    for i, row in enumerate(rows):
        right.text(i, 2, f"{100 * row['share_of_tokens']:.0f}% of tokens", ha="center", fontsize=8)
    right.set_ylim(0, 100)
    right.set_xlabel("teacher top-1 probability")
    right.set_title("teacher-gold overlap by confidence")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from ..writes import save_figure

    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", required=True, help="student model folder")
    parser.add_argument("--teacher", required=True, help="teacher model folder (same vocabulary)")
    parser.add_argument("--data", required=True, help="prepared-data folder")
    parser.add_argument("--split", default="valid", help="split to analyse (default valid)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--max-sentences", type=int, default=0, help="analyse only the first N pairs (0: all)")
    parser.add_argument("--out", required=True, help="folder for analysis.json and analysis.png")
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import load_prepared
    from ..data.tokenizer import load_tokenizer, vocab_fingerprint
    from ..io import iter_lines, read_lines
    from ..models import load_model
    from ..training.trainer import pick_device, split_files

    device = pick_device(args.device)
    prepared = load_prepared(args.data)
    src, tgt = split_files(prepared, args.split)
    tokenizer = load_tokenizer(args.student)
    vocabulary = vocab_fingerprint(tokenizer)
    if vocab_fingerprint(load_tokenizer(args.teacher)) != vocabulary:
        raise TiekdError(f"{args.teacher}: its vocabulary differs from the student's ({args.student}). "
                         "Fix: analyse a student with the teacher it was distilled from")
    student = load_model(args.student, device)
    sources = targets = corpus = None
    if args.max_sentences:  # the first N lines, read as far as needed
        import itertools

        sources, targets = (list(itertools.islice(iter_lines(path), args.max_sentences)) for path in (src, tgt))
    elif vocab_fingerprint(load_tokenizer(prepared.tokenizer_dir)) == vocabulary:
        # the split's ids as `tiekd prepare` stored them (read as needed), encoded by the same vocabulary
        from ..data.binarized import load_corpus

        corpus = load_corpus(prepared, (src, tgt), tokenizer, student.config.max_position_embeddings)
    else:
        sources, targets = read_lines(src), read_lines(tgt)
    stats = agreement_statistics(student, load_model(args.teacher, device), tokenizer, sources, targets,
                                 topk=args.topk, device=device, corpus=corpus)
    stats.update({"student": str(args.student), "teacher": str(args.teacher), "split": args.split})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ..io import atomic_write_json

    atomic_write_json(out / "analysis.json", stats)
    plot_statistics(stats, out / "analysis.png", title=f"{Path(args.student).name} vs {Path(args.teacher).name}")
    print(format_summary(stats))
    print(f"wrote {out / 'analysis.json'} and {out / 'analysis.png'}")
    return 0

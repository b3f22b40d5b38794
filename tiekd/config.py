"""The run configuration: one typed dataclass, saved into the run folder and every checkpoint.

A run can be reproduced from its `config.yaml` alone (`tiekd train --config run/config.yaml`).
Defaults follow tie-kd.md §5 (Adam 0.9/0.98, inverse-sqrt warm-up, clip 5, label smoothing 0.1,
KD weight 0.5, top-k 5, three iterative passes), scaled down where Multi30k and CPUs call for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .errors import TiekdError
from .schedule import SCHEDULES

# word-level divergences between the student p and the teacher q at each position (tiekd.losses)
DIVERGENCES = ("word-kd", "reverse-kl", "jsd", "tvd", "skew-kl", "skew-reverse-kl")
KD_METHODS = ("none", "word-kd", "seq-kd", "tie-kd", "selective-kd", "kd-top1-only", "kd-without-top1", "kd-topk",
              "reverse-kl", "jsd", "tvd", "skew-kl", "skew-reverse-kl", "on-policy")
# methods whose KD term is a plain divergence over the full distributions: the temperature applies to them
TEMPERATURE_METHODS = DIVERGENCES + ("selective-kd", "on-policy")


@dataclass
class RunConfig:
    """Everything that defines a training or distillation run. Field comments are the documentation."""

    data: str = ""                 # prepared-data folder (`tiekd prepare`)
    out: str = ""                  # run folder: checkpoints, metrics.jsonl, config.yaml, final model
    model: str = "small"           # size preset (see `tiekd models`) or a model folder to start from
    dropout: float | None = None   # overrides the model's dropout (embeddings, sublayer outputs) when set
    attention_dropout: float | None = None   # overrides the model's dropout on attention weights when set
    activation_dropout: float | None = None  # overrides the model's dropout after the FFN's ReLU when set
    max_tokens: int = 4096         # tokens per batch (max(source, target) length x sentences)
    update_freq: int = 1           # batches accumulated per update (per process)
    lr: float = 7e-4               # peak learning rate, reached at the end of warm-up
    warmup_updates: int = 4000     # linear warm-up, then lr * sqrt(warmup / step)
    warmup_init_lr: float = 1e-7   # learning rate at step 0
    lr_schedule: str = "inverse-sqrt"  # after warm-up: inverse-sqrt, linear or cosine (decay to min_lr at the last update)
    min_lr: float = 0.0            # learning rate at the last update of the linear and cosine schedules
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 5.0         # gradient-norm clipping; 0 disables
    label_smoothing: float = 0.1   # epsilon of the fairseq label-smoothed cross-entropy
    max_updates: int = 0           # stop after this many updates (0: no limit)
    max_epochs: int = 0            # stop after this many epochs (0: no limit); one of the two must be set
    seed: int = 1
    valid_every: int = 500         # updates between validations (and at the end of the run)
    valid_each_epoch: bool = False  # also validate (and save) at the end of every epoch
    valid_bleu: bool = True        # decode the validation split and compute BLEU at each validation
    valid_beam: int = 1            # beam size for validation BLEU (1 = greedy, faster)
    valid_max_sentences: int = 0   # decode only the first N validation sentences for BLEU (0: all)
    keep_last: int = 5             # step checkpoints kept besides `best` (`tiekd average` uses them)
    save_every: int = 0            # updates between checkpoints (0: at each validation)
    log_every: int = 50            # updates between lines of metrics.jsonl
    device: str = "auto"           # auto, cpu, cuda, cuda:N
    precision: str = "auto"        # auto (bf16 autocast on GPU, fp32 on CPU), fp32, bf16
    compile: bool = False          # torch.compile the student
    fsdp: bool = False             # under torchrun: shard the student with FSDP2 instead of DDP replicas
    deterministic: bool = False    # deterministic algorithms (for exact resume tests)
    on_nonfinite: str = "error"    # error: stop naming the step; skip: skip the update and count it
    train_split: str = "train"
    valid_split: str = "valid"
    # distillation (tiekd distill); method none is plain training
    method: str = "none"           # one of KD_METHODS
    teacher: str = ""              # teacher model folder (same vocabulary as the data's tokenizer)
    init_from_teacher: bool = False  # start the student from the teacher's embeddings and evenly spaced layers
    kd_alpha: float = 0.5          # total = (1 - a) * ls_ce + a * kd
    topk: int = 5                  # k of TIE-KD's ranking loss and of kd-topk
    iterative_passes: int = 3      # N of TIE-KD's iterative KD (1 disables it)
    iterative_start_update: int = 0  # TIE-KD runs passes 2..N only from this update on (0: always, the paper's recipe)
    ranking: bool = True           # TIE-KD's ranking terms (False: iterative KD only ablation)
    selective_ratio: float = 0.5   # Selective-KD: share of hardest tokens that get KD
    kd_temperature: float = 1.0    # T of word-level KD: T^2 * D(q_T, p_T) on logits / T (Hinton et al. 2015); 1 = the paper
    jsd_beta: float = 0.5          # beta of the generalized JSD (method jsd, GKD's divergence)
    skew_alpha: float = 0.1        # alpha of skew-kl / skew-reverse-kl (DistiLLM)
    on_policy_lambda: float = 0.5  # on-policy: share of batches whose KD prefix is the student's own output
    on_policy_divergence: str = "jsd"  # on-policy: divergence on those prefixes (word-kd, reverse-kl, jsd, tvd, skew-kl, skew-reverse-kl)
    on_policy_sampling: str = "sample"  # on-policy: how the student makes its prefix: sample (GKD) or greedy
    seq_kd_targets: bool = False   # train on the teacher's beam translations (sequence-level KD)
    seq_kd_beam: int = 4           # beam size for the teacher's translations of the training set

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        problems = []
        if self.method not in KD_METHODS:
            problems.append(f"method {self.method!r} is not one of {', '.join(KD_METHODS)}")
        if self.init_from_teacher and not self.teacher:
            problems.append("init_from_teacher needs a teacher (--teacher MODEL_DIR)")
        if self.method not in ("none",) and not self.teacher:
            problems.append(f"method {self.method} needs a teacher (--teacher MODEL_DIR)")
        if self.max_tokens <= 0 or self.update_freq <= 0:
            problems.append("max_tokens and update_freq must be positive")
        if not 0.0 <= self.kd_alpha <= 1.0:
            problems.append(f"kd_alpha {self.kd_alpha} must lie in [0, 1]")
        if self.topk < 1 or self.iterative_passes < 1:
            problems.append("topk and iterative_passes must be at least 1")
        if self.lr_schedule not in SCHEDULES:
            problems.append(f"lr_schedule {self.lr_schedule!r} must be one of {', '.join(SCHEDULES)}")
        elif self.lr_schedule != "inverse-sqrt" and not self.max_updates and not self.max_epochs:
            problems.append(f"lr_schedule {self.lr_schedule} decays to min_lr at the last update, so it needs "
                            "max_updates or max_epochs")
        if self.lr <= 0 or not 0 <= self.min_lr < self.lr or self.warmup_init_lr < 0 or self.warmup_updates < 0:
            problems.append(f"learning rates must satisfy lr > 0, 0 <= min_lr < lr, warmup_init_lr >= 0 and "
                            f"warmup_updates >= 0 (got lr {self.lr}, min_lr {self.min_lr}, warmup_init_lr "
                            f"{self.warmup_init_lr}, warmup_updates {self.warmup_updates})")
        if self.kd_temperature <= 0 or (self.kd_temperature != 1.0 and self.method not in TEMPERATURE_METHODS):
            problems.append(f"kd_temperature {self.kd_temperature} must be positive, and other than 1 only for "
                            f"{', '.join(TEMPERATURE_METHODS)}")
        if not 0.0 < self.jsd_beta < 1.0:
            problems.append(f"jsd_beta {self.jsd_beta} must lie in (0, 1)")
        if not 0.0 <= self.skew_alpha < 1.0:
            problems.append(f"skew_alpha {self.skew_alpha} must lie in [0, 1)")
        if not 0.0 <= self.on_policy_lambda <= 1.0:
            problems.append(f"on_policy_lambda {self.on_policy_lambda} must lie in [0, 1]")
        if self.on_policy_divergence not in DIVERGENCES:
            problems.append(f"on_policy_divergence {self.on_policy_divergence!r} must be one of {', '.join(DIVERGENCES)}")
        if self.on_policy_sampling not in ("sample", "greedy"):
            problems.append(f"on_policy_sampling {self.on_policy_sampling!r} must be sample or greedy")
        if self.method == "on-policy" and (self.fsdp or self.compile):
            problems.append("method on-policy decodes with the student inside each update, which --fsdp and "
                            "--compile do not support; use DDP (the default under torchrun) without --compile")
        if self.iterative_start_update < 0:
            problems.append("iterative_start_update must be 0 or more")
        if self.precision not in ("auto", "fp32", "bf16"):
            problems.append(f"precision {self.precision!r} must be auto, fp32 or bf16")
        if self.on_nonfinite not in ("error", "skip"):
            problems.append(f"on_nonfinite {self.on_nonfinite!r} must be error or skip")
        if problems:
            raise TiekdError("invalid run configuration: " + "; ".join(problems))

    @property
    def uses_teacher(self) -> bool:
        return self.method != "none" or self.seq_kd_targets

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_dict(cls, values: dict, source: str = "configuration") -> "RunConfig":
        """Build from a mapping, refusing unknown keys with the list of valid ones (and a close match)."""
        import difflib

        valid = [f.name for f in fields(cls)]
        unknown = [key for key in values if key not in valid]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, valid, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TiekdError(f"{source}: unknown key(s) {', '.join(hints)}. "
                             f"Fix: use only these keys: {', '.join(valid)}")
        return cls(**values)

    def save(self, path: Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_config_file(path: str | Path) -> dict:
    """Read a YAML mapping with errors that name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TiekdError(f"{path}: no such config file. Fix: check the path")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else str(path)
        raise TiekdError(f"{where}: invalid YAML ({exc}). Fix: correct the syntax") from exc
    if not isinstance(values, dict):
        raise TiekdError(f"{path}: expected a mapping of keys to values. Fix: write `key: value` lines")
    return values


def fields_help() -> dict[str, str]:
    """Field name -> comment, read from this file's source, for `--help` texts."""
    import inspect
    import re

    helps = {}
    for line in inspect.getsource(RunConfig).splitlines():
        match = re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.*)", line)
        if match:
            helps[match.group(1)] = match.group(2)
    return helps

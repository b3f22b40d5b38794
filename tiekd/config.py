"""The run configuration: one typed dataclass, saved into the run folder and every checkpoint.

A run can be reproduced from its `config.yaml` alone (`tiekd train --config run/config.yaml`).
Defaults follow docs/method.md §11-12 (Adam 0.9/0.98, inverse-sqrt warm-up, clip 5, label smoothing 0.1,
KD weight 0.5, top-k 5, three iterative passes), scaled down where Multi30k and CPUs call for it.

Each field is declared with its help text and allowed values (`config_fields.setting`): the CLI's
flags and `--help` are generated from them, and `RunConfig.validate()` checks every field against
them, plus the rules that tie fields together, reporting all problems at once.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from .config_fields import InvalidConfig, Problem, field_problem, setting, unknown_key_problem, yaml_key_lines
from .errors import TiekdError
from .training.schedule import SCHEDULES

from .kd.methods import DIVERGENCES, METHODS, get_method, runs_teacher_on_gold

# every registered method (tiekd/kd/methods.py): a live view, so a method registered later is a valid choice
KD_METHODS = METHODS.keys()
DEVICE_PATTERN = (r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")


@dataclass
class RunConfig:
    """Everything that defines a training or distillation run; each field's help is its documentation."""

    data: str = setting("", "prepared-data folder (`tiekd prepare`)")
    out: str = setting("", "run folder: checkpoints, metrics.jsonl, config.yaml, final model")
    model: str = setting("small", "size preset (see `tiekd models`) or a model folder to start from")
    dropout: float | None = setting(None, "overrides the model's dropout (embeddings, sublayer outputs) when set",
                                    bounds="[0, 1)")
    attention_dropout: float | None = setting(None, "overrides the model's dropout on attention weights when set",
                                              bounds="[0, 1)")
    activation_dropout: float | None = setting(None, "overrides the model's dropout after the FFN's ReLU when set",
                                               bounds="[0, 1)")
    max_tokens: int = setting(4096, "tokens per batch (max(source, target) length x sentences)", bounds="> 0")
    update_freq: int = setting(1, "batches accumulated per update (per process)", bounds=">= 1")
    lr: float = setting(7e-4, "peak learning rate, reached at the end of warm-up", bounds="> 0")
    warmup_updates: int = setting(4000, "updates of linear warm-up from warmup_init_lr to lr (then inverse-sqrt "
                                 "decays as lr * sqrt(warmup / step))", bounds=">= 0")
    warmup_init_lr: float = setting(1e-7, "learning rate at step 0", bounds=">= 0")
    lr_schedule: str = setting("inverse-sqrt", "after warm-up: inverse-sqrt, or linear or cosine decay to min_lr "
                               "at the last update", choices=SCHEDULES)
    min_lr: float = setting(0.0, "learning rate at the last update of the linear and cosine schedules (below lr)",
                            bounds=">= 0")
    # torch.optim.Adam refuses betas outside [0, 1) and a negative eps or weight decay
    adam_betas: tuple[float, float] = setting((0.9, 0.98), "Adam's beta1 and beta2", bounds="[0, 1)")
    adam_eps: float = setting(1e-8, "Adam's epsilon, added to the denominator", bounds=">= 0")
    weight_decay: float = setting(0.0, "Adam's L2 penalty (added to the gradient, not decoupled as in AdamW)",
                                  bounds=">= 0")
    clip_norm: float = setting(5.0, "gradient-norm clipping; 0 disables", bounds=">= 0")
    label_smoothing: float = setting(0.1, "epsilon of the fairseq label-smoothed cross-entropy", bounds="[0, 1)")
    max_updates: int = setting(0, "stop after this many updates (0: no limit)", bounds=">= 0")
    max_epochs: int = setting(0, "stop after this many epochs (0: no limit); one of the two must be set",
                              bounds=">= 0")
    # NumPy's seed must fit in 32 bits
    seed: int = setting(1, "seed of Python's, NumPy's and PyTorch's generators (weights, batch order, dropout)",
                        bounds="[0, 4294967295]")
    valid_every: int = setting(500, "updates between validations (and at the end of the run)", bounds=">= 1")
    valid_each_epoch: bool = setting(False, "also validate (and save) at the end of every epoch")
    valid_bleu: bool = setting(True, "decode the validation split and compute BLEU at each validation")
    valid_beam: int = setting(1, "beam size for validation BLEU (1 = greedy, faster)", bounds=">= 1")
    valid_max_sentences: int = setting(0, "decode only the first N validation sentences for BLEU (0: all)",
                                       bounds=">= 0")
    keep_last: int = setting(5, "step checkpoints kept besides `best` (`tiekd average` uses them; 0: keep all)",
                             bounds=">= 0")
    save_every: int = setting(0, "updates between checkpoints (0: at each validation)", bounds=">= 0")
    log_every: int = setting(50, "updates between lines of metrics.jsonl", bounds=">= 1")
    device: str = setting("auto", "where to train", pattern=DEVICE_PATTERN)
    precision: str = setting("auto", "auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16",
                             choices=("auto", "fp32", "bf16"))
    compile: bool = setting(False, "torch.compile the student")
    fsdp: bool = setting(False, "under torchrun: shard the student with FSDP2 instead of DDP replicas")
    deterministic: bool = setting(False, "deterministic algorithms (for exact resume tests)")
    on_nonfinite: str = setting("error", "on a non-finite loss: error stops naming the step; skip skips the update "
                                "and counts it", choices=("error", "skip"))
    train_split: str = setting("train", "prepared split to train on")
    valid_split: str = setting("valid", "prepared split to validate on")
    # distillation (tiekd distill only); method none is plain training
    method: str = setting("none", "KD method", choices=KD_METHODS, distill_only=True)
    teacher: str = setting("", "teacher model folder (same vocabulary as the data's tokenizer)", distill_only=True)
    teacher_cache: str = setting("", "folder where the teacher's logits on the training set's gold prefixes are "
                                 "computed once and read back instead of running the teacher on them every epoch "
                                 "(passes on the student's own prefixes still run it); float32, target tokens x "
                                 "vocabulary x 4 bytes: 14.5 GB for Multi30k at 8k pieces. Changes no result beyond "
                                 "rounding (tiekd/kd/teacher_cache.py)", distill_only=True)
    init_from_teacher: bool = setting(False, "start the student from the teacher's embeddings and evenly spaced "
                                      "layers", distill_only=True)
    kd_alpha: float = setting(0.5, "total = (1 - a) * ls_ce + a * kd", bounds="[0, 1]", distill_only=True)
    topk: int = setting(5, "k of TIE-KD's ranking loss and of kd-topk", bounds=">= 1", distill_only=True)
    iterative_passes: int = setting(3, "N of TIE-KD's iterative KD (1 disables it)", bounds=">= 1",
                                    distill_only=True)
    iterative_start_update: int = setting(0, "TIE-KD runs passes 2..N only from this update on (0: always, the "
                                          "paper's recipe)", bounds=">= 0", distill_only=True)
    ranking: bool = setting(True, "TIE-KD's ranking terms (--no-ranking: iterative KD only ablation)",
                            distill_only=True)
    selective_ratio: float = setting(0.5, "Selective-KD: share of hardest tokens that get KD", bounds="(0, 1]",
                                     distill_only=True)
    kd_temperature: float = setting(1.0, "T of word-level KD: T^2 * D(q_T, p_T) on logits / T (Hinton et al. "
                                    "2015); 1 = the paper; other values only for the plain divergences ("
                                    + ", ".join(name for name, m in METHODS.items() if m.temperature) + ")",
                                    bounds="> 0", distill_only=True)
    jsd_beta: float = setting(0.5, "beta of the generalized JSD (method jsd, GKD's divergence)", bounds="(0, 1)",
                              distill_only=True)
    skew_alpha: float = setting(0.1, "alpha of skew-kl / skew-reverse-kl (DistiLLM)", bounds="[0, 1)",
                                distill_only=True)
    on_policy_lambda: float = setting(0.5, "on-policy: share of batches whose KD prefix is the student's own "
                                      "output", bounds="[0, 1]", distill_only=True)
    on_policy_divergence: str = setting("jsd", "on-policy: divergence on those prefixes", choices=DIVERGENCES,
                                        distill_only=True)
    on_policy_sampling: str = setting("sample", "on-policy: how the student makes its prefix: sample (GKD) or "
                                      "greedy", choices=("sample", "greedy"), distill_only=True)
    seq_kd_targets: bool = setting(False, "train on the teacher's beam translations (sequence-level KD)",
                                   distill_only=True)
    seq_kd_beam: int = setting(4, "beam size for the teacher's translations of the training set", bounds=">= 1",
                               distill_only=True)
    seq_kd_engine: str = setting("ctranslate2", "what decodes the teacher's translations: ctranslate2 (tiekd "
                                 "distill-data: batched, n-best) or pytorch (`generate` on the loaded teacher); both share the "
                                 "shards over torchrun ranks",
                                 choices=("ctranslate2", "pytorch"), distill_only=True)
    seq_kd_nbest: int = setting(1, "hypotheses the teacher keeps per sentence (ctranslate2 engine)", bounds=">= 1",
                                distill_only=True)
    seq_kd_select: str = setting("best", "which hypothesis becomes the target: best (the teacher's 1-best) or chrf "
                                 "(the n-best entry closest to the reference by chrF, as Bergamot does)",
                                 choices=("best", "chrf"), distill_only=True)

    def __post_init__(self) -> None:
        self.validate()
        self.adam_betas = tuple(self.adam_betas)

    def validate(self) -> None:
        """Raise `InvalidConfig` listing every problem: each field against its declaration, then the
        rules between fields (skipped for fields that are already wrong on their own)."""
        types = field_types()
        problems = [problem for f in fields(self)
                    if (problem := field_problem(f, types[f.name], getattr(self, f.name))) is not None]
        wrong = {problem.key for problem in problems}
        problems += relation_problems(self, ok=lambda *keys: not wrong.intersection(keys))
        if problems:
            raise InvalidConfig(problems)

    @property
    def uses_teacher(self) -> bool:
        return get_method(self.method).needs_teacher or self.seq_kd_targets

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_dict(cls, values: dict, source: str = "configuration", flags=()) -> "RunConfig":
        """Build from a mapping read from `source`, refusing unknown keys (with the closest valid one) and
        invalid values; errors name each key as `--flag` when it is in `flags`, else as `source:line: key`."""
        name_of = key_namer(source, flags)
        valid = [f.name for f in fields(cls)]
        unknown = [key for key in values if key not in valid]
        if unknown:
            raise InvalidConfig([unknown_key_problem(key, valid) for key in unknown], name_of)
        try:
            return cls(**values)
        except InvalidConfig as error:
            raise error.renamed(name_of) from None

    def save(self, path: Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))


@functools.cache
def field_types() -> dict[str, object]:
    """RunConfig's annotations resolved to types (they are strings under `from __future__ import annotations`)."""
    return typing.get_type_hints(RunConfig)


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def relation_problems(config: RunConfig, ok) -> list[Problem]:
    """Problems of values that are fine alone but not together; `ok(*keys)` says those keys are each valid."""
    found = []
    set_teacher = "set teacher (--teacher MODEL_DIR) to the teacher's model folder"
    method = get_method(config.method) if ok("method") else None
    if method is not None and ok("teacher") and method.needs_teacher and not config.teacher:
        found.append(Problem("teacher", config.teacher, f"method {config.method} needs a teacher", set_teacher))
    if method is not None and ok("teacher_cache") and config.teacher_cache \
            and not runs_teacher_on_gold(method):
        found.append(Problem("teacher_cache", config.teacher_cache, f"method {config.method} runs no teacher inside "
                             "its updates, so there are no logits to cache", "drop teacher_cache (--teacher-cache)"))
    if method is not None and ok("teacher_cache", "on_policy_lambda") and config.teacher_cache and method.on_policy \
            and config.on_policy_lambda == 1.0:
        found.append(Problem("teacher_cache", config.teacher_cache, "on_policy_lambda 1 puts every KD term on the "
                             "student's own output, so no batch reads gold-prefix logits",
                             "drop teacher_cache (--teacher-cache), or use an on_policy_lambda below 1"))
    for flag in ("init_from_teacher", "seq_kd_targets"):
        if ok(flag, "teacher") and getattr(config, flag) and not config.teacher:
            found.append(Problem("teacher", config.teacher, f"{flag} needs a teacher", set_teacher))
    if ok("lr_schedule", "max_updates", "max_epochs") and config.lr_schedule != "inverse-sqrt" \
            and not config.max_updates and not config.max_epochs:
        found.append(Problem("lr_schedule", config.lr_schedule, "decays to min_lr at the last update, so it needs "
                             "max_updates or max_epochs", "set max_updates (--max-updates N) or max_epochs"))
    if ok("min_lr", "lr") and config.min_lr >= config.lr:
        found.append(Problem("min_lr", config.min_lr, f"must be below lr ({config.lr})",
                             f"use a min_lr below {config.lr}, e.g. 0"))
    if method is not None and ok("kd_temperature") and config.kd_temperature != 1.0 and not method.temperature:
        softened = ", ".join(name for name, m in METHODS.items() if m.temperature)
        found.append(Problem("kd_temperature", config.kd_temperature, f"method {config.method} has no temperature",
                             f"keep kd_temperature 1, or use one of {softened}"))
    if ok("seq_kd_nbest", "seq_kd_beam") and config.seq_kd_nbest > config.seq_kd_beam:
        found.append(Problem("seq_kd_nbest", config.seq_kd_nbest, f"exceeds the beam ({config.seq_kd_beam})",
                             "keep seq_kd_nbest <= seq_kd_beam"))
    if ok("seq_kd_select", "seq_kd_nbest") and config.seq_kd_select == "chrf" and config.seq_kd_nbest < 2:
        found.append(Problem("seq_kd_select", config.seq_kd_select, "chooses among n-best entries",
                             "set seq_kd_nbest (--seq-kd-nbest) to 2 or more, e.g. 4"))
    if ok("seq_kd_engine", "seq_kd_nbest") and config.seq_kd_engine == "pytorch" and config.seq_kd_nbest > 1:
        found.append(Problem("seq_kd_nbest", config.seq_kd_nbest, "n-best lists come from the ctranslate2 engine",
                             "use --seq-kd-engine ctranslate2, or seq_kd_nbest 1"))
    if method is not None and ok("fsdp", "compile") and method.on_policy and (config.fsdp or config.compile):
        found.append(Problem("method", config.method, "decodes with the student inside each update, which --fsdp "
                             "and --compile do not support", "use DDP (the default under torchrun) without --compile"))
    return found


def key_namer(source: str, flags=()):
    """A function naming a key as the user wrote it: `--flag` for keys in `flags`, else `source:line: key`
    (the line when `source` is a YAML file that has the key); `source:line` alone without `with_key`."""
    lines = yaml_key_lines(source) if Path(source).is_file() else {}

    def name_of(key: str, with_key: bool = True) -> str:
        if key in flags:
            return flag_name(key)
        line = lines.get((key,))
        where = f"{source}:{line}" if line else source
        return f"{where}: {key}" if with_key else where

    return name_of


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

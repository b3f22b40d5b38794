"""Every tiekd distillation method inside Hugging Face's `Seq2SeqTrainer`, for code that already trains with it.

    from transformers import DataCollatorForSeq2Seq
    from tiekd.hf import DistillationConfig, DistillationTrainer

    args = DistillationConfig(output_dir="student", method="tie-kd", topk=5, max_steps=600, learning_rate=2e-3)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=pairs,
                                  data_collator=DataCollatorForSeq2Seq(tokenizer, model=student))
    trainer.train()

The loss is tiekd's own `DistillationObjective` (tiekd/kd/objectives.py), the object `tiekd distill` trains with:
(1 - kd_alpha) * label-smoothed CE + kd_alpha * the method's KD term, summed over the batch's target tokens
and divided by the target tokens of the whole accumulated step (HF's `num_items_in_batch`, counted over every
rank when `average_tokens_across_devices`), so gradient accumulation and data parallelism give the gradient of
one big batch, as in `tiekd distill`.

One DDP forward per micro-batch. TIE-KD runs the student N times per batch (the gold prefix, then its own
argmax prefixes) and on-policy KD decodes before its pass. DDP allows one forward per backward, so the trainer
hands HF's engine the objective (student inside, teacher held outside the module tree) instead of the bare
student: `_wrap_model` returns `accelerator.prepare_model(objective)`, which is DDP(objective) under torchrun or
`accelerate launch`, and `compute_loss` calls it once. `trainer.model` stays the student, so saving,
checkpoints, resume, `push_to_hub` and evaluation go through HF's own code and see only the student.
The teacher is never in DDP: it is frozen and each rank holds its own copy on its device.

Not supported, and refused at construction: DeepSpeed and FSDP (their engine would have to wrap the objective,
untested here), single-process multi-GPU `DataParallel` (use torchrun) and HF's `label_smoothing_factor` (the
gold CE already smooths with `label_smoothing`, fairseq's form; both would smooth twice). Sequence-level KD
trains on the teacher's translations, not on a loss: write them with `tiekd distill-data`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from .config import RunConfig
from .errors import TiekdError
from .kd.methods import METHODS
from .kd.objectives import (
    IGNORE_INDEX,
    KD_SETTINGS,
    DistillationObjective,
    check_same_vocabulary,
    method_config,
)

_RUN_FIELDS = {field.name: field for field in dataclasses.fields(RunConfig)}


def _setting(name: str):
    """A DistillationConfig field with RunConfig's default and help, so the two never disagree."""
    field = _RUN_FIELDS[name]
    return dataclasses.field(default=field.default, metadata={"help": field.metadata["help"]})


@dataclass
class DistillationConfig(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` plus the distillation method and its settings, named and defaulted as in
    `tiekd distill` (`tiekd distill --help` and docs describe each). Checked at construction by the same rules."""

    method: str = dataclasses.field(default="tie-kd", metadata={"help": "distillation method (tiekd.METHODS), "
                                                                        "e.g. word-kd, selective-kd, tie-kd, jsd, "
                                                                        "on-policy; none: no teacher, label-smoothed CE"})
    label_smoothing: float = _setting("label_smoothing")
    kd_alpha: float = _setting("kd_alpha")
    kd_temperature: float = _setting("kd_temperature")
    topk: int = _setting("topk")
    iterative_passes: int = _setting("iterative_passes")
    iterative_start_update: int = _setting("iterative_start_update")
    ranking: bool = _setting("ranking")
    selective_ratio: float = _setting("selective_ratio")
    jsd_beta: float = _setting("jsd_beta")
    skew_alpha: float = _setting("skew_alpha")
    on_policy_lambda: float = _setting("on_policy_lambda")
    on_policy_divergence: str = _setting("on_policy_divergence")
    on_policy_sampling: str = _setting("on_policy_sampling")
    max_tokens: int = dataclasses.field(default=0, metadata={
        "help": "batches of at most this many padded tokens a side (tiekd's length-bucketed batches, in tiekd's epoch "
                "order) instead of per_device_train_batch_size sentences; 0: HF's sentence batches"})

    def __post_init__(self):
        if self.label_smoothing_factor:
            raise TiekdError(f"label_smoothing_factor={self.label_smoothing_factor} is Hugging Face's own label "
                             "smoothing, but the distillation loss already smooths its gold cross-entropy with "
                             f"label_smoothing={self.label_smoothing} (fairseq's form); both would smooth twice. "
                             "Fix: set label_smoothing and leave label_smoothing_factor at 0")
        if self.ddp_find_unused_parameters is None:
            # every student parameter takes part in every step: DDP need not search the graph for unused ones
            self.ddp_find_unused_parameters = False
        super().__post_init__()
        if self.max_tokens < 0:
            raise TiekdError(f"max_tokens={self.max_tokens}: give a token count per batch, or 0 for HF's batches")
        method_config(self.method, teacher_given=True, **self.kd_settings())  # a bad setting fails here, not mid-run

    def kd_settings(self) -> dict:
        """The settings of KD_SETTINGS, as `DistillationObjective.for_method` takes them."""
        return {name: getattr(self, name) for name in KD_SETTINGS}


class DistillationTrainer(Seq2SeqTrainer):
    """A `Seq2SeqTrainer` whose loss is tiekd's distillation objective (module docstring: how and why).

    `model` is the student and stays `trainer.model`; `teacher_model` is frozen, put in eval mode and moved to
    the student's device, and kept as `trainer.teacher_model`. Batches are ordinary HF seq2seq batches:
    `input_ids`, `attention_mask`, `labels` padded with -100 (or the pad id) and, optionally, `decoder_input_ids`
    (DataCollatorForSeq2Seq makes them from the labels). With `teacher_tokenizer`, the teacher's vocabulary must
    match `processing_class` (the student's tokenizer) entry for entry, not only in size.

    Logs add `ce` and `kd`, this rank's mean per target token of the two parts since the last log."""

    def __init__(self, model=None, teacher_model=None, args: DistillationConfig | None = None, *,
                 teacher_tokenizer=None, **kwargs):
        if not isinstance(args, DistillationConfig):
            raise TypeError("DistillationTrainer needs args=DistillationConfig(...) (Seq2SeqTrainingArguments plus "
                            f"the method and its settings), got {type(args).__name__}")
        if model is None:
            raise TypeError("DistillationTrainer needs model=<the student> (model_init is not supported)")
        _refuse_engines(args)
        method = METHODS.get(args.method)
        if teacher_model is None and method is not None and method.needs_teacher:
            raise TiekdError(f"method {args.method!r} needs a teacher. Fix: DistillationTrainer(model=student, "
                             "teacher_model=<a frozen seq2seq model with the student's vocabulary>, ...)")
        if teacher_model is not None:
            check_same_vocabulary(model, teacher_model, kwargs.get("processing_class"), teacher_tokenizer)
        super().__init__(model=model, args=args, **kwargs)
        if teacher_model is not None:
            teacher_model = teacher_model.to(self.args.device).eval().requires_grad_(False)
        self.teacher_model = teacher_model
        self.objective = self._make_objective()
        # Count each accumulated step's target tokens (HF does so only for models that take loss kwargs) and
        # tell HF the loss is already divided by them, so it does not divide by the accumulation steps again.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        self._part_sums: dict[str, torch.Tensor] = {}  # detached: read on the host only when logged
        self._part_batches = 0

    def _make_objective(self) -> DistillationObjective:
        return DistillationObjective.for_method(self.args.method, self.model, self.teacher_model,
                                                **self.args.kd_settings())

    def _wrap_model(self, model, training: bool = True, dataloader=None):
        """For training: the objective around the student, prepared by accelerate (DDP under torchrun), so
        that a step's student passes run inside one DDP forward. For evaluation: HF's own wrapping."""
        if not training:
            return super()._wrap_model(model, training=training, dataloader=dataloader)
        if isinstance(self.accelerator.unwrap_model(model), DistillationObjective):
            return model  # a second train() call: already prepared
        if self.objective.student is not self.model:  # the student was replaced (e.g. after a batch-size retry)
            self.objective = self._make_objective()
        return self.accelerator.prepare_model(self.objective)

    def get_train_dataloader(self):
        """With `max_tokens`: tiekd's token-count batches (TokenBatches), which accelerate deals out to the ranks
        round-robin as tiekd does: micro-step m of rank r takes batch m * world + r of the epoch's order."""
        if not self.args.max_tokens:
            return super().get_train_dataloader()
        batches = TokenBatches(self.train_dataset, self.args.max_tokens, self.args.seed)
        loader = torch.utils.data.DataLoader(self.train_dataset, batch_sampler=batches, collate_fn=self.data_collator,
                                             num_workers=self.args.dataloader_num_workers,
                                             pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available())
        return self.accelerator.prepare(loader)

    def _hf_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """`labels` with pad-id padding replaced by -100, which HF's counting and its models' own loss skip
        (the reverse of DistillationObjective.gold_labels)."""
        return labels.masked_fill(labels == self.objective.pad_id, IGNORE_INDEX)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """HF counts labels != -100; a collator that pads labels with the pad id must not have padding counted."""
        masked = [{**batch, "labels": self._hf_labels(batch["labels"])}
                  if isinstance(batch, dict) and "labels" in batch else batch for batch in batch_samples]
        return super()._get_num_items_in_batch(masked, device)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """Training: the objective's loss sum / the accumulated step's target tokens (times the number of
        processes when that count is global, because DDP averages the ranks' gradients). Evaluation (`model` is
        the student): the student's own mean cross-entropy per target token, without smoothing."""
        objective = self.accelerator.unwrap_model(model)
        if not isinstance(objective, DistillationObjective):
            inputs = {**inputs, "labels": self._hf_labels(inputs["labels"])}
            return super().compute_loss(model, inputs, return_outputs=return_outputs)
        pad = objective.pad_id
        labels = objective.gold_labels(inputs["labels"])
        objective.updates_done = self.state.global_step  # TIE-KD's iterative_start_update counts updates
        total, parts = model(inputs["input_ids"], inputs["attention_mask"], labels, inputs.get("decoder_input_ids"))
        local_tokens = (labels != pad).sum()
        divisor = num_items_in_batch if num_items_in_batch is not None else local_tokens.clamp(min=1)
        loss = total / divisor
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        for name, value in parts.items():  # tensors, so that no step waits for the device to report a number
            self._part_sums[name] = self._part_sums.get(name, 0.0) + value / local_tokens.clamp(min=1)
        self._part_batches += 1
        return (loss, parts) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._part_batches:
            logs.update({name: round(float(total) / self._part_batches, 4) for name, total in self._part_sums.items()})
            self._part_sums, self._part_batches = {}, 0
        super().log(logs, *args, **kwargs)


def _refuse_engines(args: DistillationConfig) -> None:
    """The engines whose wrapping of the objective is not built or tested: refused with what works."""
    if args.deepspeed or args.fsdp:
        raise TiekdError("DistillationTrainer runs on one device or data-parallel (DDP under torchrun or "
                         "`accelerate launch`); DeepSpeed and FSDP are not supported yet, because their engine "
                         "would have to wrap the distillation objective rather than the student. Fix: drop "
                         "deepspeed/fsdp from the arguments, or use `tiekd distill --fsdp`")
    if args.n_gpu > 1:
        raise TiekdError(f"{args.n_gpu} GPUs in one process would use torch.nn.DataParallel, which splits one "
                         "forward over devices and cannot run TIE-KD's passes as one step. Fix: launch one process "
                         "per GPU: `torchrun --nproc_per_node N your_script.py` or `accelerate launch`")


class TokenBatches(torch.utils.data.Sampler):
    """tiekd's training batches for any sized dataset of {"input_ids", "labels"} features: pairs sorted by
    length and cut into batches of at most `max_tokens` padded tokens a side (tiekd.data.batching.make_batches), one
    permutation of the batches per epoch (tiekd.data.batching.epoch_order, seeded by `seed` and the epoch), so a run
    through DistillationTrainer sees exactly the batches `tiekd distill --max-tokens N --seed S` sees."""

    def __init__(self, dataset, max_tokens: int, seed: int):
        from .data.batching import make_batches

        self.plan = make_batches(_Lengths(dataset), max_tokens)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        from .data.batching import epoch_order

        return (self.plan[k] for k in epoch_order(len(self.plan), self.seed, self.epoch))


class _Lengths:
    """Source and target lengths of a dataset, read from its encoded corpus when it has one (SentencePairs)."""

    def __init__(self, dataset):
        import numpy as np

        corpus = getattr(dataset, "corpus", None)
        if corpus is not None:
            self.sources, self.targets = corpus.source_lengths(), corpus.target_lengths()
        else:
            rows = [dataset[i] for i in range(len(dataset))]
            self.sources = np.asarray([len(row["input_ids"]) for row in rows], dtype=np.int64)
            self.targets = np.asarray([len(row["labels"]) for row in rows], dtype=np.int64)

    def source_lengths(self):
        return self.sources

    def target_lengths(self):
        return self.targets


class SentencePairs(torch.utils.data.Dataset):
    """Token ids of line-aligned source and target files as HF features ({"input_ids", "labels"}), for
    `DataCollatorForSeq2Seq`. Encoded once with `tokenizer` (lines longer than `max_length` tokens truncated)."""

    def __init__(self, tokenizer, source_path, target_path, max_length: int = 256):
        from .data.batching import encode_pair_files

        self.corpus = encode_pair_files(tokenizer, source_path, target_path, max_positions=max_length)

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": list(self.corpus.source(index)), "labels": list(self.corpus.target(index))}

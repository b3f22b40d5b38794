"""Run by tests/test_hf_trainer.py (directly, or under torchrun): distill a micro student with DistillationTrainer
for a few updates in sequential batch order, then rank 0 writes the student's parameters and what HF wrapped.

    python tests/hf_ddp_run.py PREPARED TEACHER OUT GRAD_ACCUMULATION
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import DataCollatorForSeq2Seq

from tiekd.data.tokenizer import load_tokenizer
from tiekd.hf import DistillationConfig, DistillationTrainer, SentencePairs
from tiekd.models import build_model, load_model
from tiekd.training.process_exit import run_and_exit


def main(prepared: Path, teacher_dir: Path, out: Path, accumulation: int) -> None:
    tokenizer = load_tokenizer(prepared / "tokenizer")
    torch.manual_seed(11)  # the same initial student in every process
    student = build_model("micro", tokenizer, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    pairs = SentencePairs(tokenizer, prepared / "valid.de", prepared / "valid.en")
    args = DistillationConfig(output_dir=str(out / "hf"), method="tie-kd", max_steps=3, per_device_train_batch_size=8,
                              gradient_accumulation_steps=accumulation, learning_rate=3e-3, lr_scheduler_type="constant",
                              train_sampling_strategy="sequential", logging_steps=1, report_to=[], save_strategy="no",
                              use_cpu=True, seed=5, disable_tqdm=True)
    trainer = DistillationTrainer(model=student, teacher_model=load_model(teacher_dir), args=args, train_dataset=pairs,
                                  data_collator=DataCollatorForSeq2Seq(tokenizer, model=student))
    trainer.train()
    if trainer.args.process_index == 0:
        save_file({name: value.detach().clone() for name, value in student.state_dict().items()}, out / "student.safetensors")
        wrapped = trainer.model_wrapped
        inner = getattr(wrapped, "module", wrapped)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        (out / "run.json").write_text(json.dumps({"wrapped": type(wrapped).__name__, "inner": type(inner).__name__,
                                                  "world_size": trainer.args.world_size, "losses": losses}))


if __name__ == "__main__":
    # a torchrun rank ends as tiekd's own ranks do, without the interpreter's shutdown, where a gloo thread
    # that outlives the process group can abort a finished rank (tiekd/training/process_exit.py)
    run_and_exit(lambda: main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])))

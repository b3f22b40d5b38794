"""Distill a Marian teacher into a fresh small student with Hugging Face's Trainer and tiekd's loss.

    python examples/hf_trainer_distill.py --teacher models/multi30k-de-en-teacher \
        --data ../shared/data/multi30k --out runs/hf-tie-kd --method tie-kd --max-steps 600
    torchrun --nproc_per_node 2 examples/hf_trainer_distill.py ...     # or: accelerate launch examples/...

`--teacher` is any Marian model folder (an OPUS-MT download, or a `tiekd train` result); `--data` a folder with
line-aligned `train.SRC`/`train.TGT`, `val.*` and a test pair (Multi30k's layout; `--src`/`--tgt` name the
languages). The student is a freshly initialised tiekd preset (`--student tiny`) with the teacher's tokenizer.
At the end the student is saved as a standard model folder and scored with sacreBLEU on the test pair.
Batches are HF's: `--batch-size` sentences per device (128 Multi30k pairs are about 4,000 tokens a side).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sacrebleu
import torch
from transformers import DataCollatorForSeq2Seq

from tiekd.data.tokenizer import load_tokenizer
from tiekd.hf import DistillationConfig, DistillationTrainer, SentencePairs
from tiekd.models import build_model, load_model


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", required=True, help="Marian teacher folder (model + tokenizer)")
    parser.add_argument("--data", required=True, help="folder of train/val/test files, Multi30k's layout")
    parser.add_argument("--out", required=True, help="output folder (HF checkpoints, then the final student)")
    parser.add_argument("--src", default="de")
    parser.add_argument("--tgt", default="en")
    parser.add_argument("--test", default="test_2016_flickr", help="name of the test pair in --data")
    parser.add_argument("--student", default="tiny", help="tiekd model preset of the student")
    parser.add_argument("--method", default="tie-kd", help="any tiekd method but seq-kd, e.g. word-kd, jsd")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=128, help="sentences per device per step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    data = Path(args.data)
    tokenizer = load_tokenizer(args.teacher)
    teacher = load_model(args.teacher)
    torch.manual_seed(args.seed)
    student = build_model(args.student, tokenizer)
    train = SentencePairs(tokenizer, data / f"train.{args.src}", data / f"train.{args.tgt}")
    valid = SentencePairs(tokenizer, data / f"val.{args.src}", data / f"val.{args.tgt}")

    config = DistillationConfig(
        output_dir=args.out, method=args.method, max_steps=args.max_steps, seed=args.seed,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=args.warmup_steps, lr_scheduler_type="linear",
        adam_beta2=0.98, max_grad_norm=5.0, weight_decay=0.0,  # tiekd's defaults (fairseq's Transformer recipe)
        eval_strategy="steps", eval_steps=max(args.max_steps // 4, 1), save_steps=max(args.max_steps // 4, 1),
        save_total_limit=2, logging_steps=50, report_to=[],
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # fp32 on CPU: bf16 is slow there
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=train,
                                  eval_dataset=valid, processing_class=tokenizer,
                                  data_collator=DataCollatorForSeq2Seq(tokenizer, model=student))
    trainer.train()
    trainer.save_model(str(Path(args.out) / "student"))

    if trainer.is_world_process_zero():
        sources = (data / f"{args.test}.{args.src}").read_text(encoding="utf-8").splitlines()
        references = (data / f"{args.test}.{args.tgt}").read_text(encoding="utf-8").splitlines()
        hypotheses = translate(student.eval(), tokenizer, sources, trainer.args.device)
        bleu = sacrebleu.corpus_bleu(hypotheses, [references])
        chrf = sacrebleu.corpus_chrf(hypotheses, [references])
        print(f"{args.test}: BLEU {bleu.score:.2f}  chrF {chrf.score:.2f}  ({len(sources)} sentences, beam 4)")


@torch.inference_mode()
def translate(model, tokenizer, sources: list[str], device, batch: int = 64) -> list[str]:
    """Beam-4 translations, batch by batch."""
    out = []
    for start in range(0, len(sources), batch):
        encoded = tokenizer(sources[start:start + batch], return_tensors="pt", padding=True).to(device)
        generated = model.generate(**encoded, num_beams=4, max_new_tokens=256)
        out += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return out


if __name__ == "__main__":
    main()

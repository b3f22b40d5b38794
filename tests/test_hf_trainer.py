"""tiekd.hf: every distillation method inside Hugging Face's Seq2SeqTrainer, with tiekd's own loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiekd.errors import TiekdError

pytest.importorskip("accelerate")

SCRIPT = Path(__file__).resolve().parent / "hf_ddp_run.py"


@pytest.fixture(scope="module")
def tokenizer(prepared):
    from tiekd.data.tokenizer import load_tokenizer

    return load_tokenizer(prepared / "tokenizer")


@pytest.fixture(scope="module")
def pairs(prepared, tokenizer):
    from tiekd.hf import SentencePairs

    return SentencePairs(tokenizer, prepared / "valid.de", prepared / "valid.en")


def _student(tokenizer, seed=3):
    from tiekd.models import build_model

    torch.manual_seed(seed)
    return build_model("micro", tokenizer, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def _teacher(teacher_dir):
    from tiekd.models import load_model

    return load_model(teacher_dir)


def _config(out, **values):
    from tiekd.hf import DistillationConfig

    defaults = dict(output_dir=str(out), max_steps=2, per_device_train_batch_size=8, learning_rate=3e-3,
                    report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1)
    return DistillationConfig(**{**defaults, **values})


def _trainer(student, teacher, args, pairs, tokenizer, **kwargs):
    from transformers import DataCollatorForSeq2Seq

    from tiekd.hf import DistillationTrainer

    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=pairs,
                               data_collator=DataCollatorForSeq2Seq(tokenizer, model=student), **kwargs)


def _hf_batch(pairs, tokenizer, student, indices):
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, model=student)([pairs[i] for i in indices])


def test_hf_label_smoothing_is_refused_with_the_setting_to_use(tmp_path):
    with pytest.raises(TiekdError, match="label_smoothing_factor=0.1.*Fix: set label_smoothing"):
        _config(tmp_path, label_smoothing_factor=0.1)


@pytest.mark.parametrize("values, message", [({"method": "tie-kd", "topk": 0}, "topk"),
                                             ({"method": "word-kdd"}, "word-kd"),
                                             ({"method": "seq-kd"}, "distill-data")])
def test_bad_settings_fail_when_the_config_is_made(tmp_path, values, message):
    with pytest.raises(TiekdError, match=message):
        _config(tmp_path, **values)


def test_a_teacher_of_another_vocabulary_is_refused_naming_both_sizes(tmp_path, tokenizer, pairs):
    student, other = _student(tokenizer), _student(tokenizer)
    other.resize_token_embeddings(other.config.vocab_size + 8)
    sizes = f"{other.config.vocab_size:,}.*{student.config.vocab_size:,}"
    with pytest.raises(TiekdError, match=f"teacher's vocabulary has {sizes}"):
        _trainer(student, other, _config(tmp_path, method="word-kd"), pairs, tokenizer)


def test_deepspeed_and_a_missing_teacher_are_refused(tmp_path, tokenizer, pairs):
    with pytest.raises(TiekdError, match="needs a teacher"):
        _trainer(_student(tokenizer), None, _config(tmp_path, method="tie-kd"), pairs, tokenizer)
    args = _config(tmp_path, method="word-kd")
    args.deepspeed = "ds_config.json"  # set after construction: the check is the trainer's, DeepSpeed need not exist
    with pytest.raises(TiekdError, match="DeepSpeed and FSDP are not supported"):
        _trainer(_student(tokenizer), None, args, pairs, tokenizer)


@pytest.mark.parametrize("method, settings", [("word-kd", {}), ("tie-kd", {"topk": 3, "iterative_passes": 3}),
                                              ("jsd", {"jsd_beta": 0.3}),
                                              ("on-policy", {"on_policy_lambda": 1.0})])
def test_compute_loss_is_the_loss_tiekd_distill_optimises(tmp_path, teacher_dir, tokenizer, pairs, method, settings):
    """The same batch through DistillationTrainer.compute_loss and through the objective `tiekd distill` builds
    from its RunConfig (tiekd/training/trainer.py divides its sum by the update's target tokens)."""
    from tiekd.config import RunConfig
    from tiekd.data.batching import collate
    from tiekd.kd.objectives import DistillationObjective

    student, teacher = _student(tokenizer), _teacher(teacher_dir)
    trainer = _trainer(student, teacher, _config(tmp_path, method=method, **settings), pairs, tokenizer)
    indices = list(range(10, 22))
    hf = _hf_batch(pairs, tokenizer, student, indices)
    ours = collate(pairs.corpus, indices)
    assert torch.equal(hf["input_ids"], ours.input_ids)
    tokens = ours.num_target_tokens
    distill = DistillationObjective(student, RunConfig(data="d", out="o", method=method, teacher="t", **settings),
                                    teacher)
    student.eval()  # the objectives' own call would set nothing; same network for both
    torch.manual_seed(42)  # on-policy samples the student's output
    expected = distill(ours.input_ids, ours.attention_mask, ours.labels)[0] / tokens
    wrapped = trainer._wrap_model(trainer.model)
    torch.manual_seed(42)
    got = trainer.compute_loss(wrapped, hf, num_items_in_batch=torch.tensor(tokens))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)



def _trainable_methods():
    from tiekd.kd.methods import METHODS

    return [name for name, method in METHODS.items() if not method.teacher_targets]


@pytest.mark.parametrize("method", _trainable_methods())
def test_every_method_trains_and_leaves_the_teacher_alone(tmp_path, teacher_dir, tokenizer, pairs, method):
    student, teacher = _student(tokenizer), _teacher(teacher_dir)
    before = {name: value.clone() for name, value in student.state_dict().items()}
    teacher_before = [p.clone() for p in teacher.parameters()]
    trainer = _trainer(student, teacher, _config(tmp_path, method=method, gradient_accumulation_steps=2,
                                                 on_policy_lambda=1.0), pairs, tokenizer)
    trainer.train()
    losses = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in losses)
    assert ("kd" in losses[0]) == (method != "none")
    assert any(not torch.equal(before[name], value) for name, value in student.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters()))
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training


def test_an_accumulated_step_is_one_batch_over_all_its_target_tokens(tmp_path, teacher_dir, tokenizer, pairs):
    """Two micro-batches of different target-token counts: with SGD at lr 1 and no clipping, the step moves
    every parameter by minus the gradient of (sum of both batches' losses) / (all their target tokens)."""
    from torch.utils.data import Subset

    from tiekd.data.batching import collate
    from tiekd.kd.objectives import DistillationObjective

    teacher = _teacher(teacher_dir)
    subset = Subset(pairs, list(range(16)))
    student = _student(tokenizer)
    reference = _student(tokenizer)
    trainer = _trainer(student, teacher, _config(tmp_path, method="tie-kd", max_steps=1, gradient_accumulation_steps=2,
                                                 optim="sgd", learning_rate=1.0, lr_scheduler_type="constant",
                                                 max_grad_norm=0.0, weight_decay=0.0), subset, tokenizer)
    trainer.train()
    objective = DistillationObjective.for_method("tie-kd", reference, teacher)
    batches = [collate(pairs.corpus, list(range(8))), collate(pairs.corpus, list(range(8, 16)))]
    assert batches[0].num_target_tokens != batches[1].num_target_tokens
    total = sum(objective(b.input_ids, b.attention_mask, b.labels)[0] for b in batches)
    (total / sum(b.num_target_tokens for b in batches)).backward()
    moved = dict(student.named_parameters())
    for name, param in reference.named_parameters():
        expected = param if param.grad is None else param - param.grad  # e.g. sinusoidal positions: not trained
        assert torch.allclose(expected, moved[name], rtol=1e-4, atol=1e-6), name


def test_resume_goes_through_hfs_checkpoints(tmp_path, teacher_dir, tokenizer, pairs):
    """4 updates straight and 2 + resume from HF's checkpoint-2 end with the same student."""
    teacher = _teacher(teacher_dir)
    common = dict(method="tie-kd", max_steps=4, save_strategy="steps", save_steps=2, seed=9)
    straight = _student(tokenizer)
    _trainer(straight, teacher, _config(tmp_path / "a", **common), pairs, tokenizer).train()
    first = _student(tokenizer)
    _trainer(first, teacher, _config(tmp_path / "b", **common), pairs, tokenizer).train()
    resumed = _student(tokenizer, seed=99)  # other weights: the checkpoint must replace them
    _trainer(resumed, teacher, _config(tmp_path / "b", **common), pairs, tokenizer).train(
        resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def test_two_ddp_processes_train_like_one_with_the_same_global_batch(tmp_path, prepared, teacher_dir):
    """torchrun with 2 CPU processes (gloo): the objective, not the bare student, is what DDP wraps, and 3
    TIE-KD updates end where one process with 2 accumulation steps over the same batches ends."""
    from safetensors.torch import load_file

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    common = [str(prepared), str(teacher_dir)]
    two, one = tmp_path / "two", tmp_path / "one"
    for out in (two, one):
        out.mkdir()
    runs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(SCRIPT), *common, str(two), "1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True),
            subprocess.Popen([sys.executable, str(SCRIPT), *common, str(one), "2"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)]
    for run in runs:
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 0, output[-5000:]
    two_run, one_run = (json.loads((out / "run.json").read_text()) for out in (two, one))
    assert two_run["world_size"] == 2 and two_run["wrapped"] == "DistributedDataParallel"
    assert two_run["inner"] == one_run["wrapped"] == "DistillationObjective"
    assert two_run["losses"] == pytest.approx(one_run["losses"], rel=1e-4)
    a, b = load_file(two / "student.safetensors"), load_file(one / "student.safetensors")
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-5), name


def test_max_tokens_feeds_tiekds_batches_in_tiekds_epoch_order(tmp_path, teacher_dir, tokenizer, pairs):
    """DistillationConfig(max_tokens=N): the train loader yields make_batches' token-count batches in
    epoch_order(seed, epoch), the batches `tiekd distill --max-tokens N --seed S` trains on."""
    from tiekd.data.batching import collate, epoch_order, make_batches

    trainer = _trainer(_student(tokenizer), _teacher(teacher_dir),
                       _config(tmp_path, method="word-kd", max_tokens=600, seed=4), pairs, tokenizer)
    plan = make_batches(pairs.corpus, 600)
    loader = trainer.get_train_dataloader()
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        got = [batch["input_ids"] for batch in loader]
        expected = [collate(pairs.corpus, plan[k]).input_ids for k in epoch_order(len(plan), 4, epoch)]
        assert len(got) == len(expected) > 3
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_the_example_script_runs_as_written(tmp_path, multi30k, teacher_dir):
    """examples/hf_trainer_distill.py end to end on a Multi30k slice: 2 updates, the student saved as a model
    folder, the test pair scored."""
    from conftest import head

    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 200), ("val", 30), ("test_2016_flickr", 12)):
        for lang in ("de", "en"):
            (data / f"{split}.{lang}").write_text("\n".join(head(multi30k / f"{split}.{lang}", n)) + "\n",
                                                  encoding="utf-8")
    script = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer_distill.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), "--teacher", str(teacher_dir), "--data", str(data),
                           "--out", str(tmp_path / "out"), "--student", "micro", "--max-steps", "2",
                           "--batch-size", "16", "--warmup-steps", "1"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test_2016_flickr: BLEU" in done.stdout
    assert (tmp_path / "out" / "student" / "model.safetensors").is_file()

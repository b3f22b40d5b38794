"""The parts of a training run, each readable on its own; `tiekd/trainer.py` composes them.

    state.py          TrainingState: step, data position, best score, compute spent, the loss window
    devices.py        which device, and bf16 autocast where it pays
    build.py          student, teacher, optimizer, schedule, DDP/FSDP wrapping, from a RunConfig
    corpus.py         which files a run trains on (gold targets, or the teacher's: sequence-level KD)
    replica.py        the student as a plain model (an unsharded copy under FSDP)
    checkpointing.py  what a checkpoint holds, saving, and resuming from one
    validation.py     loss, perplexity and greedy BLEU on the validation split
    metrics.py        metrics.jsonl, tensorboard, the train record of a loss window
    signals.py        SIGTERM/SIGINT ask the run to stop after the current update
"""

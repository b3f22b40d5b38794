"""Training: the loop behind `tiekd train` and `tiekd distill` (trainer.py), the parts it composes, each
readable on its own, and what a run needs around them.

    trainer.py        the training loop; composes the parts below
    state.py          TrainingState: step, data position, best score, compute spent, the loss window
    devices.py        which device, and bf16 autocast where it pays
    build.py          student, teacher, optimizer, schedule, DDP/FSDP wrapping, from a RunConfig
    train_corpus.py   which files a run trains on (gold targets, or the teacher's: sequence-level KD)
    replica.py        the student as a plain model (an unsharded copy under FSDP)
    checkpointing.py  what a checkpoint holds, saving, and resuming from one
    validation.py     loss, perplexity and greedy BLEU on the validation split
    metrics.py        metrics.jsonl, tensorboard, the train record of a loss window
    signals.py        SIGTERM/SIGINT ask the run to stop after the current update

    schedule.py       learning-rate schedules: inverse-sqrt, linear, cosine
    distributed.py    torch.distributed set up from torchrun's environment
    fsdp.py           fully sharded students (PyTorch FSDP2)
    checkpoint.py     checkpoint folders written whole or not at all, verified on load
    runfolder.py      run folders: never mix runs; --resume picks up the saved configuration
    average.py        checkpoint averaging (`tiekd average`)
    malloc_tuning.py  glibc keeps freed memory in the process, so training does not page-fault it in
    process_exit.py   how a tiekd process ends (free of torch)
"""

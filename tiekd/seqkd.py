"""Sequence-level KD (Kim & Rush 2016): the teacher's beam translations replace the training targets.

The training sources are cut into fixed chunks; each chunk's translations go to their own file,
written atomically, so an interrupted run resumes at the first missing chunk. With several processes
(torchrun) rank r translates chunks r, r + W, ...; rank 0 then merges the chunks in order.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from .distributed import DistInfo, barrier
from .io import atomic_write_json, atomic_write_text, read_lines
from .translate import MAX_DECODE_LENGTH, DecodeOptions, translate_sentences

CHUNK = 1024


def teacher_targets(teacher, tokenizer, source_path: Path, work_dir: Path, beam: int = 4,
                    length_penalty: float = 0.6, dist: DistInfo = DistInfo(), quiet: bool = False,
                    chunk_size: int = CHUNK) -> Path:
    """Translate `source_path` with `teacher` into `work_dir/train.hyp` (resumable); return its path."""
    work_dir = Path(work_dir)
    merged = work_dir / "train.hyp"
    if merged.is_file():
        return merged
    chunks_dir = work_dir / "chunks"
    chunks_dir.mkdir(parents=True, exist_ok=True)
    sources = read_lines(source_path)
    n_chunks = (len(sources) + chunk_size - 1) // chunk_size
    mine = [c for c in range(n_chunks) if c % dist.world_size == dist.rank]
    todo = [c for c in mine if not (chunks_dir / f"{c:06d}.txt").is_file()]
    options = DecodeOptions(beam=beam, length_penalty=length_penalty, max_length=MAX_DECODE_LENGTH, batch_sentences=128,
                            progress=False)
    bar = tqdm(total=len(mine) * chunk_size, initial=(len(mine) - len(todo)) * chunk_size,
               desc="seq-kd: teacher translates", unit="sent", disable=quiet or not dist.is_main)
    for c in todo:
        part = sources[c * chunk_size:(c + 1) * chunk_size]
        hyps = translate_sentences(teacher, tokenizer, part, options)
        # an empty translation would become an empty target; keep the line count, mark it by eos only
        atomic_write_text(chunks_dir / f"{c:06d}.txt", "".join(h.replace("\n", " ") + "\n" for h in hyps))
        bar.update(len(part))
    bar.close()
    barrier(dist)
    if dist.is_main:
        text = "".join((chunks_dir / f"{c:06d}.txt").read_text(encoding="utf-8") for c in range(n_chunks))
        atomic_write_text(merged, text)
        atomic_write_json(work_dir / "info.json", {"source": str(source_path), "beam": beam,
                                                   "length_penalty": length_penalty, "sentences": len(sources)})
    barrier(dist)
    return merged

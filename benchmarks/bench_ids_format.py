"""tiekd's id files against Apache Arrow (Hugging Face `datasets`' format) for one prepared training split.

    python benchmarks/bench_ids_format.py --prepared DIR --work SCRATCH [--batches 200] [--ranks 2]

tiekd keeps a split's token ids as `.ids` (the ids one after the other) and `.idx` (offsets), read a
sentence at a time with positioned reads (tiekd/data/binarized.py). The alternative the data-scale
issue named is Arrow, memory-mapped, as `datasets` keeps a corpus: the same ids are written once as an
Arrow stream of two list<uint16> columns in 1,000-row record batches (`datasets`' default writer batch).
Each reader then runs in a fresh process, `--ranks` of them at once as torchrun ranks would (each its own
random batches of 128 sentences):
  - tiekd: `StoredIds` for both sides (header and sizes checked, lengths read), `[i]` per sentence;
  - arrow-datasets: `datasets.Dataset.from_file` (memory-mapped), numpy format, `ds[indices]`;
  - arrow-pyarrow: `pyarrow.memory_map` + the IPC reader, `table.take(indices)`, flattened to numpy.
Reported per reader, after its libraries are imported: seconds to open (lengths in hand) and the RSS that
added, milliseconds per batch, and RSS added and private memory (USS, /proc/self/smaps_rollup) after the
batches; for ranks, each rank's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

READER = r"""
import json, sys, time
import numpy as np
kind, text_src, text_tgt, arrow, batches, seed = sys.argv[1:7]
batches, seed = int(batches), int(seed)


def memory():
    fields = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields["Rss"] / 1e6, (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1e6


# the libraries first: the clock and the memory baseline start once they are loaded
if kind == "tiekd":
    from pathlib import Path
    from tiekd.data.binarized import StoredIds
elif kind == "arrow-datasets":
    import datasets
    import pyarrow.compute as pc
else:
    import pyarrow as pa
    import pyarrow.compute as pc
rss_loaded, uss_loaded = memory()
started = time.perf_counter()
if kind == "tiekd":
    sources, targets = StoredIds(Path(text_src)), StoredIds(Path(text_tgt))
    count, lengths = len(sources), (sources.lengths, targets.lengths)
    read = lambda ids: [(sources[i], targets[i]) for i in ids]
elif kind == "arrow-datasets":
    ds = datasets.Dataset.from_file(arrow).with_format("numpy")
    count = len(ds)
    lengths = tuple(pc.list_value_length(ds.data.column(c)).to_numpy() for c in ("source", "target"))
    read = lambda ids: (lambda rows: list(zip(rows["source"], rows["target"])))(ds[ids.tolist()])
else:
    table = pa.ipc.open_stream(pa.memory_map(arrow)).read_all()
    count = table.num_rows
    lengths = tuple(pc.list_value_length(table.column(c)).to_numpy() for c in ("source", "target"))

    def read(ids):
        part = table.take(pa.array(ids))
        src, tgt = part.column("source").combine_chunks(), part.column("target").combine_chunks()
        so, to = src.offsets.to_numpy(), tgt.offsets.to_numpy()
        sv, tv = src.values.to_numpy(), tgt.values.to_numpy()
        return [(sv[so[k]:so[k + 1]], tv[to[k]:to[k + 1]]) for k in range(len(ids))]
opened = time.perf_counter() - started
rss_open, uss_open = memory()
rng = np.random.default_rng(seed)
clock = time.perf_counter()
checksum = 0
for _ in range(batches):
    for s, t in read(rng.integers(0, count, 128)):
        checksum += int(s[0]) + int(t[-1])
per_batch = (time.perf_counter() - clock) / batches
rss, uss = memory()
print(json.dumps({"rss_loaded_mb": round(rss_loaded, 1), "open_s": round(opened, 3), "rss_open_mb": round(rss_open, 1),
                  "uss_open_mb": round(uss_open, 1),
                  "batch_ms": round(per_batch * 1000, 2), "rss_after_mb": round(rss, 1),
                  "uss_after_mb": round(uss, 1), "checksum": checksum}))
"""


def write_arrow(prepared: Path, names: tuple[str, str], out: Path) -> float:
    """The split's ids as an Arrow stream (columns source, target: list<uint16>), 1,000 rows a record batch."""
    import pyarrow as pa

    from tiekd.data.binarized import HEADER

    started = time.perf_counter()
    columns = []
    for name in names:
        index = prepared / f"{name}.idx"
        offsets = np.fromfile(index, dtype="<i8", offset=HEADER.size).astype(np.int32)  # < 2**31 ids a side here
        values = np.fromfile(prepared / f"{name}.ids", dtype="<u2")
        columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))
    table = pa.table({"source": columns[0], "target": columns[1]})
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1000):
            writer.write_batch(batch)
    return time.perf_counter() - started


def run_readers(kind: str, prepared: Path, names: tuple[str, str], arrow: Path, batches: int, ranks: int) -> list[dict]:
    """`ranks` readers of `kind` at once, each in a fresh process with its own random batches."""
    args = [kind, str(prepared / names[0]), str(prepared / names[1]), str(arrow), str(batches)]
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "PATH": "/usr/bin:/bin", "HF_DATASETS_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", READER, *args, str(rank)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in range(ranks)]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{kind} reader failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, required=True, help="a folder written by `tiekd prepare`")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the Arrow copy")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    meta = json.loads((args.prepared / "meta.json").read_text())
    names = (meta["splits"][args.split]["source"], meta["splits"][args.split]["target"])
    args.work.mkdir(parents=True, exist_ok=True)
    arrow = args.work / f"{args.split}.arrow"
    written = write_arrow(args.prepared, names, arrow)
    print(f"Arrow copy written in {written:.1f} s ({arrow.stat().st_size / 1e6:,.0f} MB; tiekd's files "
          f"{sum((args.prepared / f'{n}.{s}').stat().st_size for n in names for s in ('ids', 'idx')) / 1e6:,.0f} MB)")
    results = {"pairs": meta["splits"][args.split]["pairs"], "arrow_written_s": round(written, 1), "readers": {}}
    for kind in ("tiekd", "arrow-datasets", "arrow-pyarrow"):
        for ranks in sorted({1, args.ranks}):
            runs = run_readers(kind, args.prepared, names, arrow, args.batches, ranks)
            results["readers"][f"{kind} x{ranks}"] = runs
            print(f"{kind:>15} x{ranks}: " + "; ".join(
                f"open {r['open_s']} s, RSS +{r['rss_open_mb'] - r['rss_loaded_mb']:.1f} MB, {r['batch_ms']} ms a "
                f"batch, then RSS +{r['rss_after_mb'] - r['rss_loaded_mb']:.1f} MB, USS {r['uss_after_mb']} MB"
                for r in runs), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

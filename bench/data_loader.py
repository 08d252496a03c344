"""Images per second of ShardLoader vs torchvision's MNIST DataLoader (and the in-memory ArrayLoader)
with the same batch size and workers, on this machine. Times whole epochs, worker start-up included;
each figure is the median of ``--repeats`` epochs, the loaders taking turns so drift hits all alike.

ShardLoader is timed twice over the same shards: with its own tar reader (gen_dist.data.tar_reader)
and with webdataset's tar iteration (``tar_file_expander`` + ``group_by_keys``, i.e. Python's
tarfile) plugged into the same loader, which is why the loader keeps its own reader.

    OMP_NUM_THREADS=1 python bench/data_loader.py --root ../shared/data [--shards DIR] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from unittest import mock

import torch


def wds_tar_samples(url: str, lo: int, hi: int):
    """Drop-in for ``tar_reader.tar_samples`` built on webdataset's own tar iteration: (index, key,
    fields) of samples lo..hi-1; members outside the range are not extracted; errors re-raised."""
    from webdataset import tariterators as ti
    from webdataset.gopen import gopen

    errors, state = [], {"key": None, "index": -1}

    def handler(exn):
        errors.append(exn)
        return False  # stop: the rest of the shard is unreadable

    def select(fname):  # called before a member's data is read
        prefix, _ = ti.base_plus_ext(fname)
        if prefix is None:
            return False
        if prefix != state["key"]:
            state["key"], state["index"] = prefix, state["index"] + 1
        return lo <= state["index"] <= hi  # sample hi's first member closes sample hi - 1

    stream = gopen(url, "rb")
    try:
        files = ti.tar_file_expander([dict(url=url, stream=stream)], handler=handler, select_files=select,
                                     eof_value=None)
        for index, sample in enumerate(ti.group_by_keys(files, handler=handler), start=lo):
            if index >= hi:
                return
            key = sample.pop("__key__")
            sample.pop("__url__", None)
            yield index, key, sample
        if errors:
            raise errors[0]
    finally:
        try:
            stream.close()
        except Exception:
            pass


def epoch_rate(loader) -> float:
    """Images/s of one pass over ``loader``."""
    n, t0 = 0, time.perf_counter()
    for x, _ in loader:
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=os.environ.get("GEN_DIST_DATA", "../shared/data"))
    p.add_argument("--shards", default="", help="MNIST train shards (default: written to a temp folder)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=3, help="epochs timed per loader; the median is reported")
    args = p.parse_args()
    torch.set_num_threads(1)
    # The webdataset reader is patched into the loader's module: workers must inherit it (fork).
    assert multiprocessing.get_start_method() == "fork", "run on Linux with the fork start method"

    import torchvision
    import torchvision.transforms.v2 as T

    from gen_dist.data import shards as shards_module
    from gen_dist.data import tar_reader
    from gen_dist.data.arrays import ArrayLoader
    from gen_dist.data.datasets import load_arrays, load_source
    from gen_dist.data.shard_writer import write_shards
    from gen_dist.data.shards import ShardLoader, resolve_shards

    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if not shards:
            t0 = time.perf_counter()
            shards = os.path.join(tmp, "mnist-train")
            write_shards(load_source("mnist", "train", args.root), shards, samples_per_shard=10000, progress=False)
            print(f"make shards (MNIST train, 6 x 10k, npy): {time.perf_counter() - t0:.1f} s")
        ds = torchvision.datasets.MNIST(args.root, train=True, download=False, transform=T.PILToTensor())
        images, labels, _ = load_arrays("mnist", args.root, True, False)

        first = resolve_shards(shards, count=False).shards[0].url  # (b) reads what (a) reads
        assert list(wds_tar_samples(first, 3, 40)) == list(tar_reader.tar_samples(first, 3, 40))
        table = {}
        for workers in args.workers:
            shard_loader = ShardLoader(shards, batch_size=args.batch_size, rank=0, world_size=1, num_workers=workers)
            tv = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                             num_workers=workers)
            arrays = ArrayLoader(images, labels, args.batch_size)

            def wds_epoch():
                with mock.patch.object(shards_module, "tar_samples", wds_tar_samples):
                    return epoch_rate(shard_loader)

            runs = {
                "(a) ShardLoader, own tar reader": lambda: epoch_rate(shard_loader),
                "(b) ShardLoader, webdataset tar iteration": wds_epoch,
                "(c) torchvision MNIST DataLoader": lambda: epoch_rate(tv),
                "    ArrayLoader (in memory, no workers)": lambda: epoch_rate(arrays),
            }
            rates = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, run in runs.items():
                    rates[name].append(run())
            table[workers] = {name: statistics.median(r) for name, r in rates.items()}

    print(f"batch {args.batch_size}, median of {args.repeats} epochs (60k images), {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    tv_name = "(c) torchvision MNIST DataLoader"
    for workers, rows in table.items():
        print(f"num_workers={workers}")
        for name, r in rows.items():
            print(f"  {name:45s} {r:10,.0f} images/s  {r / rows[tv_name]:5.2f}x torchvision")


if __name__ == "__main__":
    main()

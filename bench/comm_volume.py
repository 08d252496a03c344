"""Bytes each GPU exchanges per training step under DDP and ZeRO 1/2/3, for the shipped models, and a
paper estimate of scaling efficiency at 8 and 64 GPUs (docs/scaling.md explains the model).

Parameter counts come from the real models built from configs/*.yaml (``gen_dist.models``). Per
training step a model's phase moves, per GPU, with Psi its parameter count and N GPUs:

  DDP        ring all-reduce of the gradients: 2 (N-1)/N Psi elements (fp32 gradients: 4 bytes each)
  ZeRO-1/2   reduce-scatter of the gradients + all-gather of the updated parameters: the same 2 (N-1)/N Psi
  ZeRO-3     parameters all-gathered for the forward and again for the backward, gradients
             reduce-scattered: 3 (N-1)/N Psi, 1.5x DDP (Rajbhandari et al. 2020, ZeRO, sec. 7.2)

A GAN step is n_critic D phases then a G phase, each with its own collective; under ZeRO-3 every
phase also gathers the other model's parameters where it runs it (D's step runs G's forward, G's step
runs D's forward and backward). ZeRO traffic is in the training dtype (2 bytes under bf16).

The compute side is measured, not assumed: ``--flops`` runs one real ``Trainer.train_step`` per model
counting its aten operators (roughly GPU kernels) and their FLOPs with torch's formulas.

    python bench/comm_volume.py                # every shipped architecture, with FLOPs of one step
    python bench/comm_volume.py --no-flops     # parameter counts and bytes only (no data needed)
    python bench/comm_volume.py --quick        # three configs, parameter counts only (smoke test)

stdout: one JSON object per config; stderr: the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# interconnect model (docs/scaling.md): (bus bandwidth per GPU in bytes/s, latency per collective step in s)
NVLINK = (300e9, 10e-6)  # 8 GPUs in one node (NVLink/NVSwitch; H100 NVLink4 is up to 900 GB/s)
INFINIBAND = (25e9, 20e-6)  # across nodes: 200 Gb/s per GPU (100-400 Gb/s NICs)
LAUNCH_S = 6e-6  # host cost per eager PyTorch operator: the floor of a small model's GPU step


def architectures() -> list[str]:
    """One config per distinct model (the *_fashion_mnist twins train the same networks)."""
    names = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    return [n for n in names if not n.startswith("ablation_") and "fashion" not in n and "dsprites" not in n]


def param_counts(config: str) -> dict:
    from gen_dist.config import load_config
    from gen_dist.models import build_models

    cfg = load_config(str(REPO / "configs" / f"{config}.yaml"), [], training=False)
    channels = 3 if cfg.data.dataset == "cifar10" else 1
    models = build_models(cfg.model, channels, cfg.data.image_size, 10, cfg.remedies)

    def count(model) -> int:
        return 0 if model is None else sum(p.numel() for p in model.parameters())

    return {"cfg": cfg, "p_g": count(models.generator), "p_d": count(models.discriminator)}


def elements_per_step(kind: str, p_g: int, p_d: int, n_critic: int) -> dict:
    """Elements moved per GPU per step, before the (N-1)/N factor: (DDP, ZeRO-1/2, ZeRO-3, collectives)."""
    if kind == "vae":
        return {"ddp": 2 * p_g, "zero12": 2 * p_g, "zero3": 3 * p_g, "collectives": 1}
    ddp = 2 * (n_critic * p_d + p_g)
    # ZeRO-3: D phase = D gathered fwd+bwd, grads reduce-scattered + G gathered for its forward;
    #         G phase = G gathered fwd+bwd, grads reduce-scattered + D gathered for fwd+bwd (frozen)
    zero3 = n_critic * (3 * p_d + p_g) + 3 * p_g + 2 * p_d
    return {"ddp": ddp, "zero12": ddp, "zero3": zero3, "collectives": n_critic + 1}


def measure_step(config: str) -> dict:
    """FLOPs and aten operator count of one real training step (1 process, the config's batch)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    from train_step import build_trainer, feed, fixed_batches

    class Count(TorchDispatchMode):
        """Operators and their FLOPs (torch's formulas). FlopCounterMode itself hooks modules, which
        the gradient penalty's autograd.grad does not allow."""

        def __init__(self):
            super().__init__()
            self.ops, self.flops = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            self.ops += 1
            if func.overloadpacket in flop_registry:
                self.flops += flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
            return out

    with tempfile.TemporaryDirectory(prefix="bench_comm_") as run:
        trainer = build_trainer(config, ["speed.fused_adam=true"], run)  # as on a GPU (auto): a fused Adam
        feed(trainer, fixed_batches(trainer, 1))
        trainer.train_step()  # Adam's state exists from here on, as in every later step
        with Count() as count:
            trainer.train_step()
        trainer.tracker.finish()
    return {"gflop_step": round(count.flops / 1e9, 2), "ops_step": count.ops}


def allreduce_s(elements: float, n: int, bytes_per: int, link: tuple) -> float:
    """Ring bandwidth term + a tree-like latency term (NCCL picks trees for small messages)."""
    bandwidth, latency = link
    return 2 * math.ceil(math.log2(n)) * latency + 2 * (n - 1) / n * elements * bytes_per / bandwidth


def scaling_rows(row: dict, peak_flops: float, utilisation: float) -> list[dict]:
    """Estimated efficiency = compute / (compute + exposed communication), no overlap (a lower bound)."""
    out = []
    if row.get("gflop_step") is None:
        return out
    compute = max(row["gflop_step"] * 1e9 / (peak_flops * utilisation), row["ops_step"] * LAUNCH_S)
    for n, link in ((8, NVLINK), (64, INFINIBAND)):
        # DDP: one all-reduce per phase (these models fit in one 25 MB bucket), fp32 gradients
        per_phase = [row["p_d"]] * row["n_critic"] + [row["p_g"]] if row["kind"] != "vae" else [row["p_g"]]
        comm = sum(allreduce_s(p, n, 4, link) for p in per_phase)
        out.append({"config": row["config"], "gpus": n, "compute_ms": round(1e3 * compute, 3),
                    "comm_ms": round(1e3 * comm, 3), "efficiency": round(compute / (compute + comm), 3),
                    "comm_bandwidth_part": round(sum(2 * (n - 1) / n * p * 4 / link[0] for p in per_phase) / comm, 3)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=None)
    parser.add_argument("--no-flops", dest="flops", action="store_false", help="skip the measured step")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--utilisation", type=float, default=0.3, help="fraction of the peak a step reaches")
    parser.add_argument("--quick", action="store_true", help="three configs, no FLOPs")
    args = parser.parse_args()
    from train_step import json_stdout, prepare_env

    prepare_env("cpu")
    out = json_stdout()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    configs = args.configs or (["vae_mnist", "dcgan_mnist", "vaegan_mnist"] if args.quick else architectures())
    rows, scaling = [], []
    for config in configs:
        counts = param_counts(config)
        cfg = counts["cfg"]
        n_critic = cfg.train.n_critic
        el = elements_per_step(cfg.model.kind, counts["p_g"], counts["p_d"], n_critic)
        row = {"config": config, "kind": cfg.model.kind, "batch": cfg.train.batch_size, "n_critic": n_critic,
               "p_g": counts["p_g"], "p_d": counts["p_d"], "params_m": round((counts["p_g"] + counts["p_d"]) / 1e6, 3),
               "collectives_per_step": el["collectives"],
               # MB per GPU per step in the large-N limit ((N-1)/N -> 1); fp32 DDP, fp32 and bf16 ZeRO
               "ddp_mb": round(el["ddp"] * 4 / 2**20, 2), "zero12_mb": round(el["zero12"] * 4 / 2**20, 2),
               "zero3_mb": round(el["zero3"] * 4 / 2**20, 2), "zero3_bf16_mb": round(el["zero3"] * 2 / 2**20, 2),
               "zero3_over_ddp": round(el["zero3"] / el["ddp"], 3)}
        if args.flops and not args.quick and cfg.data.dataset != "cifar10":  # CIFAR-10 is not on this machine
            row.update(measure_step(config))
        print(json.dumps(row), file=out, flush=True)
        rows.append(row)
        scaling += scaling_rows(row, args.peak_tflops * 1e12, args.utilisation)
    for s in scaling:
        print(json.dumps({"scaling": s}), file=out, flush=True)
    err = sys.stderr
    print(f"\n{'config':22} {'kind':6} {'params M':>9} {'colls':>5} {'DDP MB':>8} {'ZeRO-1/2 MB':>11} "
          f"{'ZeRO-3 MB':>10} {'Z3 bf16 MB':>10} {'Z3/DDP':>7} {'GFLOP':>8} {'ops':>6}", file=err)
    for r in rows:
        print(f"{r['config']:22} {r['kind']:6} {r['params_m']:>9} {r['collectives_per_step']:>5} {r['ddp_mb']:>8} "
              f"{r['zero12_mb']:>11} {r['zero3_mb']:>10} {r['zero3_bf16_mb']:>10} {r['zero3_over_ddp']:>7} "
              f"{r.get('gflop_step', '-'):>8} {r.get('ops_step', '-'):>6}", file=err)
    if scaling:
        print(f"\n{'config':22} {'GPUs':>4} {'compute ms':>10} {'comm ms':>8} {'efficiency':>10} {'bw part':>8}",
              file=err)
        for s in scaling:
            print(f"{s['config']:22} {s['gpus']:>4} {s['compute_ms']:>10} {s['comm_ms']:>8} {s['efficiency']:>10} "
                  f"{s['comm_bandwidth_part']:>8}", file=err)


if __name__ == "__main__":
    main()

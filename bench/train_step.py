"""Images/s of gen_dist's training step against a plain PyTorch loop: the same model, the same batches,
in the same process, the two taking turns.

gen_dist's step is the real ``Trainer.train_step`` of a Trainer built in this process (1 process,
configs/<model>.yaml); its data source is replaced by the same in-memory batches the plain loop
reads, so data loading is out of both figures (bench/end_to_end.py measures it). The plain loops are
the seed's (/work/shared/seed: the VAE loop and the DCGAN loop; the VAE-GAN written the same way),
doing the same work as gen_dist's steps so that the difference is the framework alone: the same
model objects' initial weights, D's logits scored with BCE-with-logits (the seed's Sigmoid + BCELoss,
as gen_dist computes it), D's fake batch made without a graph, D frozen during G's step (gen_dist does
all of these). ``--seed-loop`` adds the seed's loops verbatim (fake with a graph, D not frozen,
fp32 always): the baseline of the GPU goal, gen_dist (bf16, fast paths) >= 2.5x the seed's DCGAN-64.

Each repeat times ``--steps`` steps (default: about ``--run-s`` seconds) of each loop after warm-up;
the order alternates, and the overhead is the median over repeats of (gen_dist time / plain time) - 1,
paired so drift hits both. On CPU the clock is this process's CPU time (other sessions' load on a
shared machine steals wall time, not CPU time); on CUDA it is the wall clock after a synchronize.

    OMP_NUM_THREADS=1 python bench/train_step.py                  # CPU, 1 thread, every model
    python bench/train_step.py --device cuda --bf16 --seed-loop    # on a GPU: fast paths on (auto)
    python bench/train_step.py --quick                             # tiny models, seconds (the smoke test)

stdout: one JSON object per model ({"model", "gen_dist_img_s", "plain_img_s", "overhead", ...});
stderr: a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (config, extra overrides): the seed's MLP VAE, the seed's DCGAN at 32 and 64 px, the VAE-GAN
MODELS = {
    "vae_mlp": ("vae_mnist", []),
    "dcgan32": ("dcgan32_mnist", []),
    "dcgan64": ("dcgan_mnist", []),
    "vaegan": ("vaegan_mnist", []),
}
QUICK = ["model.g_width=8", "model.d_width=8", "model.hidden_dim=32"]


def prepare_env(device: str) -> None:
    """Before torch / Accelerate start: pick the device and keep W&B and the launcher out of it."""
    os.environ["WANDB_MODE"] = "disabled"
    os.environ.setdefault("GEN_DIST_DATA", str(REPO.parent / "shared" / "data"))  # data.root's default
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):  # one process, whatever the caller's environment
        os.environ.pop(var, None)


def json_stdout():
    """stdout for the JSON lines only: everything else written to file descriptor 1 (DeepSpeed's
    import-time logger, library warnings) goes to stderr, so each stdout line parses as JSON."""
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return out


def build_trainer(config: str, overrides: list[str], run_dir: str):
    """A real Trainer on 1 process, reading the in-memory arrays (no shard conversion), no W&B."""
    from gen_dist.config import load_config
    from gen_dist.training.trainer import Trainer

    cfg = load_config(str(REPO / "configs" / f"{config}.yaml"), [
        f"run.dir={run_dir}", "train.max_steps=1000000", "train.resume=none", "tracking.wandb=false",
        "train.progress_bar=false", "eval.sample_quality=false", "eval.mode_coverage=false", "eval.limit=64",
        "data.num_workers=0", "data.shards=null", "data.test_shards=null", *overrides])
    return Trainer(cfg)


def fixed_batches(trainer, n: int) -> list:
    """n batches from the trainer's own loader, converted as its step converts them, kept in memory."""
    return [trainer.next_batch() for _ in range(n)]


def feed(trainer, batches: list) -> None:
    """The trainer's step reads these batches in turn instead of its loader (data loading excluded)."""
    cycle = itertools.cycle(batches)
    trainer.next_batch = lambda: next(cycle)


# --- the plain loops -----------------------------------------------------------------------------
def plain_vae(model, cfg, device, bf16: bool):
    """The seed's VAE loop: BCE summed over pixels and batch + KL, loss.item() every step."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.g.lr, betas=tuple(cfg.optim.g.betas))

    def step(x):
        opt.zero_grad()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            recon, mu, logvar = model(x)
        bce = F.binary_cross_entropy(recon.float().flatten(1), x.flatten(1), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar.float() - mu.float().pow(2) - logvar.float().exp())
        loss = bce + kld
        loss.backward()
        step.total += loss.item()
        opt.step()

    step.total = 0.0
    return step


def _set_grad(module, on: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(on)


def plain_gan(G, D, cfg, device, bf16: bool, seed_exact: bool = False):
    """The seed's DCGAN loop. seed_exact: verbatim (D's fake made with a graph, D not frozen during G's
    step); otherwise the same work as gen_dist's step."""
    import torch
    import torch.nn.functional as F

    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.optim.g.lr, betas=tuple(cfg.optim.g.betas))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.d.lr, betas=tuple(cfg.optim.d.betas))
    latent = cfg.model.latent_dim
    bce = F.binary_cross_entropy_with_logits

    def step(real):
        b = real.shape[0]
        opt_d.zero_grad()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            out = D(real).float()
            loss_real = bce(out, torch.full((b,), 1.0, device=device))
            z = torch.randn(b, latent, device=device)
            if seed_exact:
                fake = G(z).detach()
            else:
                with torch.no_grad():
                    fake = G(z)
            loss_fake = bce(D(fake).float(), torch.full((b,), 0.0, device=device))
            loss_d = loss_real + loss_fake
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        if not seed_exact:
            _set_grad(D, False)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            fake = G(torch.randn(b, latent, device=device))
            loss_g = bce(D(fake).float(), torch.full((b,), 1.0, device=device))
        loss_g.backward()
        if not seed_exact:
            _set_grad(D, True)
        opt_g.step()

    return step


def plain_vaegan(vae, D, cfg, device, bf16: bool):
    """The VAE-GAN step written as a plain loop: D on real vs reconstructed, then the encoder+decoder
    on (1 - lambda) * reconstruction + beta * KL + lambda * adversarial, per pixel."""
    import torch
    import torch.nn.functional as F

    opt_g = torch.optim.Adam(vae.parameters(), lr=cfg.optim.g.lr, betas=tuple(cfg.optim.g.betas))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.d.lr, betas=tuple(cfg.optim.d.betas))
    lam, beta = cfg.loss.adv_lambda, cfg.loss.beta

    def step(x):
        pixels = x[0].numel()
        opt_d.zero_grad()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                recon, _, _ = vae(x)
            loss_d = F.softplus(-D(x).float()).mean() + F.softplus(D(recon).float()).mean()
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        _set_grad(D, False)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            recon, mu, logvar = vae(x)
            rec = F.binary_cross_entropy(recon.float(), x, reduction="none").flatten(1).sum(1) / pixels
            kl = (-0.5 * (1 + logvar.float() - mu.float().pow(2) - logvar.float().exp())).sum(1) / pixels
            adv = F.softplus(-D(recon).float()).mean()
            loss = ((1 - lam) * rec + beta * kl).mean() + lam * adv
        loss.backward()
        _set_grad(D, True)
        opt_g.step()

    return step


def plain_models(trainer, channels: int):
    """Plain copies of the trainer's models as they are now (before any step): built afresh, so none
    of gen_dist's fast paths (channels_last, compile) carries over, with the trainer's weights."""
    from gen_dist.models import build_models

    e, cfg = trainer.engine, trainer.cfg
    models = build_models(cfg.model, channels, cfg.data.image_size, trainer.num_classes, cfg.remedies)
    out = []
    for plain, prepared in ((models.generator, trainer.G), (models.discriminator, trainer.D)):
        if plain is not None:
            plain.load_state_dict(e.unwrap(prepared).state_dict())
            plain.to(e.device)
        out.append(plain)
    return out


def plain_step(trainer, channels: int, bf16: bool, seed_exact: bool = False):
    """A plain loop over fresh copies of the trainer's models."""
    e, cfg = trainer.engine, trainer.cfg
    G, D = plain_models(trainer, channels)
    if cfg.model.kind == "vae":
        fn = plain_vae(G, cfg, e.device, bf16)
    elif cfg.model.kind == "gan":
        fn = plain_gan(G, D, cfg, e.device, bf16 and not seed_exact, seed_exact)
    else:
        fn = plain_vaegan(G, D, cfg, e.device, bf16)
    return lambda batch: fn(batch[0])


# --- timing --------------------------------------------------------------------------------------
def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(run_steps, steps: int, device, clock: str = "wall") -> float:
    """Seconds for ``steps`` steps. The ``cpu`` clock (this process's CPU time) is for a shared CPU
    machine: time stolen by other processes' work is not counted, which the wall clock would count."""
    now = CLOCK[clock]
    sync(device)
    t0 = now()
    run_steps(steps)
    sync(device)
    return now() - t0


def bench_model(name: str, args, run_dir: str) -> dict:
    import torch

    config, extra = MODELS[name]
    overrides = list(extra) + (QUICK if args.quick else [])
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    if args.bf16:
        overrides.append("train.mixed_precision=bf16")
    overrides += args.set
    trainer = build_trainer(config, overrides, run_dir)
    device = trainer.engine.device
    batches = fixed_batches(trainer, 4)
    channels = batches[0][0].shape[1]
    loops = {"gen_dist": None, "plain": plain_step(trainer, channels, args.bf16)}
    if args.seed_loop and trainer.cfg.model.kind == "gan":
        loops["seed"] = plain_step(trainer, channels, False, seed_exact=True)
    feed(trainer, batches)

    def gen_dist_steps(n):
        for _ in range(n):
            trainer.train_step()
            trainer.step += 1

    def plain_steps(fn):
        def run(n):
            for i in range(n):
                fn(batches[i % len(batches)])
        return run

    runners = {k: gen_dist_steps if fn is None else plain_steps(fn) for k, fn in loops.items()}
    clock = args.clock if args.clock != "auto" else ("cpu" if device.type == "cpu" else "wall")
    # warm-up (allocator, cuDNN autotuning, compilation), which also sizes the timed runs (~run_s each)
    warm = [timed(run, args.warmup, device, clock) / args.warmup for run in runners.values()]
    steps = args.steps or max(1, round(args.run_s / min(warm)))
    times: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for r in range(args.repeats):
        for k in (order if r % 2 == 0 else order[::-1]):
            times[k].append(timed(runners[k], steps, device, clock))
    images = steps * batches[0][0].shape[0]  # one batch per step (n_critic = 1 in these configs)
    ratios = [g / p for g, p in zip(times["gen_dist"], times["plain"])]
    row = {"model": name, "config": config, "device": device.type, "threads": torch.get_num_threads(),
           "batch": batches[0][0].shape[0], "precision": "bf16" if args.bf16 else "fp32",
           "gen_dist_img_s": round(images / statistics.median(times["gen_dist"]), 1),
           "plain_img_s": round(images / statistics.median(times["plain"]), 1),
           "overhead": round(statistics.median(ratios) - 1, 4),
           "overhead_range": [round(min(ratios) - 1, 4), round(max(ratios) - 1, 4)],
           "overhead_best": round(min(times["gen_dist"]) / min(times["plain"]) - 1, 4), "clock": clock,
           "step_ms": round(1000 * statistics.median(times["gen_dist"]) / steps, 2),
           "repeats": args.repeats, "steps": steps, "fast_paths": trainer.fast.on()}
    if device.type == "cuda":  # every loop of this model in this process: the largest of them
        row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if "seed" in times:
        row["seed_img_s"] = round(images / statistics.median(times["seed"]), 1)
        row["speedup_vs_seed"] = round(statistics.median(times["seed"]) / statistics.median(times["gen_dist"]), 3)
    trainer.tracker.finish()
    return row


def print_table(rows: list[dict]) -> None:
    out = sys.stderr
    print(f"\n{'model':9} {'dev':>4} {'prec':>5} {'batch':>5} {'gen_dist img/s':>15} {'plain img/s':>12} "
          f"{'overhead':>9} {'range':>17} {'seed img/s':>11} {'vs seed':>8}", file=out)
    for r in rows:
        lo, hi = r["overhead_range"]
        print(f"{r['model']:9} {r['device']:>4} {r['precision']:>5} {r['batch']:>5} {r['gen_dist_img_s']:>15} "
              f"{r['plain_img_s']:>12} {100 * r['overhead']:>8.1f}% {f'{100 * lo:.1f}..{100 * hi:.1f}%':>17} "
              f"{r.get('seed_img_s', '-'):>11} {r.get('speedup_vs_seed', '-'):>8}", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="train.mixed_precision=bf16 (plain: autocast bf16)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: stable figures)")
    parser.add_argument("--batch", type=int, default=0, help="per-step batch (0: the config's, 128)")
    parser.add_argument("--steps", type=int, default=0, help="steps per timed run (0: enough for --run-s)")
    parser.add_argument("--run-s", type=float, default=0.3, help="seconds per timed run when --steps is 0")
    parser.add_argument("--repeats", type=int, default=21, help="timed runs of each loop (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--clock", default="auto", choices=["auto", "cpu", "wall"],
                        help="auto: process CPU time on CPU (robust to other processes' load), wall time on CUDA")
    parser.add_argument("--seed-loop", action="store_true", help="also time the seed's DCGAN loop verbatim")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (speed.*, ...)")
    parser.add_argument("--quick", action="store_true", help="tiny widths, batch 16, 2 steps x 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.repeats, args.warmup = args.batch or 16, 2, 2, 1
    prepare_env(args.device)
    out = json_stdout()
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        for name in args.models:
            row = bench_model(name, args, str(Path(tmp) / name))
            print(json.dumps(row), file=out, flush=True)
            rows.append(row)
    print_table(rows)


if __name__ == "__main__":
    main()

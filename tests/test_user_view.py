"""The run as its user sees it: progress through evaluation, an ETA that leaves evaluations out, grids a
person can look at, W&B model artifacts, the end-of-run block and launch/plot.py."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PYTHON, REPO, TINY, WANDB_ON, run_env, train
from wandb_reader import records

# a VAE-GAN run whose one evaluation (FID/KID/PR on 96 images, test metrics, mode coverage) takes
# seconds while a training step takes milliseconds: an ETA that counted it would grow a hundredfold
STEPS, EVAL_AT = 40, 20
ARGS = ["--config", "configs/vaegan_mnist.yaml", *TINY, *WANDB_ON, "loss.disc_start=0", f"train.max_steps={STEPS}",
        f"eval.every={EVAL_AT}", f"train.sample_every={EVAL_AT}", f"train.checkpoint_every={EVAL_AT}",
        "train.log_every=5", "eval.sample_quality=true", "eval.num_samples=96", "eval.limit=96",
        "eval.batch_size=48", "eval.kid_subsets=2", "eval.kid_subset_size=48", "eval.pr_k=3",
        "eval.coverage_samples=96"]
STAGES = ["VAE test metrics", "Inception: real images", "Inception: generated samples", "KID, precision/recall",
          "mode coverage: samples"]


@pytest.fixture(scope="module")
def shown_run(data_root, tmp_path_factory):
    """One run with the bars forced on (no terminal here) and W&B offline."""
    tmp = tmp_path_factory.mktemp("shown")
    env = run_env(data_root, GEN_DIST_PROGRESS="bar")
    proc = train(data_root, 1, *ARGS, f"run.dir={tmp / 'run'}", f"eval.stats_cache={tmp / 'stats'}", env=env)
    return tmp / "run", proc


def _bar_states(stderr: str, desc: str) -> list[tuple[int, float]]:
    """(n, seconds per step) of every drawn state of the bar called ``desc``."""
    states = []
    for piece in re.split(r"[\r\n]", stderr):
        m = re.search(re.escape(desc) + r":\s+\d+%\|.*?\| (\d+)/\d+ \[[^<]*<[^,]*,\s*([\d.]+)(s/step|step/s)", piece)
        if m:
            rate = float(m.group(2))
            states.append((int(m.group(1)), rate if m.group(3) == "s/step" else 1.0 / rate))
    return states


def test_evaluation_shows_its_stages_and_the_eta_leaves_it_out(shown_run):
    run, proc = shown_run
    err = proc.stderr
    for stage in STAGES:
        assert re.search(re.escape(stage) + r":\s+\d+%\|", err) or stage + ": " in err, f"no bar for {stage}:\n{err[-3000:]}"
    assert re.search(r"Inception: generated samples: 100%\|.*\| 96/96", err), err[-3000:]
    states = _bar_states(err, f"vaegan {run.name}")
    before = [s for s in states if 0 < s[0] <= EVAL_AT]
    after = [s for s in states if s[0] > EVAL_AT]
    assert before and after, f"the training bar was not drawn around the evaluation:\n{err[-3000:]}"
    n0, spb0 = before[-1]  # the last state drawn before the evaluation
    n1, spb1 = after[0]  # the first after it
    eta_before, eta_after = (STEPS - n0) * spb0, (STEPS - n1) * spb1
    eval_s = float(re.search(r"evaluation (\d+):(\d+)", proc.stdout).group(2))
    assert eta_after <= 2 * eta_before + 0.05, (eta_before, eta_after, eval_s)
    # the bar names the evaluations still to come and the last one's measured time
    assert re.search(r"evals left=1 x \d+:\d\d", err) and re.search(r"evals left=0 x", err), err[-2000:]


def test_grids_are_large_and_captioned(shown_run):
    run, _ = shown_run
    samples, recon = run / "samples" / f"step_{STEPS:09d}.png", run / "samples" / f"recon_step_{STEPS:09d}.png"
    for path, tiles_per_row, rows in ((samples, 8, 8), (recon, 8, 2)):
        image = Image.open(path)
        caption = image.text["caption"]
        assert f"{run.name} | step {STEPS} | {STEPS * 16:,} images seen" in caption, caption
        assert re.search(r"FID \d+\.\d \| test loss \d+\.\d nats", caption), caption
        pixels = np.asarray(image.convert("RGB"))
        grid_w = tiles_per_row * 30 + 2  # 28 px tiles, torchvision's 2-pixel padding
        scale = -(-512 // grid_w)
        assert pixels.shape[1] == grid_w * scale >= 512
        strip = pixels.shape[0] - (rows * 30 + 2) * scale
        assert 20 <= strip <= 80, pixels.shape  # two caption lines over the grid
        assert pixels[:strip].std() > 10, "the caption strip is blank"
        assert pixels[strip:].std() > 10, "the grid is constant"
        # nearest-neighbour enlargement: each source pixel is a scale x scale block of one value
        block = pixels[strip + 2 * scale: strip + 3 * scale, 2 * scale: 3 * scale]
        assert (block == block[0, 0]).all()


def test_wandb_holds_best_and_latest_models_and_the_best_in_its_summary(shown_run):
    run, _ = shown_run
    (wandb_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    recs = list(records(wandb_file))
    arts = [r.artifact for r in recs if r.WhichOneof("record_type") == "artifact"]
    assert [a.type for a in arts] == ["model"] * len(arts) and len(arts) >= 2
    last = arts[-1]
    assert {"latest", f"step-{STEPS}"} <= set(last.aliases)
    best_step = max(int(a) for art in arts if "best" in art.aliases for a in [s[5:] for s in art.aliases if s.startswith("step-")])
    (entry,) = last.manifest.contents
    staged = torch.load(entry.local_path, weights_only=True)  # the file `wandb sync` would upload
    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    assert staged.keys() == final.keys()
    assert all(torch.equal(staged["G_state"][k], final["G_state"][k]) for k in final["G_state"])
    summary = {}
    for r in recs:
        if r.WhichOneof("record_type") == "summary":
            summary.update({u.key: u.value_json for u in r.summary.update if u.key})
    best_pt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert int(summary["best/step"]) == best_step
    assert abs(float(summary["best/fid"]) - best_pt["metric"]["value"]) < 1e-9


def test_end_of_run_block_names_real_files_and_its_sample_command_works(shown_run, data_root, tmp_path):
    run, proc = shown_run
    block = proc.stdout[proc.stdout.index("gen_dist: run finished:"):]
    assert f"steps {STEPS} of {STEPS}" in block and f"{STEPS * 16:,} images seen" in block
    split = re.search(r"wall time (\S+): training (\S+), evaluation (\S+), checkpoints (\S+), sample grids (\S+)",
                      block)
    assert split, block
    best = re.search(r"best fid [\d.]+ at step (\d+) \((\S+)\)", block)
    assert best and Path(best.group(2)).is_file()
    commands = dict(re.findall(r"^  (sample|evaluate|resume):\s+(.+)$", block, re.M))
    assert set(commands) == {"sample", "evaluate", "resume"}
    for command in commands.values():
        for arg in shlex.split(command):
            if arg.endswith((".pt", ".yaml")):
                assert Path(arg).is_file(), arg
    argv = shlex.split(commands["sample"])
    assert argv[:2] == ["python", "launch/sample.py"]
    done = subprocess.run([PYTHON, *argv[1:]], cwd=REPO, env=run_env(data_root), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = Path(argv[argv.index("--out") + 1])
    assert Image.open(out).size == (8 * 30 + 2, 8 * 30 + 2)


def test_no_terminal_gives_one_line_per_stage_and_artifacts_can_be_turned_off(data_root, tmp_path):
    proc = train(data_root, 1, "--config", "configs/vae_mnist.yaml", *TINY, *WANDB_ON, "train.max_steps=4", "eval.every=2",
                 "train.checkpoint_every=2", "tracking.wandb_artifacts=false", f"run.dir={tmp_path / 'run'}")
    lines = re.findall(r"^gen_dist: VAE test metrics: 64 img in [\d.]+s$", proc.stderr, re.M)
    assert len(lines) == 2, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "%|" not in proc.stderr  # no bar drawn into a log file
    (wandb_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    kinds = {r.WhichOneof("record_type") for r in records(wandb_file)}
    assert "history" in kinds and "artifact" not in kinds


def test_plot_draws_several_runs(shown_run, tmp_path):
    run, _ = shown_run
    out = tmp_path / "curves.png"
    proc = subprocess.run([PYTHON, "launch/plot.py", str(run), str(run), "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pixels = np.asarray(Image.open(out).convert("L"))
    assert pixels.shape[1] >= 800 and pixels.std() > 5
    bad = subprocess.run([PYTHON, "launch/plot.py", str(tmp_path / "nothing"), "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "metrics.jsonl" in bad.stderr

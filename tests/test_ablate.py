"""The VAE-GAN study (launch/ablate.py): the whole study, tiny, on 2 processes; the report; resuming;
--only / --report-only / --list; bad study input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch

from conftest import PYTHON, REPO, TINY, WANDB_ON, read_metrics, run_env, train
from wandb_reader import records

STUDY = str(REPO / "configs" / "ablation_mnist.yaml")
MODELS = ["vae", "gan", "vaegan_l0", "vaegan_l0.1", "vaegan_l0.5", "vaegan_l1", "vaegan_learned", "vaegan_adaptive",
          "vae_s1", "gan_s1", "vaegan_learned_s1"]
# a few steps per model; FID/KID/precision-recall on 16 samples (real Inception weights), mode coverage on
# 200 samples with a classifier trained on 2,000 images
QUICK = TINY + WANDB_ON + ["train.epochs=0", "train.max_steps=4", "eval.every=0", "eval.sample_quality=true",
                "eval.num_samples=16", "eval.kid_subsets=2", "eval.kid_subset_size=8", "eval.coverage_samples=200",
                "eval.classifier_limit=2000", "eval.prior_images=500", "eval.prior_choices=[1,2]"]
SECTIONS = ["## Results", "## Samples", "## Reconstructions", "## Loss curves", "## Stability", "## Findings",
            "### Reconstruction error against the baseline VAE", "### Visual sample quality",
            "### Stability during training", "### The lambda trade-off (0 vs 1)", "### Mode coverage",
            "### The best VAE-GAN against both baselines, per seed"]


@pytest.fixture(scope="module")
def env(data_root, tmp_path_factory):
    caches = tmp_path_factory.mktemp("caches")
    return run_env(data_root, GEN_DIST_CLASSIFIER_CACHE=str(caches / "classifiers"),
                   GEN_DIST_FID_CACHE=str(caches / "fid"))


@pytest.fixture(scope="module")
def study(data_root, env, tmp_path_factory):
    """The whole study, run once with `accelerate launch` on 2 processes."""
    out = tmp_path_factory.mktemp("study")
    proc = train(data_root, 2, "--config", STUDY, f"run.dir={out}", *QUICK, script="ablate.py", env=env, timeout=600)
    return out, proc


def _table_rows(report: str) -> dict[str, list[str]]:
    section = report.split("## Results")[1].split("##")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0]]
    return {r[0].strip(): dict(zip(header, [c.strip().strip("*") for c in r])) for r in rows[1:]}


def test_study_trains_every_model_and_writes_the_report(study):
    out, proc = study
    report = (out / "report.md").read_text()
    for heading in SECTIONS:
        assert f"\n{heading}\n" in report, heading
    rows = _table_rows(report)
    assert list(rows) == MODELS
    html = (out / "report.html").read_text()
    assert html.count("<table>") == 2 and all(f"<td>{m}</td>" in html for m in MODELS)
    figures = out / "figures"
    for name in ["samples.png", "reconstructions.png", "tradeoff.png"] + [f"loss_{m}.png" for m in MODELS] + \
            [f"samples_{m}.png" for m in MODELS]:
        assert (figures / name).stat().st_size > 1000, name
        assert f"figures/{name}" in report or name.startswith("samples_")
    for m in MODELS:
        run = out / m
        cfg = (run / "config.yaml").read_text()
        assert "group: vaegan_ablation_mnist" in cfg and f"dir: {run}" in cfg
        assert (run / "checkpoints" / "final.pt").is_file()
        metrics = read_metrics(run)
        sync = [r for r in metrics if "sync/param_hashes" in r][-1]  # each model trained on both ranks
        assert len(sync["sync/param_hashes"]) == 2 and sync["sync/params_identical"] == 1
        final = [r for r in metrics if "coverage/kl" in r][-1]
        assert final["step"] == 4 and "fid" in final and "precision" in final
        if not m.startswith("gan"):  # every VAE sampled from its mixture, K chosen from [1, 2]
            assert final["prior/components"] in (1, 2)
        # the table shows the run's own final evaluation
        assert rows[m]["FID"] == f"{final['fid']:.1f}" and rows[m]["class KL (nats)"] == f"{final['coverage/kl']:.3f}"
        if not m.startswith("gan"):  # gan, gan_s1
            assert rows[m]["test MSE/pixel"] == f"{final['test/mse']:.4f}"
            assert final["test/active_units"] >= 0 and "test/kl" in final
        assert any(k.startswith("stability/") for k in final)
    assert rows["gan"]["test MSE/pixel"] == "–" and rows["vaegan_l0.5"]["lambda"] == "0.5"
    assert rows["vaegan_adaptive"]["lambda"] == "adaptive x3 (pixel + learned similarity)"
    assert rows["vaegan_learned"]["lambda"] == "10 (learned similarity)"
    # the lambda=0 vs 1 paragraph quotes the two runs' numbers
    mse0 = [r for r in read_metrics(out / "vaegan_l0") if "test/mse" in r][-1]["test/mse"]
    mse1 = [r for r in read_metrics(out / "vaegan_l1") if "test/mse" in r][-1]["test/mse"]
    assert f"test MSE {mse0:.4f} -> {mse1:.4f}" in report
    # the W&B summary run of the group holds the results table
    (wandb_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    recs = list(records(wandb_file))
    run_rec = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    assert run_rec.run_group == "vaegan_ablation_mnist"
    logged = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for r in recs
              if r.WhichOneof("record_type") == "history" for i in r.history.item}
    assert logged["results/_type"] == "table-file" and logged["results/nrows"] == len(MODELS)
    assert logged["samples/_type"] == "image-file"


def test_report_samples_are_the_evaluated_ones(study, data_root, monkeypatch):
    """A VAE evaluated with its latent mixture is shown with samples from that mixture (the images FID
    was computed on), not from N(0, I); a seed-1 model with its own seed's latents."""
    from PIL import Image
    import numpy as np

    from gen_dist.generation.latent_prior import prior_of
    from gen_dist.generation.loading import load_trained
    from gen_dist.generation.sampling import sample_images
    from torchvision.utils import make_grid

    monkeypatch.setenv("GEN_DIST_DATA", data_root)
    out, _ = study

    def pixels(images):
        grid = make_grid(images, nrow=4).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
        return grid.permute(1, 2, 0).numpy()

    for name, seed in (("vae", 0), ("vaegan_learned_s1", 1)):
        trained = load_trained(out / name / "checkpoints" / "final.pt")
        shown = np.asarray(Image.open(out / "figures" / f"samples_{name}.png").convert("RGB"))
        mixture = pixels(sample_images(trained, n=16, seed=seed, prior=prior_of(trained)))
        standard = pixels(sample_images(trained, n=16, seed=seed))
        assert np.array_equal(shown, mixture), name
        assert not np.array_equal(shown, standard), name


def test_rerun_skips_finished_models_and_trains_the_rest(study, data_root, env):
    out, _ = study
    shutil.rmtree(out / "vaegan_l1")  # as if the study had been interrupted before this model finished
    partial = train(data_root, 1, "--config", STUDY, f"run.dir={out}", *QUICK, "tracking.wandb=false",
                    "--report-only", script="ablate.py", env=env)
    report = (out / "report.md").read_text()
    assert "| vaegan_l1 (not finished) |" in report and "### Missing runs" in report, partial.stdout
    proc = train(data_root, 1, "--config", STUDY, f"run.dir={out}", *QUICK, "tracking.wandb=false",
                 script="ablate.py", env=env)
    skipped = re.findall(r"ablate: (\S+) already finished", proc.stdout)
    assert skipped == [m for m in MODELS if m != "vaegan_l1"], proc.stdout
    assert "ablate: training vaegan_l1" in proc.stdout
    assert list(_table_rows((out / "report.md").read_text())) == MODELS


def test_list_only_and_bad_input(data_root, env, tmp_path):
    def ablate(*args):
        return subprocess.run([PYTHON, str(REPO / "launch" / "ablate.py"), "--config", STUDY, *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)

    listed = ablate("--list", f"run.dir={tmp_path}", "study.lambdas=[0,1]", "study.variants=[]")
    assert listed.returncode == 0
    assert [line.split("\t")[1] for line in listed.stdout.splitlines()] == ["vae", "gan", "vaegan_l0", "vaegan_l1"]
    assert listed.stdout.splitlines()[3].split("\t")[2] == str(tmp_path / "vaegan_l1")
    for other in ("ablation_fashion_mnist.yaml", "ablation_cifar10.yaml"):  # every model's config is valid
        listed = subprocess.run([PYTHON, str(REPO / "launch" / "ablate.py"), "--config", str(REPO / "configs" / other),
                                 "--list"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 7, listed.stderr  # 2 + 4 lambdas + adaptive
    bad = ablate("--only", "vaegan_l7", f"run.dir={tmp_path}")
    assert bad.returncode == 2 and "--only vaegan_l7: no such model" in bad.stderr
    bad = ablate("train.epochs=-1")
    assert bad.returncode == 2 and "train.epochs" in bad.stderr and "study model 'vae'" in bad.stderr
    bad = ablate("study.lambdaz=[0]")
    assert bad.returncode == 2 and "study.lambdaz" in bad.stderr
    assert not list(tmp_path.iterdir())  # nothing trained or written

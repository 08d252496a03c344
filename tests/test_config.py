"""Config loading and the launcher's refusals: exit 2 with one line naming the problem and the fix."""

from __future__ import annotations

import subprocess

import pytest
from conftest import PYTHON, REPO, run_env

from gen_dist.config import load_config
from gen_dist.errors import ConfigError

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_required_configs_exist():
    names = {p.stem for p in CONFIGS}
    for model in ["vae", "conv_vae", "dcgan", "dcgan32", "wgan_gp", "sngan", "cgan", "vaegan"]:
        assert f"{model}_mnist" in names and f"{model}_fashion_mnist" in names


@pytest.mark.parametrize("path", [p for p in CONFIGS if not p.stem.startswith("ablation_")], ids=lambda p: p.stem)
def test_every_config_loads(path):
    cfg = load_config(str(path))
    assert cfg.train.batch_size > 0
# ablation_*.yaml are study files (a `study:` section around model configs): tests/test_ablate.py loads them


def test_seed_vae_config_is_the_seeds():
    cfg = load_config(str(REPO / "configs" / "vae_mnist.yaml"))
    assert (cfg.model.generator, cfg.model.hidden_dim, cfg.model.latent_dim) == ("mlp_vae", 400, 20)
    assert (cfg.loss.recon, cfg.loss.recon_scale, cfg.loss.batch_sum) == ("bce", "sum", True)
    assert cfg.optim.g.lr == 1e-3 and cfg.train.batch_size == 128


def test_mixed_precision_no_survives_yaml():
    """YAML 1.1 reads a bare `no` as false; train.mixed_precision=no must still mean no."""
    assert load_config("configs/dcgan_mnist.yaml", ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config("configs/dcgan_mnist.yaml", ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"


def test_base_inheritance_and_overrides():
    cfg = load_config(str(REPO / "configs" / "cgan_fashion_mnist.yaml"), ["train.batch_size=7"])
    assert cfg.data.dataset == "fashion_mnist" and cfg.data.image_size == 32  # from dcgan32_mnist
    assert cfg.model.conditional and cfg.train.batch_size == 7


@pytest.mark.parametrize("override, words", [
    (["train.batchsize=3"], ["unknown config key 'train.batchsize'", "train.batch_size"]),
    (["train.batch_size=abc"], ["train.batch_size", "abc"]),
    (["loss.gan=wasserstein"], ["loss.gan", "nonsat"]),
    (["train.batch_size=0"], ["train.batch_size", "at least 1"]),
    (["model.kind=gan", "model.generator=mlp_vae"], ["model.generator=dcgan"]),
    (["nonsense"], ["key=value"]),
])
def test_bad_values_are_config_errors(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(str(REPO / "configs" / "vae_mnist.yaml"), override)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def _run(data_root, *args):
    return subprocess.run([PYTHON, str(REPO / "launch" / "train.py"), *args], cwd=REPO, capture_output=True,
                          text=True, env=run_env(data_root), timeout=120)


def _one_error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gen_dist: error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_cli_unknown_key_exits_2(data_root):
    line = _one_error_line(_run(data_root, "--config", "configs/vae_mnist.yaml", "train.bach_size=3"))
    assert "train.bach_size" in line and "train.batch_size" in line


def test_cli_wrong_type_exits_2(data_root):
    line = _one_error_line(_run(data_root, "--config", "configs/vae_mnist.yaml", "train.max_steps=ten"))
    assert "train.max_steps" in line


def test_cli_missing_config_file_exits_2(data_root):
    line = _one_error_line(_run(data_root, "--config", "configs/nope.yaml"))
    assert "configs/nope.yaml" in line


def test_cli_missing_dataset_exits_2(data_root, tmp_path):
    line = _one_error_line(_run(data_root, "--config", "configs/vae_mnist.yaml", f"data.root={tmp_path}",
                                "data.download=false", f"run.dir={tmp_path / 'run'}",
                                f"data.shard_cache={tmp_path / 'cache'}"))
    assert "mnist not found" in line and "data.root" in line


def test_cli_unwritable_run_dir_exits_2(data_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder cannot be made under a file, even by root
    line = _one_error_line(_run(data_root, "--config", "configs/vae_mnist.yaml", f"run.dir={blocker}/run"))
    assert "run.dir" in line and "not writable" in line


def test_cli_missing_resume_checkpoint_exits_2(data_root, tmp_path):
    line = _one_error_line(_run(data_root, "--config", "configs/vae_mnist.yaml", f"run.dir={tmp_path}",
                                f"train.resume={tmp_path}/nope.pt"))
    assert "train.resume" in line


def test_cli_fp16_on_cpu_exits_2(data_root, tmp_path):
    line = _one_error_line(_run(data_root, "--config", "configs/vae_mnist.yaml", f"run.dir={tmp_path}",
                                "train.mixed_precision=fp16"))
    assert "fp16" in line and "bf16" in line


def test_print_config(data_root):
    proc = _run(data_root, "--config", "configs/vaegan_mnist.yaml", "--print-config", "loss.adv_lambda=0.25")
    assert proc.returncode == 0
    assert "adv_lambda: 0.25" in proc.stdout and "kind: vaegan" in proc.stdout


def test_cli_inception_score_with_zero_classifier_exits_2(data_root, tmp_path):
    from conftest import WEIGHTS

    line = _one_error_line(_run(data_root, "--config", "configs/dcgan32_mnist.yaml", f"run.dir={tmp_path}",
                                "eval.inception_score=true", f"eval.inception_weights={WEIGHTS}"))
    assert "eval.inception_score" in line and "all zeros" in line

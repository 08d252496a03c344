"""One-line errors (issue 16, item 8): each bad input exits 2 with one line naming the key or file,
before training where possible."""

from __future__ import annotations

import subprocess

import pytest
from conftest import PYTHON, REPO, TINY, run_env, train

pytestmark = pytest.mark.slow


def _cases(tmp):
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "empty.yaml").write_text("")
    (tmp / "child.yaml").write_text("base: nowhere/parent.yaml\ntrain: {max_steps: 3}\n")
    (tmp / "folder").mkdir()
    (tmp / "folder.png").mkdir()
    (tmp / "a_file").write_text("x")
    cfg = ["train.py", "--config", "configs/vae_mnist.yaml", "--print-config"]
    ev = ["evaluate.py", "--checkpoint", str(tmp / "c.pt")]
    smp = ["sample.py", "--checkpoint", str(tmp / "c.pt"), "--num", "4"]
    return {
        "lr nan": ([*cfg, "optim.g.lr=nan"], "optim.g.lr"),
        "lr inf": ([*cfg, "optim.d.lr=inf"], "optim.d.lr"),
        "lr negative": ([*cfg, "optim.g.lr=-0.1"], "optim.g.lr"),
        "beta nan": ([*cfg, "loss.beta=nan"], "loss.beta"),
        "beta inf": ([*cfg, "loss.beta=inf"], "loss.beta"),
        "beta negative": ([*cfg, "loss.beta=-1"], "loss.beta"),
        "betas 1": ([*cfg, "optim.g.betas=[0.5,1.0]"], "optim.g.betas"),
        "betas negative": ([*cfg, "optim.d.betas=[-0.1,0.9]"], "optim.d.betas"),
        "yaml not a mapping": (["train.py", "--config", str(tmp / "list.yaml"), "--print-config"], "list.yaml"),
        "empty yaml": (["train.py", "--config", str(tmp / "empty.yaml"), "--print-config"], "empty.yaml"),
        "missing base": (["train.py", "--config", str(tmp / "child.yaml"), "--print-config"], "child.yaml"),
        "evaluate out missing parent": ([*ev, "--out", str(tmp / "no" / "e.json")], str(tmp / "no")),
        "evaluate out folder": ([*ev, "--out", str(tmp / "folder")], str(tmp / "folder")),
        "evaluate num-samples 0": ([*ev, "--num-samples", "0"], "--num-samples"),
        "sample out a file": ([*smp, "--out", str(tmp / "a_file")], str(tmp / "a_file")),
        "sample grid out a folder": ([*smp, "--grid", "--out", str(tmp / "folder.png")], str(tmp / "folder.png")),
    }


IDS = ["lr nan", "lr inf", "lr negative", "beta nan", "beta inf", "beta negative", "betas 1", "betas negative",
       "yaml not a mapping", "empty yaml", "missing base", "evaluate out missing parent", "evaluate out folder",
       "evaluate num-samples 0", "sample out a file", "sample grid out a folder"]


@pytest.mark.parametrize("case", IDS)
def test_bad_input_is_one_line_exit_2(data_root, tmp_path, case):
    argv, named = _cases(tmp_path)[case]
    proc = subprocess.run([PYTHON, str(REPO / "launch" / argv[0]), *argv[1:]], cwd=REPO, env=run_env(data_root),
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.strip().splitlines() if "error" in ln]
    assert proc.returncode == 2 and len(lines) == 1 and named in lines[0], (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr


def test_resume_with_another_width_names_the_part(data_root, tmp_path):
    run = tmp_path / "run"
    train(data_root, 1, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=2", *TINY)
    proc = train(data_root, 1, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=4", *TINY,
                 "model.hidden_dim=48", check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gen_dist: error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "another G" in lines[0] and "model.hidden_dim=32" in lines[0] and "train.resume=none" in lines[0], lines[0]


def test_read_only_checkpoints_folder(data_root, tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(ckpts)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); root ignores permission bits")
    try:
        train(data_root, 1, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=2", *TINY)
        subprocess.run(["mount", "-o", "remount,ro", str(ckpts)], check=True)
        proc = train(data_root, 1, "--config", "configs/vae_mnist.yaml", f"run.dir={run}", "train.max_steps=4",
                     *TINY, check=False)
    finally:
        subprocess.run(["umount", "-l", str(ckpts)], check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gen_dist: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and str(ckpts) in lines[0] and "not writable" in lines[0], \
        proc.stderr[-3000:]

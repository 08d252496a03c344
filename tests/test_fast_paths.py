"""Speed: the speed.* switches (gen_dist/training/fast_paths.py) on CPU, the keyed noise after its speed-up,
and the benchmark scripts (bench/) as smoke tests: they run and print one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import warnings

import pytest
import torch
from conftest import PYTHON, REPO, TINY, read_metrics, run_env, train

from gen_dist.config import SpeedConfig, load_config
from gen_dist.errors import ConfigError
from gen_dist.training.fast_paths import adam_kwargs, compile_module, resolve
from gen_dist.models import DCGANDiscriminator
from gen_dist.noise import Noise, _key_seed, latents_for


def test_speed_settings_are_checked_and_normalised():
    cfg = load_config("configs/dcgan32_mnist.yaml", ["speed.compile=false", "speed.tf32=True"])
    assert (cfg.speed.compile, cfg.speed.tf32, cfg.speed.channels_last) == ("false", "true", "auto")
    with pytest.raises(ConfigError, match=r"speed\.fused_adam.*auto \| true \| false"):
        load_config("configs/dcgan32_mnist.yaml", ["speed.fused_adam=fast"])
    with pytest.raises(ConfigError, match=r"speed\.compile_mode"):
        load_config("configs/dcgan32_mnist.yaml", ["speed.compile_mode=turbo"])


def test_auto_turns_fast_paths_on_for_cuda_only():
    auto = SpeedConfig()
    assert resolve(auto, torch.device("cpu")).on() == []
    assert set(resolve(auto, torch.device("cuda")).on()) == {"channels_last", "tf32", "cudnn_benchmark",
                                                             "fused_adam", "compile", "device_noise"}
    assert "compile" not in resolve(auto, torch.device("cuda"), deepspeed=True).on()  # engines wrap the modules
    forced = SpeedConfig(compile="false", fused_adam="true")
    assert resolve(forced, torch.device("cuda")).on() == ["channels_last", "tf32", "cudnn_benchmark", "fused_adam",
                                                          "device_noise"]
    assert adam_kwargs(resolve(forced, torch.device("cpu")), "cpu") == {"fused": True}  # CPU has a fused Adam


def test_failed_compile_runs_eagerly_with_a_warning():
    """A compiler that fails (here: a registered backend that raises) costs speed, never the run."""
    from torch._dynamo import register_backend

    @register_backend
    def gen_dist_broken_backend(graph, example_inputs):
        raise RuntimeError("this compiler fails on purpose")

    torch.manual_seed(0)
    model, reference = DCGANDiscriminator(1, 32, 8), DCGANDiscriminator(1, 32, 8)
    reference.load_state_dict(model.state_dict())
    assert compile_module(model, backend="gen_dist_broken_backend")
    x = torch.randn(4, 1, 32, 32)
    out = model(x)  # compilation happens here, fails, and the frame runs eagerly
    assert torch.equal(out, reference(x))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not compile_module(reference, backend="no_such_backend")
    assert any("training it eagerly" in str(w.message) for w in caught)
    assert torch.equal(reference(x), out)


def test_cpu_run_with_fast_paths_forced_trains_like_the_default(data_root, tmp_path):
    """On CPU every switch that can be forced is (compile aside: ~100 s to compile here, see the
    fallback test): the run trains, the conversions really happened, and the losses are the default
    run's up to floating-point reordering (NHWC kernels, the fused Adam kernel)."""
    common = ["--config", "configs/dcgan32_mnist.yaml", "train.max_steps=4", *TINY]
    train(data_root, 1, *common, f"run.dir={tmp_path / 'plain'}")
    forced = ["speed.channels_last=true", "speed.fused_adam=true", "speed.tf32=true", "speed.cudnn_benchmark=true",
              "speed.device_noise=true", "speed.compile=false"]
    train(data_root, 1, *common, *forced, f"run.dir={tmp_path / 'fast'}")
    plain = [r for r in read_metrics(tmp_path / "plain") if "loss/D" in r]
    fast = [r for r in read_metrics(tmp_path / "fast") if "loss/D" in r]
    assert len(plain) == len(fast) == 4
    for a, b in zip(plain, fast):
        for key in ("loss/D", "loss/G"):
            assert b[key] == pytest.approx(a[key], rel=1e-3), (a["step"], key)
    assert plain[-1]["loss/G"] != plain[0]["loss/G"]  # the steps moved the models
    state = torch.load(tmp_path / "fast" / "checkpoints" / "step_000000004.pt", weights_only=True)
    assert state["optimizers"]["G"]["param_groups"][0]["fused"] is True
    assert state["optimizers"]["D"]["param_groups"][0]["fused"] is True
    conv = state["models"]["D"]["features.2.weight"]  # a 4-d conv weight, stored with its NHWC strides
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    default = torch.load(tmp_path / "plain" / "checkpoints" / "step_000000004.pt", weights_only=True)
    assert not default["optimizers"]["G"]["param_groups"][0]["fused"]


def test_noise_depends_only_on_its_key_and_latents_are_unchanged():
    """One re-seeded generator (the speed-up) draws what a fresh generator per draw drew."""
    noise = Noise(5, 1, 2, torch.device("cpu"))
    first = noise.normal((3, 0, 0), "z", 4, 6)
    noise.normal((9, 1, 0), "eps", 4, 6), noise.uniform((3, 0, 0), "alpha", 4, 1)  # other draws in between
    assert torch.equal(noise.normal((3, 0, 0), "z", 4, 6), first)
    fresh = torch.randn(8, 6, generator=torch.Generator().manual_seed(_key_seed(5, 3, 0, 0, 1)))[1::2]
    assert torch.equal(first, fresh)
    idx = torch.tensor([0, 7, 123456])
    expected = torch.stack([torch.randn(10, generator=torch.Generator().manual_seed(_key_seed(2, 99, int(i))))
                            for i in idx])
    assert torch.equal(latents_for(idx, 10, 2), expected)


BENCHES = {  # script -> (arguments, keys every JSON line holds)
    "train_step.py": (["--quick", "--models", "vae_mlp", "vaegan"],
                      {"model", "gen_dist_img_s", "plain_img_s", "overhead"}),
    "memory.py": (["--quick", "--configs", "vae_mnist"], {"config", "peak_rss_mb", "params_m"}),
    "end_to_end.py": (["--quick", "--configs", "vae_mnist"], {"config", "step_img_s", "e2e_img_s", "loader_img_s"}),
    "comm_volume.py": (["--quick"], {"config", "ddp_mb", "zero12_mb", "zero3_mb"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHES))
def test_bench_script_prints_json_lines(script, data_root):
    args, keys = BENCHES[script]
    proc = subprocess.run([PYTHON, str(REPO / "bench" / script), *args], cwd=REPO, env=run_env(data_root),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line is one JSON object
    assert rows and all(keys <= row.keys() for row in rows), proc.stdout
    if script == "train_step.py":
        assert [r["model"] for r in rows] == ["vae_mlp", "vaegan"]
        assert all(r["gen_dist_img_s"] > 0 and r["plain_img_s"] > 0 for r in rows)


def test_gpu_check_says_there_is_no_gpu_and_exits_0(data_root):
    """bench/gpu_check.py is for a CUDA machine; here (no GPU) it must say so in one line and exit 0."""
    import torch

    proc = subprocess.run([PYTHON, str(REPO / "bench" / "gpu_check.py")], cwd=REPO, env=run_env(data_root),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: the full check ran instead")
    assert proc.stdout.strip().startswith("gpu_check: no CUDA GPU on this machine")
    assert proc.stdout.strip().count("\n") == 0, proc.stdout


def test_one_process_ddp_launch_reports_its_backend(data_root, tmp_path):
    """gpu_check's DDP row, on CPU: torchrun with one process gives Accelerate's distributed path (gloo
    here, NCCL on a GPU), which the first metrics row records."""
    torchrun = str(Path(PYTHON).with_name("torchrun"))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "1", "launch/train.py", "--config",
                           "configs/vae_mnist.yaml", *TINY, "train.max_steps=2", f"run.dir={tmp_path / 'run'}",
                           "tracking.wandb=false"], cwd=REPO, env=run_env(data_root), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(tmp_path / "run")
    info = next(r for r in rows if "dist/backend" in r)
    assert (info["dist/backend"], info["dist/type"], info["dist/world"]) == ("gloo", "MULTI_CPU", 1)
    assert rows[-1]["sync/params_identical"] == 1

"""The training loop: build everything from the config, resume, run steps, log, sample, evaluate, save.

Read top to bottom: ``Trainer.__init__`` builds, ``train`` loops, the methods below it are the loop's
paragraphs. Distribution is the engine's business; the steps are data (see phases/).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from gen_dist import checkpoint as ckpt
from gen_dist.config import Config, to_dict, to_yaml
from gen_dist.data import build_train_loader, prepare_sources, to_model_range
from gen_dist.distributed.engine import Engine
from gen_dist.errors import NonFiniteError, UserError
from gen_dist.distributed.preemption import CHECK_EVERY, PREEMPTED_MARKER, Preemption
from gen_dist.evaluation.evaluator import Evaluator
from gen_dist.generation.images import reconstruction_grid, sample_grid
from gen_dist.models import build_models
from gen_dist.noise import Noise
from gen_dist.progress import Progress, bars_wanted, fmt_seconds
from gen_dist.tracking import Tracker, new_run_id
from gen_dist.training import fast_paths, resume
from gen_dist.training.ema import make_ema
from gen_dist.training.phases import build_phases
from gen_dist.training.run_summary import end_of_run_block


def _adam(params, c, fast=None, device="cpu"):
    return torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay,
                            **fast_paths.adam_kwargs(fast, device))  # fused: speed.fused_adam


class Trainer:
    def __init__(self, cfg: Config, engine: Engine | None = None, label: str = ""):
        """``engine``: the process group and distribution to train under; by default one made for this
        config (train.mixed_precision, seed). A study passes one engine to each of its trainers.
        ``label`` names the run on the bars (a study's "vae_s1 (model 3/11)")."""
        self.cfg = cfg
        self.run_dir = Path(cfg.run.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.engine = e = engine if engine is not None else Engine(cfg.train.mixed_precision, cfg.seed)
        self.kind = cfg.model.kind
        self.label = label or f"{self.kind} {self.run_dir.name}"
        e.lock_run_dir(self.run_dir)  # before anything reads or writes run.dir

        # data: each node's main process first, so only it downloads or writes shards
        with e.accelerator.local_main_process_first():
            sources = prepare_sources(cfg.data)
        self.loader = build_train_loader(cfg.data, sources, cfg.train.batch_size, e.rank, e.world, cfg.seed,
                                         pin=e.device.type == "cuda")
        self.test_set = sources.test
        self.num_classes = len(sources.classes)
        # evaluation stages get their bars one line under the training bar
        self.evaluator = Evaluator(cfg, e, self.test_set, self.num_classes,
                                   Progress(e.is_main, cfg.train.progress_bar, position=1,
                                            prefix=f"{label}: " if label else ""), train=sources.train)
        self._prior_step = -1  # the step the evaluator's latent mixture (eval.prior=gmm) was last fit at
        self.last_metrics: dict = {}  # the latest evaluation's, for the grids' captions and the summary
        # wall time outside the training steps, for the ETA and the end-of-run block
        self.seconds = {"evaluation": 0.0, "checkpoints": 0.0, "sample grids": 0.0}
        self._last_seconds = dict(self.seconds)
        # the metrics package loads pytorch-fid, torchvision and scipy (seconds); imported where used
        from gen_dist.evaluation.metrics import PosteriorCollapseDetector

        self.collapse = PosteriorCollapseDetector(cfg.eval.collapse_threshold, cfg.eval.collapse_patience)
        self.loss_history: dict[str, list] = {}  # logged (rank-averaged) losses, for stability figures
        self.stop_reason: str | None = None

        # models and optimizers, prepared by the engine (DDP, mixed precision)
        models = build_models(cfg.model, sources.channels, cfg.data.image_size, self.num_classes, cfg.remedies)
        # GPU fast paths (speed.*): flags, channels_last, torch.compile, on the plain models before prepare
        self.fast = fast_paths.apply(cfg.speed, models, e.device, deepspeed=e.deepspeed is not None)
        opt_g = _adam(models.generator.parameters(), cfg.optim.g, self.fast, e.device)
        # DeepSpeed (ZeRO-3 or bf16/fp16): evaluation and samples use a plain fp32 copy of G, refreshed
        # from the engine; otherwise the engine's own module serves
        self._plain_G = None
        if e.needs_plain_copy(cfg.train, models.generator):
            self._plain_G = copy.deepcopy(models.generator)
        pairs = [(models.generator, opt_g)]
        if models.discriminator is not None:
            opt_d = _adam(models.discriminator.parameters(), cfg.optim.d, self.fast, e.device)
            pairs.append((models.discriminator, opt_d))
        prepared = e.prepare_models(cfg.train, pairs)
        (self.G, self.opt_g), (self.D, self.opt_d) = prepared[0], (prepared[1] if len(prepared) > 1 else (None, None))
        self.ema = None
        if cfg.train.ema_decay > 0:
            self.ema = make_ema(e.unwrap(self.G), cfg.train.ema_decay, cfg.train.ema_warmup)
        self.phases = build_phases(cfg, self.G, self.D, self.opt_g, self.opt_d, e.unwrap, e.reduce_mean)
        for phase in self.phases:
            if cfg.loss.batch_sum:
                phase.scale *= e.world  # DDP averages over ranks; the seed's loss sums the global batch
        self.noise = Noise(cfg.seed, e.rank, e.world, e.device, on_device=self.fast.device_noise)

        # length, counted in optimizer steps of G (or the VAE)
        data_phases = sum(p.fresh_data for p in self.phases)
        self.batches_per_step = data_phases * cfg.train.grad_accum
        self.max_steps = cfg.train.max_steps or max(
            1, cfg.train.epochs * self.loader.batches_per_epoch() // self.batches_per_step)
        self.step, self.images_seen = 0, 0
        self.nonfinite_skipped, self._nonfinite_in_row = 0, 0  # train.nonfinite=skip: steps skipped
        if cfg.train.nonfinite == "skip" and e.deepspeed is not None:
            raise UserError("train.nonfinite=skip cannot undo a DeepSpeed step (the engine steps inside backward): "
                            "use train.nonfinite=stop under DeepSpeed")
        self.best: dict | None = None
        self.run_id = new_run_id()
        self._iter = None
        self._micro: list = []
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

        resume.restore(self)
        if e.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        self.run_id = e.gather_object(self.run_id)[0]  # rank 0's id, so every rank agrees
        self.tracker = Tracker(self.run_dir, cfg.tracking, to_dict(cfg), self.run_id, enabled=e.is_main)

    # ----------------------------------------------------------------------------------------
    def train(self, end_process_group: bool = True) -> None:
        """end_process_group=False keeps the process group for another Trainer in this process (a study
        trains its models one after another; a destroyed group cannot be re-made reliably)."""
        cfg, e = self.cfg, self.engine
        bar = None
        if e.is_main and bars_wanted(cfg.train.progress_bar):
            from tqdm import tqdm

            bar = tqdm(total=self.max_steps, initial=self.step, unit="step", dynamic_ncols=True, position=0,
                       desc=self.label)
        self._t_log, self._images_at_log = time.time(), self.images_seen
        t_start, step_start = time.time(), self.step
        postfix: dict = {}
        preemption = Preemption()
        while self.step < self.max_steps and self.stop_reason is None:
            try:
                self.train_step()
            except NonFiniteError:  # every rank at the same step: nothing of this step is saved
                preemption.restore()
                self.tracker.log(self.step + 1, {"nonfinite/stopped": 1, "nonfinite/skipped_steps": self.nonfinite_skipped})
                self.tracker.finish()
                raise
            self.step += 1
            last = self.step == self.max_steps
            # every rank agrees at the same step boundary, whichever rank got the signal; checked every
            # few steps because the agreement is a collective that waits for the device
            if not last and self.step % CHECK_EVERY == 0 and self.engine.any_rank(preemption.requested):
                self.stop_reason = f"preempted by {preemption.signal_name}"
            if bar is not None:
                bar.update(1)
            if self.step % cfg.train.log_every == 0 or last or self.stop_reason:
                logged = self._log()
                postfix.update({k.split("/")[-1]: f"{v:.3g}" for k, v in logged.items() if k.startswith("loss/")})
            want_samples = self.step % cfg.train.sample_every == 0 or last
            want_eval = (cfg.eval.every and self.step % cfg.eval.every == 0) or last
            if want_samples or want_eval:
                # DeepSpeed: rank 0's BatchNorm statistics everywhere, the plain fp32 copy of G refreshed
                self.engine.sync_for_inference([self.G, self.D], self._plain_G)
            if want_eval:  # before the grids, so their captions carry this step's metrics
                with self._timed("evaluation"):
                    self._evaluate()
                postfix["evals left"] = self._evals_left()
            if e.is_main and want_samples:
                with self._timed("sample grids"):
                    self._save_samples()
            if self.step % cfg.train.checkpoint_every == 0 or last or self.stop_reason:
                with self._timed("checkpoints"):
                    resume.save_checkpoint(self)
            if bar is not None:
                if want_samples or want_eval:
                    bar.unpause()  # the ETA counts training steps only: time spent outside them is left out
                if postfix and self.step % cfg.train.log_every == 0 or want_eval:
                    bar.set_postfix(postfix, refresh=False)
        if bar is not None:
            bar.close()
        if self.stop_reason and e.is_main:
            print(f"gen_dist: stopped early at step {self.step} ({self.stop_reason}); checkpoint saved", flush=True)
        marker = self.run_dir / PREEMPTED_MARKER
        if e.is_main:  # tells a batch script to requeue; gone once the run completes
            if self.stop_reason and self.stop_reason.startswith("preempted"):
                marker.write_text(json.dumps({"step": self.step, "reason": self.stop_reason}) + "\n")
            else:
                marker.unlink(missing_ok=True)
        preemption.restore()
        self._check_ranks_in_sync()
        e.barrier()
        if e.is_main:
            train_s = time.time() - t_start - sum(self.seconds.values())
            print(end_of_run_block(self, train_s, self.step - step_start), flush=True)
        self.tracker.finish()
        if end_process_group:
            e.end()

    # --- one step: each phase optimises its model on its micro-batches ------------------------
    def train_step(self) -> None:
        """One optimizer step of every phase (step counter and logging are the loop's); bench/ times it."""
        cfg, e = self.cfg, self.engine
        accum = cfg.train.grad_accum
        bad_step = False
        for p_idx, phase in enumerate(self.phases):
            if phase.fresh_data:
                self._micro = [self.next_batch() for _ in range(accum)]
            if self.step + 1 < phase.start_step:  # not started yet (the VAE-GAN's D before loss.disc_start):
                continue  # its batches are still read, so the data order does not depend on the start
            for frozen in phase.frozen:  # D during G's step: G's loss must not reach D's grads
                frozen.requires_grad_(False)
            losses, pending = [], []
            for i, batch in enumerate(self._micro):
                draw = self._drawer((self.step, p_idx, i), batch[0].shape[0])
                with e.no_sync(phase.model, sync=i == accum - 1):
                    loss, logs = phase.loss(batch, draw, self.step + 1)  # the step being taken, from 1
                    e.backward(loss * (phase.scale / accum), phase.model)
                losses.append(loss.detach().float())
                pending.append(logs)
            held, hold_logs = phase.hold() if phase.hold is not None else ([], {})  # same on every rank
            if self._finite(phase, torch.stack(losses).mean()):
                for logs in [*pending, hold_logs]:
                    self._accumulate(logs)
                for p in held:  # the optimizer skips parameters without a gradient (and their moments)
                    p.grad = None
                e.step(phase.model, phase.optimizer, cfg.train.grad_clip)
            else:  # train.nonfinite=skip: no update from this phase this step
                bad_step = True
                getattr(phase.optimizer, "optimizer", phase.optimizer).zero_grad(set_to_none=True)
            for frozen in phase.frozen:
                frozen.requires_grad_(True)
        if bad_step:
            self.nonfinite_skipped += 1
            self._nonfinite_in_row += 1
            if self._nonfinite_in_row >= cfg.train.nonfinite_patience:
                raise self._nonfinite_error(f"{self._nonfinite_in_row} steps in a row with a non-finite loss or "
                                            f"gradient (train.nonfinite_patience), the last at step {self.step + 1}")
        else:
            self._nonfinite_in_row = 0
        if self.ema is not None:
            self.ema.update_parameters(e.unwrap(self.G))

    def _finite(self, phase, loss: torch.Tensor) -> bool:
        """Whether this phase's loss and (all-reduced) gradients are finite on every rank: one small
        all-reduce per phase, so every rank decides alike at the same step. A non-finite one stops the run
        (train.nonfinite=stop: exit 3, nothing saved) or is skipped (skip: False)."""
        e = self.engine
        bad_loss = (~torch.isfinite(loss)).float()
        bad_grad = torch.zeros_like(bad_loss)
        if e.deepspeed is None and e.scaler is None:  # a loss scaler (fp16) skips overflowing steps itself;
            # DeepSpeed stepped inside backward: its weights are checked before every save
            grads = [p.grad for p in phase.model.parameters() if p.grad is not None]
            if grads:
                bad_grad = (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).float()
        flags = e.reduce_sum(torch.stack([bad_loss, bad_grad, loss]).to(e.device)).tolist()
        if flags[0] == 0 and flags[1] == 0:
            return True
        what = "loss" if flags[0] else "gradient"
        mean = flags[2] / e.world
        if self.cfg.train.nonfinite == "skip":
            return False
        raise self._nonfinite_error(f"non-finite {what} at step {self.step + 1} in phase {phase.name} "
                                    f"(loss {mean:.4g}, averaged over ranks)")

    def _nonfinite_error(self, what: str) -> NonFiniteError:
        healthy = ckpt.list_steps(self.ckpt_dir)
        last = f"the last healthy checkpoint is {healthy[0]}" if healthy else "no checkpoint was written yet"
        return NonFiniteError(f"{what}: stopped without saving it; {last}. Lower optim.*.lr or the loss weights "
                              "and resume from it, or set train.nonfinite=skip", quiet=not self.engine.is_main)

    def _drawer(self, key, batch):
        def draw(name, *shape):
            sampler = self.noise.uniform if name == "alpha" else self.noise.normal
            return sampler(key, name, batch, *shape)

        return draw

    def next_batch(self):
        """The next micro-batch (x in the model's range, labels) on the device; bench/ replaces it on an
        instance to feed fixed batches."""
        while True:
            if self._iter is None:
                self._iter = iter(self.loader)
            try:
                images, labels = next(self._iter)
                break
            except StopIteration:  # epoch over: the loader moved its position to the next epoch
                self._iter = None
        self.images_seen += images.shape[0] * self.engine.world
        device = self.engine.device
        x = to_model_range(images.to(device, non_blocking=True), self.cfg.data.image_size,
                           signed=self.kind == "gan")
        return x, labels.to(device, non_blocking=True)

    # --- logging: losses averaged over the interval and over ranks ---------------------------
    def _accumulate(self, logs: dict) -> None:
        for k, v in logs.items():
            self._sums[k] = self._sums.get(k, 0.0) + v.float()
            self._counts[k] = self._counts.get(k, 0) + 1

    def _log(self) -> dict:
        keys = sorted(self._sums)
        values = []  # no losses: every phase of the interval was skipped (train.nonfinite=skip), on every rank
        if keys:
            local = torch.stack([self._sums[k] / self._counts[k] for k in keys]).to(self.engine.device)
            values = self.engine.reduce_mean(local).tolist()
        self._sums.clear(), self._counts.clear()
        stats = self.loader.stats  # damaged samples skipped and refilled, summed over ranks
        counts = torch.tensor([float(stats.skipped_damaged), float(stats.repeated_per_epoch)])
        skipped, repeated = self.engine.reduce_sum(counts).tolist()
        now = time.time()
        row = dict(zip(keys, values))
        for k in keys:
            if k.startswith("loss/"):
                self.loss_history.setdefault(k, []).append([self.step, row[k]])
        row.update({"data/skipped_damaged": int(skipped), "data/repeated": int(repeated)})
        if self.cfg.train.nonfinite == "skip":
            row["nonfinite/skipped_steps"] = self.nonfinite_skipped
        row.update({"images_seen": self.images_seen, "epoch": self.loader.position.epoch,
                    "img_per_s": (self.images_seen - self._images_at_log) / max(now - self._t_log, 1e-9),
                    "lr/G": self.opt_g.param_groups[0]["lr"]})
        if self.engine.scaler is not None:  # fp16: the loss scale and the steps it skipped (on every rank alike)
            row.update({"amp/scale": float(self.engine.scaler.get_scale()), "amp/skipped_steps": self.engine.amp_skipped})
        if self.step <= self.cfg.train.log_every:  # once: how the data was split, how the run is distributed
            row.update(self.engine.describe())
            st = self.loader.stats
            row.update({"data/dropped_per_epoch": st.dropped_per_epoch, "data/samples_per_epoch": st.samples_per_epoch,
                        "data/coverage": st.samples_per_epoch / max(1, st.samples_per_epoch + st.dropped_per_epoch)})
        self._t_log, self._images_at_log = now, self.images_seen
        self.tracker.log(self.step, row)
        return row

    # --- samples, evaluation, best model ------------------------------------------------------
    @contextmanager
    def _timed(self, what: str):
        t0 = time.time()
        try:
            yield
        finally:
            self._last_seconds[what] = time.time() - t0
            self.seconds[what] += self._last_seconds[what]

    def _evals_left(self) -> str:
        """Evaluations still to come and the measured time of the last: the bar's ETA leaves them out."""
        every, step, end = self.cfg.eval.every, self.step, self.max_steps
        left = (end // every - step // every + (1 if end % every else 0)) if every else 1
        left = left if step < end else 0
        return f"{left} x {fmt_seconds(self._last_seconds['evaluation'])}"

    def _inference_model(self):
        if self.ema is not None:
            return self.ema.module
        return self._plain_G if self._plain_G is not None else self.engine.unwrap(self.G)

    def _save_samples(self) -> None:
        model = self._inference_model()
        folder = self.run_dir / "samples"
        what, latents = ("samples" if self.kind == "gan" else "prior samples"), None
        if self.evaluator.uses_prior:  # the mixture of this step (refit here when no evaluation came first)
            prior = self.evaluator.prior
            if self._prior_step != self.step:
                prior = self.evaluator.fit_prior(model, everywhere=False)
            what, latents = "samples from the latent mixture", prior.latents(torch.arange(64), self.cfg.seed)
        images = {"samples": sample_grid(model, self.cfg, self.num_classes, folder / f"step_{self.step:09d}.png",
                                         caption=self._caption(what), latents=latents)}
        if self.kind != "gan":
            images["reconstructions"] = reconstruction_grid(
                model, self.test_set.images, self.cfg, folder / f"recon_step_{self.step:09d}.png",
                caption=self._caption("top: test images, bottom: reconstructions"))
        self.tracker.log_images(self.step, images)

    def _caption(self, what: str) -> list[str]:
        """Two lines over a grid: which run, step and images; what it shows and the latest metrics."""
        m, known = self.last_metrics, []
        if "fid" in m:
            known.append(f"FID {m['fid']:.1f}")
        if "test/loss" in m:
            known.append(f"test loss {m['test/loss']:.1f} nats")
        weights = " (EMA)" if self.ema is not None else ""
        first = f"{self.run_dir.name} | step {self.step:,} | {self.images_seen:,} images seen"
        return [first, " | ".join([what + weights, *known])]

    def _evaluate(self) -> None:
        metrics = self.evaluator.evaluate(self._inference_model())
        self._prior_step = self.step if self.evaluator.prior is not None else -1
        metrics.update(self._stability())
        if "test/kl" in metrics:  # the same reduced number on every rank: all ranks decide alike
            if self.collapse.update(metrics["test/kl"], self.step):
                metrics["collapse/detected"] = 1
                if self.engine.is_main and self.collapse.low_count == self.collapse.patience:
                    print(f"gen_dist: {self.collapse.message}", flush=True)
                if self.cfg.eval.collapse_stop:
                    self.stop_reason = "posterior collapse"
        if not metrics:
            return
        self.last_metrics = {"step": self.step, **metrics}
        self.tracker.log(self.step, {"images_seen": self.images_seen, **metrics})
        if self.engine.is_main:
            # scalars only (histograms and per-dimension lists go to the metrics file); counts such as
            # active units and classes covered are ints and belong on the line too
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool))
            print(f"gen_dist: eval at step {self.step}: {shown}", flush=True)
            if metrics.get("coverage/alarm"):  # few classes among the samples: the generator collapsed modes
                from gen_dist.evaluation.metrics import alarm_message  # heavy package: see __init__

                print(f"gen_dist: {alarm_message(metrics, self.cfg.eval.coverage_alarm)}", flush=True)
        name = resume.best_metric_name(self.cfg, self.evaluator.wants_features)
        if resume.improves(self.best, name, metrics):
            self.best = {"metric": name, "value": float(metrics[name]), "step": self.step}
            resume.save_best(self)

    def _stability(self) -> dict:
        """How smooth each loss curve was so far (rolling std of successive differences, spikes)."""
        from gen_dist.evaluation.metrics import stability_figures  # heavy package: see __init__

        out = {}
        for key, points in self.loss_history.items():
            figures = stability_figures([v for _, v in points], steps=[s for s, _ in points])
            name = key.split("/", 1)[1]
            out.update({f"stability/{name}/{f}": v for f, v in figures.items()
                        if f in ("diff_std_last", "diff_std_mean", "spike_ratio", "spike_step", "total_variation")})
        return out

    def _check_ranks_in_sync(self) -> None:
        """DDP keeps parameters equal on every rank; prove it once at the end (a cheap hash each)."""
        h = hashlib.sha256()
        for model in (self.G, self.D):
            if model is not None:
                with self.engine.gathered(model):  # ZeRO-3 partitions parameters: hash the whole ones
                    for p in self.engine.unwrap(model).parameters():
                        h.update(p.detach().float().cpu().numpy().tobytes())
        hashes = self.engine.gather_object(h.hexdigest()[:16])
        same = len(set(hashes)) == 1
        self.tracker.log(self.step, {"sync/params_identical": int(same), "sync/param_hashes": hashes})
        if not same:
            warnings.warn(f"parameters differ across ranks at the end of training: {hashes}", stacklevel=2)

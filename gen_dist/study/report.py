"""The ablation study's report: ``report.md`` and ``report.html`` (same content) with figures in ``figures/``.

Sections: the results table (each model's final evaluation, best values in bold), 16 samples per model
from the same latents, reconstructions of the same 16 test images (VAE-type models), loss curves, the
stability figures, and findings written from the numbers: reconstruction against the baseline VAE,
sample quality, stability during training, the lambda=0 vs lambda=1 trade-off and mode coverage.
Everything is read from the runs' folders (``metrics.jsonl`` and ``checkpoints/final.pt``), so the
report can be rebuilt at any time (``launch/ablate.py --report-only``).
"""

from __future__ import annotations

import html
import math
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from gen_dist.data import to_model_range
from gen_dist.study.spec import ModelRun, is_finished
from gen_dist.tracking import read_metrics, wandb_mode

SECTIONS = ("Results", "Samples", "Reconstructions", "Loss curves", "Stability", "Findings")


def _is_eval_row(row: dict) -> bool:
    return any(k.startswith(("test/", "coverage/", "stability/")) or k in ("fid", "kid") for k in row)


def load_results(run: ModelRun) -> ModelRun:
    """Fill a ModelRun from its metrics.jsonl: the last evaluation, the loss curves, alarms, time."""
    run.finished = is_finished(run.run_dir)
    rows = read_metrics(run.run_dir)
    if not rows:
        return run
    evals = [r for r in rows if _is_eval_row(r)]
    run.metrics = dict(evals[-1]) if evals else {}
    run.alarms = sum(1 for r in evals if r.get("coverage/alarm"))
    run.collapse = any(r.get("collapse/detected") for r in evals)
    for r in rows:
        for k, v in r.items():
            if k.startswith("loss/") and isinstance(v, (int, float)):
                steps, values = run.curves.setdefault(k, ([], []))
                steps.append(r["step"])
                values.append(float(v))
    times = [r["time"] for r in rows if "time" in r]
    run.seconds = (times[-1] - times[0]) if len(times) > 1 else None
    return run


# --- the results table ------------------------------------------------------------------------
# (metric key, column header, which way is better: "min" | "max" | None, format)
COLUMNS = [
    ("test/mse", "test MSE/pixel", "min", "{:.4f}"),
    ("test/loss", "test loss (nats)", "min", "{:.1f}"),
    ("test/kl", "KL (nats)", None, "{:.1f}"),
    ("test/active_units", "active units", "max", "{:d}"),
    ("fid", "FID", "min", "{:.1f}"),
    ("kid", "KID", "min", "{:.4f}"),
    ("precision", "precision", "max", "{:.3f}"),
    ("recall", "recall", "max", "{:.3f}"),
    ("coverage/classes_covered", "classes covered", "max", "{:d}"),
    ("coverage/kl", "class KL (nats)", "min", "{:.3f}"),
]


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if spec == "{:d}":
        return str(int(round(value)))
    return spec.format(value)


def results_table(runs: list[ModelRun]) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Headers and rows of (text, is_best) cells; a column's best value is marked where it has a direction."""
    cols = [c for c in COLUMNS if any(c[0] in r.metrics for r in runs)]
    headers = ["model", "kind", "lambda"] + [c[1] for c in cols] + ["images seen", "time (s)"]
    best = {}
    for key, _, better, _ in cols:
        values = [r.metrics[key] for r in runs if isinstance(r.metrics.get(key), (int, float))]
        if better and len(values) > 1 and min(values) != max(values):  # a tie marks nothing
            best[key] = min(values) if better == "min" else max(values)
    rows = []
    for r in runs:
        lam = "–" if r.lam is None else f"{r.lam:g}"
        if r.cfg.model.kind == "vaegan" and r.cfg.loss.adv_weight == "adaptive":
            lam = f"adaptive x{r.lam:g}"
        if r.cfg.model.kind == "vaegan" and r.cfg.loss.similarity != "pixel":
            lam += {"learned": " (learned similarity)", "both": " (pixel + learned similarity)"}[r.cfg.loss.similarity]
        row = [(r.name if r.finished else f"{r.name} (not finished)", False), (r.cfg.model.kind, False), (lam, False)]
        for key, _, _, spec in cols:
            v = r.metrics.get(key)
            row.append((_fmt(v, spec), key in best and v is not None and v == best[key]))
        row.append((_fmt(r.metrics.get("images_seen"), "{:d}"), False))
        row.append((_fmt(r.seconds, "{:.0f}"), False))
        rows.append(row)
    return headers, rows


# --- figures ----------------------------------------------------------------------------------
def _load_final(run: ModelRun):
    # generation pulls in torchvision (~1 s): loaded when figures are drawn, not when launch/ablate.py starts
    from gen_dist.generation.loading import load_trained

    return load_trained(run.run_dir / "checkpoints" / "final.pt")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on compute nodes
    import matplotlib.pyplot as plt

    return plt


def _grid(images: torch.Tensor, nrow: int):
    from torchvision.utils import make_grid

    g = make_grid(images.float().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    return g.permute(1, 2, 0).numpy()


def sample_figures(runs: list[ModelRun], folder: Path) -> dict[str, Path]:
    """16 samples per model (sample i from the evaluation's latent i: the same latents for models of the
    same latent size, seed and sampler), one grid each and all side by side. A model evaluated with
    ``eval.prior=gmm`` is drawn from its mixture, refit as its evaluation fit it: the pictures show the
    samples FID was computed on, not N(0, I) ones."""
    from gen_dist.generation.images import save_grid  # torchvision: see _load_final
    from gen_dist.generation.latent_prior import prior_of
    from gen_dist.generation.sampling import sample_images

    grids = {}
    for r in runs:
        if r.finished:
            trained = _load_final(r)
            # the model's own seed keys its evaluation's latents (a *_s1 model: seed 1)
            images = sample_images(trained, n=16, seed=r.cfg.seed, prior=prior_of(trained))
            grids[r.name] = images
            save_grid(images, folder / f"samples_{r.name}.png", nrow=4)
    if not grids:
        return {}
    plt = _plt()
    fig, axes = plt.subplots(1, len(grids), figsize=(2.4 * len(grids), 2.8), squeeze=False)
    for ax, (name, images) in zip(axes[0], grids.items()):
        ax.imshow(_grid(images, 4), cmap="gray" if images.shape[1] == 1 else None)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    path = folder / "samples.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"samples": path, **{f"samples_{n}": folder / f"samples_{n}.png" for n in grids}}


@torch.no_grad()
def reconstruction_figure(runs: list[ModelRun], test_images: torch.Tensor, folder: Path) -> Path | None:
    """Top row: the first 16 test images; one row per VAE-type model: their reconstructions (posterior mean)."""
    vaes = [r for r in runs if r.finished and r.vae_type]
    if not vaes:
        return None
    rows, names = [], []
    for r in vaes:
        trained = _load_final(r)
        x = to_model_range(test_images[:16], r.cfg.data.image_size, signed=False)
        mu, _ = trained.model.encoder(x)
        if not rows:
            rows.append(x)
            names.append("test images")
        rows.append(trained.model.decoder(mu).float().clamp(0, 1))
        names.append(r.name)
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 0.95 * len(rows) + 0.3), squeeze=False)
    for ax, images, name in zip(axes[:, 0], rows, names):
        ax.imshow(_grid(images, 16), cmap="gray" if images.shape[1] == 1 else None)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    path = folder / "reconstructions.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_figure(run: ModelRun, folder: Path) -> Path | None:
    if not run.curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for key, (steps, values) in sorted(run.curves.items()):
        ax.plot(steps, values, label=key.split("/", 1)[1], linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run.name, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = folder / f"loss_{run.name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tradeoff_figure(runs: list[ModelRun], folder: Path) -> Path | None:
    """Test MSE and FID (else the class KL) against lambda, for the lesson's lambda runs."""
    pts = sorted((r.lam, r) for r in runs if r.role == "VAE-GAN" and "test/mse" in r.metrics)
    if len(pts) < 2:
        return None
    quality = "fid" if all("fid" in r.metrics for _, r in pts) else "coverage/kl"
    if not all(quality in r.metrics for _, r in pts):
        quality = None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    lams = [lam for lam, _ in pts]
    ax.plot(lams, [r.metrics["test/mse"] for _, r in pts], "o-", color="tab:blue")
    ax.set_xlabel("lambda (weight of the adversarial term)")
    ax.set_ylabel("test MSE per pixel", color="tab:blue")
    if quality:
        ax2 = ax.twinx()
        ax2.plot(lams, [r.metrics[quality] for _, r in pts], "s--", color="tab:red")
        ax2.set_ylabel(quality, color="tab:red")
    fig.tight_layout()
    path = folder / "tradeoff.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- stability --------------------------------------------------------------------------------
STABILITY = [("diff_std_last", "{:.4g}"), ("diff_std_mean", "{:.4g}"), ("total_variation", "{:.4g}"),
             ("spike_ratio", "{:.1f}"), ("spike_step", "{:d}")]


def relative_jitter(run: ModelRun, key: str) -> float | None:
    """The curve's mean rolling std of successive differences over its mean |level|: scale-free, so
    curves of different losses (nats per image, BCE per sample) can be compared."""
    steps_values = run.curves.get(key)
    figure = run.metrics.get(f"stability/{key.split('/', 1)[1]}/diff_std_mean")
    if not steps_values or figure is None:
        return None
    level = sum(abs(v) for v in steps_values[1]) / len(steps_values[1])
    return figure / level if level > 0 else None


def stability_table(runs: list[ModelRun]):
    headers = ["model", "curve"] + [f for f, _ in STABILITY] + ["jitter / level"]
    rows = []
    for r in runs:
        curves = sorted({k.split("/")[1] for k in r.metrics if k.startswith("stability/")})
        for c in curves:
            row = [(r.name, False), (c, False)]
            for f, spec in STABILITY:
                row.append((_fmt(r.metrics.get(f"stability/{c}/{f}"), spec), False))
            row.append((_fmt(relative_jitter(r, f"loss/{c}"), "{:.3f}"), False))
            rows.append(row)
    return headers, rows


# --- findings ---------------------------------------------------------------------------------
def _pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.0f}%" if b else "n/a"


def findings(runs: list[ModelRun]) -> list[tuple[str, str]]:
    """(title, paragraph) answering the seed's questions, every statement computed from the table."""
    done = [r for r in runs if r.metrics]
    vae = next((r for r in done if r.role == "baseline VAE"), None)
    gan = next((r for r in done if r.role == "baseline GAN"), None)
    hybrids = [r for r in done if r.lam is not None]
    out = []

    # 1. reconstruction error vs the baseline VAE
    if vae is not None and "test/mse" in vae.metrics:
        base = vae.metrics["test/mse"]
        parts = [f"{r.name} {r.metrics['test/mse']:.4f} ({_pct(r.metrics['test/mse'], base)})"
                 for r in hybrids if "test/mse" in r.metrics]
        worse = [r.name for r in hybrids if r.metrics.get("test/mse", 0) > base * 1.05]
        text = (f"The baseline VAE ({vae.name}) reconstructs the test split with MSE {base:.4f} per pixel. "
                f"VAE-GAN, relative to it: {'; '.join(parts) or 'no VAE-GAN run finished'}. ")
        text += (f"More than 5% worse: {', '.join(worse)}." if worse else
                 "No VAE-GAN run is more than 5% worse than the baseline VAE.")
        out.append(("Reconstruction error against the baseline VAE", text))

    # 2. visual sample quality
    metric = "fid" if any("fid" in r.metrics for r in done) else None
    if metric:
        ranked = sorted((r for r in done if "fid" in r.metrics), key=lambda r: r.metrics["fid"])
        text = "FID, lower is better: " + ", ".join(f"{r.name} {r.metrics['fid']:.1f}" for r in ranked) + ". "
        if any("precision" in r.metrics for r in ranked):
            p = max((r for r in ranked if "precision" in r.metrics), key=lambda r: r.metrics["precision"])
            text += (f"Highest precision (the share of samples that fall on the real images' manifold): {p.name} "
                     f"{p.metrics['precision']:.3f}. " if p.metrics["precision"] > 0 else
                     "Precision is 0 for every model: no sample falls on the real images' manifold yet. ")
        best_h = next((r for r in ranked if r.lam is not None), None)
        if best_h is not None and gan is not None and "fid" in gan.metrics:
            rel = "better than" if best_h.metrics["fid"] < gan.metrics["fid"] else "not as good as"
            text += (f"The best VAE-GAN by FID ({best_h.name}, {best_h.metrics['fid']:.1f}) is {rel} the baseline "
                     f"GAN ({gan.metrics['fid']:.1f})")
            if vae is not None and "fid" in vae.metrics:
                rel = "better than" if best_h.metrics["fid"] < vae.metrics["fid"] else "not as good as"
                text += f" and {rel} the baseline VAE ({vae.metrics['fid']:.1f})"
            text += ". "
        text += "See the sample grids above for the visual comparison."
    else:
        text = ("FID/KID/precision were not computed (eval.sample_quality=false); compare the sample grids "
                "above by eye, and the class coverage below.")
    out.append(("Visual sample quality", text))

    # 3. stability during training
    jit = [(r, relative_jitter(r, r.generator_curve)) for r in done]
    jit = [(r, j) for r, j in jit if j is not None]
    if jit:
        jit.sort(key=lambda t: t[1])
        text = ("Jitter of the generator-side loss (mean rolling std of step-to-step changes over the mean "
                "loss level; lower is smoother): "
                + ", ".join(f"{r.name} {j:.3f} ({r.generator_curve})" for r, j in jit)
                + f". Smoothest: {jit[0][0].name}; roughest: {jit[-1][0].name}. ")
        spiky = [f"{r.name} ({k.split('/')[1]}: {r.metrics[k]:.0f}x)" for r in done for k in sorted(r.metrics)
                 if k.startswith("stability/") and k.endswith("/spike_ratio") and (r.metrics[k] or 0) > 10]
        text += ("Spikes (a jump over 10x the typical step): " + ", ".join(spiky) + "." if spiky
                 else "No loss curve has a spike over 10x its typical step.")
        out.append(("Stability during training", text))

    # 4. the trade-off between lambda = 0 and lambda = 1 (the lesson's lambda runs: role "VAE-GAN")
    plain = {r.lam: r for r in hybrids if r.role == "VAE-GAN"}
    if 0.0 in plain and 1.0 in plain:
        a, b = plain[0.0], plain[1.0]
        parts = []
        for key, label, spec in (("test/mse", "test MSE", "{:.4f}"), ("test/kl", "KL", "{:.1f}"),
                                 ("fid", "FID", "{:.1f}"), ("precision", "precision", "{:.3f}"),
                                 ("recall", "recall", "{:.3f}"),
                                 ("coverage/classes_covered", "classes covered", "{:d}"),
                                 ("coverage/kl", "class KL", "{:.3f}")):
            if key in a.metrics and key in b.metrics:
                parts.append(f"{label} {_fmt(a.metrics[key], spec)} -> {_fmt(b.metrics[key], spec)}")
        text = f"From lambda=0 ({a.name}, the VAE objective) to lambda=1 ({b.name}, no reconstruction term): " \
               + "; ".join(parts) + ". "
        if "test/mse" in a.metrics and "test/mse" in b.metrics:
            ratio = b.metrics["test/mse"] / a.metrics["test/mse"] if a.metrics["test/mse"] else float("nan")
            text += f"Dropping the reconstruction term multiplies the reconstruction error by {ratio:.1f}. "
        mids = sorted(plain)
        if all("fid" in plain[m].metrics for m in mids):
            best = min(mids, key=lambda m: plain[m].metrics["fid"])
            text += f"Best FID among the lambdas: {best:g}. "
        if all("test/mse" in plain[m].metrics for m in mids):
            best = min(mids, key=lambda m: plain[m].metrics["test/mse"])
            text += f"Best reconstruction among the lambdas: {best:g}."
        out.append(("The lambda trade-off (0 vs 1)", text.strip()))

    # 5. per seed: does the best VAE-GAN beat both baselines?
    text = beats_both(done)
    if text:
        out.insert(0, ("The best VAE-GAN against both baselines, per seed", text))

    # 6. mode coverage and collapse alarms
    cov = [r for r in done if "coverage/classes_covered" in r.metrics]
    if cov:
        acc = cov[0].metrics.get("coverage/classifier_accuracy")
        text = (f"Classes covered by the samples (a class counts when it holds at least 1/4 of its real share; "
                f"classifier test accuracy {acc:.4f}): "
                + ", ".join(f"{r.name} {r.metrics['coverage/classes_covered']}/{r.metrics['coverage/num_classes']}"
                            for r in cov) + ". ")
        alarmed = [f"{r.name} ({r.alarms} of its evaluations)" for r in cov if r.alarms]
        text += ("Mode-collapse alarms during training: " + ", ".join(alarmed) + "." if alarmed
                 else "No mode-collapse alarm was raised during training.")
        collapsed = [r.name for r in done if r.collapse]
        if collapsed:
            text += f" Posterior collapse (test KL near 0) was detected in: {', '.join(collapsed)}."
        out.append(("Mode coverage", text))
    missing = [r.name for r in runs if not r.finished]
    if missing:
        out.append(("Missing runs", f"Not finished (no checkpoints/final.pt), shown with what they logged: "
                                    f"{', '.join(missing)}. Re-run the study to finish them."))
    return out


def beats_both(done: list[ModelRun]) -> str:
    """For each seed with a VAE, a GAN and a VAE-GAN: the best VAE-GAN's FID as a multiple of the VAE's
    and of the GAN's, and its test MSE as a multiple of the VAE's (from the table, nothing else)."""
    parts = []
    for seed in sorted({r.cfg.seed for r in done}):
        same = [r for r in done if r.cfg.seed == seed and "fid" in r.metrics]
        vae = next((r for r in same if r.cfg.model.kind == "vae"), None)
        gan = next((r for r in same if r.cfg.model.kind == "gan"), None)
        hybrids = sorted((r for r in same if r.lam is not None), key=lambda r: r.metrics["fid"])
        if vae is None or gan is None or not hybrids:
            continue
        best = hybrids[0]
        fid = best.metrics["fid"]
        text = (f"seed {seed}: {best.name} FID {fid:.1f} = {fid / vae.metrics['fid']:.2f} x the VAE's "
                f"({vae.name}, {vae.metrics['fid']:.1f}) and {fid / gan.metrics['fid']:.2f} x the GAN's "
                f"({gan.name}, {gan.metrics['fid']:.1f})")
        if "test/mse" in best.metrics and "test/mse" in vae.metrics:
            text += (f", test MSE {best.metrics['test/mse']:.4f} = {best.metrics['test/mse'] / vae.metrics['test/mse']:.2f}"
                     f" x the VAE's ({vae.metrics['test/mse']:.4f})")
        parts.append(text)
    return "; ".join(parts) + "." if parts else ""


# --- rendering --------------------------------------------------------------------------------
def _md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(f"**{t}**" if b and t != "–" else t for t, b in row) + " |")
    return "\n".join(lines)


def _html_table(headers, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{'<b>' if b else ''}{html.escape(t)}{'</b>' if b else ''}</td>"
                                    for t, b in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(blocks: list, title: str) -> tuple[str, str]:
    """Blocks ("h2", text) | ("p", text) | ("table", headers, rows) | ("img", relative path, alt) -> md, html."""
    md, ht = [f"# {title}"], [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h2", "h3"):
            md.append(("## " if kind == "h2" else "### ") + block[1])
            ht.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            md.append(block[1])
            ht.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            md.append(_md_table(block[1], block[2]))
            ht.append(_html_table(block[1], block[2]))
        elif kind == "img":
            md.append(f"![{block[2]}]({block[1]})")
            ht.append(f'<p><img src="{html.escape(block[1])}" alt="{html.escape(block[2])}"></p>')
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(ht) + "\n</body></html>\n")
    return "\n\n".join(md) + "\n", page


def build_report(study: str, study_dir: Path, runs: list[ModelRun], test_images: torch.Tensor,
                 command: str = "") -> Path:
    """Write study_dir/report.md, report.html and figures/; return the report.md path."""
    study_dir = Path(study_dir)
    folder = study_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    for r in runs:
        load_results(r)
    done = [r for r in runs if r.finished]
    cfg0 = runs[0].cfg
    blocks: list = []
    budget = (f"{cfg0.train.epochs} epochs" if not cfg0.train.max_steps else f"{cfg0.train.max_steps} steps")
    blocks.append(("p", f"Study '{study}': {len(runs)} models on {cfg0.data.dataset}, the same seed ({cfg0.seed}), "
                        f"budget ({budget}, batch {cfg0.train.batch_size} per process) and evaluation "
                        f"({cfg0.eval.num_samples} samples for FID/KID/precision/recall when computed, "
                        f"{cfg0.eval.coverage_samples} for mode coverage). Metrics are each model's final "
                        f"evaluation. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
                        + (f" by `{command}`." if command else ".")))
    blocks += [("h2", "Results"), ("table", *results_table(runs)),
               ("p", "Bold: the best value of a column (lower MSE, loss, FID, KID and class KL; higher active "
                     "units, precision, recall and classes covered). test loss is the negative ELBO in nats per "
                     "image (the seed's printed loss); MSE is per pixel on the test split.")]
    images = {}
    blocks.append(("h2", "Samples"))
    samples = sample_figures(done, folder)
    images.update(samples)
    if samples:
        blocks += [("p", "16 samples per model: the first 16 its evaluation computed FID on (sample i from "
                         "the evaluation's latent i, from the model's latent mixture when it was evaluated "
                         "with one; the same latents for models with the same latent size, seed and sampler)."), ("img", "figures/samples.png", "samples")]
    else:
        blocks.append(("p", "No finished run to sample from."))
    blocks.append(("h2", "Reconstructions"))
    recon = reconstruction_figure(done, test_images, folder)
    if recon:
        images["reconstructions"] = recon
        blocks += [("p", "Top row: the first 16 test images; below, each VAE-type model's reconstruction "
                         "(decoder of the posterior mean)."), ("img", "figures/reconstructions.png", "reconstructions")]
    else:
        blocks.append(("p", "No finished VAE-type run."))
    blocks.append(("h2", "Loss curves"))
    for r in runs:
        path = loss_figure(r, folder)
        if path:
            blocks.append(("img", f"figures/{path.name}", f"loss curves of {r.name}"))
    trade = tradeoff_figure(runs, folder)
    if trade:
        images["tradeoff"] = trade
        blocks += [("p", "Reconstruction and sample quality against lambda:"),
                   ("img", "figures/tradeoff.png", "trade-off")]
    blocks += [("h2", "Stability"),
               ("p", "Figures of each logged loss curve over the whole run (gen_dist/evaluation/metrics/stability.py): "
                     "diff_std = rolling std of step-to-step changes (last window, mean over the run), total "
                     "variation = mean |change|, spike_ratio = the largest jump over the typical change around it "
                     "(>10 is a spike) and its step; jitter / level = diff_std_mean over the mean |loss|, "
                     "comparable across losses of different scales."),
               ("table", *stability_table(runs))]
    blocks.append(("h2", "Findings"))
    for title, text in findings(runs):
        blocks += [("h3", title), ("p", text)]
    md, page = render(blocks, f"VAE-GAN study: {study}")
    (study_dir / "report.md").write_text(md)
    (study_dir / "report.html").write_text(page)
    if cfg0.tracking.wandb:
        log_to_wandb(study, study_dir, cfg0.tracking, results_table(runs), images)
    return study_dir / "report.md"


def log_to_wandb(study: str, study_dir: Path, tracking, table, images: dict) -> None:
    """A summary run in the study's W&B group: the results table and the figures. Never raises."""
    mode = wandb_mode(tracking.mode)
    if mode == "disabled":
        return
    try:
        import wandb

        run = wandb.init(project=tracking.project, entity=tracking.entity, group=study, job_type="report",
                         name=f"{study}-report", dir=str(study_dir), mode=mode,
                         settings=wandb.Settings(silent=True, init_timeout=60), reinit="create_new")
        headers, rows = table
        run.log({"results": wandb.Table(columns=headers, data=[[t for t, _ in row] for row in rows]),
                 **{k: wandb.Image(str(p)) for k, p in images.items()}})
        run.finish()
    except Exception as e:  # W&B is a guest: the report on disk is what matters
        warnings.warn(f"W&B summary run failed: {type(e).__name__}: {e}", stacklevel=2)

"""Evaluation during training, on every rank: each rank takes test images rank, rank + world, ...
and the sums are reduced, so exactly N images count whatever the world size.

The VAE test loss is the seed's number: BCE summed over pixels + KL, per image, in nats.
(FID, KID, precision/recall and the other metrics plug in here as the evaluation issue lands.)
"""

from __future__ import annotations

import torch

from gen_dist.data import to_model_range
from gen_dist.losses import kl_per_dim, vae_terms


def strided_batches(n: int, rank: int, world: int, batch: int):
    idx = torch.arange(rank, n, world)
    for i in range(0, len(idx), batch):
        yield idx[i : i + batch]


@torch.no_grad()
def evaluate_vae(vae, dataset, cfg, engine) -> dict:
    """Test-split reconstruction metrics of a VAE (or the VAE half of a VAE-GAN)."""
    vae.eval()
    n = min(len(dataset.images), cfg.eval.limit or len(dataset.images))
    # one latent noise per test image, drawn from a fixed generator: the same on any world size
    eps_all = torch.randn(n, cfg.model.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 12345))
    sums = torch.zeros(6, dtype=torch.float64, device=engine.device)
    kl_dims = torch.zeros(cfg.model.latent_dim, dtype=torch.float64, device=engine.device)
    for idx in strided_batches(n, engine.rank, engine.world, cfg.eval.batch_size):
        x = to_model_range(dataset.images[idx].to(engine.device), cfg.data.image_size, signed=False)
        recon, mu, logvar = vae(x, eps_all[idx].to(engine.device))
        bce, kl = vae_terms(recon, x, mu, logvar, "bce")
        mse_sum, _ = vae_terms(recon, x, mu, logvar, "mse")
        rec = bce if cfg.loss.recon == "bce" else mse_sum
        sums += torch.stack([(rec + kl).sum(), bce.sum(), kl.sum(), mse_sum.sum() / x[0].numel(),
                             torch.tensor(float(len(idx)), device=x.device), mse_sum.sum()]).double()
        kl_dims += kl_per_dim(mu, logvar).sum(0).double()
    sums, kl_dims = engine.reduce_sum(sums), engine.reduce_sum(kl_dims)
    count = sums[4]
    vae.train()
    kl_dims = (kl_dims / count).cpu()
    return {
        "test/loss": (sums[0] / count).item(),  # negative ELBO per image, in nats
        "test/recon_bce": (sums[1] / count).item(),
        "test/kl": (sums[2] / count).item(),
        "test/mse": (sums[3] / count).item(),  # per pixel, images in [0, 1]
        "test/active_dims": int((kl_dims > 0.01).sum()),  # latents the encoder uses (KL > 0.01 nats)
        "test/images": int(count.item()),
    }

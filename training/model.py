"""The variational autoencoder: encoder -> (mu, logvar), reparameterised sample, decoder.

The public methods are the domain verbs and the artifact's TorchScript interface
(see `app.artifact`): `encode`, `decode`, `elbo`, `iwae`, `score`, `pixel_nll`, and
`prior_latents`, which maps the caller's noise to latents of the sampling prior.
Every exported method is deterministic except `elbo`/`iwae`, whose noise count the
caller chooses; the anomaly `score` uses noise frozen into the module at build time,
so an image's score never depends on which batch it is computed in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F  # noqa: N812  (the PyTorch convention)
from torch import Tensor, nn

from training.complexity import GenericDensity

if TYPE_CHECKING:
    from typing import TypeAlias

    from training.spatial import SpatialVAE

    AnyVAE: TypeAlias = "VAE | SpatialVAE"  # every network `build_model` makes

# "spatial": fully convolutional, a latent map and an anomaly map head (`training.spatial`)
Architecture = Literal["mlp", "conv", "spatial"]
Likelihood = Literal["bernoulli", "gaussian"]
# "-ic": corrected for input complexity (see `VAE.complexity_nll`); "map": the largest
# value of the spatial model's smoothed anomaly map
ScoreKind = Literal["nelbo", "iwae", "recon", "nelbo-ic", "iwae-ic", "recon-ic", "map"]

LOG_2PI = math.log(2.0 * math.pi)
LEGACY_MIN_SIGMA = math.exp(-6.0)  # the floor before it was a setting: configs without one
MAX_LOG_SIGMA = 2.0


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved inside checkpoints."""

    architecture: Architecture = "conv"
    channels: int = 1
    image_size: int = 28
    latent_dim: int = 32
    hidden: tuple[int, ...] = (32, 64, 64)
    dense: int = 512
    likelihood: Likelihood = "bernoulli"
    score: ScoreKind = "nelbo-ic"
    score_samples: int = 1
    score_seed: int = 0
    min_sigma: float = LEGACY_MIN_SIGMA  # floor of the Gaussian likelihood's sigma
    # spatial only: the image size it takes, and how it trains and smooths its map
    work_size: tuple[int, int] | None = None  # (height, width); None: image_size squared
    latent_channels: int = 8  # per 8x8 cell; latent_dim is then the whole map's size
    crop: int = 64  # training crop side
    crops_per_image: int = 2
    map_hidden: tuple[int, ...] = (16, 32, 64)  # the map head's U-Net widths
    map_sigma: float = 4.0  # px of Gaussian smoothing of the anomaly map

    @property
    def image_height(self) -> int:
        return self.work_size[0] if self.work_size else self.image_size

    @property
    def image_width(self) -> int:
        return self.work_size[1] if self.work_size else self.image_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        raw = dict(raw)
        for key in ("hidden", "map_hidden", "work_size"):
            if raw.get(key) is not None:
                raw[key] = tuple(raw[key])
        return cls(**raw)


def build_model(config: ModelConfig) -> AnyVAE:
    """The network `config` describes, with fresh weights."""
    if config.architecture == "spatial":
        from training.spatial import SpatialVAE  # it builds on this module

        return SpatialVAE(config)
    return VAE(config)


@dataclass
class LossWeights:
    """Knobs against KL vanishing: beta-VAE weight, linear KL warm-up, free bits."""

    beta: float = 1.0
    warmup_steps: int = 0
    free_bits: float = 0.0


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per dimension, closed form.

    Kingma & Welling (2014), Appendix B: -1/2 * (1 + log sigma^2 - mu^2 - sigma^2).
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def mixture_latents(
    u: Tensor, eps: Tensor, cdf: Tensor, means: Tensor, scale_tril: Tensor
) -> Tensor:
    """Draws from a Gaussian mixture given their noise: u (N,) in [0, 1) selects the
    component whose cumulative weight `cdf` (K,) first exceeds it; eps (N, D) ~ N(0, I)
    becomes means[k] + scale_tril[k] @ eps."""
    k = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(max=cdf.shape[0] - 1)  # (N,)
    offset = torch.bmm(scale_tril[k], eps.unsqueeze(-1)).squeeze(-1)  # (N, D)
    return means[k] + offset


def _conv_sizes(image_size: int, levels: int) -> list[int]:
    sizes = [image_size]
    for _ in range(levels):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class ConvEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        in_ch = config.channels
        for out_ch in config.hidden:
            convs.append(nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1))
            in_ch = out_ch
        self.convs = nn.ModuleList(convs)
        side = _conv_sizes(config.image_size, len(config.hidden))[-1]
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch * side * side, config.dense),
            nn.SiLU(),
            nn.Linear(config.dense, 2 * config.latent_dim),
        )

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, 2D)
        h = x
        for conv in self.convs:
            if h.shape[-1] % 2 == 1:  # k=4, s=2, p=1 halves exactly only even sides
                h = F.pad(h, (0, 1, 0, 1))
            h = F.silu(conv(h))
        return self.head(h)


class ConvDecoder(nn.Module):
    """Dense stem to the encoder's smallest grid, then per level: upsample, two 3x3 convs.

    The second conv per level is what lets a small decoder draw sharp strokes; it is
    cheap in weights (the dense layers hold most of them) and bought about 2 nats.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        sizes = _conv_sizes(config.image_size, len(config.hidden))
        chans = list(config.hidden)
        self.first_shape = [chans[-1], sizes[-1], sizes[-1]]
        self.stem = nn.Sequential(
            nn.Linear(config.latent_dim, config.dense),
            nn.SiLU(),
            nn.Linear(config.dense, chans[-1] * sizes[-1] * sizes[-1]),
            nn.SiLU(),
        )
        blocks: list[nn.Module] = [nn.Conv2d(chans[-1], chans[-1], 3, padding=1), nn.SiLU()]
        outs = [*chans[-2::-1], chans[0]]
        in_ch = chans[-1]
        for level, out_ch in enumerate(outs):
            last = level == len(outs) - 1
            target = sizes[-2 - level]
            blocks += [nn.Upsample(size=(target, target), mode="nearest")]
            blocks += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.SiLU()]
            if last:
                blocks.append(nn.Conv2d(out_ch, config.channels, 3, padding=1))
            else:
                blocks += [nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.SiLU()]
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:  # (N, D) -> logits (N, C, H, W)
        h = self.stem(z).view(-1, self.first_shape[0], self.first_shape[1], self.first_shape[2])
        return self.blocks(h)


class MLPEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = config.channels * config.image_size**2
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, 2 * config.latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = config.latent_dim
        for h in reversed(config.hidden):
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, config.channels * config.image_size**2))
        self.net = nn.Sequential(*layers)
        self.shape = [config.channels, config.image_size, config.image_size]

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, self.shape[0], self.shape[1], self.shape[2])


class VAE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.latent_dim = config.latent_dim
        self.gaussian = config.likelihood == "gaussian"
        self.score_kind = config.score.removesuffix("-ic")
        self.score_complexity = config.score.endswith("-ic")
        self.log_2pi = LOG_2PI  # TorchScript reads attributes, not module-level floats
        if config.architecture == "conv":
            self.encoder: nn.Module = ConvEncoder(config)
            self.decoder: nn.Module = ConvDecoder(config)
        else:
            self.encoder = MLPEncoder(config)
            self.decoder = MLPDecoder(config)
        # learned observation noise of the Gaussian likelihood; unused for Bernoulli
        self.log_sigma = nn.Parameter(torch.full((), -2.0))
        # the `-ic` scores' reference density: its own parameters, fitted on the training split
        self.complexity = GenericDensity(self.gaussian)
        self.min_log_sigma = math.log(config.min_sigma)
        self.max_log_sigma = MAX_LOG_SIGMA  # TorchScript reads attributes
        # The sampling prior (`training.prior`): a Gaussian mixture fitted after training,
        # none (N(0, I)) until then. Not in the state dict: checkpoints hold the weights
        # that training learns, the artifact holds the mixture too.
        dim = config.latent_dim
        self.register_buffer("prior_cdf", torch.zeros(0), persistent=False)  # (K,)
        self.register_buffer("prior_means", torch.zeros(0, dim), persistent=False)  # (K, D)
        self.register_buffer("prior_scale_tril", torch.zeros(0, dim, dim), persistent=False)
        generator = torch.Generator().manual_seed(config.score_seed)
        self.register_buffer(
            "score_noise", torch.randn(config.score_samples, config.latent_dim, generator=generator)
        )

    # --- the domain verbs -------------------------------------------------------------
    @torch.jit.export
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) in [0, 1] -> mu, logvar, each (N, D)."""
        h = self.encoder(x)
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    @torch.jit.export
    def decode(self, z: Tensor) -> Tensor:
        """(N, D) -> the mean of p(x|z), (N, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    @torch.jit.export
    def prior_latents(self, u: Tensor, eps: Tensor) -> Tensor:
        """The caller's noise -> latents of the sampling prior, (N, D); deterministic.

        u (N,) uniform in [0, 1) picks a mixture component by its weight, eps (N, D) from
        N(0, I) (times a temperature) places the latent within it: z = mean + L eps, L the
        component's Cholesky factor. Without a fitted mixture the prior is N(0, I): z = eps.
        """
        if self.prior_means.shape[0] == 0:  # type: ignore[union-attr]
            return eps
        return mixture_latents(u, eps, self.prior_cdf, self.prior_means, self.prior_scale_tril)  # type: ignore[arg-type]

    def set_sampling_prior(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        """Carry a Gaussian mixture (K,), (K, D), (K, D, D) as the sampling prior."""
        weights = weights.double() / weights.double().sum()
        self.prior_cdf = weights.cumsum(0).float()
        self.prior_means = means.float()
        self.prior_scale_tril = torch.linalg.cholesky(covariances.double()).float()

    def reparameterize(self, mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
        return mu + eps * torch.exp(0.5 * logvar)

    def _log_sigma(self) -> Tensor:
        """The Gaussian likelihood's log sigma, held at or above the floor (`min_sigma`)."""
        return self.log_sigma.clamp(self.min_log_sigma, self.max_log_sigma)

    def nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-pixel -log p(x|z) in nats, same shape as x."""
        if self.gaussian:
            log_sigma = self._log_sigma()
            mean = torch.sigmoid(logits)
            return 0.5 * ((x - mean) / log_sigma.exp()).pow(2) + log_sigma + 0.5 * self.log_2pi
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass: per-image reconstruction nll (N,), per-dimension KL (N, D), mu."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, torch.randn_like(mu))
        recon = self.nll(self.decoder(z), x).flatten(1).sum(1)
        return recon, gaussian_kl(mu, logvar), mu

    # --- likelihood bounds --------------------------------------------------------------
    def _log_weights(self, x: Tensor, eps: Tensor) -> Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for each noise draw: eps (K, N, D) -> (K, N)."""
        mu, logvar = self.encode(x)
        k, n = eps.shape[0], eps.shape[1]
        z = self.reparameterize(mu.unsqueeze(0), logvar.unsqueeze(0), eps)  # (K, N, D)
        logits = self.decoder(z.reshape(k * n, -1))
        x_rep = x.unsqueeze(0).expand(k, -1, -1, -1, -1).reshape(logits.shape)
        log_px = -self.nll(logits, x_rep).flatten(1).sum(1).view(k, n)
        log_pz = -0.5 * (z.pow(2) + self.log_2pi).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + self.log_2pi + logvar.unsqueeze(0)).sum(-1)
        return log_px + log_pz - log_qz

    def nelbo_with(self, x: Tensor, eps: Tensor) -> Tensor:
        """Negative ELBO (nats per image, (N,)) using the caller's noise (K, N, D)."""
        mu, logvar = self.encode(x)
        k, n = eps.shape[0], eps.shape[1]
        z = self.reparameterize(mu.unsqueeze(0), logvar.unsqueeze(0), eps)
        logits = self.decoder(z.reshape(k * n, -1))
        x_rep = x.unsqueeze(0).expand(k, -1, -1, -1, -1).reshape(logits.shape)
        recon = self.nll(logits, x_rep).flatten(1).sum(1).view(k, n).mean(0)
        return recon + gaussian_kl(mu, logvar).sum(1)

    def iwae_with(self, x: Tensor, eps: Tensor) -> Tensor:
        """Importance-weighted estimate of -log p(x) (nats, (N,)), K = eps.shape[0]."""
        log_w = self._log_weights(x, eps)
        return -(torch.logsumexp(log_w, dim=0) - math.log(eps.shape[0]))

    @torch.jit.export
    def elbo(self, x: Tensor, samples: int) -> Tensor:
        """Negative ELBO in nats per image, averaged over `samples` draws: (N,)."""
        eps = torch.randn(samples, x.shape[0], self.latent_dim, device=x.device, dtype=x.dtype)
        return self.nelbo_with(x, eps)

    @torch.jit.export
    def iwae(self, x: Tensor, samples: int) -> Tensor:
        """Importance-weighted bound on -log p(x) with `samples` draws: (N,)."""
        eps = torch.randn(samples, x.shape[0], self.latent_dim, device=x.device, dtype=x.dtype)
        return self.iwae_with(x, eps)

    @torch.jit.export
    def pixel_nll(self, x: Tensor) -> Tensor:
        """-log p(x|z=mu) per pixel, (N, C, H, W): the anomaly heat map."""
        mu, _ = self.encode(x)
        return self.nll(self.decoder(mu), x)

    def complexity_nll(self, x: Tensor) -> Tensor:
        """-log p(x) under the generic image density (`training.complexity`), nats (N,).

        Subtracted from the VAE's nll by the `-ic` scores: a likelihood ratio against a
        model that knows nothing of the training data's content, only that neighbouring
        pixels are alike (Serra et al., ICLR 2020).
        """
        return self.complexity(x)

    @torch.jit.export
    def score(self, x: Tensor) -> Tensor:
        """The anomaly score in nats, (N,); deterministic, higher is more anomalous."""
        if self.score_kind == "recon":
            base = self.pixel_nll(x).flatten(1).sum(1)
        else:
            # mypy types a buffer as Tensor | Module; a class-level annotation would break scripting
            eps = self.score_noise.to(x.dtype).unsqueeze(1).expand(-1, x.shape[0], -1)  # type: ignore[operator]
            nelbo = self.score_kind == "nelbo"
            base = self.nelbo_with(x, eps) if nelbo else self.iwae_with(x, eps)
        if self.score_complexity:
            return base - self.complexity_nll(x)
        return base

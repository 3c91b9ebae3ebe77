"""The inspection model: a fully convolutional VAE with a latent map, and an anomaly map head.

Built for photos of parts, fabrics, cells or scans at their own resolution, where a
defect is a few pixels wide. Nothing here has a fixed input size:

    encoder   (N, C, H, W) -> mu, logvar: (N, L, H/8, W/8), one latent vector per 8x8 cell
    decoder   (N, L, H/8, W/8) -> the mean of p(x|z): (N, C, H, W)
    map head  a small U-Net on (image, its reconstruction at z = mu) -> (N, 1, H, W),
              the probability that each pixel does not belong, smoothed by a Gaussian

The VAE is trained on random crops as usual (reconstruction + KL to N(0, I) at every
cell), but from crops with made-up intrusions (`training.corruption`) back to the clean
crop, so that its reconstruction shows what normal looks like there; the map head learns
to point at where image and reconstruction disagree in ways normal images do not (as in
DRAEM, Zavrtanik et al., ICCV 2021). The anomaly score is the largest value of the
smoothed map: localized evidence, never an average that dilutes a small defect.

The artifact's methods (see `app.artifact`) all run at the exported image size, so the
latent of an image is its latent map flattened: D = L * (H/8) * (W/8). Internally every
method works on any size that is a multiple of 8.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from training.corruption import corrupt, random_crops
from training.density import PatchDensity
from training.model import LOG_2PI, ModelConfig, gaussian_kl
from training.place import PlaceDensity

MAP_WEIGHT = 10.0  # focal loss weight, as DRAEM's: the map head learns from few pixels
FOCAL_GAMMA = 2.0


def stride_of(config: ModelConfig) -> int:
    """How many pixels one latent cell covers along each side."""
    return 2 ** len(config.hidden)


def latent_shape(config: ModelConfig) -> list[int]:
    """(L, H / stride, W / stride): the latent map of one image of the exported size."""
    stride = stride_of(config)
    return [config.latent_channels, config.image_height // stride, config.image_width // stride]


class SpatialEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = config.channels
        for out_ch in config.hidden:
            layers += [nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1), nn.SiLU()]
            in_ch = out_ch
        layers += [nn.Conv2d(in_ch, in_ch, 3, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(in_ch, 2 * config.latent_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, 2L, H/s, W/s)
        return self.net(x)


class SpatialDecoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        chans = list(config.hidden)
        layers: list[nn.Module] = [
            nn.Conv2d(config.latent_channels, chans[-1], 1),
            nn.SiLU(),
            nn.Conv2d(chans[-1], chans[-1], 3, padding=1),
            nn.SiLU(),
        ]
        in_ch = chans[-1]
        for out_ch in [*chans[-2::-1], max(8, chans[0] // 2)]:
            layers += [nn.Upsample(scale_factor=2.0, mode="nearest")]
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.SiLU()]
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, config.channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:  # (N, L, h, w) -> logits (N, C, s*h, s*w)
        return self.net(z)


class ConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            nn.GroupNorm(4, out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            nn.GroupNorm(4, out_ch),
            nn.SiLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MapHead(nn.Module):
    """A small U-Net: (image, reconstruction) -> per-pixel logit that the pixel is anomalous."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = list(config.map_hidden)
        downs, in_ch = [], 2 * config.channels
        for width in widths:
            downs.append(ConvBlock(in_ch, width))
            in_ch = width
        ups = []
        for width in reversed(widths[:-1]):
            ups.append(ConvBlock(in_ch + width, width))
            in_ch = width
        self.downs = nn.ModuleList(downs)
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(in_ch, 1, 1)

    def forward(self, x: Tensor) -> Tensor:  # (N, 2C, H, W) -> (N, 1, H, W)
        skips: list[Tensor] = []
        h = x
        for index, block in enumerate(self.downs):
            h = block(h if index == 0 else F.avg_pool2d(h, 2))
            skips.append(h)
        for index, block in enumerate(self.ups):
            skip = skips[len(skips) - 2 - index]
            h = F.interpolate(h, size=[skip.shape[2], skip.shape[3]], mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        return self.out(h)


def gaussian_kernel(sigma: float) -> Tensor:
    """A normalised 1-D Gaussian of radius 3 sigma (at least one tap): (K,)."""
    radius = max(1, math.ceil(3.0 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    width = max(sigma, 1e-3)
    kernel = torch.exp(-(taps * taps) / (2.0 * width * width))
    return kernel / kernel.sum()


class SpatialVAE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.stride = stride_of(config)
        self.latent_shape = latent_shape(config)
        self.latent_dim = math.prod(self.latent_shape)
        self.gaussian = config.likelihood == "gaussian"
        self.log_2pi = LOG_2PI
        self.crop = config.crop
        self.crops_per_image = config.crops_per_image
        self.encoder = SpatialEncoder(config)
        self.decoder = SpatialDecoder(config)
        self.map_head = MapHead(config)
        self.density = PatchDensity(config.channels)  # fitted by the pipeline, from the images
        self.place = PlaceDensity(config.channels)  # likewise, at the working size
        self.log_sigma = nn.Parameter(torch.full((), -2.0))
        # How the map head's, the patch density's and the place density's evidence make
        # one map, all chosen after training (`training.selection`): the smoothing in
        # px, each map's centre and scale on clean validation images, and the shares of
        # the patch density's rare and plain evidence and of the place density's (the
        # map head has the rest).
        self.map_sigma = config.map_sigma
        self.head_centre = 0.0
        self.head_scale = 1.0
        self.rare_centre = 0.0
        self.rare_scale = 1.0
        self.plain_centre = 0.0
        self.plain_scale = 1.0
        self.place_centre = 0.0
        self.place_scale = 1.0
        self.rare_share = 0.0
        self.plain_share = 0.0
        self.place_share = 0.0

    # --- the artifact's methods, at the exported size -----------------------------------
    @torch.jit.export
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) in [0, 1] -> mu, logvar, each (N, D) (the latent map, flattened)."""
        mu, logvar = self.encode_map(x)
        return mu.flatten(1), logvar.flatten(1)

    @torch.jit.export
    def decode(self, z: Tensor) -> Tensor:
        """(N, D) -> the mean of p(x|z), (N, C, H, W) in [0, 1]."""
        shape = self.latent_shape
        return torch.sigmoid(self.decoder(z.view(-1, shape[0], shape[1], shape[2])))

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
        """-log p(x|z=mu) per pixel, (N, C, H, W)."""
        mu, _ = self.encode_map(x)
        return self.nll(self.decoder(mu), x)

    @torch.jit.export
    def anomaly_map(self, x: Tensor) -> Tensor:
        """How anomalous each pixel is, (N, 1, H, W) in [0, 1): the smoothed evidence
        squashed by a monotone curve, near 0 on typical normal pixels."""
        return squash(self.smooth(self.evidence(x)))

    @torch.jit.export
    def score(self, x: Tensor) -> Tensor:
        """The anomaly score, (N,): the largest value of the smoothed anomaly map."""
        return self.anomaly_map(x).flatten(1).amax(1)

    # --- likelihood bounds with the caller's noise eps (K, N, D), as `VAE`'s ------------
    def nelbo_with(self, x: Tensor, eps: Tensor) -> Tensor:
        """Negative ELBO (nats per image, (N,)) using the caller's noise (K, N, D)."""
        mu, logvar = self.encode_map(x)
        recon = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for k in range(eps.shape[0]):
            z = mu + eps[k].view_as(mu) * torch.exp(0.5 * logvar)
            recon = recon + self.nll(self.decoder(z), x).flatten(1).sum(1)
        return recon / eps.shape[0] + gaussian_kl(mu, logvar).flatten(1).sum(1)

    def iwae_with(self, x: Tensor, eps: Tensor) -> Tensor:
        """Importance-weighted estimate of -log p(x) (nats, (N,)), K = eps.shape[0]."""
        mu, logvar = self.encode_map(x)
        weights: list[Tensor] = []
        for k in range(eps.shape[0]):
            noise = eps[k].view_as(mu)
            z = mu + noise * torch.exp(0.5 * logvar)
            log_px = -self.nll(self.decoder(z), x).flatten(1).sum(1)
            log_pz = -0.5 * (z.pow(2) + self.log_2pi).flatten(1).sum(1)
            log_qz = -0.5 * (noise.pow(2) + self.log_2pi + logvar).flatten(1).sum(1)
            weights.append(log_px + log_pz - log_qz)
        return -(torch.logsumexp(torch.stack(weights), dim=0) - math.log(eps.shape[0]))

    # --- any size that is a multiple of the stride --------------------------------------
    def encode_map(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def reconstruct(self, x: Tensor) -> Tensor:
        mu, _ = self.encode_map(x)
        return torch.sigmoid(self.decoder(mu))

    def map_logits(self, x: Tensor) -> Tensor:
        return self.map_head(torch.cat([x, self.reconstruct(x)], dim=1))

    def head_map(self, x: Tensor) -> Tensor:
        """The map head's probability that each pixel is anomalous, unsmoothed."""
        return torch.sigmoid(self.map_logits(x))

    def evidence(self, x: Tensor) -> Tensor:
        """The four maps, each in units of a clean image's typical peak above its mean
        pixel, mixed by their shares: (N, 1, H, W), unsmoothed. A map without a share is
        not computed."""
        blank = torch.zeros_like(x[:, :1])
        uses_head = self.rare_share + self.plain_share + self.place_share < 1.0
        uses_density = self.rare_share > 0.0 or self.plain_share > 0.0
        head = self.head_map(x) if uses_head else blank
        rare = self.rare_share > 0.0
        density = self.density(x, rare) if uses_density else blank.repeat(1, 2, 1, 1)
        place = self.place(x) if self.place_share > 0.0 else blank
        return self.mix(head, density, place)

    def mix(self, head: Tensor, density: Tensor, place: Tensor) -> Tensor:
        """The head's map (N, 1, H, W), the patch density's two (N, 2, H, W) and the place
        density's (N, 1, H, W), scaled and mixed by their shares: the one formula
        training's choice and the artifact use."""
        head_share = 1.0 - self.rare_share - self.plain_share - self.place_share
        # A map without a share adds an exact 0, so it is skipped: the same values, and
        # the choice, which mixes every share at every smoothing, runs about twice as fast.
        mixed = head
        empty = True
        if head_share != 0.0:
            mixed = head_share * (head - self.head_centre) / self.head_scale
            empty = False
        if self.rare_share != 0.0:
            rare = self.rare_share * ((density[:, :1] - self.rare_centre) / self.rare_scale)
            mixed = rare if empty else mixed + rare
            empty = False
        if self.plain_share != 0.0:
            plain = self.plain_share * ((density[:, 1:] - self.plain_centre) / self.plain_scale)
            mixed = plain if empty else mixed + plain
            empty = False
        if self.place_share != 0.0:
            at_place = self.place_share * ((place - self.place_centre) / self.place_scale)
            mixed = at_place if empty else mixed + at_place
            empty = False
        return torch.zeros_like(head) if empty else mixed

    def smooth(self, maps: Tensor) -> Tensor:
        """Separable Gaussian blur with reflected edges: (N, 1, H, W) -> the same."""
        kernel = gaussian_kernel(self.map_sigma).to(device=maps.device, dtype=maps.dtype)
        radius = (kernel.shape[0] - 1) // 2
        if radius >= maps.shape[2] or radius >= maps.shape[3]:
            return maps
        rows = F.conv2d(
            F.pad(maps, [radius, radius, 0, 0], mode="reflect"), kernel.view(1, 1, 1, -1)
        )
        cols = kernel.view(1, 1, -1, 1)
        return F.conv2d(F.pad(rows, [0, 0, radius, radius], mode="reflect"), cols)

    def nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-pixel -log p(x|z) in nats, same shape as x."""
        if self.gaussian:
            log_sigma = self.log_sigma.clamp(-6.0, 2.0)
            mean = torch.sigmoid(logits)
            return 0.5 * ((x - mean) / log_sigma.exp()).pow(2) + log_sigma + 0.5 * self.log_2pi
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none")

    # --- training -----------------------------------------------------------------------
    @torch.jit.unused
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Training pass on random crops of the images `x` with made-up intrusions:
        reconstruction nll of the clean crop (N,), KL per latent channel (N, L), the
        latent means, and the map head's loss (N,), all per crop."""
        clean = random_crops(x, self.crop, self.crops_per_image)
        corrupted, mask = corrupt(clean)
        mu, logvar = self.encode_map(corrupted)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = self.nll(self.decoder(z), clean).flatten(1).sum(1)
        kl = gaussian_kl(mu, logvar).sum(dim=(2, 3))  # (N, L)
        with torch.no_grad():  # the map head learns from it; the VAE does not learn through it
            reconstruction = torch.sigmoid(self.decoder(mu))
        logits = self.map_head(torch.cat([corrupted, reconstruction], dim=1))
        return recon, kl, mu, map_loss(logits, mask)


def squash(evidence: Tensor) -> Tensor:
    """Evidence (0 = a clean image's mean pixel, 1 = its typical peak) -> [0, 1): about
    0.08 at 0, 0.5 at 1, 0.67 at 2; strictly increasing, so a map's peak is still the
    peak of its evidence and rankings do not change.

    s / (1 + s) rather than 1 - exp(-s): the exponential reaches 1.0 in float32 near
    s = 17, so every strongly anomalous image scored exactly 1.0, a threshold taken
    among them was 1.0, and nothing could score above it. The ratio stays below 1 and
    strictly increasing up to evidence of about 10^7."""
    s = F.softplus(evidence, beta=8.0)
    return s / (1.0 + s)


def map_loss(logits: Tensor, mask: Tensor) -> Tensor:
    """Focal loss (gamma 2) weighted up plus plain BCE, summed over pixels: (N,).

    Few pixels are anomalous, so plain BCE learns to say "normal" everywhere; the focal
    term (Lin et al., ICCV 2017) keeps the gradient on the pixels it still gets wrong.
    """
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    p = torch.sigmoid(logits)
    right = p * mask + (1 - p) * (1 - mask)
    focal = bce * (1 - right).pow(FOCAL_GAMMA)
    return (MAP_WEIGHT * focal + bce).flatten(1).sum(1)

"""The Turbo VAE decoder: a small student of the Wan2.2 VAE decoder, for fast 540p and 1080p decoding.

The official pipeline decodes with it by default (official ``inference/model/turbo_vaed/``,
``TurboVAED``; ``video_generate.py``, ``decode_video``). This is our own implementation of the
same network with the same state-dict keys and numerics, so the official student checkpoint loads
strictly:

* every convolution is "same"-padded: zeros in space, the edge frame repeated in time;
* RMS normalisation over channels without weights (eps 1e-8; 1e-6 on a block's shortcut);
* up blocks: an optional width change, a 2x nearest upsample (in time too, by a convolution that
  doubles the channels and interleaves the halves as frames), then residual blocks; in an
  upsampling block the first activation of every residual block is a ReLU instead of a SiLU;
* the last 2x of the 16x spatial stride is an unpatchify (or a conv + pixel shuffle).

Decoding runs the official sliding window over latent frames (a first chunk, then fixed steps,
each with one latent frame of context on each side whose pixels are dropped), so the output equals
the official one. For 1080p, :meth:`TurboVAE.decode` can also cut the frame into overlapping
spatial tiles blended linearly; that bounds the activation memory by the tile size instead of the
frame size. Pixels near a tile's cut edge get no weight, so the result equals whole-frame
decoding where that margin covers the receptive field, and differs slightly where it does not
(the official code does not tile).

Loading from files is in :mod:`.turbo_load`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import Tensor, nn

from ..contract import VIDEO_LATENT_CHANNELS, VIDEO_STRIDE
from .video import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

_NORM_EPS = 1e-8  # the official RMSNorm eps inside residual blocks and before the output convolutions
#: Spatial tiling of :class:`~hhtune.encoders.turbo_load.TurboVideoDecoder`, in latent pixels: frames up to
#: 72 latents (1152 px) a side, 540p included, decode whole as upstream; 1080p (68 x 120) in two 68 x 68 tiles
#: sharing 16 latents (4 of context on each side, 8 blended): 68/120 of the decoder's whole-frame activations.
TILE_LATENTS = 72
TILE_OVERLAP = 16


class TurboVAEConfig(BaseModel):
    """The official ``TurboVAED`` arguments that shape the decoder (the student's JSON config).

    Lists run from the widest (latent side) to the narrowest level reversed, as in the official
    config: ``decoder_block_out_channels[-1]`` is the width right after the input convolution.
    """

    model_config = ConfigDict(extra="forbid")

    # Defaults are the official ones, so a JSON file that leaves a key out means what it means upstream.
    latent_channels: int = 128
    out_channels: int = 3
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    decoder_layers_per_block: tuple[int, ...] = (4, 3, 3, 3, 4)
    decoder_spatio_temporal_scaling: tuple[bool, ...] = (True, True, True, False)
    decoder_spatio_only: tuple[bool, ...] = (False, False, False, False)
    decoder_is_dw_conv: tuple[bool, ...] = (False, False, False, False, False)
    decoder_dw_kernel_size: int = 3
    decoder_causal: bool = False
    resnet_norm_eps: float = 1e-6
    patch_size: int = 4
    use_unpatchify: bool = False
    first_chunk_size: int = 3
    step_size: int = 5
    spatial_compression_ratio: int = 16
    temporal_compression_ratio: int = 4

    @model_validator(mode="after")
    def _check(self) -> TurboVAEConfig:
        n = len(self.decoder_block_out_channels)
        for name, want in (("decoder_layers_per_block", n + 1), ("decoder_is_dw_conv", n + 1),
                           ("decoder_spatio_temporal_scaling", n), ("decoder_spatio_only", n)):  # fmt: skip
            if len(getattr(self, name)) != want:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected {want} "
                                 f"(decoder_block_out_channels has {n})")  # fmt: skip
        if self.latent_channels != VIDEO_LATENT_CHANNELS:
            raise ValueError(f"latent_channels is {self.latent_channels}; HappyHorse's latents have "
                             f"{VIDEO_LATENT_CHANNELS} (the Wan2.2 VAE)")  # fmt: skip
        if self.patch_size != 2 or self.decoder_causal:
            raise ValueError("the Turbo VAE decoder takes patch_size 2 and decoder_causal false (as the official one)")
        if self.first_chunk_size < 1 or self.step_size < 1:
            raise ValueError("first_chunk_size and step_size must be at least 1")
        ups = self.decoder_spatio_temporal_scaling
        temporal = [s and not o for s, o in zip(ups, self.decoder_spatio_only)]
        spatial, time = 2 ** (sum(ups) + 1), 2 ** sum(temporal)  # +1: the unpatchify / pixel shuffle
        if (time, spatial, spatial) != VIDEO_STRIDE or self.spatial_compression_ratio != spatial \
                or self.temporal_compression_ratio != time:  # fmt: skip
            raise ValueError(f"the decoder's levels upsample {time}x{spatial}x{spatial} (config ratios "
                             f"{self.temporal_compression_ratio}x{self.spatial_compression_ratio}); the Wan2.2 "
                             f"latents need {'x'.join(map(str, VIDEO_STRIDE))}")  # fmt: skip
        return self


def _rms_norm(x: Tensor, eps: float) -> Tensor:
    """RMS over channels (dim 1) computed in float32, cast back to the input dtype (official ``RMSNorm``)."""
    return (x * torch.rsqrt(x.float().pow(2).mean(1, keepdim=True) + eps)).to(x.dtype)


class _Conv3d(nn.Module):
    """A 3-D convolution padded to keep the size: zeros in space, the first/last frame repeated in time.

    ``separable`` makes it depthwise (one kernel per channel) followed by a 1x1x1 channel mix.
    """

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int, int], separable: bool = False) -> None:
        super().__init__()
        kt, kh, kw = kernel if isinstance(kernel, tuple) else (kernel,) * 3
        self.time_pad = (kt - 1) // 2
        pad = (0, kh // 2, kw // 2)
        if separable:
            self.depthwise_conv = nn.Conv3d(cin, cin, (kt, kh, kw), padding=pad, groups=cin)
            self.pointwise_conv = nn.Conv3d(cin, cout, 1)
        else:
            self.conv = nn.Conv3d(cin, cout, (kt, kh, kw), padding=pad)

    def forward(self, x: Tensor) -> Tensor:
        if self.time_pad:
            p = self.time_pad
            x = torch.cat([x[:, :, :1].expand(-1, -1, p, -1, -1), x, x[:, :, -1:].expand(-1, -1, p, -1, -1)], dim=2)
        if hasattr(self, "conv"):
            return self.conv(x)
        return self.pointwise_conv(self.depthwise_conv(x))


class _ResBlock(nn.Module):
    """norm, act, conv, norm, SiLU, conv, plus the input (normalised and projected when the width changes)."""

    def __init__(self, cin: int, cout: int, eps: float, separable: bool, kernel: int, relu_first: bool) -> None:
        super().__init__()
        k = kernel if separable else 3
        self.relu_first, self.eps = relu_first, eps
        self.conv1 = _Conv3d(cin, cout, k, separable)
        self.conv2 = _Conv3d(cout, cout, k, separable)
        self.conv_shortcut = _Conv3d(cin, cout, 1, separable) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = _rms_norm(x, _NORM_EPS)
        h = self.conv1(F.relu(h) if self.relu_first else F.silu(h))
        h = self.conv2(F.silu(_rms_norm(h, _NORM_EPS)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(_rms_norm(x, self.eps))
        return h + x


class _Nearest2x(nn.Module):
    """2x nearest upsampling of ``[N, C, H, W]`` computed in float32, returned in the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class _Upsample(nn.Module):
    """2x in space per frame (nearest + 3x3 conv); with ``temporal`` also 2x in time first.

    In time, a (3, 1, 1) convolution doubles the channels and the two halves become consecutive
    frames (first half first). The first chunk of a video drops the first new frame, so its
    ``T`` latent frames give ``2T - 1``, as the Wan causal layout wants (1 + 4k frames).
    """

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(_Nearest2x(), nn.Conv2d(dim, dim, 3, padding=1))
        self.time_conv = _Conv3d(dim, 2 * dim, (3, 1, 1)) if temporal else None

    def forward(self, x: Tensor, first_chunk: bool) -> Tensor:
        b, c, t, h, w = x.shape
        if self.time_conv is not None:
            x = self.time_conv(x).view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            if first_chunk:
                x = x[:, :, 1:]
        frames = self.resample(x.transpose(1, 2).flatten(0, 1))
        return frames.unflatten(0, (b, -1)).transpose(1, 2)


class _ShuffleUp2x(nn.Module):
    """2x in space per frame by a 3x3 conv and a pixel shuffle (channels / 4): the path without unpatchify."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([F.pixel_shuffle(self.conv(x[:, :, t]), 2) for t in range(x.shape[2])], dim=2)


class _MidBlock(nn.Module):
    def __init__(self, dim: int, layers: int, eps: float, separable: bool, kernel: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(_ResBlock(dim, dim, eps, separable, kernel, False) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resnets:
            x = block(x)
        return x


class _UpBlock(nn.Module):
    """Width change (a residual block), then an optional upsample, then ``layers`` residual blocks."""

    def __init__(self, cin: int, cout: int, layers: int, eps: float, scale: bool, spatial_only: bool,
                 separable: bool, kernel: int) -> None:  # fmt: skip
        super().__init__()
        self.conv_in = _ResBlock(cin, cout, eps, separable, kernel, False) if cin != cout else None
        self.upsamplers = nn.ModuleList([_Upsample(cout, temporal=not spatial_only)]) if scale else None
        self.resnets = nn.ModuleList(_ResBlock(cout, cout, eps, separable, kernel, scale) for _ in range(layers))

    def forward(self, x: Tensor, first_chunk: bool) -> Tensor:
        if self.conv_in is not None:
            x = self.conv_in(x)
        for up in self.upsamplers or ():
            x = up(x, first_chunk)
        for block in self.resnets:
            x = block(x)
        return x


class _Decoder(nn.Module):
    """Latents (de-normalised) -> pixels, one temporal chunk at a time (official ``TurboVAEDDecoder3d``)."""

    def __init__(self, c: TurboVAEConfig) -> None:
        super().__init__()
        widths = c.decoder_block_out_channels[::-1]
        layers, separable = c.decoder_layers_per_block[::-1], c.decoder_is_dw_conv[::-1]
        scaling, spatial_only = c.decoder_spatio_temporal_scaling[::-1], c.decoder_spatio_only[::-1]
        k, eps = c.decoder_dw_kernel_size, c.resnet_norm_eps
        self.unpatchify = c.use_unpatchify
        self.conv_in = _Conv3d(c.latent_channels, widths[0], 3)
        self.mid_block = _MidBlock(widths[0], layers[0], eps, separable[0], k)
        ins = (widths[0], *widths[:-1])
        self.up_blocks = nn.ModuleList(
            _UpBlock(ins[i], widths[i], layers[i + 1], eps, scaling[i], spatial_only[i], separable[i + 1], k)
            for i in range(len(widths))
        )
        width, out = widths[-1], c.out_channels
        if self.unpatchify:
            out *= c.patch_size**2
        else:
            self.upsampler2d_1 = _ShuffleUp2x(width)
            width //= 4
        self.conv_out = _Conv3d(width, out, 3)

    def forward(self, z: Tensor, first_chunk: bool) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x, first_chunk)
        if not self.unpatchify:
            x = self.upsampler2d_1(F.silu(_rms_norm(x, _NORM_EPS)))
        x = self.conv_out(F.silu(_rms_norm(x, _NORM_EPS)))
        return _unpatchify(x) if self.unpatchify else x


def _unpatchify(x: Tensor, p: int = 2) -> Tensor:
    """``[B, C*p*p, T, H, W]`` -> ``[B, C, T, H*p, W*p]``; channel ``c*p*p + j*p + i`` is pixel row ``i``, column ``j``.

    (The official ``unpatchify`` order: the column offset is the outer one, unlike ``pixel_shuffle``.)
    """
    b, cpp, t, h, w = x.shape
    x = x.view(b, cpp // (p * p), p, p, t, h, w)  # [b, c, j, i, t, h, w]
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


class TurboVAE(nn.Module):
    """The Turbo VAE decoder; state-dict keys are the official ``TurboVAED``'s (all under ``decoder.``)."""

    def __init__(self, config: TurboVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = _Decoder(config)

    @torch.no_grad()
    def decode(self, z: Tensor, tile: int | None = None, overlap: int = TILE_OVERLAP,
               output_device: torch.device | str | None = None) -> Tensor:  # fmt: skip
        """Normalised latents ``[B, 48, T, h, w]`` -> frames ``[B, 3, 4(T-1)+1, 16h, 16w]``, unclamped.

        The latents are de-normalised with the Wan2.2 statistics and decoded in the model's dtype by
        the official sliding window, so without ``tile`` the result is the official one. ``tile``
        (latent pixels) decodes spatial tiles of at most ``tile x tile`` latents that share
        ``overlap`` latents with their neighbours, blended linearly there. Frames are gathered on
        ``output_device`` (default: the latents' device; "cpu" keeps a 1080p clip off the GPU),
        in the model's dtype.
        """
        dtype = next(self.parameters()).dtype
        z = _denormalise(z.to(dtype)).to(dtype)
        out_device = torch.device(output_device) if output_device is not None else z.device
        h, w = z.shape[-2:]
        if tile is None or (h <= tile and w <= tile):
            return self._sliding_window(z, out_device)
        if not 0 <= overlap < tile:
            raise ValueError(f"tile overlap must be in [0, tile), got overlap {overlap} with tile {tile}")
        return self._tiled(z, tile, overlap, out_device)

    def _sliding_window(self, z: Tensor, out_device: torch.device) -> Tensor:
        """The official temporal chunking: pad to ``first + k*step`` frames, decode with one frame of context."""
        first, step, r = self.config.first_chunk_size, self.config.step_size, self.config.temporal_compression_ratio
        n = z.shape[2]
        pad = first - n if n < first else (-(n - first)) % step
        if pad:
            z = torch.cat([z, z[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        n += pad
        if n == first:
            chunks = [self.decoder(z, first_chunk=True).to(out_device)]
        else:
            chunks = [self.decoder(z[:, :, : first + 1], first_chunk=True)[:, :, :-r].to(out_device)]
            for i in range(first, n, step):
                last = i + step == n
                out = self.decoder(z[:, :, i - 1 : i + step + (0 if last else 1)], first_chunk=False)
                chunks.append(out[:, :, r : (None if last else -r)].to(out_device))
        video = torch.cat(chunks, dim=2)
        return video[:, :, : video.shape[2] - pad * r]

    def _tiled(self, z: Tensor, tile: int, overlap: int, out_device: torch.device) -> Tensor:
        s = self.config.spatial_compression_ratio
        b, _, t, h, w = z.shape
        frames = (t - 1) * self.config.temporal_compression_ratio + 1
        out = torch.zeros(b, self.config.out_channels, frames, h * s, w * s, device=out_device)
        weight = torch.zeros(1, 1, 1, h * s, w * s, device=out_device)
        for y, th in _tile_spans(h, tile, overlap):
            for x, tw in _tile_spans(w, tile, overlap):
                part = self._sliding_window(z[..., y : y + th, x : x + tw], out_device).float()
                ramp = _ramp(th, y, h, overlap, s, out_device)[:, None] * _ramp(tw, x, w, overlap, s, out_device)
                out[..., y * s : (y + th) * s, x * s : (x + tw) * s] += part * ramp
                weight[..., y * s : (y + th) * s, x * s : (x + tw) * s] += ramp
        return (out / weight).to(next(self.parameters()).dtype)


def _denormalise(z: Tensor) -> Tensor:
    """Normalised latents -> the VAE's: ``z / (1 / std) + mean`` in float32 (the official order of operations)."""
    mean = torch.tensor(WAN22_LATENTS_MEAN, device=z.device).view(1, -1, 1, 1, 1)
    inv_std = (1.0 / torch.tensor(WAN22_LATENTS_STD, device=z.device)).view(1, -1, 1, 1, 1)
    return z / inv_std + mean


def _tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, length)`` of the fewest equal tiles of at most ``tile`` covering ``size`` with ``overlap`` shared."""
    n = max(1, -(-(size - overlap) // (tile - overlap)))
    length = -(-(size + (n - 1) * overlap) // n)
    return [(min(i * (length - overlap), size - length), length) for i in range(n)]


def _ramp(length: int, start: int, size: int, overlap: int, s: int, device: torch.device) -> Tensor:
    """Blend weights along one axis of a tile (pixels) for each side shared with a neighbour.

    Across the ``overlap`` shared with a neighbour the weight is 0 for the first quarter (pixels
    that saw the tile's cut edge), rises linearly over the middle half and is 1 after; the
    neighbour's mirror weight makes the pair sum to 1. Where the first quarter covers the
    decoder's receptive field, tiled decoding equals whole-frame decoding.
    """
    band, margin = overlap * s, (overlap // 4) * s
    ramp = torch.ones(length * s, device=device)
    if band:
        rise = ((torch.arange(band, device=device, dtype=torch.float32) - margin + 1) / (band - 2 * margin + 1))
        rise = rise.clamp(0, 1)
        if start > 0:
            ramp[:band] = rise
        if start + length < size:
            ramp[-band:] = torch.minimum(ramp[-band:], rise.flip(0))
    return ramp

"""The HappyHorse single-stream transformer, readable in one file.

State-dict keys, shapes, dtypes and numerics match the official ``DiTModel``
(daVinci-MagiHuman ``inference/model/dit/dit_module.py``):

* bf16 weights in every block linear, fp32 embedders, norms, RoPE bands and output heads;
* block linears take bf16 inputs and return bf16, the residual stream is fp32;
* multi-modality RMSNorm scales by ``(weight + 1)``; sandwich layers (``mm_layers``)
  hold three experts stacked along the output dim, in the order video, audio, text;
* ``linear_qkv`` packs q, k, v and one sigmoid gate per query head;
* SwiGLU7 (interleaved glu/linear halves, clamped at 7) or GELU7 in the MLP.

Where we differ from the official code, the maths is the same but the layout is not:
the official model sorts tokens by modality and runs one packed sequence through
flash-attn; we keep each sample's ``[video, audio, text]`` segments contiguous in a
``[B, L, C]`` batch, so expert dispatch is slicing. Padding is sliced off where it can be
(at batch 1, all of it) and what is left is masked by the kernel ``model.attention``
chooses (:mod:`hhtune.model.attention`), so samples never attend to each other.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from ..contract import ComputeDtype
from .attention import (
    UNMASKED,
    AttentionBackend,
    AttentionPlan,
    LocalWindow,
    TokenGroups,
    attend,
    check_backend,
    plan_forward,
)
from .config import ModelConfig
from .linears import BF16Linear, ExpertLinear, Segments
from .offload import OffloadHooks, offloaded_activations
from .packing import Modality, padded_audio_coords, padded_text_coords, patchify, unpatchify, video_coords
from .precision import resolve_compute_dtype
from .primitives import MultiModalityRMSNorm, gelu7, swiglu7
from .rope import FourierRope, apply_rope, check_rope_coords

# --------------------------------------------------------------------------- linears


def _linear(in_features: int, out_features: int, multimodal: bool) -> nn.Module:
    return ExpertLinear(in_features, out_features) if multimodal else BF16Linear(in_features, out_features)


def _call_linear(linear: nn.Module, x: Tensor, segments: Segments) -> Tensor:
    return linear(x, segments) if isinstance(linear, ExpertLinear) else linear(x)


# --------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    """Self-attention with GQA, q/k RMSNorm, Fourier RoPE and per-head sigmoid gating."""

    def __init__(self, config: ModelConfig, multimodal: bool, local: bool = False) -> None:
        super().__init__()
        n = 3 if multimodal else 1
        self.local = local  # attends within the frame window (AttentionPlan.local)
        self.num_heads_q, self.num_heads_kv, self.head_dim = config.num_heads_q, config.num_heads_kv, config.head_dim
        self.gating = config.enable_attn_gating
        self.split_sizes = [config.q_width, config.kv_width, config.kv_width, config.gate_width]
        self.pre_norm = MultiModalityRMSNorm(config.hidden_size, n)
        self.linear_qkv = _linear(config.hidden_size, config.qkv_width, multimodal)
        self.linear_proj = _linear(config.q_width, config.hidden_size, multimodal)
        self.q_norm = MultiModalityRMSNorm(config.head_dim, n)
        self.k_norm = MultiModalityRMSNorm(config.head_dim, n)
        self.precision: ComputeDtype = "auto"

    def forward(self, h: Tensor, rope: tuple[Tensor, Tensor], seg: Segments, plan: AttentionPlan) -> Tensor:
        b, length, _ = h.shape
        dtype = resolve_compute_dtype(self.precision, h.device)
        x = self.pre_norm(h, seg).to(dtype)
        qkv = _call_linear(self.linear_qkv, x, seg).float()
        q, k, v, g = torch.split(qkv, self.split_sizes, dim=-1)
        q = self.q_norm(q.reshape(b, length, self.num_heads_q, self.head_dim), seg)
        k = self.k_norm(k.reshape(b, length, self.num_heads_kv, self.head_dim), seg)
        v = v.reshape(b, length, self.num_heads_kv, self.head_dim)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # In bf16 compute, q, k, v are rounded to bf16 as the official flash-attn call does. On
        # CUDA the softmax runs in SDPA's bf16 flash kernels; elsewhere there is no bf16 flash
        # kernel, so we take the exact softmax in fp32 on the same rounded inputs. In fp32
        # compute nothing is rounded.
        softmax = torch.bfloat16 if dtype == torch.bfloat16 and h.is_cuda else torch.float32
        q, k, v = (t.to(dtype).to(softmax) for t in (q, k, v))
        if self.local:
            if plan.local is None:
                raise ValueError("a local attention layer needs the plan's local window (AttentionPlan.local); "
                                 "call the model, or build it with HappyHorseTransformer.attention_plan")
            plan = plan.local
        out = attend(q, k, v, plan).to(dtype)
        if self.gating:
            out = out * torch.sigmoid(g).unsqueeze(-1)
        out = out.reshape(b, length, -1).to(dtype)
        return _call_linear(self.linear_proj, out, seg)


class MLP(nn.Module):
    """Pre-normed MLP: SwiGLU7 (gated, 8/3 width) or GELU7 (4x width)."""

    def __init__(self, config: ModelConfig, multimodal: bool, layer: int) -> None:
        super().__init__()
        n = 3 if multimodal else 1
        self.activation = gelu7 if layer in config.gelu7_layers else swiglu7
        features = config.linear_features(layer)
        self.pre_norm = MultiModalityRMSNorm(config.hidden_size, n)
        self.up_gate_proj = _linear(*features["up_gate_proj"], multimodal)
        self.down_proj = _linear(*features["down_proj"], multimodal)
        self.precision: ComputeDtype = "auto"

    def forward(self, h: Tensor, seg: Segments) -> Tensor:
        dtype = resolve_compute_dtype(self.precision, h.device)
        x = self.pre_norm(h, seg).to(dtype)
        x = _call_linear(self.up_gate_proj, x, seg).float()
        x = self.activation(x).to(dtype)
        return _call_linear(self.down_proj, x, seg).float()


class TransformerLayer(nn.Module):
    """One pre-norm block (optionally sandwich post-norms) over the fp32 residual stream."""

    def __init__(self, config: ModelConfig, index: int) -> None:
        super().__init__()
        multimodal = index in config.mm_layers
        self.attention = Attention(config, multimodal, local=index in config.local_attn_layers)
        self.mlp = MLP(config, multimodal, index)
        self.post_norm = index in config.post_norm_layers
        if self.post_norm:
            n = 3 if multimodal else 1
            self.attn_post_norm = MultiModalityRMSNorm(config.hidden_size, n)
            self.mlp_post_norm = MultiModalityRMSNorm(config.hidden_size, n)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, seg: Segments, plan: AttentionPlan) -> Tensor:
        a = self.attention(h, (cos, sin), seg, plan)
        if self.post_norm:
            a = self.attn_post_norm(a, seg)
        h = h + a
        m = self.mlp(h, seg)
        if self.post_norm:
            m = self.mlp_post_norm(m, seg)
        return h + m


class Embedders(nn.Module):
    """Per-modality fp32 input projections and the RoPE bands (official name: ``adapter``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.video_embedder = nn.Linear(config.video_in_channels, config.hidden_size, dtype=torch.float32)
        self.text_embedder = nn.Linear(config.text_in_channels, config.hidden_size, dtype=torch.float32)
        self.audio_embedder = nn.Linear(config.audio_in_channels, config.hidden_size, dtype=torch.float32)
        self.rope = FourierRope(config.head_dim)


class Block(nn.Module):
    """The stack of layers (official name: ``block``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(config, i) for i in range(config.num_layers))


# --------------------------------------------------------------------------- model


class HappyHorseTransformer(nn.Module):
    """The single-stream audio+video+text denoiser; predicts velocity ``v = noise - x0``.

    Build it on the meta device (``with torch.device("meta"):``) and load weights with
    :func:`hhtune.model.load_checkpoint` to avoid materialising the 15B model twice.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.adapter = Embedders(config)
        self.block = Block(config)
        self.final_norm_video = MultiModalityRMSNorm(config.hidden_size)
        self.final_norm_audio = MultiModalityRMSNorm(config.hidden_size)
        self.final_linear_video = nn.Linear(config.hidden_size, config.video_in_channels, bias=False,
                                            dtype=torch.float32)
        self.final_linear_audio = nn.Linear(config.hidden_size, config.audio_in_channels, bias=False,
                                            dtype=torch.float32)
        self.gradient_checkpointing = False
        self.activation_offload: OffloadHooks | None = None
        # Block swap releases a layer's weights in a forward hook, so the checkpointed
        # recompute must run to the end of the layer (no early stop) when it is on.
        self.checkpoint_early_stop = True
        self.attention_backend: AttentionBackend = "auto"

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer in the backward pass instead of storing its activations."""
        self.gradient_checkpointing = enabled

    def enable_activation_offload(self, enabled: bool = True, hooks: OffloadHooks | None = None) -> None:
        """Keep the tensors saved for backward (with checkpointing: each layer's input) in host memory.

        ``hooks`` makes the ``saved_tensors_hooks`` context used around the layers; the
        default is :func:`hhtune.model.offload.offloaded_activations` (``save_on_cpu``).
        """
        self.activation_offload = (hooks or offloaded_activations) if enabled else None

    def set_compute_dtype(self, setting: ComputeDtype) -> None:
        """Compute the block linears and attention in ``bf16`` (official numerics), ``fp32``, or ``auto``.

        ``auto`` is bf16 on CUDA and fp32 elsewhere (CPUs emulate bf16 matmuls ~70x slower).
        Storage is unchanged: bf16 weights are upcast on the fly in fp32 compute.
        """
        resolve_compute_dtype(setting, "cpu")  # validates
        for module in self.modules():
            if isinstance(module, (BF16Linear, ExpertLinear, Attention, MLP)):
                module.precision = setting

    def set_attention_backend(self, backend: AttentionBackend) -> None:
        """The kernel of masked attention (``model.attention``): ``auto``, ``sdpa``, ``flex`` or ``flash``."""
        check_backend(backend)
        self.attention_backend = backend

    # -- core ------------------------------------------------------------------
    def forward_tokens(self, video: Tensor, audio: Tensor, text: Tensor, coords: Tensor,
                       attention: AttentionPlan = UNMASKED) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Run the transformer on token rows laid out ``[video | audio | text]``.

        Args:
            video: ``[B, Nv, video_in_channels]`` patch tokens; audio: ``[B, La, audio_in_channels]``;
            text: ``[B, Lt, text_in_channels]``; coords: ``[B, Nv+La+Lt, 9]`` (valid, see
            :func:`~hhtune.model.rope.check_rope_coords`); attention: the mask plan of the batch
            (:func:`hhtune.model.attention.plan_attention`); the default attends over whole rows.
        Returns:
            video velocity tokens ``[B, Nv, video_in_channels]`` and audio ``[B, La, audio_in_channels]`` (fp32).
        """
        # The model carries its own precision policy (bf16 block linears, fp32 elsewhere);
        # an outer autocast would change the fp32 parts, so it is switched off here.
        with torch.autocast(device_type=video.device.type, enabled=False):
            seg = Segments(video.shape[1], audio.shape[1], text.shape[1])
            emb = self.adapter
            h = torch.cat(
                [emb.video_embedder(video.float()), emb.audio_embedder(audio.float()), emb.text_embedder(text.float())],
                dim=1,
            )
            cos, sin = emb.rope(coords.float())
            h = self._layers(h, cos, sin, seg, attention)
            hv, ha, _ = seg.split(h)
            out_video = self.final_linear_video(self.final_norm_video(hv.float()))
            out_audio = self.final_linear_audio(self.final_norm_audio(ha.float()))
        return out_video, out_audio

    def _layers(self, h: Tensor, cos: Tensor, sin: Tensor, seg: Segments, plan: AttentionPlan) -> Tensor:
        training = torch.is_grad_enabled()
        offload = self.activation_offload is not None and training
        with self.activation_offload(h.is_cuda) if offload else contextlib.nullcontext():
            for layer in self.block.layers:
                if self.gradient_checkpointing and training and offload:
                    # The reentrant variant saves the layer inputs with save_for_backward, so the
                    # offload hooks move them to the host; the non-reentrant one holds them in a
                    # closure on the device. Its output only needs grad if an input does, so a
                    # layer with LoRA weights but a frozen input gets a leaf input.
                    if h.requires_grad or any(p.requires_grad for p in layer.parameters()):
                        h = h if h.requires_grad else h.detach().requires_grad_()
                        h = checkpoint(layer, h, cos, sin, seg, plan, use_reentrant=True)
                    else:  # a frozen layer on a frozen input records nothing
                        h = layer(h, cos, sin, seg, plan)
                elif self.gradient_checkpointing and training:
                    with set_checkpoint_early_stop(self.checkpoint_early_stop):
                        h = checkpoint(layer, h, cos, sin, seg, plan, use_reentrant=False)
                else:
                    h = layer(h, cos, sin, seg, plan)
        return h

    # -- batched API -----------------------------------------------------------

    def forward(self, video: Tensor, audio: Tensor, text: Tensor, *, text_lengths: Tensor | None = None,
                audio_lengths: Tensor | None = None,
                video_positions: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Velocities for a batch of samples that share one video latent shape.

        Args:
            video: ``[B, 48, T, H, W]`` noisy video latents (H, W even).
            audio: ``[B, La, 64]`` noisy audio latents, padded to the longest.
            text: ``[B, Lt, C]`` text features, padded to the longest.
            text_lengths / audio_lengths: ``[B]`` real lengths; padding is cut off or masked out of attention.
            video_positions: ``[B, Nv, 9]`` coordinates of the video tokens instead of the latent grid's own
                (``video_coords``): a crop passes where its tokens sit in the full frame
                (:func:`~hhtune.model.packing.window_coords`).
        Returns:
            ``(video_velocity [B, 48, T, H, W], audio_velocity [B, La, 64])``; padded audio rows are zero.
        """
        b, _, t, hh, ww = video.shape
        la, dev = audio.shape[1], video.device
        a_len = _lengths(audio_lengths, b, la, dev, "audio_lengths")
        t_len = _lengths(text_lengths, b, text.shape[1], dev, "text_lengths")
        # Padding past the longest row is cut off (at batch 1 that is all of it: no mask);
        # what is left, in a ragged batch, is masked by the attention kernel.
        a_max, t_max = int(a_len.max()), int(t_len.max())
        audio, text = audio[:, :a_max], text[:, :t_max]
        tokens = patchify(video)
        nv = tokens.shape[1]
        style = self.config.coords_style
        if video_positions is None:
            video_positions = video_coords((t, hh, ww)).to(dev).expand(b, nv, 9)
        elif video_positions.shape != (b, nv, 9):
            raise ValueError(f"video_positions must be [{b}, {nv}, 9], got {list(video_positions.shape)}")
        coords = torch.cat([video_positions.to(dev),
                            padded_audio_coords(a_len, a_max, style, t).to(dev),
                            padded_text_coords(t_len, t_max, style)], dim=1)  # fmt: skip
        valid = None
        if bool((a_len < a_max).any()) or bool((t_len < t_max).any()):
            pos_a = torch.arange(a_max, device=dev)[None] < a_len[:, None]
            pos_t = torch.arange(t_max, device=dev)[None] < t_len[:, None]
            valid = torch.cat([torch.ones(b, nv, dtype=torch.bool, device=dev), pos_a, pos_t], 1)
        plan = self.attention_plan(valid, nv, t, coords.shape[1], dev)
        out_v, out_a = self.forward_tokens(tokens, audio, text, coords, plan)
        out_a = out_a * (torch.arange(a_max, device=dev)[None, :, None] < a_len[:, None, None])
        return unpatchify(out_v, (t, hh, ww)), F.pad(out_a, (0, 0, 0, la - a_max))

    def attention_plan(self, valid: Tensor | None, num_video: int, num_frames: int, length: int,
                       device: torch.device, groups: TokenGroups | None = None) -> AttentionPlan:  # fmt: skip
        """The attention plan of one forward over rows ``[video | audio | text]`` of ``length`` tokens.

        ``valid [B, L]`` marks real tokens of padded rows (``None``: all real); ``groups`` overrides
        who attends to whom (several samples in one row). With ``local_attn_layers``, the plan
        carries the frame window of those layers (:class:`~hhtune.model.attention.LocalWindow`).
        """
        if groups is None and valid is not None:
            groups = TokenGroups.padded_rows(valid)
        dtype = resolve_compute_dtype(self.block.layers[0].attention.precision, device)
        window = None
        if self.config.local_attn_layers:
            window = LocalWindow(num_video, num_video // max(num_frames, 1), self.config.frame_receptive_field,
                                 length, valid)  # fmt: skip
        return plan_forward(groups, window, self.attention_backend, dtype, torch.is_grad_enabled(), device)

    # -- official packed API ---------------------------------------------------

    def forward_packed(self, x: Tensor, coords: Tensor, modality: Tensor,
                       sample_lengths: list[int] | None = None) -> Tensor:
        """The official single-sequence call: ``x [L, max_channels]``, ``coords [L, 9]``, ``modality [L]``.

        Returns the official packed output ``[L, max(video_in, audio_in)]`` (video rows hold
        ``(pT pH pW C)`` velocities, audio rows audio velocities, text rows zeros). With
        ``sample_lengths`` (token counts of consecutive samples), attention is block-diagonal;
        without it the whole sequence is one sample, as in the official code.
        """
        cfg = self.config
        order = torch.argsort(modality, stable=True)
        counts = [int((modality == m).sum()) for m in Modality]
        xs, cs = x[order], coords[order]
        nv, na, _ = counts
        video, audio, text = torch.split(xs, counts, dim=0)
        check_rope_coords(coords)
        groups = None
        if sample_lengths is not None:
            if sum(sample_lengths) != x.shape[0]:
                raise ValueError(f"sample_lengths sum to {sum(sample_lengths)}, "
                                 f"but the sequence has {x.shape[0]} tokens")
            ids = torch.repeat_interleave(torch.arange(len(sample_lengths), device=x.device),
                                          torch.tensor(sample_lengths, device=x.device))[order]
            groups = TokenGroups.packed(ids) if len(sample_lengths) > 1 else None
        if groups is not None and cfg.local_attn_layers:
            raise ValueError("local attention layers take one sample per forward_packed call, as the official model")
        frames = int(cs[0, 3]) if nv else 1  # a video token's coordinates hold the latent frame count
        plan = self.attention_plan(None, nv, frames, x.shape[0], x.device, groups)
        out_v, out_a = self.forward_tokens(video[None, :, : cfg.video_in_channels],
                                           audio[None, :, : cfg.audio_in_channels],
                                           text[None, :, : cfg.text_in_channels], cs[None], plan)
        out = torch.zeros(x.shape[0], max(cfg.video_in_channels, cfg.audio_in_channels), dtype=torch.float32,
                          device=x.device)
        out[order[:nv], : cfg.video_in_channels] = out_v[0]
        out[order[nv : nv + na], : cfg.audio_in_channels] = out_a[0]
        return out


def _lengths(lengths: Tensor | None, batch: int, full: int, device: torch.device, name: str) -> Tensor:
    if lengths is None:
        return torch.full((batch,), full, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, device=device).long()
    if lengths.shape != (batch,) or bool((lengths < 0).any()) or bool((lengths > full).any()):
        raise ValueError(f"{name} must be [{batch}] values in 0..{full}, got {lengths.tolist()}")
    return lengths

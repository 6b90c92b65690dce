"""Modality balance (``loss.balance: ema``): each modality's loss divided by its running mean.

Audio and video flow-matching losses sit at different scales (LTX-2 users report audio at
about 10x video), and fixed weights chosen at step 0 stop fitting as both fall. With ``ema``
each modality's loss is divided by the bias-corrected exponential moving average of that
loss, as Adam corrects its moments, so each contributes about its configured weight
whatever its scale::

    m_t = decay * m_(t-1) + (1 - decay) * L_t        m^_t = m_t / (1 - decay^t)
    loss = video_weight / m^_video * L_video + audio_weight / m^_audio * L_audio

The means are updated once per micro-batch and include it (its losses detached), so the
first micro-batch is normalised by itself. Under several processes the micro-batch losses
are averaged over processes before the update, so every process holds the same means. A
non-finite loss leaves the means and ``t`` unchanged. The state stays on the device (no
host synchronisation) in float64, and is saved in every checkpoint (``balance.pt``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class EmaBalance:
    """The running means of the video and audio losses and the weights they give."""

    def __init__(self, decay: float, device: torch.device | str,
                 reduce: Callable[[Tensor], Tensor] | None = None) -> None:  # fmt: skip
        """``reduce`` averages a tensor over processes (``None`` in a single process)."""
        self.decay = decay
        self.reduce = reduce
        self.mean = torch.zeros(2, dtype=torch.float64, device=device)  # biased running means: video, audio
        self.decayed = torch.ones((), dtype=torch.float64, device=device)  # decay^t, t = finite updates so far

    def weights(self, video_loss: Tensor, audio_loss: Tensor, video_weight: float, audio_weight: float) -> Tensor:
        """Update the means with this micro-batch's losses; return the effective ``[video, audio]`` weights
        (float64, detached): each configured weight over its modality's bias-corrected mean."""
        x = torch.stack([video_loss.detach(), audio_loss.detach()]).to(torch.float64)
        if self.reduce is not None:
            x = self.reduce(x)
        finite = torch.isfinite(x).all()
        self.mean = torch.where(finite, self.decay * self.mean + (1 - self.decay) * x, self.mean)
        self.decayed = torch.where(finite, self.decayed * self.decay, self.decayed)
        configured = torch.tensor([video_weight, audio_weight], dtype=torch.float64, device=x.device)
        return configured / (self.mean / (1 - self.decayed)).clamp_min(1e-12)  # a loss of exactly 0 gets no NaN

    def state_dict(self) -> dict[str, Tensor]:
        """The running state, on the CPU, for a checkpoint."""
        return {"mean": self.mean.cpu(), "decayed": self.decayed.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the state of :meth:`state_dict` (onto this balance's device)."""
        self.mean = state["mean"].to(self.mean)
        self.decayed = state["decayed"].to(self.decayed)

"""``task: restoration``: a RefSR network trained to reconstruct HR from LR and Ref.

The generator's loss is the weighted sum of ``losses`` (L1, Charbonnier, MSE, perceptual; each from its
``start_iteration``) and, with an ``adversarial`` loss, the GAN term against its own discriminator. After the
generator steps, the EMA follows (``train.ema_decay``) and the discriminator steps on the same (detached)
outputs, as ESRGAN/BasicSR order it (MASA's, C2-Matching's and AMSA's own code step the discriminator first;
the difference is one step of lag), its loss averaged over the iteration's micro-batches (WGAN-GP: the
penalty is computed per micro-batch, on that micro-batch's interpolates).

Samples with a chain of LR frames (``open-clips``, :class:`refsr.data.clips.ClipFrames`) get their reference
from the network itself before the loss: the chain is upscaled in order without gradients, the first frame with
the still, each next with the output before it, rounded to 8 bits as ``refsr upscale --temporal`` writes
and offers it, and the last output replaces the still as the sample's reference (its Ref↓ remade with PIL
bicubic). The network thus learns to use its own outputs, and what they lack, as references.

Validation (``data.val``) scores PSNR (and SSIM with ``select: ssim``) on whole images through
:func:`refsr.models.run_padded`, with the EMA weights when EMA is on.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from refsr import metrics
from refsr.errors import RefsrError
from refsr.imresize import imresize
from refsr.models import run_padded
from refsr.train import builders
from refsr.train.distributed import DistContext, all_reduce_mean, average_gradients, broadcast_buffers
from refsr.train.monitor import image_grid
from refsr.train.schema import Config
from refsr.train.task import MicroBatchResult, Precision, Task

__all__ = ["RestorationTask", "update_ema", "chained_references"]


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


class RestorationTask(Task):
    """The network of ``model``, its losses, EMA, GAN and validation (see the module docstring)."""

    weights_fallback = {"model_ema": "model"}

    def __init__(self, cfg: Config, ctx: DistContext) -> None:
        super().__init__(cfg, ctx)
        self.model = builders.build_model(cfg).to(ctx.device)
        self.ema = None
        if cfg.train.ema_decay is not None:
            self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.optimizer = builders.build_optimizer(self.model, cfg.optimizer)
        self.terms = builders.build_loss_terms(cfg, ctx.device)
        self.gan = None
        adv = cfg.adversarial
        if adv is not None:
            discriminator = builders.build_discriminator(adv, cfg.seed).to(ctx.device)
            self.gan = _GanParts(adv, discriminator, builders.build_adversarial_loss(adv, discriminator),
                                 builders.build_optimizer(discriminator, adv.optimizer,
                                                          path="losses.adversarial.optimizer"))
        self.dataset = builders.build_training_set(cfg, self.model.scale)
        self.collate = builders.collate_samples
        self.micro_batch = cfg.train.batch
        self.val_set: Dataset | None = None
        if cfg.data.val is not None:
            self.val_set = builders.build_val_set(cfg.data.val, seed=cfg.seed, scale=self.model.scale)
        self.takes_ref_down = self.model.takes_ref_down
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def modules(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {"model": self.model}
        if self.ema is not None:
            out["model_ema"] = self.ema
        if self.gan is not None:
            out["discriminator"] = self.gan.discriminator
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        out = {"optimizer": self.optimizer}
        if self.gan is not None:
            out["d_optimizer"] = self.gan.optimizer
        return out

    def set_lr(self, factor: float) -> None:
        builders.apply_lr(self.optimizer, factor)
        if self.gan is not None:
            builders.apply_lr(self.gan.optimizer, factor if self.gan.cfg.follow_schedule else 1.0)

    def _gan_on(self, iteration: int) -> bool:
        return self.gan is not None and iteration >= self.gan.cfg.start_iteration

    def losses(self, net: nn.Module, batch: Mapping[str, Any], *, iteration: int,
               want_images: bool) -> MicroBatchResult:
        if "chain_lr" in batch:
            batch = chained_references(self.model, batch)
        sr = builders.call_model(net, batch, takes_ref_down=self.takes_ref_down)
        hr = batch["hr"]
        if sr.shape != hr.shape:
            raise RefsrError(f"the model returned {tuple(sr.shape)} for HR {tuple(hr.shape)}; check the model's "
                             "scale and the dataset's")
        terms = [(t.name, t.fn(sr, hr) * t.weight) for t in self.terms if iteration >= t.start]
        if self._gan_on(iteration):
            assert self.gan is not None
            terms.append(("adversarial", self.gan.loss.generator_loss(sr, hr) * self.gan.cfg.weight))
            self._kept.append((sr.detach(), hr))
        grid = image_grid(batch["lr"][0], sr[0].detach(), hr[0], batch["ref"][0]) if want_images else None
        return MicroBatchResult(terms, grid=grid)

    def after_step(self, iteration: int, precision: Precision,
                   check_finite: Callable[[str, float], None]) -> dict[str, float]:
        if self.ema is not None:
            update_ema(self.ema, self.model, self.cfg.train.ema_decay)  # type: ignore[arg-type]
        if not self._kept:
            return {}
        kept, self._kept = self._kept, []
        return {"discriminator": self._discriminator_steps(kept, precision, check_finite)}

    def _discriminator_steps(self, kept: list[tuple[torch.Tensor, torch.Tensor]], precision: Precision,
                             check_finite: Callable[[str, float], None]) -> float:
        gan = self.gan
        assert gan is not None
        params = [p for p in gan.discriminator.parameters() if p.requires_grad]
        value = 0.0
        for _ in range(gan.cfg.steps_per_generator_step):
            gan.optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), dtype=torch.float64)
            for sr, hr in kept:
                with precision.autocast():
                    loss = gan.loss.discriminator_loss(sr, hr)
                precision.backward(loss / len(kept), "d_optimizer")
                total += loss.item()
            # The discriminator is not wrapped in DDP (see distributed.average_gradients): average by hand.
            average_gradients(params, self.ctx)
            value = float(all_reduce_mean((total / len(kept)).reshape(1).to(self.ctx.device), self.ctx).item())
            check_finite("discriminator", value)
            precision.step(gan.optimizer, "d_optimizer")
        broadcast_buffers(gan.discriminator, self.ctx)
        return value

    @property
    def validates(self) -> bool:
        return self.val_set is not None

    def validated_model(self) -> nn.Module:
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """PSNR (and SSIM with ``select: ssim``) over the validation set, shared out among the processes.

        Uses the EMA weights when EMA is on. Returns ``{"psnr", "ssim", "count", "grids"}``.
        """
        val = self.cfg.data.val
        assert val is not None and self.val_set is not None
        model = self.validated_model()
        was_training = model.training
        model.eval()
        ctx, dev = self.ctx, self.ctx.device
        n = len(self.val_set)  # type: ignore[arg-type]
        if val.limit is not None:
            n = min(n, val.limit)
        totals = torch.zeros(3, dtype=torch.float64)  # psnr sum, ssim sum, count
        grids = []
        for i in range(ctx.rank, n, ctx.world):
            sample = self.val_set[i]
            ref_down = sample["ref_down"][None].to(dev) if "ref_down" in sample else None
            sr = run_padded(model, sample["lr"][None].to(dev), sample["ref"][None].to(dev), ref_down=ref_down)
            sr = sr.float().cpu()
            if "pad" in sample and "hr_size" in sample:
                (top, left), (h, w) = sample["pad"], sample["hr_size"]
                sr = sr[..., int(top) : int(top) + int(h), int(left) : int(left) + int(w)]
            hr = sample["hr"][None]
            if sr.shape != hr.shape:
                raise RefsrError(f"data.val: sample {i}: the output {tuple(sr.shape)} does not match HR "
                                 f"{tuple(hr.shape)}")
            totals[0] += metrics.psnr(sr, hr, protocol=val.protocol)
            if val.select == "ssim":
                totals[1] += metrics.ssim(sr, hr, protocol=val.protocol)
            totals[2] += 1
            if ctx.is_main and len(grids) < val.images:
                grids.append(image_grid(sample["lr"], sr[0], hr[0], sample["ref"]))
        if was_training:
            model.train()
        if ctx.distributed:
            totals = all_reduce_mean(totals.to(dev), ctx).cpu() * ctx.world
        count = max(int(totals[2].item()), 1)
        return {"psnr": float(totals[0] / count), "ssim": float(totals[1] / count) if val.select == "ssim" else None,
                "count": int(totals[2].item()), "grids": grids}


@torch.no_grad()
def chained_references(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` with the reference of every sample that has a chain replaced by the model's own output.

    ``batch["chain_lr"]`` is ``(B, C, 3, h, w)``, each chain placed last (see :class:`ClipFrames`) and
    ``batch["chain_length"]`` ``(B,)`` how many places are used. Place ``C - n`` of a chain of ``n`` is
    upscaled with the still (``batch["ref"]``), each later place with the output before it; outputs are
    clamped and rounded to 8 bits, as a written frame is. ``ref_down`` (when present) is remade from the new
    references with PIL bicubic, as the datasets make it. The model runs in eval mode, then is put back.
    """
    lengths = batch["chain_length"]
    out = dict(batch)
    if not bool((lengths > 0).any()):
        return out
    chain = batch["chain_lr"]
    places = chain.shape[1]
    ref = batch["ref"].clone()
    was_training = model.training
    model.eval()
    try:
        for place in range(places):
            rows = (lengths >= places - place).nonzero().flatten()  # the chains that use this place
            if rows.numel():
                sr = model(chain[rows, place], ref[rows])
                ref[rows] = sr.float().clamp(0, 1).mul(255).round().div(255).to(ref.dtype)
    finally:
        model.train(was_training)
    out["ref"] = ref
    if "ref_down" in batch:
        ref_down = batch["ref_down"].clone()
        rows = (lengths > 0).nonzero().flatten()
        ref8 = ref[rows].mul(255).round().to(torch.uint8)
        ref_down[rows] = imresize(ref8, size=tuple(ref_down.shape[-2:]), kernel="pil").to(ref_down.dtype) / 255
        out["ref_down"] = ref_down
    return out


class _GanParts:
    """The discriminator, its optimiser and the loss that couples it to the generator."""

    def __init__(self, cfg: Any, discriminator: nn.Module, loss: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.cfg, self.discriminator, self.loss, self.optimizer = cfg, discriminator, loss, optimizer

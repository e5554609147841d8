"""The step machinery of both perturbers: particles, congestion cap, pullback, trust region, accept/reject."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from shiftlab.functional.transport import wasserstein2
from shiftlab.generative._config import PerturbConfig
from shiftlab.generative._congestion import cap_speed, interpolation_points, relative_capacity
from shiftlab.generative._pullback import Params, layer_norms, least_squares_step, output_fn, trust_region
from shiftlab.generative._result import PerturbResult, Status, StepRecord, median_seconds

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["Engine", "FieldOutput", "resolve_latent_dim", "show_progress"]

_SAMPLES_KEPT = 2000
_CAP_TRIES = 8


class FieldOutput(NamedTuple):
    """A displacement field and the target points it was computed against (for the capacity estimate)."""

    displacement: torch.Tensor
    reference: torch.Tensor


Field = Callable[[torch.Tensor, int, torch.Generator], FieldOutput]


def resolve_latent_dim(generator: nn.Module, latent_dim: int | None) -> int:
    """``latent_dim`` if given, else the generator's ``latent_dim`` attribute."""
    value = latent_dim if latent_dim is not None else getattr(generator, "latent_dim", None)
    if value is None:
        raise TypeError("pass latent_dim=..., or give the generator a `latent_dim` attribute")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"latent_dim must be a positive int; got {value!r}")
    return value


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _draw_seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


class Engine:
    """Runs the perturbation loop on a private copy of ``generator``."""

    def __init__(
        self,
        generator: nn.Module,
        config: PerturbConfig,
        *,
        latent_dim: int,
        device: torch.device,
        validation_target: torch.Tensor,
        section: str,
    ) -> None:
        if not isinstance(generator, nn.Module):
            raise TypeError(f"generator must be a torch.nn.Module; got {type(generator).__name__}")
        self.config = config
        self.section = section
        self.device = device
        self.latent_dim = latent_dim
        self.model = copy.deepcopy(generator).to(device).eval()
        self.params0: Params = {
            name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad
        }
        if not self.params0:
            raise ValueError("the generator has no trainable parameters to perturb")
        self.master = torch.Generator().manual_seed(config.seed)
        self.z_val = self.latents(config.n_validation, _draw_seed(self.master))
        with torch.no_grad():
            out = self.model(self.z_val)
        self.data_shape = tuple(int(s) for s in out.shape[1:])
        self.dim = int(out[0].numel())
        if not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).sum())
            raise ValueError(f"the generator outputs {bad} non-finite value(s) on the validation latents")
        self.y_val = validation_target.to(device=device, dtype=out.dtype).reshape(
            validation_target.shape[0], -1
        )
        if self.y_val.shape[1] != self.dim:
            raise ValueError(
                f"target points have {self.y_val.shape[1]} values each but the generator outputs {self.dim} "
                f"(shape {self.data_shape})"
            )

    def latents(self, n: int, seed: int) -> torch.Tensor:
        """``(n, k)`` standard-normal latents: scrambled Sobol mapped by the normal quantile, or random."""
        if self.config.latent_sampling == "sobol":
            u = torch.quasirandom.SobolEngine(self.latent_dim, scramble=True, seed=seed).draw(
                n, dtype=torch.float64
            )
            # a scrambled Sobol point can land on 0 exactly; keep the quantile function finite there
            u = u.clamp(1e-12, 1.0 - 1e-12)
            z = torch.special.ndtri(u)
        else:
            z = torch.randn(
                n, self.latent_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
            )
        return z.float().to(self.device)

    def outputs(self, params: Params, z: torch.Tensor, what: str, step: int) -> torch.Tensor:
        with torch.no_grad():
            x = output_fn(self.model, z)(params)
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise FloatingPointError(
                f"step {step}: the generator output {bad} non-finite value(s) on the {what}; "
                "lower speed_cap, step_size or trust_radius"
            )
        return x

    def validation_w2(self, params: Params, step: int) -> float:
        return float(wasserstein2(self.outputs(params, self.z_val, "validation latents", step), self.y_val))

    def caps(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        base = torch.full((x.shape[0],), cfg.speed_cap, dtype=x.dtype, device=x.device)
        if cfg.capacity == "none":
            return base
        interp = interpolation_points(x, reference.to(x), self.master)
        return base * relative_capacity(x, interp, cfg.capacity_bandwidth)

    def enforce_cap(
        self, params: Params, delta: Params, z: torch.Tensor, x: torch.Tensor, caps: torch.Tensor, step: int
    ) -> tuple[Params, torch.Tensor, float]:
        """Shrink ``delta`` until every step particle's realised move is within its cap (``enforce_cap``).

        The least-squares fit of the capped request can overshoot on some particles; scaling the whole
        update by ``1 / max_i(move_i / cap_i)`` (repeated, as the map is nonlinear) restores the bound on
        this step's particles. Returns the update, the realised moves and the total shrink factor.
        """
        moved = (self.outputs({k: params[k] + delta[k] for k in params}, z, "step latents", step) - x).norm(
            dim=1
        )
        total = 1.0
        if not self.config.enforce_cap:
            return delta, moved, total
        for _ in range(_CAP_TRIES):
            excess = float((moved / caps.clamp_min(torch.finfo(caps.dtype).tiny)).max())
            if excess <= 1.0:
                break
            factor = 0.999 / excess
            total *= factor
            delta = {k: v * factor for k, v in delta.items()}
            moved = (
                self.outputs({k: params[k] + delta[k] for k in params}, z, "step latents", step) - x
            ).norm(dim=1)
        return delta, moved, total

    def run(self, field: Field, *, quiet: bool | None = None) -> PerturbResult:
        cfg = self.config
        params = {k: v.clone() for k, v in self.params0.items()}
        start = time.perf_counter()
        before = self.outputs(params, self.z_val, "validation latents", -1)[:_SAMPLES_KEPT].cpu()
        w2_0 = self.validation_w2(params, -1)
        w2_cur, best, since_best, rejections, scale = w2_0, w2_0, 0, 0, 1.0
        history: list[StepRecord] = []
        status: Status = "stopped"
        reason = f"max_steps={cfg.max_steps} reached"
        if cfg.tol_w2 is not None and w2_0 <= cfg.tol_w2:
            status, reason = "converged", f"validation W2 {w2_0:.4g} <= tol_w2 at the start"
        progress = _progress() if show_progress(quiet) and status != "converged" else None
        task = (
            None
            if progress is None
            else progress.add_task(f"{self.section} perturbation", total=cfg.max_steps)
        )
        try:
            for step in range(cfg.max_steps if status != "converged" else 0):
                t0 = time.perf_counter()
                z = self.latents(cfg.n_particles, _draw_seed(self.master))
                x = self.outputs(params, z, "step latents", step)
                out = field(x, step, self.master)
                if not bool(torch.isfinite(out.displacement).all()):
                    raise FloatingPointError(f"step {step}: the displacement field has non-finite values")
                caps = self.caps(x, out.reference)
                b = scale * cap_speed(cfg.step_size * out.displacement, caps)
                _sync(self.device)
                t1 = time.perf_counter()
                pulled = least_squares_step(
                    self.model,
                    params,
                    z,
                    b,
                    iterations=cfg.cg_iters,
                    damping=cfg.damping,
                    first_order=cfg.update == "first-order",
                )
                delta, trust = trust_region(pulled.delta, params, cfg.trust_region, cfg.trust_radius)
                delta, moved, cap_factor = self.enforce_cap(params, delta, z, x, caps, step)
                candidate = {k: params[k] + delta[k] for k in params}
                _sync(self.device)
                t2 = time.perf_counter()
                w2_cand = self.validation_w2(candidate, step)
                t3 = time.perf_counter()
                accepted = (not cfg.accept_reject) or w2_cand <= w2_cur
                if accepted:
                    params, w2_cur, rejections, scale = candidate, w2_cand, 0, min(1.0, 1.5 * scale)
                else:
                    rejections, scale = rejections + 1, 0.5 * scale
                history.append(
                    self._record(
                        step,
                        w2_cur,
                        w2_cand,
                        accepted,
                        scale,
                        pulled.residual,
                        pulled.iterations,
                        trust,
                        cap_factor,
                        delta,
                        params,
                        b,
                        moved,
                        caps,
                        (t0, t1, t2, t3, time.perf_counter()),
                    )
                )
                if progress is not None and task is not None:
                    progress.update(task, advance=1, description=f"{self.section}: W2 {w2_cur:.3f}")
                if cfg.tol_w2 is not None and w2_cur <= cfg.tol_w2:
                    status, reason = "converged", f"validation W2 {w2_cur:.4g} <= tol_w2={cfg.tol_w2}"
                    break
                if not cfg.accept_reject and w2_cur > cfg.divergence_factor * w2_0:
                    status, reason = (
                        "diverged",
                        f"validation W2 {w2_cur:.4g} > {cfg.divergence_factor} x initial",
                    )
                    break
                if rejections >= cfg.max_rejections:
                    reason = f"{rejections} consecutive steps rejected (step scale {scale:.3g})"
                    break
                if w2_cur < best * (1.0 - cfg.min_improvement):
                    best, since_best = w2_cur, 0
                else:
                    since_best += 1
                    if since_best >= cfg.patience:
                        reason = f"no {cfg.min_improvement:.0e} relative improvement in {cfg.patience} steps"
                        break
        finally:
            if progress is not None:
                progress.stop()
        return self._result(
            params, status, reason, w2_0, w2_cur, history, before, time.perf_counter() - start
        )

    def _record(
        self,
        step: int,
        w2: float,
        w2_cand: float,
        accepted: bool,
        scale: float,
        residual: float,
        iters: int,
        trust: float,
        cap_factor: float,
        delta: Params,
        params: Params,
        b: torch.Tensor,
        moved: torch.Tensor,
        caps: torch.Tensor,
        times: tuple[float, float, float, float, float],
    ) -> StepRecord:
        positive = caps > 0
        requested = (b.norm(dim=1)[positive] / caps[positive]) if bool(positive.any()) else b.new_zeros(1)
        realized = (moved[positive] / caps[positive]) if bool(positive.any()) else b.new_zeros(1)
        drift = layer_norms({k: params[k] - self.params0[k] for k in params})
        t0, t1, t2, t3, t4 = times
        return StepRecord(
            step=step,
            w2=w2,
            candidate_w2=w2_cand,
            accepted=accepted,
            step_scale=scale,
            residual=residual,
            cg_iterations=iters,
            trust_factor=trust,
            cap_factor=cap_factor,
            delta_norm=sum(v**2 for v in layer_norms(delta).values()) ** 0.5,
            drift=sum(v**2 for v in drift.values()) ** 0.5,
            drift_per_layer=drift,
            requested_cap_ratio=float(requested.max()),
            realized_cap_ratio_p95=float(torch.quantile(realized.double(), 0.95)),
            realized_cap_ratio_max=float(realized.max()),
            seconds=t4 - t0,
            seconds_field=t1 - t0,
            seconds_update=t2 - t1,
            seconds_validation=t3 - t2,
        )

    def _result(
        self,
        params: Params,
        status: Status,
        reason: str,
        w2_0: float,
        w2_1: float,
        history: list[StepRecord],
        before: torch.Tensor,
        seconds: float,
    ) -> PerturbResult:
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in params:
                    p.copy_(params[name])
        after = self.outputs(params, self.z_val, "validation latents", len(history))[:_SAMPLES_KEPT].cpu()
        return PerturbResult(
            section=self.section,
            status=status,
            reason=reason,
            steps_run=len(history),
            accepted_steps=sum(r.accepted for r in history),
            w2_initial=w2_0,
            w2_final=w2_1,
            seconds_total=seconds,
            seconds_per_step_median=median_seconds(history),
            n_parameters=sum(v.numel() for v in params.values()),
            drift_per_layer=layer_norms({k: params[k] - self.params0[k] for k in params}),
            data_shape=self.data_shape,
            device=str(self.device),
            config=self.config,
            history=tuple(history),
            generator=model,
            samples_before=before,
            samples_after=after,
            samples_target=self.y_val[:_SAMPLES_KEPT].cpu(),
        )


def show_progress(quiet: bool | None) -> bool:
    """Progress bars are on unless ``quiet``; ``None``: on when the console is an interactive terminal."""
    if quiet is not None:
        return not quiet
    from rich.console import Console

    return Console().is_terminal


def _progress() -> Progress:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True)
    progress.start()
    return progress

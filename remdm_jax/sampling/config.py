"""`SamplerConfig`: every knob of the MDLM / ReMDM samplers (SPEC §4, §5).

The strategy only decides the per-step arrays built by `step_schedule` (SPEC §4.7); the transition
kernel is shared. Invalid values raise `ValueError` naming the field and the value.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

STRATEGIES = ("mdlm", "remdm_cap", "remdm_rescale", "remdm_conf", "remdm_switch", "remdm_loop",
              "fb", "dfm")
PRECISIONS = ("exact32", "float64", "float32")
NUCLEUS_RULES = ("reference", "hf")
CONF_BASES = ("max", "cap", "rescale")
SWITCH_BASES = ("cap", "rescale", "conf")
LOOP_SIGMAS = ("const", "cap", "rescale")
CONF_DTYPES = ("float32", "bfloat16")
ALPHA_SCHEDULES = ("linear", "cosine", "poly")

# SPEC §5 script defaults of eta.
DEFAULT_ETA = {"cap": 0.008, "rescale": 0.015, "loop": 0.02}


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Sampler settings (SPEC §4).

  Attributes:
    strategy: one of `STRATEGIES`.
    num_steps: T, the number of grid steps (DFM builds its own, longer grid from T, SPEC §4.4).
    eta: the ReMDM eta. None = the SPEC §5 script default of the strategy (cap 0.008,
      rescale 0.015, loop 0.02; switch / conf use their base's, loop always 0.02). Unused
      (resolved to 0.0) by mdlm, fb, dfm and conf with `conf_base="max"`.
    t_on, t_off, alpha_on: the loop phases (SPEC §4.4), t_on > t_off, alpha_on in (0, 1).
    t_switch: `remdm_switch` runs MDLM while t >= t_switch, then `switch_base` [PAPER, UNCONFIRMED].
    switch_base: "cap" | "rescale" | "conf".
    conf_base: sigma scaled by the confidence weights in conf: "max" (sigma_max, [REF]), "cap",
      "rescale" (project page variants).
    loop_sigma: sigma in loop phase 2: "const" (= eta, [REF]), "cap", "rescale", with
      sigma_max = min(1, (1 - alpha_on) / alpha_on). "conf" is rejected: conf gives masked
      positions sigma = 0 (SPEC §4.4), and with alpha_t = alpha_s = alpha_on in phase 2 their
      unmask rate u = (alpha_s - alpha_t) / (1 - alpha_t) is then 0, so phase 2 would only remask.
    conf_dtype: "float32" or "bfloat16" (emulates the reference's bf16 confidence softmax).
    top_p: nucleus mass in (0, 1]; None (or 1.0) = no filtering.
    temperature: tau > 0 (default 1.0), every strategy and precision: x_theta = SUBS(logits / tau),
      i.e. the logits are divided by tau before the log-softmax over the non-mask vocabulary and
      hence before top-p; x~ (and the conf state psi) are the tempered probabilities. The final
      argmax step (SPEC §4.5) is unaffected (argmax is invariant to tau > 0). tau = 1.0 skips the
      division (bitwise the untempered sampler).
    nucleus_rule: "reference" (keep k iff C_k <= p; SPEC §4.3) or "hf" (keep k iff C_{k-1} < p,
      the smallest set with mass >= p). Both always keep the most likely token (the first one on
      ties), also when p rounds to 0 in float32.
    precision: categorical draw. "exact32" (default): two-stage sampling with 32-bit integers only
      (SPEC §4.6 item 2, TPU-safe). "float64": the reference's exponential race over the whole
      row in float64 (needs x64; reproduction / oracle). "float32": the same race in float32
      (biased, kept only to demonstrate the bias).
    eps: where the time grid ends (SPEC §4.2), 1e-5.
    alpha_schedule: the sampler's alpha(t) on the grid for mdlm/cap/rescale/conf/fb/switch,
      "linear" (1 - t, [REF]) or a `remdm_jax.diffusion.schedules` name. Loop and DFM define their own.
    cache_unchanged: skip the denoiser when no token changed since its last call (SPEC §4.8).
      Exact only for a denoiser that ignores t, so it requires `time_independent=True`.
    time_independent: the caller's declaration that denoise_fn(params, z, t) does not depend on t
      (e.g. the OWT checkpoint, time_conditioning=False).
    unmask_buffer: K, the static number of unmasking positions per row handled per pass of the
      exact32 token draw (more are handled in further passes; results never depend on K).
      None = chosen from the schedule (about the max expected unmasks per step + 6 std).
  """

  strategy: str = "mdlm"
  num_steps: int = 128
  eta: Optional[float] = None
  t_on: float = 0.55
  t_off: float = 0.05
  alpha_on: float = 0.9
  t_switch: float = 0.5
  switch_base: str = "cap"
  conf_base: str = "max"
  loop_sigma: str = "const"
  conf_dtype: str = "float32"
  top_p: Optional[float] = None
  nucleus_rule: str = "reference"
  precision: str = "exact32"
  eps: float = 1e-5
  alpha_schedule: str = "linear"
  cache_unchanged: bool = False
  time_independent: bool = False
  unmask_buffer: Optional[int] = None
  temperature: float = 1.0  # last, so that positional construction stays backward compatible

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"SamplerConfig.{field}={getattr(self, field)!r}: {why}")

    def choice(field, options):
      if getattr(self, field) not in options:
        bad(field, f"must be one of {options}")

    choice("strategy", STRATEGIES)
    choice("precision", PRECISIONS)
    choice("nucleus_rule", NUCLEUS_RULES)
    choice("conf_base", CONF_BASES)
    choice("switch_base", SWITCH_BASES)
    if self.loop_sigma == "conf":
      bad("loop_sigma", "conf is not supported in the loop: conf gives masked positions sigma = 0 "
          "and phase 2 has alpha_t = alpha_s, so nothing would ever unmask there; use 'const', "
          "'cap' or 'rescale'")
    choice("loop_sigma", LOOP_SIGMAS)
    choice("conf_dtype", CONF_DTYPES)
    choice("alpha_schedule", ALPHA_SCHEDULES)
    if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
      bad("num_steps", "must be an int >= 1")
    if not 0.0 < self.eps < 1.0:
      bad("eps", "must lie in (0, 1)")
    if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
      bad("top_p", "must lie in (0, 1] (or be None for no filtering)")
    tau = self.temperature
    if (isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau)
        or tau <= 0):
      bad("temperature", "must be a finite number > 0")
    object.__setattr__(self, "temperature", float(tau))
    if not 0.0 < self.alpha_on < 1.0:
      bad("alpha_on", "must lie in (0, 1)")
    if not 0.0 <= self.t_off < self.t_on <= 1.0:
      raise ValueError(f"SamplerConfig.t_on={self.t_on!r}, t_off={self.t_off!r}: need "
                       "0 <= t_off < t_on <= 1")
    if not 0.0 < self.t_switch <= 1.0:
      bad("t_switch", "must lie in (0, 1]")
    if self.unmask_buffer is not None and (not isinstance(self.unmask_buffer, int)
                                           or self.unmask_buffer < 1):
      bad("unmask_buffer", "must be None or an int >= 1")
    if self.cache_unchanged and not self.time_independent:
      bad("cache_unchanged", "is only exact for a time-independent denoiser: declare "
          "time_independent=True (and never use it with time conditioning)")
    if self.alpha_schedule != "linear" and self.strategy in ("remdm_loop", "dfm"):
      bad("alpha_schedule", f"strategy {self.strategy!r} defines its own alpha; use 'linear'")
    # eta: resolve the default, then validate.
    if self.eta is None:
      object.__setattr__(self, "eta", self._default_eta())
    eta = self.eta
    if not isinstance(eta, (int, float)) or eta != eta or eta < 0:
      bad("eta", "must be a number >= 0")
    object.__setattr__(self, "eta", float(eta))
    if self.eta > 1.0:
      bad("eta", "must be <= 1 (sigma is a probability)")
    if self.strategy == "remdm_loop" and self.loop_sigma == "const":
      limit = (1.0 - self.alpha_on) / self.alpha_on
      if self.eta > limit:
        bad("eta", f"loop phase 2 needs eta <= (1 - alpha_on) / alpha_on = {limit:.6g}")

  def _default_eta(self) -> float:
    s = self.strategy
    if s == "remdm_cap":
      return DEFAULT_ETA["cap"]
    if s == "remdm_rescale":
      return DEFAULT_ETA["rescale"]
    if s == "remdm_loop":
      return DEFAULT_ETA["loop"]
    if s == "remdm_conf":
      return DEFAULT_ETA.get(self.conf_base, 0.0)
    if s == "remdm_switch":
      base = self.conf_base if self.switch_base == "conf" else self.switch_base
      return DEFAULT_ETA.get(base, 0.0)
    return 0.0

  def ignored_fields(self) -> dict:
    """{field: why} for the fields this config's strategy never reads (`step_schedule`), so that
    an entry point can refuse a flag that would be silently ignored: eta (mdlm, fb, dfm, and
    conf / switch-to-conf with conf_base="max", which use sigma_max), t_on / t_off / alpha_on /
    loop_sigma (all but remdm_loop), t_switch / switch_base (all but remdm_switch), conf_base
    (all but remdm_conf and remdm_switch with switch_base="conf")."""
    s, out = self.strategy, {}
    if s == "mdlm":
      out["eta"] = "MDLM never remasks"
    elif s in ("fb", "dfm"):
      out["eta"] = f"{s}'s remasking sigma is fixed by its schedule"
    elif s == "remdm_conf" and self.conf_base == "max":
      out["eta"] = "remdm_conf with conf_base='max' scales sigma_max, not eta"
    elif (s == "remdm_switch" and self.switch_base == "conf" and self.conf_base == "max"):
      out["eta"] = "remdm_switch to conf with conf_base='max' scales sigma_max, not eta"
    if s != "remdm_loop":
      for f in ("t_on", "t_off", "alpha_on", "loop_sigma"):
        out[f] = "only remdm_loop has the loop phases"
    if s != "remdm_switch":
      for f in ("t_switch", "switch_base"):
        out[f] = "only remdm_switch switches from MDLM to ReMDM"
    if not self.uses_conf:
      out["conf_base"] = "only remdm_conf (or remdm_switch to conf) uses confidence weights"
    return out

  @property
  def uses_conf(self) -> bool:
    """Whether the carry holds the per-token confidence state psi."""
    return (self.strategy == "remdm_conf"
            or (self.strategy == "remdm_switch" and self.switch_base == "conf"))

  def replace(self, **changes: Any) -> "SamplerConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> "SamplerConfig":
    """A named paper setting (`PRESETS`, SPEC §5: T = 1024, top_p = 0.9) with overrides."""
    if name not in PRESETS:
      raise ValueError(f"preset name={name!r} is not one of {tuple(PRESETS)}")
    return cls(**{**PRESETS[name], **overrides})


_PAPER = dict(num_steps=1024, top_p=0.9, precision="exact32")
# SPEC §5 script defaults. Which strategy produced the paper's T < 1024 ReMDM column is
# [UNCONFIRMED]; "remdm_cap" and "remdm_rescale" are the candidates.
PRESETS = {
    "mdlm": dict(_PAPER, strategy="mdlm"),
    "remdm_cap": dict(_PAPER, strategy="remdm_cap", eta=0.008),
    "remdm_rescale": dict(_PAPER, strategy="remdm_rescale", eta=0.015),
    "remdm_conf": dict(_PAPER, strategy="remdm_conf"),
    "remdm_loop": dict(_PAPER, strategy="remdm_loop", eta=0.02, t_on=0.55, t_off=0.05,
                       alpha_on=0.9),
    "remdm_switch": dict(_PAPER, strategy="remdm_switch", switch_base="cap", eta=0.008,
                         t_switch=0.5),
    "fb": dict(_PAPER, strategy="fb"),
    "dfm": dict(_PAPER, strategy="dfm"),
}

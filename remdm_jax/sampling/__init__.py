"""MDLM / ReMDM samplers (SPEC §4). Never imports Flax.

Public API:
  SamplerConfig, PRESETS, STRATEGIES                      (config)
  StepSchedule, step_schedule, dfm_grid, uniform_grid     (schedule)
  conf_sigma, conf_weights                                (conf: remdm_conf's weights)
  nucleus_filter                                          (top-p)
  make_sampler, Sampler                                   (sampler: the loop)
  transition_sample, KernelSpec, final_step               (kernel: the MDLM/ReMDM transition)
  CBGGuidance, cfg_denoise_fn, cfg_log_probs, cfg_model_calls, classifier_term   (guidance)
  select_top_n, select_below_nth, ranked_commit           (ranked: confidence-ranked commits)
  maskgit_step, ConfidenceSpec, propose, commit, remdm_remask   (confidence: per-step kernels)
  DreamSpec, dream_propose, dream_schedule                (confidence: Dream's rules)
  torch_linspace_f32                                      (schedule: torch's float32 linspace)
  maskgit_decode                                          (maskgit: MaskGIT decoding loop)
  BlockConfig, make_block_generate                        (blocks: semi-AR block decoding)
  fork_decode                                             (fork_compat: the image fork's mode)
  make_semi_ar_sampler, semi_ar_sample                    (semi_ar: MDLM semi-AR long sequences)
  make_ar_sampler, ARCFG, FUDGEGuidance                   (ar: causal-model ancestral sampling)
  cfg_mix                                                 (guidance: the D-CFG log-prob mix)
The float64 test oracle `transition_probs` lives in `remdm_jax.sampling.reference` (not exported).
"""
from remdm_jax.sampling.ar import ARCFG, FUDGEGuidance, make_ar_sampler
from remdm_jax.sampling.blocks import BlockConfig, make_block_generate
from remdm_jax.sampling.conf import conf_sigma, conf_weights
from remdm_jax.sampling.config import PRESETS, STRATEGIES, SamplerConfig
from remdm_jax.sampling.confidence import (ConfidenceSpec, DreamSpec, commit, dream_propose,
                                           dream_schedule, maskgit_step, propose, remdm_remask)
from remdm_jax.sampling.fork_compat import fork_decode
from remdm_jax.sampling.guidance import (CBGGuidance, cfg_denoise_fn, cfg_log_probs,
                                         cfg_mix, cfg_model_calls, classifier_term)
from remdm_jax.sampling.kernel import KernelSpec, final_step, transition_sample
from remdm_jax.sampling.maskgit import maskgit_decode
from remdm_jax.sampling.nucleus import nucleus_filter
from remdm_jax.sampling.ranked import ranked_commit, select_below_nth, select_top_n
from remdm_jax.sampling.sampler import Sampler, make_sampler
from remdm_jax.sampling.semi_ar import make_semi_ar_sampler, semi_ar_sample
from remdm_jax.sampling.schedule import (StepSchedule, dfm_grid, expected_unmask_buffer,
                                         step_schedule, torch_linspace_f32, uniform_grid)

__all__ = [
    "PRESETS", "STRATEGIES", "SamplerConfig", "nucleus_filter", "conf_sigma", "conf_weights",
    "KernelSpec", "Sampler", "final_step", "make_sampler", "transition_sample", "StepSchedule",
    "dfm_grid", "expected_unmask_buffer", "step_schedule", "uniform_grid", "CBGGuidance",
    "cfg_denoise_fn", "cfg_log_probs", "cfg_model_calls", "classifier_term", "select_top_n",
    "select_below_nth",
    "ranked_commit", "make_semi_ar_sampler", "semi_ar_sample", "make_ar_sampler", "ARCFG",
    "FUDGEGuidance", "cfg_mix", "ConfidenceSpec", "commit", "maskgit_step", "propose",
    "remdm_remask", "maskgit_decode", "BlockConfig", "make_block_generate", "fork_decode",
    "DreamSpec", "dream_propose", "dream_schedule", "torch_linspace_f32",
]

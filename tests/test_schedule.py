"""Unit tests for harness.render.schedule / profiles and the Euler step arithmetic (§7.1-§7.5, §6, docs/parity).

Expected values are the §7.4 tables (docs/parity) typed in here, or the §7.2/§7.3 formulas recomputed in the test; none
of them come from running the code under test.
"""

from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.render import pipeline, profiles, schedule
from harness.render.profiles import PROFILES, SamplerProfile, profile_for_aitk_version, with_overrides

ORACLE = Path(__file__).resolve().parents[1].parent / "shared" / "oracle"
BF16 = torch.bfloat16


# --- §7.4 (docs/parity), typed in from the table ---------------------------------------------------------------------

EULER_25_T = [
    1000.0000, 991.4237, 982.2381, 972.3759, 961.7593, 950.2985, 937.8885, 924.4066, 909.7072, 893.6177,
    875.9315, 856.3980, 834.7121, 810.4973, 783.2838, 752.4777, 717.3174, 676.8098, 629.6342, 573.9968,
    507.3965, 426.2389, 325.1658, 195.8211, 24.4141,
]
EULER_30_T = [
    1000, 992.9441, 985.4784, 977.5660, 969.1658, 960.2309, 950.7089, 940.5398, 929.6553, 917.9773, 905.4156,
    891.8661, 877.2073, 861.2974, 843.9689, 825.0234, 804.2233, 781.2822, 755.8519, 727.5037, 695.7052, 659.7853,
    618.8875, 571.8997, 517.3525, 453.2618, 376.8832, 284.3080, 169.7732, 24.4141,
]
UNIPC_OLD_25_T = [999, 985, 971, 956, 939, 922, 904, 884, 864, 841, 817, 792, 764, 734, 701, 666, 627, 585, 538, 486,
                  428, 363, 290, 206, 111]
UNIPC_OLD_25_S = [
    0.999666, 0.985963, 0.971489, 0.956175, 0.939947, 0.922722, 0.904403, 0.884883, 0.864040, 0.841736, 0.817810,
    0.792079, 0.764331, 0.734319, 0.701754, 0.666296, 0.627542, 0.585009, 0.538116, 0.486158, 0.428265, 0.363361,
    0.290088, 0.206718, 0.111008, 0.0,
]
UNIPC_NEW_25_T = [999, 986, 971, 956, 940, 923, 904, 885, 864, 842, 818, 792, 765, 735, 702, 667, 628, 586, 539, 487,
                  429, 365, 292, 208, 113]
UNIPC_NEW_25_S = [
    0.999999, 0.986315, 0.971861, 0.956569, 0.940365, 0.923166, 0.904875, 0.885387, 0.864579, 0.842313, 0.818430,
    0.792746, 0.765052, 0.735100, 0.702603, 0.667222, 0.628555, 0.586124, 0.539348, 0.487526, 0.429795, 0.365081,
    0.292037, 0.208944, 0.113576, 0.0,
]


def _schedule(name: str, steps: int, profile: SamplerProfile | None = None):
    profile = profile or PROFILES[name]
    scheduler = schedule.make_scheduler(profile)
    timesteps = schedule.set_timesteps(scheduler, profile, steps, "cpu")
    return scheduler, timesteps


def _euler_sigmas_from_spec(steps: int, shift: float = 5.0) -> torch.Tensor:
    """§7.2 written out: float32 training grid, float64 set_timesteps grid shifted again, final 0."""
    train = np.linspace(1, 1000, 1000, dtype=np.float32)[::-1].copy()
    train_sigmas = torch.from_numpy(train) / 1000
    train_sigmas = shift * train_sigmas / (1 + (shift - 1) * train_sigmas)
    sigma_max, sigma_min = float(train_sigmas[0]), float(train_sigmas[-1])
    tau = np.linspace(sigma_max * 1000, sigma_min * 1000, steps)
    sigmas = tau / 1000
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return torch.cat([torch.from_numpy(sigmas).to(torch.float32), torch.zeros(1)])


# --- 1. schedules ----------------------------------------------------------------------------------------------------

def test_euler_25_timesteps_match_parity_table():
    scheduler, timesteps = _schedule("aitk-euler", 25)
    assert timesteps.dtype == torch.float32  # not integers (§7.2)
    np.testing.assert_allclose(timesteps.numpy(), EULER_25_T, rtol=0, atol=5e-5)
    # the double-shifted minimum, then the jump to 0 (§7.2)
    assert len(scheduler.sigmas) == 26
    assert abs(float(scheduler.sigmas[-2]) - 0.0244141) < 5e-7
    assert float(scheduler.sigmas[-1]) == 0.0


def test_euler_30_timesteps_match_parity_list():
    _, timesteps = _schedule("aitk-euler", 30)
    np.testing.assert_allclose(timesteps.numpy(), EULER_30_T, rtol=0, atol=5e-5)


def test_euler_sigmas_equal_spec_formula_bitwise():
    for steps in (6, 25, 30):
        scheduler, timesteps = _schedule("aitk-euler", steps)
        expected = _euler_sigmas_from_spec(steps)
        assert torch.equal(scheduler.sigmas.cpu(), expected), steps
        assert torch.equal(timesteps.cpu(), expected[:-1] * 1000), steps


@pytest.mark.parametrize(
    "name, table_t, table_s",
    [("aitk-unipc", UNIPC_NEW_25_T, UNIPC_NEW_25_S), ("aitk-unipc-old", UNIPC_OLD_25_T, UNIPC_OLD_25_S)],
)
def test_unipc_25_schedule_matches_parity_table(name, table_t, table_s):
    scheduler, timesteps = _schedule(name, 25)
    assert timesteps.dtype == torch.int64  # integer t (§7.5)
    assert timesteps.tolist() == table_t
    np.testing.assert_allclose(scheduler.sigmas.double().numpy(), table_s, rtol=0, atol=5e-7)


def test_unipc_old_and_new_grids_differ():
    old, _ = _schedule("aitk-unipc-old", 25)
    new, _ = _schedule("aitk-unipc", 25)
    assert not torch.equal(old.sigmas, new.sigmas)


def test_fresh_scheduler_per_render():
    profile = PROFILES["aitk-unipc"]
    assert schedule.make_scheduler(profile) is not schedule.make_scheduler(profile)


@pytest.mark.parametrize(
    "name, steps, boundary, expected_high",
    [
        ("aitk-euler", 25, 0.875, 11),
        ("aitk-euler", 30, 0.875, 13),
        ("aitk-euler", 40, 0.875, 17),
        ("aitk-euler", 25, 0.9, 9),
        ("aitk-euler", 30, 0.9, 11),
        ("aitk-euler", 40, 0.9, 14),
        ("aitk-unipc", 25, 0.875, 8),
        ("aitk-unipc-old", 25, 0.875, 8),
        ("aitk-unipc", 25, 0.9, 7),
        ("aitk-unipc-old", 25, 0.9, 7),
        ("aitk-unipc-old", 30, 0.875, 9),
        ("aitk-unipc", 30, 0.875, 10),
        ("aitk-unipc-old", 30, 0.9, 8),
        ("aitk-unipc", 30, 0.9, 8),
    ],
)
def test_high_noise_step_counts(name, steps, boundary, expected_high):
    profile = PROFILES[name] if boundary == 0.875 else with_overrides(PROFILES[name], boundary=boundary)
    _, timesteps = _schedule(name, steps, profile)
    experts = [schedule.expert_for(t, profile) for t in timesteps]
    # the high-noise steps form a prefix: H...H L...L
    assert experts == ["high"] * expected_high + ["low"] * (steps - expected_high)


def test_unipc_30_boundary_step_is_inclusive():
    """t9 = 875 for the new grid (875 >= 875 -> high), 874 for the old grid (§7.4)."""
    _, new_t = _schedule("aitk-unipc", 30)
    _, old_t = _schedule("aitk-unipc-old", 30)
    assert int(new_t[9]) == 875 and int(old_t[9]) == 874
    assert schedule.expert_for(875.0, PROFILES["aitk-euler"]) == "high"
    assert schedule.expert_for(874.9999, PROFILES["aitk-euler"]) == "low"
    assert schedule.expert_for(torch.tensor(875.0), PROFILES["aitk-euler"]) == "high"


@pytest.mark.skipif(not ORACLE.is_dir(), reason=f"oracle folder {ORACLE} absent")
def test_euler_timesteps_equal_oracle_denoise_trace():
    manifest = json.loads((ORACLE / "cases" / "case_a" / "manifest.json").read_text())
    checked = 0
    for sample in manifest["samples"]:
        trace = sample.get("denoise_trace")
        if not trace:
            continue
        cfg = sample["guidance_scale"] > 1.0
        t_oracle = [t for _, t in trace][:: 2 if cfg else 1]
        _, timesteps = _schedule("aitk-euler", sample["sample_steps"])
        assert [float(t) for t in timesteps] == t_oracle
        profile = PROFILES["aitk-euler"]
        names = {"high": "transformer_1", "low": "transformer_2"}
        assert [names[schedule.expert_for(t, profile)] for t in timesteps] == [n for n, _ in trace][:: 2 if cfg else 1]
        checked += 1
    assert checked


# --- 2. Euler step arithmetic (§7.3) ---------------------------------------------------------------------------------

def _euler_step_by_hand(latents: torch.Tensor, v: torch.Tensor, dt: float) -> torch.Tensor:
    """bf16( fp32(x) + bf16( v * bf16(dt) ) ), every rounding spelled out."""
    dt_bf16 = torch.tensor(dt, dtype=torch.float32).to(BF16).float()
    product = (v.float() * dt_bf16).to(BF16)  # exact fp32 product of two bf16 values, rounded once to bf16
    return (latents.float() + product.float()).to(BF16)


def test_euler_step_rounds_like_ai_toolkit():
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 2, 4, 4, generator=gen)  # fp32, not bf16-representable
    v = torch.randn(1, 16, 2, 4, 4, generator=gen).to(BF16)
    sigmas = _euler_sigmas_from_spec(25)
    scheduler, timesteps = _schedule("aitk-euler", 25)
    for i in (0, 10, 23):
        scheduler._step_index = i  # position the scheduler on step i, like the loop would
        out = scheduler.step(v, timesteps[i], latents, return_dict=False)[0]
        dt = float(sigmas[i + 1] - sigmas[i])
        expected = _euler_step_by_hand(latents, v, dt)
        assert out.dtype == BF16
        assert torch.equal(out, expected), i
        naive = (latents + v.float() * dt).to(BF16)  # fp32 update, rounded once
        assert (naive != out).any(), i  # why the diffusers step (not a hand-rolled fp32 one) is needed
        unrounded_dt = (latents + (v.float() * dt).to(BF16).float()).to(BF16)  # bf16(v*dt) without bf16(dt)
        assert (unrounded_dt != out).any(), i


# --- 2b. the whole loop with a stub model (§6.8, §7.3) ---------------------------------------------------------------

class _StubExpert(torch.nn.Module):
    """Deterministic bf16 'velocity' depending on input, timestep and embeddings; records each call."""

    def __init__(self, name: str, scale: float, calls: list):
        super().__init__()
        self.name, self.scale, self.calls = name, scale, calls

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=True):
        self.calls.append((self.name, hidden_states.clone(), timestep.clone(), encoder_hidden_states))
        return (_velocity(hidden_states, timestep, encoder_hidden_states, self.scale),)


def _velocity(hidden_states, timestep, embeds, scale):
    x = hidden_states[:, :16].float()
    cond = hidden_states[:, 16:].float().mean(dim=1, keepdim=True)
    return (scale * x - 0.25 * cond + float(embeds.float().mean()) + float(timestep[0]) / 1000.0).to(BF16)


def test_denoise_loop_matches_hand_written_euler_loop():
    calls = []
    experts = {"high": _StubExpert("high", 0.9, calls), "low": _StubExpert("low", -0.6, calls)}
    bundle = SimpleNamespace(expert=lambda which: experts[which])
    gen = torch.Generator().manual_seed(3)
    latents0 = torch.randn(1, 16, 2, 2, 2, generator=gen).to(BF16).float()
    condition = torch.randn(1, 20, 2, 2, 2, generator=gen).to(BF16)
    cond_embeds = torch.randn(1, 8, 4, generator=gen).to(BF16)
    uncond_embeds = torch.zeros(1, 8, 4, dtype=BF16)
    guidance, steps = 3.5, 6
    out, trace = pipeline.denoise(bundle, latents0.clone(), condition, cond_embeds, uncond_embeds, guidance, steps,
                                  PROFILES["aitk-euler"])

    # independent loop per §6.8 / §7.3
    sigmas = _euler_sigmas_from_spec(steps)
    latents = latents0.clone()
    expected_trace = []
    for i in range(steps):
        t = float(sigmas[i] * 1000)
        which, scale = ("high", 0.9) if t >= 875.0 else ("low", -0.6)
        x = latents.to(BF16)
        x_in = torch.cat([x, condition], dim=1)
        ts = torch.tensor([t], dtype=torch.float32)
        c = _velocity(x_in, ts, cond_embeds, scale)
        u = _velocity(x_in, ts, uncond_embeds, scale)
        v = u + guidance * (c - u)
        assert v.dtype == BF16
        latents = _euler_step_by_hand(latents, v, float(sigmas[i + 1] - sigmas[i])).float()
        expected_trace += [(which, t), (which, t)]
    assert trace == expected_trace
    assert out.dtype == torch.float32
    assert torch.equal(out, latents)
    # model inputs: bf16 [noise16, mask4, cond16], float32 t of shape (1,), cond embeds first then uncond
    first_cond, first_uncond = calls[0], calls[1]
    assert first_cond[1].dtype == BF16 and first_cond[1].shape[1] == 36
    assert torch.equal(first_cond[1][:, :16], latents0.to(BF16))
    assert torch.equal(first_cond[1][:, 16:], condition)
    assert first_cond[2].dtype == torch.float32 and first_cond[2].shape == (1,)
    assert first_cond[3] is cond_embeds and first_uncond[3] is uncond_embeds
    assert [c[0] for c in calls] == [w for w, _ in expected_trace]


def test_denoise_without_cfg_runs_one_forward_per_step():
    calls = []
    stub = _StubExpert("any", 0.5, calls)
    bundle = SimpleNamespace(expert=lambda which: stub)
    latents = torch.zeros(1, 16, 1, 2, 2)
    condition = torch.zeros(1, 20, 1, 2, 2, dtype=BF16)
    embeds = torch.ones(1, 4, 4, dtype=BF16)
    _, trace = pipeline.denoise(bundle, latents, condition, embeds, None, 1.0, 4, PROFILES["aitk-euler"])
    assert len(trace) == 4 and len(calls) == 4


# --- 7. profile choice (§7.1) ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "version, expected",
    [
        ("0.12.26", "aitk-euler"),
        ("0.10.22", "aitk-euler"),
        ("0.10.21", "aitk-euler-vae-bf16"),
        ("0.9.4", "aitk-euler-vae-bf16"),
        ("0.9.3", "aitk-euler-vae-bf16"),
        ("v0.9.3", "aitk-euler-vae-bf16"),
        ("0.9.2", "aitk-unipc"),
        ("0.7.25", "aitk-unipc"),
        ("0.7.24", "aitk-unipc-old"),
        ("0.4.1", "aitk-unipc-old"),
    ],
)
def test_profile_for_aitk_version(version, expected):
    profile, why = profile_for_aitk_version(version)
    assert profile.name == expected
    assert version in why


@pytest.mark.parametrize("version, expected", [("0.9.2rc1", "aitk-unipc"), ("0.7.2rc5", "aitk-unipc-old")])
def test_profile_for_prerelease_versions(version, expected):
    assert profile_for_aitk_version(version)[0].name == expected


@pytest.mark.parametrize("version", [None, ""])
def test_profile_without_version_is_default_with_reason(version):
    profile, why = profile_for_aitk_version(version)
    assert profile.name == profiles.DEFAULT_PROFILE == "aitk-euler"
    assert "version" in why and "assum" in why


def test_profile_fields_follow_spec():
    euler, unipc, old = PROFILES["aitk-euler"], PROFILES["aitk-unipc"], PROFILES["aitk-unipc-old"]
    assert (euler.scheduler, euler.shift, euler.boundary) == ("euler", 5.0, 0.875)
    assert PROFILES["aitk-euler-vae-bf16"] == replace(euler, name="aitk-euler-vae-bf16", vae_norm="bf16",
                                                      description=PROFILES["aitk-euler-vae-bf16"].description)
    # ai-toolkit's own VAE copy (before 883d60eb, 0.10.22) normalises in bf16; diffusers' upcasts (§11.4)
    assert (euler.vae_norm, unipc.vae_norm, old.vae_norm) == ("fp32", "bf16", "bf16")
    assert PROFILES["runcomfy"].vae_norm == PROFILES["diffusers-stock"].vae_norm == "fp32"
    assert (unipc.scheduler, unipc.shift, unipc.boundary, unipc.unipc_sigmas) == ("unipc", 3.0, 0.875, "new")
    assert (old.scheduler, old.shift, old.boundary, old.unipc_sigmas) == ("unipc", 3.0, 0.875, "old")
    for p in (euler, unipc, old):
        assert p.exact and p.posterior == "sample" and p.cast_whole_bf16 and p.boundary_timestep == 875.0
    variant = with_overrides(euler, boundary=0.9)
    assert not variant.exact and variant.boundary == 0.9 and variant.name != euler.name

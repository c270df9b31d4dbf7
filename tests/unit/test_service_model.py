"""The service model (smoelib/core/service.py) against published and measured figures."""

from __future__ import annotations

import numpy as np
import pytest

from smoelib.core.service import memory_choice, memory_floor_mb, service_model
from smoelib.pipeline.model import NodeSpec
from smoelib.settings import Settings

SIM = Settings().simulator


def model(d_model, d_ff, matrices, dtype, accel="h800", **spec):
    node = NodeSpec(id="x", kind="expert", stage="m", d_model=d_model, d_ff=d_ff,
                    matrices=matrices, dtype=dtype, profile_kind=spec.pop("kind", "none"),
                    **spec)
    return service_model(node, accelerator=SIM.accelerators.get(accel),
                         cpu_core=SIM.accelerators.cpu, s_bw=SIM.mps_bandwidth_share,
                         handler_ms=SIM.handler_ms, serialise_ms_per_kb=SIM.serialise_ms_per_kb,
                         d_model=768)


def test_the_gpu_roofline_fitted_on_one_deepgemm_point_reproduces_the_other_four():
    # DeepGEMM README (deepseek-ai/DeepGEMM, commit 55ab91f): DeepSeek-V3's routed expert
    # (7168 x 2048, 3 matrices, fp8) on an H800 at 64 / 256 / 512 / 1024 / 4096 tokens (us)
    m = model(7168, 2048, 3, "fp8")
    eff = SIM.accelerators.h800.efficiency
    # the efficiency is the 4096-token point's: 2 x 44 M x 4096 FLOP in 293 us - launch
    flops = 2 * 3 * 7168 * 2048 * 4096
    fitted = flops / ((293 - SIM.accelerators.h800.launch_us) * 1e-6) / 1979e12
    assert eff == pytest.approx(fitted, abs=0.01)
    for tokens, us in ((64, 19.5), (256, 25.4), (512, 45.0), (1024, 81.0)):
        assert float(m.ffn_ms(tokens, share=1.0, cores=1)) * 1000 == pytest.approx(us, rel=0.2)


def test_the_mps_share_slows_the_bandwidth_term_below_s_bw_and_the_compute_term_always():
    m = model(4096, 14336, 3, "bf16", accel="h100")
    one = float(m.ffn_ms(1, share=1.0, cores=1))
    assert float(m.ffn_ms(1, share=0.4, cores=1)) == pytest.approx(one)  # at s_bw: saturated
    launch = SIM.accelerators.h100.launch_us / 1000
    assert float(m.ffn_ms(1, share=0.2, cores=1)) - launch == pytest.approx(
        2 * (one - launch), rel=1e-9)
    big = 8192  # compute-bound: time x 1 / s
    assert float(m.ffn_ms(big, share=0.5, cores=1)) - launch == pytest.approx(
        2 * (float(m.ffn_ms(big, share=1.0, cores=1)) - launch), rel=1e-9)


def test_cpu_experts_follow_the_measured_per_core_curve():
    # research note "workload" 3: BERT's expert at 1 thread fp32: 0.97 ms at 1 token,
    # 19 at 256, 71 at 1024 (fit: max(0.9 ms, 0.075 ms x n))
    m = model(768, 3072, 2, "fp32", accel="cpu")
    for tokens, ms in ((1, 0.97), (256, 19.0), (1024, 71.0)):
        assert float(m.ffn_ms(tokens, share=0.0, cores=1)) == pytest.approx(ms, rel=0.15)
    assert float(m.ffn_ms(1024, share=0.0, cores=2)) == pytest.approx(
        float(m.ffn_ms(1024, share=0.0, cores=1)) / 2)
    assert float(m.ffn_ms(1024, share=0.5, cores=1)) == float(m.ffn_ms(1024, share=0, cores=1))


def test_a_measured_curve_is_interpolated_and_extrapolated_along_its_last_segment():
    m = model(768, 3072, 2, "bf16", kind="curve", profile_tokens=(1, 64, 256),
              profile_ms=(0.5, 0.9, 2.1))
    assert float(m.ffn_ms(64, share=1.0, cores=1)) == pytest.approx(0.9)
    assert float(m.ffn_ms(160, share=1.0, cores=1)) == pytest.approx(1.5)
    assert float(m.ffn_ms(512, share=1.0, cores=1)) == pytest.approx(2.1 + 256 * 1.2 / 192)
    # at share 0.2: the flat 0.5 ms at 1 / min(1, 0.2 / 0.4), the rest at 1 / 0.2
    assert float(m.ffn_ms(64, share=0.2, cores=1)) == pytest.approx(0.5 / 0.5 + 0.4 / 0.2)


def test_the_handler_is_single_threaded_and_cores_buy_workers():
    m = model(768, 3072, 2, "bf16", accel="h100")
    per_call, _ = m.cpu_coefficients(cpu=0.5)
    assert per_call == pytest.approx(2 * SIM.handler_ms)  # half a core: twice as long
    assert m.cpu_coefficients(cpu=4.0)[0] == pytest.approx(SIM.handler_ms)  # one core at most
    assert m.cpu_coefficients(cpu=4.0, parallelism=4)[0] == pytest.approx(SIM.handler_ms)
    assert m.cpu_coefficients(cpu=1.0, parallelism=2)[0] == pytest.approx(2 * SIM.handler_ms)


def test_memory_has_a_floor_of_runtime_plus_weights():
    spec = NodeSpec(id="x", kind="expert", stage="m", weights_mb=352.0)
    assert memory_floor_mb(spec, runtime_memory_mb=1536) == 1888.0
    assert memory_choice(1888.0, (1024, 2048, 4096)) == 2048
    assert memory_choice(5000.0, (1024, 2048, 4096)) == 5000
    assert np.isfinite(memory_floor_mb(spec, runtime_memory_mb=1536))

"""The memory planner (issue 3): decisions for simulated machines, from fake memory figures only.

The 8B checkpoint here is headers only (a :class:`Checkpoint` built from the 8B preset's
shapes): the planner never reads weights, so no 17 GB file is needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quant.memory import GiB, MiB, MachineMemory, parse_size
from quant.planner import Budget, Candidate, Unit, Workload, choose_plan, format_plan, plan_placement
from steerling_lite.loading.checkpoint import Checkpoint, TensorInfo, expected_shapes, file_name
from steerling_lite.cli import main
from steerling_lite.loading.plan import plan_memory
from steerling_lite.loading.random_checkpoint import preset_config

RAM_24 = MachineMemory(ram_total=24 * GiB, ram_available=22 * GiB)


@pytest.fixture(scope="module")
def ckpt_8b() -> Checkpoint:
    cfg = preset_config("8b")
    fake = Path("/nonexistent/8b")
    tensors = {n: TensorInfo(file_name(cfg, n), shape, "BF16", fake / "model.safetensors")
               for n, shape in expected_shapes(cfg).items()}
    return Checkpoint(fake, cfg, (fake / "model.safetensors",), tensors)


def gpu(total_gib: float, ram: MachineMemory = RAM_24) -> MachineMemory:
    return ram.with_simulated_gpu(int(total_gib * GiB))


# ---- Steerling-8B decisions ---------------------------------------------------------------------
@pytest.mark.parametrize("gib, method, split", [
    (24, "none", "100% GPU"),  # bf16 fits
    (12, "int8", "100% GPU"),  # bf16 does not; int8 does
    (8, "nf4", "100% GPU"),  # int8 does not; nf4 does
])
def test_auto_picks_the_best_precision_that_fits_on_the_gpu(ckpt_8b, gib, method, split):
    lp = plan_memory(ckpt_8b, memory=gpu(gib))
    assert (lp.method, lp.plan.split(), lp.plan.fits) == (method, split, True)
    assert lp.plan.execution_device == "cuda:0"
    assert lp.plan.devices["cuda:0"].peak <= gib * GiB
    assert [p.name for p in lp.candidates] == ["bf16", "int8", "nf4"]


@pytest.mark.parametrize("gib", [6, 4])
def test_small_gpus_offload_nf4_blocks_to_cpu_ram(ckpt_8b, gib):
    lp = plan_memory(ckpt_8b, memory=gpu(gib))
    plan = lp.plan
    assert lp.method == "nf4" and plan.fits and plan.offloads
    dm = plan.device_map()
    on_cpu = [k for k, v in dm.items() if v == "cpu"]
    assert on_cpu and all(k.startswith("transformer.blocks.") for k in on_cpu)  # only blocks are offloaded
    for resident in ("transformer.tok_emb", "transformer.lm_head", "transformer.ln_f", "known_head", "unknown_head"):
        assert dm[resident] == "cuda:0"
    assert plan.devices["cuda:0"].peak <= gib * GiB
    assert plan.devices["cuda:0"].streamed > 0  # room for one offloaded block on the GPU
    cpu_pct, gpu_pct = plan.split().split()[0].split("/")
    assert plan.split().endswith("CPU/GPU") and int(cpu_pct[:-1]) + int(gpu_pct[:-1]) == 100


def test_smaller_gpu_offloads_more(ckpt_8b):
    six, four = plan_memory(ckpt_8b, memory=gpu(6)).plan, plan_memory(ckpt_8b, memory=gpu(4)).plan
    assert four.offloaded_bytes > six.offloaded_bytes > 0


def test_issue_targets_for_8b_at_4k_context(ckpt_8b):
    """Issue 3: at most 6.5 GB of GPU memory with nf4 and 10.5 GB with int8 (what PyTorch
    allocates: weights, KV cache, workspace; the CUDA context reserve is on top)."""
    for method, limit in (("nf4", 6.5e9), ("int8", 10.5e9)):
        lp = plan_memory(ckpt_8b, quant=method, memory=gpu(80), context=4096)
        dev = lp.plan.devices["cuda:0"]
        assert not lp.plan.offloads
        assert dev.peak - dev.reserve <= limit, (method, dev)


def test_cpu_only_machines(ckpt_8b):
    lp = plan_memory(ckpt_8b, memory=RAM_24)
    assert (lp.method, lp.dtype.is_floating_point, lp.plan.split()) == ("none", True, "100% CPU")
    assert str(lp.dtype) == "torch.bfloat16"  # fp32 (33 GB) does not fit in half of 22 GiB
    small = MachineMemory(16 * GiB, 9 * GiB)
    assert plan_memory(ckpt_8b, memory=small).method == "nf4"
    tiny_ram = MachineMemory(8 * GiB, 5 * GiB)
    no_dir = plan_memory(ckpt_8b, memory=tiny_ram)  # only bf16 can go to disk without a folder (read in place)
    assert no_dir.method == "none" and no_dir.plan.fits and no_dir.plan.bytes_on("disk") > 10 * GiB
    assert any("with --offload-dir, nf4 would offload" in n for n in no_dir.plan.notes)
    with_dir = plan_memory(ckpt_8b, memory=tiny_ram, offload_dir="/tmp/offload")
    assert with_dir.plan.fits and with_dir.method == "nf4" and "disk" in with_dir.plan.split()
    assert with_dir.plan.devices["cpu"].peak <= 5 * GiB - GiB  # available minus the 1 GiB headroom


def test_unquantized_disk_offload_needs_no_folder(ckpt_8b):
    """bf16 layers go to disk as they are stored: accelerate reads them from the checkpoint."""
    lp = plan_memory(ckpt_8b, quant="none", memory=MachineMemory(16 * GiB, 10 * GiB))
    assert lp.plan.fits and lp.plan.bytes_on("disk") > 0


def test_gpu_too_small_for_the_resident_parts_runs_on_cpu(ckpt_8b):
    lp = plan_memory(ckpt_8b, memory=gpu(2))
    assert lp.plan.execution_device == "cpu" and "running on the CPU" in lp.plan.notes[0]


def test_caps_and_device_choice(ckpt_8b):
    m = gpu(24)
    assert plan_memory(ckpt_8b, memory=m, max_gpu_memory="12GiB").method == "int8"
    assert plan_memory(ckpt_8b, memory=m, device="cpu").plan.execution_device == "cpu"
    capped = plan_memory(ckpt_8b, memory=RAM_24, max_cpu_memory="8GiB")
    assert capped.method == "nf4" and capped.budget.cpu == 8 * GiB


def test_kv_cache_grows_with_context(ckpt_8b):
    short = plan_memory(ckpt_8b, quant="nf4", memory=gpu(24), context=1024).plan.devices["cuda:0"]
    full = plan_memory(ckpt_8b, quant="nf4", memory=gpu(24), context=4096).plan.devices["cuda:0"]
    # 2 (k, v) x 32 layers x 4 KV heads x 128 head dim x 2 bytes per token
    assert full.kv_cache - short.kv_cache == 3072 * 2 * 32 * 4 * 128 * 2


def test_summary_names_devices_and_split(ckpt_8b):
    text = plan_memory(ckpt_8b, memory=gpu(6)).summary()
    assert "transformer.blocks.0-" in text and "offloaded: streamed to cuda:0" in text
    assert "% CPU/GPU" in text and "CUDA context" in text


# ---- the generic planner with synthetic units -----------------------------------------------------
def units(n_blocks: int, block: int, fixed: int) -> list[Unit]:
    return [Unit("emb", fixed, offloadable=False)] + [Unit(f"blocks.{i}", block) for i in range(n_blocks)]


WORK = Workload(kv_cache=100 * MiB, workspace=100 * MiB, load_transient=0, host_baseline=0)


def test_fill_order_and_streaming_reserve():
    plan = plan_placement(units(10, 100 * MiB, 200 * MiB), WORK,
                          Budget(gpu=GiB + 400 * MiB + 500 * MiB, cpu=8 * GiB, gpu_reserve=GiB))
    # 500 MiB left for blocks; one block's room is kept for streaming: 4 on the GPU
    assert [plan.placement[f"blocks.{i}"] for i in range(10)] == ["cuda:0"] * 4 + ["cpu"] * 6
    assert plan.devices["cuda:0"].streamed == 100 * MiB and plan.devices["cuda:0"].peak <= plan.devices["cuda:0"].budget


def test_everything_fits_without_streaming_reserve():
    plan = plan_placement(units(4, 100 * MiB, 0), WORK, Budget(gpu=GiB + 600 * MiB, cpu=GiB, gpu_reserve=GiB))
    assert not plan.offloads and plan.devices["cuda:0"].streamed == 0 and plan.split() == "100% GPU"


def test_disk_when_ram_is_short_and_refusal_without_disk():
    b = Budget(gpu=None, cpu=700 * MiB, disk=True)
    plan = plan_placement(units(10, 100 * MiB, 0), WORK, b)
    assert plan.fits and plan.bytes_on("disk") > 0 and plan.split().endswith("disk/CPU")
    order = [plan.placement[f"blocks.{i}"] for i in range(10)]
    assert order == sorted(order, key=lambda d: d == "disk")  # RAM first, then disk, in model order
    refused = plan_placement(units(10, 100 * MiB, 0), WORK, Budget(gpu=None, cpu=700 * MiB, disk=False))
    assert not refused.fits


def test_choose_plan_prefers_no_offload_then_least_offload():
    budget = Budget(gpu=GiB + 500 * MiB, cpu=8 * GiB, gpu_reserve=GiB)
    big = Candidate("big", units(4, 200 * MiB, 0), WORK, budget)
    mid = Candidate("mid", units(4, 120 * MiB, 0), WORK, budget)
    small = Candidate("small", units(4, 50 * MiB, 0), WORK, budget)
    assert choose_plan([big, mid, small])[0].name == "small"  # the only one without offload
    tight = Budget(gpu=GiB + 350 * MiB, cpu=8 * GiB, gpu_reserve=GiB)
    chosen, plans = choose_plan([Candidate(c.name, c.units, c.workload, tight) for c in (big, mid)])
    assert all(p.offloads for p in plans) and chosen.name == "mid"


def test_format_plan_merges_consecutive_blocks():
    plan = plan_placement(units(10, 100 * MiB, 200 * MiB), WORK,
                          Budget(gpu=GiB + 400 * MiB + 500 * MiB, cpu=8 * GiB, gpu_reserve=GiB))
    text = "\n".join(format_plan(plan))
    assert "blocks.0-3" in text and "blocks.4-9" in text and "50%/50% CPU/GPU" in text  # 600 MiB each


def test_parse_size():
    assert parse_size("6GiB") == 6 * GiB and parse_size("8GB") == 8 * 10**9 and parse_size(123) == 123
    with pytest.raises(ValueError, match="expected a number of bytes or e.g. 6GiB"):
        parse_size("six gigs")


# ---- the command ------------------------------------------------------------------------------------
def test_plan_command_with_a_simulated_gpu(tiny_ckpt, capsys):
    assert main(["plan", "--model", str(tiny_ckpt), "--gpu-total", "8GiB"]) == 0
    out = capsys.readouterr().out
    assert "GPU cuda:0 (simulated): 8.0 GiB total" in out and "runs on cuda:0: 100% GPU (fits)" in out
    assert main(["plan", "--model", str(tiny_ckpt), "--device", "cpu", "--quant", "nf4", "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["quant"] == "nf4" and data["split"] == "100% CPU" and data["device_map"]["transformer.blocks.0"] == "cpu"


def test_plan_command_exit_code_when_it_does_not_fit(tiny_ckpt, capsys):
    assert main(["plan", "--model", str(tiny_ckpt), "--device", "cpu", "--max-cpu-memory", "1MiB"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


# ---- plan, then load (issue 10) --------------------------------------------------------------------
def test_sizes_have_one_convention():
    import steerling_lite
    from quant.memory import fmt_bytes

    assert steerling_lite.parse_size is parse_size and steerling_lite.fmt_bytes is fmt_bytes
    assert parse_size("1234") == 1234 and parse_size(" 8 gb ") == 8 * 10**9 and parse_size("1.5MiB") == 3 * MiB // 2
    assert parse_size("2TiB") == 2 * 2**40 and parse_size("512b") == 512 and parse_size("3kb") == 3000
    for bad in ("", "8g", "-1", "1e3", "GiB"):
        with pytest.raises(ValueError, match="expected a number of bytes"):
            parse_size(bad)
    assert (fmt_bytes(100), fmt_bytes(1536), fmt_bytes(3 * 2**40)) == ("100 B", "1.5 KiB", "3.0 TiB")
    assert parse_size(fmt_bytes(5 * GiB).replace(" ", "")) == 5 * GiB


def test_a_plain_load_follows_a_plan_and_reads_the_same_weights(tiny_ckpt):
    import torch

    from steerling_lite import Steerling
    from steerling_lite.loading.checkpoint import load_model

    lm = Steerling.load(tiny_ckpt, device="cpu", dtype="fp32", quant="none")
    assert lm.plan is not None and lm.plan.method == "none" and lm.plan.plan.split() == "100% CPU"
    assert (lm.quant, lm.dtype, lm.device) == ("none", torch.float32, torch.device("cpu"))
    ref = dict(load_model(tiny_ckpt, "cpu", torch.float32).named_parameters())
    got = dict(lm.model.named_parameters())
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


def test_device_names_and_devices_are_checked_when_planning(ckpt_8b, tiny_ckpt):
    from steerling_lite import PlacementError, Steerling

    with pytest.raises(PlacementError, match="device 'gpu': expected auto, cpu, cuda or cuda:N"):
        Steerling.load(tiny_ckpt, device="gpu")
    with pytest.raises(PlacementError, match="this machine has no CUDA GPU"):
        plan_memory(ckpt_8b, device="cuda", memory=RAM_24)
    with pytest.raises(PlacementError, match="no such GPU"):
        plan_memory(ckpt_8b, device="cuda:1", memory=gpu(24))
    small = plan_memory(ckpt_8b, memory=gpu(2))  # runs on the CPU
    small.check_device("auto"), small.check_device("cpu"), small.check_device(None)
    with pytest.raises(PlacementError, match="does not fit on cuda"):
        small.check_device("cuda")
    plan_memory(ckpt_8b, memory=gpu(24)).check_device("cuda")  # cuda means the first GPU


def test_dtype_names_come_from_one_table(ckpt_8b):
    import torch

    from quant import QuantConfig
    from quant.config import FLOAT_DTYPES, parse_dtype

    for short, dtype in FLOAT_DTYPES.items():
        assert parse_dtype(short) is dtype and parse_dtype(str(dtype).removeprefix("torch.")) is dtype
        assert plan_memory(ckpt_8b, quant="none", dtype=short, memory=gpu(80)).dtype is dtype
    assert QuantConfig.from_dict(QuantConfig("nf4", compute_dtype=torch.float16).to_dict()).compute_dtype is torch.float16
    with pytest.raises(ValueError, match="dtype 'float': expected one of bf16, bfloat16"):
        plan_memory(ckpt_8b, dtype="float", memory=RAM_24)

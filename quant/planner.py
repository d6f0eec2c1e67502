"""Memory planner: where each part of a model goes (GPU, CPU RAM, disk) before any weight is read.

The model is described as an ordered list of :class:`Unit` s (bytes of weights each, as they
will be stored, and whether the unit may be offloaded) plus a :class:`Workload` (KV cache
and activation workspace on the execution device, what loading holds in RAM). A
:class:`Budget` gives the memory available. :func:`plan_placement` then fills, in order:

1. with a GPU: the CUDA context reserve (1 GiB by default: llama.cpp keeps a 1024 MiB
   margin, accelerate's docs count 1-2 GB for the context), the units that must stay on
   the execution device, the KV cache and the workspace; then as many offloadable units as
   fit. The rest is *offloaded* the accelerate way: kept in CPU RAM (or on disk when RAM
   is short) and copied to the GPU for each forward, which also needs room for the
   largest offloaded unit on the GPU. When even the fixed part does not fit, the model
   runs on the CPU.
2. on the CPU: everything in RAM, offloadable units that do not fit go to disk.

:func:`choose_plan` picks among candidate precisions the first (best) that runs without
offloading, else the one that offloads least. Nothing here reads the machine: memory
figures come in through :class:`Budget` (see :mod:`quant.memory`), so decisions can be
tested with any figures.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .memory import GiB, fmt_bytes

GPU_RESERVE = GiB  # CUDA context + allocator slack
CPU_HEADROOM = GiB  # RAM left to the OS and other programs when the budget is "what is available"


@dataclass(frozen=True)
class Unit:
    """A part of the model placed as a whole.

    Attributes:
        name: its module name (a device-map key).
        nbytes: bytes of its weights as stored (quantized or not).
        offloadable: whether it may live in CPU RAM / on disk and be streamed to the execution
            device per forward (False: it stays resident on the execution device).
        modules: device-map keys placed with it (default ``(name,)``), e.g. a tied LM head.
        label: how it is stored, for display (``nf4``, ``bf16``, ...).
    """

    name: str
    nbytes: int
    offloadable: bool = True
    modules: tuple[str, ...] = ()
    label: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        return self.modules or (self.name,)


@dataclass(frozen=True)
class Workload:
    """Memory besides the weights, in bytes.

    Attributes:
        kv_cache: KV cache at the planned context, on the execution device.
        workspace: activations and temporaries of one forward + sampling, on the execution device.
        load_transient: host RAM held while loading one tensor (read buffer, quantization temporaries).
        host_baseline: RAM of the process before loading (interpreter, torch, libraries).
    """

    kv_cache: int
    workspace: int
    load_transient: int = 0
    host_baseline: int = 0


@dataclass(frozen=True)
class Budget:
    """Memory the plan may use, in bytes.

    Attributes:
        gpu: on the GPU in all (the CUDA context reserve included); None: no GPU.
        cpu: RAM in all (the process baseline included).
        disk: whether units may be offloaded to disk (an offload directory was given).
        gpu_device: the GPU's device string.
        gpu_reserve: CUDA context and allocator slack kept free on the GPU.
    """

    gpu: int | None
    cpu: int
    disk: bool = False
    gpu_device: str = "cuda:0"
    gpu_reserve: int = GPU_RESERVE


@dataclass
class DeviceUse:
    """Planned bytes on one device; ``peak = reserve + weights + max(loading, kv_cache + workspace + streamed)``.

    ``reserve`` is the CUDA context on a GPU and the process baseline on the CPU;
    ``streamed`` the largest offloaded unit copied in for a forward; ``loading`` what
    loading holds besides the weights (host only).
    """

    device: str
    weights: int = 0
    kv_cache: int = 0
    workspace: int = 0
    reserve: int = 0
    streamed: int = 0
    loading: int = 0
    budget: int | None = None

    @property
    def peak(self) -> int:
        return self.reserve + self.weights + max(self.loading, self.kv_cache + self.workspace + self.streamed)


@dataclass
class Plan:
    """Where every unit goes and what each device holds.

    Attributes:
        placement: unit name -> ``cuda:N``, ``cpu`` or ``disk`` (where its weights are stored).
        units: the units, in model order.
        execution_device: where every forward runs (offloaded weights are streamed there).
        devices: planned use per device (``disk`` counts weights only).
        fits: whether the budget holds the plan (else ``notes`` says what is missing).
        notes: human-readable decisions and problems.
        name: the candidate's name (e.g. its precision).
    """

    placement: dict[str, str]
    units: list[Unit]
    execution_device: str
    devices: dict[str, DeviceUse]
    fits: bool
    notes: list[str] = field(default_factory=list)
    name: str = ""

    def device_map(self) -> dict[str, str]:
        """Module name -> device for accelerate (every key of every unit)."""
        return {key: self.placement[u.name] for u in self.units for key in u.keys}

    @property
    def weight_bytes(self) -> int:
        return sum(u.nbytes for u in self.units)

    def bytes_on(self, device: str) -> int:
        """Weight bytes stored on ``device``."""
        return sum(u.nbytes for u in self.units if self.placement[u.name] == device)

    @property
    def offloaded_bytes(self) -> int:
        """Weight bytes not stored on the execution device."""
        return self.weight_bytes - self.bytes_on(self.execution_device)

    @property
    def offloads(self) -> bool:
        return self.offloaded_bytes > 0

    def split(self) -> str:
        """Where the weights are, as ``ollama ps`` prints it: ``100% GPU``, ``100% CPU``,
        ``27%/73% CPU/GPU``, ``10%/17%/73% disk/CPU/GPU``."""
        total = max(self.weight_bytes, 1)
        parts = [(name, self.bytes_on(dev)) for name, dev in
                 (("disk", "disk"), ("CPU", "cpu"), ("GPU", self.execution_device if self.execution_device != "cpu" else ""))]
        parts = [(n, b) for n, b in parts if b > 0]
        if len(parts) == 1:
            return f"100% {parts[0][0]}"
        pcts = [round(100 * b / total) for _, b in parts]
        pcts[-1] = 100 - sum(pcts[:-1])
        return "/".join(f"{p}%" for p in pcts) + " " + "/".join(n for n, _ in parts)


def _use(devices: dict[str, DeviceUse], device: str) -> DeviceUse:
    if device not in devices:
        devices[device] = DeviceUse(device)
    return devices[device]


def plan_placement(units: Sequence[Unit], workload: Workload, budget: Budget, name: str = "") -> Plan:
    """Place ``units`` within ``budget``; see the module docstring for the order of filling.

    Returns:
        a :class:`Plan`; ``fits`` is False (with a note) when even offloading cannot hold it,
        or when it needs disk offload and ``budget.disk`` is False.
    """
    units = list(units)
    if budget.gpu is not None:
        plan = _plan_gpu(units, workload, budget, name)
        if plan is not None:
            return plan
    plan = _plan_cpu(units, workload, budget, name)
    if budget.gpu is not None:
        fixed = sum(u.nbytes for u in units if not u.offloadable)
        need = budget.gpu_reserve + fixed + workload.kv_cache + workload.workspace
        plan.notes.insert(0, f"GPU budget {fmt_bytes(budget.gpu)} is below the {fmt_bytes(need)} that must stay on "
                             "the GPU (CUDA context, resident weights, KV cache, workspace): running on the CPU")
    return plan


def _place_host(units: list[Unit], placement: dict[str, str], devices: dict[str, DeviceUse], room: int,
                budget: Budget, notes: list[str]) -> bool:
    """Put ``units`` in CPU RAM while ``room`` lasts, then on disk. Returns False if disk was needed but not allowed."""
    ok = True
    for u in units:
        if u.nbytes <= room:
            placement[u.name] = "cpu"
            _use(devices, "cpu").weights += u.nbytes
            room -= u.nbytes
        else:
            placement[u.name] = "disk"
            _use(devices, "disk").weights += u.nbytes
            room = -1  # keep the order: everything after the first disk unit goes to disk
            if not budget.disk:
                ok = False
    if not ok:
        notes.append(f"{fmt_bytes(devices['disk'].weights)} of weights do not fit in RAM: give an offload "
                     "directory (--offload-dir) to offload them to disk, or choose a smaller precision")
    return ok


def _plan_gpu(units: list[Unit], workload: Workload, budget: Budget, name: str) -> Plan | None:
    assert budget.gpu is not None
    gpu = budget.gpu_device
    fixed = [u for u in units if not u.offloadable]
    flex = [u for u in units if u.offloadable]
    free = budget.gpu - budget.gpu_reserve - workload.kv_cache - workload.workspace - sum(u.nbytes for u in fixed)
    if free < 0:
        return None
    placement = {u.name: gpu for u in fixed}
    devices: dict[str, DeviceUse] = {}
    g = _use(devices, gpu)
    g.reserve, g.kv_cache, g.workspace, g.budget = budget.gpu_reserve, workload.kv_cache, workload.workspace, budget.gpu
    g.weights = sum(u.nbytes for u in fixed)
    notes: list[str] = []
    rest: list[Unit] = []
    if sum(u.nbytes for u in flex) <= free:
        on_gpu = flex
    else:
        g.streamed = max(u.nbytes for u in flex)
        room = free - g.streamed
        on_gpu = []
        for u in flex:
            if u.nbytes <= room and not rest:
                on_gpu.append(u)
                room -= u.nbytes
            else:
                rest.append(u)
    for u in on_gpu:
        placement[u.name] = gpu
        g.weights += u.nbytes
    h = _use(devices, "cpu")
    h.reserve, h.loading, h.budget = workload.host_baseline, workload.load_transient, budget.cpu
    ok = True
    if rest:
        room = budget.cpu - workload.host_baseline - workload.load_transient
        ok = _place_host(rest, placement, devices, room, budget, notes)
        notes.insert(0, f"{len(rest)} of {len(flex)} offloadable parts offloaded: their weights are copied to {gpu} "
                        "for each forward (slower)")
    if h.peak > budget.cpu:
        ok = False
        notes.append(f"RAM: needs {fmt_bytes(h.peak)}, budget {fmt_bytes(budget.cpu)}")
    return Plan(placement, units, gpu, devices, ok, notes, name)


def _plan_cpu(units: list[Unit], workload: Workload, budget: Budget, name: str) -> Plan:
    fixed = [u for u in units if not u.offloadable]
    flex = [u for u in units if u.offloadable]
    devices: dict[str, DeviceUse] = {}
    h = _use(devices, "cpu")
    h.reserve, h.loading, h.budget = workload.host_baseline, workload.load_transient, budget.cpu
    h.kv_cache, h.workspace = workload.kv_cache, workload.workspace
    h.weights = sum(u.nbytes for u in fixed)
    placement = {u.name: "cpu" for u in fixed}
    notes: list[str] = []
    ok = True
    runtime = workload.kv_cache + workload.workspace
    room = budget.cpu - workload.host_baseline - h.weights
    if sum(u.nbytes for u in flex) + max(workload.load_transient, runtime) <= room:
        for u in flex:
            placement[u.name] = "cpu"
            h.weights += u.nbytes
    else:
        h.streamed = max((u.nbytes for u in flex), default=0)
        room -= max(workload.load_transient, runtime + h.streamed)
        before = h.weights
        ok = _place_host(flex, placement, devices, room, budget, notes)
        h.weights = before + sum(u.nbytes for u in flex if placement[u.name] == "cpu")
        n_disk = sum(1 for u in flex if placement[u.name] == "disk")
        notes.insert(0, f"{n_disk} of {len(flex)} offloadable parts offloaded to disk: read back for each forward (slow)")
    if h.peak > budget.cpu:
        ok = False
        notes.append(f"RAM: needs {fmt_bytes(h.peak)}, budget {fmt_bytes(budget.cpu)}")
    return Plan(placement, units, "cpu", devices, ok, notes, name)


@dataclass(frozen=True)
class Candidate:
    """One way to store the model (e.g. a precision): its units, workload and budget."""

    name: str
    units: Sequence[Unit]
    workload: Workload
    budget: Budget


def choose_plan(candidates: Sequence[Candidate]) -> tuple[Plan, list[Plan]]:
    """Plan each candidate (best first, e.g. bf16, int8, nf4) and pick one: the first that runs
    without offloading; else, among those that fit, the one offloading the fewest bytes
    (the earlier on a tie); else the last.

    Returns:
        ``(chosen, all plans in candidate order)``.

    Raises:
        ValueError: no candidates.
    """
    if not candidates:
        raise ValueError("no candidate to plan")
    plans = [plan_placement(c.units, c.workload, c.budget, c.name) for c in candidates]
    for p in plans:
        if p.fits and not p.offloads:
            return p, plans
    fitting = [p for p in plans if p.fits]
    if fitting:
        return min(fitting, key=lambda p: p.offloaded_bytes), plans
    return plans[-1], plans


_NUMBERED = re.compile(r"^(.*)\.(\d+)$")


def placement_rows(plan: Plan) -> list[tuple[str, str, int, str]]:
    """``(modules, device, bytes, label)`` rows, consecutive numbered units on the same device
    with the same label merged (``transformer.blocks.0-19``)."""
    rows: list[list] = []
    for u in plan.units:
        dev = plan.placement[u.name]
        m = _NUMBERED.match(u.name)
        if rows and m and rows[-1][4] == m.group(1) and rows[-1][1] == dev and rows[-1][3] == u.label \
                and rows[-1][6] == int(m.group(2)) - 1:
            rows[-1][2] += u.nbytes
            rows[-1][6] = int(m.group(2))
            rows[-1][0] = f"{m.group(1)}.{rows[-1][5]}-{m.group(2)}"
            continue
        name = " + ".join(u.keys) if len(u.keys) > 1 else u.name
        rows.append([name, dev, u.nbytes, u.label, m.group(1) if m else None, int(m.group(2)) if m else -1,
                     int(m.group(2)) if m else -1])
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def format_plan(plan: Plan) -> list[str]:
    """The plan as text lines: placement per module, bytes per device, expected peak, and the
    ``ollama ps``-style split."""
    exec_dev = plan.execution_device
    lines = [f"{'module':<44}{'stored on':<11}{'bytes':>11}  precision"]
    for name, dev, nbytes, label in placement_rows(plan):
        if dev == exec_dev:
            note = ""
        elif dev == "disk":
            note = f"  (offloaded: read from disk to {exec_dev} per forward)"
        else:
            note = f"  (offloaded: streamed to {exec_dev} per forward)"
        lines.append(f"{name:<44}{dev:<11}{fmt_bytes(nbytes):>11}  {label}{note}")
    lines.append("")
    head = f"{'device':<8}{'weights':>11}{'KV cache':>11}{'workspace':>11}{'reserve':>11}{'streamed':>11}" \
           f"{'loading':>11}{'peak':>11}{'budget':>11}"
    lines.append(head)
    for dev in sorted(plan.devices, key=lambda d: (d == "disk", d == "cpu", d)):
        u = plan.devices[dev]
        if dev == "disk":
            lines.append(f"{dev:<8}{fmt_bytes(u.weights):>11}")
            continue
        budget = fmt_bytes(u.budget) if u.budget is not None else "-"
        lines.append(f"{dev:<8}{fmt_bytes(u.weights):>11}{fmt_bytes(u.kv_cache):>11}{fmt_bytes(u.workspace):>11}"
                     f"{fmt_bytes(u.reserve):>11}{fmt_bytes(u.streamed):>11}{fmt_bytes(u.loading):>11}"
                     f"{fmt_bytes(u.peak):>11}{budget:>11}")
    lines.append("")
    status = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(f"runs on {exec_dev}: {plan.split()} ({status})")
    for note in plan.notes:
        lines.append(f"note: {note}")
    return lines

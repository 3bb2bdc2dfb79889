"""The MFU denominator: the matmul FLOP/s this machine reaches, kept per machine and checked by every run that reads it.

A peak read under load used to stick: on a 2-core CPU the cache held 135 GFLOP/s, read while another job ran, a third
of what the cores do alone, and MFU showed 61-70% for a run whose true share was about 24%. So:

- the peak is the fastest of many matmuls at sizes that fill the device (`peak_sizes`);
- it is kept per machine (device, processor, dtype, threads) in a small JSON file (`cache_file`), measured the first
  time;
- every later read checks the kept figure with a few matmuls in this process: a check that beats it by more than
  CHECK_MARGIN means it was read under load, so it is measured again and replaced. A check within the margin leaves it
  as it is, so that the trials of a study divide by the same figure;
- a run that goes faster than the peak raises it, so that an MFU never exceeds 100%;
- on a GPU with a published dense bf16 peak (BF16_DENSE_PEAK), a bf16 run's peak is that figure, as MFU is usually
  given.

`MachinePeak.describe()` says what the figure is and where it comes from; runs report it with their MFU.
"""

import functools
import json
import math
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

from train_core.targets import peak_cache_problem

# n of the n x n matmuls the peak is the fastest of. On a quiet 2-core AMD EPYC (AVX-512 bf16) 1024² reads 425 GFLOP/s
# in bf16 and 190 in fp32, 2048² 405 and 150, 4096² 370 and 140-170: past the caches the rate falls, while a CPU with
# more cores may need 2048² to keep each core busy. A GPU's tensor cores fill at 8192².
CPU_PEAK_SIZES = (1024, 2048)
GPU_PEAK_SIZES = (4096, 8192)
MEASURE_S = 1.0  # the first reading of a machine: the fastest of the matmuls that fit in it
CHECK_S = 0.1  # each later read's check: at least two matmuls of each size after a warm-up
CHECK_MARGIN = 0.10  # a check this much above the kept figure replaces it; below, the figure stays (noise)
# Published dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a name fragment of torch.cuda.get_device_name; the
# first fragment a name contains decides. The H200 has the H100 SXM's compute; the PCIe and NVL H100s run at lower
# clocks with fewer SMs.
BF16_DENSE_PEAK = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
                   ("A100", 312e12)]


def cache_file() -> Path:
    """$LR_SWEEP_CACHE/peak_flops.json, else ~/.cache/lr-sweep/peak_flops.json; read at each call, so that a test or a
    benchmark can point it elsewhere."""
    return Path(os.environ.get("LR_SWEEP_CACHE", Path.home() / ".cache" / "lr-sweep")) / "peak_flops.json"


def machine_key(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return f"{device.type}|{name}|{_dtype_name(dtype)}|{torch.get_num_threads()} threads"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def peak_sizes(device: torch.device) -> tuple[int, ...]:
    return GPU_PEAK_SIZES if device.type == "cuda" else CPU_PEAK_SIZES


def published_bf16_peak(device_name: str) -> float | None:
    """The published dense bf16 FLOP/s of a GPU named `device_name`, or None for a GPU not in BF16_DENSE_PEAK."""
    return next((flops for fragment, flops in BF16_DENSE_PEAK if fragment in device_name), None)


def measure_peak_flops(device: torch.device, dtype: torch.dtype, *, budget_s: float = MEASURE_S) -> float:
    """The fastest matmul at the device's peak sizes, timed one by one for budget_s in all: one that another process
    interrupts reads low, the fastest is the closest to what this device can do."""
    sizes = peak_sizes(device)
    return max(_fastest_matmul(device, dtype, n, budget_s=budget_s / len(sizes)) for n in sizes)


def _fastest_matmul(device: torch.device, dtype: torch.dtype, n: int, *, budget_s: float) -> float:
    """FLOP/s of the fastest n x n matmul of at least two timed for budget_s after a warm-up."""
    # A generator of its own: drawing from the global one would shift a resumed run's dropout masks off the
    # uninterrupted run's, since a run measures after it restored its RNG state.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    a @ b
    _sync(device)
    fastest, timed, started = math.inf, 0, time.perf_counter()
    while timed < 2 or time.perf_counter() - started < budget_s:
        start = time.perf_counter()
        a @ b
        _sync(device)
        fastest = min(fastest, time.perf_counter() - start)
        timed += 1
    return 2 * n**3 / fastest


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_flops(flops: float) -> str:
    return f"{flops / 1e12:,.0f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:,.1f} GFLOP/s"


class MachinePeak:
    """The peak FLOP/s an MFU is measured against, and where that figure comes from (`source`, said by `describe`)."""

    def __init__(self, key: str, flops: float, *, source: str = "as given", path: Path | None = None):
        self.key, self.flops, self.source, self.path = key, flops, source, path or cache_file()

    @classmethod
    def load(cls, device: torch.device, dtype: torch.dtype, *, path: Path | None = None) -> "MachinePeak":
        """A known GPU's published bf16 peak; else this machine's kept peak, checked now and measured again when the
        check beats it by more than CHECK_MARGIN; measured when none is kept."""
        key, path = machine_key(device, dtype), path or cache_file()
        if device.type == "cuda" and dtype == torch.bfloat16:
            name = torch.cuda.get_device_name(device)
            if published := published_bf16_peak(name):
                return cls(key, published, source=f"the published dense bf16 peak of the {name}", path=path)
        threads = f" on {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        sizes = " and ".join(f"{n}²" for n in peak_sizes(device))
        what = f"this machine's {_dtype_name(dtype)} matmul peak ({sizes}{threads})"
        kept = _read(path).get(key)
        if kept is None:
            peak = cls(key, measure_peak_flops(device, dtype), source=f"{what}, measured now", path=path)
            peak.save()
            return peak
        check = _check(key, path, device, dtype)
        if check <= kept * (1 + CHECK_MARGIN):
            return cls(key, kept, source=f"{what}, kept in {path}; a check now read {format_flops(check)}", path=path)
        remeasured = max(check, measure_peak_flops(device, dtype))
        peak = cls(key, remeasured, path=path, source=f"{what}, measured now: a check beat the {format_flops(kept)} "
                   f"kept in {path} by more than {CHECK_MARGIN:.0%} (read under load)")
        peak.save()
        return peak

    def describe(self) -> str:
        return f"{format_flops(self.flops)}, {self.source}"

    def mfu(self, achieved_flops: float) -> float:
        """achieved / peak, at most 1: a rate above the peak is a better reading of the peak."""
        if achieved_flops > self.flops:
            self.flops = achieved_flops
            self.source = "the fastest rate this run reached, above the peak read before it"
        return achieved_flops / self.flops

    def save(self) -> None:
        """Write this peak, or keep a higher one another process wrote meanwhile (atomically: temp file, rename)."""
        if (problem := peak_cache_problem(self.path)) is not None:
            _warn_left_alone(self.path, problem)
            return
        table = _read(self.path)
        if table.get(self.key, 0.0) >= self.flops:
            return
        table[self.key] = self.flops
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as f:
                json.dump(table, f, indent=1, sort_keys=True)
            os.replace(f.name, self.path)
        except OSError:
            pass  # a read-only home: the peak is still right for this process


@functools.cache  # once per process, machine key and cache: a sweep's trials share it instead of each paying for it
def _check(key: str, path: Path, device: torch.device, dtype: torch.dtype) -> float:
    """A quick reading of the peak, against which a kept figure is trusted or measured again."""
    return measure_peak_flops(device, dtype, budget_s=CHECK_S)


@functools.cache  # once per process and path: a sweep saves the peak after every trial
def _warn_left_alone(path: Path, problem: str) -> None:
    warnings.warn(f"the peak FLOP/s cache {path} is {problem}, not a JSON table of peaks: left as it is, and each run "
                  "measures the peak afresh (set LR_SWEEP_CACHE to another folder to keep it)", stacklevel=3)


def _read(path: Path) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}

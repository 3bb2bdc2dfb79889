"""The MFU denominator: the matmul FLOP/s this machine reaches, measured once per machine and kept.

One short matmul at start-up reads low on a busy machine (a sweep printed `mfu 120.0%`). The peak is kept per machine
(device, processor, dtype, threads) in a small JSON file: measured as the best of several bursts the first time, and
raised whenever a run achieves more than it, so that it only grows towards the truth and an MFU never exceeds 100%.
"""

import functools
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

from train_core.targets import peak_cache_problem

CACHE_FILE = Path(os.environ.get("LR_SWEEP_CACHE", Path.home() / ".cache" / "lr-sweep")) / "peak_flops.json"


def machine_key(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return f"{device.type}|{name}|{str(dtype).removeprefix('torch.')}|{torch.get_num_threads()} threads"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_peak_flops(device: torch.device, dtype: torch.dtype, *, bursts: int = 8) -> float:
    """The best of `bursts` short matmul bursts: a burst that another process interrupts reads low, the best one
    is the closest to what this device can do."""
    n = 4096 if device.type == "cuda" else 1024
    # A generator of its own: drawing from the global one would shift a resumed run's dropout masks off the
    # uninterrupted run's, since a run measures after it restored its RNG state.
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(bursts):
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * 3 / (time.perf_counter() - start))
    return best


class MachinePeak:
    """The peak FLOP/s of one machine key, read from the cache file (measured when it has none) and raised by what
    runs achieve."""

    def __init__(self, key: str, flops: float, *, path: Path = CACHE_FILE):
        self.key, self.flops, self.path = key, flops, path

    @classmethod
    def load(cls, device: torch.device, dtype: torch.dtype, *, path: Path = CACHE_FILE) -> "MachinePeak":
        key = machine_key(device, dtype)
        cached = _read(path).get(key)
        peak = cls(key, cached or measure_peak_flops(device, dtype), path=path)
        if cached is None:
            peak.save()
        return peak

    def mfu(self, achieved_flops: float) -> float:
        """achieved / peak, at most 1: a rate above the peak is a better reading of the peak."""
        if achieved_flops > self.flops:
            self.flops = achieved_flops
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


@functools.cache  # once per process and path: a sweep saves the peak after every trial
def _warn_left_alone(path: Path, problem: str) -> None:
    warnings.warn(f"the peak FLOP/s cache {path} is {problem}, not a JSON table of peaks: left as it is, and each run "
                  "measures the peak afresh (set LR_SWEEP_CACHE to another folder to keep it)", stacklevel=3)


def _read(path: Path) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}

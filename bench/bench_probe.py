"""Step timestamps and memory readings, taken the same way in our trainer and in kohya's.

Imported by ``bench_train.py`` (our side, fed from the loop's Progress events)
and by ``kohya_shim.py`` (kohya's side, fed from a global optimizer-step hook).
It needs only torch and the standard library, so it also runs under the Python
that sd-scripts is installed in.

At every optimizer step ``mark()`` synchronises the GPU and takes a wall-clock
timestamp. At the end of the last warm-up step it records the peak so far and
resets torch's peak counters, so the peaks reported afterwards cover the
steady-state steps only. At the last step it reads torch's counters, the
driver's device-wide view (``torch.cuda.mem_get_info``) and, where
``nvidia-smi`` can see this process, its per-process figure, and writes a JSON
file the parent reads.
"""
from __future__ import annotations

import atexit
import json
import os
import subprocess
import time
from typing import Optional

ENV_OUT = "LT_BENCH_PROBE_OUT"
ENV_WARMUP = "LT_BENCH_WARMUP"
ENV_TOTAL = "LT_BENCH_TOTAL_STEPS"
ENV_LAUNCH = "LT_BENCH_LAUNCH_TIME"


def nvidia_smi_processes() -> Optional[list[dict]]:
    """[{pid, used_mib}] of the compute processes nvidia-smi lists, or None without nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            try:
                found.append({"pid": int(parts[0]), "used_mib": float(parts[1])})
            except ValueError:
                pass
    return found


class StepProbe:
    def __init__(self, out_path: str, warmup: int, total_steps: int, launch_time: Optional[float] = None,
                 device=None):
        if warmup < 1 or total_steps <= warmup:
            raise ValueError(f"need 1 <= warmup < total steps, got warmup={warmup}, total={total_steps}")
        self.out_path = out_path
        self.warmup = warmup
        self.total_steps = total_steps
        self.launch_time = launch_time
        self.device = device
        self.times: list[float] = []
        self.count = 0
        self.finished = False
        self.extra: dict = {}
        self.record: dict = {"pid": os.getpid(), "warmup": warmup, "total_steps": total_steps,
                             "launch_time": launch_time}
        atexit.register(self.finish)

    @classmethod
    def from_env(cls) -> "StepProbe":
        launch = os.environ.get(ENV_LAUNCH)
        return cls(os.environ[ENV_OUT], int(os.environ[ENV_WARMUP]), int(os.environ[ENV_TOTAL]),
                   float(launch) if launch else None)

    # -- torch helpers (torch is imported lazily: the shim installs the hook first)
    def _cuda(self):
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch
        return None

    def _device_index(self, torch) -> int:
        if self.device is not None and getattr(self.device, "type", "cuda") == "cuda":
            return self.device.index if self.device.index is not None else torch.cuda.current_device()
        return torch.cuda.current_device()

    def note_pre_loop(self) -> None:
        """Our loop resets torch's peak counters as it starts; keep what loading and caching reached."""
        torch = self._cuda()
        if torch is not None:
            self.record["pre_loop_peak_allocated"] = int(torch.cuda.max_memory_allocated(self._device_index(torch)))

    def mark(self, step: Optional[int] = None) -> None:
        """Call once per optimizer step, after it (``step`` is 1-based; counted when omitted)."""
        if self.finished:
            return
        self.count = step if step is not None else self.count + 1
        torch = self._cuda()
        if torch is not None:
            index = self._device_index(torch)
            torch.cuda.synchronize(index)
        now = time.time()
        self.times.append(now)
        if torch is not None:
            free, total = torch.cuda.mem_get_info(index)
            used = total - free
            self.record["driver_device_used_max"] = max(self.record.get("driver_device_used_max", 0), used)
            self.record["driver_device_total"] = total
            if self.count == self.warmup:
                self.record["warmup_peak_allocated"] = int(torch.cuda.max_memory_allocated(index))
                self.record["warmup_peak_reserved"] = int(torch.cuda.max_memory_reserved(index))
                torch.cuda.reset_peak_memory_stats(index)
        if self.count >= self.total_steps:
            self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        torch = self._cuda()
        rec = self.record
        rec["times"] = self.times
        rec["steps_seen"] = self.count
        rec["complete"] = self.count >= self.total_steps
        if torch is not None:
            index = self._device_index(torch)
            rec["device_name"] = torch.cuda.get_device_name(index)
            rec["steady_peak_allocated"] = int(torch.cuda.max_memory_allocated(index))
            rec["steady_peak_reserved"] = int(torch.cuda.max_memory_reserved(index))
            # the caching allocator keeps what it reserved, so this is (close to) the process's peak
            procs = nvidia_smi_processes()
            rec["nvidia_smi_processes"] = procs
            mine = [p for p in procs or [] if p["pid"] == os.getpid()]
            rec["nvidia_smi_process_mib"] = mine[0]["used_mib"] if mine else None
        try:
            import resource

            # Linux reports KiB; the process's peak resident memory, CPU runs included
            rec["max_rss_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        except (ImportError, OSError):
            pass
        rec.update(self.extra)
        tmp = f"{self.out_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(rec, handle)
        os.replace(tmp, self.out_path)

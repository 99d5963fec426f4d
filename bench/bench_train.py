"""Training speed and memory: our trainer, and optionally kohya sd-scripts, on the same models and data.

    python -m lora_trainer bench [--rows ROWS] [--steps N] [--warmup N] [--kohya PATH] [--json OUT]
    python -m lora_trainer bench --tiny --steps 6 --warmup 2     # CPU smoke test, not a benchmark

Each row trains a LoRA (dim 32, alpha 16, AdamW, constant lr, bf16 mixed
precision, cached latents, 40 synthetic images) on a checkpoint with the real
full-size SD1.5 / SDXL architecture and random weights, written once to the
work folder as a single-file LDM checkpoint that both trainers load. Each side
runs in a fresh process (so memory figures and the time to the first step are
per run): ours through ``lora_trainer.training.loop.train`` with a Progress
callback, kohya's through ``bench/kohya_shim.py`` (a global optimizer-step
hook). Both take a GPU-synchronised timestamp at every optimizer step; the
first ``--warmup`` steps are discarded and it/s is measured over the next
``--steps``. See bench/README.md for the columns and how to run it on a GPU box.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

GIB = 2**30


@dataclass(frozen=True)
class Row:
    name: str
    label: str  # {res} is the resolution the row runs at
    arch: str  # "sd1" / "sdxl"
    resolution: int
    batch: int
    train_te: bool  # UNet + text-encoder LoRA; False: UNet only
    cache_te: bool  # cache_text_encoder_outputs
    grad_ckpt: bool
    ref: str  # kohya's figures on one H100 VM (kohya 48d368fa)


ROWS = (
    Row("sd15-b1", "SD1.5 {res} b1, UNet+TE", "sd1", 512, 1, True, False, False, "3.52 it/s, 3.46 GiB"),
    Row("sd15-b4", "SD1.5 {res} b4, UNet+TE", "sd1", 512, 4, True, False, False, "3.39 it/s, 7.30 GiB"),
    Row("sdxl-b1", "SDXL {res} b1, UNet, TE cached", "sdxl", 1024, 1, False, True, False, "1.22 it/s, 14.2 GiB"),
    Row("sdxl-b1-gc", "SDXL {res} b1, UNet, TE cached, grad ckpt", "sdxl", 1024, 1, False, True, True,
        "~0.92 it/s, ~8.3 GiB"),
)
ROWS_BY_NAME = {r.name: r for r in ROWS}
REFERENCE = ("reference, kohya 48d368fa on one H100 VM: SD1.5 b1 3.52 it/s 3.46 GiB; SD1.5 b4 3.39 it/s "
             "7.30 GiB; SDXL b1 1.22 it/s 14.2 GiB; SDXL b1 + gradient checkpointing ~0.92 it/s ~8.3 GiB; "
             "44-58 s from launch to the first step")
TINY_RESOLUTION = 64
NETWORK = dict(network_module="networks.lora", network_dim=32, network_alpha=16)
TRAINING = dict(mixed_precision="bf16", optimizer_type="AdamW", learning_rate=1e-4, lr_scheduler="constant",
                seed=0, caption_extension=".txt")
KOHYA_SCRIPTS = {"sd1": "train_network.py", "sdxl": "sdxl_train_network.py"}
NOT_A_BENCHMARK = "TINY MODELS / CPU: these numbers only show the code path runs; they are NOT benchmarks."


# ----------------------------------------------------------------------------- arguments


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m lora_trainer bench",
        description="Steps/s, samples/s, peak memory and time to the first step, ours and (with --kohya) "
                    "kohya sd-scripts', on random-weight full-size SD1.5 / SDXL. See bench/README.md.",
    )
    p.add_argument("--rows", default="all",
                   help=f"comma-separated subset of: {', '.join(ROWS_BY_NAME)} (default: all)")
    p.add_argument("--steps", type=int, default=40, help="measured steady-state steps (default 40)")
    p.add_argument("--warmup", type=int, default=10, help="steps run first and discarded (default 10, at least 1)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available; cpu with --tiny)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny models at 64 px (CPU by default): a smoke test of the same code path, not a benchmark")
    p.add_argument("--kohya", metavar="PATH", help="an sd-scripts checkout: run kohya side by side")
    p.add_argument("--kohya-python", metavar="EXE",
                   help="python that has sd-scripts' requirements (default: PATH/venv or PATH/.venv if present, "
                        "else this python)")
    p.add_argument("--kohya-launch", choices=("python", "accelerate"), default="python",
                   help="start kohya with plain python (default) or `accelerate launch`")
    p.add_argument("--ours", action=argparse.BooleanOptionalAction, default=True,
                   help="run our side (--no-ours: kohya only)")
    p.add_argument("--json", metavar="OUT", help="write every figure (and per-step times) to this JSON file")
    p.add_argument("--workdir", default=None,
                   help="checkpoints, datasets, logs (default: $TMPDIR/lora_trainer_bench; checkpoints are reused)")
    p.add_argument("--images", type=int, default=40, help="synthetic training images (default 40)")
    p.add_argument("--resolution", type=int, default=None,
                   help="override every row's resolution (smoke tests only: not comparable with the references)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per training process (default 1800)")
    p.add_argument("--allow-full-cpu", action="store_true",
                   help="allow full-size models on CPU (smoke tests of the kohya plumbing; needs ~10 GiB RAM per "
                        "process and is slow)")
    p.add_argument("--dry-run", action="store_true", help="print the commands each row would run, run nothing")
    p.add_argument("--check-configs", action="store_true",
                   help="check the full-size configs on the meta device (parameter counts, key layout) and exit")
    p.add_argument("--_worker", metavar="SPEC", help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `python -m lora_trainer bench -- --tiny ...`
        argv = argv[1:]
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first measured interval starts at the end of the last warm-up step)")
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.rows.strip().lower() == "all":
        args.row_list = list(ROWS)
    else:
        names = [n.strip() for n in args.rows.split(",") if n.strip()]
        unknown = [n for n in names if n not in ROWS_BY_NAME]
        if unknown:
            p.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS_BY_NAME)}")
        args.row_list = [ROWS_BY_NAME[n] for n in names]
    return args


# ----------------------------------------------------------------------------- our side (worker process)


def run_worker(spec_path: str) -> int:
    """One training of ours, in its own process; the probe writes the figures."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    from bench_probe import StepProbe
    from lora_trainer.config import from_dict
    from lora_trainer.models.standalone import load_checkpoint
    from lora_trainer.training.loop import train

    device = torch.device(spec["device"])
    probe = StepProbe.from_env()  # output file, warm-up, total steps and launch time come from the parent
    probe.device = device
    probe.extra["imports_done"] = time.time()
    config, warnings = from_dict(spec["config"])
    for warning in warnings:
        print(f"warning: {warning}", flush=True)

    def log(message: str) -> None:
        print(message, flush=True)
        m = re.match(r"LoRA: (\d+) UNet modules, (\d+) text-encoder modules", message)
        if m:
            probe.extra["lora_modules"] = {"unet": int(m.group(1)), "text_encoder": int(m.group(2))}

    # as runner.run_training: frozen weights in the compute dtype on CUDA under mixed precision
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_checkpoint(config.pretrained_model_name_or_path, device=device, dtype=dtype)
    from lora_trainer import runner

    if hasattr(runner, "file_hashes"):  # as the headless run does (kohya hashes the file too, for metadata)
        model.model_hash, model.model_sha256 = runner.file_hashes(config.pretrained_model_name_or_path)
    probe.extra["model_loaded"] = time.time()
    log(f"model: {model.arch} on {device}, weights {dtype}")

    def on_progress(event) -> None:
        if event.kind == "start":
            probe.note_pre_loop()
            probe.extra["loop_start"] = time.time()
        elif event.kind == "step":
            probe.mark(event.step)
            if event.step in (1, probe.warmup, probe.total_steps):
                print(f"step {event.step}/{event.total_steps} loss {event.loss:.4f}", flush=True)

    result = train(config, model, on_progress=on_progress, log=log)
    probe.finish()
    print(f"done: {result.steps} steps, files {[str(f) for f in result.files]}", flush=True)
    return 0


def our_config(row: Row, resolution: int, checkpoint: Path, data: Path, out: Path, total: int, device: str) -> dict:
    return {
        "pretrained_model_name_or_path": str(checkpoint),
        "train_data_dir": str(data),
        "output_dir": str(out),
        "output_name": "bench",
        "resolution": str(resolution),
        "train_batch_size": row.batch,
        **NETWORK,
        **TRAINING,
        "max_train_steps": total,
        "cache_latents": True,
        "cache_text_encoder_outputs": row.cache_te,
        "network_train_unet_only": not row.train_te,
        "gradient_checkpointing": row.grad_ckpt,
        "device": device,
    }


def kohya_command(row: Row, resolution: int, kohya: Path, python: str, launcher: str, checkpoint: Path,
                  data: Path, out: Path, tokenizers: Path, total: int) -> list[str]:
    script = kohya / KOHYA_SCRIPTS[row.arch]
    cmd = [python]
    if launcher == "accelerate":
        cmd += ["-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "bf16", "--dynamo_backend", "no"]
    cmd += [str(HERE / "kohya_shim.py"), str(script),
            "--pretrained_model_name_or_path", str(checkpoint),
            "--train_data_dir", str(data),
            "--output_dir", str(out),
            "--output_name", "bench",
            "--save_model_as", "safetensors",
            "--caption_extension", ".txt",
            "--resolution", str(resolution),
            "--train_batch_size", str(row.batch),
            "--network_module", NETWORK["network_module"],
            "--network_dim", str(NETWORK["network_dim"]),
            "--network_alpha", str(NETWORK["network_alpha"]),
            "--mixed_precision", "bf16",
            "--optimizer_type", "AdamW",
            "--learning_rate", "1e-4",
            "--lr_scheduler", "constant",
            "--max_train_steps", str(total),
            "--cache_latents",
            "--sdpa",
            "--seed", "0",
            "--max_data_loader_n_workers", "0",
            "--tokenizer_cache_dir", str(tokenizers)]
    if row.cache_te:
        cmd.append("--cache_text_encoder_outputs")
    if not row.train_te:
        cmd.append("--network_train_unet_only")
    if row.grad_ckpt:
        cmd.append("--gradient_checkpointing")
    return cmd


def default_kohya_python(kohya: Path) -> str:
    for candidate in (kohya / "venv" / "bin" / "python", kohya / ".venv" / "bin" / "python",
                      kohya / "venv" / "Scripts" / "python.exe"):
        if candidate.is_file():
            return str(candidate)
    return sys.executable


# ----------------------------------------------------------------------------- running one side


def _device_env(device: str) -> tuple[dict, str]:
    """(env additions, device name inside the child): cuda:N becomes CUDA_VISIBLE_DEVICES=N, cuda:0."""
    env = {}
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v.strip() for v in visible.split(",")] if visible else None
        env["CUDA_VISIBLE_DEVICES"] = ids[index] if ids and index < len(ids) else str(index)
        device = "cuda:0"
    return env, device


def run_side(side: str, cmd: list[str], run_dir: Path, warmup: int, total: int, timeout: float,
             extra_env: dict, cwd: Path) -> dict:
    """Start one training process, wait, and read back what its probe wrote."""
    run_dir.mkdir(parents=True, exist_ok=True)
    probe_out = run_dir / "probe.json"
    log_path = run_dir / "log.txt"
    if probe_out.exists():
        probe_out.unlink()
    env = dict(os.environ)
    env.update(extra_env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("COLUMNS", "200")  # rich/tqdm: keep log lines whole
    launch = time.time()
    env.update({"LT_BENCH_PROBE_OUT": str(probe_out), "LT_BENCH_WARMUP": str(warmup),
                "LT_BENCH_TOTAL_STEPS": str(total), "LT_BENCH_LAUNCH_TIME": repr(launch)})
    (run_dir / "command.txt").write_text(shlex.join(cmd) + "\n")
    print(f"  {side}: running (log {log_path})", flush=True)
    status = "ok"
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc, status = None, f"timed out after {timeout:.0f} s"
    wall = time.time() - launch
    text = log_path.read_text(encoding="utf-8", errors="replace")
    out: dict = {"side": side, "command": cmd, "log": str(log_path), "returncode": rc, "wall_s": wall}
    if rc not in (0, None):
        status = f"exit code {rc}"
    probe = json.loads(probe_out.read_text()) if probe_out.is_file() else None
    if probe is None or not probe.get("complete"):
        if status == "ok":
            status = "no step timings recorded"
    out["status"] = status
    if probe is not None:
        out.update(summarise(probe, launch))
        out["probe"] = probe
    out.update(parse_log(side, text))
    if status != "ok":
        tail = "\n".join(text.replace("\r", "\n").splitlines()[-25:])
        print(f"  {side}: FAILED ({status}); last lines of {log_path}:\n{tail}", flush=True)
    return out


def summarise(probe: dict, launch: float) -> dict:
    times = probe.get("times") or []
    warmup, total = probe["warmup"], probe["total_steps"]
    out: dict = {}
    if times:
        out["time_to_first_step_s"] = times[0] - launch
    if len(times) >= total:
        measured = times[warmup:total]
        span = times[total - 1] - times[warmup - 1]
        steps = total - warmup
        out["it_per_s"] = steps / span if span > 0 else None
        intervals = [b - a for a, b in zip(times[warmup - 1:total - 1], measured)]
        out["step_time_median_s"] = statistics.median(intervals)
        out["step_time_max_s"] = max(intervals)
    for key in ("steady_peak_allocated", "steady_peak_reserved", "driver_device_used_max", "nvidia_smi_process_mib",
                "device_name", "lora_modules", "max_rss_bytes"):
        if probe.get(key) is not None:
            out[key] = probe[key]
    for key in ("imports_done", "model_loaded", "loop_start"):  # our side's startup phases
        if probe.get(key) is not None:
            out[f"{key}_after_s"] = probe[key] - launch
    peaks = [probe.get(k) for k in ("pre_loop_peak_allocated", "warmup_peak_allocated", "steady_peak_allocated")]
    peaks = [p for p in peaks if p is not None]
    if peaks:
        out["run_peak_allocated"] = max(peaks)
    return out


_TQDM = re.compile(r"steps:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[[^\]]*?,\s*([\d.]+)(it/s|s/it)")


def parse_log(side: str, text: str) -> dict:
    out: dict = {}
    if side != "kohya":
        return out
    text = text.replace("\r", "\n")
    matches = _TQDM.findall(text)
    if matches:
        done, _total, value, unit = matches[-1]
        rate = float(value) if unit == "it/s" else 1.0 / float(value)
        # kohya's bar uses smoothing=0: the mean rate since step 1, warm-up included
        out["tqdm_it_per_s"] = rate
        out["tqdm_steps"] = int(done)
    unet = re.findall(r"enable LoRA for U-Net: (\d+) modules", text)
    te = re.findall(r"enable LoRA for text encoder: (\d+) modules", text)
    if unet or te:
        out["lora_modules"] = {"unet": int(unet[-1]) if unet else 0, "text_encoder": int(te[-1]) if te else 0}
    return out


# ----------------------------------------------------------------------------- table


def _rate(side: Optional[dict]) -> str:
    if not side:
        return "n/a"
    if side.get("status") != "ok" or side.get("it_per_s") is None:
        return "failed"
    return _num(side["it_per_s"])


def _num(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3g}"


def _gib(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value / GIB:.2f} GiB"


def _driver(side: Optional[dict]) -> str:
    if not side:
        return "n/a"
    if side.get("nvidia_smi_process_mib") is not None:
        return f"{side['nvidia_smi_process_mib'] / 1024:.2f} GiB (smi)"
    if side.get("driver_device_used_max") is not None:
        return f"{side['driver_device_used_max'] / GIB:.2f} GiB (dev)"
    return "n/a"


def _pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def render(results: list[dict], tiny_or_cpu: bool) -> str:
    main, detail = [], []
    for r in results:
        ours, kohya = r.get("ours"), r.get("kohya")
        ratio = "n/a"
        if ours and kohya and ours.get("it_per_s") and kohya.get("it_per_s"):
            ratio = f"{ours['it_per_s'] / kohya['it_per_s']:.2f}x"
        ttfs = _pair(*(f"{s['time_to_first_step_s']:.1f} s" if s and s.get("time_to_first_step_s") is not None
                       else "n/a" for s in (ours, kohya)))
        main.append([r["label"], _rate(ours), _rate(kohya), ratio,
                     _gib((ours or {}).get("steady_peak_allocated")), _gib((kohya or {}).get("steady_peak_allocated")),
                     ttfs, r["ref"]])
        samples = _pair(*(_num(s["it_per_s"] * r["batch"]) if s and s.get("it_per_s") else "n/a"
                          for s in (ours, kohya)))
        modules = _pair(*(("{unet}+{text_encoder}".format(**s["lora_modules"])) if s and s.get("lora_modules")
                          else "n/a" for s in (ours, kohya)))
        tqdm_rate = _num(kohya["tqdm_it_per_s"]) if kohya and kohya.get("tqdm_it_per_s") else "n/a"
        detail.append([r["label"], samples, _pair(_gib((ours or {}).get("steady_peak_reserved")),
                                                  _gib((kohya or {}).get("steady_peak_reserved"))),
                       _pair(_driver(ours), _driver(kohya)),
                       _pair(_gib((ours or {}).get("run_peak_allocated")), _gib((kohya or {}).get("run_peak_allocated"))),
                       modules, tqdm_rate])
    out = [_table(["config", "ours it/s", "kohya it/s", "ratio", "ours peak alloc", "kohya peak",
                   "time to first step (ours / kohya)", "kohya ref (H100)"], main),
           "",
           _table(["config", "samples/s (ours / kohya)", "peak reserved (ours / kohya)",
                   "driver view (ours / kohya)", "whole-run peak alloc (ours / kohya)",
                   "LoRA modules UNet+TE (ours / kohya)", "kohya tqdm it/s"], detail),
           "",
           "ratio = ours it/s / kohya it/s (above 1: ours is faster). Peaks are torch.cuda.max_memory_allocated "
           "over the measured steps;",
           "driver view: nvidia-smi's figure for the process (smi) or the device-wide used memory from "
           "torch.cuda.mem_get_info (dev).",
           REFERENCE]
    if tiny_or_cpu:
        out += ["", NOT_A_BENCHMARK]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args._worker:
        return run_worker(args._worker)

    import bench_models

    if args.check_configs:
        ok = bench_models.check_full_configs()
        print("full-size configs: " + ("ok" if ok else "MISMATCH"))
        return 0 if ok else 1

    import torch

    device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available() and not args.dry_run:
        print("error: no CUDA device here; use --tiny (CPU smoke test) or run on a GPU machine", file=sys.stderr)
        return 2
    if not args.tiny and device == "cpu" and not (args.allow_full_cpu or args.dry_run):
        print("error: full-size models need a CUDA device (without one, --tiny runs the same code path on tiny "
              "models; --allow-full-cpu forces full size on CPU for smoke tests)", file=sys.stderr)
        return 2
    tiny_or_cpu = args.tiny or device == "cpu"
    kohya = Path(args.kohya).resolve() if args.kohya else None
    if kohya is not None and not (kohya / "train_network.py").is_file():
        print(f"error: {kohya} is not an sd-scripts checkout (no train_network.py)", file=sys.stderr)
        return 2
    kohya_python = args.kohya_python or (default_kohya_python(kohya) if kohya else None)

    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "lora_trainer_bench").resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = workdir / "runs" / stamp
    total = args.warmup + args.steps
    child_env, child_device = _device_env(device)

    if tiny_or_cpu:
        print(NOT_A_BENCHMARK)
    print(f"device {device}; {args.warmup} warm-up + {args.steps} measured steps per run; work folder {workdir}")
    if kohya is not None:
        commit = _git_commit(kohya)
        print(f"kohya: {kohya} (commit {commit or 'unknown'}), python {kohya_python}, launch: {args.kohya_launch}")
        if args.tiny:
            print("kohya: n/a with --tiny: kohya's checkpoint loaders hard-code the full-size SD1.5/SDXL "
                  "architectures, so they cannot load the tiny models")

    results = []
    for row in args.row_list:
        resolution = args.resolution or (TINY_RESOLUTION if args.tiny else row.resolution)
        label = row.label.format(res=resolution) + (" (tiny)" if args.tiny else "")
        suffix = "-tiny" if args.tiny else ""
        checkpoint = workdir / "models" / f"bench-{row.arch}{suffix}.safetensors"
        data = workdir / "data" / f"{resolution}px-{args.images}"
        tokenizers = workdir / "tokenizers"
        run_dir = runs / row.name
        config = our_config(row, resolution, checkpoint, data, run_dir / "ours" / "out", total, child_device)
        ours_cmd = [sys.executable, str(HERE / "bench_train.py"), "--_worker", str(run_dir / "ours" / "spec.json")]
        kohya_cmd = None
        if kohya is not None and not args.tiny:
            kohya_cmd = kohya_command(row, resolution, kohya, kohya_python, args.kohya_launch, checkpoint, data,
                                      run_dir / "kohya" / "out", tokenizers, total)
        print(f"\n== {row.name}: {label}")
        if args.dry_run:
            if args.ours:
                print("  ours (bench worker -> lora_trainer.training.loop.train), config:\n    " + json.dumps(config))
            if kohya_cmd:
                print(f"  kohya (cwd {kohya}):\n    " + shlex.join(kohya_cmd))
            continue

        bench_models.write_checkpoint(checkpoint, row.arch, tiny=args.tiny)
        bench_models.write_dataset(data, resolution, args.images)
        entry = {"row": row.name, "label": label, "batch": row.batch, "ref": row.ref, "resolution": resolution,
                 **{k: v for k, v in asdict(row).items() if k not in ("name", "label", "ref", "resolution")}}
        if args.ours:
            spec_path = run_dir / "ours" / "spec.json"
            spec_path.parent.mkdir(parents=True, exist_ok=True)
            spec_path.write_text(json.dumps({"config": config, "device": child_device}, indent=2))
            entry["ours"] = run_side("ours", ours_cmd, run_dir / "ours", args.warmup, total, args.timeout,
                                     child_env, ROOT)
            _brief("ours", entry["ours"], row.batch)
        if kohya_cmd:
            bench_models.write_kohya_tokenizers(tokenizers)
            env = dict(child_env, HF_HUB_OFFLINE="1")
            entry["kohya"] = run_side("kohya", kohya_cmd, run_dir / "kohya", args.warmup, total, args.timeout,
                                      env, kohya)
            _brief("kohya", entry["kohya"], row.batch)
        results.append(entry)

    if args.dry_run:
        return 0
    print()
    print(render(results, tiny_or_cpu))
    if args.json:
        meta = {
            "when": stamp, "device": device, "tiny": args.tiny, "not_a_benchmark": tiny_or_cpu,
            "warmup": args.warmup, "steps": args.steps, "images": args.images,
            "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "gpu": next((s.get("device_name") for e in results for s in (e.get("ours"), e.get("kohya"))
                         if s and s.get("device_name")), None),
            "kohya": str(kohya) if kohya else None, "kohya_commit": _git_commit(kohya) if kohya else None,
            "kohya_python": kohya_python, "kohya_launch": args.kohya_launch if kohya else None,
            "reference": REFERENCE, "workdir": str(workdir),
        }
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
        print(f"\nwrote {args.json}")
    failed = [f"{e['row']} ({s})" for e in results for s in ("ours", "kohya") if e.get(s) and e[s]["status"] != "ok"]
    if failed:
        print(f"\nfailed runs: {', '.join(failed)} (see the logs named above)", file=sys.stderr)
        return 1
    return 0


def _brief(side: str, out: dict, batch: int) -> None:
    if out.get("status") == "ok" and out.get("it_per_s"):
        print(f"  {side}: {out['it_per_s']:.3f} it/s ({out['it_per_s'] * batch:.3f} samples/s), "
              f"peak alloc {_gib(out.get('steady_peak_allocated'))}, "
              f"first step after {out.get('time_to_first_step_s', float('nan')):.1f} s", flush=True)


def _git_commit(path: Optional[Path]) -> Optional[str]:
    if path is None:
        return None
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())

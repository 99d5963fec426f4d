"""Run one kohya sd-scripts training script with the benchmark's step probe attached.

    python bench/kohya_shim.py /path/to/sd-scripts/train_network.py --network_module networks.lora ...

(also under ``accelerate launch``). It registers a global optimizer-step hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``), which fires after
every ``AdamW.step()`` kohya makes through accelerate, and then runs the script
unchanged as ``__main__``. The probe takes the same readings as on our side:
a synchronised timestamp per step, torch's peak allocation over the
steady-state steps, the driver's view at the end. It is configured through the
``LT_BENCH_*`` environment variables the benchmark sets. Nothing of kohya's is
modified or copied.
"""
from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: kohya_shim.py KOHYA_SCRIPT [ARGS ...]")
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from bench_probe import StepProbe

    script = os.path.abspath(sys.argv[1])
    kohya_dir = os.path.dirname(script)
    sys.path.remove(here)  # kohya's own modules (library, networks) must win
    sys.path.insert(0, kohya_dir)
    sys.argv = [script] + sys.argv[2:]

    probe = StepProbe.from_env()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda _opt, _args, _kwargs: probe.mark())
    runpy.run_path(script, run_name="__main__")
    probe.finish()


if __name__ == "__main__":
    main()

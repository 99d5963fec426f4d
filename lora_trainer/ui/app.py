"""``python -m lora_trainer ui``: the LoRA Trainer tab outside the WebUI.

The standalone host lends the checkpoint named by ``--ckpt`` (loaded on the
first job); LoRA files go to ``--lora-dir``; the queue is kept in
``<lora-dir>/.lora_trainer_queue.json`` so it survives a restart. The tab is
rendered inside a one-tab page the way the WebUIs render extension tabs, so this
app exercises the same path. The server binds a loopback address only, with no
share link and no analytics.
"""
from __future__ import annotations

import importlib.util
import ipaddress
import os
import sys
from pathlib import Path

QUEUE_FILE_NAME = ".lora_trainer_queue.json"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_app(manager, host):
    """A page with the tab as its one tab, as AUTOMATIC1111 / Forge render extension tabs."""
    import gradio as gr

    from .tab import build_tab

    tab = build_tab(manager, host)
    with gr.Blocks(analytics_enabled=False, title="LoRA Trainer") as demo:
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("LoRA Trainer", id="lora_trainer", elem_id="tab_lora_trainer"):
                tab.render()
    demo.lora_trainer_tab = tab
    return demo


def _queue(demo, major: int):
    # Gradio 3 needs the queue for load(every=); both WebUIs enable it too
    if major >= 4:
        return demo.queue(default_concurrency_limit=4)
    return demo.queue(concurrency_count=4)


def main(args) -> int:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported
    host_name = getattr(args, "host", None) or "127.0.0.1"
    if not is_loopback(host_name):
        print(f"error: --host {host_name}: the standalone UI binds a loopback address only "
              "(127.0.0.1, ::1 or localhost); reach it from elsewhere through an SSH tunnel", file=sys.stderr)
        return 2
    checkpoint = Path(args.ckpt)
    if not checkpoint.is_file():
        print(f"error: --ckpt {str(checkpoint)!r} is not a file: name the checkpoint to train on", file=sys.stderr)
        return 2
    if importlib.util.find_spec("gradio") is None:
        print("error: the UI needs gradio (3.41.2 as in AUTOMATIC1111, or 4.40 as in Forge): "
              "see requirements-ui-gradio3.txt / requirements-ui-gradio4.txt", file=sys.stderr)
        return 2

    from ..hosts.standalone import StandaloneHost
    from ..jobs import JobManager
    from .tab import gradio_major

    lora_dir = Path(args.lora_dir)
    lora_dir.mkdir(parents=True, exist_ok=True)
    host = StandaloneHost(checkpoint, lora_dir, device=getattr(args, "device", None) or "auto", log=print)
    queue_file = getattr(args, "queue_file", None) or lora_dir / QUEUE_FILE_NAME
    manager = JobManager(host, queue_file=Path(queue_file), log=print)
    demo = build_app(manager, host)
    _queue(demo, gradio_major())
    port = int(getattr(args, "port", 7861))
    print(f"LoRA Trainer: http://{host_name}:{port}/  (checkpoint {checkpoint}, LoRA folder {lora_dir})", flush=True)
    try:
        demo.launch(server_name=host_name, server_port=port, share=False, inbrowser=False, show_api=False,
                    prevent_thread_lock=False, quiet=True)
    except KeyboardInterrupt:
        pass
    finally:
        manager.close(timeout=30)
    return 0

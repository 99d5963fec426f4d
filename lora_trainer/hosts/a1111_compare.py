"""Run an epoch comparison inside the AUTOMATIC1111 WebUI (v1.10), through its own X/Y/Z plot.

:func:`run_comparison` takes a :class:`~lora_trainer.compare.xyz.Comparison` and, as one
WebUI job of its own (``host.run_exclusive``: the queue lock, ``shared.state``; never
from inside a training job, which would deadlock and is refused):

* finds the X/Y/Z plot among ``modules.scripts.scripts_txt2img``'s selectable scripts by
  title (``X/Y/Z plot``, compared casefolded: Forge classic says ``X/Y/Z Plot``), looks
  its axes up by label in the script's ``current_axis_options`` and orders the run()
  arguments by the live script's own signature (refusing if it differs from the one
  :data:`~lora_trainer.compare.xyz.XYZ_RUN_PARAMETERS` describes);
* builds ``StableDiffusionProcessingTxt2Img`` as the WebUI's ``/sdapi/v1/txt2img`` does for a
  script: ``is_api``, ``scripts`` = the txt2img runner, ``script_args`` = every script's
  UI defaults (made as the API makes them, once) with the X/Y/Z slice filled in and
  slot 0 naming it, grids to the WebUI's grid folder, single cells not saved;
* runs it with ``scripts_txt2img.run`` and returns the grid, every cell, the grid's
  file (the script saves it when "Always save all generated image grids" is on; else
  it is saved here, to the same folder, the same way) and the epoch suggestion
  (:mod:`lora_trainer.compare.candidate`) when the rows are seeds or there is one row.

:func:`register_routes` adds ``POST /lora_trainer/v1/compare`` and ``POST
/lora_trainer/v1/publish`` to the WebUI's app (see its docstring). Nothing from the
WebUI is imported at module level.
"""
from __future__ import annotations

import inspect
import os
import threading
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Optional

from ..compare import publish as publishing
from ..compare.result import ComparisonResult, latest_result, preview_image, remember, suggestion_for
from ..compare.xyz import (
    SCRIPT_TITLE, Comparison, ComparisonError, axis_index, build_comparison,
    discover_family,
)

PREFIX = "/lora_trainer/v1"

_defaults_lock = threading.Lock()
_default_args: dict[int, list] = {}  # id(script runner) -> every script's UI defaults, as the API makes them


# ------------------------------------------------------------------------------ the script


def find_xyz_script(runner):
    """The X/Y/Z plot among a ScriptRunner's selectable scripts (title compared casefolded)."""
    wanted = SCRIPT_TITLE.casefold()
    for script in getattr(runner, "selectable_scripts", []) or []:
        try:
            title = script.title()
        except Exception:
            continue
        if str(title).strip().casefold() == wanted:
            return script
    titles = []
    for script in getattr(runner, "selectable_scripts", []) or []:
        try:
            titles.append(str(script.title()))
        except Exception:
            pass
    raise ComparisonError(f"the WebUI's txt2img scripts hold no {SCRIPT_TITLE!r} script (found: {', '.join(titles)})")


def axis_labels(script) -> list[str]:
    options = getattr(script, "current_axis_options", None)
    if not options:
        raise ComparisonError("the X/Y/Z plot script has no axis list yet (its UI was not built); "
                              "open the WebUI page once and try again")
    return [str(o.label) for o in options]


def run_parameters(script) -> list[str]:
    """The live script's run() parameter names after ``p``."""
    params = list(inspect.signature(script.run).parameters)
    if params and params[0] == "self":
        params = params[1:]
    if not params or params[0] != "p":
        raise ComparisonError(f"the X/Y/Z plot's run() takes {params}; expected (p, ...)")
    return params[1:]


def default_script_args(runner) -> list:
    """Every script's UI default values in one list (slot 0: no selectable script), made once per
    runner as the WebUI's API makes its own (each script's ui() built inside a throwaway Blocks)."""
    key = id(runner)
    with _defaults_lock:
        if key in _default_args:
            return list(_default_args[key])
        import gradio as gr

        size = max([1] + [int(s.args_to or 0) for s in runner.scripts])
        args: list = [None] * size
        args[0] = 0
        with gr.Blocks():
            for script in runner.scripts:
                if script.args_from is None or script.args_to is None:
                    continue
                controls = script.ui(script.is_img2img)
                if controls:
                    args[script.args_from:script.args_to] = [getattr(c, "value", None) for c in controls]
        _default_args[key] = args
        return list(args)


def _grid_folder(opts) -> str:
    # where the txt2img tab puts grids: "Output directory for grids" if set, else the txt2img grids folder
    return getattr(opts, "outdir_grids", "") or getattr(opts, "outdir_txt2img_grids", "")


def _processing(comparison: Comparison, sd_model, opts):
    import dataclasses

    from modules.processing import StableDiffusionProcessingTxt2Img

    kwargs = dict(
        sd_model=sd_model, prompt=comparison.prompt, negative_prompt=comparison.negative_prompt,
        seed=comparison.seed, steps=comparison.steps, width=comparison.width, height=comparison.height,
        cfg_scale=comparison.cfg_scale, sampler_name=comparison.sampler_name, batch_size=1, n_iter=1,
        do_not_save_samples=True, do_not_save_grid=True,
    )
    try:
        names = {f.name for f in dataclasses.fields(StableDiffusionProcessingTxt2Img)}
    except TypeError:  # not a dataclass (older / other WebUIs)
        names = set(inspect.signature(StableDiffusionProcessingTxt2Img.__init__).parameters)
    if "scheduler" in names and comparison.scheduler:
        kwargs["scheduler"] = comparison.scheduler
    p = StableDiffusionProcessingTxt2Img(**{k: v for k, v in kwargs.items() if k in names or k == "sd_model"})
    p.is_api = True
    p.outpath_grids = _grid_folder(opts)
    p.outpath_samples = getattr(opts, "outdir_txt2img_samples", "")
    return p


_capture = threading.local()  # .saved: the files the WebUI saved in this thread while a comparison runs


def _on_image_saved(params) -> None:
    saved = getattr(_capture, "saved", None)
    if saved is not None:
        saved.append(getattr(params, "filename", None))


def _hook_saved_images() -> bool:
    """Hear where the WebUI saves the grid (save_image's ``image_saved`` callback: the script saves
    into a dated sub-folder by default, and says nowhere which). Registered once; again after a
    "Reload UI" cleared the callbacks. False when this WebUI has no such callback."""
    try:
        from modules import script_callbacks

        registered = script_callbacks.callback_map.get("callbacks_image_saved")
        if registered is None:
            return False
        if not any(getattr(c, "callback", None) is _on_image_saved for c in registered):
            script_callbacks.on_image_saved(_on_image_saved, name="lora_trainer_compare")
        return True
    except Exception:
        return False


def _run_in_job(comparison: Comparison, save_grid: bool) -> ComparisonResult:
    from modules import images, scripts, shared

    opts = shared.opts
    if getattr(shared, "sd_model", None) is None:
        raise ComparisonError("no checkpoint is loaded: pick one at the top of the WebUI")
    runner = scripts.scripts_txt2img
    script = find_xyz_script(runner)
    labels = axis_labels(script)
    xyz_args = comparison.script_args(lambda label: axis_index(labels, label), parameters=run_parameters(script))
    args = default_script_args(runner)
    args[script.args_from:script.args_to] = xyz_args
    args[0] = runner.selectable_scripts.index(script) + 1

    p = _processing(comparison, shared.sd_model, opts)
    grid_dir = p.outpath_grids
    hooked = _hook_saved_images()
    _capture.saved = []
    try:
        with closing(p):
            p.scripts = runner
            p.script_args = args
            processed = runner.run(p, *args)
        saved_files = [f for f in _capture.saved if f]
    finally:
        _capture.saved = None
    total = getattr(shared, "total_tqdm", None)
    if total is not None and hasattr(total, "clear"):
        total.clear()
    if processed is None or not processed.images:
        raise ComparisonError("the X/Y/Z plot returned no image (see the WebUI console)")
    expected = len(comparison.cells)
    grid, cells = processed.images[0], list(processed.images[1:1 + expected])
    if len(cells) != expected:
        raise ComparisonError(f"the X/Y/Z plot returned {len(processed.images)} images; expected the grid and "
                              f"{expected} cells")
    infotexts = getattr(processed, "infotexts", None) or [""]
    infotext = infotexts[0] or ""
    interrupted = bool(getattr(shared.state, "interrupted", False) or getattr(shared.state, "stopping_generation", False))

    notes = []
    grid_path = saved_files[0] if saved_files else None
    if grid_path is None and save_grid and not hooked and getattr(opts, "grid_save", False):
        notes.append(f"the WebUI saved the grid under {grid_dir} (this WebUI does not say which file)")
    elif grid_path is None and save_grid:  # "Always save all generated image grids" is off: save it here, the same way
        saved = images.save_image(grid, grid_dir, "xyz_grid", info=infotext, extension=getattr(opts, "grid_format", "png"),
                                  prompt=comparison.prompt, seed=comparison.seed, grid=True, p=processed)
        grid_path = saved[0] if isinstance(saved, tuple) else saved
    result = ComparisonResult(comparison, grid, cells, os.path.abspath(grid_path) if grid_path else None,
                              infotext, interrupted, notes=notes)
    result.suggestion = suggestion_for(result)
    return result


def run_comparison(comparison: Comparison, *, host=None, save_grid: bool = True,
                   title: str = "LoRA Trainer: epoch comparison") -> ComparisonResult:
    """Run ``comparison`` as its own WebUI job (the queue lock, ``shared.state``). Raises
    :class:`~lora_trainer.hosts.a1111.NestedJobError` when called from inside a WebUI job."""
    if host is None:
        from .a1111 import A1111Host

        host = A1111Host()
    result = host.run_exclusive(lambda: _run_in_job(comparison, save_grid), title=title)
    remember(result)
    return result


# ---------------------------------------------------------------------------------- routes

_COMPARE_KEYS = ("prompt", "negative_prompt", "seed", "strength", "epochs", "y", "strengths", "seeds", "checkpoints",
                 "tag_count", "steps", "width", "height", "cfg_scale", "sampler_name", "scheduler")


def _inside(path: Path, roots: list[Path]) -> bool:
    path = path.resolve()
    for root in roots:
        try:
            path.relative_to(root.resolve())
            return True
        except ValueError:
            continue
    return False


def register_routes(app, *, get_host: Callable[[], Any], get_manager: Optional[Callable[[], Any]] = None,
                    api_auth: Optional[str] = None, extra_dirs: Optional[Callable[[], list]] = None,
                    prefix: str = PREFIX) -> bool:
    """Add the comparison routes to the WebUI's FastAPI ``app``:

    ``POST {prefix}/compare``: body ``{"name": NAME, "folder": optional (default: the Lora folder),
    "images": false, and build_comparison's options: prompt, negative_prompt, seed, strength, epochs,
    y ("strength" | "seed" | "checkpoint" | "te_unet"), strengths, seeds, checkpoints, tag_count, steps,
    width, height, cfg_scale, sampler_name, scheduler}``. Runs the X/Y/Z plot as its own WebUI job and
    answers the grid's file, the cells' prompts, the suggestion (and base64 PNGs with ``images``).
    409 while a training runs (the comparison would wait for the whole training).

    ``POST {prefix}/publish``: body ``{"name", "epoch" (number or file stem), "release_name",
    "folder", "overwrite", "trigger_word"}``: copies the epoch to its release name; the preview is
    the epoch's cell of the latest comparison of that family, when there is one, in the row
    :func:`~lora_trainer.compare.result.preview_row` picks.

    Folders must lie inside the Lora folder (or ``extra_dirs()``). ``api_auth`` as for
    :func:`lora_trainer.api.register`. Returns False when the routes are there already.
    """
    from ..api import include_once

    return include_once(app, "lora_trainer_compare_prefixes", prefix,
                        lambda: _compare_router(get_host, get_manager, api_auth, extra_dirs, prefix))


def _compare_router(get_host, get_manager, api_auth, extra_dirs, prefix):
    from fastapi import APIRouter, Body, Depends, HTTPException

    from ..api import auth_dependency

    auth = auth_dependency(api_auth)
    router = APIRouter(prefix=prefix, dependencies=[Depends(auth)] if auth else [], tags=["LoRA Trainer"])

    def folder_of(body: dict) -> Path:
        host = get_host()
        roots = [Path(host.lora_dir())] + [Path(d) for d in (extra_dirs() if extra_dirs else []) if d]
        folder = Path(body.get("folder") or roots[0])
        if not _inside(folder, roots):
            raise HTTPException(status_code=403, detail=f"{folder} is outside the LoRA folders "
                                                        f"({', '.join(str(r) for r in roots)})")
        return folder

    @router.post("/compare")
    def compare(body: dict = Body(...)):
        name = str(body.get("name") or "").strip()
        if not name:
            raise HTTPException(status_code=422, detail="name: the LoRA's output_name is required")
        unknown = sorted(set(body) - set(_COMPARE_KEYS) - {"name", "folder", "images"})
        if unknown:
            raise HTTPException(status_code=422, detail=f"unknown options: {', '.join(unknown)}; "
                                                        f"known: {', '.join(_COMPARE_KEYS)}")
        folder = folder_of(body)
        manager = get_manager() if get_manager is not None else None
        if manager is not None:
            running = manager.status() or {}
            if running.get("state") == "running":
                raise HTTPException(status_code=409, detail=f"training job {running.get('id')} is running; "
                                                            "compare the epochs once it has ended")
        try:
            family = discover_family(folder, name)
            options = {k: body[k] for k in _COMPARE_KEYS if k in body and body[k] is not None}
            comparison = build_comparison(family, **options)
        except (ComparisonError, TypeError, ValueError) as exc:
            raise HTTPException(status_code=422, detail=str(exc))
        from .a1111 import NestedJobError

        try:
            result = run_comparison(comparison, host=get_host())
        except NestedJobError as exc:
            raise HTTPException(status_code=409, detail=str(exc))
        except ComparisonError as exc:
            raise HTTPException(status_code=422, detail=str(exc))
        return result.as_dict(images=bool(body.get("images")))

    @router.post("/publish")
    def publish_route(body: dict = Body(...)):
        name = str(body.get("name") or "").strip()
        release = str(body.get("release_name") or "").strip()
        if not name or not release or body.get("epoch") in (None, ""):
            raise HTTPException(status_code=422, detail="name, epoch and release_name are required")
        folder = folder_of(body)
        try:
            family = discover_family(folder, name)
            epoch = body["epoch"]
            chosen = family.find(int(epoch) if isinstance(epoch, int) or str(epoch).isdigit() else str(epoch))
            preview = None
            last = latest_result(folder, name)
            if last is not None:
                try:
                    preview = preview_image(last, chosen.name)
                except ComparisonError:
                    preview = None
            done_ = publishing.publish(chosen.path, release, preview=preview, overwrite=bool(body.get("overwrite")),
                                       trigger_word=body.get("trigger_word") or family.trigger_word or None)
        except (ComparisonError, publishing.PublishError) as exc:
            raise HTTPException(status_code=422, detail=str(exc))
        except OSError as exc:  # a full disk, a read-only Lora folder: say which file, not a 500
            raise HTTPException(status_code=507 if getattr(exc, "errno", None) == 28 else 500,
                                detail=f"publishing failed writing {getattr(exc, 'filename', None) or release}: "
                                       f"{exc.strerror or exc}")
        try:
            get_host().refresh_loras()
        except Exception:
            pass
        return {"path": str(done_.path), "user_metadata": str(done_.user_metadata_path),
                "preview": str(done_.preview_path) if done_.preview_path else None, "source": str(done_.source)}

    return router

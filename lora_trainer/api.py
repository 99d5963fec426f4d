"""HTTP API of LoRA Trainer: FastAPI routes under ``/lora_trainer/v1/``.

=======  =============================  ==================================================
POST     ``/lora_trainer/v1/train``      body: a config with kohya option names, either flat
                                         (``{"train_data_dir": ..., "preset": "..."}``) or as
                                         ``{"config": {...}, "preset": "..."}``. Returns
                                         ``{"job_id": ..., "warnings": [...]}``; a config the
                                         trainer cannot run gives 422 with the message.
                                         The dataset doctor's findings on train_data_dir
                                         join the warnings (``dataset: ...``, ``dataset
                                         error: ...``); they never refuse the job.
GET      ``/lora_trainer/v1/status``     ``?job_id=`` optional (default: the current job)
GET      ``/lora_trainer/v1/jobs``       ``{"jobs": [...]}``
POST     ``/lora_trainer/v1/interrupt``  body ``{"save_current": true}`` (optional): stop the
                                         running job, saving what it has when asked
POST     ``/lora_trainer/v1/cancel/{id}`` remove a queued job (404: unknown; 409: running or
                                         finished, with what to do instead)
=======  =============================  ==================================================

Routes an extension adds to the WebUI's app are not covered by the WebUI's own
``--api-auth`` check, so when ``api_auth`` (the same ``user:pass[,user2:pass2]``
string) is given, every route here requires HTTP Basic credentials, compared in
constant time; wrong or missing ones get 401.

The manager is reached through ``get_manager()`` on each request, so it can be
created lazily; it must offer ``submit / status / jobs / interrupt / cancel``
(:class:`lora_trainer.jobs.JobManager`).
"""
from __future__ import annotations

import os
import secrets
from typing import Any, Callable, Mapping, Optional

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials

PREFIX = "/lora_trainer/v1"
_PATH_KEYS = ("train_data_dir", "reg_data_dir")


# --- auth -------------------------------------------------------------------------------


def parse_api_auth(api_auth: Optional[str]) -> list[tuple[str, str]]:
    """``"u1:p1,u2:p2"`` -> [("u1", "p1"), ("u2", "p2")]; the password may hold ':'."""
    pairs = []
    for entry in (api_auth or "").split(","):
        user, sep, password = entry.strip().partition(":")
        if sep and user:
            pairs.append((user, password))
    return pairs


def credentials_ok(pairs: list[tuple[str, str]], username: str, password: str) -> bool:
    """Constant-time check against every pair (no early exit on the user name)."""
    given_user = username.encode("utf-8")
    given_password = password.encode("utf-8")
    ok = False
    for user, expected in pairs:
        user_ok = secrets.compare_digest(given_user, user.encode("utf-8"))
        password_ok = secrets.compare_digest(given_password, expected.encode("utf-8"))
        ok |= user_ok & password_ok
    return ok


def auth_dependency(api_auth: Optional[str]) -> Optional[Callable]:
    """A FastAPI dependency that demands the credentials, or None when auth is off."""
    if not api_auth:
        return None
    pairs = parse_api_auth(api_auth)  # set but unreadable: nobody gets in (fail closed)
    basic = HTTPBasic(auto_error=False)

    def require_credentials(credentials: Optional[HTTPBasicCredentials] = Depends(basic)) -> None:
        if credentials is None or not credentials_ok(pairs, credentials.username, credentials.password):
            raise HTTPException(
                status_code=401,
                detail="Incorrect username or password (this WebUI uses --api-auth)",
                headers={"WWW-Authenticate": "Basic"},
            )

    return require_credentials


# --- request -> config ------------------------------------------------------------------------


def _default_apply_preset(name: str, base: Mapping[str, Any]) -> dict[str, Any]:
    from .presets import apply_preset

    return apply_preset(name, dict(base))


def merge_request(
    body: Mapping[str, Any],
    *,
    defaults: Optional[Mapping[str, Any]] = None,
    apply_preset: Optional[Callable[[str, Mapping[str, Any]], Mapping[str, Any]]] = None,
    dataset_root: Optional[str] = None,
) -> dict[str, Any]:
    """The option dict for ``config.from_dict``: defaults, then the preset applied on
    them (:func:`lora_trainer.presets.apply_preset`), then the request's own options;
    relative dataset paths taken from ``dataset_root``. Raises ``ValueError`` for a
    request the API cannot read (unknown preset, ``config`` not an object)."""
    body = dict(body)
    preset = body.pop("preset", None)
    if "config" in body:
        options = body.pop("config")
        if not isinstance(options, Mapping):
            raise ValueError("'config' must be a JSON object of kohya options")
        if body:
            raise ValueError(f"unexpected keys beside 'config': {', '.join(sorted(body))}")
        options = dict(options)
        preset = options.pop("preset", preset)
    else:
        options = body
    merged: dict[str, Any] = dict(defaults or {})
    if preset:
        apply = apply_preset or _default_apply_preset
        try:
            merged = dict(apply(str(preset), merged))
        except KeyError as exc:
            message = exc.args[0] if exc.args else f"unknown preset {preset!r}"
            raise ValueError(str(message)) from None
    merged.update(options)
    if dataset_root:
        for key in _PATH_KEYS:
            value = merged.get(key)
            if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
                merged[key] = os.path.join(dataset_root, value)
    return merged


# --- routes ---------------------------------------------------------------------------------------


def _job_status(manager, job_id: Optional[str]) -> dict:
    """The manager's status; {} for an unknown job (whether it returns {} or raises KeyError)."""
    try:
        return manager.status(job_id) or {}
    except KeyError:
        return {}


def build_router(
    get_manager: Callable[[], Any],
    api_auth: Optional[str] = None,
    *,
    dataset_root: Optional[str] = None,
    get_defaults: Optional[Callable[[], Mapping[str, Any]]] = None,
    apply_preset: Optional[Callable[[str, Mapping[str, Any]], Mapping[str, Any]]] = None,
    prefix: str = PREFIX,
) -> APIRouter:
    auth = auth_dependency(api_auth)
    router = APIRouter(prefix=prefix, dependencies=[Depends(auth)] if auth else [], tags=["LoRA Trainer"])
    preflight = None  # the dataset doctor with its cache, made on the first request

    def dataset_warnings(config) -> list[str]:
        """The doctor's errors and warnings as lines; a caller that wants to be stopped checks them."""
        nonlocal preflight
        from .ui.logic import DatasetPreflight, finding_line

        if preflight is None:
            preflight = DatasetPreflight()
        try:
            report = preflight.report(config)
        except Exception as exc:  # the check is advice: it never costs the caller the job
            return [f"dataset check could not run: {type(exc).__name__}: {exc}"]
        root = str(config.train_data_dir)
        return ([f"dataset error: {finding_line(f, root)}" for f in preflight.blocking(report)]
                + [f"dataset: {finding_line(f, root)}" for f in preflight.warnings(report)])

    @router.post("/train")
    def train(body: dict = Body(...)):
        from .config import ConfigError, from_dict

        try:
            data = merge_request(
                body,
                defaults=get_defaults() if get_defaults else None,
                apply_preset=apply_preset,
                dataset_root=dataset_root,
            )
            config, warnings = from_dict(data)
            warnings = list(warnings) + dataset_warnings(config)
            job_id = get_manager().submit(config)
        except (ConfigError, ValueError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return {"job_id": job_id, "warnings": warnings}

    @router.get("/status")
    def status(job_id: Optional[str] = None):
        result = _job_status(get_manager(), job_id)
        if job_id is not None and not result:
            raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
        return result

    @router.get("/jobs")
    def jobs():
        return {"jobs": get_manager().jobs()}

    @router.post("/interrupt")
    def interrupt(save_current: bool = Body(True, embed=True)):
        return {"interrupted": bool(get_manager().interrupt(save_current=save_current))}

    @router.post("/cancel/{job_id}")
    def cancel(job_id: str):
        manager = get_manager()
        try:
            cancelled = bool(manager.cancel(job_id))
        except KeyError:
            cancelled = False
        if cancelled:
            return {"cancelled": True}
        job = _job_status(manager, job_id)
        if not job:
            raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
        state = job.get("state")
        if state == "running":
            detail = f"job {job_id!r} is running: POST {prefix}/interrupt stops it (saving what it has)"
        else:
            detail = f"job {job_id!r} is {state}: only queued jobs can be cancelled"
        raise HTTPException(status_code=409, detail=detail)

    return router


def register(
    app,
    get_manager: Callable[[], Any],
    api_auth: Optional[str] = None,
    **options: Any,
) -> bool:
    """Add the routes to ``app`` (the WebUI's FastAPI app, from ``on_app_started``).
    Returns False when they are there already (a second call for the same app)."""
    return include_once(app, "lora_trainer_api_prefixes", options.get("prefix", PREFIX),
                        lambda: build_router(get_manager, api_auth, **options))


def include_once(app, registry: str, prefix: str, build: Callable[[], Any]) -> bool:
    """``app.include_router(build())`` unless routes of this ``registry`` name were already added
    under ``prefix`` (the WebUI calls on_app_started again on a UI reload). Returns whether it added them."""
    holder = getattr(app, "state", app)
    done = getattr(holder, registry, None)
    if done is None:
        done = set()
        setattr(holder, registry, done)
    if prefix in done:
        return False
    app.include_router(build())
    done.add(prefix)
    return True

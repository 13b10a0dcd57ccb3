"""One runner for every config-driven script, and one way for every script to report mistakes.

    python scripts/X.py --config configs/NAME.py[:ARG] --workdir DIR [--config.a.b=VALUE ...]
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

``run(job)`` parses that command line, loads the config file's ``get_config([ARG])``, applies
the overrides (typed by the field's current value; lists and dicts as Python literals), starts
JAX's multi-host runtime when the last three flags (or the cluster environment, see
``sharding.initialize_distributed``) say this is one process of several, and calls
``job(config, workdir)``. Every error a user can cause ends in one ``error: ...`` line naming
what was expected and what was found, and exit status 1 (FLAXDISTIL_DEBUG=1 shows the traceback).
One process of a multi-host run that fails prints its error and leaves at once, so the others'
collectives fail too and the whole run ends in seconds instead of hanging.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import importlib.util
import inspect
import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class UsageError(ValueError):
    """A command line or config mistake."""


def _user_error_types() -> tuple:
    from flaxdistil.hf import CheckpointError
    from flaxdistil.logger import NonFiniteLoss

    types = [FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError]
    types += [CheckpointError, NonFiniteLoss, ValueError, json.JSONDecodeError]
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError

        types.append(SafetensorError)
    return tuple(types)


@contextlib.contextmanager
def user_errors():
    """A mistake a user can make ends with one clear line, not a traceback."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        yield
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        _exit(130)
    except Exception as e:  # noqa: BLE001 - only the user-error kinds are turned into one line
        if os.environ.get("FLAXDISTIL_DEBUG") or not isinstance(e, _user_error_types()):
            if not _one_of_several_processes():
                raise
            traceback.print_exc()
        else:
            print(f"error: {_one_line(e)}", file=sys.stderr)
        _exit(1)


def _one_of_several_processes() -> bool:
    jax = sys.modules.get("jax")  # not imported: no runtime was started
    return jax is not None and jax.distributed.is_initialized()


def _exit(code: int) -> None:
    """Exit; one process of several leaves at once. A normal exit would wait at JAX's shutdown
    barrier for the others, which wait in a collective or barrier for this one: 5 minutes, then
    all abort with a C++ stack trace. Gone at once, its peers' collectives fail (gloo: connection
    closed; the coordination service, which process 0 hosts, unreachable) and they end too."""
    if _one_of_several_processes():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, json.JSONDecodeError):
        text = f"invalid JSON ({text})"
    return text


# ---------------------------------------------------------------- the config file


def load_config(spec: str):
    """``path/to/config.py[:arg]`` -> its get_config(arg) (a ConfigDict)."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"config file {path!r} does not exist (expected configs/<name>.py)")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # configs/ import their siblings as `configs.common`
    spec_ = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec_)
    try:
        spec_.loader.exec_module(module)
    except SyntaxError as e:
        raise UsageError(f"config file {path} line {e.lineno}: {e.msg}") from e
    except Exception as e:  # noqa: BLE001 - a NameError or ImportError in the user's file
        raise UsageError(f"config file {path} fails to load: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
        raise UsageError(f"config file {path} defines no get_config(): expected def get_config()")
    _check_arg(path, module.get_config, arg)
    return module.get_config(arg) if arg else module.get_config()


def _check_arg(path: str, get_config, arg: str) -> None:
    """``file.py:ARG`` only for a get_config that takes an argument, and one that needs one."""
    params = list(inspect.signature(get_config).parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return
    if arg and not params:
        raise UsageError(
            f"{path}'s get_config() takes no argument, got {arg!r}: use --config={path}"
        )
    if not arg and params and params[0].default is inspect.Parameter.empty:
        raise UsageError(
            f"{path}'s get_config({params[0].name}) needs an argument: --config={path}:ARG"
        )


def _keys(cfg, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out.append(prefix + k)
        if hasattr(v, "items"):
            out += _keys(v, prefix + k + ".")
    return out


def _parse_value(key: str, raw: str, current):
    if isinstance(current, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise UsageError(f"--config.{key} expects true or false, got {raw!r}")
    if isinstance(current, int | float) and not isinstance(current, bool):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, int | float) or isinstance(value, bool):
            kind = type(current).__name__
            raise UsageError(f"--config.{key} expects a number ({kind}), got {raw!r}")
        return type(current)(value) if isinstance(current, float) else value
    if isinstance(current, str):
        return raw
    is_list = isinstance(current, list | tuple)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if is_list or hasattr(current, "items"):
            kind = "a list" if is_list else "a dict"
            raise UsageError(
                f"--config.{key} expects {kind} as a Python literal, got {raw!r}"
            ) from None
        return raw
    if is_list and not isinstance(value, list | tuple):
        found = type(value).__name__
        raise UsageError(f"--config.{key} expects a list [...], got a {found}: {raw!r}")
    return value


def _child_key(node, part: str):
    """``part`` as a key of ``node``: a field of a group, or an entry of a list of dicts by
    its index or its 'name' (``tasks.sentiment.teacher``, ``teachers.0.weight``); else None."""
    if isinstance(node, list):
        names = [e.get("name") if hasattr(e, "get") else None for e in node]
        if part in names:
            return names.index(part)
        return int(part) if part.isdigit() and int(part) < len(node) else None
    return part if hasattr(node, "keys") and part in node else None


def apply_override(cfg, key: str, raw: str) -> None:
    parts, node = key.split("."), cfg
    for i, part in enumerate(parts):
        child = _child_key(node, part)
        if child is None:
            known = _keys(cfg)
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (closest: {close[0]!r})" if close else ""
            raise UsageError(f"unknown config key {key!r}{hint}")
        parts[i] = child
        if i < len(parts) - 1:
            node = node[child]
    current = node[parts[-1]]
    value = _parse_value(key, raw, current)
    if hasattr(current, "items") and not isinstance(value, dict):
        raise UsageError(f"--config.{key} is a group of fields; set one of them, e.g. {key}.X=")
    if isinstance(current, list) and isinstance(value, tuple):
        value = list(value)
    try:
        node[parts[-1]] = value
    except TypeError as e:
        raise UsageError(f"--config.{key}: {e}") from None


# ---------------------------------------------------------------- the command line


# jax.distributed.initialize's own argument names; every script takes them.
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id")


def distributed_args(values: dict) -> dict:
    """The DISTRIBUTED_FLAGS among ``values`` (strings or None), typed for jax.distributed."""
    out = {"coordinator_address": values.get("coordinator_address") or None}
    for name in ("num_processes", "process_id"):
        raw = values.get(name)
        if raw is None or raw == "":
            out[name] = None
            continue
        if not str(raw).isdigit():
            raise UsageError(f"--{name} expects a non-negative integer, got {raw!r}")
        out[name] = int(raw)
    if out["num_processes"] is not None and out["num_processes"] < 1:
        raise UsageError("--num_processes must be at least 1")
    n, i = out["num_processes"], out["process_id"]
    if n is not None and i is not None and i >= n:
        raise UsageError(f"--process_id {i} is out of range for --num_processes {n} (0..{n - 1})")
    return out


def add_distributed_args(ap: argparse.ArgumentParser) -> None:
    """The DISTRIBUTED_FLAGS for a script that parses its own command line (then call
    ``initialize_distributed(vars(args))``)."""
    for name in DISTRIBUTED_FLAGS:
        ap.add_argument(f"--{name}", help="multi-host: jax.distributed.initialize's " + name)


def initialize_distributed(values: dict) -> None:
    from flaxdistil import sharding

    sharding.initialize_distributed(**distributed_args(values))


def parse(argv: list[str], flags: dict | None = None, need_workdir: bool = True):
    """(config, workdir, {flag: value}) from ``argv`` (without the program name); the
    DISTRIBUTED_FLAGS are in the dict too (None when not given)."""
    flags = {**dict.fromkeys(DISTRIBUTED_FLAGS), **(flags or {})}
    values = {"config": None, "workdir": None, **flags}
    overrides = []
    it = iter(argv)
    for arg in it:
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}: expected --name=value")
        name, eq, value = arg[2:].partition("=")
        if name.startswith("config."):
            if not eq:
                raise UsageError(f"--{name} needs a value: --{name}=VALUE")
            overrides.append((name.removeprefix("config."), value))
            continue
        if name not in values:
            known = ", ".join(f"--{k}" for k in values)
            raise UsageError(f"unknown flag --{name}: expected {known} or --config.<key>=VALUE")
        if not eq:
            value = next(it, None)
            if value is None:
                raise UsageError(f"--{name} needs a value")
        values[name] = value
    if not values["config"]:
        raise UsageError("missing --config=configs/<name>.py")
    if need_workdir and not values["workdir"]:
        raise UsageError("missing --workdir=DIR (where checkpoints, logs and exports go)")
    cfg = load_config(values["config"])
    for key, raw in overrides:
        apply_override(cfg, key, raw)
    return cfg, values["workdir"], {k: values[k] for k in flags}


def run(job, argv: list[str] | None = None, flags: dict | None = None):
    """Parse, then ``job(cfg, workdir, **flags)`` under user_errors(); returns its result."""
    argv = sys.argv[1:] if argv is None else argv
    with user_errors():
        cfg, workdir, extra = parse(argv, flags)
        initialize_distributed(extra)  # before any JAX computation
        check_workdir(workdir)
        return job(cfg, workdir, **{k: v for k, v in extra.items() if k not in DISTRIBUTED_FLAGS})


def check_workdir(workdir) -> None:
    if workdir and Path(workdir).exists() and not Path(workdir).is_dir():
        raise UsageError(f"--workdir {workdir} is a file; expected a directory")


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the scripts without a config: its mistakes end in one ``error:`` line too."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

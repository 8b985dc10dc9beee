"""Index a Python v2 function app the way the Python worker does, and refuse what the dev host cannot run.

The worker imports the script file (``function_app.py``, or ``PYTHON_SCRIPT_FILE_NAME``)
from the script root, finds the ``FunctionApp`` it defines and asks it for its
functions (``app.get_functions()``). Each function's ``get_function_json()`` is
the JSON the host would see; the dev host reads its triggers and bindings from
there, its ``@retry`` policy from ``get_settings_dict("retry_policy")``, and checks,
as the worker does, that every Python parameter is a binding or ``context`` and that
a return annotation suits the ``$return`` binding (the binding's converter in
azure-functions decides: ``-> bytes`` on an HTTP function is refused).

Every unsupported trigger or binding of every function is collected and reported
in one :class:`UnsupportedBindingError`, before anything starts.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import random
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions import meta
from azure.functions._thirdparty import typing_inspect  # the very check the Python worker runs

from devhost.errors import DevHostError, UnsupportedBindingError
from devhost.settings import parse_timespan

logger = logging.getLogger(__name__)

SUPPORTED_TRIGGERS = ("eventHubTrigger", "timerTrigger", "httpTrigger")


@dataclass(frozen=True)
class RetryPolicy:
    """An ``@app.retry`` policy: ``max_retry_count`` of -1 retries forever."""

    strategy: str
    max_retry_count: int
    delay: timedelta = timedelta(0)
    minimum_interval: timedelta = timedelta(0)
    maximum_interval: timedelta = timedelta(0)

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if self.strategy == "fixed_delay":
            return self.delay.total_seconds()
        # azure-webjobs-sdk RandomizedExponentialBackoffStrategy(min, max, delta = min), which the host's
        # ExponentialBackoffRetryAttribute uses: the first delay is min, then min + r * 2 ** (k - 1) * min with r drawn
        # in [0.8, 1.2] (k = 1, 2, ...), at most max. The exponent stops at 1023: 2.0 ** 1024 is no float, and
        # 2.0 ** 1023 times any interval is past every maximum already.
        minimum = self.minimum_interval.total_seconds()
        backoff = minimum
        if retry > 1:
            backoff += random.uniform(0.8, 1.2) * 2.0 ** min(retry - 2, 1023) * minimum
        return min(backoff, self.maximum_interval.total_seconds())

    def allows(self, retry: int) -> bool:
        return self.max_retry_count < 0 or retry <= self.max_retry_count


@dataclass(frozen=True)
class FunctionSpec:
    """One indexed function: its trigger binding (host JSON) and how to call it."""

    name: str
    trigger_type: str
    trigger: dict[str, Any]
    user_function: Callable[..., Any]
    is_async: bool
    accepts_context: bool
    retry: RetryPolicy | None

    @property
    def trigger_param(self) -> str:
        return str(self.trigger["name"])


def _retry_policy(function: func.Function) -> RetryPolicy | None:
    settings = function.get_settings_dict("retry_policy")
    if not settings:
        return None
    strategy = str(settings.get("strategy", "")).lower()
    try:
        count = int(settings.get("max_retry_count", 0))
        if count < -1:  # azure-webjobs-sdk RetryAttribute: ArgumentOutOfRangeException
            raise ValueError("max_retry_count must be -1 (retry forever) or more")
        # parse_timespan reads a negative TimeSpan; no retry waits a negative time.
        if strategy == "fixed_delay":
            delay = parse_timespan(str(settings.get("delay_interval", "00:00:00")))
            if delay < timedelta(0):
                raise ValueError("delay_interval must not be negative")
            return RetryPolicy(strategy, count, delay=delay)
        if strategy == "exponential_backoff":
            policy = RetryPolicy(
                strategy, count,
                minimum_interval=parse_timespan(str(settings["minimum_interval"])),
                maximum_interval=parse_timespan(str(settings["maximum_interval"])),
            )
            if policy.minimum_interval < timedelta(0):
                raise ValueError("minimum_interval must not be negative")
            if policy.maximum_interval < policy.minimum_interval:  # as ExponentialBackoffRetryAttribute refuses it
                raise ValueError("maximum_interval is shorter than minimum_interval")
            return policy
    except (KeyError, ValueError, DevHostError) as exc:
        raise DevHostError(f"function {function.get_function_name()!r}: bad @retry settings {settings}: {exc}") from exc
    raise DevHostError(f"function {function.get_function_name()!r}: unknown retry strategy {strategy!r}")


def return_annotation_problem(name: str, user_function: Callable[..., Any],
                              bindings: list[dict[str, Any]]) -> str | None:
    """What the Python worker says of a return annotation the ``$return`` binding cannot take (worker:
    ``FunctionRegistry.get_function_return_type``, with the binding's own converter from azure-functions)."""
    returned = next((b for b in bindings if b.get("name") == "$return"), None)
    if returned is None:
        return None
    try:
        hints = typing.get_type_hints(user_function)
    except Exception as exc:  # the worker cannot load such a function either
        return f"function {name!r}: cannot resolve its annotations: {exc}"
    if "return" not in hints:
        return None
    pytype = hints["return"]
    if not isinstance(pytype, type):
        return f"function {name!r} has invalid non-type return annotation {pytype!r}"
    binding = str(returned.get("type"))
    converter = meta.get_binding_registry().get(binding)
    if converter is not None and not converter.check_output_type_annotation(pytype):
        return (f'function {name!r}: Python return annotation "{pytype.__name__}" does not match binding type '
                f'"{binding}"')
    return None


def parameter_annotation_problems(name: str, user_function: Callable[..., Any],
                                  bindings: list[dict[str, Any]]) -> list[str]:
    """What the Python worker says of binding parameters' annotations when it indexes the app (worker:
    ``functions.py`` ``validate_function_params``): an annotation must be a class or a ``typing`` generic, and the
    binding's converter from azure-functions must take it. One refused function fails the indexing of the whole app
    on the real host, so the dev host refuses it too. ``list[X]`` fails the first check on Python 3.11 (only
    ``typing.List[X]`` passes: azure-functions-python-worker issue 1034)."""
    try:
        hints = typing.get_type_hints(user_function)
    except Exception as exc:  # the worker cannot load such a function either
        return [f"function {name!r}: cannot resolve its annotations: {exc}"]
    registry = meta.get_binding_registry()
    problems = []
    for binding in bindings:
        parameter = binding.get("name")
        if parameter == "$return" or parameter not in hints or str(binding.get("direction", "")).upper() != "IN":
            continue  # output bindings the dev host supports are $return only; the rest it refuses by name
        pytype = hints[parameter]
        if not isinstance(pytype, type) and not typing_inspect.is_generic_type(pytype):
            problems.append(f"function {name!r}: binding {parameter} has invalid non-type annotation {pytype!r}")
            continue
        converter = registry.get(str(binding.get("type")))
        if pytype in (str, bytes) and not (converter is not None and converter.has_implicit_output()):
            converter = registry.get("generic")  # as the worker binds a str or bytes parameter
        if converter is not None and not converter.check_input_type_annotation(pytype):
            problems.append(f'function {name!r}: type of {parameter} binding "{binding.get("type")}" does not match '
                            f'its Python annotation {pytype!r}')
    return problems


def import_script(script_root: Path, script_file: str = "function_app.py") -> Any:
    """Import the app's script file as the worker does (script root first on ``sys.path``)."""
    path = (script_root / script_file).resolve()
    if not path.exists():
        raise DevHostError(
            f"{path} does not exist: run the dev host from the function app's directory or pass --script-root"
        )
    root = str(path.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module_name = path.stem
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DevHostError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def find_app(module: Any) -> func.FunctionApp:
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionApp)]
    if len(apps) != 1:
        raise DevHostError(f"{module.__file__} must define exactly one FunctionApp, found {len(apps)}")
    return apps[0]


def index(app: func.FunctionApp, only: tuple[str, ...] | None = None) -> list[FunctionSpec]:
    """Every function of ``app`` as a :class:`FunctionSpec`; raises if any uses what the dev host cannot run.

    ``only`` is host.json ``functions``: the host loads only the functions it names (ignoring case), so the others
    are left out before their triggers and bindings are checked. A name the app does not define is refused: the host
    would start without it, and a deployment that lists it would run nothing for it.
    """
    problems: list[str] = []
    specs: list[FunctionSpec] = []
    names: set[str] = set()
    try:
        functions = app.get_functions()
    except ValueError as exc:  # azure-functions' own validation (duplicate names, bad decorators)
        raise DevHostError(f"cannot index the app: {exc}") from exc
    if only is not None:
        defined = {(function.get_function_name() or "").lower() for function in functions}
        unknown = [name for name in only if name.lower() not in defined]
        if unknown:
            raise DevHostError(f"host.json functions (or AzureFunctionsJobHost__functions__N) lists {unknown}, which "
                               f"the app does not define; its functions: {sorted(defined)}")
        wanted = {name.lower() for name in only}
        functions = [function for function in functions if (function.get_function_name() or "").lower() in wanted]
    for function in functions:
        name = function.get_function_name()
        if name is None:  # azure-functions names a function after its Python function when no @function_name
            raise DevHostError(f"cannot index the app: {function.get_user_function()!r} has no function name")
        if name in names:
            problems.append(f"function {name!r} is defined twice")
        names.add(name)
        bindings = json.loads(function.get_function_json())["bindings"]
        trigger = next((b for b in bindings if str(b.get("type", "")).endswith("Trigger")), None)
        if trigger is None:
            problems.append(f"function {name!r} has no trigger")
            continue
        if trigger["type"] not in SUPPORTED_TRIGGERS:
            problems.append(f"function {name!r}: trigger {trigger['type']!r} is not supported by the dev host")
        for binding in bindings:
            if binding is trigger:
                continue
            if trigger["type"] == "httpTrigger" and binding.get("type") == "http" and binding.get("direction") == "OUT":
                continue
            problems.append(
                f"function {name!r}: {binding.get('direction', '?').lower()} binding {binding.get('type')!r} "
                f"({binding.get('name')!r}) is not supported by the dev host"
            )
        user_function = function.get_user_function()
        binding_names = {b["name"] for b in bindings}
        parameters = inspect.signature(user_function).parameters
        accepts_context = "context" in parameters and "context" not in binding_names
        undeclared = [p for p in parameters if p not in binding_names and p != "context"]
        if undeclared:
            problems.append(f"function {name!r}: parameters {undeclared} are not bindings")
        annotation_problem = return_annotation_problem(name, user_function, bindings)
        if annotation_problem:
            problems.append(annotation_problem)
        problems.extend(parameter_annotation_problems(name, user_function, bindings))
        if trigger["name"] not in parameters:
            problems.append(f"function {name!r}: the trigger parameter {trigger['name']!r} is missing")
        try:
            retry = _retry_policy(function)
        except DevHostError as exc:
            problems.append(str(exc))
            retry = None
        if retry and trigger["type"] == "httpTrigger":
            problems.append(f"function {name!r}: @retry applies to timer and Event Hubs triggers only")
        specs.append(FunctionSpec(
            name=name,
            trigger_type=trigger["type"],
            trigger=trigger,
            user_function=user_function,
            is_async=inspect.iscoroutinefunction(user_function),
            accepts_context=accepts_context,
            retry=retry,
        ))
    if problems:
        raise UnsupportedBindingError("cannot host this app:\n  " + "\n  ".join(problems))
    return specs


def load(script_root: Path, script_file: str = "function_app.py",
         only: tuple[str, ...] | None = None) -> list[FunctionSpec]:
    """Import, find the app, index it (only the functions ``only`` names, when given)."""
    return index(find_app(import_script(script_root, script_file)), only)

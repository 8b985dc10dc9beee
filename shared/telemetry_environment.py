"""The standard telemetry variables Sluice reads itself, checked without the SDK.

``shared.telemetry.build`` chooses its exporters from them, and
``shared.settings.load_settings`` refuses a value ``build`` would refuse, so a
pod with such a value fails its startup probe before it consumes a single
batch, instead of starting and running without telemetry (a value the SDK
reads itself, such as ``OTEL_TRACES_SAMPLER``, is the SDK's to judge).
"""

from __future__ import annotations

from collections.abc import Mapping

AUTHENTICATION = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")


def disabled(env: Mapping[str, str]) -> bool:
    """``OTEL_SDK_DISABLED=true``: no telemetry at all, whatever else is set."""
    return (env.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true"


def otlp_signals(env: Mapping[str, str]) -> tuple[tuple[str, ...], list[str]]:
    """The signals to export over OTLP, and the problems of the variables that choose them (one line each, naming
    the variable).

    A signal is exported when it has an endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or its own) unless its
    ``OTEL_<SIGNAL>_EXPORTER`` is ``none`` (any value but ``otlp`` and ``none`` is a problem, endpoint or not);
    its protocol (``OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL``, else ``OTEL_EXPORTER_OTLP_PROTOCOL``) must be
    http/protobuf, the only exporter Sluice ships. A signal with a problem is not among the signals.
    """
    problems: list[str] = []
    signals: list[str] = []
    for signal in ("metrics", "traces"):
        # Checked with or without an endpoint: the Azure Monitor distro reads it too, and a misspelt 'none' there
        # would leave that signal flowing to Application Insights.
        choice_name = f"OTEL_{signal.upper()}_EXPORTER"
        choice = (env.get(choice_name) or "otlp").strip().lower()
        if choice not in ("otlp", "none"):
            problems.append(f"{choice_name}: {choice!r}: Sluice exports {signal} over OTLP ('otlp') or not at all "
                            "('none'); Prometheus is SLUICE_METRICS_PORT")
            continue
        if choice == "none" or not (env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                                    or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")):
            continue
        refused = False
        for protocol_name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = (env.get(protocol_name) or "").strip()
            if protocol:
                if protocol != "http/protobuf":
                    problems.append(f"{protocol_name}: {protocol!r}: Sluice ships the OTLP exporter for "
                                    "http/protobuf only")
                    refused = True
                break
        if not refused:
            signals.append(signal)
    return tuple(signals), list(dict.fromkeys(problems))  # a common variable refused for both signals: once


def authentication(env: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """What ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` asks for, as the Functions host reads it.

    Returns ``(None, [])`` when it is not set (key-based export), ``("", [])`` for
    ``Authorization=AAD`` (the default credential chain), ``(client id, [])`` for
    ``Authorization=AAD;ClientId=<id>`` (that user-assigned identity), and
    ``(None, [problem])`` for anything else.
    """
    value = (env.get(AUTHENTICATION) or "").strip()
    if not value:
        return None, []
    parts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in value.split(";"))):
        key, sep, given = part.partition("=")
        if not sep or key.strip().lower() not in ("authorization", "clientid"):
            return None, [f"{AUTHENTICATION}: {part!r} is not Authorization=AAD or ClientId=<client id>"]
        parts[key.strip().lower()] = given.strip()
    if parts.get("authorization", "").upper() != "AAD":
        return None, [f"{AUTHENTICATION}: must hold Authorization=AAD"]
    return parts.get("clientid") or "", []


def problems(env: Mapping[str, str]) -> list[str]:
    """Every value of these variables that ``shared.telemetry.build`` would refuse, one line each."""
    if disabled(env):
        return []
    return otlp_signals(env)[1] + authentication(env)[1]

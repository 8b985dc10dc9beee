"""The Functions host's Event Hubs connection variables, checked as the SDK reads them, without connecting.

``EventHubConnection`` (a connection string), or ``EventHubConnection__fullyQualifiedNamespace``
with the optional ``__credential`` and ``__clientId``: the ingest trigger connects with
them, and Sluice's own readers (the status page's lag and the ``sluice.eventhub.lag``
gauge, the audit, ``sluice lag``, ``sluice doctor keda``) sign in as the host does.
``shared.settings.load_settings`` refuses a value the host or the Event Hubs SDK would
refuse, so every pod with one fails its startup probe naming the variable, instead of
ingest's trigger never listening and the status page failing on its first request.
It also refuses an ``EntityPath`` other than ``SLUICE_INGEST_EVENTHUB_NAME``: the host
lets the connection string's ``EntityPath`` win over the trigger's ``eventHubName``
(EventHubClientFactory.NormalizeEventHubName), while azure-eventhub lets the explicit
``eventhub_name`` Sluice's readers pass win over it, so ingest would consume one hub and
the lag, the status page and the audit read another.
The connection is found as the host binds the name ``EventHubConnection``
(:func:`host_environ`): ``AzureWebJobsEventHubConnection`` (and its ``__`` children)
wins over ``EventHubConnection``, as the dev host's trigger reads it; a message names the
variable that holds it as the environment spells it (``AzureWebJobsEventHubConnection__credential``).
No message echoes a connection string: it holds a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from azure.core.utils import parse_connection_string

CONNECTION = "EventHubConnection"
_FORMAT = "Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=...;SharedAccessKey=..."


# The children the readers use, as spelled below (.NET configuration compares names ignoring case).
_CHILDREN = {"fullyqualifiednamespace": "fullyQualifiedNamespace", "credential": "credential", "clientid": "clientId"}


def host_environ(env: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The connection ``EventHubConnection`` as the Functions host (and the dev host's
    ``devhost.settings.connection_section``) binds it, ``GetWebJobsConnectionStringSection``: the first section that
    exists of ``ConnectionStrings:AzureWebJobsEventHubConnection``, ``AzureWebJobsEventHubConnection``,
    ``ConnectionStrings:EventHubConnection`` and ``EventHubConnection`` (``__`` is ``:``, names compared ignoring
    case; a section exists when it has a value, even an empty one, or a child). The section's name as the
    environment spells it (for messages: the variable the operator set; ``EventHubConnection`` when none exists),
    and its values as the plain variables the readers take: ``EventHubConnection`` and
    ``EventHubConnection__<child>`` (empty when none exists)."""
    keys: dict[str, str] = {}
    for key in env:
        keys.setdefault(key.replace("__", ":").lower(), key)
    for candidate in (f"ConnectionStrings:AzureWebJobs{CONNECTION}", f"AzureWebJobs{CONNECTION}",
                      f"ConnectionStrings:{CONNECTION}", CONNECTION):
        folded = candidate.lower()
        children = {key[len(folded) + 1:]: spelled for key, spelled in keys.items() if key.startswith(folded + ":")}
        if folded not in keys and not children:
            continue
        found = {CONNECTION: env[keys[folded]]} if folded in keys else {}
        for child, spelled in children.items():
            found[f"{CONNECTION}__{_CHILDREN.get(child, child)}"] = env[spelled]
        if folded in keys:
            section = keys[folded]
        else:  # spelled as the environment spells a child, without the child's name (as connection_section)
            child = min(children)
            section = children[child][:-len(child)].removesuffix("__").removesuffix(":")
        return section, found
    return CONNECTION, {}


def namespace(connection_string: str, name: str = CONNECTION) -> str:
    """The namespace a connection string names (its endpoint's host, with the port for the emulator), as the SDK
    reads it; a ``ValueError`` naming ``name`` (the variable that holds it, :func:`host_environ`) and what is wrong
    when the SDK would refuse it."""
    try:  # the parser the SDK itself reads it with (azure.eventhub._client_base._parse_conn_str)
        fields = parse_connection_string(connection_string, case_sensitive_keys=False)
    except ValueError:
        raise ValueError(f"{name} is set but names no endpoint the SDK can read: it must be an Event Hubs "
                         f"connection string, key=value pairs with no key twice ({_FORMAT})") from None
    endpoint = fields.get("endpoint") or fields.get("hostname") or ""
    host = urlsplit(endpoint.rstrip("/")).netloc.strip()
    if not host:
        raise ValueError(f"{name} is set but names no endpoint: it must be an Event Hubs connection string "
                         f"({_FORMAT})")
    if ("sharedaccesskey" in fields) != ("sharedaccesskeyname" in fields):
        raise ValueError(f"{name} names a SharedAccessKey or a SharedAccessKeyName without the other ({_FORMAT})")
    if "sharedaccesskey" not in fields and "sharedaccesssignature" not in fields:
        raise ValueError(f"{name} has neither a SharedAccessKey nor a SharedAccessSignature ({_FORMAT})")
    return host


def entity_path(connection_string: str) -> str:
    """The hub a connection string's ``EntityPath`` names as the host reads it (EventHubsConnectionStringProperties:
    keys compared ignoring case, keys and values trimmed); "" when it names none or cannot be read."""
    try:
        fields = parse_connection_string(connection_string, case_sensitive_keys=False)
    except ValueError:
        return ""
    return next((value.strip() for key, value in fields.items() if key.strip() == "entitypath"), "")


def identity_problems(env: Mapping[str, str], section: str = CONNECTION) -> list[str]:
    """What the host would not take in ``__credential`` and ``__clientId`` of ``env`` (plain variables, as
    :func:`host_environ` gives them), one line each, naming them as children of ``section`` (the variable set)."""
    credential = env.get(f"{CONNECTION}__credential") or None
    client_id = env.get(f"{CONNECTION}__clientId") or None
    problems = []
    if credential is not None and credential.lower() != "managedidentity":
        problems.append(f"{section}__credential={credential!r}: the only value is 'managedidentity' (unset: "
                        f"DefaultAzureCredential)")
    if client_id and credential is None:
        problems.append(f"{section}__clientId needs {section}__credential=managedidentity (without it, "
                        f"DefaultAzureCredential picks the identity from the environment)")
    return problems


def problems(env: Mapping[str, str], hub: str | None = None) -> list[str]:
    """Every value of these variables the host or the SDK would refuse, one line each (none unset: the status
    page's lag then says ``not_configured``), and an ``EntityPath`` naming another hub than ``hub`` (the
    ``SLUICE_INGEST_EVENTHUB_NAME`` the readers pass) when it is given."""
    section, env = host_environ(env)
    found = identity_problems(env, section)
    connection_string = env.get(CONNECTION)
    if connection_string:
        try:
            namespace(connection_string, section)
        except ValueError as exc:
            found.insert(0, str(exc))
            return found
        path = entity_path(connection_string)
        if hub is not None and path and path.lower() != hub.lower():  # hub names ignore case (as `produce`)
            found.insert(0, f"{section}'s EntityPath names hub {path!r} but SLUICE_INGEST_EVENTHUB_NAME is "
                            f"{hub!r}: the Functions host consumes the EntityPath hub, while the lag, the status "
                            f"page, the audit and `sluice lag` would read {hub!r}; set SLUICE_INGEST_EVENTHUB_NAME "
                            f"to {path!r} or leave EntityPath out of {section}")
    return found

"""Documentation that must not drift from the code, and first-run paths that must work as documented.

Each test reads a doc (README.md, docs/*.md, docs/event.schema.json) or a first-run script and
checks it against the code, the manifests or the machine's package index; the docstring names
the doc and what the code does.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _section(text: str, heading: str) -> str:
    """The Markdown section under ``heading``, up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}$", text, flags=re.M)
    assert match, f"no section {heading!r}"
    body = text[match.end():]
    stop = re.search(rf"^#{{1,{len(match.group(1))}}} ", body, flags=re.M)
    return body[: stop.start()] if stop else body


# --- first-run paths: scripts/install.sh (used by both README commands) and .ci/run ---------------------------


def _install_sh_packages() -> list[str]:
    """Every Debian package scripts/install.sh may hand to ``apt-get install``."""
    text = (ROOT / "scripts" / "install.sh").read_text()
    names: list[str] = []
    for group in re.findall(r"missing\+=\(([^)]*)\)", text):
        names.extend(group.split())
    assert names, "scripts/install.sh no longer lists packages as missing+=(...)"
    return names


def _installable(package: str) -> bool:
    """True when ``apt-get install package`` could fetch it: a version from a configured archive, not only from
    /var/lib/dpkg/status (what was installed on this machine by hand or from a repository no longer configured)."""
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, check=False).stdout
    if "Candidate:" not in out or "Candidate: (none)" in out:
        return False
    sources = re.findall(r"^\s+-?\d+ (\S+)", out.split("Version table:", 1)[-1], flags=re.M)
    return any(source != "/var/lib/dpkg/status" for source in sources)


@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="not a Debian machine")
def test_every_debian_package_install_sh_asks_for_exists_in_the_archive() -> None:
    """README.md:12-22 (and docs/local-stack.md:8-9): on a fresh Debian/Ubuntu machine both first commands
    "install what is missing first ... Debian packages only if absent", via scripts/install.sh's
    ``apt-get install "${missing[@]}"``; docs/deploy.md:377 calls the manifest renderer "Debian's ``kubectl``".

    Debian has no package named ``kubectl`` (its kubectl is in ``kubernetes-client``); on this machine
    ``kubectl`` comes from Google's Cloud SDK repository, which is no longer configured (``apt-cache policy
    kubectl`` lists only /var/lib/dpkg/status). On a machine without kubectl, install.sh asks apt for
    ``kubectl``, apt refuses the whole command ("has no installation candidate") and, under ``set -e``, both
    ``run-local.sh`` and ``test.sh`` stop before creating the venv.
    """
    missing = [p for p in _install_sh_packages() if not _installable(p)]
    assert missing == [], f"scripts/install.sh would ask apt for packages the archive does not have: {missing}"


def test_ci_run_installs_the_services_before_starting_them() -> None:
    """README.md:327-329: ``bash .ci/run`` "is what CI runs on a fresh clone (installs from scratch, starts
    PostgreSQL and Redis if they are not running, lints with ruff, then runs the test command)".

    .ci/run starts PostgreSQL (``pg_ctlcluster ... "$(ls /etc/postgresql)"``) and Redis (``redis-server``)
    *before* ``bash scripts/install.sh``, which is what installs them (``command -v pg_ctlcluster ||
    missing+=(postgresql)``, ``command -v redis-server || missing+=(redis-server)``). On a machine without them,
    ``set -e`` stops .ci/run at the first, so "installs from scratch" never happens. (The README also leaves
    out that .ci/run type-checks with mypy.)
    """
    installed_by_install_sh = set(re.findall(r"command -v (\S+) >/dev/null \|\| (?:\[[^]]*\] \|\| )?missing",
                                             (ROOT / "scripts" / "install.sh").read_text()))
    assert {"pg_ctlcluster", "redis-server"} <= installed_by_install_sh
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    install_at = next(i for i, line in enumerate(lines) if line.strip() == "bash scripts/install.sh")
    used_before = sorted({tool for line in lines[:install_at] if not line.lstrip().startswith("#")
                          for tool in installed_by_install_sh if re.search(rf"(^|[\s;(]){re.escape(tool)}\b", line)})
    assert used_before == [], f".ci/run runs {used_before} before scripts/install.sh installs them"


# --- settings ------------------------------------------------------------------------------------------------


def _base_environment() -> dict[str, str]:
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    return {k: v for k, v in values.items() if v and not k.endswith("_SECRET") and k != "SLUICE_KEYVAULT_URL"}


def _settings_table() -> dict[str, tuple[str, str]]:
    """README.md's generated settings table: variable -> (default cell, meaning cell)."""
    from sluice.commands.settings_table import BEGIN, END

    text = README.read_text()
    rows: dict[str, tuple[str, str]] = {}
    for line in text[text.index(BEGIN):text.index(END)].splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            assert len(cells) == 3, line
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    assert len(rows) > 50
    return rows


def test_every_default_in_the_readme_settings_table_is_a_value_the_setting_accepts() -> None:
    """README.md settings table (generated by ``python -m sluice settings-table``), row ``SLUICE_TRACE_CLIENTS``:
    default ``["redis", "psycopg"]``, meaning "... comma-separated".

    A newcomer copying a documented default into ``local.settings.json`` must get the default. For
    ``SLUICE_TRACE_CLIENTS`` the table shows the Python list, which the setting refuses at start-up
    (``shared/settings.py`` splits the value on commas: ``'["redis"'`` is not a client); the value that means
    the default is ``redis,psycopg`` (as docs/observability.md:28 writes it). Every other row round-trips.
    """
    from shared.settings import GROUPS, env_names, load_settings

    where = {env: (group, field) for group, model in GROUPS.items()
             for env, field in zip(env_names(model), model.model_fields, strict=True)}
    rows = [(env, default[1:-1]) for env, (default, _) in _settings_table().items() if default.startswith("`")]
    assert len(rows) > 50
    base = _base_environment()
    wrong = []
    for env, documented in rows:
        group, field = where[env]
        without = {k: v for k, v in base.items() if k != env}
        expected = getattr(getattr(load_settings(without), group), field)
        try:
            got = getattr(getattr(load_settings({**without, env: documented}), group), field)
        except Exception as exc:  # ConfigurationError: the documented default is refused
            wrong.append(f"{env}={documented}: refused ({str(exc).splitlines()[-1].strip()})")
            continue
        if got != expected:
            wrong.append(f"{env}={documented}: gives {got!r}, the default is {expected!r}")
    assert wrong == []


def test_every_variable_the_settings_accept_is_documented() -> None:
    """README.md and docs/configuration.md present the README table as "the full list" of settings (and
    configuration.md says Sluice reads "the host's own storage variables", so dead letters land "in the account
    the host keeps its checkpoints in").

    ``StorageSettings.connection`` (shared/settings.py) also accepted ``SLUICE_STORAGE_CONNECTION``
    (``AliasChoices("AzureWebJobsStorage", "SLUICE_STORAGE_CONNECTION")``), which no doc, sample or table named
    (``env_names`` reports only the first alias, so tests/unit/test_readme.py could not see it). Set alone it made
    Sluice write dead letters to an account the Functions host (which reads only ``AzureWebJobsStorage``) knows
    nothing about; set beside ``AzureWebJobsStorage`` it was silently ignored. Nothing used it: it is gone.
    """
    from pydantic import AliasChoices

    from shared.settings import GROUPS

    accepted: set[str] = set()
    for group in GROUPS.values():
        prefix = group.model_config.get("env_prefix", "")
        for name, info in group.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                accepted.update(str(choice) for choice in alias.choices)
            else:
                accepted.add(f"{prefix}{name}".upper())
    everything_a_newcomer_reads = "\n".join(
        [README.read_text(), (ROOT / "local.settings.sample.json").read_text(),
         *(page.read_text() for page in sorted(DOCS.rglob("*.md")))])
    undocumented = sorted(n for n in accepted - set(_settings_table()) if n not in everything_a_newcomer_reads)
    assert undocumented == [], f"settings the code accepts that no doc names: {undocumented}"


def test_every_row_of_the_settings_table_says_what_the_setting_does() -> None:
    """README.md settings table, row ``SLUICE_METRICS_ADDRESS``: the "Meaning" cell was empty.

    The table is generated from the settings' descriptions (``python -m sluice settings-table``), and in
    ``TelemetrySettings`` (shared/settings.py) the docstring "Address the Prometheus endpoint listens on" sat
    under ``appinsights_connection_string_secret`` (whose explicit ``description`` wins) instead of under
    ``metrics_address``, leaving a reader of "the full list" guessing what the setting is.
    """
    blank = sorted(name for name, (_, meaning) in _settings_table().items() if not meaning)
    assert blank == [], f"settings-table rows without a meaning: {blank}"


def test_settings_the_function_bindings_resolve_are_not_documented_with_defaults() -> None:
    """README.md settings table: ``SLUICE_INGEST_EVENTHUB_NAME`` (``telemetry``), ``SLUICE_INGEST_CONSUMER_GROUP``
    (``$Default``), ``SLUICE_ENRICH_SCHEDULE`` (``0 */1 * * * *``) and ``SLUICE_CHANGEFEED_SCHEDULE``
    (``*/5 * * * * *``) were listed with defaults, i.e. as optional.

    They are the ``%SETTING%`` references of the triggers (functions/ingest.py, functions/changefeed.py,
    functions/enrichment.py). The Functions host (and the dev host, ``devhost/settings.py:resolve``, which mirrors
    it) has no default for a binding expression: an unset one fails indexing, and the function never runs. The
    defaults exist only in the pydantic model, which no binding reads; the table now says **required** (the
    fields are marked ``read_by_a_binding`` in shared/settings.py).
    """
    from devhost.errors import DevHostError
    from devhost.settings import resolve
    from tests.fixtures.functions import _index

    uses: dict[str, list[tuple[str, str, str]]] = {}
    for function in _index().values():
        for binding in json.loads(function.get_function_json())["bindings"]:
            for key, value in binding.items():
                if isinstance(value, str):
                    for name in re.findall(r"%([^%]+)%", value):
                        uses.setdefault(name, []).append((function.get_function_name(), key, value))
    assert uses, "no %SETTING% reference in any binding"
    table = _settings_table()
    base = _base_environment()
    misleading = []
    for name, references in sorted(uses.items()):
        documented_default = table[name][0]
        if documented_default == "**required**":
            continue
        without = {k: v for k, v in base.items() if k != name}
        for function, key, value in references:
            try:
                resolve(value, without, what=f"function {function!r} {key}")
            except DevHostError as exc:
                misleading.append(f"{name} (README default {documented_default}): {exc}")
    assert misleading == []


def test_the_postgres_sslmode_the_docs_give_for_azure_is_accepted_on_azure() -> None:
    """README.md settings table (from shared/settings.py): ``SLUICE_POSTGRES_SSLMODE`` was "libpq sslmode (Azure:
    ``require`` or ``verify-full``)", and docs/deploy.md said the manifest test requires ``sslmode=require``.

    On Azure the password is a Key Vault secret (``SLUICE_POSTGRES_PASSWORD_SECRET`` in the ConfigMap), and
    ``PostgresSettings._secret_over_verified_tls`` refuses every sslmode but ``verify-full`` then
    (tests/unit/test_k8s_manifests.py asserts ``verify-full``): an operator who picked ``require`` got every pod
    stuck in its startup probe.
    """
    from shared.exceptions import ConfigurationError
    from shared.settings import load_settings
    from tests.unit.test_k8s_manifests import deployed_settings

    azure = deployed_settings()
    load_settings(azure)  # the deployed ConfigMap itself is valid
    meaning = _settings_table()["SLUICE_POSTGRES_SSLMODE"][1]
    hint = re.search(r"Azure: ([^)]*)\)", meaning)
    assert hint, meaning
    modes = set(re.findall(r"`([a-z-]+)`", hint.group(1)))
    modes |= set(re.findall(r"`sslmode=([a-z-]+)`", (DOCS / "deploy.md").read_text()))
    assert modes
    refused = {}
    for mode in sorted(modes):
        tries = [{**azure, "SLUICE_POSTGRES_SSLMODE": mode},  # with or without the system CAs: either may do
                 {k: v for k, v in {**azure, "SLUICE_POSTGRES_SSLMODE": mode}.items()
                  if k != "SLUICE_POSTGRES_SSLROOTCERT"}]
        errors = []
        for environment in tries:
            try:
                load_settings(environment)
                break
            except ConfigurationError as exc:
                errors.append(str(exc).splitlines()[-1].strip())
        else:
            refused[mode] = errors[-1]
    assert refused == {}, f"sslmodes the docs give for Azure that Azure's settings refuse: {refused}"


# --- the event contract ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, 7])
def test_an_event_the_published_schema_accepts_is_not_dead_lettered(version: int) -> None:
    """docs/event.schema.json, ``properties.schema_version``: ``{"type": "integer", "default": 1}`` (and
    docs/events.md:11-13 presents the schema as the machine-readable contract, "a test keeps it equal to the
    code"); the schema's description lists what is "also enforced, beyond this schema", and the schema version
    is not among it.

    ``shared/domain/events.py`` (``DeviceEvent._known_version``) accepts only ``SUPPORTED_SCHEMA_VERSIONS`` =
    (1,): a producer that validates against the published schema sends ``schema_version: 2`` and has every
    event dead-lettered. The schema should say ``"const": 1`` (or ``enum: [1]``), as docs/events.md:37 does.
    """
    import jsonschema

    from shared.domain.events import EventMetadata, Limits, RawRecord, parse_records

    schema = json.loads((DOCS / "event.schema.json").read_text())
    event = {"event_id": "5b7e3c52-6a0e-4f57-9d7b-2f3f3f0d6a11", "device_id": "dev-0042", "event_type": "telemetry",
             "timestamp": "2026-01-01T00:00:00Z", "schema_version": version}
    schema_errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(event)]
    parsed = parse_records([RawRecord(json.dumps(event).encode(), EventMetadata())], limits=Limits())
    refused = [r.reason for r in parsed.errs]
    assert not (schema_errors == [] and refused), (
        f"the published schema accepts schema_version {version}, ingest dead-letters it: {refused}")


# --- deployment and observability ------------------------------------------------------------------------------


def _manifest_functions() -> dict[str, list[str]]:
    """Deployment name -> the functions its pods run (AzureFunctionsJobHost__functions__N)."""
    out: dict[str, list[str]] = {}
    for path in sorted((ROOT / "k8s-keda").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "Deployment":
                continue
            env = [e for c in doc["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])]
            listed = sorted((int(e["name"].rsplit("__", 1)[1]), e["value"]) for e in env
                            if e["name"].startswith("AzureFunctionsJobHost__functions__"))
            out[doc["metadata"]["name"]] = [name for _, name in listed]
    return out


def test_deploy_table_lists_every_function_each_deployment_runs() -> None:
    """docs/deploy.md:7-11: the table of Deployments says ``sluice-lookups`` runs ``device_latest``,
    ``device_critical``, ``event_by_id``, ``health``, ``openapi`` (HTTP).

    ``k8s-keda/lookups.yaml`` (AzureFunctionsJobHost__functions__0..11) also runs ``dashboard``, ``status``,
    ``critical_feed``, ``device_events``, ``report_sites``, ``report_devices`` and ``device_state_at``: the
    operations page and its routes, which the table leaves without a home.
    """
    table = _section((DOCS / "deploy.md").read_text(), "Deploying Sluice to Azure: `azd up` (AKS + KEDA)")
    documented = {name: re.findall(r"`([a-z_]+)`", functions)
                  for name, functions in re.findall(r"^\| `(sluice-[a-z]+)` \| ([^|]*) \|", table, flags=re.M)}
    manifests = _manifest_functions()
    assert documented.keys() == manifests.keys()
    differences = {name: {"undocumented": sorted(set(manifests[name]) - set(documented[name])),
                          "not run": sorted(set(documented[name]) - set(manifests[name]))}
                   for name in manifests if set(manifests[name]) != set(documented[name])}
    assert differences == {}


def test_the_lag_sample_output_uses_the_default_scaled_objects_numbers() -> None:
    """docs/observability.md:170-177: the sample output of ``python -m sluice lag`` (no ``--scaled-object``, so
    ``k8s-keda/ingest.yaml``, as line 167 says) ends ``replicas KEDA would ask for: 1 (unprocessedEventThreshold
    64, activation 0, 0..8 replicas, 4 partitions)``.

    ``sluice/commands/lag.py`` prints the threshold of ``k8s-keda/ingest.yaml``'s ScaledObject: 17445 (1,163
    events/s x 15 s, docs/deploy.md "How the threshold is derived"), not 64.
    """
    from shared.services.scaling import desired_replicas
    from sluice.commands.doctor import BASE_SCALED_OBJECT, load_scaled_object, scaling_rule

    text = (DOCS / "observability.md").read_text()
    match = re.search(r"total lag (\d+); replicas KEDA would ask for: (\d+) \(unprocessedEventThreshold (\d+), "
                      r"activation (\d+), (\d+)\.\.(\d+) replicas, (\d+) partitions\)", text)
    assert match, "the sample lag output is gone"
    lag, replicas, threshold, activation, low, high, partitions = map(int, match.groups())
    path = Path(BASE_SCALED_OBJECT)
    rule = scaling_rule(load_scaled_object(path.read_text(), str(path)), str(path))
    printed = (rule.threshold, rule.activation, rule.min_replicas, rule.max_replicas,
               desired_replicas(lag, partitions, rule))
    assert (threshold, activation, low, high, replicas) == printed


def test_audit_help_says_a_dead_lettered_batch_is_not_a_gap(capsys: pytest.CaptureFixture[str]) -> None:
    """``audit --help`` (sluice/commands/audit.py's docstring) said that "a dead-lettered batch whose ledger entries
    could not be written ... shows as a gap", to be matched by hand against ``batches/``. The audit reads those
    letters and counts their sequence numbers as dead-lettered, not missing, printing ``dead-lettered batch: ...``
    (docs/observability.md "Dead-lettered batches"): an operator following the help looked for gaps the report no
    longer shows."""
    from sluice.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["audit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "shows as a gap" not in text, text
    assert "dead-lettered batch" in text, text
    assert "counts the sequence numbers a letter covers as dead-lettered, not missing" in " ".join(
        (DOCS / "observability.md").read_text().split())


def test_deploy_md_does_not_say_a_rotated_password_needs_a_restart() -> None:
    """docs/deploy.md ("Secret rotation: add a new version ... then restart the Deployments: Sluice reads each
    secret once per process", and the same under "Azure resources").

    The code re-reads: ``shared.bootstrap.rotating_secret`` wraps every store password in
    ``shared/adapters/secrets.py:RotatingSecret``, whose ``refresh`` reads Key Vault again when a store refuses
    the password (at most every ``SLUICE_KEYVAULT_REFRESH_MIN_INTERVAL_SECONDS``), as docs/security.md ("Rotation
    without a restart") and docs/configuration.md promise (tests/e2e/test_rotation.py holds it). An operator
    following deploy.md restarted every Deployment on each rotation (cold starts, rebalanced partitions, replays)
    for nothing.
    """
    from shared.adapters.secrets import RotatingSecret

    versions = iter(["old password", "new password"])
    secret = RotatingSecret("postgres-password", lambda: next(versions), min_interval=0.0)
    assert secret.value() == "old password"
    assert secret.refresh(rejected="old password")  # the store refused it: the vault is read again, no restart
    assert secret.value() == "new password"

    text = re.sub(r"\s+", " ", (DOCS / "deploy.md").read_text())
    claims = re.findall(r"[^.|]*(?:restart the Deployments|reads each secret once per process)[^.(]*", text)
    assert claims == [], f"deploy.md says a rotated secret needs a restart: {claims}"


def test_the_key_vault_secrets_table_lists_every_secret_the_manifests_name() -> None:
    """docs/deploy.md "Azure resources" (for deploying without azd: "Create what infra/ creates. Key Vault
    secrets:") listed ``cassandra-password``, ``postgres-password`` and the two Functions host keys.

    ``k8s-keda/configmap.yaml`` also sets ``SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET:
    appinsights-connection-string`` (and infra/ writes it). Someone creating the vault from the table left it out,
    and every worker then started without any telemetry, Prometheus included: no metrics, no alerts.
    """
    from tests.unit.test_k8s_manifests import of_kind, settings_data

    section = _section((DOCS / "deploy.md").read_text(), "Azure resources")
    listed: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            listed |= set(re.findall(r"`([a-z0-9-]+)`", line.split("|")[1]))
    assert "cassandra-password" in listed
    named = {value for name, value in settings_data().items() if name.endswith("_SECRET")}
    for provider in of_kind("SecretProviderClass").values():
        named |= set(re.findall(r"objectName:\s*\"?([a-z0-9-]+)", provider["spec"]["parameters"].get("objects", "")))
    missing = sorted(named - listed)
    assert missing == [], f"Key Vault secrets the manifests read that deploy.md's table does not list: {missing}"


def test_the_cosmos_throughput_parameters_name_the_tables_bicep_gives_them() -> None:
    """docs/deploy.md (Sizes): ``cassandraEventTableMaxThroughput`` (4000) was the autoscale maximum "of each of the
    six event tables"; ``cassandraStateTableMaxThroughput`` (1000) covered "``feed_state``, ``schema_migrations``,
    ``sluice_meta``" (as infra/main.bicep's parameter description said too).

    infra/resources.bicep gives each table of ``infra/cassandra-tables.json`` the maximum of its ``throughput``
    class: seven tables are ``events`` (``ingest_audit``, migration 2, among them) and ``delayed_batches``
    (migration 3) is a ``state`` table. Someone sizing or costing the account from the table budgeted 6 x 4000
    RU/s where 7 x 4000 are provisioned, and could not tell which tables the two knobs throttle.
    """
    words = {"five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
    tables = json.loads((ROOT / "infra" / "cassandra-tables.json").read_text())["tables"]
    bicep = {cls: sorted(t["name"] for t in tables if t["throughput"] == cls) for cls in ("events", "state")}

    sizes = _section((DOCS / "deploy.md").read_text(), "Sizes")
    rows = {line.split("|")[1].split("`")[1]: line.split("|")[3]
            for line in sizes.splitlines() if line.startswith("| `")}
    count = re.search(r"each of the (\w+) event tables", rows["cassandraEventTableMaxThroughput"])
    assert count, rows["cassandraEventTableMaxThroughput"]
    documented = {"events": sorted(re.findall(r"`([a-z_]+)`", rows["cassandraEventTableMaxThroughput"])),
                  "state": sorted(re.findall(r"`([a-z_]+)`", rows["cassandraStateTableMaxThroughput"]))}
    assert (words.get(count.group(1), count.group(1)), documented) == (len(bicep["events"]), bicep)

    described = re.search(r"@description\('([^']*)'\)\s*(?:@\w+\([^)]*\)\s*)*param cassandraStateTableMaxThroughput",
                          (ROOT / "infra" / "main.bicep").read_text())
    assert described, "infra/main.bicep lost the description of cassandraStateTableMaxThroughput"
    assert sorted(re.findall(r"\b[a-z]+_[a-z_]+\b", described.group(1))) == bicep["state"]


def _registered_functions() -> set[str]:
    from tests.fixtures.functions import _index  # the shared index: get_functions() may run only once per app

    return {function.get_function_name() for function in _index().values()}


def test_function_names_in_the_docs_are_the_apps() -> None:
    """docs/devhost.md:32: the dev host's function-timeout line is shown for
    ``Functions.enrich_windows``; the app registers no such function (the enrichment timer is
    ``enrichment``, ``functions/enrichment.py``), so the example names a function a reader cannot find.
    """
    registered = _registered_functions()
    mentioned: dict[str, set[str]] = {}
    for page in [README, *sorted(DOCS.rglob("*.md"))]:
        for name in re.findall(r"\bFunctions\.([A-Za-z_][A-Za-z0-9_]*)", page.read_text()):
            mentioned.setdefault(name, set()).add(str(page.relative_to(ROOT)))
    unknown = {name: sorted(pages) for name, pages in mentioned.items() if name not in registered}
    assert unknown == {}


# --- observability.md ------------------------------------------------------------------------------------------


def test_the_instruments_table_lists_every_instrument_sluice_exports() -> None:
    """docs/observability.md "Instruments" ("``shared/telemetry_names.py`` is the one list", then a table of
    instrument, kind and unit, attributes, Prometheus name).

    The table had 14 rows; ``shared/telemetry_names.py`` lists 15 instruments: ``sluice.audit.missing`` (gauge,
    ``messaging.destination.partition.id``, Prometheus ``sluice_audit_missing``), the zero-loss SLO gauge that the
    ``SluiceAuditMissing`` alert and a Grafana panel read, was missing. A reader building dashboards from the
    table never learnt of the most important gauge.
    """
    from shared.telemetry_names import INSTRUMENTS

    section = _section((DOCS / "observability.md").read_text(), "Instruments")
    documented = {}
    for line in section.splitlines():
        if not line.startswith("| `sluice."):
            continue
        name, kind, attributes, prometheus = (cell.strip() for cell in line.split("|")[1:5])
        documented[name.strip("`")] = (kind, tuple(re.findall(r"`([a-z_.]+)`", attributes)), prometheus.strip("`"))
    expected = {
        i.name: (f"{i.kind}, {i.unit}" if i.unit else i.kind, i.attributes,
                 i.series[0] if i.kind == "counter" else i.prometheus)
        for i in INSTRUMENTS
    }
    assert {n: v for n, v in documented.items() if v != expected.get(n)} == {}, "rows that differ from the code"
    assert sorted(expected.keys() - documented.keys()) == [], "instruments the table leaves out"


def test_the_keda_threshold_cites_a_page_holding_its_ingest_rate_and_baseline() -> None:
    """deploy.md, "How the threshold is derived": the threshold is a measured ingest rate times the drain time,
    and operators are told to measure again and compare; the page it cites for the run must hold that rate and
    its baseline (it cited data-model.md, which had neither)."""
    section = _section((DOCS / "deploy.md").read_text(), "How the threshold is derived")
    match = re.search(r"\*\*([\d,]+)\*\*, the end-to-end ingest service rate.*?\[[^]]+\]\(([^)#]+)(?:#[^)]*)?\) has "
                      r"the run and its baseline", section, flags=re.S)
    assert match, "the rate and the page that has its run"
    rate, page = match.groups()
    cited = (DOCS / page).read_text()
    row = next((line for line in cited.splitlines() if rate in line), None)
    assert row is not None, f"{page} does not hold the rate {rate}"
    assert re.search(r"raw .*: [\d,]+; ratio", row), f"{page}'s row of {rate} gives no baseline: {row}"


def test_the_openapi_page_token_length_is_the_one_the_route_accepts() -> None:
    """docs/openapi.json: the ``page`` parameter's length bounds are those of the route's token pattern
    (``functions/dashboard.py`` ``_TOKEN``: a payload, a dot, a signature)."""
    from functions.dashboard import _TOKEN

    head, tail = (tuple(int(n) for n in bounds) for bounds in re.findall(r"\{(\d+),(\d+)\}", _TOKEN.pattern))
    spec = json.loads((DOCS / "openapi.json").read_text())
    [page] = [p for p in spec["paths"]["/api/devices/{device_id}/events"]["get"]["parameters"] if p["name"] == "page"]
    assert (page["schema"]["minLength"], page["schema"]["maxLength"]) == (head[0] + 1 + tail[0], head[1] + 1 + tail[1])

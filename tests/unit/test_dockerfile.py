"""The container image: the official Functions base, runtime requirements only, the app and nothing local.

The build context is computed with docker-py's own .dockerignore matcher
(``docker.utils.build.exclude_paths``) and the Dockerfile is read with
dockerfile-parse, so these checks use Docker's rules rather than ours.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
import yaml
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "mcr.microsoft.com/azure-functions/python:4-python3.11"
APP_ROOT = PurePosixPath("/home/site/wwwroot")
# What the base image runs when the Dockerfile names no command (azure-functions-docker,
# host/4/bullseye/python/python311/python311.Dockerfile): a bash script that runs the host as a child, without exec.
BASE_COMMAND = ["/opt/startup/start_nonappservice.sh"]
HOST_BINARY = "/azure-functions-host/Microsoft.Azure.WebJobs.Script.WebHost"
SIGNAL_FORWARDING_INITS = ("tini", "dumb-init", "catatonit")


@cache
def instructions() -> list[tuple[str, str]]:
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    return [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]


@cache
def build_context() -> frozenset[str]:
    """The files ``docker build .`` sends, by Docker's .dockerignore rules."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return frozenset(exclude_paths(str(ROOT), patterns, dockerfile="Dockerfile"))


def copies() -> list[tuple[list[str], str]]:
    """``(sources, destination)`` of every COPY/ADD."""
    out = []
    for instruction, value in instructions():
        if instruction in ("COPY", "ADD"):
            args = [a for a in shlex.split(value) if not a.startswith("--")]
            out.append((args[:-1], args[-1]))
    return out


def in_image(path: str) -> PurePosixPath | None:
    """Where the repository file ``path`` lands in the image (None: not copied)."""
    for sources, destination in copies():
        for source in sources:
            source = source.rstrip("/")
            if path == source:
                return PurePosixPath(destination) / PurePosixPath(path).name if destination.endswith("/") \
                    else PurePosixPath(destination)
            if path.startswith(source + "/"):
                return PurePosixPath(destination) / path[len(source) + 1:]
    return None


def test_the_base_is_the_official_functions_python_311_image() -> None:
    froms = [value for instruction, value in instructions() if instruction == "FROM"]
    assert froms == [BASE_IMAGE]


def test_only_runtime_requirements_are_installed() -> None:
    runs = " ".join(value for instruction, value in instructions() if instruction == "RUN")
    installs = re.findall(r"pip install [^&;]*-r\s+(\S+)", runs)
    assert installs, "the Dockerfile must pip install -r requirements.txt"
    for target in installs:
        assert PurePosixPath(target).name == "requirements.txt"
    assert any(sources == ["requirements.txt"] for sources, _ in copies())
    assert not any("requirements-dev.txt" in sources for sources, _ in copies())


def test_no_broad_copy_and_no_local_settings() -> None:
    for sources, _ in copies():
        assert "." not in sources and "./" not in sources, "COPY . would send whatever the context holds"
        assert not any("local.settings" in s for s in sources)


@pytest.mark.parametrize("path", [
    "local.settings.json", "functions/local.settings.json", ".venv/bin/python", "node_modules/azurite/package.json",
    ".local/keyvault/ca.pem", "requirements-dev.txt", "tests/conftest.py", ".git/HEAD",
    "shared/__pycache__/settings.cpython-311.pyc",
])
def test_the_build_context_leaves_out_local_and_development_files(path: str) -> None:
    assert path not in build_context()


def test_every_copied_source_is_in_the_build_context() -> None:
    context = build_context()
    for sources, _ in copies():
        for source in sources:
            source = source.rstrip("/")
            assert source in context or any(p.startswith(source + "/") for p in context), \
                f"COPY {source} but .dockerignore leaves it out of the build context"


def test_every_module_the_function_app_imports_is_copied_under_the_script_root() -> None:
    # Import the app as the worker does, in a clean interpreter, and list the repository files it loaded.
    code = ("import json, sys, function_app; "
            "print(json.dumps([m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)]))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                       check=True, timeout=120).stdout)
    ours = sorted({Path(f).resolve().relative_to(ROOT).as_posix() for f in loaded
                   if Path(f).resolve().is_relative_to(ROOT) and ".venv" not in Path(f).parts})
    assert "function_app.py" in ours and "functions/ingest.py" in ours
    for path in ours:
        target = in_image(path)
        assert target is not None, f"{path} is imported by function_app.py but not copied into the image"
        assert target == APP_ROOT / path, f"{path} lands at {target}, not under {APP_ROOT}"
        assert path in build_context(), f"{path} is excluded by .dockerignore"


@pytest.mark.parametrize("path", ["host.json", "docs/openapi.json", "shared/adapters/postgres/sql"])
def test_data_files_read_at_run_time_are_copied(path: str) -> None:
    assert (ROOT / path).exists()
    if (ROOT / path).is_dir():
        path = next(p.relative_to(ROOT).as_posix() for p in (ROOT / path).iterdir() if p.is_file())
    assert in_image(path) == APP_ROOT / path


def test_it_runs_as_a_non_root_user_on_the_port_the_manifests_use() -> None:
    users = [value for instruction, value in instructions() if instruction == "USER"]
    assert users, "no USER: the host would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "use a numeric non-root uid (runAsNonRoot can only verify numbers)"
    env = " ".join(value for instruction, value in instructions() if instruction == "ENV")
    port = int(re.search(r"ASPNETCORE_URLS=http://\+:(\d+)", env).group(1))
    assert port >= 1024, "a non-root process cannot bind a privileged port"
    assert ("EXPOSE", str(port)) in instructions()
    for path in sorted((ROOT / "k8s-keda").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "Deployment":
                pod = doc["spec"]["template"]["spec"]
                assert pod["securityContext"]["runAsUser"] == int(uid), path.name
                for container in pod["containers"]:
                    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                    assert ports.pop("http") == port, path.name
                    assert set(ports) <= {"metrics"}, path.name  # the Prometheus exporter, nothing else
                    assert all(p >= 1024 for p in ports.values()), path.name


def effective_command() -> list[str]:
    """PID 1's command line: the Dockerfile's ENTRYPOINT + CMD (a shell form runs under /bin/sh -c), else the base's."""
    entrypoint: list[str] | None = None
    command: list[str] | None = None
    for instruction, value in instructions():
        if instruction in ("ENTRYPOINT", "CMD"):
            parsed = json.loads(value) if value.lstrip().startswith("[") else ["/bin/sh", "-c", value]
            if instruction == "ENTRYPOINT":
                entrypoint = parsed
            else:
                command = parsed
    return (entrypoint or []) + (command if command is not None else ([] if entrypoint else BASE_COMMAND))


def test_the_functions_host_receives_sigterm_so_the_grace_periods_mean_something() -> None:
    """Kubernetes stops a container with SIGTERM to its PID 1, then SIGKILL after terminationGracePeriodSeconds. The
    base image's CMD makes PID 1 a bash script that runs the host without exec or trap: PID 1 without a handler
    ignores SIGTERM and bash forwards nothing (azure-functions-docker issues #404, #677), so the host never starts its
    shutdown, and the grace periods of k8s-keda/ingest.yaml (batches checkpointed before the host exits) and
    timers.yaml (the change feed's continuation saved) only delay a SIGKILL mid-batch. PID 1 must be the host itself
    (exec form) or an init that forwards signals."""
    command = effective_command()
    runs_the_host_directly = command[:1] == [HOST_BINARY]
    forwards_signals = bool(command) and PurePosixPath(command[0]).name in SIGNAL_FORWARDING_INITS
    assert runs_the_host_directly or forwards_signals, (
        f"PID 1 is {command}: it neither is the host nor forwards SIGTERM to it, so the host is SIGKILLed when "
        f"terminationGracePeriodSeconds runs out")
    for path in sorted((ROOT / "k8s-keda").glob("*.yaml")):  # no Deployment puts a shell back in front of the host
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    assert "command" not in container and "args" not in container, path.name


def test_the_image_limits_malloc_arenas_as_the_dev_host_does() -> None:
    from devhost.__main__ import MALLOC_ARENAS

    assert DockerfileParser(str(ROOT / "Dockerfile")).envs.get("MALLOC_ARENA_MAX") == str(MALLOC_ARENAS)
    for path in sorted((ROOT / "k8s-keda").glob("*.yaml")):  # no manifest sets it back
        assert "MALLOC_ARENA_MAX" not in path.read_text(encoding="utf-8"), path.name


def test_the_home_directory_is_the_writable_tmp_volume() -> None:
    """The base image sets HOME=/home, owned by root and read-only under the manifests' readOnlyRootFilesystem:
    whatever keeps files under the home directory (ASP.NET's data protection keys, a library's cache) failed or fell
    back. The user's home directory is /tmp, every manifest mounts a writable emptyDir there, and HOME says so."""
    envs = DockerfileParser(str(ROOT / "Dockerfile")).envs
    assert envs.get("HOME") == "/tmp"
    assert "--home-dir /tmp" in " ".join(value for instruction, value in instructions() if instruction == "RUN")
    for path in sorted((ROOT / "k8s-keda").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            pod = (doc or {}).get("spec", {}).get("template", {}).get("spec") or (doc or {}).get("spec", {}).get(
                "jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
            for container in (pod or {}).get("containers", []):
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert "/tmp" in mounts, f"{path.name}: {container['name']} has no writable /tmp"


def test_the_image_points_openssl_at_the_debian_ca_store() -> None:
    """psycopg[binary]'s libpq brings its own OpenSSL, whose default CA locations (what ``sslrootcert=system``
    loads, and the production ConfigMap uses it) do not exist in the image: only ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` make it load the base image's Debian store (tests/integration/test_secrets_and_tls.py
    shows both halves against a real libpq)."""
    envs = DockerfileParser(str(ROOT / "Dockerfile")).envs
    assert envs.get("SSL_CERT_FILE") == "/etc/ssl/certs/ca-certificates.crt"
    assert envs.get("SSL_CERT_DIR") == "/etc/ssl/certs"


def test_no_secret_is_baked_into_the_image() -> None:
    text = " ".join(value for instruction, value in instructions() if instruction in ("ENV", "ARG", "LABEL"))
    for marker in ("AccountKey=", "SharedAccessKey=", "PASSWORD", "AzureWebJobsStorage=", "EventHubConnection"):
        assert marker not in text


@pytest.mark.timeout(120)
def test_the_copied_tree_alone_imports_the_app_and_runs_the_cli(tmp_path: Path) -> None:
    # Lay out /home/site/wwwroot as the COPY instructions do, then import from there only: a module of the
    # repository that the image lacks (emulators/, devhost/, bench/, ...) fails here, not in production.
    # (Third-party packages come from the test virtualenv, so a dev-only dependency is not caught here.)
    site = tmp_path / "wwwroot"
    for path in sorted(build_context()):
        target = in_image(path)
        if target is not None and target.is_relative_to(APP_ROOT) and (ROOT / path).is_file():
            destination = site / target.relative_to(APP_ROOT)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes((ROOT / path).read_bytes())
    env = {"PATH": "/usr/bin:/bin", "PYTHONSAFEPATH": "", "HOME": str(tmp_path)}
    app = subprocess.run([sys.executable, "-c", "import function_app; print(len(function_app.app.get_functions()))"],
                         cwd=site, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert app.returncode == 0, app.stderr[-2000:]
    assert int(app.stdout) >= 1
    cli = subprocess.run([sys.executable, "-m", "sluice", "migrate", "--help"], cwd=site, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "cassandra,postgres,all" in cli.stdout


def test_no_emulator_code_is_in_the_image() -> None:
    # The emulators are a distribution of their own (emulators/pyproject.toml); the product never imports them.
    shipped = [path for path in build_context() if path.startswith("emulators/") and in_image(path) is not None]
    assert shipped == []

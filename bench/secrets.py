"""``python -m bench secrets``: what reading the passwords from Key Vault adds to a worker's cold start.

Starts our own PostgreSQL (scram, TLS) and Redis (ACL user, TLS), the Cassandra
emulator with PasswordAuthenticator and TLS, and the Key Vault emulator holding the
three passwords (``sluice.secured``). A cold start is what a new worker does before
its first batch: ``bootstrap.reset()``, then the PostgreSQL pool's first query, a Redis
``PING`` and a Cassandra session's first query, through TLS with real passwords.

* **vault**: the settings name the three secrets (``SLUICE_*_PASSWORD_SECRET``): a new
  Key Vault client, a token, three secret reads, then the connections;
* **plain**: the same passwords in the settings (``SLUICE_*_PASSWORD``).

The two alternate over ``--rounds`` rounds; a third measure times the vault's part
alone (a new client, a token and the three reads). The last lines are the best and
median round of each, and ``vault adds <ms>`` (target < 200 ms locally). The
connections' own cost swings by tens of milliseconds between rounds on a shared
machine, so the difference of the two cold starts is noisy; the vault's part alone is not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from functools import cache
from pathlib import Path

from shared import bootstrap
from shared.settings import load_settings
from sluice.launcher import python_module, start
from sluice.secured import SECRET_NAMES, OwnServices

ROOT = Path(__file__).resolve().parents[1]


def cold_start(environ: dict[str, str]) -> float:
    loaded = load_settings(environ)
    bootstrap.settings = cache(lambda: loaded)  # a benchmark drives bootstrap directly
    bootstrap.reset()
    began = time.perf_counter()
    with bootstrap.postgres_pool().connection() as conn:
        conn.execute("SELECT 1")
    bootstrap.redis_client().client().ping()
    bootstrap.cassandra_session().execute("SELECT release_version FROM system.local")
    elapsed = time.perf_counter() - began
    bootstrap.reset()
    return elapsed


def vault_reads(url: str, ca_file: Path) -> float:
    from shared.adapters.keyvault import KeyVaultSecrets

    began = time.perf_counter()
    secrets = KeyVaultSecrets(url, ca_file=str(ca_file))
    for name in SECRET_NAMES.values():
        secrets.fetch(name)
    elapsed = time.perf_counter() - began
    secrets.close()
    return elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench secrets", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="sluice-bench-secrets-"))
    own = OwnServices(directory)
    children = []
    try:
        own.start_postgres("postgres")
        own.start_redis()
        cassandra = start("cassandra-emulator", python_module("emulators.cassandra", "--port", "0",
                                                              *own.cassandra_args()), cwd=str(ROOT), timeout=60)
        children.append(cassandra)
        vault = start("keyvault-emulator", python_module("emulators.keyvault", "--port", "0", "--cert-dir",
                                                         str(directory / "kv")), cwd=str(ROOT), timeout=60)
        children.append(vault)
        vault_url = f"https://127.0.0.1:{vault.port}/"
        own.seed(vault_url, directory / "kv" / "ca.pem")
        base = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
        base.update(own.settings("postgres", cassandra.port))
        base.update({"SLUICE_KEYVAULT_URL": vault_url, "SLUICE_KEYVAULT_CA_FILE": str(directory / "kv" / "ca.pem"),
                     "SLUICE_CASSANDRA_HOSTS": "127.0.0.1"})
        with_vault = {k: v for k, v in base.items() if v != ""}
        plain = {k: v for k, v in with_vault.items() if not k.endswith("_PASSWORD_SECRET")}
        for store in SECRET_NAMES:
            plain[f"SLUICE_{store.upper()}_PASSWORD"] = own.passwords[store]
        cold_start(with_vault)  # warm the imports and the servers' caches once
        times: dict[str, list[float]] = {"vault": [], "plain": [], "reads": []}
        for i in range(args.rounds):
            order = ("vault", "plain") if i % 2 == 0 else ("plain", "vault")
            for name in order:
                times[name].append(cold_start(with_vault if name == "vault" else plain))
            times["reads"].append(vault_reads(vault_url, directory / "kv" / "ca.pem"))
            print(f"round {i + 1}: vault {times['vault'][-1] * 1000:.0f} ms  plain {times['plain'][-1] * 1000:.0f} ms"
                  f"  the three reads alone {times['reads'][-1] * 1000:.0f} ms")
        best = {name: min(values) for name, values in times.items()}
        median = {name: statistics.median(values) for name, values in times.items()}
        print(f"cold start with the vault: best {best['vault'] * 1000:.0f} ms, median {median['vault'] * 1000:.0f} ms")
        print(f"cold start without:        best {best['plain'] * 1000:.0f} ms, median {median['plain'] * 1000:.0f} ms")
        print(f"the vault's part alone:    best {best['reads'] * 1000:.0f} ms, median {median['reads'] * 1000:.0f} ms")
        print(f"vault adds {(median['vault'] - median['plain']) * 1000:.0f} ms (medians; target < 200 ms)")
    finally:
        for child in reversed(children):
            child.stop()
        own.stop()
        if own.postgres is not None and own.postgres.directory is not None:
            shutil.rmtree(own.postgres.directory, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)
    return 0

"""``reference``: load devices and sites (CSV or Parquet) into PostgreSQL, or upload them as Parquet to Blob storage.

* ``reference load --devices F --sites F [--replace]``: upsert into the ``devices``
  and ``sites`` tables in one transaction (``--replace`` also deletes rows that
  are not in the files);
* ``reference upload --devices F --sites F [--container C]``: write both as
  Parquet blobs (the names from ``SLUICE_ENRICH_REFERENCE_*_BLOB``), the source
  used when ``SLUICE_ENRICH_REFERENCE_SOURCE=parquet``;
* ``reference load-sample [--to postgres|blob|both]``: the sample data set in
  ``sluice/sample_data`` (what the local stack loads), see
  :func:`load_sample_reference`.

Files are validated completely before anything is written; an error names the
file, the row and the column.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

from shared.exceptions import PermanentError

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
SAMPLE_DEVICES = SAMPLE_DIR / "devices.csv"
SAMPLE_SITES = SAMPLE_DIR / "sites.csv"


def load_reference_files(devices: Path | None, sites: Path | None, *, to: Literal["postgres", "blob", "both"],
                         replace: bool = False, container: str | None = None) -> dict[str, Any]:
    """Validate the files, then load them into PostgreSQL and/or upload them to Blob storage (from settings)."""
    from shared import bootstrap
    from shared.adapters.reference import read_devices, read_sites, upload_reference, upsert_reference

    device_rows = read_devices(devices) if devices else None
    site_rows = read_sites(sites) if sites else None
    outcome: dict[str, Any] = {"devices": len(device_rows or ()), "sites": len(site_rows or ())}
    if to in ("postgres", "both"):
        with bootstrap.postgres_pool().connection() as conn:
            outcome["postgres"] = upsert_reference(conn, device_rows, site_rows, replace=replace)
    if to in ("blob", "both"):
        cfg = bootstrap.settings().enrichment
        outcome["blobs"] = upload_reference(
            bootstrap.blob_service(), container or cfg.reference_container, devices=device_rows, sites=site_rows,
            devices_blob=cfg.reference_devices_blob, sites_blob=cfg.reference_sites_blob)
    return outcome


def load_sample_reference(to: Literal["postgres", "blob", "both"] = "both", *, replace: bool = True
                          ) -> dict[str, Any]:
    """Load the sample devices and sites (``sluice/sample_data``) where the settings point.

    ``to="postgres"`` needs the PostgreSQL migrations applied (``python -m sluice
    migrate postgres``); ``"blob"`` creates the reference container if needed.
    Idempotent: loading twice changes nothing. Returns the counts loaded, what
    changed in PostgreSQL and the blobs written.
    """
    return load_reference_files(SAMPLE_DEVICES, SAMPLE_SITES, to=to, replace=replace)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("reference", help="load or upload reference data (devices, sites)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    load = actions.add_parser("load", help="upsert devices/sites from CSV or Parquet files into PostgreSQL")
    upload = actions.add_parser("upload", help="upload devices/sites from CSV or Parquet files as Parquet blobs")
    for sub in (load, upload):
        sub.add_argument("--devices", type=Path, help="devices file (.csv or .parquet)")
        sub.add_argument("--sites", type=Path, help="sites file (.csv or .parquet)")
    load.add_argument("--replace", action="store_true", help="also delete rows missing from the given files")
    load.set_defaults(func=lambda args: _files(args, "postgres"))
    upload.add_argument("--container", help="container (default SLUICE_ENRICH_REFERENCE_CONTAINER)")
    upload.set_defaults(func=lambda args: _files(args, "blob"))

    sample = actions.add_parser("load-sample", help="load the sample devices and sites (sluice/sample_data)")
    sample.add_argument("--to", choices=["postgres", "blob", "both"], default="both")
    sample.set_defaults(func=lambda args: _print(load_sample_reference(args.to)))


def _files(args: argparse.Namespace, to: Literal["postgres", "blob"]) -> int:
    if args.devices is None and args.sites is None:
        raise PermanentError("give --devices and/or --sites")
    return _print(load_reference_files(args.devices, args.sites, to=to, replace=getattr(args, "replace", False),
                                       container=getattr(args, "container", None)))


def _print(outcome: dict[str, Any]) -> int:
    parts = [f"{outcome['devices']} devices, {outcome['sites']} sites"]
    if "postgres" in outcome:
        parts.append("postgres: " + ", ".join(f"{k}={v}" for k, v in outcome["postgres"].items()))
    if "blobs" in outcome:
        parts.append("blobs: " + ", ".join(outcome["blobs"]))
    print("; ".join(parts))
    return 0

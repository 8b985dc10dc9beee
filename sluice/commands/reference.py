"""``reference``: load devices and sites (CSV or Parquet) into PostgreSQL, or upload them as Parquet to Blob storage.

* ``reference load --devices F --sites F [--replace [--allow-empty]]``: upsert
  into the ``devices`` and ``sites`` tables in one transaction (``--replace``
  also deletes rows that are not in the files);
* ``reference upload --devices F --sites F [--container C] [--allow-empty]``:
  write both as Parquet blobs (the names from ``SLUICE_ENRICH_REFERENCE_*_BLOB``),
  the source used when ``SLUICE_ENRICH_REFERENCE_SOURCE=parquet``;
* ``reference load-sample [--to postgres|blob|both] [--replace]``: the sample
  data set in ``sluice/sample_data`` (what the local stack loads), see
  :func:`load_sample_reference`.

Files are validated completely before anything is written; an error names the
file, the row and the column. A file of no rows that would replace a whole set
(``load --replace``, ``upload``) is refused unless ``--allow-empty``.
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
                         replace: bool = False, container: str | None = None,
                         allow_empty: bool = False) -> dict[str, Any]:
    """Validate the files, then load them into PostgreSQL and/or upload them to Blob storage (from settings).

    Replacing (``replace`` in PostgreSQL; always, for the blobs) with a file of no rows deletes every device or
    site, which is what a truncated export looks like: refused with a ``PermanentError`` naming the file, unless
    ``allow_empty``. So is a ``container`` (``--container``) that Blob storage cannot have, before any file is read.
    """
    from shared import bootstrap
    from shared.adapters.reference import read_devices, read_sites, upload_reference, upsert_reference

    if container is not None:
        _check_container(container)
    device_rows = read_devices(devices) if devices else None
    site_rows = read_sites(sites) if sites else None
    if (replace or to != "postgres") and not allow_empty:
        for path, rows, what in ((devices, device_rows, "devices"), (sites, site_rows, "sites")):
            if path is not None and not rows:
                where = "the reference blob" if to == "blob" else "PostgreSQL"
                raise PermanentError(f"{path}: no {what} in the file (only a header?); it would replace every "
                                     f"{what[:-1]} in {where} with none; pass --allow-empty to do that on purpose")
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


def load_sample_reference(to: Literal["postgres", "blob", "both"] = "both", *, replace: bool = False
                          ) -> dict[str, Any]:
    """Load the sample devices and sites (``sluice/sample_data``) where the settings point.

    ``to="postgres"`` needs the PostgreSQL migrations applied (``python -m sluice
    migrate postgres``); ``"blob"`` creates the reference container if needed.
    In PostgreSQL the sample is upserted beside the rows already there; ``replace``
    also deletes every device and site that is not in the sample. Idempotent:
    loading twice changes nothing. Returns the counts loaded, what changed in
    PostgreSQL and the blobs written.
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
    for sub, what in ((load, "with --replace, delete every device (site)"), (upload, "write a blob of no rows")):
        sub.add_argument("--allow-empty", action="store_true",
                         help=f"accept a file of no rows and {what}: refused otherwise, as a truncated export")

    sample = actions.add_parser("load-sample", help="load the sample devices and sites (sluice/sample_data)")
    sample.add_argument("--to", choices=["postgres", "blob", "both"], default="both")
    sample.add_argument("--replace", action="store_true",
                        help="also delete the devices and sites in PostgreSQL that are not in the sample")
    sample.set_defaults(func=lambda args: _print(load_sample_reference(args.to, replace=args.replace)))


def _check_container(container: str) -> None:
    """``--container`` is held to the rule SLUICE_ENRICH_REFERENCE_CONTAINER is (a Blob container's name): storage
    answers another name with 400 InvalidResourceName, which the command reported as Blob storage unavailable."""
    from pydantic import TypeAdapter, ValidationError

    from shared.settings import BlobContainerName

    try:
        TypeAdapter(BlobContainerName).validate_python(container)
    except ValidationError as exc:
        raise PermanentError(f"--container {container!r} is no Blob container name (3-63 characters): "
                             f"{exc.errors()[0]['msg']}") from None


def _files(args: argparse.Namespace, to: Literal["postgres", "blob"]) -> int:
    if args.devices is None and args.sites is None:
        raise PermanentError("give --devices and/or --sites")
    return _print(load_reference_files(args.devices, args.sites, to=to, replace=getattr(args, "replace", False),
                                       container=getattr(args, "container", None), allow_empty=args.allow_empty))


def _print(outcome: dict[str, Any]) -> int:
    parts = [f"{outcome['devices']} devices, {outcome['sites']} sites"]
    if "postgres" in outcome:
        parts.append("postgres: " + ", ".join(f"{k}={v}" for k, v in outcome["postgres"].items()))
    if "blobs" in outcome:
        parts.append("blobs: " + ", ".join(outcome["blobs"]))
    print("; ".join(parts))
    return 0

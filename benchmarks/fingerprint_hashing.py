"""What the resume fingerprint costs: hashing every byte of the experts once, then nothing on resume.

    python benchmarks/fingerprint_hashing.py [--gib 4] [--files 4]

Writes `--files` weight files of `--gib` GiB in all (random bytes, in the page cache: the disk is not
measured), then times the digests of all of them with an empty cache (the first run's cost), again with
the cache (what a resume, a re-run or `compare` pays), and plain single-thread sha256 for reference.
Results in benchmarks/results/fingerprint_hashing.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from lib.common import command, header, machine, versions, write_report

from mergekit_swarm.core.fingerprints import DigestCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = int(args.gib * 2**30 / args.files)
        paths = []
        block = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB of bytes that do not compress
        for k in range(args.files):
            path = root / f"model-{k:05d}.safetensors"
            with path.open("wb") as handle:
                for _ in range(size // len(block)):
                    handle.write(block)
            paths.append(path)
        total = sum(p.stat().st_size for p in paths)
        for path in paths:  # into the page cache
            path.read_bytes()

        start = time.perf_counter()
        with paths[0].open("rb") as handle:
            digest = hashlib.sha256()
            while chunk := handle.read(8 << 20):
                digest.update(chunk)
        single = paths[0].stat().st_size / (time.perf_counter() - start)

        cache = DigestCache(root / "cache")
        start = time.perf_counter()
        cache.digests(paths)
        cold = time.perf_counter() - start
        cache.save()
        start = time.perf_counter()
        DigestCache(root / "cache").digests(paths)
        warm = time.perf_counter() - start

    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "bytes": total,
        "files": args.files,
        "sha256_one_thread_gb_s": round(single / 1e9, 3),
        "first_run_s": round(cold, 3),
        "first_run_gb_s": round(total / cold / 1e9, 3),
        "cached_s": round(warm, 4),
    }
    lines = header("Fingerprint hashing", report) + [
        "| what | figure |",
        "|---|---:|",
        f"| sha256, one thread | {report['sha256_one_thread_gb_s']} GB/s |",
        f"| first run: {total / 1e9:.2f} GB in {args.files} files, threads | {report['first_run_s']} s "
        f"({report['first_run_gb_s']} GB/s) |",
        f"| resume / re-run (cached digests) | {report['cached_s']} s |",
        "",
        "Files were in the page cache: from disk, hashing runs at the disk's speed when that is lower.",
        "",
    ]
    write_report("fingerprint_hashing", report, "\n".join(lines))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Measures what it costs to make one appended log record durable, three
ways, on the file system of --dir (BENCHMARKS.md, "where a synchronous
commit's CPU goes, per node"). Each way appends --records records of
--record-bytes random bytes to a file zeroed and synced beforehand (as
availdb's log zeroes its segments ahead of its records), each record
durable before the next is written:

  buffered  pwrite of the record, then fdatasync (the log today)
  dsync     pwrite of the record on a descriptor opened O_DSYNC
  direct    O_DIRECT | O_DSYNC: the whole 4 KiB blocks that hold the new
            bytes, written from an aligned copy of the file's tail kept in
            memory (nothing goes through the page cache, so the kernel has
            no dirty pages to find and write back)

Prints, per way and round, the CPU time of this process per record (user +
system; the interpreter's own share is in it too, the same for every way)
and the latency per record (mean, p50, p99). After each way the file is
read back and compared with what was written; a difference stops the run.

Runs only where the file system takes O_DIRECT (not every tmpfs does): it
says so and exits 2 when it does not.
"""

import argparse
import mmap
import os
import resource
import statistics
import sys
import time

BLOCK = 4096


def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def zeroed(path, size):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = bytes(1 << 20)
        for offset in range(0, size, len(chunk)):
            os.pwrite(fd, chunk, offset)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def run(way, path, record, count):
    zeroed(path, -(-len(record) * count // (1 << 20)) * (1 << 20) + (1 << 20))
    flags = os.O_RDWR
    if way == "dsync":
        flags |= os.O_DSYNC
    if way == "direct":
        flags |= os.O_DSYNC | os.O_DIRECT
    try:
        fd = os.open(path, flags)
    except OSError as e:
        print(f"durable_append: {path}: cannot open with O_DIRECT here ({e}); pick --dir on a disk file system", file=sys.stderr)
        sys.exit(2)
    # The file's bytes [base, base + len(tail)), page-aligned (mmap) as
    # O_DIRECT wants its buffers.
    tail = mmap.mmap(-1, 1 << 20)
    base = 0
    end = 0
    latencies = []
    started = cpu_s()
    for _ in range(count):
        t = time.perf_counter()
        if way == "direct":
            if end + len(record) - base > len(tail):
                keep = end // BLOCK * BLOCK
                kept = tail[keep - base:end - base]
                tail.seek(0)
                tail.write(kept)
                base = keep
            tail[end - base:end - base + len(record)] = record
            first = end // BLOCK * BLOCK
            last = -(-(end + len(record)) // BLOCK) * BLOCK
            with memoryview(tail)[first - base:last - base] as blocks:
                os.pwritev(fd, [blocks], first)
        else:
            os.pwrite(fd, record, end)
            if way == "buffered":
                os.fdatasync(fd)
        end += len(record)
        latencies.append(time.perf_counter() - t)
    spent = cpu_s() - started
    os.close(fd)
    with open(path, "rb") as f:
        if f.read(end) != record * count:
            sys.exit(f"durable_append: {way}: the file does not hold what was written")
    os.unlink(path)
    latencies.sort()
    us = 1e6
    print(
        f"{way:8s} cpu per record {spent / count * us:5.1f} us | latency mean "
        f"{statistics.mean(latencies) * us:4.0f} us, p50 {latencies[count // 2] * us:4.0f}, "
        f"p99 {latencies[int(count * 0.99)] * us:4.0f}",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=".", help="where the test file goes (default: here)")
    parser.add_argument("--record-bytes", type=int, default=2135,
                        help="bytes per record (default 2135: a single-row insert's log record)")
    parser.add_argument("--records", type=int, default=6000, help="records per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.record_bytes <= 0 or args.records <= 0 or args.rounds <= 0:
        parser.error("--record-bytes, --records and --rounds must be positive")
    path = os.path.join(args.dir, f"durable_append.{os.getpid()}.dat")
    record = os.urandom(args.record_bytes)
    for _ in range(args.rounds):
        for way in ("buffered", "dsync", "direct"):
            run(way, path, record, args.records)


if __name__ == "__main__":
    main()

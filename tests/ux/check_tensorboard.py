#!/usr/bin/env python3
"""Checks a run folder's TensorBoard event files against its metrics.jsonl.

Reads the events with the tensorboard package's own code -- its TFRecord
reader (which verifies both CRCs of every record) and EventAccumulator (what
`tensorboard --logdir` uses) -- and requires every value of metrics.jsonl to be
there under its tag ("train/<name>", or "eval/..." as it is) at its step, as a
float32, with null in metrics.jsonl read as a non-finite value, and nothing
else. Needs `pip install tensorboard` (e.g. in /opt/fixenv); not part of
`bazel test`.

    /opt/fixenv/bin/python tests/ux/check_tensorboard.py RUN_DIR
"""

import glob
import json
import math
import os
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat import tf
from tensorboard.compat.proto import event_pb2


def tag_of(name):
    """The tag prefopt's TensorBoardTag gives a metric."""
    if name.startswith(("train/", "eval/", "test/")):
        return name
    return "train/" + name


def as_float32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def read_records(path):
    """Every record of one event file; raises on a bad CRC or truncation."""
    reader = tf.pywrap_tensorflow.PyRecordReader_New(path)
    records = []
    while True:
        try:
            reader.GetNext()
        except tf.errors.OutOfRangeError:
            return records
        except tf.errors.DataLossError as e:
            sys.exit(f"FAIL: record {len(records)}: {e}")
        records.append(reader.record())


def main(run_dir):
    files = sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*")))
    if not files:
        sys.exit(f"{run_dir}: no events.out.tfevents.* file")
    summaries = 0
    for path in files:
        records = read_records(path)
        first = event_pb2.Event.FromString(records[0])
        if first.file_version != "brain.Event:2":
            sys.exit(f"{path}: first record has file_version "
                     f"{first.file_version!r}, not 'brain.Event:2'")
        summaries += len(records) - 1

    expected = {}
    lines = 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            step = obj.pop("step")
            lines += 1
            for name, value in obj.items():
                key = (tag_of(name), step)
                if key in expected:
                    sys.exit(f"metrics.jsonl:{number}: {key} logged twice")
                expected[key] = value
    if summaries != lines:
        sys.exit(f"{run_dir}: {summaries} summary events, but "
                 f"{lines} lines in metrics.jsonl")

    acc = event_accumulator.EventAccumulator(
        run_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    found = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            found[(tag, event.step)] = event.value

    errors = []
    for key in sorted(set(expected) | set(found)):
        if key not in found:
            errors.append(f"{key}: in metrics.jsonl, not in TensorBoard")
            continue
        if key not in expected:
            errors.append(f"{key}: in TensorBoard, not in metrics.jsonl")
            continue
        want, got = expected[key], found[key]
        if want is None:
            ok = not math.isfinite(got)
        else:
            want = as_float32(want)
            ok = abs(got - want) <= 1e-6 * max(1.0, abs(want))
        if not ok:
            errors.append(f"{key}: metrics.jsonl {expected[key]!r}, "
                          f"TensorBoard {got!r}")
    if errors:
        print("\n".join(errors[:20]))
        sys.exit(f"FAIL: {len(errors)} of {len(expected)} scalars differ")
    tags = {tag for tag, _ in expected}
    steps = {step for _, step in expected}
    print(f"OK: {len(files)} event file(s), {summaries} summary events; "
          f"{len(expected)} scalars over {len(tags)} tags and {len(steps)} "
          f"steps match metrics.jsonl")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])

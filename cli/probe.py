"""`darknet2tflite probe CFG [WEIGHTS] [--target T] [--json]`: the op probe on the command line.

Prints the per-layer table before and after automatic rewriting and exits non-zero when a
layer stays unsupported (or degraded) for the target, naming the layer and the op, so it
can gate a CI job before an expensive calibration/conversion run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from darknet2tflite.errors import InputError


def add_probe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``probe`` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "probe", help="per-layer TFLite op support for a target, with automatic rewrites",
        description="Convert each distinct Darknet layer signature on its own, report the "
                    "TFLite ops and whether the target supports them, choose rewrite rules "
                    "for unsupported/degraded layers and probe again.")
    p.add_argument("cfg", help="Darknet .cfg")
    p.add_argument("weights", nargs="?", help="Darknet .weights (default: random weights "
                   "of the right shapes; support does not depend on the values)")
    p.add_argument("--target", default="int8",
                   help="comma list of deployment targets (cpu, tflm, ethos-u55-256, ...: "
                        "each layer is also checked by the target's own tool), or a probe "
                        "profile name (int8, float) or .json (default: int8)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--allow", action="append", default=[], metavar="RULE",
                   help="also consider this opt-in rewrite rule (e.g. leaky_alternatives); "
                        "repeatable")
    p.add_argument("--images", help="image folder: measure each rewrite's float deviation "
                                    "on the whole model")
    p.add_argument("--no-rewrite", action="store_true", help="probe only, choose no rules")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights/data")
    p.set_defaults(func=run_probe)
    return p


def _problems(report: Any) -> list[str]:
    """One line per distinct problem, naming every layer that has it and the op to blame
    (yolov4 on a target without an exact mish would otherwise print 72 identical lines)."""
    groups: dict[tuple, list[int]] = {}
    for row in report.unsupported():
        for target, res in row.results.items():
            if res.status != "ok":
                key = (row.section, target, res.status, ", ".join(res.offending) or "-",
                       res.reason)
                groups.setdefault(key, []).append(row.index)
    out = []
    for (section, target, status, ops, reason), layers in groups.items():
        which = (f"layer {layers[0]}" if len(layers) == 1
                 else f"layers {', '.join(map(str, layers))}")
        out.append(f"{which} [{section}] {status} on {target}: op {ops}: {reason}")
    return out


def _rewrite_lines(applied: list[Any]) -> list[str]:
    if not applied:
        return ["(none)"]
    lines = []
    for a in applied:
        kind = "exact" if a.exact else "approximate"
        dev = ""
        if a.max_rel is not None:
            dev = f"; measured max abs {a.max_abs:.3g}, max rel {a.max_rel:.3g}"
            if a.within_tolerance is False:
                dev += " (EXCEEDS the 1e-5 tolerance of an exact rule)"
        layers = ", ".join(map(str, a.layers))
        lines.append(f"- {a.name} ({kind}{', opt-in' if a.opt_in else ''}): layers {layers}; "
                     f"emits {a.emits}{dev}")
    return lines


def run_probe(args: argparse.Namespace) -> int:
    """Returns 0 when every layer is supported for the target (after rewriting), else 1."""
    from darknet2tflite.probe.prober import probe
    from darknet2tflite.probe.rules import probe_with_rewrites

    cfg = Path(args.cfg)
    if not cfg.is_file():
        raise InputError(f"{cfg}: cfg file not found")
    if args.weights and not Path(args.weights).is_file():
        raise InputError(f"{args.weights}: weights file not found")
    from darknet2tflite.targets import probe_profiles
    target = probe_profiles(args.target)
    if args.no_rewrite:
        before = probe(cfg, args.weights, target, seed=args.seed)
        after, applied = before, []
    else:
        before, after, applied = probe_with_rewrites(
            cfg, args.weights, target, images=args.images, allow=tuple(args.allow),
            seed=args.seed)
    problems = _problems(after)
    if args.json:
        doc = {"target": args.target, "before": before.to_dict(),
               "rewrites": [a.to_dict() for a in applied],
               "after": after.to_dict() if after is not before else None,
               "unsupported_after": problems}
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(f"# probe of {cfg.name} for target {', '.join(before.targets)}")
        print(f"\n## before rewriting ({len(before.rows)} layers, {before.n_signatures} "
              f"signatures, {before.n_conversions} conversions, {before.seconds:.1f} s)\n")
        print(before.to_markdown())
        if after is not before:
            print("\n## rewrites applied\n")
            print("\n".join(_rewrite_lines(applied)))
            dev = after.extra.get("deviation_all_rules")
            if dev:
                print(f"- all rules together: max abs {dev['max_abs']:.3g}, max rel "
                      f"{dev['max_rel']:.3g} over {dev['images']} images")
            print("\n## after rewriting\n")
            print(after.to_markdown())
    if problems:
        for line in problems:
            print(f"darknet2tflite: {line}", file=sys.stderr)
        return 1
    return 0

"""Rewrite-rule choice from a probe report, and the rules' float deviation on real images."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from darknet2tflite.darknet.config import DarknetConfig
from darknet2tflite.errors import InputError
from darknet2tflite.darknet.weights import DarknetWeights, random_weights
from darknet2tflite.probe.prober import EXACT_TOLERANCE, Prober, _as_cfg, _as_list, _as_profiles, _as_weights
from darknet2tflite.probe.profiles import Profile
from darknet2tflite.probe.report import OK, ProbeReport
from darknet2tflite.probe.signatures import matching_rules


@dataclass
class AppliedRewrite:
    """One rule chosen by :func:`probe_with_rewrites`, with what it fixed and, when images
    were given, its measured float deviation on the whole model."""

    name: str
    exact: bool
    opt_in: bool
    emits: str
    description: str
    layers: list[int]
    fixes: list[dict[str, Any]]
    max_abs: float | None = None
    max_rel: float | None = None

    @property
    def within_tolerance(self) -> bool | None:
        if self.max_rel is None or not self.exact:
            return None
        return self.max_rel <= EXACT_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "within_tolerance": self.within_tolerance}


def choose_rules(prober: Prober, before: ProbeReport, profiles: Sequence[Profile],
                 candidates: Sequence[Any]) -> tuple[list[Any], dict[int, list[str]]]:
    """Greedy per failing row: the first candidate rule (exact ones first) that, together
    with the rules chosen so far, makes the row's signature fine on every failing target;
    if no single rule does, all matching candidates together. Also returns, per layer that
    no rule fixed, the rules that were tried."""
    chosen: list[Any] = []
    tried: dict[int, list[str]] = {}
    ordered = sorted(candidates, key=lambda r: (not r.exact, r.name))
    for row in before.unsupported():
        sec = prober.cfg.layers[row.index]
        res, _ = prober.probe_section(sec, chosen, profiles)
        if all(r.status == OK for r in res.values()):
            continue  # an earlier choice (same hook elsewhere) already fixed it
        cands = [r for r in matching_rules(sec, ordered) if r not in chosen]
        attempts = [[c] for c in cands] + ([cands] if len(cands) > 1 else [])
        for extra in attempts:
            res2, _ = prober.probe_section(sec, chosen + extra, profiles)
            if all(r.status == OK for r in res2.values()):
                chosen.extend(extra)
                break
        else:
            tried[row.index] = [c.name for c in cands]
    return chosen, tried


def load_images(images: Any, cfg: DarknetConfig, limit: int = 8) -> np.ndarray:
    """(N, H, W, C) float32 pixels/255 (RGB, or grey for ``channels=1``) at the net size
    from an array, image paths or a folder (plain resize: both models compared see the same
    pixels, so Darknet-exact letterboxing is irrelevant to a float-vs-float deviation)."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32)
    import cv2

    from darknet2tflite.images import ImageError, check_network_channels, load_network_image
    check_network_channels(cfg.channels, f"{cfg.path}: ")
    paths: list[Path] = []
    for item in ([images] if isinstance(images, (str, Path)) else list(images)):
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir()
                            if q.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
        else:
            paths.append(p)
    out = []
    for p in paths[:limit]:
        try:
            img = load_network_image(p, cfg.channels)
        except ImageError as e:
            raise InputError(str(e)) from None
        img = cv2.resize(img, (cfg.width, cfg.height), interpolation=cv2.INTER_LINEAR)
        out.append(img.reshape(cfg.height, cfg.width, -1).astype(np.float32) / 255.0)
    if not out:
        raise InputError(f"no images found in {images}")
    return np.stack(out)


def deviation(cfg: DarknetConfig, weights: DarknetWeights, rules: Sequence[Any],
              batch: np.ndarray, reference: list[list[np.ndarray]] | None = None
              ) -> tuple[float, float, list[list[np.ndarray]]]:
    """(max abs, max rel = max|diff| / max|ref|) of the float Keras heads with ``rules``
    against the plain build, over ``batch``; also returns the reference outputs."""
    from darknet2tflite.model.builder import build_keras
    if reference is None:
        base, _ = build_keras(cfg, weights)
        reference = [[np.asarray(o) for o in _as_list(base(x[None], training=False))]
                     for x in batch]
        del base
    model, _ = build_keras(cfg, weights, rules)
    diff = ref = 0.0
    for x, refs in zip(batch, reference):
        outs = _as_list(model(x[None], training=False))
        for o, r in zip(outs, refs):
            diff = max(diff, float(np.max(np.abs(np.asarray(o) - r))))
            ref = max(ref, float(np.max(np.abs(r))))
    del model
    return diff, (diff / ref if ref else 0.0), reference


def rule_deviations(cfg: DarknetConfig, weights: DarknetWeights, rules: Sequence[Any],
                    images: Any, limit: int = 8
                    ) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """Float deviation of each rule alone and of all together against the plain build on
    real images: ``([(max_abs, max_rel) per rule], {"max_abs", "max_rel", "images"})``."""
    batch = load_images(images, cfg, limit=limit)
    reference = None
    per_rule = []
    for r in rules:
        mabs, mrel, reference = deviation(cfg, weights, [r], batch, reference)
        per_rule.append((mabs, mrel))
    if len(rules) > 1:
        mabs, mrel, _ = deviation(cfg, weights, rules, batch, reference)
    else:
        mabs, mrel = per_rule[0]
    return per_rule, {"max_abs": mabs, "max_rel": mrel, "images": int(len(batch))}


def probe_with_rewrites(cfg: DarknetConfig | str | Path, weights: Any = None,
                        target: "str | Profile | Sequence[str | Profile]" = "int8",
                        images: Any = None, *, allow: Sequence[str] = (), seed: int = 0,
                        prober: Prober | None = None
                        ) -> tuple[ProbeReport, ProbeReport, list[AppliedRewrite]]:
    """Probe, choose registered rules that fix every unsupported/degraded row, re-probe.

    Only non-opt-in rules are considered, plus the opt-in ones named in ``allow``. With
    ``images`` (array, paths or folder) each chosen rule's float deviation is measured on
    the whole model against the plain build (exact rules must stay <= 1e-5 relative)."""
    from darknet2tflite.rewrites import load_rules
    cfg = _as_cfg(cfg)
    profiles = _as_profiles(target)
    registry = load_rules()
    unknown = [a for a in allow if a not in registry]
    if unknown:
        raise InputError(f"unknown rewrite rule(s) {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(registry))})")
    candidates = [r for r in registry.values() if not r.opt_in or r.name in allow]
    w = _as_weights(weights, cfg)
    prober = prober or Prober(cfg, w, seed=seed)
    before = prober.probe(profiles)
    chosen, tried = choose_rules(prober, before, profiles, candidates)
    after = prober.probe(profiles, chosen)
    unfixed = []
    for row in after.unsupported():
        names = tried.get(row.index)
        if names is None:  # same signature as a row that was tried
            names = next((v for k, v in tried.items()
                          if after.rows[k].signature == row.signature), [])
        sec = cfg.layers[row.index]
        blocked = [r.name for r in matching_rules(sec, registry.values())
                   if r.opt_in and r.name not in allow]
        note = (f"no rule fixes it (tried: {', '.join(names)})" if names
                else "no registered rule matches it")
        if blocked:
            note += f"; opt-in rule {', '.join(blocked)} matches (allow it to try)"
        for res in row.results.values():
            if res.status != OK:
                res.reason = f"{res.reason}; {note}" if res.reason else note
        unfixed.append({"layer": row.index, "section": row.section, "tried": names,
                        "opt_in_not_allowed": blocked,
                        "reason": {t: r.reason for t, r in row.results.items()
                                   if r.status != OK}})
    after.extra["unfixed"] = unfixed
    layers: dict[str, list[int]] = {}
    fixes: dict[str, list[dict]] = {}
    for old, row in zip(before.rows, after.rows):
        for name in row.rules:
            layers.setdefault(name, []).append(row.index)
            if old.status() != OK:
                fixes.setdefault(name, []).append({
                    "layer": row.index, "section": row.section,
                    "before": {t: {"status": v.status, "reason": v.reason}
                               for t, v in old.results.items() if v.status != OK},
                    "after": {t: {"status": v.status, "reason": v.reason}
                              for t, v in row.results.items()}})
    applied = [AppliedRewrite(r.name, r.exact, r.opt_in, r.emits, r.description,
                              layers.get(r.name, []), fixes.get(r.name, [])) for r in chosen]
    if images is not None and chosen:
        full = w if w is not None else _as_weights(random_weights(cfg, seed), cfg)
        per_rule, after.extra["deviation_all_rules"] = rule_deviations(cfg, full, chosen, images)
        for a, (mabs, mrel) in zip(applied, per_rule):
            a.max_abs, a.max_rel = mabs, mrel
    after.extra["rewrites"] = [a.to_dict() for a in applied]
    return before, after, applied

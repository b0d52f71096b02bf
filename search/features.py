"""The driver's side of the feature cache: frozen members' features, computed before any trial.

For every member the spec may freeze, one Ray task (with the trials' resources, so
on a GPU where trials get one) builds the member, reads each split's features from
the cache under ``STORAGE/feature_cache`` or computes and stores them, and returns
them into Ray's object store. Trials then get an object reference, not a copy.
Because every request goes through the cache's per-entry lock, a second search
over the same data and member, even on another node, reuses the files.
"""

from __future__ import annotations

import ray

from search.spec import Spec, searchable_values
from trainables.data import Dataset
from trainables.feature_cache import CachedMember, FeatureReport, compute_member_features

CACHE_DIR = "feature_cache"


def cacheable(spec: Spec) -> list[str]:
    """Members whose training policy can be ``frozen``."""
    return [m.name for m in spec.members if "frozen" in searchable_values(m.train)]


def precompute_features(spec: Spec, data: Dataset) -> tuple[dict[str, CachedMember], list[FeatureReport]]:
    """Cached features of every member the spec may freeze (none when ``feature_cache`` is off)."""
    names = cacheable(spec) if spec.feature_cache else []
    if not names:
        return {}, []
    task = ray.remote(compute_member_features).options(
        num_returns=2, num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu, name="feature_cache"
    )
    root = str(spec.storage / CACHE_DIR)
    refs = {}
    for member in (m for m in spec.members if m.name in names):
        columns = {name: split.inputs[member.input] for name, split in data.splits.items()}
        weights = str(member.weights) if member.weights is not None else None
        refs[member.name] = task.remote(
            member.name, member.kind, dict(member.params), data.inputs[member.input], member.input, weights, columns, root, spec.seed
        )
    reports: list[FeatureReport] = ray.get([report for report, _ in refs.values()])
    features = {r.member: CachedMember(r.width, refs[r.member][1]) for r in reports}
    return features, reports


def describe_reports(reports: list[FeatureReport]) -> str:
    """One line per member: how many rows its backbone ran, or that the cache had them all."""
    lines = []
    for r in reports:
        done = f"computed {r.rows_computed:,} of {r.rows:,} rows" if r.rows_computed else f"all {r.rows:,} rows from the cache"
        lines.append(f"feature cache: {r.member} (frozen, {r.width} wide): {done}")
    return "\n".join(lines)

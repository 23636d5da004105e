"""A tiny renderer for the subset of kustomize that deploy/k8s uses (resources, images, patches with a strategic-merge
patch file and a kind/name target), so the manifests can be checked where no kustomize binary is installed. Where
`kubectl kustomize` exists, the tests check this renderer against it.

Strategic merge, as far as these manifests need it: maps merge recursively, a `null` value deletes the key, lists of
maps that all carry `name` merge entry by entry on `name` (containers, env, volumes), other lists are replaced.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml


def strategic_merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        by_name = {item["name"]: item for item in base}
        merged = [strategic_merge(by_name[p["name"]], p) if p["name"] in by_name else p for p in patch]
        patched = {p["name"] for p in patch}
        return merged + [item for item in base if item["name"] not in patched]
    return copy.deepcopy(patch)


def _named(items: list) -> bool:
    return all(isinstance(i, dict) and "name" in i for i in items)


def _set_image(doc: dict, images: list[dict]) -> None:
    containers = doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    for c in containers:
        name, _, tag = c["image"].partition(":")
        for img in images:
            if img["name"] == name:
                c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"


def render(directory: str | Path) -> list[dict]:
    d = Path(directory)
    kust = yaml.safe_load((d / "kustomization.yaml").read_text())
    unsupported = set(kust) - {"apiVersion", "kind", "resources", "images", "patches"}
    if unsupported:
        raise NotImplementedError(f"kustomize_lite does not support {sorted(unsupported)}")
    docs: list[dict] = []
    for res in kust.get("resources", []):
        p = d / res
        if p.is_dir():
            docs.extend(render(p))
        else:
            docs.extend(x for x in yaml.safe_load_all(p.read_text()) if x)
    for patch in kust.get("patches", []):
        body = yaml.safe_load((d / patch["path"]).read_text())
        target = patch.get("target", {"kind": body["kind"], "name": body["metadata"]["name"]})
        hits = [i for i, doc in enumerate(docs) if doc["kind"] == target["kind"]
                and doc["metadata"]["name"] == target["name"]]
        if not hits:
            raise ValueError(f"patch {patch['path']} matches no resource")
        for i in hits:
            docs[i] = strategic_merge(docs[i], body)
    for doc in docs:
        _set_image(doc, kust.get("images", []))
    return docs


def canonical(obj):
    """Order-insensitive form: named lists sorted by name (kustomize and this renderer order merged lists differently)."""
    if isinstance(obj, dict):
        return {k: canonical(v) for k, v in obj.items()}
    if isinstance(obj, list):
        items = [canonical(v) for v in obj]
        return sorted(items, key=lambda i: i["name"]) if _named(items) and items else items
    return obj

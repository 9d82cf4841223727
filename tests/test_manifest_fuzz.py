"""Manifests, configs and indexes with any JSON value in any place: an ImageError, never a crash."""
from __future__ import annotations

import copy
import json
import random

import pytest

from rootless_groot.errors import GrootError
from rootless_groot.sources import base

D = "sha256:" + "a" * 64
MANIFEST = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D, "size": 10},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D, "size": 5,
                        "urls": ["http://x"], "annotations": {"a": "b"}}]}
CONFIG = {"architecture": "amd64", "os": "linux", "variant": "v1", "rootfs": {"type": "layers", "diff_ids": [D]},
          "config": {"Env": ["A=b"], "Cmd": ["sh"], "Entrypoint": ["x"], "WorkingDir": "/", "User": "0"}}
INDEX = {"manifests": [{"digest": D, "size": 3, "platform": {"os": "linux", "architecture": "amd64", "variant": "v8"}}]}
VALUES = [None, 1, -1, 1.5, True, "", "x", [], {}, [1], {"a": 1}, "sha256:zz", D, 2 ** 70, ["a"]]
WANT = {"os": "linux", "architecture": "amd64", "variant": "v8"}


def mutate(doc, rng: random.Random):
    doc = copy.deepcopy(doc)
    paths = []

    def walk(node, path):
        paths.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            walk(value, path + [key])

    walk(doc, [])
    for _ in range(rng.randint(1, 3)):
        path, node = rng.choice(paths[1:]), doc
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = copy.deepcopy(rng.choice(VALUES))
        except (KeyError, IndexError, TypeError):
            pass
    return doc


@pytest.mark.parametrize("seed", range(4))
def test_mutated_documents_give_image_errors(seed):
    rng = random.Random(seed)
    for _ in range(1500):
        manifest, config, index = mutate(MANIFEST, rng), mutate(CONFIG, rng), mutate(INDEX, rng)
        for call in (
            lambda: base.image_from_documents(base.parse_manifest(json.dumps(manifest).encode(), "m"),
                                              json.dumps(config).encode(), D, D, "image"),
            lambda: base.select_platform(index, WANT, "index"),
            lambda: base.check_platform(base.image_from_documents(MANIFEST, json.dumps(config).encode(), D, D,
                                                                  "image"), WANT, "image"),
        ):
            try:
                call()
            except GrootError:
                pass


def test_mutated_layout_indexes_give_image_errors(tmp_path):
    from rootless_groot.refs import parse_ref
    from rootless_groot.sources import open_source

    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D, "size": 3,
         "annotations": {"org.opencontainers.image.ref.name": "t"},
         "platform": {"os": "linux", "architecture": "amd64"}}]}
    rng = random.Random(7)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (tmp_path / "blobs" / "sha256").mkdir(parents=True)
    for _ in range(150):
        (tmp_path / "index.json").write_text(json.dumps(mutate(index, rng)))
        for tag in (":t", ""):
            source = open_source(parse_ref(f"oci://{tmp_path}{tag}"), WANT)
            try:
                source.resolve()
            except GrootError:
                pass

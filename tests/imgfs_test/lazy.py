"""Pushing eStargz images, for the lazy, fault and auth tests."""

import json

from . import estargz
from .harness import LAYER_TYPES, MT_OCI_CONFIG, MT_OCI_MANIFEST, digest_of


def push_estargz(reg, repo, tag, layer_entries, bad_toc=False, **build_args):
    """build_args: estargz.build()'s, for every layer."""
    descriptors, diff_ids = [], []
    for entries in layer_entries:
        blob, toc_digest, diff_id, size = estargz.build(entries, **build_args)
        d = reg.push_blob(repo, blob)
        descriptors.append({"mediaType": LAYER_TYPES["gzip"], "digest": d, "size": len(blob),
                            "annotations": {estargz.TOC_ANNOTATION: digest_of(b"wrong") if bad_toc else toc_digest,
                                            estargz.SIZE_ANNOTATION: str(size)}})
        diff_ids.append(diff_id)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                "config": {"mediaType": MT_OCI_CONFIG, "digest": reg.push_blob(repo, config), "size": len(config)},
                "layers": descriptors}
    reg.push_manifest(repo, tag, manifest, MT_OCI_MANIFEST)
    return descriptors

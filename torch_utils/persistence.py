"""Import path that upstream EG3D-family pickles name for every network object (reference.md §8.2).

``spherehead.legacy_writer`` reduces modules to a call of :func:`_reconstruct_persistent_obj`, so
the files it writes carry exactly the upstream global. Upstream's function of this name executes
the source text stored in the pickle; ours refuses, so a plain ``pickle.load`` of such a file
(ours or upstream's) never runs pickled code.
"""


def _reconstruct_persistent_obj(meta):
    """Refuse: upstream snapshots are read only through spherehead's code-free reader."""
    name = meta.get("class_name") if isinstance(meta, dict) else None
    raise RuntimeError(
        f"refusing to reconstruct persistent object {name!r} with plain pickle: upstream pickles must be "
        f"loaded with spherehead.load_network or spherehead.legacy.read_upstream_snapshot, which never "
        f"execute the source stored in the file")

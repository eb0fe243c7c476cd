"""Print max |ours − released| for every quantity of a parity fixture (expected.npz beside a snapshot).

    python tools/parity_report.py --fixture ../shared/fixtures/official-small

The fixture format is the one of ``official-small`` (its README): inputs z, c_cond, c_render,
truncation_psi, query points/dirs, and the released code's outputs. tests/test_parity.py asserts
the same comparisons against the fixture's tolerances; this tool prints the numbers (JSON).
"""
from __future__ import annotations

import json
import os
import sys

import click
import numpy as np
import torch

try:
    import spherehead
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import spherehead

from torch_utils.ops.spherical_sample import spherical_sample


@torch.no_grad()
def parity_report(fixture: str) -> dict:
    """{quantity: max |difference|} for the snapshot and expected.npz in ``fixture``."""
    nets = spherehead.load_network(os.path.join(fixture, "network-snapshot.pkl"))
    G, D = nets["G_ema"], nets["D"]
    with np.load(os.path.join(fixture, "expected.npz")) as data:
        e = {k: torch.from_numpy(data[k]) for k in data.files}
    psi = float(e["truncation_psi"])
    diff = lambda a, b: float((a.float() - b).abs().max())
    out = {"ws": diff(G.mapping(e["z"], e["c_cond"], truncation_psi=psi), e["ws"])}
    c_adapted, delta_c = G.apply_delta_c(e["z"], e["c_render"], truncation_psi=psi)
    out.update(delta_c=diff(delta_c, e["delta_c"]), c_adapted=diff(c_adapted, e["c_adapted"]))
    out["backbone_planes_first8ch"] = diff(G.backbone.synthesis(e["ws"], noise_mode="const")[:, :8],
                                           e["backbone_planes_first8ch"])
    planes = G.planes(e["ws"], noise_mode="const")
    out["sphere_planes_first4ch"] = diff(planes[:, :, :, :4], e["sphere_planes_first4ch"])
    feats = spherical_sample(planes, e["query_points"], box_warp=G.rendering.box_warp)
    out["query_features"] = diff(feats, e["query_features"])
    dec = G.decoder(feats, e["query_dirs"])
    out.update(query_sigma=diff(dec["sigma"], e["query_sigma"]), query_rgb=diff(dec["rgb"], e["query_rgb"]))
    synth = G.synthesis(e["ws"], e["c_adapted"], noise_mode="const", deterministic=True)
    for key in ("image", "image_raw", "image_depth", "image_mask", "image_parsing"):
        if "synthesis_" + key in e and key in synth:
            out["synthesis_" + key] = diff(synth[key], e["synthesis_" + key])
    imgs = {k: e["synthesis_" + k] for k in ("image", "image_raw", "image_mask", "image_parsing")
            if "synthesis_" + k in e}
    out["d_logits"] = diff(D(imgs, e["c_render"]), e["d_logits"])
    return out


@click.command()
@click.option("--fixture", required=True, type=click.Path(file_okay=False),
              help="Folder with network-snapshot.pkl and expected.npz.")
def main(fixture):
    """Compare this package with the released code's outputs stored in a parity fixture."""
    for name in ("network-snapshot.pkl", "expected.npz"):
        if not os.path.isfile(os.path.join(fixture, name)):
            raise click.ClickException(f"{fixture}: {name} not found")
    try:
        report = parity_report(fixture)
    except (spherehead.errors.CheckpointError, KeyError, ValueError) as exc:
        raise click.ClickException(f"{fixture}: {exc}") from None
    click.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

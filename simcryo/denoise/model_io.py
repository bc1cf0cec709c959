"""Denoiser model files: the generator architecture and weights plus what `apply` needs."""
from simcryo.denoise.networks import Generator
from simcryo.errors import SimcryoError

MODEL_VERSION = 1


def build_generator(arch):
    """Untrained Generator of an `arch_of` dict (models from before `odd` existed are not odd)."""
    return Generator(channels=arch["channels"], res_blocks=arch["res_blocks"],
                     scale=arch["scale"], odd=arch.get("odd", False))


def arch_of(cfg):
    """The generator's architecture fields of a DenoiseConfig, as stored in model.pt."""
    return {"channels": cfg.channels, "res_blocks": cfg.res_blocks, "scale": cfg.scale,
            "odd": cfg.odd}


def model_record(G, cfg, mode, box, apix, extra=None):
    """Everything `apply` needs, as a plain dict (saved as model.pt); `extra` carries the
    mask the model was trained with: mask_radius_px (px of `box`) and mask_diameter_A."""
    rec = {"version": MODEL_VERSION, "mode": mode, "arch": arch_of(cfg),
           "generator": {k: v.detach().cpu() for k, v in G.state_dict().items()},
           "box": int(box), "apix": float(apix)}
    rec.update(extra or {})
    return rec


def load_generator(record, device):
    """The trained generator (eval mode) of a `model_record` dict."""
    if not isinstance(record, dict) or record.get("version") != MODEL_VERSION \
            or "generator" not in record:
        raise SimcryoError("not a simcryo denoise model (or from an incompatible version)")
    G = build_generator(record["arch"]).to(device)
    G.load_state_dict(record["generator"])
    G.eval()
    return G

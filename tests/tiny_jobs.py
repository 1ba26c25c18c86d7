"""A textual-inversion job on the tiny generator, as the stage tests run it."""
from tibalance.inversion import train_textual_inversion

TI = dict(steps=6, resolution=32, batch_size=2, augment_variants=2, checkpoint_every=3,
          preview_images=2, preview_steps=2, lr=0.05)


def run_ti(tiny_sd, seeds, out, **kw):
    return train_textual_inversion(tiny_sd, seeds, "ankle_boot", "Ankle boot", {**TI, **kw.pop("settings", {})},
                                   7, str(out / "e.safetensors"), str(out / "loss.csv"), str(out / "p.png"),
                                   str(out / "resume"), **kw)

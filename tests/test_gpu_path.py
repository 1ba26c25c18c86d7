"""The GPU path's switches, each run on CPU against the default: the same token
or images (issue #25). channels_last, log_every and compile are in
test_runtime.py and test_inversion.py; these are the attention kernel, AdamW's
foreach kernels and half-precision frozen weights."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tibalance.inversion import train_textual_inversion
from tibalance.sampling import sample_class
from tibalance.util import TibalanceError

TI = dict(steps=6, resolution=32, batch_size=2, augment_variants=2, checkpoint_every=0, preview_images=1,
          preview_steps=1, lr=0.05)


def _token(tiny_sd, seeds, out, **settings):
    train_textual_inversion(tiny_sd, seeds, "ankle_boot", "Ankle boot", {**TI, **settings}, 7,
                            str(out / "e.safetensors"), str(out / "loss.csv"), str(out / "p.png"), str(out / "resume"))
    return load_file(out / "e.safetensors")["<ankle_boot>"]


def test_foreach_adamw_is_bit_identical_to_the_loop(tiny_sd, seed_images, tmp_path):
    assert torch.equal(_token(tiny_sd, seed_images, tmp_path / "a"),
                       _token(tiny_sd, seed_images, tmp_path / "b", foreach=False))


def test_sdpa_and_plain_attention_learn_the_same_token_and_images(tiny_sd, seed_images, tmp_path):
    default = _token(tiny_sd, seed_images, tmp_path / "default")
    assert torch.equal(default, _token(tiny_sd, seed_images, tmp_path / "sdpa", attention="sdpa"))
    plain = _token(tiny_sd, seed_images, tmp_path / "plain", attention="plain")
    assert torch.allclose(default, plain, atol=1e-5, rtol=1e-4)
    with pytest.raises(TibalanceError, match=r"^ti.attention: 'flash' is not sdpa or plain$"):
        _token(tiny_sd, seed_images, tmp_path / "bad", attention="flash")
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["x"], "label": ["a"], "split": ["train"]}).to_csv(manifest, index=False)
    images = {}
    for name in ("sdpa", "plain"):
        s = {"n_images": 2, "batch_size": 2, "steps": 2, "resolution": 32, "attention": name}
        assert sample_class(tiny_sd, "raw", "a", "a", s, 0, str(manifest), str(tmp_path / f"{name}.csv"),
                            str(tmp_path / name)) == 2
        images[name] = [np.asarray(Image.open(p), dtype=int) for p in sorted((tmp_path / name).glob("*.png"))]
    assert all(np.abs(x - y).max() <= 1 for x, y in zip(images["sdpa"], images["plain"]))


def test_half_precision_frozen_weights_train_the_same_token(tiny_sd, seed_images, tmp_path, monkeypatch):
    """The GPU's precision path (mixed_precision auto there: the frozen UNet and
    VAE held in bf16, the token trained in fp32) run on the CPU by giving fit the
    dtypes a GPU resolves to: the frozen weights are bf16 while it trains, the
    token is fp32 and ends where bf16 autocast over fp32 weights takes it, to
    bf16's rounding."""
    from diffusers import UNet2DConditionModel

    import tibalance.adapt as adapt

    seen, forward = [], UNet2DConditionModel.forward

    def watch(self, sample, *a, **kw):
        seen.append(next(self.parameters()).dtype)
        return forward(self, sample, *a, **kw)

    autocast = _token(tiny_sd, seed_images, tmp_path / "autocast", mixed_precision="bf16")
    from tibalance.generator import load_pipeline

    pipe = load_pipeline(tiny_sd)  # the token starts at 'boot' (the class name's last word)
    start = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("boot</w>")]
    start = start.detach().float()
    monkeypatch.setattr(UNet2DConditionModel, "forward", watch)
    monkeypatch.setattr(adapt, "pipeline_dtypes", lambda device, setting, key: (torch.bfloat16, torch.bfloat16))
    half = _token(tiny_sd, seed_images, tmp_path / "half")
    assert seen and set(seen) == {torch.bfloat16} and half.dtype == torch.float32
    # Adam normalises each coordinate's step, so a coordinate whose gradient is near zero can
    # step either way under another rounding: the two movements are compared as vectors
    a, h = autocast[0] - start, half[0] - start
    assert float(a.abs().mean()) > 0.01
    assert float(torch.nn.functional.cosine_similarity(a, h, dim=0)) > 0.95
    assert float((h - a).abs().mean()) < 0.1 * float(a.abs().mean())

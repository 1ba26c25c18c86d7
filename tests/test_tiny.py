"""The offline SD-architecture build: the real CLIP vocabulary, the presets' exact sizes."""

import pytest
import torch

from tibalance.tiny import clip_tokenizer
from tibalance.util import TibalanceError


def test_tokenizer_is_real_clip_vocabulary():
    import open_clip

    tok = clip_tokenizer(__import__("pathlib").Path(__import__("tempfile").mkdtemp()))
    assert len(tok) == 49408
    text = "a photo of a shirt, a type of flower"
    assert tok(text).input_ids[1:-1] == open_clip.tokenizer.SimpleTokenizer().encode(text)
    for word in ("shirt", "flower", "boot"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1


def test_sd15_preset_is_stable_diffusion_1_5s_exact_architecture():
    """generator.tiny.preset: sd15 builds SD 1.5's layer sizes (random weights,
    for timing): the parameter counts of stable-diffusion-v1-5's UNet, VAE and
    CLIP ViT-L/14 text encoder, at 512 px (sized on the meta device: no memory)."""
    from tibalance.tiny import architecture, build_components

    with torch.device("meta"):
        te, vae, unet = (build_components({"preset": "sd15"})[k] for k in ("text_encoder", "vae", "unet"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(te)) == (859_520_964, 83_653_863, 123_060_480)
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == 512
    assert unet.config.cross_attention_dim == te.config.hidden_size == 768 and vae.config.scaling_factor == 0.18215
    assert architecture({})["layers_per_block"] == 1  # unset: the tiny sizes
    with pytest.raises(TibalanceError, match=r"^generator.tiny.preset: unknown preset 'sd3' \(sd15, sd21, sdxl\)$"):
        architecture({"preset": "sd3"})
    with pytest.raises(TibalanceError, match=r"sd15 fixes every size; remove generator.tiny.unet_channels$"):
        architecture({"preset": "sd15", "unet_channels": [8, 16]})
    from tibalance.config import check_generator_preset

    check_generator_preset({"generator": {"build": "tiny", "tiny": {"preset": "sd15"}}})
    with pytest.raises(TibalanceError, match=r"^generator.tiny.preset: sd15 is a random-weight architecture for "
                                             r"timing \(generator.build: tiny\); generator.build is pretrain$"):
        check_generator_preset({"generator": {"build": "pretrain", "tiny": {"preset": "sd15"}}})

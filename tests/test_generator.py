"""What a generator setting names: its own resolution."""
import logging

import pytest

from tibalance.util import TibalanceError


def test_resolution_defaults_to_the_generators_own(tiny_sd, caplog):
    """Unset, TI, LoRA and sampling take the generator's size (the tiny one's 32
    px, SD 1.5's 512 would be its own); a value that differs runs as asked,
    logged once per key."""
    from tibalance import generator

    assert generator.native_resolution(tiny_sd) == 32
    assert generator.resolve_resolution(None, tiny_sd, "ti.resolution") == 32
    with caplog.at_level(logging.WARNING, logger="tibalance.generator"):
        assert generator.resolve_resolution(32, tiny_sd, "lora.resolution") == 32
        assert not caplog.records
        for _ in range(2):
            assert generator.resolve_resolution(64, tiny_sd, "sampling.resolution") == 64
    said = [r.getMessage() for r in caplog.records]
    assert said == ["sampling.resolution: 64 px, the generator's own size is 32 px (unset: its own)"]
    with pytest.raises(TibalanceError, match="generator.model: .*nowhere has no readable unet/vae config"):
        generator.native_resolution(str(tiny_sd) + "/nowhere")

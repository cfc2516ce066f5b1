"""models.tiny: the tiny random-weight preset."""
import torch

from models.tiny import build_tiny_pipeline


def test_tiny_preset_is_the_ti2v_architecture_and_deterministic_per_seed():
    a, b, c = build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=1)
    assert a.dit.seperated_timestep and a.dit.fuse_vae_embedding_in_latents
    assert a.vae.model.z_dim == 48 and a.vae.upsampling_factor == 16
    assert a.height_division_factor == a.width_division_factor == 32
    for name, tensor in a.dit.state_dict().items():
        assert torch.equal(tensor, b.dit.state_dict()[name])
    assert not torch.equal(a.dit.blocks[0].ffn[0].weight, c.dit.blocks[0].ffn[0].weight)
    ids, mask = a.tokenizer("A drone flies over zzz", return_mask=True)
    assert ids.shape == (1, 32) and int(mask.sum()) == 6  # 5 words + </s>
    assert ids[0, 4].item() == 2  # unknown word -> <unk>

"""Vision models against transformers, both ways: tiny random models (every parameter randomised) saved by
transformers and loaded by groundup, and saved by groundup and loaded by transformers; outputs within 1e-4."""

from __future__ import annotations

import pytest
import torch

import groundup as gu
from tests.conftest import randomize_

T = pytest.importorskip("transformers")
TOL = dict(atol=1e-4, rtol=1e-4)
TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, image_size=32,
             patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, vocab_size=99,
            bos_token_id=1, eos_token_id=98, pad_token_id=0)


def _pixels(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _both_ways(hf_model, tmp_path, compare) -> None:
    """hf -> groundup, then groundup -> hf (a fresh transformers model read from groundup's folder)."""
    randomize_(hf_model).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    ours = gu.from_pretrained(tmp_path / "hf")
    compare(hf_model, ours)
    ours.save_pretrained(tmp_path / "gu")
    back = type(hf_model).from_pretrained(tmp_path / "gu").eval()
    compare(back, ours)


@pytest.mark.parametrize("head", ["classifier", "pooler"])
def test_vit_matches_transformers_both_ways(tmp_path, head):
    cfg = T.ViTConfig(**TOWER, num_labels=3)
    hf_model = T.ViTForImageClassification(cfg) if head == "classifier" else T.ViTModel(cfg)
    px = _pixels(2)

    def compare(hf, ours):
        with torch.no_grad():
            want, got = hf(pixel_values=px), ours(px)
            if head == "classifier":
                torch.testing.assert_close(got.logits, want.logits, **TOL)
            else:
                torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, **TOL)
                torch.testing.assert_close(got.pooler_output, want.pooler_output, **TOL)
            big = _pixels(1, 48, seed=1)  # another resolution: positions interpolated bicubically
            want = hf(pixel_values=big, interpolate_pos_encoding=True)
            got = ours(big, interpolate_pos_encoding=True)
            name = "logits" if head == "classifier" else "last_hidden_state"
            torch.testing.assert_close(getattr(got, name), getattr(want, name), **TOL)

    _both_ways(hf_model, tmp_path, compare)


def _texts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three texts of different lengths, right-padded, each ending with the end-of-text id 98."""
    ids = torch.tensor([[1, 5, 9, 13, 98, 0, 0], [1, 7, 98, 0, 0, 0, 0], [1, 4, 4, 6, 8, 11, 98]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_dual_encoders_match_transformers_both_ways(tmp_path, family):
    if family == "clip":
        hf_model = T.CLIPModel(T.CLIPConfig(text_config=TEXT, vision_config=TOWER, projection_dim=16))
    else:
        hf_model = T.SiglipModel(T.SiglipConfig(text_config=TEXT, vision_config=TOWER))
    ids, mask = _texts()
    px = _pixels(2)

    def compare(hf, ours):
        kwargs = dict(attention_mask=mask) if family == "clip" else {}  # SigLIP was trained without a mask
        with torch.no_grad():
            want = hf(input_ids=ids, pixel_values=px, **kwargs)
            got = ours(ids, px, **kwargs)
        for name in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), **TOL, msg=name)

    _both_ways(hf_model, tmp_path, compare)


def test_contrastive_losses_match_transformers(tmp_path):
    """CLIP's symmetric InfoNCE and SigLIP's sigmoid loss, on the same matched batch."""
    ids, _ = _texts()
    px = _pixels(3)
    for hf_model in (T.CLIPModel(T.CLIPConfig(text_config=TEXT, vision_config=TOWER, projection_dim=16)),
                     T.SiglipModel(T.SiglipConfig(text_config=TEXT, vision_config=TOWER))):
        randomize_(hf_model).eval()
        path = tmp_path / type(hf_model).__name__
        hf_model.save_pretrained(path)
        ours = gu.from_pretrained(path)
        with torch.no_grad():
            want = hf_model(input_ids=ids, pixel_values=px, return_loss=True).loss
            got = ours(ids, px, return_loss=True).loss
        torch.testing.assert_close(got, want, **TOL)


def _llava(n_layers_vision: int = 3):
    vision = dict(TOWER, num_hidden_layers=n_layers_vision, model_type="clip_vision_model")
    text = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=48, vocab_size=120, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                pad_token_id=0)
    return T.LlavaForConditionalGeneration(T.LlavaConfig(vision_config=vision, text_config=text,
                                                         image_token_index=110))


def test_llava_matches_transformers_with_two_images_and_an_uneven_batch(tmp_path):
    hf_model = _llava()
    hf_model.generation_config.pad_token_id = 0
    randomize_(hf_model).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    ours = gu.from_pretrained(tmp_path / "hf")
    assert ours.config.image_tokens == 16
    # row 0: two images in one prompt; row 1: one image and a shorter text, left-padded
    rows = [ours.expand_image_tokens([1, 110, 5, 6, 110, 7]), ours.expand_image_tokens([1, 8, 110, 9])]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = (torch.arange(width)[None] >= torch.tensor([[width - len(r)] for r in rows])).long()
    px = _pixels(3)

    def compare(hf, model):
        with torch.no_grad():
            want = hf(input_ids=ids, pixel_values=px, attention_mask=mask).logits
            got = model(ids, px, attention_mask=mask)
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], **TOL)

    compare(hf_model, ours)
    ours.save_pretrained(tmp_path / "gu")
    back = T.LlavaForConditionalGeneration.from_pretrained(tmp_path / "gu").eval()
    compare(back, ours)
    # greedy generation with the images: the same tokens as transformers' generate
    with torch.no_grad():
        want = hf_model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=6,
                                 do_sample=False)
    got = gu.generate(ours.with_images(px), ids, 6, attention_mask=mask)
    assert got.tolist() == want.tolist()


def test_llava_reads_the_tower_under_either_name(tmp_path):
    """Files written before transformers 5 keep the tower's vision_model. level (llava-1.5-7b-hf's)."""
    from safetensors.torch import load_file, save_file

    hf_model = randomize_(_llava(2)).eval()
    hf_model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in tensors.items()}
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours = gu.from_pretrained(tmp_path)
    ids = torch.tensor([ours.expand_image_tokens([1, 110, 5])])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, _pixels(1)), hf_model(input_ids=ids, pixel_values=_pixels(1)).logits,
                                   **TOL)


def test_llava_refuses_a_wrong_number_of_placeholders(tmp_path):
    hf_model = _llava(2)
    hf_model.save_pretrained(tmp_path)
    ours = gu.from_pretrained(tmp_path)
    ids = torch.tensor([ours.expand_image_tokens([1, 110, 5, 110])])
    with pytest.raises(ValueError, match=r"32 image placeholder tokens .* for 1 image\(s\); each image fills 16"):
        ours(ids, _pixels(1))


def _blip2():
    vision = dict(TOWER)
    qformer = dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
                   encoder_hidden_size=32, cross_attention_frequency=2)
    text = dict(model_type="opt", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=48,
                vocab_size=120, word_embed_proj_dim=32, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                pad_token_id=0)
    return T.Blip2ForConditionalGeneration(T.Blip2Config(vision_config=vision, qformer_config=qformer,
                                                         text_config=text, num_query_tokens=5, image_token_index=110))


def test_blip2_qformer_path_matches_transformers_both_ways(tmp_path):
    """BLIP-2's connector: learned queries through the Q-Former (cross-attention every 2nd layer) into OPT."""
    hf_model = randomize_(_blip2()).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    ours = gu.from_pretrained(tmp_path / "hf")
    assert ours.config.connector == "qformer" and ours.config.image_tokens == 5
    rows = [ours.expand_image_tokens([110, 2, 5, 6, 7]), ours.expand_image_tokens([110, 2, 9])]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = (ids != 0).long()
    px = _pixels(2)

    def compare(hf, model):
        with torch.no_grad():
            want = hf(input_ids=ids, pixel_values=px, attention_mask=mask).logits
            got = model(ids, px, attention_mask=mask)
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()], **TOL)

    compare(hf_model, ours)
    ours.save_pretrained(tmp_path / "gu")
    compare(T.Blip2ForConditionalGeneration.from_pretrained(tmp_path / "gu").eval(), ours)


def _idefics(alpha: str = "float"):
    return T.IdeficsForVisionText2Text(T.IdeficsConfig(
        vocab_size=120, additional_vocab_size=2, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
        num_attention_heads=4, cross_layer_interval=2, use_resampler=True, alpha_type=alpha,
        max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        vision_config=dict(embed_dim=24, image_size=32, patch_size=8, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=40),
        perceiver_config=dict(resampler_n_latents=6, resampler_depth=2, resampler_n_heads=2, resampler_head_dim=8)))


@pytest.mark.parametrize("alpha", ["float", "vector"])
def test_idefics_matches_transformers_both_ways_with_interleaved_images(tmp_path, alpha):
    """Idefics v1 (the open Flamingo): resampler, gated cross-attention every 2nd layer, the decoupled extra
    vocabulary, two images per row with each token seeing only its latest image, left padding."""
    hf_model = randomize_(_idefics(alpha)).eval()  # every alpha random too: the gates are open
    hf_model.save_pretrained(tmp_path / "hf")
    ours = gu.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([[0, 0, 1, 121, 5, 6, 121, 7, 8], [1, 9, 121, 5, 121, 6, 7, 8, 120]])
    mask = (ids != 0).long()
    img = torch.zeros(2, 9, 2, dtype=torch.long)  # [B, T, images]: the latest <image> (id 121) at or before
    for b in range(2):
        seen = -1
        for t in range(9):
            seen += int(ids[b, t] == 121)
            if seen >= 0:
                img[b, t, seen] = 1
    px = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def compare(hf, model):
        with torch.no_grad():
            want = hf(input_ids=ids, pixel_values=px, image_attention_mask=img, attention_mask=mask).logits
            got = model(ids, px, image_attention_mask=img, attention_mask=mask)
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()], **TOL)

    compare(hf_model, ours)
    ours.save_pretrained(tmp_path / "gu")
    compare(T.IdeficsForVisionText2Text.from_pretrained(tmp_path / "gu").eval(), ours)


def test_flamingo_with_closed_gates_is_the_frozen_lm_and_trains_only_new_layers(tmp_path):
    hf_model = _idefics()  # alphas initialised at zero, as Flamingo starts
    hf_model.save_pretrained(tmp_path)
    ours = gu.from_pretrained(tmp_path)
    randomize_(ours.vision_tower), randomize_(ours.resampler), randomize_(ours.language_model)
    ids = torch.tensor([[1, 121, 5, 6, 121, 7, 8]])
    px = _pixels(2).view(1, 2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(ids, px, image_attention_mask=torch.ones(1, 7, 2, dtype=torch.long)),
                           ours.language_model(ids))
    ours.train().requires_grad_(False)
    for m in ours.new_layers():
        m.requires_grad_(True)
    loss = ours(ids, px, image_attention_mask=torch.ones(1, 7, 2, dtype=torch.long)).logsumexp(-1).mean()
    loss.backward()
    trained = {n for n, p in ours.named_parameters() if p.grad is not None}
    assert trained and all(n.startswith(("gated.", "resampler.")) for n in trained)
    assert any(n.endswith("alpha_attn") for n in trained)  # the gate is what opens first

"""The contrastive pipeline end to end at toy size: the synthetic set, training on the one loop, the folder it
writes (read back by transformers with the same logits), `groundup clip classify|search`, and the data errors."""

from __future__ import annotations

import json

import pytest
import torch

import groundup as gu
from groundup.cli import main
from groundup.vision import ImageError, synthetic
from groundup.vision.data import read_captions

T = pytest.importorskip("transformers")


def test_the_synthetic_set_is_fixed_and_its_splits_differ():
    a, b = synthetic.scene(7, "train"), synthetic.scene(7, "train")
    assert a.caption == b.caption and a.image.tobytes() == b.image.tobytes()
    test = [synthetic.scene(i, "test").image.tobytes() for i in range(20)]
    assert not {synthetic.scene(i, "train").image.tobytes() for i in range(20)} & set(test)
    s = synthetic.scene(3, "test")
    assert s.conversation("shape") == [{"from": "human", "value": "<image>\nWhat shape is in the picture?"},
                                       {"from": "gpt", "value": s.shape}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from groundup.train.clip import CLIPSettings, run

    out = tmp_path_factory.mktemp("clip")
    return out, run(CLIPSettings(out_dir=str(out), steps=12, batch_size=32, train_size=256, test_size=64,
                                 progress=False), log=lambda *_: None)


def test_training_writes_a_clip_folder_transformers_reads(trained):
    out, results = trained
    assert 0.0 <= results["recall@1"] <= 1.0 and "zero_shot_pair" in results
    assert json.loads((out / "results.json").read_text())["recall@1"] == results["recall@1"]
    folder = out / "model"
    ours = gu.from_pretrained(folder)
    hf = T.CLIPModel.from_pretrained(folder).eval()
    ids = torch.tensor([[2, 5, 9, 1], [2, 7, 1, 0]])
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=px, attention_mask=(ids != 0).long()).logits_per_image
        got = ours(ids, px, attention_mask=(ids != 0).long()).logits_per_image
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_classify_and_search_from_the_command_line(trained, tmp_path, capsys):
    folder = trained[0] / "model"
    for i in range(3):
        synthetic.scene(i, "test").image.save(tmp_path / f"{i}.png")
    assert main(["clip", "classify", str(folder), str(tmp_path), "--labels", "red circle,blue square",
                 "--template", "a {}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("red circle" in x and "blue square" in x for x in lines)
    assert main(["clip", "search", str(folder), "a red circle", str(tmp_path), "--top", "2"]) == 0
    assert "best matches for 'a red circle' among 3 images" in capsys.readouterr().out
    (tmp_path / "bad.png").write_text("no")
    assert main(["clip", "classify", str(folder), str(tmp_path / "bad.png"), "--labels", "a,b"]) == 2
    assert "bad.png is not an image" in capsys.readouterr().err


def test_caption_files_report_the_line(tmp_path):
    synthetic.scene(0).image.save(tmp_path / "a.png")
    good = tmp_path / "c.jsonl"
    good.write_text('{"image": "a.png", "caption": "a thing"}\n')
    assert read_captions(good)[0].caption == "a thing"
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"image": "a.png", "caption": "x"}\n{"image": "gone.png", "caption": "y"}\n')
    with pytest.raises(ImageError, match=r"d.jsonl:2: image gone.png not found"):
        read_captions(bad)
    csv = tmp_path / "e.csv"
    csv.write_text("file,text\na.png,x\n")
    with pytest.raises(ImageError, match="header must name the columns image and caption"):
        read_captions(csv)


def test_llava_stages_write_a_folder_that_generates_with_an_image(trained, tmp_path, capsys):
    from groundup.train.llava import LlavaSettings
    from groundup.train.llava import run as run_llava

    out = tmp_path / "llava"
    results = run_llava(LlavaSettings(out_dir=str(out), clip=str(trained[0] / "model"), train_size=96, test_size=12,
                                      d_model=32, n_layers=1, lm_steps=3, align_steps=3, tune_steps=3, batch_size=16,
                                      progress=False), log=lambda *_: None)
    assert set(results["with_image"]) == {"colour", "shape", "count", "all"} and results["image_tokens"] == 16
    folder = out / "model"
    ours = gu.from_pretrained(folder)
    hf = T.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    ids = torch.tensor([ours.expand_image_tokens([5, ours.config.image_token_id, 7, 9])])
    px = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, px), hf(input_ids=ids, pixel_values=px).logits, atol=1e-4, rtol=1e-4)
    synthetic.scene(0, "test").image.save(tmp_path / "q.png")
    assert main(["generate", str(folder), "--image", str(tmp_path / "q.png"), "--max-new-tokens", "3",
                 "What colour are the shapes?"]) == 0
    assert capsys.readouterr().out.startswith("USER: <image>\nWhat colour are the shapes? ASSISTANT:")
    assert main(["generate", str(folder), "--image", str(tmp_path / "q.png"), "--image", str(tmp_path / "q.png"),
                 "USER: <image>\nWhat is it? ASSISTANT:"]) == 2
    assert "1 <image> placeholder(s) for 2 --image file(s)" in capsys.readouterr().err


def test_calc_explains_the_visual_tokens_and_the_parts(capsys):
    assert main(["calc", "llava-1.5-7b"]) == 0
    out = capsys.readouterr().out
    assert "24 x 24 = 576 patches, + [CLS] = 577 tower tokens" in out
    assert "visual tokens per image in the LM stream: 576 ([CLS] dropped)" in out
    assert "7,063,427,072" in out and "20,979,712" in out  # LLaVA-1.5-7B's published total; its projector
    assert main(["calc", "clip-vit-base-patch32"]) == 0
    assert "151,277,313" in capsys.readouterr().out  # openai/clip-vit-base-patch32
    assert main(["calc", "vit-base-patch16-224"]) == 0
    assert "86,567,656" in capsys.readouterr().out  # google/vit-base-patch16-224


def test_flamingo_training_keeps_the_lm_frozen_and_writes_an_idefics_folder(trained, tmp_path):
    from groundup.train.flamingo import FlamingoSettings
    from groundup.train.flamingo import run as run_flamingo

    out = tmp_path / "flamingo"
    r = run_flamingo(FlamingoSettings(out_dir=str(out), clip=str(trained[0] / "model"), train_size=96, test_size=6,
                                      d_model=32, n_layers=2, lm_steps=3, steps=3, batch_size=16, shots=(0, 1),
                                      progress=False), log=lambda *_: None)
    assert r["lm_unchanged"] is True and set(r["1_shot"]) == {"colour", "shape", "count", "all"}
    assert r["gated_trained_parameters"] < r["lm_trained_parameters"] + r["gated_trained_parameters"]
    ours = gu.from_pretrained(out / "model")
    hf = T.IdeficsForVisionText2Text.from_pretrained(out / "model").eval()
    image = ours.config.image_token_id
    ids = torch.tensor([[5, image, 7, 9, image, 4]])
    px = torch.randn(1, 2, 3, 32, 32)
    from groundup.models.flamingo import latest_image_mask

    mask = latest_image_mask(ids, image, 2)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, px, image_attention_mask=mask),
                                   hf(input_ids=ids, pixel_values=px, image_attention_mask=mask).logits,
                                   atol=1e-4, rtol=1e-4)


def test_llava_conversations_train_on_the_answers_only():
    from groundup.tokenizer import Tokenizer
    from groundup.train.llava import SPECIALS, render_conversation

    tok = Tokenizer.train(["USER: What is it? ASSISTANT: a red circle"], 280, special_tokens=SPECIALS,
                          eos_token="</s>", pad_token="<pad>")
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a red circle"},
             {"from": "human", "value": "And now?"}, {"from": "gpt", "value": "red"}]
    ids, answer = render_conversation(tok, turns)
    assert tok.decode(ids) == "USER: <image>\nWhat is it? ASSISTANT: a red circle</s>USER: And now? ASSISTANT: red</s>"
    assert tok.decode([i for i, m in zip(ids, answer, strict=True) if m]) == " a red circle</s> red</s>"
    assert tok.token_to_id("<image>") in ids
    text_only, _ = render_conversation(tok, turns, image=False)
    assert tok.token_to_id("<image>") not in text_only
    with pytest.raises(ValueError, match="no gpt turn"):
        render_conversation(tok, turns[:1])


def test_the_synthetic_set_writes_a_folder_the_caption_loader_reads(tmp_path):
    synthetic.write_folder(tmp_path, train=4, test=2, size=32)
    records = read_captions(tmp_path / "train.jsonl")
    assert len(records) == 4 and records[0].caption == synthetic.scene(0, "train", size=32).caption
    row = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[1])
    assert row["conversations"][0]["value"].startswith("<image>\n") and row["image"] == "test/00001.png"


def test_in_memory_data_visits_every_row_once_an_epoch_and_resumes_exactly():
    from groundup.vision.data import VisionTextData

    examples = [([i, i + 1, i + 2], [0, 0, 1]) for i in range(10)]
    data = VisionTextData(None, examples, None, examples[:4], pad_id=0, seed=3)
    first = [data.next_batch(5).input_ids[:, 0].tolist() for _ in range(2)]
    assert sorted(first[0] + first[1]) == list(range(10))  # one epoch: every row once
    state = data.state_dict()
    want = data.next_batch(4).input_ids.tolist()
    again = VisionTextData(None, examples, None, examples[:4], pad_id=0, seed=3)
    again.load_state_dict(state)
    assert again.next_batch(4).input_ids.tolist() == want
    assert [b.input_ids.shape[0] for b in data.val_batches(2, 5)] == [2, 2]

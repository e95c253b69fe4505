"""fill-mask, embed and generate on tiny models with a real tokenizer.json, checked against transformers."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_

import groundup as gu
from groundup.cli import main

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song", "my cat likes the sun"] * 5
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _wordpiece() -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=80, special_tokens=SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    import transformers as T

    tok = _wordpiece()
    cfg = T.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(0)
    ref = randomize_(T.BertForPreTraining(cfg), seed=4).eval()
    path = tmp_path_factory.mktemp("bert-cli")
    ref.save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    return path, ref, tok


def test_fill_mask_matches_hf_probabilities(bert_folder, capsys):
    path, ref, tok = bert_folder
    model = gu.from_pretrained(path)
    enc = tok.encode("the [MASK] sat on the [MASK]")
    ids, types = torch.tensor([enc.ids]), torch.tensor([enc.type_ids])
    mask_id = tok.token_to_id("[MASK]")
    (preds,) = model.fill_mask(ids, mask_token_id=mask_id, top_k=3, token_type_ids=types)
    with torch.no_grad():
        probs = ref(input_ids=ids, token_type_ids=types).prediction_logits.softmax(-1)
    assert [pos for pos, _ in preds] == (ids[0] == mask_id).nonzero().flatten().tolist()
    for pos, cands in preds:
        want_p, want_ids = probs[0, pos].topk(3)
        assert [i for i, _ in cands] == want_ids.tolist()
        torch.testing.assert_close(torch.tensor([p for _, p in cands]), want_p, atol=1e-5, rtol=0)
    assert main(["fill-mask", str(path), "the [MASK] sat on the [MASK]", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("[MASK] at token") == 2 and tok.id_to_token(preds[0][1][0][0]) in out


def test_fill_mask_without_mask_is_an_error(bert_folder, capsys):
    path, _, _ = bert_folder
    assert main(["fill-mask", str(path), "no mask here"]) == 2
    assert "no mask token" in capsys.readouterr().err


def test_embed_prints_similarities(bert_folder, capsys):
    path, ref, tok = bert_folder
    assert main(["embed", str(path), "the cat sat", "a dog ran in the park", "the cat sat"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    sims = torch.tensor([[float(v) for v in r[:3]] for r in rows])
    assert torch.allclose(sims.diagonal(), torch.ones(3), atol=1e-3) and abs(sims[0, 2] - 1) < 1e-3
    # mean pooling over real tokens equals transformers' hidden states averaged by hand
    enc = tok.encode("a dog ran in the park")
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        want = ref.bert(input_ids=ids).last_hidden_state.mean(dim=1)
        got = gu.from_pretrained(path).features(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_generate_cli_matches_hf_beam_search(hf_encdec_folder, tmp_path, capsys):
    import shutil

    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    path, _ = hf_encdec_folder("t5")
    folder = tmp_path / "t5"
    shutil.copytree(path, folder)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, 97)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.save(str(folder / "tokenizer.json"))
    text = "w5 w17 w42 w8 w90"
    assert main(["generate", str(folder), text, "--num-beams", "4", "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out.strip()
    ref = T.T5ForConditionalGeneration.from_pretrained(folder).eval()
    want = ref.generate(torch.tensor([tok.encode(text).ids]), num_beams=4, max_new_tokens=6, use_cache=False)
    assert printed and printed == tok.decode(want[0, 1:].tolist(), skip_special_tokens=True)
    assert main(["generate", str(path), "w5"]) == 2  # no tokenizer.json in the original folder
    assert "tokenizer.json" in capsys.readouterr().err


def test_embed_uses_the_tokenizers_mask_with_fixed_padding(bert_folder, tmp_path, capsys):
    """A sentence-transformers style tokenizer.json pads every text to a fixed length: the mask must come
    from the tokenizer, or the padding is averaged into every vector (issue 16, defect 2)."""
    import shutil

    path, ref, tok = bert_folder
    padded = tmp_path / "padded"
    shutil.copytree(path, padded)
    fixed = type(tok).from_str(tok.to_str())
    fixed.enable_padding(length=16, pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    fixed.save(str(padded / "tokenizer.json"))
    texts = ["the cat sat", "a dog ran in the park", "my cat likes the sun"]
    assert main(["embed", str(padded), *texts]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    got = torch.tensor([[float(v) for v in r[:3]] for r in rows])
    with torch.no_grad():  # each sentence alone, no padding at all
        vecs = torch.cat([ref.bert(input_ids=torch.tensor([tok.encode(t).ids])).last_hidden_state.mean(dim=1)
                          for t in texts])
    vecs = torch.nn.functional.normalize(vecs, dim=-1)
    torch.testing.assert_close(got, vecs @ vecs.T, atol=2e-3, rtol=0)

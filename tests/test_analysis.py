"""token_cosine against hand computations on small distilled ViTs with known weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from timm_deit_distill.analysis import disagreement, disagreement_table, head_predictions, token_cosine

DIM = 8


def _small_model(seed: int = 0) -> VisionTransformerDistilled:
    torch.manual_seed(seed)
    return VisionTransformerDistilled(
        img_size=8, patch_size=4, embed_dim=DIM, depth=2, num_heads=2, num_classes=3)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    return (x - x.mean()) / np.sqrt(x.var() + eps) * weight + bias


def _set_known_tokens(model: VisionTransformerDistilled) -> tuple[np.ndarray, np.ndarray]:
    """Known class/distillation tokens and position embeddings; returns the two summed input tokens."""
    cls = np.arange(1, DIM + 1, dtype=np.float64)
    dist = np.array([1, -1, 2, 0, 3, -2, 0.5, 1], dtype=np.float64)
    pos = np.zeros((model.pos_embed.shape[1], DIM))
    pos[0] = 0.25
    pos[1] = np.linspace(-1, 1, DIM)
    with torch.no_grad():
        model.cls_token.copy_(torch.tensor(cls).view(1, 1, DIM))
        model.dist_token.copy_(torch.tensor(dist).view(1, 1, DIM))
        model.pos_embed.copy_(torch.tensor(pos).unsqueeze(0))
    return cls + pos[0], dist + pos[1]


def _silence_blocks(model: VisionTransformerDistilled) -> None:
    """Zero every residual branch's last layer so each block passes its input through unchanged."""
    with torch.no_grad():
        for block in model.blocks:
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()


def test_input_cosine_is_the_cosine_of_token_plus_position_embedding():
    model = _small_model()
    cls_in, dist_in = _set_known_tokens(model)
    images = torch.randn(5, 3, 8, 8)
    result = token_cosine(model, images)
    assert result.input == pytest.approx(_cos(cls_in, dist_in), abs=1e-6)
    assert result.num_images == 5


def test_output_cosine_matches_a_hand_computed_final_layer_norm():
    model = _small_model()
    cls_in, dist_in = _set_known_tokens(model)
    _silence_blocks(model)
    with torch.no_grad():
        model.norm.weight.copy_(torch.linspace(0.5, 2.0, DIM))
        model.norm.bias.copy_(torch.linspace(-0.3, 0.3, DIM))
    weight, bias = model.norm.weight.detach().double().numpy(), model.norm.bias.detach().double().numpy()
    expected = _cos(_layer_norm(cls_in, weight, bias, model.norm.eps),
                    _layer_norm(dist_in, weight, bias, model.norm.eps))
    result = token_cosine(model, torch.randn(4, 3, 8, 8))
    assert result.output == pytest.approx(expected, abs=1e-6)
    # Blocks that pass tokens through leave the input similarity unchanged at every layer.
    assert result.layers == pytest.approx([_cos(cls_in, dist_in)] * 2, abs=1e-6)
    assert result.output != pytest.approx(result.input, abs=1e-3)  # the norm's weights do change it


def test_output_cosine_is_the_mean_per_image_cosine_of_timm_forward_features():
    model = _small_model(seed=3)
    images = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        model.eval()
        tokens = model.forward_features(images).double().numpy()
    expected = np.mean([_cos(t[0], t[1]) for t in tokens])
    assert token_cosine(model, images).output == pytest.approx(expected, abs=1e-6)


def test_batches_are_weighted_by_image_count_and_training_mode_is_restored():
    model = _small_model(seed=1)
    images = torch.randn(7, 3, 8, 8)
    whole = token_cosine(model, images)
    model.train()
    split = token_cosine(model, [(images[:2], torch.zeros(2)), (images[2:], torch.zeros(5))])
    assert model.training
    assert split.output == pytest.approx(whole.output, abs=1e-9)
    assert split.num_images == 7


def test_rejects_a_model_without_a_distillation_token():
    vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=DIM, depth=1, num_heads=2, num_classes=3)
    with pytest.raises(ValueError, match="distilled vision transformer"):
        token_cosine(vit, torch.randn(1, 3, 8, 8))


def test_rejects_no_images():
    with pytest.raises(ValueError, match="no images"):
        token_cosine(_small_model(), [])


def test_head_predictions_read_timms_class_head_distillation_head_and_fused_output():
    model = _small_model(3)
    with torch.no_grad():  # heads that disagree, so each read-out is told apart
        model.head_dist.weight.mul_(-1)
    batches = [(torch.randn(5, 3, 8, 8), torch.zeros(5)), (torch.randn(3, 3, 8, 8), torch.zeros(3))]
    preds = head_predictions(model, batches)
    model.eval()
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        fused = model(x)  # timm's inference output: (x + x_dist) / 2
        model.set_distilled_training(True)
        model.train()  # timm returns the two heads apart in distilled training (no dropout in this model)
        cls, dist = model.forward_head(model.forward_features(x))
        model.eval()
        model.set_distilled_training(False)
    assert preds["fused"] == fused.argmax(1).tolist()
    assert preds["cls"] == cls.argmax(1).tolist() and preds["dist"] == dist.argmax(1).tolist()
    assert preds["cls"] != preds["dist"]
    torch.manual_seed(0)
    plain = VisionTransformer(img_size=8, patch_size=4, embed_dim=DIM, depth=1, num_heads=2, num_classes=3).eval()
    with torch.no_grad():
        assert head_predictions(plain, [x]) == {"fused": plain(x).argmax(1).tolist()}


def test_disagreement_is_the_fraction_of_images_whose_predictions_differ():
    assert disagreement([0, 1, 2, 3], [0, 1, 2, 3]) == 0.0
    assert disagreement([0, 1, 2, 3], [0, 2, 2, 1]) == 0.5
    assert disagreement([1, 1, 1, 1, 1], [1, 0, 1, 1, 1]) == 0.2
    with pytest.raises(ValueError):
        disagreement([0, 1], [0])


def test_disagreement_table_pairs_models_within_each_run_then_averages():
    runs = [  # two seeds; "c" only in the first
        {"t": [0, 1, 2, 3], "a": [0, 1, 2, 0], "c": [1, 1, 1, 1]},
        {"t": [0, 1, 2, 3], "a": [3, 2, 2, 3]},
    ]
    table = disagreement_table(runs)
    assert table["t"]["a"]["per_run"] == [0.25, 0.5] and table["t"]["a"]["mean"] == 0.375
    assert table["t"]["a"]["std"] == pytest.approx(np.std([0.25, 0.5], ddof=1))
    assert table["a"]["t"] == table["t"]["a"] and table["t"]["t"]["mean"] == 0.0
    assert table["a"]["c"] == {"mean": 0.75, "std": None, "per_run": [0.75]}  # paired: only the run with both

"""The distilled DeiT family in timm's registry, checked against timm's own classes and builders."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import resolve_data_config
from timm.layers import resample_abs_pos_embed
from timm.models import get_pretrained_cfg, model_entrypoint
from timm.models.deit import VisionTransformerDistilled

import timm_deit_distill
from timm_deit_distill.models import CANONICAL_VARIANTS, PLUGIN_VARIANTS, VARIANT_ARGS, timm_equivalent


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_every_variant_is_registered_and_builds_timms_class():
    registered = set(timm.list_models("deit*distilled*"))
    assert set(timm_deit_distill.DISTILLED_VARIANTS) <= registered
    for name in timm_deit_distill.DISTILLED_VARIANTS:
        with torch.device("meta"):
            model = timm.create_model(name)
        assert type(model) is VisionTransformerDistilled


def test_import_keeps_timms_names_tags_and_hub_ids_and_warns_nothing():
    # A fresh process with warnings as errors: an "Overwriting ... in registry" warning fails it.
    result = _run("""
        import timm
        from timm.models import get_pretrained_cfg
        before = {n: get_pretrained_cfg(n + '.fb_in1k').hf_hub_id for n in timm.list_models('deit*distilled*')}
        import timm_deit_distill
        from timm.models import model_entrypoint
        for name, hub_id in before.items():
            assert get_pretrained_cfg(name + '.fb_in1k').hf_hub_id == hub_id == f'timm/{name}.fb_in1k', name
            assert model_entrypoint(name).__module__ == 'timm.models.deit', name
            assert name + '.fb_in1k' in timm.list_pretrained(name + '*')
        print(len(before))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(CANONICAL_VARIANTS))


def test_import_does_no_file_or_network_io_beyond_loading_code():
    result = _run("""
        import sys, timm
        events = []
        def hook(event, args):
            if event == 'open' and args and isinstance(args[0], str):
                path = args[0]
                if not path.endswith(('.py', '.pyc', '.so')) and '__pycache__' not in path:
                    events.append(path)
            elif event.startswith('socket.'):
                events.append(event)
        sys.addaudithook(hook)
        import timm_deit_distill
        print(events)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_canonical_name_is_registered_when_timm_lacks_it():
    result = _run("""
        import timm
        from timm.models import _registry
        _registry._clear_model_entries('deit_small_distilled_patch16_224')
        del _registry._model_entrypoints['deit_small_distilled_patch16_224']
        assert not timm.is_model('deit_small_distilled_patch16_224')
        import timm_deit_distill
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg('deit_small_distilled_patch16_224.fb_in1k')
        assert cfg.hf_hub_id == 'timm/deit_small_distilled_patch16_224.fb_in1k', cfg.hf_hub_id
        assert _registry.model_entrypoint('deit_small_distilled_patch16_224').__module__ == 'timm_deit_distill.models.deit'
        m = timm.create_model('deit_small_distilled_patch16_224')
        assert m.embed_dim == 384 and m.pretrained_cfg['tag'] == 'fb_in1k'
        print('ok')
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("name", PLUGIN_VARIANTS)
def test_plugin_cfg_tells_the_truth(name):
    cfg = get_pretrained_cfg(name)
    model = timm.create_model(name)
    size = VARIANT_ARGS[name]["img_size"]
    assert cfg.input_size == (3, size, size)
    assert model.patch_embed.img_size == (size, size)
    assert cfg.fixed_input_size and cfg.crop_pct == 1.0
    assert cfg.num_classes == model.num_classes == VARIANT_ARGS[name].get("num_classes", 1000)
    data_cfg = resolve_data_config(model=model)
    assert data_cfg["input_size"] == (3, size, size)
    assert data_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    assert data_cfg["crop_pct"] == 1.0


def test_finetune_variants_point_at_the_224_weights():
    for name in ("deit_tiny_distilled_patch16_384", "deit_small_distilled_patch16_384"):
        cfg = get_pretrained_cfg(name)
        assert cfg.hf_hub_id == f"timm/{name.replace('384', '224')}.fb_in1k"
        assert cfg.tag == "fb_in1k_224"
    assert not get_pretrained_cfg("deit_tiny_distilled_patch4_32").has_weights


def _timm_reference_32(**kwargs):
    return timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=4, num_classes=10, **kwargs)


@pytest.mark.parametrize("distilled_training", [False, True])
def test_32px_variant_matches_timms_own_build(distilled_training):
    torch.manual_seed(0)
    ours = timm.create_model("deit_tiny_distilled_patch4_32")
    ref = _timm_reference_32()
    ref_sd = ref.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref_sd.items()}
    ours.load_state_dict(ref_sd)
    x = torch.randn(4, 3, 32, 32)
    for m in (ours, ref):
        m.set_distilled_training(distilled_training)
        m.train(distilled_training)
    out, expected = ours(x), ref(x)
    if distilled_training:
        assert isinstance(out, tuple) and len(out) == 2
        for a, b in zip(out, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert out.shape == (4, 10)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_timm_equivalent_rebuilds_every_plugin_variant():
    for name in PLUGIN_VARIANTS:
        arch, model_args = timm_equivalent(name)
        assert model_entrypoint(arch).__module__ == "timm.models.deit"
        with torch.device("meta"):
            ours, ref = timm.create_model(name), timm.create_model(arch, **model_args)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_timm_model_api_behaves_as_for_builtins():
    model = timm.create_model("deit_tiny_distilled_patch4_32", num_classes=7, drop_path_rate=0.1).eval()
    ref = _timm_reference_32(drop_path_rate=0.1)
    assert model.num_classes == 7 and model.head.out_features == model.head_dist.out_features == 7
    assert [type(b.drop_path1).__name__ for b in model.blocks] == [type(b.drop_path1).__name__ for b in ref.blocks]
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 2 + 64, 192)  # class + distillation tokens + 8x8 patches
    pre = model.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(pre, (feats[:, 0] + feats[:, 1]) / 2)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.train()
    model.set_distilled_training(True)
    cls, dist = model(x)
    assert cls.shape == dist.shape == (2, 3)


def test_features_only():
    model = timm.create_model("deit_tiny_distilled_patch4_32", features_only=True, out_indices=(5, 11))
    feats = model(torch.randn(1, 3, 32, 32))
    assert [f.shape for f in feats] == [torch.Size([1, 192, 8, 8])] * 2


def test_224_checkpoint_loads_into_384_and_32px_variants(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("deit_tiny_distilled_patch16_224")
    path = tmp_path / "deit_tiny_224.safetensors"
    save_file(src.state_dict(), str(path))
    sd = src.state_dict()

    m384 = timm.create_model("deit_tiny_distilled_patch16_384", pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(path)))
    expected_pos = resample_abs_pos_embed(sd["pos_embed"], new_size=(24, 24), num_prefix_tokens=2)
    torch.testing.assert_close(m384.pos_embed.data, expected_pos)
    torch.testing.assert_close(m384.blocks[3].attn.qkv.weight.data, sd["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(m384.head.weight.data, sd["head.weight"])
    assert m384(torch.randn(1, 3, 384, 384)).shape == (1, 1000)

    # 32px: the head is re-initialised for 10 classes (the overlay says the file has 1000), patch
    # embedding and position embedding are resampled by timm's filter.
    m32 = timm.create_model("deit_tiny_distilled_patch4_32", pretrained=True, num_classes=10,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=1000))
    assert m32.patch_embed.proj.weight.shape == (192, 3, 4, 4)
    assert m32.pos_embed.shape == (1, 66, 192)
    torch.testing.assert_close(m32.blocks[0].mlp.fc1.weight.data, sd["blocks.0.mlp.fc1.weight"])
    assert m32(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_plugin_import_by_module_name_then_create_via_timm():
    """What timm's train.py does with `--device-modules timm_deit_distill`."""
    result = _run("""
        import importlib, timm
        from timm.data import resolve_data_config
        assert not timm.is_model('deit_tiny_distilled_patch4_32')
        importlib.import_module('timm_deit_distill')
        m = timm.create_model('deit_tiny_distilled_patch4_32', pretrained=False, num_classes=None)
        print(m.num_classes, resolve_data_config(model=m)['input_size'])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "10 (3, 32, 32)"


def test_the_plugin_variants_sit_under_timms_deit_module_key():
    """timm keys a model by the last part of its entrypoint's module: the plugin's is 'deit', as timm's DeiT
    models are, so module-filtered listings (and timm's module-filtered tests) select them."""
    assert set(PLUGIN_VARIANTS) <= set(timm.list_models(module="deit"))
    assert set(CANONICAL_VARIANTS) <= set(timm.list_models(module="deit"))
    assert "models" not in timm.list_modules()
    for name in PLUGIN_VARIANTS:
        fn = model_entrypoint(name, module_filter="deit")
        assert fn.__name__ == name and fn.__module__ == "timm_deit_distill.models.deit"

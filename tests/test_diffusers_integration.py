"""sparseattn.apply on tiny, randomly initialised diffusers video models (Wan 2.1, HunyuanVideo) and the
``generate`` / ``capture`` commands. No downloads: pipelines get precomputed prompt embeddings, no text encoder."""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import (  # noqa: E402
    AutoencoderKLHunyuanVideo,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from safetensors.torch import save_file  # noqa: E402

import sparseattn  # noqa: E402
from sparseattn.cli import main  # noqa: E402
from sparseattn.context import StateCache  # noqa: E402
from sparseattn.integrations import diffusers as integration  # noqa: E402
from sparseattn.workloads import load_capture  # noqa: E402

SMALL_KMEANS = {"name": "kmeans", "q_clusters": 6, "k_clusters": 10, "iters_first": 10, "iters_warm": 2}
TEXT_DIM, WAN_TEXT_TOKENS = 32, 8


def every_block_strategy():
    """SVG2 whose budget keeps every block (top-p 1.0) and with no dense warm-up: the sparse path runs, exactly."""
    return sparseattn.load_strategy("svg2", permuter=SMALL_KMEANS, budget={"name": "top_p", "p": 1.0},
                                    schedule={"dense_steps": 0.0, "dense_layers": 0.0})


def tiny_svg2():
    """SVG2 with cluster counts for ~32 tokens; step 0 of 3 and layer 0 of 3 stay dense."""
    return sparseattn.load_strategy("svg2", permuter=SMALL_KMEANS, schedule={"dense_steps": 0.34, "dense_layers": 0.34})


def tiny_wan_transformer(layers: int = 3, image_to_video: bool = False) -> WanTransformer3DModel:
    torch.manual_seed(0)
    image = {"image_dim": 8, "added_kv_proj_dim": 24} if image_to_video else {}  # I2V: an image branch in attn2
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, **image,
    ).eval()


def tiny_hunyuan_transformer() -> HunyuanVideoTransformer3DModel:
    torch.manual_seed(0)
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()


def tiny_wan_pipeline() -> WanPipeline:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
                       transformer=tiny_wan_transformer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_hunyuan_pipeline() -> HunyuanVideoPipeline:
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True,
    )
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=tiny_hunyuan_transformer(), vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_embeddings(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(1, WAN_TEXT_TOKENS, TEXT_DIM, generator=gen)
            for name in ("prompt_embeds", "negative_prompt_embeds")}


def hunyuan_embeddings(valid_text: int = 4, text: int = 6) -> dict:
    gen = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, text)
    mask[:, :valid_text] = 1
    return {"prompt_embeds": torch.randn(1, text, 16, generator=gen),
            "pooled_prompt_embeds": torch.randn(1, 8, generator=gen), "prompt_attention_mask": mask}


def run_wan(pipe, seed: int, steps: int = 3) -> torch.Tensor:
    """Latents of a 5-frame 64×64 video: a 2×4×4 token grid."""
    return pipe(**wan_embeddings(), num_inference_steps=steps, height=64, width=64, num_frames=5,
                output_type="latent", generator=torch.Generator().manual_seed(seed)).frames


def processors(model) -> dict:
    return dict(model.attn_processors)


def assert_restored(model, before: dict) -> None:
    after = processors(model)
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before), "a processor was not restored"
    assert not model._forward_pre_hooks, "the forward pre-hook was not removed"
    assert not hasattr(model, "_sparseattn_patch")


@pytest.fixture(scope="module")
def wan_pipe():
    return tiny_wan_pipeline()


# ------------------------------------------------------------------------------------------------------------------
# The patched transformer computes the same function as the original when every block is kept
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_wan_with_every_block_kept_matches_the_original(batch):
    model = tiny_wan_transformer()
    gen = torch.Generator().manual_seed(batch)
    latents = torch.randn(batch, 16, 2, 8, 8, generator=gen)  # CFG-style batch of 2 when batch == 2
    text = torch.randn(batch, WAN_TEXT_TOKENS, TEXT_DIM, generator=gen)
    timestep = torch.full((batch,), 700.0)
    before = processors(model)
    with torch.no_grad():
        reference = model(latents, timestep, text).sample
        with sparseattn.apply(model, every_block_strategy()) as patch:
            out = model(latents, timestep, text).sample
            assert patch.grid == (2, 4, 4)
            assert type(model.blocks[1].attn1.processor) is integration.SparseWanAttnProcessor
            assert model.blocks[1].attn2.processor is before["blocks.1.attn2.processor"]  # cross-attention untouched
    assert len(patch.cache) == 3, "every layer must have clustered (the sparse path ran)"
    assert set(patch.density_table().values()) == {1.0}
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert_restored(model, before)


def test_wan_image_to_video_keeps_the_image_branch_dense():
    model = tiny_wan_transformer(layers=2, image_to_video=True)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 2, 8, 8, generator=gen)
    text = torch.randn(1, 512, TEXT_DIM, generator=gen)  # Wan's I2V attention expects 512 text tokens
    image = torch.randn(1, 5, 8, generator=gen)
    before = processors(model)
    with torch.no_grad():
        reference = model(latents, torch.tensor([700.0]), text, image).sample
        with sparseattn.apply(model, every_block_strategy()):
            out = model(latents, torch.tensor([700.0]), text, image).sample
            assert model.blocks[0].attn2.processor is before["blocks.0.attn2.processor"]
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert_restored(model, before)


@pytest.mark.parametrize("batch", [1, 2])
def test_hunyuan_with_every_block_kept_matches_the_original_with_padded_text(batch):
    model = tiny_hunyuan_transformer()
    gen = torch.Generator().manual_seed(batch)
    latents = torch.randn(batch, 4, 3, 4, 4, generator=gen)
    text = torch.randn(batch, 6, 16, generator=gen)
    text_mask = torch.ones(batch, 6)
    text_mask[0, 4:] = 0  # entry 0 has 2 padded text tokens; with batch 2, entry 1 has none
    pooled, guidance = torch.randn(batch, 8, generator=gen), torch.full((batch,), 6000.0)
    before = processors(model)
    observed = []
    with torch.no_grad():
        reference = model(latents, torch.full((batch,), 700.0), text, text_mask, pooled, guidance).sample
        with sparseattn.apply(model, every_block_strategy(),
                              observer=lambda q, k, v, ctx: observed.append((q.shape, ctx.text_tokens))) as patch:
            out = model(latents, torch.full((batch,), 700.0), text, text_mask, pooled, guidance).sample
    assert patch.num_layers == 3 and len(patch.cache) == 3
    # Padded text is dropped from what the strategy sees: 48 video tokens + the valid text tokens.
    expected = [((1, 2, 52, 10), 4)] if batch == 1 else [((1, 2, 52, 10), 4), ((1, 2, 54, 10), 6)]
    assert observed[: len(expected)] == expected
    assert processors(model)["context_embedder.token_refiner.refiner_blocks.0.attn.processor"] is before[
        "context_embedder.token_refiner.refiner_blocks.0.attn.processor"]
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert_restored(model, before)


# ------------------------------------------------------------------------------------------------------------------
# Pipelines: steps, density, the dense warm-up, state reset
# ------------------------------------------------------------------------------------------------------------------
def test_wan_pipeline_svg2_runs_sparse_after_warmup_and_resets_centroids(wan_pipe, monkeypatch):
    model = wan_pipe.transformer
    before = processors(model)
    with sparseattn.apply(wan_pipe, tiny_svg2()) as patch:
        first = run_wan(wan_pipe, seed=1)
        assert model.blocks[0].attn1.processor is before["blocks.0.attn1.processor"]  # dense layer: original
        table = patch.density_table()
    assert patch.sparse_layers == [1, 2] and patch.num_steps == 3
    assert sorted(table) == [(layer, step) for layer in (1, 2) for step in range(3)]
    assert all(table[(layer, 0)] == 1.0 for layer in (1, 2)), "step 0 is a dense warm-up step"
    assert all(table[(layer, step)] < 1.0 for layer in (1, 2) for step in (1, 2))
    assert_restored(model, before)
    assert "set_timesteps" not in wan_pipe.scheduler.__dict__ and "step" not in wan_pipe.scheduler.__dict__

    with sparseattn.apply(wan_pipe, tiny_svg2()):
        run_wan(wan_pipe, seed=0)
        again = run_wan(wan_pipe, seed=1)
    assert torch.equal(again, first), "the second generation depended on the first one's centroids"

    # The check above can fail: without the reset, the first generation's centroids change the second one.
    monkeypatch.setattr(StateCache, "reset", lambda self: None)
    with sparseattn.apply(wan_pipe, tiny_svg2()):
        run_wan(wan_pipe, seed=0)
        stale = run_wan(wan_pipe, seed=1)
    assert not torch.equal(stale, first)


def test_hunyuan_pipeline_svg2_end_to_end():
    pipe = tiny_hunyuan_pipeline()
    before = processors(pipe.transformer)
    with sparseattn.apply(pipe, tiny_svg2()) as patch:
        video = pipe(**hunyuan_embeddings(), num_inference_steps=3, height=32, width=32, num_frames=5,
                     output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    table = patch.density_table()
    assert patch.sparse_layers == [1, 2] and patch.grid == (2, 4, 4)
    assert all(table[(layer, step)] < 1.0 for layer in (1, 2) for step in (1, 2))
    assert bool(torch.isfinite(video).all())
    assert_restored(pipe.transformer, before)


def test_bare_transformer_counts_steps_from_timesteps():
    model = tiny_wan_transformer(layers=2)
    strategy = sparseattn.load_strategy("svg2", permuter=SMALL_KMEANS, schedule={"dense_steps": 0.5})
    latents, text = torch.randn(1, 16, 2, 8, 8), torch.randn(1, WAN_TEXT_TOKENS, TEXT_DIM)
    with torch.no_grad(), sparseattn.apply(model, strategy, num_steps=2) as patch:
        for timestep in (900.0, 900.0, 500.0):  # step 0 twice (conditional, unconditional), then step 1
            model(latents, torch.tensor([timestep]), text)
        assert sorted(patch.density_table()) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert patch.density_table()[(0, 0)] == 1.0 and patch.density_table()[(0, 1)] < 1.0
        model(latents, torch.tensor([900.0]), text)  # a larger timestep: a new generation
        assert patch.step == 0 and sorted(patch.density_table()) == [(0, 0), (1, 0)]
        with pytest.raises(ValueError, match="denoising step 2"):
            for timestep in (500.0, 100.0):  # a third step, but num_steps is 2
                model(latents, torch.tensor([timestep]), text)


# ------------------------------------------------------------------------------------------------------------------
# Installing and restoring
# ------------------------------------------------------------------------------------------------------------------
def test_processors_are_restored_after_an_exception(wan_pipe):
    model = wan_pipe.transformer
    before = processors(model)
    with pytest.raises(RuntimeError, match="boom"):
        with sparseattn.apply(wan_pipe, tiny_svg2()):
            raise RuntimeError("boom")
    assert_restored(model, before)
    with pytest.raises(ValueError, match="NaN"):  # an error raised inside the patched forward
        with sparseattn.apply(model, every_block_strategy()), torch.no_grad():
            model(torch.full((1, 16, 2, 8, 8), float("nan")), torch.tensor([500.0]),
                  torch.randn(1, WAN_TEXT_TOKENS, TEXT_DIM))
    assert_restored(model, before)
    assert "step" not in wan_pipe.scheduler.__dict__


def test_plain_apply_and_remove(wan_pipe):
    model = wan_pipe.transformer
    before = processors(model)
    patch = sparseattn.apply(wan_pipe, tiny_svg2())
    assert patch.active and type(model.blocks[2].attn1.processor) is integration.SparseWanAttnProcessor
    with pytest.raises(ValueError, match="already applied"):
        sparseattn.apply(model, "svg2", num_steps=4)
    sparseattn.remove(wan_pipe)
    assert_restored(model, before)
    with pytest.raises(ValueError, match="no sparseattn strategy is applied"):
        sparseattn.remove(model)
    patch.remove()  # removing an already removed patch is a no-op
    assert_restored(model, before)


def test_clear_errors_for_unsupported_models_and_missing_step_counts():
    with pytest.raises(ValueError, match="WanTransformer3DModel, HunyuanVideoTransformer3DModel"):
        sparseattn.apply(torch.nn.Linear(4, 4), "svg2")
    model = tiny_wan_transformer(layers=2)
    with pytest.raises(ValueError, match="num_steps=N"):
        sparseattn.apply(model, "svg2")  # svg2 keeps 20% of the steps dense: it needs the step count

    class CustomProcessor:
        pass

    model.blocks[1].attn1.set_processor(CustomProcessor())
    with pytest.raises(ValueError, match="uses CustomProcessor"):
        sparseattn.apply(model, "svg2", num_steps=10)
    assert not model._forward_pre_hooks


def test_import_sparseattn_does_not_import_diffusers():
    code = ("import sys, sparseattn, sparseattn.cli; sparseattn.cli.build_parser(); "
            "assert 'diffusers' not in sys.modules, 'diffusers was imported'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


# ------------------------------------------------------------------------------------------------------------------
# torch.compile and diffusers' attention backends
# ------------------------------------------------------------------------------------------------------------------
def test_torch_compile_and_attention_backend_for_dense_attention(monkeypatch):
    import torch._dynamo

    model = tiny_wan_transformer()
    model.set_attention_backend("_native_math")
    latents, text = torch.randn(1, 16, 2, 8, 8), torch.randn(1, WAN_TEXT_TOKENS, TEXT_DIM)
    dense_backends = []
    real_dispatch = integration.dispatch_attention_fn

    def spy(*args, **kwargs):
        dense_backends.append(kwargs["backend"])
        return real_dispatch(*args, **kwargs)

    monkeypatch.setattr(integration, "dispatch_attention_fn", spy)

    graphs = []  # graphs compiled so far, after each forward call

    def generation(target):
        outputs = []
        with torch.no_grad(), sparseattn.apply(target, tiny_svg2(), num_steps=3) as patch:
            for t in (900.0, 600.0, 300.0):
                outputs.append(target(latents, torch.tensor([t]), text).sample)
                graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        return outputs, patch.density_table()

    eager, eager_density = generation(model)
    # Layer 0 keeps its original processor; the sparse layers 1 and 2 run the model's backend at the dense step 0.
    assert [str(getattr(b, "value", b)) for b in dense_backends] == ["_native_math"] * 2
    torch._dynamo.reset()
    graphs.clear()
    compiled, compiled_density = generation(torch.compile(model, backend="eager"))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert compiled_density == eager_density and min(eager_density.values()) < 1.0
    # The first sparse step may compile the frames that run after the (dense until then) attention call; later steps
    # compile nothing.
    assert graphs[1] == graphs[2], "a later denoising step recompiled the transformer"
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------------------------
# The command line, on pipelines saved with save_pretrained
# ------------------------------------------------------------------------------------------------------------------
def test_generate_cli_with_compare_dense(tmp_path, wan_pipe, capsys):
    import imageio.v3 as iio

    wan_pipe.save_pretrained(tmp_path / "wan")
    save_file(wan_embeddings(), tmp_path / "prompt.safetensors")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: svg2-tiny\nbase: svg2\npermuter: {name: kmeans, q_clusters: 6, k_clusters: 10}\n"
                      "schedule: {dense_steps: 0.34, dense_layers: 0.34}\n")
    out = tmp_path / "videos" / "svg2.mp4"
    code = main(["generate", "--model", str(tmp_path / "wan"), "--prompt-embeds", str(tmp_path / "prompt.safetensors"),
                 "--strategy", str(recipe), "--steps", "3", "--frames", "5", "--height", "64", "--width", "64",
                 "--seed", "3", "--out", str(out), "--compare-dense", "--no-progress", "--logdir",
                 str(tmp_path / "logs"), "--log-select", "layers=1;steps=2;heads=0"])
    assert code == 0
    printed = capsys.readouterr().out
    for expected in ("PSNR", "SSIM", "LPIPS", "wall time: svg2-tiny", "dense", "density per layer"):
        assert expected in printed
    table = printed[printed.index("layer     0"):].splitlines()
    assert table[1].split()[0] == "0" and table[2].split()[:2] == ["1", "100"]  # layer 1: dense warm-up step 0
    assert all(0 < int(cell) < 100 for cell in table[2].split()[2:])
    for path in (out, out.with_suffix(".dense.mp4")):
        assert iio.imread(path).shape == (5, 64, 64, 3)
    assert os.listdir(tmp_path / "logs" / "sparse") and os.listdir(tmp_path / "logs" / "comparison")


def test_generate_cli_errors(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "a cat", "--strategy", "svg2",
                 "--out", str(tmp_path / "v.mp4")]) == 2
    assert "cannot load a diffusers pipeline" in capsys.readouterr().err


def test_capture_cli_writes_loadable_workloads(tmp_path, capsys):
    pipe = tiny_hunyuan_pipeline()
    pipe.save_pretrained(tmp_path / "hunyuan")
    save_file(hunyuan_embeddings(valid_text=4), tmp_path / "prompt.safetensors")
    code = main(["capture", "--model", str(tmp_path / "hunyuan"), "--prompt-embeds",
                 str(tmp_path / "prompt.safetensors"), "--layers", "0,2", "--steps", "1", "--num-steps", "3",
                 "--frames", "5", "--height", "32", "--width", "32", "--out", str(tmp_path / "captures"),
                 "--no-progress"])
    assert code == 0
    files = sorted(os.listdir(tmp_path / "captures"))
    assert files == ["layer00_step001_call0.safetensors", "layer02_step001_call0.safetensors"]
    for name, layer in zip(files, ("0", "2")):
        workload = load_capture(tmp_path / "captures" / name)
        assert workload.grid == (2, 4, 4) and workload.text_tokens == 4  # padded text is not captured
        assert workload.q.shape == (1, 2, 36, 10) and workload.metadata["layer"] == layer
    assert main(["capture", "--model", str(tmp_path / "hunyuan"), "--prompt-embeds",
                 str(tmp_path / "prompt.safetensors"), "--layers", "7", "--steps", "0", "--num-steps", "2",
                 "--out", str(tmp_path / "more"), "--no-progress"]) == 2
    assert "3 self-attention layers" in capsys.readouterr().err

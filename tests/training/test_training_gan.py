"""Training of the chapter-4 GAN (thesis §4) on the CPU with the tiny networks and tagged synthetic shapes (their
tags name their colours: ``red_shape``, ``blue_background``, ...): each stage learns, stage 1 beats copying the
reference, stage 2 edits colours through tags, the trainable sets, kill -9 and resume bit for bit, torchrun with
two processes, the exports through the library's loader and colorizer, and the tagger's data error."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _helpers import cpu_run_config, torchrun_training, train_until_killed
from PIL import Image
from safetensors.torch import load_file

from colorize.checkpoint import read_metadata
from colorize.checkpoint.infer import TRAINING_METADATA_KEY
from colorize.families.gan.checkpoint import load_gan_checkpoint
from colorize.families.gan.colorizer import GANColorizer
from colorize.families.gan.losses import focal_alpha_from_counts, tag_classification_loss
from colorize.preprocess import pil_to_tensor
from training.config import config_from_dict
from training.errors import TrainingCheckpointError, TrainingConfigError, TrainingDataError
from training.export import export_training_state
from training.gan.trainer import GANTrainer
from training.logs import read_log, step_lines
from training.synthetic import make_synthetic_dataset
from training.tags import load_vocabulary

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("single_thread")

#: The learning runs (64 images of 64², batch 8 / 4 / 4, fp32, one thread): long enough for the tagger to tell
#: the colours apart, for stage 1 to colour from φ(r) and for stage 2 to map the tags into φ(r)'s space.
STEPS = {"gan_tagger": 600, "gan_stage1": 1000, "gan_stage2": 400}
BATCH = {"gan_tagger": 8, "gan_stage1": 4, "gan_stage2": 4}
LR = {"gan_tagger": 3e-3, "gan_stage1": 2e-3, "gan_stage2": 1e-3}


def gan_config(stage: str, data: Path, out: Path, init: Path | None = None, steps: int = 2, batch: int = 4,
               **sections: dict[str, Any]) -> dict[str, Any]:
    """A tiny-network CPU run of ``stage`` (64², fp32, nothing saved or exported unless asked)."""
    return cpu_run_config(stage, out, {"preset": "tiny", "init": str(init) if init else None}, data, steps, batch,
                          **sections)


def trainer(cfg: dict[str, Any]) -> GANTrainer:
    return GANTrainer(config_from_dict(cfg))


def means(values: list[float]) -> tuple[float, float]:
    """First-50-step and last-50-step means."""
    return sum(values[:50]) / 50, sum(values[-50:]) / 50


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 tagged synthetic images of 64² (tags.json and vocabulary.json)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("gan-data"), 64, (64, 64), tags=True)


@pytest.fixture(scope="module")
def chain(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three stages trained one after the other, each from the previous one's export."""
    base = tmp_path_factory.mktemp("gan-training")
    out: dict[str, Any] = {"data": data, "base": base}
    init = None
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for stage, steps in STEPS.items():
            cfg = gan_config(stage, data, base / stage, init, steps, BATCH[stage], optim={"lr": LR[stage]})
            cfg["run"].update(log_every=50, export=True, sample_every=steps)
            tr = trainer(cfg)
            result = tr.train()
            out[stage] = {"trainer": tr, "result": result, "export": result.export}
            init = result.export
    finally:
        torch.set_num_threads(n)
    return out


# ------------------------------------------------------------------------------------------ learning
@pytest.mark.parametrize("stage,part,margin", [("gan_tagger", "loss", 0.3), ("gan_stage1", "l1", 0.5),
                                               ("gan_stage2", "loss", 0.75)])
def test_loss_falls(chain: dict[str, Any], stage: str, part: str, margin: float) -> None:
    """First vs last 50-step mean: the tagger's BCE + focal, stage 1's L1 term, stage 2's L_hybrid + L_inv.
    Measured on the development machine (2 CPU cores, torch 2.14): tagger 7.559 → 1.163, stage 1 L1 0.585 →
    0.181, stage 2 3.736 → 2.238 (ratios 0.15 / 0.31 / 0.60; with data and run seeds 1 and 2: 0.18 / 0.33 / 0.60
    and 0.15 / 0.29 / 0.59)."""
    values = [m[part] for m in chain[stage]["result"].metrics]
    first, last = means(values)
    print(f"{stage} {part}: first 50 steps {first:.4f}, last 50 steps {last:.4f}")
    assert len(values) == STEPS[stage] and all(math.isfinite(v) for v in values)
    assert last < margin * first


def test_stage1_beats_copying_the_reference(chain: dict[str, Any]) -> None:
    """After stage 1, mean |G(x, φ(r)) − y| over a fixed batch is below mean |resize(r) − y| (r = H(y), the
    flipped and TPS-warped ground truth), with the exported networks in eval mode."""
    tr = chain["gan_stage1"]["trainer"]
    batch = tr.fixed_batch(16)
    model = load_gan_checkpoint(chain["gan_stage1"]["export"])
    with torch.no_grad():
        fake = model.generator(batch["sketch"], model.tag_encoder.features(batch["reference"]))
    copy = F.interpolate(batch["reference"] * 2 - 1, size=(64, 64), mode="bilinear", align_corners=False)
    generated, copied = float((fake - batch["color"]).abs().mean()), float((copy - batch["color"]).abs().mean())
    print(f"L1 generated {generated:.4f}, copied reference {copied:.4f}")
    assert generated < 0.8 * copied


def _colour_along_edit(gan: GANColorizer, data: Path, names: list[str], tag: str, values: list[float]) -> list[float]:
    """Mean over the images of the red-minus-others channel mean of the colorized sketch, per tag value."""
    out = []
    for v in values:
        total = 0.0
        for name in names:
            sketch = pil_to_tensor(Image.open(data / "sketch" / name))
            image = gan.colorize(sketch, pil_to_tensor(Image.open(data / "color" / name)), 64, 64, tags={tag: v})
            total += float((image[:, 0] - image[:, 1:].mean(1)).mean())
        out.append(total / len(names))
    return out


def test_stage2_tag_edit_moves_the_colour(chain: dict[str, Any]) -> None:
    """Setting ``red_background`` of references without a red background to 0, 1, 2, 3 makes the result redder
    step by step (the mean over 12 references of mean(R) − mean(G, B) rises monotonically, by a clear margin).
    Measured: −0.018, 0.131, 0.411, 0.539 (data and run seeds 1 and 2: 0.008 → 0.592, −0.081 → 0.363).

    Why the background tag: in these data a shape never has the background's colour, so ``red_shape`` is
    anti-correlated with ``red_background``, and the mapper learns that (as Eq. 4.9 asks): raising ``red_shape``
    reddens references with a blue or green background (3 of 3 monotone) but takes red out of red- and
    yellow-background ones (0 of 4), i.e. it is not monotone over all references."""
    data = chain["data"]
    tags = json.loads((data / "tags.json").read_text())
    names = [n for n, t in tags.items() if "red_background" not in t][:12]
    gan = GANColorizer.from_file(chain["gan_stage2"]["export"], "cpu")
    values = [0.0, 1.0, 2.0, 3.0]
    redness = _colour_along_edit(gan, data, names, "red_background", values)
    print("red_background", values, "->", [round(r, 4) for r in redness])
    assert all(b > a for a, b in zip(redness, redness[1:])), redness
    assert redness[-1] - redness[0] > 0.2


# ------------------------------------------------------------------------------------------ trainable sets
def _snapshot(tr: GANTrainer) -> dict[str, dict[str, torch.Tensor]]:
    return {g: {k: v.detach().clone() for k, v in m.state_dict().items()} for g, m in tr.mods.groups().items()}


@pytest.mark.parametrize("stage,trained", [("gan_tagger", {"tag_encoder"}),
                                           ("gan_stage1", {"generator", "discriminator"}),
                                           ("gan_stage2", {"tag_mapper"})])
def test_trainable_set_is_the_documented_one(chain: dict[str, Any], tmp_path: Path, stage: str,
                                             trained: set[str]) -> None:
    """Exactly the stage's networks have gradients, optimisers and changed weights; every other network (weights
    and BatchNorm statistics) is bit-identical after two steps, and in eval mode."""
    init = {"gan_tagger": None, "gan_stage1": chain["gan_tagger"]["export"],
            "gan_stage2": chain["gan_stage1"]["export"]}[stage]
    tr = trainer(gan_config(stage, chain["data"], tmp_path, init))
    before = _snapshot(tr)
    tr.train()
    after = _snapshot(tr)
    groups = tr.mods.groups()
    assert set(tr.slots) == trained
    for name, module in groups.items():
        params = list(module.parameters())
        if name in trained:
            optimised = {id(p) for p in tr.slots[name].params}
            assert optimised == {id(p) for p in params} and all(p.grad is not None for p in params), name
            assert module.training
            changed = [k for k in before[name] if not torch.equal(before[name][k], after[name][k])]
            assert len(changed) > len(before[name]) // 2, name
        else:
            assert not module.training and all(not p.requires_grad and p.grad is None for p in params), name
            assert all(torch.equal(before[name][k], after[name][k]) for k in before[name]), name


def test_tagger_loss_is_bce_plus_focal_with_training_frequencies(data: Path, tmp_path: Path) -> None:
    """α comes from the tag counts of the training records (Eq. 4.2, rarest tag α = 1); the logged loss is
    ``tag_classification_loss`` of the encoder's logits; the tag names are the vocabulary's, in its order."""
    tr = trainer(gan_config("gan_tagger", data, tmp_path))
    vocab = load_vocabulary(data / "vocabulary.json")
    assert tr.mods.tags == vocab.names and tr.mods.config.num_tags == len(vocab)
    counts = torch.tensor(vocab.counts, dtype=torch.float32)  # every image of the folder is tagged
    assert torch.equal(tr.alpha, focal_alpha_from_counts(counts)) and float(tr.alpha.max()) == 1.0
    batch = tr.fixed_batch(4)
    parts = tr.micro_losses(batch, 1)
    with torch.no_grad():
        expected = tag_classification_loss(tr.mods.tag_encoder(batch["reference"]), batch["tags"], tr.alpha, 2.0)
    assert float(parts["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert batch["reference"].min() >= 0 and batch["reference"].max() <= 1 and batch["reference"].shape[-1] == 64


def test_tagger_starts_from_a_torchvision_resnet34_file(data: Path, tmp_path: Path) -> None:
    """``model.init`` = torchvision's ResNet-34 state dict (as ``resnet34-imagenet`` is stored, read with
    ``torch.load(weights_only=True)``): every backbone tensor is the file's, the 1000-way ``fc`` becomes a new
    C-way tag head; a file that does not fit the preset is a one-line config error."""
    from torchvision.models import resnet34

    torch.manual_seed(0)
    imagenet = resnet34().state_dict()
    path = tmp_path / "resnet34-b627a593.pth"
    torch.save(imagenet, path)
    tr = trainer(gan_config("gan_tagger", data, tmp_path / "run", path, model={"preset": "full"}))
    got = tr.mods.tag_encoder.backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in imagenet.items() if not k.startswith("fc."))
    assert tuple(got["fc.weight"].shape) == (len(tr.mods.tags), 512) and tr.mods.config.reference_size == 256
    with pytest.raises(TrainingConfigError, match="does not fit the tag encoder") as err:
        trainer(gan_config("gan_tagger", data, tmp_path / "tiny", path))
    assert "\n" not in str(err.value)



def test_tagger_init_by_manifest_name_goes_through_the_verified_download(data: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``model.init = "resnet34-imagenet"`` (the configs' value) is fetched lazily by ``colorize.weights.resolve``
    (downloads allowed), and the file it gives is what the encoder starts from."""
    from torchvision.models import resnet34

    import colorize.weights as w

    torch.manual_seed(1)
    imagenet = resnet34().state_dict()
    path = tmp_path / "resnet34-b627a593.pth"
    torch.save(imagenet, path)
    asked: list[tuple[str, bool]] = []
    monkeypatch.setattr(w, "resolve", lambda name, *a, download=False, **k: asked.append((name, download)) or path)
    tr = trainer(gan_config("gan_tagger", data, tmp_path / "run", "resnet34-imagenet", model={"preset": "full"}))
    assert asked and set(asked) == {("resnet34-imagenet", True)}  # the main process fetches it before the build
    assert torch.equal(tr.mods.tag_encoder.backbone.state_dict()["conv1.weight"], imagenet["conv1.weight"])


def test_a_continued_tagger_keeps_its_head_only_for_the_vocabularys_tags(chain: dict[str, Any], tmp_path: Path
                                                                        ) -> None:
    """Continuing a gan_tagger file: its head is kept when the vocabulary names the same tags in the same order;
    for the same tags in another order the backbone is kept and the head starts new (no tag trains under another
    tag's name)."""
    from training.tags import Vocabulary, write_vocabulary

    export = chain["gan_tagger"]["export"]
    saved = load_gan_checkpoint(export).tag_encoder
    same = trainer(gan_config("gan_tagger", chain["data"], tmp_path / "same", export)).mods.tag_encoder
    assert torch.equal(same.fc.weight, saved.fc.weight)
    vocab = load_vocabulary(chain["data"] / "vocabulary.json")
    flipped = tmp_path / "flipped.json"
    write_vocabulary(Vocabulary(vocab.names[::-1], vocab.counts[::-1], vocab.images), flipped)
    cfg = gan_config("gan_tagger", chain["data"], tmp_path / "other", export)
    cfg["data"]["vocabulary"] = str(flipped)
    other = trainer(cfg).mods.tag_encoder
    assert not torch.equal(other.fc.weight, saved.fc.weight)
    assert not torch.equal(other.fc.weight, saved.fc.weight.flip(0))  # a new head, not the old one reordered
    assert torch.equal(other.backbone.conv1.weight, saved.backbone.conv1.weight)


def test_manipulation_add_variant_has_no_spatial_factor(chain: dict[str, Any], tmp_path: Path) -> None:
    """``objective.manipulation_mode=add`` trains M-Add: no ω and no L_inv (thesis §4.3.1); its export says so."""
    cfg = gan_config("gan_stage2", chain["data"], tmp_path, chain["gan_stage1"]["export"],
                     objective={"manipulation_mode": "add"})
    cfg["run"]["export"] = True
    tr = trainer(cfg)
    result = tr.train()
    assert tr.mods.tag_mapper is not None and tr.mods.tag_mapper.omega is None
    assert "inv" not in result.metrics[-1] and "hybrid" in result.metrics[-1]
    assert load_gan_checkpoint(result.export).config.manipulation.mode == "add"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ resume
def _tensors(state: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor and number of a (nested) checkpoint, by dotted path."""
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _tensors(value, f"{prefix}{key}.").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in _tensors(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): state}


def test_killed_stage1_run_resumes_bit_for_bit(chain: dict[str, Any], tmp_path: Path) -> None:
    """Stage 1, 6 steps with a checkpoint every 3 and an EMA, killed (SIGKILL) after step 4 and resumed from
    step 3: the final checkpoint (generator, discriminator, both optimisers, schedules, scalers, EMA, RNG) and the
    export equal the uninterrupted run's bit for bit, and so does ``python -m training.export`` of the checkpoint;
    ``log.jsonl`` has each step once."""
    def config(out: Path) -> dict[str, Any]:
        cfg = gan_config("gan_stage1", chain["data"], out, chain["gan_tagger"]["export"], steps=6)
        cfg["run"].update(save_every=3, export=True, resume="auto", ema_decay=0.9)
        return cfg

    reference = trainer(config(tmp_path / "reference")).train()
    killed = config(tmp_path / "killed")
    train_until_killed(killed, "after-step:4")
    resumed_trainer = trainer(killed)
    assert resumed_trainer.step == 3
    resumed = resumed_trainer.train()
    a = _tensors(torch.load(reference.checkpoint, weights_only=True))
    b = _tensors(torch.load(resumed.checkpoint, weights_only=True))
    assert a.keys() == b.keys()
    assert any(k.startswith("model.discriminator.") for k in a) and any(k.startswith("optimizer.discriminator.")
                                                                         for k in a)
    for k in a:
        if k != "train_config":
            same = torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
            assert same, k
    cli = export_training_state(resumed.checkpoint, tmp_path / "cli.safetensors")  # python -m training.export
    files = [load_file(str(p)) for p in (reference.export, resumed.export, cli)]
    assert all(f.keys() == files[0].keys() and all(torch.equal(f[k], files[0][k]) for k in f) for f in files)
    assert json.loads(read_metadata(cli)[TRAINING_METADATA_KEY]) == {"stage": "gan_stage1", "step": 6, "ema": True}
    assert [r["step"] for r in step_lines(read_log(tmp_path / "killed"))] == [1, 2, 3, 4, 5, 6]
    assert all(r["d_lr"] > 0 and r["lr"] > 0 for r in step_lines(read_log(tmp_path / "killed")))  # G's and D's


def test_checkpoint_export_of_a_continued_generator_uses_its_ema(chain: dict[str, Any], tmp_path: Path) -> None:
    """A stage-1 run continuing the generator of a stage-1 file, with an EMA: ``python -m training.export`` of its
    checkpoint writes the averaged generator, equal to the run's own export."""
    cfg = gan_config("gan_stage1", chain["data"], tmp_path / "run", chain["gan_stage1"]["export"], steps=2)
    cfg["run"].update(save_every=2, export=True, ema_decay=0.5)
    result = trainer(cfg).train()
    cli = export_training_state(result.checkpoint, tmp_path / "cli.safetensors")
    own, again = load_file(str(result.export)), load_file(str(cli))
    assert own.keys() == again.keys() and all(torch.equal(own[k], again[k]) for k in own)
    raw = torch.load(result.checkpoint, weights_only=True)["model"]["generator"]
    assert not torch.equal(own["generator.to_image.weight"], raw["to_image.weight"])  # the EMA, not the raw weights


def test_a_run_does_not_resume_against_other_frozen_networks(chain: dict[str, Any], tmp_path: Path) -> None:
    """Stage 1 saved against one tagger file refuses to resume once that file holds other weights (the frozen
    encoder's digest is part of what a checkpoint was written for)."""
    from safetensors.torch import save_file

    init = tmp_path / "tagger.safetensors"
    init.write_bytes(chain["gan_tagger"]["export"].read_bytes())
    cfg = gan_config("gan_stage1", chain["data"], tmp_path / "run", init, steps=2)
    cfg["run"].update(save_every=2, resume="auto")
    trainer(cfg).train()
    assert trainer({**cfg, "run": {**cfg["run"], "max_steps": 3}}).step == 2  # same file: resumes
    sd = load_file(str(init))
    sd["tag_encoder.backbone.conv1.weight"] = sd["tag_encoder.backbone.conv1.weight"] + 1e-3
    save_file(sd, str(init), metadata=read_metadata(init))
    with pytest.raises(TrainingCheckpointError, match="other frozen networks from model.init"):
        trainer({**cfg, "run": {**cfg["run"], "max_steps": 3}})


@pytest.mark.parametrize("stage", ["gan_tagger", "gan_stage2"])
def test_stopped_run_resumes_bit_for_bit(chain: dict[str, Any], tmp_path: Path, stage: str) -> None:
    """The tagger and stage 2: 3 steps, then a new run to 6 from the checkpoint of step 3, equal the 6-step run."""
    init = chain["gan_stage1"]["export"] if stage == "gan_stage2" else None

    def config(out: Path, steps: int) -> dict[str, Any]:
        cfg = gan_config(stage, chain["data"], out, init, steps=steps)
        cfg["run"].update(save_every=3, export=True, resume="auto")
        return cfg

    reference = trainer(config(tmp_path / "reference", 6)).train()
    trainer(config(tmp_path / "stopped", 3)).train()
    resumed = trainer(config(tmp_path / "stopped", 6)).train()
    a, b = load_gan_checkpoint(reference.export), load_gan_checkpoint(resumed.export)
    for name in ("tag_encoder", "tag_mapper"):
        ma, mb = getattr(a, name), getattr(b, name)
        if ma is not None:
            sa, sb = ma.state_dict(), mb.state_dict()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert reference.losses[3:] == resumed.losses


# ------------------------------------------------------------------------------------------ DDP
def test_torchrun_two_processes_run_stage1(chain: dict[str, Any], tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2`` (gloo) runs stage 1 (both networks under DDP) with gradient accumulation
    and writes one export."""
    cfg = gan_config("gan_stage1", chain["data"], tmp_path / "ddp", chain["gan_tagger"]["export"], steps=3,
                     batch=2, run={"grad_accum": 2, "export": True})
    assert "done: step 3" in torchrun_training(cfg, tmp_path / "ddp.json")
    lines = step_lines(read_log(tmp_path / "ddp"))
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all(math.isfinite(r[k]) for r in lines for k in ("g_loss", "d_loss", "l1", "cgan", "tv"))
    exports = list((tmp_path / "ddp" / "export").glob("*.safetensors"))
    assert len(exports) == 1 and load_gan_checkpoint(exports[0]).config.stage == "gan_stage1"


# ------------------------------------------------------------------------------------------ exports
@pytest.mark.parametrize("stage,components", [("gan_tagger", ("tag_encoder",)),
                                              ("gan_stage1", ("tag_encoder", "generator")),
                                              ("gan_stage2", ("tag_encoder", "generator", "tag_mapper"))])
def test_export_loads_through_the_library(chain: dict[str, Any], stage: str, components: tuple[str, ...]) -> None:
    """Each export is a GAN file of its stage (components, the vocabulary's tag names, ``colorize_training``);
    stage 1 and 2 colorize through ``GANColorizer`` (stage 2 also with a tag edit), and wrote sample grids."""
    export = chain[stage]["export"]
    assert export.name == f"{stage}-step{STEPS[stage]:08d}.safetensors"
    model = load_gan_checkpoint(export)
    assert model.config.stage == stage and model.config.components == components
    assert model.config.tags == load_vocabulary(chain["data"] / "vocabulary.json").names
    assert json.loads(read_metadata(export)[TRAINING_METADATA_KEY]) == {"stage": stage, "step": STEPS[stage],
                                                                        "ema": False}
    samples = chain["base"] / stage / "samples" / f"step_{STEPS[stage]:08d}.png"
    if stage == "gan_tagger":
        assert not samples.exists()
        return
    assert Image.open(samples).size == (4 * 64, 2 * 64)  # sketch | reference | generated | ground truth
    gan = GANColorizer.from_file(export, "cpu")
    sketch, reference = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 96, 80)
    out = gan.colorize(sketch, reference, 64, 64, tags={"red_shape": 1.0} if stage == "gan_stage2" else None)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert gan.can_edit == (stage == "gan_stage2")


def test_trained_exports_load_through_inspect_the_cli_and_the_nodes(
        chain: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``inspect`` names the GAN family and each export's stage; ``run --checkpoint`` colorizes with a tag edit of
    the stage-2 export; the nodes load it from a models folder, list its tags and colorize."""
    from colorize.cli import main

    for stage in STEPS:
        assert main(["inspect", str(chain[stage]["export"])]) == 0
        out = capsys.readouterr().out
        assert "chapter-4 GAN (family 'gan'" in out and f"stage:            {stage} " in out
        assert f"trained:          stage {stage}, step {STEPS[stage]}" in out
    export, png = chain["gan_stage2"]["export"], tmp_path / "out.png"
    images = sorted((chain["data"] / "color").iterdir())
    assert main(["run", "--checkpoint", str(export), "--sketch", str(images[0]), "--reference", str(images[1]),
                 "--out", str(png), "--tag", "red_background=2", "--width", "64", "--height", "64"]) == 0
    assert "reference tags: " in capsys.readouterr().out and Image.open(png).size == (64, 64)

    from _helpers import require_node_api

    require_node_api()
    import colorize.weights as w
    from nodes import NODE_CLASSES

    folder = tmp_path / "models" / "colorizediffusion_gan"
    folder.mkdir(parents=True)
    (folder / export.name).write_bytes(export.read_bytes())
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tmp_path / "models"))
    gan = NODE_CLASSES["ColorizeDiffusionGANLoader"].execute(export.name, "fp32").result[0]
    image = torch.rand(1, 64, 64, 3)
    code, tags = NODE_CLASSES["ColorizeDiffusionGANReference"].execute(gan, image, 3).result
    assert len(tags.split(", ")) == 3 and tags.split(" ")[0] in load_vocabulary(chain["data"] / "vocabulary.json").names
    edited = NODE_CLASSES["ColorizeDiffusionGANTagEdit"].execute(gan, code, "red_background", 2.0)[0]
    out = NODE_CLASSES["ColorizeDiffusionGANColorize"].execute(gan, image, 64, 64, "auto", reference=edited)[0]
    assert out.shape == (1, 64, 64, 3) and 0 <= float(out.min()) and float(out.max()) <= 1


# ------------------------------------------------------------------------------------------ errors
def test_tagger_without_tags_is_a_data_error_before_any_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Data without tags.json: a one-line ``TrainingDataError`` naming the file, before a network is built; the
    CLI prints it as one ``error:`` line (exit 2)."""
    import training.gan.trainer as gan_trainer
    from training.train import main

    data = make_synthetic_dataset(tmp_path / "untagged", 4, (64, 64))
    with pytest.raises(ValueError, match="gan_tagger export"):  # stages 1 and 2 need no tags, but a start
        trainer(gan_config("gan_stage1", data, tmp_path / "s1"))
    monkeypatch.setattr(gan_trainer, "stage_modules", lambda *a: pytest.fail("a model was built"))
    cfg = gan_config("gan_tagger", data, tmp_path / "run")
    with pytest.raises(TrainingDataError, match="tags.json") as err:
        trainer(cfg)
    assert "\n" not in str(err.value)
    path = tmp_path / "tagger.json"
    path.write_text(json.dumps(cfg))
    assert main(["--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the gan_tagger stage needs image tags")
    with pytest.raises(TrainingConfigError, match="batch_size >= 2"):  # stage 2 pairs samples of a micro-batch
        config_from_dict(gan_config("gan_stage2", data, tmp_path / "s2", batch=1))

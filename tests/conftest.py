import pytest

#: The tests' tiny task: levels 1-2, a barely pretrained 2-layer base (seconds to build).
TINY_TEST_SPEC = {
    "levels": (1, 2),
    "train_per_level": (20, 20),
    "test_per_level": 4,
    "pretrain_per_level": (64, 64),
    "base_step_share": (0.0, 0.5),
    "prompted_per_level": (0, 16),
    "val_per_level": 4,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "intermediate_size": 64,
    "pretrain_steps": 3,
    "pretrain_batch": 16,
    "fact_sheets": 8,
    "facts_per_sheet": 4,
}


def _built_in_cache(cache, spec=None):
    """The embedded default's assets (or ``spec``'s) built into ``cache``, ``REDRL_CACHE`` restored after."""
    import os

    from redrl.tiny import ensure_tiny

    previous = os.environ.get("REDRL_CACHE")
    os.environ["REDRL_CACHE"] = str(cache)
    try:
        return ensure_tiny(spec, progress=False)
    finally:
        if previous is None:
            os.environ.pop("REDRL_CACHE")
        else:
            os.environ["REDRL_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """A tiny base (barely pretrained: seconds, not minutes) and task data with levels 1-2."""
    from redrl.tiny import TinySpec

    return _built_in_cache(tmp_path_factory.mktemp("redrl-cache"), TinySpec(**TINY_TEST_SPEC))


@pytest.fixture(scope="session")
def embedded_assets(tmp_path_factory):
    """The embedded default itself: its shipped base and task, unpacked into a cache of the tests' own."""
    return _built_in_cache(tmp_path_factory.mktemp("redrl-embedded"))


@pytest.fixture(scope="session")
def perturbed_teacher(tiny_assets, tmp_path_factory):
    """The tiny base with noise on every weight: same tokenizer, other distributions."""
    import torch

    from redrl.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_assets.base))
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    path = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

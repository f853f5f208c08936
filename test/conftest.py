"""Shared test set-up: keep ROS logs out of $HOME and threads predictable."""
import os
import tempfile

os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="specvla_roslog_"))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# one intra-op thread: tiny models on 2 shared cores run ~10x slower with 2 threads under load
os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- tiny random VLA checkpoints (issue 2) ------------------------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module: the tiny models decode fastest single-threaded on a
    shared 2-core machine (use: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """(target_dir, draft_dir, eagle_dir): random "test"-preset checkpoints built once per session.

    target: TinyVLA (model_type "specvla_tiny"); draft: independent 1-layer draft VLA;
    eagle: EAGLE head. Load with specvla_ros.core.models.loading.load_vla / load_drafter.
    """
    from specvla_ros.core.models.testing import make_random_checkpoint, make_random_draft

    root = tmp_path_factory.mktemp("tiny_ckpt")
    target = make_random_checkpoint(root / "target", preset="test", seed=0)
    draft = make_random_draft(root / "draft", target, kind="model", seed=1)
    eagle = make_random_draft(root / "eagle", target, kind="eagle", seed=2)
    return target, draft, eagle

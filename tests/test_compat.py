"""mmseg_ext.compat: each workaround is applied exactly where the installed versions need it."""
import mmengine
from mmengine.config import Config
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.utils import digit_version

import mmseg_ext.compat as compat
from mmseg_ext.checkpoint.safe_unpickler import load_checkpoint_file


def _local_loader():
    return CheckpointLoader._schemes['']


def test_the_installed_mmengine_gets_the_safe_local_loader():
    assert compat.MMENGINE_LOADS_UNSAFELY == (digit_version(mmengine.__version__) <= digit_version('0.10.7'))
    assert _local_loader() is load_checkpoint_file


def test_a_fixed_mmengine_keeps_its_own_loader(monkeypatch):
    sentinel = object()
    monkeypatch.setitem(CheckpointLoader._schemes, '', sentinel)
    monkeypatch.setattr(compat, 'MMENGINE_LOADS_UNSAFELY', False)
    compat.apply()
    assert _local_loader() is sentinel
    monkeypatch.setattr(compat, 'MMENGINE_LOADS_UNSAFELY', True)
    compat.apply()
    assert _local_loader() is load_checkpoint_file


def _checkpoint_writers():
    import mmengine.runner
    import mmengine.runner.runner
    from mmengine.hooks import CheckpointHook
    from mmengine.runner import checkpoint
    return (checkpoint.save_checkpoint, mmengine.runner.runner.save_checkpoint, mmengine.runner.save_checkpoint,
            CheckpointHook._save_checkpoint_with_step, CheckpointHook._save_best_checkpoint)


def test_the_installed_mmengine_saves_checkpoints_atomically():
    from mmseg_ext.checkpoint import atomic_save
    assert compat.MMENGINE_SAVES_IN_PLACE == (digit_version(mmengine.__version__) <= digit_version('0.10.7'))
    save = atomic_save.save_checkpoint_atomically
    assert _checkpoint_writers() == (save, save, save, atomic_save._save_checkpoint_then_prune,
                                     atomic_save._save_best_then_prune)


def test_a_fixed_mmengine_keeps_its_own_checkpoint_writes(monkeypatch):
    import mmengine.runner
    import mmengine.runner.runner
    from mmengine.hooks import CheckpointHook
    from mmengine.runner import checkpoint
    sentinel = object()
    for module in (checkpoint, mmengine.runner.runner, mmengine.runner):
        monkeypatch.setattr(module, 'save_checkpoint', sentinel)
    monkeypatch.setattr(CheckpointHook, '_save_checkpoint_with_step', sentinel)
    monkeypatch.setattr(CheckpointHook, '_save_best_checkpoint', sentinel)
    monkeypatch.setattr(compat, 'MMENGINE_SAVES_IN_PLACE', False)
    compat.apply()
    assert _checkpoint_writers() == (sentinel, ) * 5
    monkeypatch.setattr(compat, 'MMENGINE_SAVES_IN_PLACE', True)
    compat.apply()
    assert sentinel not in _checkpoint_writers()


def test_cpu_process_group_is_started_only_for_the_pytorch_launcher_without_cuda(monkeypatch):
    started = []
    monkeypatch.setattr('torch.distributed.init_process_group', lambda **kwargs: started.append(kwargs))
    monkeypatch.setattr('torch.distributed.is_initialized', lambda: False)
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    compat.start_cpu_process_group(Config(dict(launcher='none')))
    monkeypatch.setattr(compat, 'MMENGINE_LAUNCHER_NEEDS_CUDA', False)
    compat.start_cpu_process_group(Config(dict(launcher='pytorch')))
    assert started == []
    monkeypatch.setattr(compat, 'MMENGINE_LAUNCHER_NEEDS_CUDA', True)
    compat.start_cpu_process_group(Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='gloo')))))
    assert started == [dict(backend='gloo')]

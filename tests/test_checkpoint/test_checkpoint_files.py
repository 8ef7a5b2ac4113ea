"""Three diagnoses for files that cannot be loaded: not a checkpoint, damaged, unsafe; each one line."""
import pytest
import torch
from utils import UNUSABLE_CHECKPOINTS, small_checkpoint, write_sample
from mmengine.runner.checkpoint import _load_checkpoint

import mmseg_ext.checkpoint.safe_unpickler as checkpoint_module
from mmseg_ext.checkpoint.safe_unpickler import CheckpointFileError, load_checkpoint_file


@pytest.mark.parametrize('name', sorted(UNUSABLE_CHECKPOINTS))
def test_each_bad_file_gets_its_diagnosis_in_one_line(name, tmp_path):
    path = write_sample(name, tmp_path, small_checkpoint(tmp_path / 'good.pth'))
    error_class, phrase = UNUSABLE_CHECKPOINTS[name]
    with pytest.raises(getattr(checkpoint_module, error_class)) as caught:
        _load_checkpoint(str(path), map_location='cpu')  # mmengine's entry point, as the runner uses it
    message = str(caught.value)
    assert phrase in message and str(path) in message
    assert '\n' not in message
    assert isinstance(caught.value, CheckpointFileError)


def test_diagnoses_are_distinct_classes():
    classes = {checkpoint_module.NotACheckpointError, checkpoint_module.DamagedCheckpointError,
               checkpoint_module.UnsafeCheckpointError}
    assert all(not issubclass(a, b) for a in classes for b in classes if a is not b)


def test_random_bytes_are_not_called_an_attack(tmp_path):
    # Before: random bytes were reported as pickled objects that could run code.
    path = write_sample('random_bytes', tmp_path, small_checkpoint(tmp_path / 'good.pth'))
    with pytest.raises(checkpoint_module.NotACheckpointError) as caught:
        load_checkpoint_file(str(path))
    assert 'run code' not in str(caught.value)


def test_crc_check_catches_what_torch_loads_silently(tmp_path):
    good = small_checkpoint(tmp_path / 'good.pth')
    path = write_sample('crc_corrupted_zip', tmp_path, good)
    # Guards the meaning of this test: torch itself returns the changed tensor without complaint.
    changed = torch.load(path, weights_only=True)['state_dict']['w']
    assert not torch.equal(changed, torch.load(good, weights_only=True)['state_dict']['w'])
    with pytest.raises(checkpoint_module.DamagedCheckpointError, match=r'data/0 fails its CRC-32 check'):
        load_checkpoint_file(str(path))


def test_hostile_pickle_never_runs_and_names_what_it_asked_for(tmp_path):
    path = write_sample('hostile_pickle', tmp_path, small_checkpoint(tmp_path / 'good.pth'))
    with pytest.raises(checkpoint_module.UnsafeCheckpointError, match=r'asks for posix\.system'):
        load_checkpoint_file(str(path))
    assert not (tmp_path / 'pwned').exists()


def test_valid_checkpoints_in_both_torch_formats_still_load(tmp_path):
    zip_path = small_checkpoint(tmp_path / 'good.pth')
    legacy_path = tmp_path / 'legacy.pth'
    torch.save({'state_dict': {'w': torch.arange(4.)}}, legacy_path, _use_new_zipfile_serialization=False)
    assert set(load_checkpoint_file(str(zip_path))['state_dict']) == {'w', 'b'}
    assert torch.equal(load_checkpoint_file(str(legacy_path))['state_dict']['w'], torch.arange(4.))


def test_checkpoint_written_without_crc_records_loads(tmp_path):
    path = tmp_path / 'no_crc.pth'
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({'state_dict': {'w': torch.ones(3)}}, path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(load_checkpoint_file(str(path))['state_dict']['w'], torch.ones(3))

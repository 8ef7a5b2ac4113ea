"""Generated files that are not usable checkpoints: foreign files, damaged checkpoints, a hostile pickle."""
import os
import struct
import zipfile
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

# name -> (exception class name in mmseg_ext.safe_unpickler, a phrase the one-line message must contain)
EXPECTED: Dict[str, Tuple[str, str]] = {
    'random_bytes': ('NotACheckpointError', 'unrecognised binary data'),
    'png_image': ('NotACheckpointError', 'is a PNG image'),
    'text_file': ('NotACheckpointError', 'is a text file'),
    'web_page': ('NotACheckpointError', 'is a web page'),
    'lfs_pointer': ('NotACheckpointError', 'Git LFS pointer'),
    'zip_of_images': ('NotACheckpointError', 'zip archive without data.pkl'),
    'empty_file': ('DamagedCheckpointError', 'the file is empty'),
    'truncated_zip': ('DamagedCheckpointError', 'cut off while being written or copied'),
    'crc_corrupted_zip': ('DamagedCheckpointError', 'fails its CRC-32 check'),
    'legacy_truncated': ('DamagedCheckpointError', 'probably'),
    'hostile_pickle': ('UnsafeCheckpointError', 'it asks for posix.system'),
}


class RunsCommand:
    """A pickle payload: unpickling it would run ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def small_checkpoint(path: Path) -> Path:
    """A valid mmengine-style checkpoint with two tensors (a few KB)."""
    generator = torch.Generator().manual_seed(0)
    torch.save({'meta': {'iter': 1}, 'state_dict': {'w': torch.randn(32, 32, generator=generator),
                                                    'b': torch.randn(32, generator=generator)}}, path)
    return path


def _entry_data_offset(archive_path: Path, suffix: str) -> int:
    """Offset of the stored bytes of the zip entry whose name ends with ``suffix``."""
    with zipfile.ZipFile(archive_path) as archive:
        info = next(info for info in archive.infolist() if info.filename.endswith(suffix))
    with open(archive_path, 'rb') as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack('<HH', file.read(4))
    return info.header_offset + 30 + name_length + extra_length


def write_sample(name: str, directory: Path, good: Path) -> Path:
    """Write the sample ``name`` (a key of :data:`EXPECTED`) into ``directory``; ``good`` is a valid
    checkpoint that damaged samples start from."""
    path = directory / f'{name}.pth'
    content = good.read_bytes()
    if name == 'random_bytes':
        path.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)))
    elif name == 'png_image':
        import cv2
        ok, encoded = cv2.imencode('.png', np.zeros((8, 8, 3), np.uint8))
        assert ok
        path.write_bytes(encoded.tobytes())
    elif name == 'text_file':
        path.write_text('model weights will be uploaded here\n')
    elif name == 'web_page':
        path.write_text('<!DOCTYPE html>\n<html><body>Sign in to download</body></html>\n')
    elif name == 'lfs_pointer':
        path.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4096\n')
    elif name == 'zip_of_images':
        with zipfile.ZipFile(path, 'w') as archive:
            archive.writestr('images/0001.png', b'not really')
    elif name == 'empty_file':
        path.write_bytes(b'')
    elif name == 'truncated_zip':
        path.write_bytes(content[:len(content) * 2 // 3])
    elif name == 'crc_corrupted_zip':
        damaged = bytearray(content)
        damaged[_entry_data_offset(good, 'data/0') + 10] ^= 0xFF  # one tensor byte; torch would load it silently
        path.write_bytes(bytes(damaged))
    elif name == 'legacy_truncated':
        legacy = directory / 'legacy_source.pth'
        torch.save({'w': torch.zeros(64)}, legacy, _use_new_zipfile_serialization=False)
        path.write_bytes(legacy.read_bytes()[:200])
    elif name == 'hostile_pickle':
        torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': RunsCommand(directory / 'pwned')}, path)
    else:
        raise KeyError(name)
    return path

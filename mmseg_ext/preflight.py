"""Checks run by the tools before a runner is built, so bad input stops early and names the file.

Without them a missing data root surfaces as an empty dataset deep inside the runner, an image
without its label as a ``FileNotFoundError`` in a dataloader worker possibly hours into training, and
a corrupt label PNG as ``'NoneType' object has no attribute 'squeeze'``. The file check reads only the
first and last bytes of each image (signature and end marker), so it costs seconds on Cityscapes; a
file damaged in the middle still fails later, when it is decoded.
"""
import copy
import os.path as osp
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from mmengine.config import Config

__all__ = ['PreflightError', 'check_config_path', 'check_datasets', 'check_image_file', 'leaf_datasets']

_PHASE_LOADERS = {'train': 'train_dataloader', 'val': 'val_dataloader', 'test': 'test_dataloader'}
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'IEND\xaeB`\x82'
_JPEG_START, _JPEG_END = b'\xff\xd8\xff', b'\xff\xd9'


class PreflightError(ValueError):
    """A problem with the config, data or checkpoint found before training or testing started."""


def check_config_path(path: str) -> str:
    """The config file ``path`` names, else raise :class:`PreflightError` naming it.

    ``package::relative/path.py`` (for example ``mmseg::erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py``)
    names a config packaged with an installed OpenMMLab library and resolves to its file.
    """
    if '::' in path:
        from mmengine.utils import get_installed_path, is_installed
        package, relative = path.split('::', 1)
        if not is_installed(package):
            raise PreflightError(f'config {path}: package {package!r} is not installed')
        packaged = osp.join(get_installed_path(package), '.mim', 'configs', relative)
        if not osp.isfile(packaged):
            raise PreflightError(f'config file not found: {path} (looked for {packaged})')
        return packaged
    if not osp.isfile(path):
        hint = ' (a directory was given)' if osp.isdir(path) else ''
        raise PreflightError(f'config file not found: {path}{hint}')
    return path


def check_image_file(path: str) -> None:
    """Raise :class:`PreflightError` if ``path`` is empty or a truncated or garbled PNG/JPEG."""
    size = osp.getsize(path)
    if size == 0:
        raise PreflightError(f'corrupt image (empty file): {path}')
    with open(path, 'rb') as file:
        head = file.read(16)
        file.seek(max(0, size - 32))
        tail = file.read()
    lower = path.lower()
    if lower.endswith('.png'):
        if not head.startswith(_PNG_SIGNATURE):
            raise PreflightError(f'corrupt image (not a PNG file): {path}')
        if not tail.endswith(_PNG_END):
            raise PreflightError(f'corrupt image (truncated PNG, no end marker): {path}')
    elif lower.endswith(('.jpg', '.jpeg')):
        if not head.startswith(_JPEG_START):
            raise PreflightError(f'corrupt image (not a JPEG file): {path}')
        if _JPEG_END not in tail:
            raise PreflightError(f'corrupt image (truncated JPEG, no end marker): {path}')


def leaf_datasets(dataset_cfg: dict, key: str = 'dataset') -> Iterator[Tuple[dict, str]]:
    """The dataset configs inside wrappers such as ConcatDataset (``datasets``) and RepeatDataset
    (``dataset``), each with its ``--cfg-options`` key, ``key`` being that of ``dataset_cfg``."""
    if 'datasets' in dataset_cfg:
        for index, child in enumerate(dataset_cfg['datasets']):
            yield from leaf_datasets(child, f'{key}.datasets.{index}')
    elif 'dataset' in dataset_cfg:
        yield from leaf_datasets(dataset_cfg['dataset'], f'{key}.dataset')
    else:
        yield dataset_cfg, key


def _data_dirs(dataset_cfg: dict) -> List[Tuple[str, str]]:
    root = dataset_cfg.get('data_root') or ''
    dirs = [('data root', root)] if root else []
    for key, prefix in (dataset_cfg.get('data_prefix') or {}).items():
        if prefix:
            dirs.append((key, osp.join(root, prefix)))
    return dirs


def _build_without_pipeline(dataset_cfg: dict):
    from mmseg.registry import DATASETS
    cfg = copy.deepcopy(dict(dataset_cfg))
    cfg['pipeline'] = []  # transforms are irrelevant for listing files and need the default scope
    cfg['lazy_init'] = False
    return DATASETS.build(cfg)


def check_datasets(cfg: Config, phases: Iterable[str] = ('train', 'val'),
                   check_files: bool = True) -> Dict[str, int]:
    """Check the data of each phase's dataloader in ``cfg``.

    Checks that the data root and prefixes exist, that the dataset is not empty, that every image has
    its label map, and (``check_files``) that no image or label is empty, truncated or not an image.

    Args:
        cfg: A full mmengine config.
        phases: Any of ``'train'``, ``'val'``, ``'test'``; phases whose dataloader is missing or None are
            skipped.
        check_files: Also read each file's first and last bytes.

    Returns:
        The number of samples per checked phase.

    Raises:
        PreflightError: naming the phase and the missing or corrupt path.
    """
    counts = {}
    for phase in phases:
        loader = cfg.get(_PHASE_LOADERS[phase])
        if not loader or not loader.get('dataset'):
            continue
        total = 0
        for dataset_cfg, key in leaf_datasets(loader['dataset']):
            for what, path in _data_dirs(dataset_cfg):
                if not osp.isdir(path):
                    raise PreflightError(
                        f'{phase} data not found: {what} {path!r} does not exist (set it with --cfg-options '
                        f'{_PHASE_LOADERS[phase]}.{key}.data_root=..., or prepare the dataset first)')
            dataset = _build_without_pipeline(dataset_cfg)
            infos = [dataset.get_data_info(i) for i in range(len(dataset))]
            if not infos:
                raise PreflightError(f'{phase} dataset is empty: no images matching '
                                     f"'*{dataset_cfg.get('img_suffix', '')}' under {_data_dirs(dataset_cfg)}")
            for info in infos:
                _check_sample(info, check_files)
            total += len(infos)
        counts[phase] = total
    return counts


def _check_sample(info: dict, check_files: bool) -> None:
    image: Optional[str] = info.get('img_path')
    label: Optional[str] = info.get('seg_map_path')
    if label is not None and not osp.isfile(label):
        raise PreflightError(f'image {image} has no label map: {label} does not exist')
    if check_files:
        for path in (image, label):
            if path is not None:
                check_image_file(path)

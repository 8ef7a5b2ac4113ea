"""Install mmseg_ext. The exact, tested pins live in requirements.txt (used by `make install`)."""
import os.path as osp

from setuptools import find_packages, setup


def read_version() -> str:
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmseg_ext', 'version.py')) as file:
        exec(file.read(), scope)
    return scope['__version__']


setup(
    name='mmseg_ext',
    version=read_version(),
    description='Paper-faithful, faster ERFNet, OCRNet and SegFormer for mmsegmentation 1.x (a plugin)',
    long_description=open(osp.join(osp.dirname(__file__), 'README.md')).read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.8',
    packages=find_packages(include=['mmseg_ext', 'mmseg_ext.*']),
    # Configs and tools ship inside the package, as OpenMMLab packages ship theirs (mmseg/.mim/configs), so
    # `mmseg_ext::segformer/...` names a config of the installed package. In the repository .mim/configs and
    # .mim/tools are links to configs/ and tools/; the wheel holds copies of the files.
    # The published-results table is the chart tool's default data (tools/analysis_tools/plot_results.py).
    package_data={'mmseg_ext': ['.mim/model-index.yml', '.mim/configs/**/*.py', '.mim/tools/**/*.py',
                                '.mim/tools/**/*.sh', '.mim/docs/published_cityscapes.csv']},
    install_requires=[
        'torch>=1.12',
        'mmsegmentation>=1.2.0,<1.3',
        'mmengine>=0.10,<1',
        'mmcv>=2.0.0rc4,<2.2.0',
        # mmengine (0.10.7 and before) resolves `mmseg::` / `mmseg_ext::` config names through pkg_resources,
        # which setuptools 81 removed.
        'setuptools<81',
        'ftfy',
        'regex',
    ],
    extras_require={
        'tests': ['pytest', 'transformers', 'safetensors'],
        # export (torch's exporter needs onnx and onnxscript) and the two runtimes of the exported file
        'deploy': ['onnx>=1.15', 'onnxscript>=0.1', 'onnxruntime>=1.17', 'openvino>=2024.0'],
    },
    license='Apache-2.0',
)

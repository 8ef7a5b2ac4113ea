"""Everything about checkpoint files, one module per concern (import the module you need):

* :mod:`~mmseg_ext.checkpoint.reading`: reading ``.pth`` files and URLs (through mmengine's
  ``CheckpointLoader``), ``.safetensors`` files and Hugging Face model directories, and unwrapping the state
  dict (``state_dict``/``model`` entries, ``module.``/``model.`` prefixes);
* :mod:`~mmseg_ext.checkpoint.safe_unpickler`: the restricted unpickler mmengine's loader uses for local files
  (routed by :mod:`mmseg_ext.compat`), and the one-line diagnosis of files that are not checkpoints;
* :mod:`~mmseg_ext.checkpoint.weights_check`: whether a checkpoint's tensors fit a model, before it is loaded;
* :mod:`~mmseg_ext.checkpoint.atomic_save`: writing checkpoints that survive a kill or a full disk;
* :mod:`~mmseg_ext.checkpoint.mit_layouts` and :mod:`~mmseg_ext.checkpoint.mit_pretrained`: the published MiT
  encoder key layouts, and the ``init_cfg=dict(type='Pretrained')`` loader that reads any of them.

Nothing here imports the models; the model families and :mod:`mmseg_ext.converters` import from here. The
weights check asks the converter registry, when it explains a mismatch, whether a file is in a published layout.
"""

"""A hook for the distributed test: each rank saves its final parameters to the work dir."""
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class SaveRankParametersHook(Hook):

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = {name: p.detach().clone() for name, p in model.named_parameters()}
        torch.save({'world_size': runner.world_size, 'params': params}, f'{runner.work_dir}/rank{get_rank()}_params.pt')

"""Training: one loop for pre-training, mid-training and SFT, configured by TOML (docs/training.md).

    from cwm.train.config import load_config, TrainConfig, ConfigError
    from cwm.train.trainer import Trainer, register_eval_hook

Nothing is imported here, so `cwm train --help` does not pay for torch.
"""

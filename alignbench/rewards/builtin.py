"""Built-in reward entries (lazy: nothing heavy is imported until a reward is asked for).

A registered reward is a zero-argument factory (or class) returning a :class:`~.base.Reward`.
"""

from ..registry import rewards

rewards.register("geneval-shapes", lazy="alignbench.rewards.shapes:shapes_geneval_reward")
rewards.register("ocr", lazy="alignbench.rewards.ocr:OcrReward")
# natural-image rewards with published weights (alignbench.rewards.pretrained); each takes the
# run's ``reward`` options (source, revision, device, dtype, batch_size, formula)
rewards.register("pickscore", lazy="alignbench.rewards.pretrained:PickScoreReward")
rewards.register("hpsv2", lazy="alignbench.rewards.pretrained:HPSv21Reward")
rewards.register("imagereward", lazy="alignbench.rewards.pretrained:ImageRewardReward")
rewards.register("clipscore", lazy="alignbench.rewards.pretrained:CLIPScoreReward")
rewards.register("aesthetic", lazy="alignbench.rewards.pretrained:AestheticReward")
rewards.register("geneval-natural", lazy="alignbench.rewards.natural_geneval:NaturalGenEvalReward")
rewards.register("ocr-natural", lazy="alignbench.rewards.ocr:natural_ocr_reward")
rewards.register("random-projection", lazy="alignbench.rewards.base:RandomProjectionReward")
rewards.register("brightness", lazy="alignbench.rewards.base:BrightnessReward")

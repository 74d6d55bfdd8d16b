"""Planning tools beside training: hyper-parameter sweeps (:mod:`.sweep`) and cost estimates (:mod:`.estimate`).

Both read the same stage configs as the training verbs (``affinage sft``, ``dpo``, ``rm``, ``grpo``...)
and import torch only inside the functions that need it.
"""

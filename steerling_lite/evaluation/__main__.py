"""``python -m steerling_lite.evaluation ARGS``: lm-evaluation-harness's ``lm_eval ARGS`` with the model
type ``steerling-lite`` registered (lm-eval's own command sees only the models it ships)."""

from .lm_eval_model import main

main()

"""Evaluation: Monte Carlo masked-diffusion likelihoods (:mod:`.likelihood`), the
lm-evaluation-harness model type ``steerling-lite`` (:mod:`.lm_eval_model`), quantization
quality and interpretability per precision (:mod:`.eval_run`, ``steerling-lite eval``) and the
technical report's interpretability measures on the user's text (:mod:`.report`,
``steerling-lite report``)."""

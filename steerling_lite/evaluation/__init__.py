"""Evaluation: Monte Carlo masked-diffusion likelihoods (:mod:`.likelihood`) and the
lm-evaluation-harness model type ``steerling-lite`` (:mod:`.lm_eval_model`)."""

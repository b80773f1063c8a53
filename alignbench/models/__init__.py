"""Backbones: adapters over diffusers pipelines (:mod:`.backbone`), the embedded tiny FLUX
(:mod:`.tiny`, :mod:`.tokenizer`), its pretraining (:mod:`.pretrain`) and the model registry
entries (:mod:`.spec`)."""

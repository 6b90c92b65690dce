"""Judging an adapter as a brand team would: ``python -m hhtune.evaluate RUN_DIR``.

Laid out as the data flows, each module importing only those above it:

* :mod:`.plan` - which checkpoints, prompts, seeds and strengths are sampled;
* :mod:`.drift_prompts` - the shipped neutral prompts (all 7 languages) drift is measured on;
* :mod:`.clips` and :mod:`.metrics` - clips as arrays, and the metric functions (voice, speech quality,
  lip-sync, face, look, drift), each from a model that ships in a pip wheel;
* :mod:`.references` - the training clips the samples are compared against, cut from the footage;
* :mod:`.sampling` - base and adapters sampled through the validation pipeline at fixed seeds;
* :mod:`.scoring` - the metrics of every sampled variant, and the recommended checkpoint;
* :mod:`.transfer` - base-trained adapter on the distilled model: gap per strength, recommended strength;
* :mod:`.curves` and :mod:`.report` - metric curves (PNG) and the one-page HTML report;
* :mod:`.publish` - the recommended strength written into the adapter's model card and file headers;
* :mod:`.runner` - one evaluation start to end (the body of ``python -m hhtune.evaluate``).
"""

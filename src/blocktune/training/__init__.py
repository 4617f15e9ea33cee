"""Training one group of layers: the trainer (:mod:`.train`), the frozen-prefix activation cache
(:mod:`.cache`), the workbench that turns a trial into a training on one seed's split
(:mod:`.workbench`), and what a run reads before training (:mod:`.loading`: data, model
preprocessing, the environment check)."""

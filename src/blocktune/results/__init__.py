"""What a run leaves and how it is read: the run folder and its record files
(:mod:`.runfolder`), the published model and its card (:mod:`.publish`), the assessment with
paired verdicts (:mod:`.assess`), the report (:mod:`.report`), ``status`` (:mod:`.status`) and
``export`` to plain timm or ONNX (:mod:`.export`)."""
